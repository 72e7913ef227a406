"""`numbers-retention`: run the worker, migrate, purge or publish now, list, status, holds, demo,
the disconnections report."""

from __future__ import annotations

import csv
import getpass
import json
import math
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, cast

import click
import redis
import structlog
from celery import signals
from click.exceptions import NoArgsIsHelpError
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import NoSuchTableError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.api_keys import create_api_key, list_api_keys, revoke_api_key
from shared.carriers import CARRIERS
from shared.clock import resolve_now
from shared.controls import clear_pace, pause_purge, resume_purge, set_pace
from shared.db import engine_for, make_session_factory, redact_url
from shared.demo import seed_demo as load_demo
from shared.errors import ApiError, InternalError, ValidationError
from shared.holds import hold_number, list_holds, unhold_number
from shared.ledger import disconnections, disconnects_report, parse_month
from shared.listing import released_numbers_body
from shared.migrate import upgrade
from shared.models import PhoneNumber
from shared.publication import publication_status
from shared.purge import StopRequest
from shared.purge.statements import count_overdue
from shared.releasable import STREAM
from shared.retention import repurchasable_numbers
from shared.settings import DAY, MAX_BATCH, MAX_COUNT, get_settings
from shared.status import store_status
from shared.upstream import reset_upstream, resolve_by_operator
from worker import health
from worker.app import app, make_embedded_folders
from worker.connections import engine as store_engine
from worker.connections import make_redis, session_factory
from worker.entry import PROG, VERSION_MESSAGE
from worker.logs import configure_logging
from worker.metrics import make_collector, serve
from worker.tasks import (
    PUBLISH,
    PURGE,
    STOPPED,
    parse_now,
    publish_now,
    run_prune,
    run_purge,
)

log = structlog.get_logger("worker.cli")


class Finite(click.FloatRange):
    """A float range that also refuses nan (FloatRange lets it through: nan < x is False)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _snake(body: dict[str, Any]) -> dict[str, Any]:
    """A library body's camelCase keys in the CLI's own style, snake_case (`phoneNumber` ->
    `phone_number`). Only API bodies (`list`) keep the API's camelCase."""
    return {_CAMEL_HUMP.sub("_", key).lower(): value for key, value in body.items()}


@contextmanager
def _progress(total: int | Callable[[], int], label: str) -> Iterator[Any]:
    """A progress bar on stderr while it is a terminal; in a pipe or a log, none at all.

    `total` may be a function, called only when there is a bar. Yields the callable to
    advance it by a count (one that does nothing without a bar).
    """
    if not sys.stderr.isatty():
        yield lambda _count: None
        return
    length = total() if callable(total) else total
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar.update


class InvalidUsage(click.ClickException):
    """A usage error (an unknown option or command, a missing argument, a bad value) shown as
    the envelope, `invalid_usage`, exit 2, like every other error of the command line."""

    exit_code = 2

    def __init__(self, error: click.UsageError) -> None:
        super().__init__(error.format_message())
        command = error.ctx.command_path if error.ctx else PROG
        self.error = ValidationError(
            f"{command}: {error.format_message()}",
            code="invalid_usage",
            fix=f"See `{command} --help`.",
        )

    def show(self, file: Any = None) -> None:
        click.echo(json.dumps(self.error.body()), err=True)


@contextmanager
def usage_as_envelope() -> Iterator[None]:
    """Click's usage errors become `InvalidUsage`; a bare `numbers-retention` still shows help."""
    try:
        yield
    except NoArgsIsHelpError:
        raise
    except click.UsageError as error:
        raise InvalidUsage(error) from None


class Commands(click.Group):
    """Commands whose ApiErrors print the seed's envelope on stderr and exit 2 (1 for 5xx).

    A store or Redis that fails prints the 500 envelope and exits 1; usage errors are the
    envelope too (`invalid_usage`, exit 2).
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # The group's own options (`numbers-retention --bogus`) are parsed here.
        with usage_as_envelope():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            # A command's name, options and arguments are parsed here, and its body runs.
            with usage_as_envelope():
                return super().invoke(ctx)
        except ApiError as error:
            click.echo(json.dumps(error.body()), err=True)
            ctx.exit(1 if error.status >= 500 else 2)
        except SQLAlchemyError as error:
            # The driver's text can name hosts and users: say what failed, in our words.
            click.echo(json.dumps(store_error(error).body()), err=True)
            ctx.exit(1)
        except redis.RedisError as error:
            click.echo(json.dumps(redis_error(error).body()), err=True)
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


def redis_error(error: redis.RedisError) -> InternalError:
    """An unreachable or failing Redis, as the API's 500 envelope (its URL without a password)."""
    # The query string is left out too: a Redis URL may carry `?password=`.
    where = redact_url(get_settings().resolved_redis_url()).partition("?")[0]
    return InternalError(
        f"The Redis at {where} could not be used ({type(error).__name__}).",
        code="redis_unavailable",
        fix="Check that Redis is up and REDIS_URL (or BROKER_URL) points at it.",
    )


def _parse_now(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    return parse_now(value)


now_option = click.option(
    "--now",
    callback=_parse_now,
    help="Decide as of this ISO 8601 instant with a timezone (default: the current UTC time).",
)


@click.group(cls=Commands)
@click.version_option(package_name=PROG, prog_name=PROG, message=VERSION_MESSAGE)
def main() -> None:
    """Retention worker for released phone numbers."""
    configure_logging(get_settings())


def _engine() -> Engine:
    """An engine of its own, for `migrate`, `run` (which forks) and `seed-demo`."""
    return engine_for(get_settings())


def _sessions(*, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions on the configured store, through this process's engine for its URL.

    `read_only`: for a command that only reads. On SQLite those sessions begin DEFERRED
    (shared/db.py): under WAL such a reader never waits behind a purge batch's write lock,
    where BEGIN IMMEDIATE would wait up to busy_timeout (30 s).
    """
    settings = get_settings()
    if not read_only:
        return session_factory(settings)
    engine = store_engine(settings.resolved_database_url())
    return make_session_factory(engine.execution_options(sqlite_begin="DEFERRED"))


@main.command()
def migrate() -> None:
    """Apply the database migrations."""
    engine = _engine()
    upgrade(engine)
    _print_json({"migrated": True, "store": engine.url.render_as_string(hide_password=True)})


@main.command(context_settings={"ignore_unknown_options": True})
# Three processes: a long purge and the hourly reconciliation never hold up the relay, which
# keeps the releasable set within seconds of the store.
@click.option("--concurrency", default=3, show_default=True, help="Worker processes.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def run(concurrency: int, celery_args: tuple[str, ...]) -> None:
    """Migrate, then run a worker with embedded beat (extra args go to `celery worker`)."""
    engine = _engine()
    upgrade(engine)
    log.info("run.store", store=engine.url.render_as_string(hide_password=True))
    make_embedded_folders(get_settings())
    # Purge and publish once at start-up (their crontabs' first slots may be far away), once
    # the worker is up: a run that fails on its arguments or at start leaves nothing queued.
    signals.worker_ready.connect(_start_up_runs, weak=False)
    app.worker_main(
        ["worker", "--beat", "--loglevel=INFO", f"--concurrency={concurrency}", *celery_args]
    )


def _start_up_runs(**_kwargs: Any) -> None:
    app.send_task(PURGE, expires=600)
    if get_settings().resolved_redis_url():
        app.send_task(PUBLISH, expires=600)


# `purge` exits with this when another run held the lock and this one did nothing.
LOCKED_EXIT_CODE = 4
# ... and this when the provider stopped the run (misconfigured or unavailable): the rows are
# kept, and a cron job or CI step must not read the run as a success.
PROVIDER_EXIT_CODE = 5
# ... and this when it was refused because this host's clock and the database server's
# disagree beyond CLOCK_SKEW_MAX_SECONDS (`clock_skew`): nothing was done.
CLOCK_SKEW_EXIT_CODE = 7


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
    type=click.IntRange(min=1, max=MAX_BATCH),
    help="Most rows per transaction (caps the adaptive size; default PURGE_BATCH_SIZE).",
)
@click.option(
    "--max-rows", type=click.IntRange(min=1, max=MAX_COUNT), help="Stop after this many rows."
)
# A run is always bounded: no inf, no nan, at most the bound of PURGE_MAX_SECONDS.
@click.option("--max-seconds", type=Finite(min=0.001, max=DAY), help="Stop after this long.")
@click.option(
    "--carrier",
    type=click.Choice(CARRIERS),
    help="Purge this carrier's lane alone (its own lock: lanes run at once on other hosts).",
)
def purge(
    *,
    dry_run: bool,
    now: datetime | None,
    batch_size: int | None,
    max_rows: int | None,
    max_seconds: float | None,
    carrier: str | None,
) -> None:
    """Purge overdue released numbers now, in the foreground; prints the run summary.

    SIGTERM or Ctrl-C ends the run at its next batch boundary, status `interrupted`. Exits 4
    when another run holds the lock (status `skipped`): nothing was done; exits 5 when the
    provider stopped the run (`provider_misconfigured`, `provider_unavailable`); exits 7 when
    this host's clock and the database server's disagree (`clock_skew`): nothing was done.
    """
    stop = StopRequest()

    def overdue() -> int:  # the bar's length: what this run may take
        with _sessions(read_only=True)() as session:
            return min(count_overdue(session, resolve_now(now)), max_rows or MAX_COUNT)

    with stop_on_signals(stop), _progress(0 if dry_run else overdue, "purging") as advance:
        report = run_purge(
            get_settings(),
            now=now,
            dry_run=dry_run,
            stop=stop,
            batch_size=batch_size,
            max_rows=max_rows,
            max_seconds=max_seconds,
            progress=advance,
            carrier=carrier,
        )
    _print_json(report.as_dict())
    if report.status == "skipped":
        click.echo("purge skipped: another run holds the lock; nothing was done.", err=True)
        sys.exit(LOCKED_EXIT_CODE)
    if report.status == "clock_skew":  # as the task fails
        click.echo(f"purge refused (clock_skew): {report.reason}.", err=True)
        sys.exit(CLOCK_SKEW_EXIT_CODE)
    if report.status in STOPPED:  # as the task fails
        click.echo(f"purge stopped ({report.status}): {report.reason}", err=True)
        sys.exit(PROVIDER_EXIT_CODE)


@main.command()
@click.option("--dry-run", is_flag=True, help="Count what is due; change nothing.")
@now_option
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=MAX_BATCH),
    help="Most rows per transaction (caps the adaptive size; default PURGE_BATCH_SIZE).",
)
@click.option(
    "--max-rows", type=click.IntRange(min=1, max=MAX_COUNT), help="Stop after this many rows."
)
@click.option("--max-seconds", type=Finite(min=0.001, max=DAY), help="Stop after this long.")
def prune(
    dry_run: bool,
    now: datetime | None,
    batch_size: int | None,
    max_rows: int | None,
    max_seconds: float | None,
) -> None:
    """Prune the worker's own records now: erase tombstone labels after TOMBSTONE_REDACT_DAYS,
    delete tombstones and run records after AUDIT_RETENTION_DAYS; prints the run summary.

    In batches, as the purge. SIGTERM or Ctrl-C ends the run at its next batch boundary
    (`interrupted`). Exits 4 when another prune holds the lock (`skipped`).
    """
    stop = StopRequest()
    with stop_on_signals(stop):
        report = run_prune(
            get_settings(),
            now=now,
            dry_run=dry_run,
            stop=stop,
            batch_size=batch_size,
            max_rows=max_rows,
            max_seconds=max_seconds,
        )
    _print_json(report.as_dict())
    if report.status == "skipped":
        click.echo("prune skipped: another prune holds the lock; nothing was done.", err=True)
        sys.exit(LOCKED_EXIT_CODE)


@main.command()
@now_option
def publish(now: datetime | None) -> None:
    """Reconcile the releasable set in Redis with the store now; prints the drift repaired."""

    def repurchasable() -> int:  # the bar's length
        with _sessions(read_only=True)() as session:
            numbers = select(func.count()).where(repurchasable_numbers(resolve_now(now)))
            return int(session.execute(numbers).scalar_one())

    with _progress(repurchasable, "publishing") as advance:
        summary = publish_now(get_settings(), now=now, progress=advance)
    _print_json(summary)


@main.command("list")
@click.option("--account", "account_id", required=True, help="The account's id.")
@now_option
def list_released(account_id: str, now: datetime | None) -> None:
    """Print GET /numbers/released's 200 body for an account."""
    with _sessions(read_only=True)() as session:
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
                _print_json({"seeded": False, "reason": "store_not_empty"})
                return
    with _progress(numbers, "seeding demo numbers") as advance:
        summary = load_demo(engine, numbers=numbers, accounts=accounts, now=now, progress=advance)
    _print_json(summary.as_dict())


# `status --max-lag` exits with this when purging has fallen behind (1 and 2 are errors).
LAG_EXIT_CODE = 3
# ... and with this when it has fallen behind because purging is paused (on purpose).
PAUSED_LAG_EXIT_CODE = 6
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
    with _sessions(read_only=True)() as session:
        report = store_status(
            session,
            now=now,
            runs=runs,
            deploy_paused=get_settings().purge_paused,
            provider=get_settings().provider,
        )
    report["publication"] = _publication(now)
    if max_lag is not None:
        limit = max_lag.total_seconds()
        report |= {"max_lag_seconds": limit, "lagging": report["oldest_overdue_seconds"] > limit}
    if as_json:
        _print_json(report)
    else:
        click.echo(_status_table(report))
    if report.get("lagging"):
        behind = (
            f"the oldest overdue number is "
            f"{format_duration(report['oldest_overdue_seconds'])} past its deadline, "
            f"over the {format_duration(report['max_lag_seconds'])} limit (--max-lag)"
        )
        if report["paused"]:
            pause = report["pause"]
            who = f"by {pause['by']}" if pause else "by PURGE_PAUSED"
            why = f": {pause['reason']}" if pause and pause["reason"] else ""
            click.echo(_printable(f"purging is paused ({who}{why}): {behind}."), err=True)
            sys.exit(PAUSED_LAG_EXIT_CODE)
        click.echo(f"purging lags: {behind}.", err=True)
        sys.exit(LAG_EXIT_CODE)


def _publication(now: datetime | None) -> dict[str, Any] | None:
    """The releasable set's publication as Redis records it; None when no Redis is configured."""
    url = get_settings().resolved_redis_url()
    if not url:
        return None
    client = make_redis(url, timeout=5)
    try:
        return {"reachable": True, **publication_status(client, now=now)}
    except redis.RedisError:
        # `status` is about the store first: an unreachable Redis is shown, not fatal.
        return {"reachable": False}
    finally:
        client.close()


def _when(iso: str | None) -> str:
    if iso is None:
        return "-"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%SZ")


def _set_by(control: dict[str, Any]) -> str:
    """`by <who> since <when>[: <reason>]` of a stored control (a pause, a pace)."""
    text = f"by {control['by']} since {_when(control['at'])}"
    return text + (f": {control['reason']}" if control["reason"] else "")


def _facts(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The status table's label/value lines."""
    oldest = "-"
    if report["overdue"]:
        oldest = (
            f"{format_duration(report['oldest_overdue_seconds'])} past its deadline"
            f" (released {_when(report['oldest_overdue_released_at'])})"
        )
    pause, ceiling = report["pause"], report.get("pace")
    person, carrier = report["upstream_refused_person"], report["upstream_refused_carrier"]
    paused = "yes, PURGE_PAUSED is set" if report["paused"] else "no"
    facts = [
        ("Paused", f"yes, {_set_by(pause)}" if pause else paused),
        ("Overdue (purgeable now)", _overdue(report)),
        ("Oldest overdue", oldest),
        ("On hold", f"{report['held']:,}"),
        ("Releasable", f"{report['releasable']:,}"),
        (
            "Upstream failed",
            f"{report['upstream_failed']:,} ({report['upstream_permanent']:,} need a person)",
        ),
        (
            "Refused by the carrier",
            f"{person + carrier:,} ({person:,} waiting on a person, {carrier:,} on the carrier)",
        ),
        ("Claimed, not yet called", f"{report['upstream_claimed']:,}"),
    ]
    if ceiling:  # shown only while set: most stores never have one
        facts.insert(
            1, ("Pace", f"at most {ceiling['rows_per_second']:,g} rows/s, set {_set_by(ceiling)}")
        )
    if "purge_last_success_at" in report:
        facts.append(("Last successful purge", _when(report["purge_last_success_at"])))
    if report.get("publication") is not None:
        facts.append(("Last published", _published(report["publication"])))
    if "lagging" in report:
        verdict = "LAGGING" if report["lagging"] else "ok"
        if report["lagging"] and report["paused"]:
            verdict = "LAGGING (paused)"
        facts.append(("Lag limit", f"{format_duration(report['max_lag_seconds'])}: {verdict}"))
    return facts


def _overdue(report: dict[str, Any]) -> str:
    """What a run can take now; what waits on the provider or a person beside it."""
    waiting = report.get("overdue_waiting") or 0
    text = f"{report['overdue'] - waiting:,}"
    return text + (f" (+{waiting:,} waiting on the provider or a person)" if waiting else "")


def _run_note(run: dict[str, Any]) -> str:
    """A running run's rate and estimate; else the reason it ended as it did."""
    if run["status"] == "running" and run.get("rows_per_second"):
        eta = run.get("eta_seconds")
        left = f", ~{format_duration(eta)} left" if eta is not None else ""
        return f"{run['rows_per_second']:,.0f} rows/s{left}"
    return str(run["reason"] or "")


def _status_table(report: dict[str, Any]) -> str:
    facts = _facts(report)
    lines = [f"Retention status at {_when(report['now'])}", ""]
    lines += [f"  {label:<25}{_printable(value)}" for label, value in facts]
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
            _run_note(run),
        )
        for run in report["last_runs"]
    ]
    if runs:
        lines += _table(
            ("STARTED", "STATUS", "PURGED", "BATCHES", "REMAINING", "TOOK", "NOTE"),
            runs,
            numeric={2, 3, 4, 5},
        )
    dry = report.get("last_dry_run")
    if dry:
        lines.append(
            f"  Last dry run {_when(dry['started_at'])}: {dry['remaining'] or 0:,} would be purged"
        )
    if report["upstream_stuck"]:
        lines += ["", "Kept because the provider did not release them (docs/runbook.md)"]
        stuck = [
            (
                number["phone_number"],
                _stuck_state(number),
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


def _stuck_state(number: dict[str, Any]) -> str:
    """A number kept upstream: refused by the carrier (waiting on whom), or failed."""
    if number["refused"]:
        return "refused, waits on " + ("a person" if number["waits_on"] == "person" else "carrier")
    return "permanent" if number["permanent"] else "retrying"


def _published(publication: dict[str, Any]) -> str:
    if not publication["reachable"]:
        return "unknown (Redis unreachable)"
    if publication["last_success_at"] is None:
        text = "never"
    else:
        text = (
            f"{_when(publication['last_success_at'])}"
            f" ({format_duration(max(publication['age_seconds'], 0))} ago)"
        )
    if publication["failing"]:
        text += (
            f"; the latest attempt FAILED at {_when(publication['last_failure_at'])}"
            f" ({publication['last_failure']})"
        )
    return text


def _printable(text: str) -> str:
    """`text` with every control or format character escaped (ESC as \\x1b): stored text
    (a reason, a carrier's message) never runs as a terminal escape sequence when shown."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: set[int]) -> list[str]:
    """Aligned columns, numbers to the right; stored text escaped."""
    rows = [[_printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  "
        + "  ".join(
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *rows)
    ]


def _operator() -> str:
    """Who runs this command, for the records it leaves (the login name)."""
    try:
        return getpass.getuser()[:64] or "unknown"
    except OSError:  # no login name (a container without a passwd entry)
        return "unknown"


@main.command()
@click.argument("phone_number", metavar="PHONE")
@click.option("--reason", help="Why (a dispute, a legal hold); shown by `holds`.")
@click.option("--by", default=_operator, show_default="login name", help="Who holds it.")
def hold(phone_number: str, reason: str | None, by: str) -> None:
    """Put a number on hold: the purge never removes it until `unhold`."""
    with _sessions().begin() as session:
        _print_json(_snake(hold_number(session, phone_number=phone_number, by=by, reason=reason)))


@main.command()
@click.argument("phone_number", metavar="PHONE")
def unhold(phone_number: str) -> None:
    """Lift a number's hold: once past its deadline, the next purge removes it."""
    with _sessions().begin() as session:
        _print_json(_snake(unhold_number(session, phone_number=phone_number)))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@now_option
def holds(as_json: bool, now: datetime | None) -> None:
    """List the numbers on hold: who held them, when and why, oldest hold first."""
    with _sessions(read_only=True)() as session:
        held = list_holds(session, now=now)
    if as_json:
        _print_json(held)
        return
    if not held:
        click.echo("No number is on hold.")
        return
    rows = [
        (
            number["phone_number"],
            number["account_id"],
            number["billing_status"] + (" (overdue)" if number["overdue"] else ""),
            _when(number["at"]),
            number["by"] or "-",
            (number["reason"] or "")[:60],
        )
        for number in held
    ]
    click.echo(
        "\n".join(
            _table(("NUMBER", "ACCOUNT", "STATE", "SINCE", "BY", "REASON"), rows, numeric=set())
        )
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9808, show_default=True, type=click.IntRange(1, 65535))
def metrics(host: str, port: int) -> None:
    """Serve the store's retention health to Prometheus on http://HOST:PORT/metrics."""
    serve(make_collector(get_settings()), host=host, port=port)


# `healthcheck` exits with this when the worker or beat is not healthy.
UNHEALTHY_EXIT_CODE = 1


@main.command()
@click.argument("role", type=click.Choice(health.ROLES))
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a heartbeat stays fresh (default: 60 for the worker, "
    "BEAT_MAX_LOOP_SECONDS + 60 for beat).",
)
def healthcheck(role: str, max_age: float | None) -> None:
    """Exit 0 while the worker's (or beat's) heartbeat on this host is fresh, else 1.

    Reads the heartbeat file the process keeps in NUMBERS_RETENTION_DATA; asks nothing of the
    broker, so a worker busy with a long purge is still healthy.
    """
    settings = get_settings()
    path = health.heartbeat_file(settings.data_dir.resolve(), role)
    healthy, why = health.check(path, max_age=max_age or health.default_max_age(settings, role))
    click.echo(f"{role} {'healthy' if healthy else 'UNHEALTHY'}: {why}", err=not healthy)
    if not healthy:
        sys.exit(UNHEALTHY_EXIT_CODE)


@main.command()
@click.option("--reason", help="Why; shown by `status` and in each paused run's record.")
@click.option("--by", default=_operator, show_default="login name", help="Who pauses.")
def pause(reason: str | None, by: str) -> None:
    """Pause every purge at its next batch boundary, on every worker, until `resume`."""
    with _sessions().begin() as session:
        _print_json(pause_purge(session, by=by, reason=reason))


@main.command()
def resume() -> None:
    """Lift a pause: the next purge run (scheduled or by hand) purges again."""
    with _sessions().begin() as session:
        _print_json(resume_purge(session))


@main.command()
@click.option(
    "--rows-per-second",
    type=Finite(min=0, min_open=True, max=MAX_COUNT),
    help="Most rows purged per second, by every run, from its next batch.",
)
@click.option("--off", is_flag=True, help="Lift the stored ceiling.")
@click.option("--reason", help="Why; shown by `status`.")
@click.option("--by", default=_operator, show_default="login name", help="Who sets it.")
def pace(rows_per_second: float | None, off: bool, reason: str | None, by: str) -> None:
    """Cap the purge's rows per second on every worker, live, until `pace --off`."""
    if off == (rows_per_second is not None):
        raise click.UsageError("Give either --rows-per-second N or --off.")
    with _sessions().begin() as session:
        if rows_per_second is None:
            _print_json(clear_pace(session))
        else:
            _print_json(set_pace(session, rows_per_second=rows_per_second, by=by, reason=reason))


@main.command("retry-upstream")
@click.argument("phone_numbers", metavar="[PHONE]...", nargs=-1)
@click.option("--all-permanent", is_flag=True, help="Every number the provider refused for good.")
@click.option(
    "--provider-code",
    metavar="CODE",
    help="With --all-permanent: only those with this provider code (e.g. 10035, locked by Telnyx).",
)
def retry_upstream(
    phone_numbers: tuple[str, ...], all_permanent: bool, provider_code: str | None
) -> None:
    """Clear upstream failures: the next purge calls the provider for these numbers again."""
    if bool(phone_numbers) == all_permanent:
        raise click.UsageError("Give PHONE numbers or --all-permanent (one of the two).")
    if provider_code is not None and not all_permanent:
        raise click.UsageError("--provider-code filters --all-permanent.")
    with _sessions().begin() as session:
        if len(phone_numbers) == 1:
            _print_json(_snake(reset_upstream(session, phone_number=phone_numbers[0])))
            return
        if all_permanent:
            query = select(PhoneNumber.phone_number).where(
                PhoneNumber.provider_failed_permanently.is_(True)
            )
            if provider_code is not None:
                query = query.where(PhoneNumber.provider_code == provider_code)
            phone_numbers = tuple(session.scalars(query.order_by(PhoneNumber.id)))
        # One transaction: a number that cannot be retried leaves all of them as they were.
        for number in phone_numbers:
            reset_upstream(session, phone_number=number)
        _print_json(
            {"retry": "next purge run", "count": len(phone_numbers), "numbers": phone_numbers}
        )


def _carrier() -> str | None:
    """The carrier a number settled by hand was held at: PROVIDER, unless that is `none`."""
    provider = get_settings().provider
    return None if provider == "none" else provider


@main.command("resolve-upstream")
@click.argument("phone_number", metavar="PHONE")
@click.option("--reason", required=True, help="What was done upstream; kept in the tombstone.")
@click.option("--by", default=_operator, show_default="login name", help="Who settled it.")
@click.option(
    "--carrier",
    default=_carrier,
    show_default="PROVIDER, else unknown",
    help="The carrier that held the number (its ledger entry).",
)
@click.option(
    "--ported-out",
    is_flag=True,
    help="The number left by a port-out: not a permanent disconnection, never reported.",
)
def resolve_upstream(
    phone_number: str, reason: str, by: str, carrier: str | None, ported_out: bool
) -> None:
    """Purge a number kept upstream that a person settled at the provider by hand."""
    with _sessions().begin() as session:
        _print_json(
            _snake(
                resolve_by_operator(
                    session,
                    phone_number=phone_number,
                    reason=reason,
                    by=by,
                    carrier=carrier,
                    ported_out=ported_out,
                )
            )
        )


# `events --follow` waits this long per XREAD, so that a signal is acted on within it.
EVENTS_BLOCK_MS = 1000


def _event_line(stream_id: str, fields: dict[str, str], *, as_json: bool) -> str:
    if as_json:
        return json.dumps({"stream_id": stream_id, **fields})
    deadline = f"  deadline {fields['deadline']}" if "deadline" in fields else ""
    return (
        f"{stream_id}  {fields.get('occurred_at', '-')}  {fields.get('kind', '-'):<16}"
        f"{fields.get('phone_number', '-')}  {fields.get('account_id', '-')}{deadline}"
    )


@main.command()
@click.option("--follow", is_flag=True, help="Wait for new entries until Ctrl-C or SIGTERM.")
@click.option(
    "--since",
    "since",
    metavar="ID",
    help="Only entries after this stream id (default: the oldest the capped stream keeps; "
    "with --follow, only new ones).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events(follow: bool, since: str | None, as_json: bool) -> None:
    """Print the lifecycle events the relay streamed to Redis (`numbers:events`), oldest first.

    Needs Redis (REDIS_URL): the embedded default has no stream, and this exits 2 saying so.
    """
    url = get_settings().resolved_redis_url()
    if not url:
        raise ValidationError(
            "This store has no event stream: numbers:events lives in Redis, and with no Redis "
            "configured (the embedded default) the relay keeps no events (the store's outbox is "
            "emptied unrelayed).",
            code="no_event_stream",
            fix="Set REDIS_URL to the Redis the worker relays to; without one, read the "
            "store's state with `numbers-retention status`, `holds` or `list`.",
        )
    stop = StopRequest()
    client = make_redis(url, timeout=EVENTS_BLOCK_MS / 1000 + 10)
    try:
        # With --follow and no --since: after the newest entry now (not XREAD's `$`, which a
        # second read would move past entries added between the two).
        cursor = since or (_stream_last_id(client) if follow else "0-0")
        with stop_on_signals(stop):
            while True:
                answer = cast(
                    "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None",
                    client.xread(
                        {STREAM: cursor}, count=1000, block=EVENTS_BLOCK_MS if follow else None
                    ),
                )
                for _key, entries in answer or ():
                    for raw_id, raw in entries:
                        cursor = raw_id.decode()
                        fields = {k.decode(): v.decode() for k, v in raw.items()}
                        click.echo(_event_line(cursor, fields, as_json=as_json))
                if stop.requested or (not follow and not answer):
                    return
    except redis.ResponseError as error:
        if "Invalid stream ID" in str(error) or "ID specified" in str(error):
            raise ValidationError(
                f"{since!r} is not a stream id.",
                code="invalid_since",
                fix="Pass an id printed by `events`, e.g. 1733400000000-0.",
            ) from None
        raise
    finally:
        client.close()


def _stream_last_id(client: redis.Redis) -> str:
    """The id of the stream's newest entry, or 0-0 when it has none."""
    newest = cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrevrange(STREAM, count=1))
    return str(newest[0][0].decode()) if newest else "0-0"


@main.group()
def report() -> None:
    """Reports from the store's ledger of disconnections."""


@report.command()
@click.option("--month", required=True, metavar="YYYY-MM", help="The calendar month (UTC).")
@click.option(
    "--format",
    "output",
    type=click.Choice(["csv", "json"]),
    default="csv",
    show_default=True,
    help="csv: the RND's two columns; json: with the count and what was left out.",
)
def disconnects(month: str, output: str) -> None:
    """A month's permanent disconnections, as filed with the FCC's Reassigned Numbers Database.

    Each US geographic telephone number (10 digits) with the date of its most recent permanent
    disconnection in the month; numbers ported out, toll-free numbers and numbers outside the
    US and its territories are left out (the json format counts them).
    """
    period = parse_month(month)  # a bad month is refused before the store is opened
    with _sessions(read_only=True)() as session:
        if output == "json":
            _print_json(disconnects_report(session, period))
            return
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["telephone_number", "disconnect_date"])
        for number, when in disconnections(session, period):
            writer.writerow([number, when.isoformat()])


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
def serve_api_command(host: str, port: int, workers: int) -> None:
    """Serve the HTTP API (GET /numbers/released, DELETE /numbers/{phone}, POST /numbers/order)."""
    try:
        from worker.api import serve as serve_api
    except ImportError as error:
        raise InternalError(
            f"The HTTP API is not installed ({error.name or 'starlette'} is missing).",
            code="api_not_installed",
            fix="Install the api extra: pip install 'numbers-retention[api]'.",
        ) from None
    serve_api(host=host, port=port, workers=workers)


@main.group("api-key")
def api_key() -> None:
    """Keys of the HTTP API: stored hashed, each shown once when created."""


@api_key.command("create")
@click.option("--account", "account_id", required=True, help="The account the key acts for.")
def api_key_create(account_id: str) -> None:
    """Create a key and print it once: {"account_id", "key"}."""
    with _sessions().begin() as session:
        _print_json(create_api_key(session, account_id=account_id))


@api_key.command("revoke")
@click.argument("key")
def api_key_revoke(key: str) -> None:
    """Revoke a key (the key, or its id as `api-key list` shows it)."""
    with _sessions().begin() as session:
        _print_json(revoke_api_key(session, key=key))


@api_key.command("list")
@click.option("--account", "account_id", help="Only this account's keys.")
def api_key_list(account_id: str | None) -> None:
    """The keys' ids, accounts and dates (never a key)."""
    with _sessions(read_only=True)() as session:
        _print_json(list_api_keys(session, account_id=account_id))


if __name__ == "__main__":
    main()
