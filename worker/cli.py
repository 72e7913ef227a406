"""`numbers-retention`: run the worker, migrate, purge or publish now, list, status, holds, demo."""

from __future__ import annotations

import getpass
import json
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import click
from sqlalchemy import Engine, select
from sqlalchemy.exc import NoSuchTableError, ProgrammingError, SQLAlchemyError

from shared.controls import clear_pace, pause_purge, resume_purge, set_pace
from shared.db import make_engine, make_session_factory, redact_url
from shared.demo import seed_demo as load_demo
from shared.errors import ApiError, InternalError
from shared.lifecycle import set_purge_hold
from shared.listing import released_numbers_body
from shared.migrate import upgrade
from shared.models import PhoneNumber
from shared.purge import StopRequest, purge_expired
from shared.releasable import publish_releasable
from shared.settings import get_settings
from shared.status import store_status
from shared.upstream import reset_upstream
from worker.app import app
from worker.logs import configure_logging, redact
from worker.tasks import parse_now, redis_client, session_factory


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


class Commands(click.Group):
    """Commands whose ApiErrors print the seed's envelope on stderr and exit 2 (1 for 5xx)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as error:
            click.echo(json.dumps(error.body()), err=True)
            ctx.exit(1 if error.status >= 500 else 2)
        except SQLAlchemyError as error:
            # The driver's text can name hosts and users: say what failed, in our words.
            click.echo(json.dumps(store_error(error).body()), err=True)
            ctx.exit(1)


def store_error(error: SQLAlchemyError) -> InternalError:
    """An unreachable or unmigrated store, as the API's 500 envelope."""
    where = redact_url(get_settings().resolved_database_url())
    if isinstance(error, ProgrammingError | NoSuchTableError) or "no such table" in str(error):
        return InternalError(
            f"The store at {where} has no numbers-retention tables.",
            code="store_not_migrated",
            fix="Run `numbers-retention migrate` against it first.",
        )
    return InternalError(
        f"The store at {where} could not be used ({type(error).__name__}).",
        code="store_unavailable",
        fix="Check that the database is up and DATABASE_URL points at it.",
    )


def _parse_now(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    return parse_now(value)


now_option = click.option(
    "--now",
    callback=_parse_now,
    help="Decide as of this ISO 8601 instant with a timezone (default: the current UTC time).",
)


@click.group(cls=Commands)
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


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """SIGTERM and SIGINT end the purge at its next batch boundary; a second one acts as usual.

    The first signal only sets the request (an operator's stop is not a failure); the
    previous handlers come back at once, so a second Ctrl-C still interrupts a stuck run.
    """
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handle(signum: int, _frame: object) -> None:
        stop.request(f"{signal.Signals(signum).name} received")
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@main.command()
@click.option("--dry-run", is_flag=True, help="Count and sample what would go; delete nothing.")
@now_option
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Most rows per transaction (caps the adaptive size; default PURGE_BATCH_SIZE).",
)
@click.option("--max-rows", type=click.IntRange(min=1), help="Stop after this many rows.")
@click.option("--max-seconds", type=click.FloatRange(min=0.001), help="Stop after this long.")
def purge(
    dry_run: bool,
    now: datetime | None,
    batch_size: int | None,
    max_rows: int | None,
    max_seconds: float | None,
) -> None:
    """Purge overdue released numbers now, in the foreground; prints the run summary.

    SIGTERM or Ctrl-C ends the run at its next batch boundary, status `interrupted`.
    """
    stop = StopRequest()
    with stop_on_signals(stop):
        report = purge_expired(
            make_session_factory(_engine()),
            now=now,
            dry_run=dry_run,
            batch_size=batch_size,
            max_rows=max_rows,
            max_seconds=max_seconds,
            stop=stop,
        )
    _print_json(report.as_dict())


@main.command()
@now_option
def publish(now: datetime | None) -> None:
    """Publish the repurchasable set to Redis now; prints what was published."""
    with session_factory()() as session:
        _print_json(publish_releasable(session, redis_client(), now=now))


@main.command("list")
@click.option("--account", "account_id", required=True, help="The account's id.")
@now_option
def list_released(account_id: str, now: datetime | None) -> None:
    """Print GET /numbers/released's 200 body for an account."""
    with make_session_factory(_engine())() as session:
        _print_json(released_numbers_body(session, account_id=account_id, now=now))


@main.command("seed-demo")
@click.option("--numbers", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--accounts", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--if-empty", is_flag=True, help="Do nothing when the store already has numbers.")
@now_option
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


# `status --max-lag` exits with this when purging has fallen behind (1 and 2 are errors).
LAG_EXIT_CODE = 3
_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[dhms])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """`90` (seconds), `90s`, `30m`, `2h`, `1d`, or a sum such as `1h30m`, as a timedelta."""
    value = text.strip().lower()
    if _SECONDS.fullmatch(value):
        seconds = float(value)
    elif _DURATION.fullmatch(value):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    else:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 30m, 2h, 1d or 1h30m.")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration.") from None


def format_duration(seconds: float) -> str:
    """A duration for people: its two largest units, e.g. `1d 2h`, `12m 5s`, `40s`."""
    rest = round(seconds)
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2]) or "0s"


def _parse_max_lag(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--max-lag",
    callback=_parse_max_lag,
    metavar="DURATION",
    help=(
        f"Exit {LAG_EXIT_CODE} when the oldest overdue number is further past its deadline than"
        " this: 90s, 30m, 2h, 1d, 1h30m (a plain number is seconds)."
    ),
)
@click.option(
    "--runs", default=5, show_default=True, type=click.IntRange(min=0), help="Purge runs to show."
)
@now_option
def status(as_json: bool, max_lag: timedelta | None, runs: int, now: datetime | None) -> None:
    """Backlog, oldest overdue number, holds and the last purge runs; alerts on lag."""
    with make_session_factory(_engine())() as session:
        report = store_status(session, now=now, runs=runs)
    if max_lag is not None:
        limit = max_lag.total_seconds()
        report |= {"max_lag_seconds": limit, "lagging": report["oldest_overdue_seconds"] > limit}
    if as_json:
        _print_json(report)
    else:
        click.echo(_status_table(report))
    if report.get("lagging"):
        click.echo(
            f"purging lags: the oldest overdue number is "
            f"{format_duration(report['oldest_overdue_seconds'])} past its deadline, "
            f"over the {format_duration(report['max_lag_seconds'])} limit (--max-lag).",
            err=True,
        )
        sys.exit(LAG_EXIT_CODE)


def _when(iso: str | None) -> str:
    if iso is None:
        return "-"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%SZ")


def _status_table(report: dict[str, Any]) -> str:
    if report["overdue"]:
        oldest = (
            f"{format_duration(report['oldest_overdue_seconds'])} past its deadline"
            f" (released {_when(report['oldest_overdue_released_at'])})"
        )
    else:
        oldest = "-"
    pause, ceiling = report["pause"], report.get("pace")
    facts = [
        (
            "Paused",
            f"yes, by {pause['by']} since {_when(pause['at'])}"
            + (f": {pause['reason']}" if pause["reason"] else "")
            if pause
            else "no",
        ),
        ("Overdue (purgeable now)", f"{report['overdue']:,}"),
        ("Oldest overdue", oldest),
        ("On hold", f"{report['held']:,}"),
        ("Releasable", f"{report['releasable']:,}"),
        (
            "Upstream failed",
            f"{report['upstream_failed']:,} ({report['upstream_permanent']:,} need a person)",
        ),
    ]
    if ceiling:
        # Shown only while set: most stores never have one.
        pace_text = f"at most {ceiling['rows_per_second']:,g} rows/s, set by {ceiling['by']}"
        pace_text += f" since {_when(ceiling['at'])}"
        pace_text += f": {ceiling['reason']}" if ceiling["reason"] else ""
        facts.insert(1, ("Pace", pace_text))
    if "lagging" in report:
        verdict = "LAGGING" if report["lagging"] else "ok"
        facts.append(("Lag limit", f"{format_duration(report['max_lag_seconds'])}: {verdict}"))
    lines = [f"Retention status at {_when(report['now'])}", ""]
    lines += [f"  {label:<25}{value}" for label, value in facts]
    lines += ["", "Last purge runs"]
    if not report["last_runs"]:
        lines.append("  (none recorded yet)")
    runs = [
        (
            _when(run["started_at"]),
            run["status"],
            f"{run['purged']:,}",
            f"{run['batches']:,}",
            "-" if run["remaining"] is None else f"{run['remaining']:,}",
            "-" if run["seconds"] is None else f"{run['seconds']:.1f}s",
            run["reason"] or "",
        )
        for run in report["last_runs"]
    ]
    if runs:
        lines += _table(
            ("STARTED", "STATUS", "PURGED", "BATCHES", "REMAINING", "TOOK", "NOTE"),
            runs,
            numeric={2, 3, 4, 5},
        )
    if report["upstream_stuck"]:
        lines += ["", "Kept because the provider did not release them (docs/runbook.md)"]
        stuck = [
            (
                number["phone_number"],
                "permanent" if number["permanent"] else "retrying",
                number["provider_code"] or "-",
                str(number["attempts"]),
                _when(number["next_attempt_at"]),
                (number["message"] or "")[:60],
            )
            for number in report["upstream_stuck"]
        ]
        lines += _table(
            ("NUMBER", "STATE", "PROVIDER CODE", "ATTEMPTS", "NEXT ATTEMPT", "ERROR"),
            stuck,
            numeric={3},
        )
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: set[int]) -> list[str]:
    """Aligned columns, numbers to the right."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  "
        + "  ".join(
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *rows)
    ]


@main.command()
@click.argument("phone_number", metavar="PHONE")
def hold(phone_number: str) -> None:
    """Put a number on hold: the purge never removes it until `unhold`."""
    with make_session_factory(_engine()).begin() as session:
        _print_json(set_purge_hold(session, phone_number=phone_number, held=True))


@main.command()
@click.argument("phone_number", metavar="PHONE")
def unhold(phone_number: str) -> None:
    """Lift a number's hold: once past its deadline, the next purge removes it."""
    with make_session_factory(_engine()).begin() as session:
        _print_json(set_purge_hold(session, phone_number=phone_number, held=False))


def _operator() -> str:
    """Who runs this command, for the records it leaves (the login name)."""
    try:
        return getpass.getuser()[:64] or "unknown"
    except OSError:  # no login name (a container without a passwd entry)
        return "unknown"


@main.command()
@click.option("--reason", help="Why; shown by `status` and in each paused run's record.")
@click.option("--by", default=_operator, show_default="login name", help="Who pauses.")
def pause(reason: str | None, by: str) -> None:
    """Pause every purge at its next batch boundary, on every worker, until `resume`."""
    with make_session_factory(_engine()).begin() as session:
        _print_json(pause_purge(session, by=by, reason=reason))


@main.command()
def resume() -> None:
    """Lift a pause: the next purge run (scheduled or by hand) purges again."""
    with make_session_factory(_engine()).begin() as session:
        _print_json(resume_purge(session))


@main.command()
@click.option(
    "--rows-per-second",
    type=click.FloatRange(min=0, min_open=True),
    help="Most rows purged per second, by every run, from its next batch.",
)
@click.option("--off", is_flag=True, help="Lift the stored ceiling.")
@click.option("--reason", help="Why; shown by `status`.")
@click.option("--by", default=_operator, show_default="login name", help="Who sets it.")
def pace(rows_per_second: float | None, off: bool, reason: str | None, by: str) -> None:
    """Cap the purge's rows per second on every worker, live, until `pace --off`."""
    if off == (rows_per_second is not None):
        raise click.UsageError("Give either --rows-per-second N or --off.")
    with make_session_factory(_engine()).begin() as session:
        if rows_per_second is None:
            _print_json(clear_pace(session))
        else:
            _print_json(set_pace(session, rows_per_second=rows_per_second, by=by, reason=reason))


@main.command("retry-upstream")
@click.argument("phone_number", metavar="PHONE")
def retry_upstream(phone_number: str) -> None:
    """Clear a number's upstream failure: the next purge calls the provider for it again."""
    with make_session_factory(_engine()).begin() as session:
        _print_json(reset_upstream(session, phone_number=phone_number))


if __name__ == "__main__":
    main()
