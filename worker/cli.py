"""`numbers-retention`: run the worker, migrate, purge or publish now, list, status, demo data."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any, TypeVar

import click
from sqlalchemy import Engine, select

from shared.db import make_engine, make_session_factory
from shared.demo import seed_demo as load_demo
from shared.errors import ApiError
from shared.listing import released_numbers_body
from shared.migrate import upgrade
from shared.models import PhoneNumber
from shared.purge import purge_expired
from shared.releasable import publish_releasable
from shared.settings import get_settings
from shared.status import store_status
from worker.app import app
from worker.logs import configure_logging, redact
from worker.tasks import parse_now, redis_client, session_factory

F = TypeVar("F", bound=Callable[..., Any])


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def api_errors(func: F) -> F:
    """Print an ApiError as the seed's envelope on stderr and exit 2 (1 for 5xx)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApiError as error:
            click.echo(json.dumps(error.body()), err=True)
            sys.exit(1 if error.status >= 500 else 2)

    return wrapper  # type: ignore[return-value]


def _parse_now(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    return parse_now(value)


now_option = click.option(
    "--now",
    callback=_parse_now,
    help="Decide as of this ISO 8601 instant with a timezone (default: the current UTC time).",
)


@click.group()
def main() -> None:
    """Retention worker for released phone numbers."""
    configure_logging(get_settings())


def _engine() -> Engine:
    return make_engine()


@main.command()
def migrate() -> None:
    """Apply the database migrations."""
    engine = _engine()
    upgrade(engine)
    click.echo(f"migrated {redact(engine.url.render_as_string(hide_password=False))}")


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", default=1, show_default=True, help="Worker processes.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def run(concurrency: int, celery_args: tuple[str, ...]) -> None:
    """Migrate, then run a worker with embedded beat (extra args go to `celery worker`)."""
    upgrade(_engine())
    # Purge once at start-up: the crontab's first slot may be up to 15 minutes away.
    app.send_task("numbers.purge_expired", expires=600)
    app.worker_main(
        ["worker", "--beat", "--loglevel=INFO", f"--concurrency={concurrency}", *celery_args]
    )


@main.command()
@click.option("--dry-run", is_flag=True, help="Count and sample what would go; delete nothing.")
@now_option
@click.option("--batch-size", type=click.IntRange(min=1), help="Rows per transaction.")
@click.option("--max-rows", type=click.IntRange(min=1), help="Stop after this many rows.")
@click.option("--max-seconds", type=click.FloatRange(min=0.001), help="Stop after this long.")
@api_errors
def purge(
    dry_run: bool,
    now: datetime | None,
    batch_size: int | None,
    max_rows: int | None,
    max_seconds: float | None,
) -> None:
    """Purge overdue released numbers now, in the foreground; prints the run summary."""
    report = purge_expired(
        make_session_factory(_engine()),
        now=now,
        dry_run=dry_run,
        batch_size=batch_size,
        max_rows=max_rows,
        max_seconds=max_seconds,
    )
    _print_json(report.as_dict())


@main.command()
@now_option
@api_errors
def publish(now: datetime | None) -> None:
    """Publish the repurchasable set to Redis now; prints what was published."""
    with session_factory()() as session:
        _print_json(publish_releasable(session, redis_client(), now=now))


@main.command("list")
@click.option("--account", "account_id", required=True, help="The account's id.")
@now_option
@api_errors
def list_released(account_id: str, now: datetime | None) -> None:
    """Print GET /numbers/released's 200 body for an account."""
    with make_session_factory(_engine())() as session:
        _print_json(released_numbers_body(session, account_id=account_id, now=now))


@main.command("seed-demo")
@click.option("--numbers", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--accounts", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--if-empty", is_flag=True, help="Do nothing when the store already has numbers.")
@now_option
@api_errors
def seed_demo(numbers: int, accounts: int, if_empty: bool, now: datetime | None) -> None:
    """Bulk-load realistic demo data (some of it overdue) into the migrated store."""
    engine = _engine()
    upgrade(engine)
    if if_empty:
        with engine.connect() as conn:
            if conn.scalar(select(PhoneNumber.id).limit(1)) is not None:
                click.echo("store has numbers already; no demo data added")
                return
    _print_json(load_demo(engine, numbers=numbers, accounts=accounts, now=now).as_dict())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--max-lag",
    type=float,
    help="Exit 3 when the oldest overdue number is older than this many seconds past deadline.",
)
@now_option
@api_errors
def status(as_json: bool, max_lag: float | None, now: datetime | None) -> None:
    """Backlog, oldest overdue number, holds and the last purge runs."""
    with make_session_factory(_engine())() as session:
        report = store_status(session, now=now)
    if as_json:
        _print_json(report)
    else:
        click.echo(_status_table(report))
    if max_lag is not None and report["oldest_overdue_seconds"] > max_lag:
        sys.exit(3)


def _status_table(report: dict[str, Any]) -> str:
    lines = [
        f"overdue                 {report['overdue']}",
        f"oldest overdue (s)      {report['oldest_overdue_seconds']}",
        f"held                    {report['held']}",
        f"releasable              {report['releasable']}",
        f"upstream failed         {report['upstream_failed']}",
        "",
        f"{'started':<28}{'status':<16}{'purged':>8}{'batches':>9}{'remaining':>11}",
    ]
    for run in report["last_runs"]:
        lines.append(
            f"{run['started_at']:<28}{run['status']:<16}{run['purged']:>8}"
            f"{run['batches']:>9}{run['remaining'] if run['remaining'] is not None else '-':>11}"
        )
    return "\n".join(lines)
