"""`numbers-retention`: run the worker, migrate, purge or publish now, list, status, holds, demo,
the disconnections report.

The group reads the settings once and hands them to every command (`ctx.obj`, a
`CliContext`). The package by job: `runs` (the commands that run jobs and services),
`store` (the operators' commands on the store's state), `render` (what is printed),
`errors` (the envelope and the exit codes), `options` (options several commands share).
"""

from __future__ import annotations

import click

from shared.settings import get_settings
from worker.cli import runs, store
from worker.cli.context import CliContext
from worker.cli.errors import (
    CLOCK_SKEW_EXIT_CODE,
    LAG_EXIT_CODE,
    LOCKED_EXIT_CODE,
    PAUSED_LAG_EXIT_CODE,
    PROVIDER_EXIT_CODE,
    UNHEALTHY_EXIT_CODE,
    Commands,
)
from worker.entry import PROG, VERSION_MESSAGE
from worker.logs import configure_logging

__all__ = [
    "CLOCK_SKEW_EXIT_CODE",
    "LAG_EXIT_CODE",
    "LOCKED_EXIT_CODE",
    "PAUSED_LAG_EXIT_CODE",
    "PROVIDER_EXIT_CODE",
    "UNHEALTHY_EXIT_CODE",
    "main",
]


@click.group(cls=Commands)
@click.version_option(package_name=PROG, prog_name=PROG, message=VERSION_MESSAGE)
@click.pass_context
def main(ctx: click.Context) -> None:
    """Retention worker for released phone numbers."""
    settings = get_settings()
    configure_logging(settings)
    ctx.obj = CliContext(settings)


for command in (
    runs.migrate,
    runs.run,
    runs.purge,
    runs.prune,
    runs.publish,
    runs.seed_demo,
    runs.metrics,
    runs.healthcheck,
    runs.events,
    runs.serve_api_command,
    store.list_released,
    store.status,
    store.hold,
    store.unhold,
    store.holds,
    store.pause,
    store.resume,
    store.pace,
    store.retry_upstream,
    store.resolve_upstream,
    store.report,
    store.api_key,
):
    main.add_command(command)
