"""Options and parameter types several commands share."""

from __future__ import annotations

import functools
import getpass
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import click

from shared.settings import DAY, MAX_BATCH, MAX_COUNT
from worker.cli.render import parse_duration

F = TypeVar("F", bound=Callable[..., Any])


class Finite(click.FloatRange):
    """A float range that also refuses nan (FloatRange lets it through: nan < x is False)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def _parse_now(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    from worker.tasks import parse_now  # the tasks' own parsing, imported when a value comes

    return parse_now(value)


now_option = click.option(
    "--now",
    callback=_parse_now,
    help="Decide as of this ISO 8601 instant with a timezone (default: the current UTC time).",
)


@dataclass(frozen=True)
class Bounds:
    """A batched run's bounds given on the command line (None: the settings' own)."""

    batch_size: int | None
    max_rows: int | None
    max_seconds: float | None

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)


def run_bounds(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--batch-size`, `--max-rows` and `--max-seconds`: the bounds of a batched run (`purge`,
    `prune`), over the settings' own; the command is given them as one `bounds`."""

    @functools.wraps(command)
    def bounded(
        *args: Any,
        batch_size: int | None,
        max_rows: int | None,
        max_seconds: float | None,
        **kwargs: Any,
    ) -> Any:
        return command(*args, bounds=Bounds(batch_size, max_rows, max_seconds), **kwargs)

    options = (
        click.option(
            "--batch-size",
            type=click.IntRange(min=1, max=MAX_BATCH),
            help="Most rows per transaction (caps the adaptive size; default PURGE_BATCH_SIZE).",
        ),
        click.option(
            "--max-rows",
            type=click.IntRange(min=1, max=MAX_COUNT),
            help="Stop after this many rows.",
        ),
        # A run is always bounded: no inf, no nan, at most the bound of PURGE_MAX_SECONDS.
        click.option(
            "--max-seconds", type=Finite(min=0.001, max=DAY), help="Stop after this long."
        ),
    )
    for option in reversed(options):
        bounded = option(bounded)
    return bounded


def operator() -> str:
    """Who runs this command, for the records it leaves (the login name)."""
    try:
        return getpass.getuser()[:64] or "unknown"
    except OSError:  # no login name (a container without a passwd entry)
        return "unknown"


def by_option(help_text: str) -> Callable[[F], F]:
    """`--by`, the person a stored change names (default: the login name)."""
    return click.option("--by", default=operator, show_default="login name", help=help_text)


def parse_max_lag(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
