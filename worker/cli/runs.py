"""Commands that run the worker's jobs or its services: `run`, `migrate`, `purge`, `prune`,
`publish`, `seed-demo`, `events`, `metrics`, `healthcheck`, `serve`.

The Celery app (worker/app.py) and the tasks' module are imported only by the commands that
use them, so that `--help` and the store's commands never build a Celery app.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

import click
import redis
import structlog

from shared.carriers import CARRIERS
from shared.clock import resolve_now
from shared.counts import repurchasable_count
from shared.demo import seed_demo as load_demo
from shared.demo import store_has_numbers
from shared.errors import InternalError, ValidationError
from shared.purge import StopRequest
from shared.purge.statements import count_overdue
from shared.releasable.keys import STREAM
from shared.settings import MAX_COUNT, Settings
from worker import health
from worker.cli.context import CliContext
from worker.cli.errors import (
    CLOCK_SKEW_EXIT_CODE,
    LOCKED_EXIT_CODE,
    PROVIDER_EXIT_CODE,
    UNHEALTHY_EXIT_CODE,
)
from worker.cli.options import Bounds, now_option, run_bounds
from worker.cli.render import event_line, print_json, progress
from worker.connections import make_redis

log = structlog.get_logger("worker.cli")


@click.command()
@click.pass_obj
def migrate(cli: CliContext) -> None:
    """Apply the database migrations."""
    from shared.migrate import upgrade  # Alembic: imported by the commands that migrate

    with cli.engine() as engine:
        upgrade(engine)
    print_json({"migrated": True, "store": engine.url.render_as_string(hide_password=True)})


@click.command(context_settings={"ignore_unknown_options": True})
# Three processes: a long purge and the hourly reconciliation never hold up the relay, which
# keeps the releasable set within seconds of the store.
@click.option("--concurrency", default=3, show_default=True, help="Worker processes.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def run(cli: CliContext, concurrency: int, celery_args: tuple[str, ...]) -> None:
    """Migrate, then run a worker with embedded beat (extra args go to `celery worker`)."""
    from celery import signals

    from shared.migrate import upgrade
    from worker.app import app, make_embedded_folders

    with cli.engine() as engine:
        upgrade(engine)
    log.info("run.store", store=engine.url.render_as_string(hide_password=True))
    make_embedded_folders(cli.settings)
    # Purge and publish once at start-up (their crontabs' first slots may be far away), once
    # the worker is up: a run that fails on its arguments or at start leaves nothing queued.
    signals.worker_ready.connect(_start_up_runs(cli.settings), weak=False)
    app.worker_main(
        ["worker", "--beat", "--loglevel=INFO", f"--concurrency={concurrency}", *celery_args]
    )


def _start_up_runs(settings: Settings) -> Any:
    """The receiver that queues a purge and a publication once the worker is ready."""
    from worker.app import app
    from worker.tasks import PURGE, RECONCILE

    def start(**_kwargs: Any) -> None:
        app.send_task(PURGE, expires=600)
        if settings.resolved_redis_url():
            app.send_task(RECONCILE, expires=600)

    return start


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


@click.command()
@click.option("--dry-run", is_flag=True, help="Count and sample what would go; delete nothing.")
@now_option
@run_bounds
@click.option(
    "--carrier",
    type=click.Choice(CARRIERS),
    help="Purge this carrier's lane alone (its own lock: lanes run at once on other hosts).",
)
@click.pass_obj
def purge(
    cli: CliContext, *, dry_run: bool, now: datetime | None, bounds: Bounds, carrier: str | None
) -> None:
    """Purge overdue released numbers now, in the foreground; prints the run summary.

    SIGTERM or Ctrl-C ends the run at its next batch boundary, status `interrupted`. Exits 4
    when another run holds the lock (status `skipped`): nothing was done; exits 5 when the
    provider stopped the run (`provider_misconfigured`, `provider_unavailable`); exits 7 when
    this host's clock and the database server's disagree (`clock_skew`): nothing was done.
    """
    from worker.tasks import STOPPED, run_purge

    stop = StopRequest()

    def overdue() -> int:  # the bar's length: what this run may take
        with cli.sessions(read_only=True)() as session:
            return min(count_overdue(session, resolve_now(now)), bounds.max_rows or MAX_COUNT)

    with stop_on_signals(stop), progress(0 if dry_run else overdue, "purging") as advance:
        report = run_purge(
            cli.settings,
            now=now,
            dry_run=dry_run,
            stop=stop,
            progress=advance,
            carrier=carrier,
            **bounds.as_kwargs(),
        )
    print_json(report.as_dict())
    if report.status == "skipped":
        click.echo("purge skipped: another run holds the lock; nothing was done.", err=True)
        sys.exit(LOCKED_EXIT_CODE)
    if report.status == "clock_skew":  # as the task fails
        click.echo(f"purge refused (clock_skew): {report.reason}.", err=True)
        sys.exit(CLOCK_SKEW_EXIT_CODE)
    if report.status in STOPPED:  # as the task fails
        click.echo(f"purge stopped ({report.status}): {report.reason}", err=True)
        sys.exit(PROVIDER_EXIT_CODE)


@click.command()
@click.option("--dry-run", is_flag=True, help="Count what is due; change nothing.")
@now_option
@run_bounds
@click.pass_obj
def prune(cli: CliContext, *, dry_run: bool, now: datetime | None, bounds: Bounds) -> None:
    """Prune the worker's own records now: erase tombstone labels after TOMBSTONE_REDACT_DAYS,
    delete tombstones and run records after AUDIT_RETENTION_DAYS; prints the run summary.

    In batches, as the purge. SIGTERM or Ctrl-C ends the run at its next batch boundary
    (`interrupted`). Exits 4 when another prune holds the lock (`skipped`).
    """
    from worker.tasks import run_prune

    stop = StopRequest()
    with stop_on_signals(stop):
        report = run_prune(cli.settings, now=now, dry_run=dry_run, stop=stop, **bounds.as_kwargs())
    print_json(report.as_dict())
    if report.status == "skipped":
        click.echo("prune skipped: another prune holds the lock; nothing was done.", err=True)
        sys.exit(LOCKED_EXIT_CODE)


@click.command()
@now_option
@click.pass_obj
def publish(cli: CliContext, now: datetime | None) -> None:
    """Reconcile the releasable set in Redis with the store now; prints the drift repaired."""
    from worker.tasks import reconcile_now

    def repurchasable() -> int:  # the bar's length
        with cli.sessions(read_only=True)() as session:
            return repurchasable_count(session, resolve_now(now))

    with progress(repurchasable, "publishing") as advance:
        summary = reconcile_now(cli.settings, now=now, progress=advance)
    print_json(summary)


@click.command("seed-demo")
@click.option("--numbers", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--accounts", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--if-empty", is_flag=True, help="Do nothing when the store already has numbers.")
@now_option
@click.pass_obj
def seed_demo(
    cli: CliContext, numbers: int, accounts: int, if_empty: bool, now: datetime | None
) -> None:
    """Bulk-load realistic demo data (some of it overdue) into the migrated store."""
    from shared.migrate import upgrade

    with cli.engine() as engine:
        upgrade(engine)
        if if_empty and store_has_numbers(engine):
            print_json({"seeded": False, "reason": "store_not_empty"})
            return
        with progress(numbers, "seeding demo numbers") as advance:
            summary = load_demo(
                engine, numbers=numbers, accounts=accounts, now=now, progress=advance
            )
    print_json(summary.as_dict())


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9808, show_default=True, type=click.IntRange(1, 65535))
@click.pass_obj
def metrics(cli: CliContext, host: str, port: int) -> None:
    """Serve the store's retention health to Prometheus on http://HOST:PORT/metrics."""
    from worker.metrics import make_collector, serve

    serve(make_collector(cli.settings), host=host, port=port)


@click.command()
@click.argument("role", type=click.Choice(health.ROLES))
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a heartbeat stays fresh (default: 60 for the worker, "
    "BEAT_MAX_LOOP_SECONDS + 60 for beat).",
)
@click.pass_obj
def healthcheck(cli: CliContext, role: str, max_age: float | None) -> None:
    """Exit 0 while the worker's (or beat's) heartbeat on this host is fresh, else 1.

    Reads the heartbeat file the process keeps in NUMBERS_RETENTION_DATA; asks nothing of the
    broker, so a worker busy with a long purge is still healthy.
    """
    settings = cli.settings
    path = health.heartbeat_file(settings.data_dir.resolve(), role)
    healthy, why = health.check(path, max_age=max_age or health.default_max_age(settings, role))
    click.echo(f"{role} {'healthy' if healthy else 'UNHEALTHY'}: {why}", err=not healthy)
    if not healthy:
        sys.exit(UNHEALTHY_EXIT_CODE)


# `events --follow` waits this long per XREAD, so that a signal is acted on within it.
EVENTS_BLOCK_MS = 1000


@click.command()
@click.option("--follow", is_flag=True, help="Wait for new entries until Ctrl-C or SIGTERM.")
@click.option(
    "--since",
    "since",
    metavar="ID",
    help="Only entries after this stream id (default: the oldest the capped stream keeps; "
    "with --follow, only new ones).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def events(cli: CliContext, follow: bool, since: str | None, as_json: bool) -> None:
    """Print the lifecycle events the relay streamed to Redis (`numbers:events`), oldest first.

    Needs Redis (REDIS_URL): the embedded default has no stream, and this exits 2 saying so.
    """
    url = cli.settings.resolved_redis_url()
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
                        click.echo(event_line(cursor, fields, as_json=as_json))
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


@click.command("serve")
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
