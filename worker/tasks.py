"""Thin Celery tasks: open a session, call one function of `shared`, return its JSON summary.

`register_tasks` adds them to an app with the limits, retry policy and connections of the
settings it is given (as arq's `Worker(**kwargs)` takes its configuration): nothing here reads
the environment, at import or later.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, closing
from datetime import datetime
from functools import partial
from typing import Any

import redis
from celery import Celery, Task
from kombu.utils.json import register_type
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from shared import validation
from shared.audit import AuditRetention, PruneReport, prune_audit
from shared.carriers import CARRIERS, make_carrier, make_provider
from shared.clock import as_utc
from shared.clock_skew import ClockSkewError
from shared.counts import reconcile_counts
from shared.db import normalize_url
from shared.errors import ValidationError
from shared.purge import PurgeReport, StopRequest, purge_expired
from shared.purge.config import PurgeConfig
from shared.releasable.reconcile import reconcile_releasable
from shared.releasable.record import recording_failures
from shared.releasable.relay import RelayReport, discard_events, relay_events
from shared.run_status import PROVIDER_STOPPED, RunStatus
from shared.settings import Settings
from shared.wakeups import listen_url, listening
from worker.connections import redis_client, session_factory
from worker.stopping import STOP

PURGE = "numbers.purge_expired"
# The reconciliation of the releasable set; its task name, from when it was called a
# publication, stays for compatibility (beat entries, `celery call`, Flower searches).
RECONCILE = "numbers.publish_releasable"
RELAY = "numbers.relay_events"
PRUNE = "numbers.prune_audit"

# Seconds the purge task may run past PURGE_MAX_SECONDS: its soft and hard time limits.
PURGE_SOFT_MARGIN = 60
PURGE_HARD_MARGIN = 120

# A scheduled run that waited past this share of its interval is dropped (worker.app._every).
EXPIRES = 0.9
# How long a scheduled relay stays awake for commits (PostgreSQL): until its next run is due
# (its share EXPIRES of RELAY_EVERY_SECONDS, so that it hands over about when that one
# starts), at most LINGER_MAX seconds (a long interval would hold a pool process all along).
LINGER_MAX = 10.0

# Set while a reconciliation asked for by the relay is pending, so it is asked for once.
RECONCILE_REQUESTED = "releasable:reconcile-requested"

# Purge statuses that end the task in Celery's FAILURE state: the run was stopped by the
# provider (its calls refused or unanswered), or refused because this host's clock and the
# database server's disagree. A run that failed raises its own error.
STOPPED = (*PROVIDER_STOPPED, RunStatus.CLOCK_SKEW)


class PurgeStopped(Exception):
    """A purge run the provider stopped, or the clocks refused: the task's error, its one
    argument the run's JSON summary (what the task would have returned), so that
    `str(error)` is that JSON.

    Raised as an expected error (the task's `throws`): Celery logs it without a traceback,
    stores it as the task's FAILURE and Flower counts it as failed.
    """

    def __init__(self, summary: str | dict[str, Any]) -> None:
        text = summary if isinstance(summary, str) else json.dumps(summary, sort_keys=True)
        super().__init__(text)

    @property
    def summary(self) -> dict[str, Any]:
        """The run's summary, as the task would have returned it."""
        result: dict[str, Any] = json.loads(self.args[0])
        return result


class Summary(Mapping[str, Any]):
    """A task's JSON summary, as the task returns it.

    Celery's events carry the repr of a task's return value (what Flower's task list, task
    page and `/api/tasks` show): Python's text for a dict, which `jq` cannot read. This
    mapping's repr is its JSON. The result backend stores it as the plain JSON object (its
    kombu encoder below), so `AsyncResult.get()` and Flower's `/api/task/result` give an object.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return json.dumps(self._data, sort_keys=True, default=str)


register_type(Summary, None, dict)

# The longest repr of a return value Celery puts in an event (its default, 1,024 characters,
# would cut a summary's JSON in the middle).
SUMMARY_REPR_MAX = 64 * 1024

# Retried with backoff and jitter: a database or Redis that is briefly away. Anything else
# (bad input, a bug) fails the task at once.
TRANSIENT = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)


class _NoEvents:
    """An event dispatcher that publishes nothing: the relay's `task-sent` event is dropped."""

    def publish(self, *_args: Any, **_kwargs: Any) -> None:
        return None


class QuietTask(Task):  # type: ignore[misc]
    """A task that sends no monitoring events at all, so that Flower never lists it: neither
    the workers' (`send_events = False`: received, started, succeeded, failed) nor the
    sender's `task-sent` (`task_send_sent_event` holds for every task a client sends, beat
    included: here the message goes through a dispatcher that publishes nothing).

    The relay runs every few seconds, 43,200 times a day: as events it would fill Flower's
    task list (13 rows of its 14) and push the purges out of it. Its health is in `status`,
    the exporter (`numbers_retention_relay_last_success_timestamp_seconds`, the outbox
    gauges) and the log (`relay.applied` when it applied something).
    """

    send_events = False

    def apply_async(self, *args: Any, **options: Any) -> Any:
        options.setdefault("event_dispatcher", _NoEvents())
        return super().apply_async(*args, **options)


def time_limits(settings: Settings) -> dict[str, dict[str, float]]:
    """Each task's soft and hard time limits (seconds) under `settings`, by task name."""
    return {
        PURGE: {
            "soft_time_limit": settings.purge_max_seconds + PURGE_SOFT_MARGIN,
            "time_limit": settings.purge_max_seconds + PURGE_HARD_MARGIN,
        },
        # A reconciliation of a million numbers takes tens of seconds on a busy host; it runs
        # hourly.
        RECONCILE: {"soft_time_limit": 600, "time_limit": 660},
        # Its wait for commits, then one more run started at the wait's end.
        RELAY: {
            "soft_time_limit": LINGER_MAX + settings.relay_max_seconds + 30,
            "time_limit": LINGER_MAX + settings.relay_max_seconds + 60,
        },
        # The prune has the purge's bounds (PURGE_MAX_SECONDS, PURGE_MAX_ROWS).
        PRUNE: {
            "soft_time_limit": settings.purge_max_seconds + PURGE_SOFT_MARGIN,
            "time_limit": settings.purge_max_seconds + PURGE_HARD_MARGIN,
        },
    }


def longest_hold(settings: Settings) -> float:
    """The longest a task can hold its message: the largest hard time limit, or the longest
    retry countdown (a retry waits out its countdown on a worker, its message unacknowledged)."""
    hardest = max(limits["time_limit"] for limits in time_limits(settings).values())
    return max(hardest, settings.task_retry_backoff_max)


def retry_policy(settings: Settings) -> dict[str, Any]:
    """Celery's autoretry options for a task that may meet a store or Redis briefly away."""
    return {
        "autoretry_for": TRANSIENT,
        "retry_backoff": settings.task_retry_backoff,
        "retry_backoff_max": settings.task_retry_backoff_max,
        "retry_jitter": True,
        "max_retries": 8,
    }


def discards_events(settings: Settings) -> bool:
    """Whether the relay empties the outbox instead of relaying it: no Redis to relay to, and
    a SQLite store (the embedded default), which no other deployment relays from. A PostgreSQL
    store without Redis keeps its events for a deployment that has one."""
    if settings.resolved_redis_url():
        return False
    store = make_url(normalize_url(settings.resolved_database_url()))
    return store.get_backend_name() == "sqlite"


def parse_now(now: object) -> datetime | None:
    """A task's `now` argument: None, or an ISO 8601 string with a timezone."""
    if now is None:
        return None
    if not isinstance(now, str):
        raise ValidationError(
            f"now must be an ISO 8601 string, got {type(now).__name__}.",
            code="invalid_now",
            fix="Pass now like '2026-11-27T12:00:00Z', or leave it out.",
        )
    try:
        parsed = datetime.fromisoformat(now)
    except ValueError:
        raise ValidationError(
            f"now {now[:40]!r} is not an ISO 8601 timestamp.",
            code="invalid_now",
            fix="Pass now like '2026-11-27T12:00:00Z', or leave it out.",
        ) from None
    return as_utc(parsed)


def run_purge(
    settings: Settings,
    *,
    now: datetime | None,
    dry_run: bool,
    stop: StopRequest,
    batch_size: int | None = None,
    max_rows: int | None = None,
    max_seconds: float | None = None,
    progress: Callable[[int], None] | None = None,
    carrier: str | None = None,
) -> PurgeReport:
    """One purge run on the store, provider and limits the settings name; the bounds given
    (the CLI's flags) override the settings'. The task and `numbers-retention purge` run this;
    `progress` is told the rows of each committed batch. `carrier`: that carrier's lane alone
    (shared/purge/lanes.py), so lanes of different carriers run on different workers."""
    config = PurgeConfig.from_settings(settings).overridden(
        batch_size=batch_size, max_rows=max_rows, max_seconds=max_seconds
    )
    with ExitStack() as adapters:
        provider = adapters.enter_context(closing(make_provider(settings)))
        # Every other carrier's adapter from these settings too (not the environment's).
        others = {
            name: adapters.enter_context(closing(make_carrier(name, settings)))
            for name in CARRIERS
            if name not in ("none", provider.name) and carrier in (None, name)
        }
        return purge_expired(
            session_factory(settings),
            now=now,
            dry_run=dry_run,
            config=config,
            provider=provider,
            carrier_factory=partial(make_carrier, settings=settings),
            stop=stop,
            progress=progress,
            carrier=carrier,
            carriers=others,
        )


def run_prune(
    settings: Settings,
    *,
    now: datetime | None,
    dry_run: bool,
    stop: StopRequest,
    batch_size: int | None = None,
    max_rows: int | None = None,
    max_seconds: float | None = None,
) -> PruneReport:
    """One prune of the worker's own records (shared/audit.py) under the settings' retention
    and the purge's batch sizing, pacing and bounds; the bounds given override the settings'.
    The task and `numbers-retention prune` run this."""
    config = PurgeConfig.from_settings(settings).overridden(
        batch_size=batch_size, max_rows=max_rows, max_seconds=max_seconds
    )
    return prune_audit(
        session_factory(settings),
        retention=AuditRetention(
            audit_days=settings.audit_retention_days, redact_days=settings.tombstone_redact_days
        ),
        config=config,
        now=now,
        dry_run=dry_run,
        stop=stop,
    )


def parse_carrier(value: object) -> str | None:
    """A task's `carrier` argument: one of the carriers, or None (every lane)."""
    if value is None:
        return None
    if value not in CARRIERS:
        raise ValidationError(
            f"carrier must be one of {', '.join(CARRIERS)}, got {str(value)[:20]!r}.",
            code="invalid_carrier",
            fix="Pass a carrier's name, or leave it out to purge every carrier's lane.",
        )
    return str(value)


def reconcile_now(
    settings: Settings,
    *,
    now: datetime | None,
    progress: Callable[[int], None] = lambda _numbers: None,
) -> dict[str, Any]:
    """Reconcile the releasable set in Redis with the store; returns the drift repaired.

    A failure leaves its marker in Redis for `status` and the exporter. A success settles the
    relay's pending request for a reconciliation. The task and `numbers-retention publish`
    run this.
    """
    client = redis_client(settings)
    with recording_failures(client), session_factory(settings)() as session:
        summary = reconcile_releasable(
            session,
            client,
            now=now,
            progress=progress,
            clock_skew_max=settings.clock_skew_max_seconds,
        )
    client.delete(RECONCILE_REQUESTED)
    # The kept counts (shared/counts.py) against a full scan: drift repaired and reported.
    with session_factory(settings)() as session:
        summary |= reconcile_counts(session, now)
    return summary


def run_relay(
    settings: Settings, *, now: datetime | None, reconcile: Callable[[], object]
) -> dict[str, Any]:
    """One scheduled relay (the task runs this): on PostgreSQL it stays LISTENing for commits
    until its next run is due; `reconcile` sends the reconciliation a new, emptied or older
    Redis needs."""
    if discards_events(settings):
        return discard_events(
            session_factory(settings),
            batch_size=settings.relay_batch_size,
            max_seconds=settings.relay_max_seconds,
        ).as_dict()
    client = redis_client(settings)

    def relay() -> RelayReport:
        report = relay_events(
            session_factory(settings),
            client,
            now=now,
            batch_size=settings.relay_batch_size,
            max_seconds=settings.relay_max_seconds,
            stream_maxlen=settings.events_stream_maxlen,
            clock_skew_max=settings.clock_skew_max_seconds,
            retention_days=settings.audit_retention_days,
        )
        # A new or emptied Redis holds only what was relayed since: rebuild it now, not in an
        # hour. A Redis found behind the store may have come back with an old request.
        if report.gap:
            client.delete(RECONCILE_REQUESTED)
        if report.unpublished and client.set(RECONCILE_REQUESTED, 1, nx=True, ex=600):
            reconcile()
        return report

    url = listen_url(settings.resolved_database_url()) if settings.relay_wakeups else None
    if url is None or now is not None:
        return relay().as_dict()
    # Until the next run is due (the run's expiry), a commit's events wake it at once.
    until = time.monotonic() + min(settings.relay_every_seconds * EXPIRES, LINGER_MAX)
    return listening(url, relay, until=until, stop=lambda: STOP.requested).as_dict()


def register_tasks(celery: Celery, settings: Settings) -> None:
    """Add the purge, the reconciliation and the relay to `celery`, configured by `settings`."""
    retry, limits = retry_policy(settings), time_limits(settings)
    # Not shared: Celery would add a shared task to every app made later, with these settings.
    task = partial(celery.task, shared=False)

    @task(
        name=PURGE,
        **limits[PURGE],
        **retry,
        throws=(PurgeStopped,),
        resultrepr_maxsize=SUMMARY_REPR_MAX,
    )
    def purge_expired_task(
        now: object = None, dry_run: object = False, carrier: object = None
    ) -> Summary:
        """Purge released numbers past their deadline; returns the run's summary.

        A warm shutdown of this worker ends the run at its next batch boundary (`interrupted`).
        A run the provider stopped raises `PurgeStopped` with its summary: the task FAILs.
        """
        when, dry = parse_now(now), validation.flag(dry_run, name="dry_run")
        lane = parse_carrier(carrier)
        summary = run_purge(settings, now=when, dry_run=dry, stop=STOP, carrier=lane).as_dict()
        if summary["status"] in STOPPED:
            raise PurgeStopped(summary)
        return Summary(summary)

    @task(name=PRUNE, **limits[PRUNE], **retry, resultrepr_maxsize=SUMMARY_REPR_MAX)
    def prune_audit_task(now: object = None, dry_run: object = False) -> Summary:
        """Erase due labels, delete due tombstones and run records; returns the run's summary."""
        when, dry = parse_now(now), validation.flag(dry_run, name="dry_run")
        return Summary(run_prune(settings, now=when, dry_run=dry, stop=STOP).as_dict())

    # A refusal for the clocks is expected (`throws`): logged without a traceback, FAILURE.
    @task(
        name=RECONCILE,
        **limits[RECONCILE],
        **retry,
        throws=(ClockSkewError,),
        resultrepr_maxsize=SUMMARY_REPR_MAX,
    )
    def reconcile_releasable_task(now: object = None) -> Summary:
        """Reconcile the repurchasable set in Redis with the store; returns the drift repaired."""
        # A failure leaves its marker in Redis for `status` and the exporter, then retries.
        return Summary(reconcile_now(settings, now=parse_now(now)))

    # No retries: beat sends the next run within seconds, and a retry would only queue behind
    # it. No stored result and no events (QuietTask): one run every few seconds would drown
    # Flower's task list; its summary is logged (`relay.applied`) when it applied something.
    @task(name=RELAY, **limits[RELAY], ignore_result=True, base=QuietTask, throws=(ClockSkewError,))
    def relay_events_task(now: object = None) -> dict[str, Any]:
        """Apply committed lifecycle events to the releasable set and the event stream (with
        no Redis on a SQLite store: delete them, nothing reads them)."""
        return run_relay(
            settings,
            now=parse_now(now),
            reconcile=lambda: reconcile_releasable_task.apply_async(expires=600),
        )
