"""The relay: apply committed lifecycle events to the releasable set and the event stream.

Each batch reads the oldest events of the outbox, applies them to Redis in one fenced
MULTI/EXEC (set changes, stream entries, and their ids in the `applied` set), then deletes them
from the outbox and commits. There is no high-water mark: outbox ids come from a sequence and a
transaction can commit a lower id after a higher one was relayed; such an event is simply still
in the outbox and goes with the next batch. Per number, ids follow commit order (an event is
written under its number's row lock), so a number's events are applied in commit order.

A relay killed after its EXEC but before its commit leaves the events in the outbox and their
ids in the `applied` set: the next relay deletes them without applying them twice. Killed
before its EXEC, it applied nothing. Either way nothing is lost and nothing is streamed twice.

The highest id relayed is kept in the store (`RelayMark`) and in Redis alike, not to decide what
to relay but to notice a Redis that lost what was relayed to it (`_check_mark`). After each
batch the stream is trimmed, never past what a consumer group has not read (`shared.stream`).

Where there is no Redis to relay to (the embedded default: a SQLite file, no Redis), nothing
reads the outbox: `discard_events` empties it instead, so that it stays bounded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, cast

import redis
import structlog
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT
from sqlalchemy import CursorResult, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import as_utc, iso_timestamp, not_ahead, utcnow
from shared.clock_skew import check_clocks
from shared.events import EVENTS
from shared.models import RelayMark
from shared.releasable.fencing import LockLost, fenced, writer_lock
from shared.releasable.keys import (
    GAP,
    PREFIX,
    STREAM,
    applied_key,
    published_key,
    relay_meta_key,
)
from shared.releasable.sets import Event, apply_event
from shared.run_status import SUCCEEDED, RunStatus
from shared.stream import trim_stream

log = structlog.get_logger("shared.releasable.relay")

BATCH_SIZE = 1000
MAX_SECONDS = 5.0
LOCK_SECONDS = 30.0
STREAM_MAXLEN = 100_000  # the stream's ceiling (shared.stream)
STREAM_RETENTION_DAYS = 400  # AUDIT_RETENTION_DAYS: read entries older than this are trimmed


RELAY_LAST_SUCCESS = "last_success_at"
# The highest outbox id applied to this Redis; the store keeps the same mark (RelayMark).
RELAYED_THROUGH = "relayed_through"


def relay_last_success(client: redis.Redis, *, prefix: str = PREFIX) -> datetime | None:
    """When a relay run to this Redis last succeeded (None: never on record)."""
    value = client.hget(relay_meta_key(prefix), RELAY_LAST_SUCCESS)
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    return as_utc(datetime.fromisoformat(text))


@dataclass
class RelayReport:
    """What one relay run did; `as_dict()` is the task's JSON summary."""

    status: (
        RunStatus  # completed, limit_reached, skipped (another writer holds the lock), lost_lock
    )
    now: str
    applied: int = 0
    already_applied: int = 0  # applied by a relay that died before deleting them
    discarded: int = 0  # deleted unrelayed: no Redis to relay to (discard_events)
    batches: int = 0
    remaining: int = 0
    seconds: float = 0.0
    # No reconciliation has published the sets yet (a new or emptied Redis): one is due.
    unpublished: bool = False
    # Redis was found behind the store (`after_id`, `through_id`): see `_check_mark`.
    gap: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, keys in snake_case."""
        return asdict(self)


def relay_events(
    session_factory: sessionmaker[Session],
    client: redis.Redis,
    *,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    max_seconds: float = MAX_SECONDS,
    lock_seconds: float = LOCK_SECONDS,
    stream_maxlen: int = STREAM_MAXLEN,
    retention_days: int = STREAM_RETENTION_DAYS,
    prefix: str = PREFIX,
    stream: str = STREAM,
    clock_skew_max: float | None = None,
) -> RelayReport:
    """Apply the outbox's events to Redis in batches until it is empty or `max_seconds` pass.

    One relay at a time: while another writer holds the lock this returns `skipped`. After
    each batch the stream is trimmed (`shared.stream.trim_stream`): to `stream_maxlen` entries
    at most, and of the entries older than `retention_days` that every consumer group has read.
    Refused (ClockSkewError, nothing relayed) while this host's clock and the database
    server's differ by more than `clock_skew_max` seconds (default CLOCK_SKEW_MAX_SECONDS).
    """
    now = not_ahead(now)  # decided later, it would hide numbers still repurchasable
    check_clocks(session_factory.kw["bind"], tolerance=clock_skew_max)
    clock = time.monotonic()
    report = RelayReport(status=RunStatus.RUNNING, now=iso_timestamp(now))
    lock = writer_lock(client, seconds=lock_seconds, prefix=prefix)
    if not lock.acquire(blocking=False):
        report.status = RunStatus.SKIPPED
        return report
    try:
        through = _check_mark(
            session_factory, client, lock, report=report, prefix=prefix, stream=stream
        )
        done = _forget_committed(session_factory, client, prefix)
        while report.status == RunStatus.RUNNING:
            relayed = _batch(
                session_factory,
                client,
                lock=lock,
                report=report,
                done=done,
                through=through,
                now=now,
                batch_size=batch_size,
                stream_maxlen=stream_maxlen,
                retention_days=retention_days,
                prefix=prefix,
                stream=stream,
            )
            if not relayed:
                report.status = RunStatus.COMPLETED
            elif time.monotonic() - clock >= max_seconds:
                report.status = RunStatus.LIMIT_REACHED
    except LockLost:
        report.status = RunStatus.LOST_LOCK
    finally:
        if lock.owned():
            lock.release()
    if report.status in SUCCEEDED:
        # For the exporter (numbers_retention_relay_last_success_timestamp_seconds): the host's
        # time, not the run's `now`, as the publication's failure marker does.
        client.hset(relay_meta_key(prefix), RELAY_LAST_SUCCESS, iso_timestamp(utcnow()))
    if report.status != RunStatus.COMPLETED:  # completed: the last batch found the outbox empty
        report.remaining = _outbox_size(session_factory)
    report.unpublished = not client.exists(published_key(prefix))
    report.seconds = round(time.monotonic() - clock, 3)
    if (
        report.applied
        or report.already_applied
        or report.status == RunStatus.LOST_LOCK
        or report.gap
    ):
        log.info("relay.applied", **report.as_dict())
    return report


def discard_events(
    session_factory: sessionmaker[Session],
    *,
    batch_size: int = BATCH_SIZE,
    max_seconds: float = MAX_SECONDS,
) -> RelayReport:
    """Delete the outbox's events, oldest first, `batch_size` per transaction, until it is
    empty or `max_seconds` pass: for a store that has no Redis to relay them to.

    Only for such a store: a relay to Redis that comes later finds these events gone (its
    reconciliation still rebuilds the sets from the store; the stream never gets them).
    """
    clock = time.monotonic()
    report = RelayReport(status=RunStatus.RUNNING, now=iso_timestamp(utcnow()))
    oldest = select(EVENTS.c.id).order_by(EVENTS.c.id).limit(batch_size).scalar_subquery()
    while report.status == RunStatus.RUNNING:
        with session_factory.begin() as session:
            result = session.execute(delete(EVENTS).where(EVENTS.c.id.in_(oldest)))
            deleted = int(cast(CursorResult[Any], result).rowcount)
        report.discarded += deleted
        report.batches += 1 if deleted else 0
        if deleted < batch_size:
            report.status = RunStatus.COMPLETED
        elif time.monotonic() - clock >= max_seconds:
            report.status = RunStatus.LIMIT_REACHED
    if report.status != RunStatus.COMPLETED:
        report.remaining = _outbox_size(session_factory)
    report.seconds = round(time.monotonic() - clock, 3)
    if report.discarded:
        log.info("relay.discarded", **report.as_dict())
    return report


def _outbox_size(factory: sessionmaker[Session]) -> int:
    """Events in the outbox: not yet relayed (or discarded)."""
    with factory() as session:
        return int(session.execute(select(func.count()).select_from(EVENTS)).scalar_one())


def _forget_committed(factory: sessionmaker[Session], client: redis.Redis, prefix: str) -> set[int]:
    """Ids in the `applied` set whose events are still in the outbox (applied, not deleted).

    The others were deleted by a commit the previous relay did not live to confirm.
    """
    marked = {int(i) for i in cast(set[bytes], client.smembers(applied_key(prefix)))}
    if not marked:
        return set()
    with factory() as session:
        pending = set(session.scalars(select(EVENTS.c.id).where(EVENTS.c.id.in_(marked))))
    if marked - pending:
        client.srem(applied_key(prefix), *(marked - pending))
    return pending


def _check_mark(
    factory: sessionmaker[Session],
    client: redis.Redis,
    lock: Any,
    *,
    report: RelayReport,
    prefix: str,
    stream: str,
) -> list[int]:
    """The highest outbox id relayed, as a one-item list the batches raise.

    The store and Redis each keep it. A Redis whose mark is lower, or gone, lost what the
    relay had applied and the outbox no longer holds (restored from an older snapshot, or
    restarted without persistence): its sets are withdrawn (readers get `NotPublished` until
    the reconciliation the relay's task asks for at once), and a `gap` entry tells the
    stream's consumers which event ids they may have missed.
    """
    with factory() as session:
        mark = session.get(RelayMark, prefix)
    stored = mark.relayed_through if mark is not None else None
    raw = client.hget(relay_meta_key(prefix), RELAYED_THROUGH)
    held = int(raw) if raw is not None else None
    if stored is None or (held is not None and held >= stored):
        return [max(held or 0, stored or 0)]
    report.gap = {"after_id": held or 0, "through_id": stored}
    entry: dict[FieldT, EncodableT] = {
        "kind": GAP,
        "after_id": held or 0,
        "through_id": stored,
        "occurred_at": iso_timestamp(utcnow()),
    }

    def queue(pipe: Pipeline) -> None:
        pipe.xadd(stream, entry)
        pipe.delete(published_key(prefix))
        pipe.hset(relay_meta_key(prefix), RELAYED_THROUGH, stored)

    fenced(client, lock, queue)
    log.warning("relay.redis_behind", **report.gap)
    return [stored]


def _store_mark(session: Session, prefix: str, through: int) -> None:
    """Raise the store's mark to `through`, in the transaction that deletes the events."""
    mark = session.get(RelayMark, prefix)
    if mark is None:
        session.add(RelayMark(name=prefix, relayed_through=through, updated_at=utcnow()))
    elif through > mark.relayed_through:
        mark.relayed_through, mark.updated_at = through, utcnow()


def _batch(
    factory: sessionmaker[Session],
    client: redis.Redis,
    *,
    lock: Any,
    report: RelayReport,
    done: set[int],
    through: list[int],
    now: datetime,
    batch_size: int,
    stream_maxlen: int,
    retention_days: int,
    prefix: str,
    stream: str,
) -> bool:
    """Relay the oldest `batch_size` events; False when the outbox was empty."""
    with factory.begin() as session:
        events = [
            Event(**row._mapping)
            for row in session.execute(select(EVENTS).order_by(EVENTS.c.id).limit(batch_size))
        ]
        if not events:
            return False
        fresh = [event for event in events if event.id not in done]
        through[0] = max(through[0], *(event.id for event in events))

        def queue(pipe: Pipeline) -> None:
            for event in fresh:
                apply_event(pipe, event, now=now, prefix=prefix)
                # Trimmed after the batch, never past what a consumer group has not read.
                pipe.xadd(stream, event.fields())
            if fresh:
                pipe.sadd(applied_key(prefix), *(event.id for event in fresh))
            pipe.hset(relay_meta_key(prefix), RELAYED_THROUGH, through[0])

        # Raises LockLost (nothing written): the transaction rolls back, the events stay.
        fenced(client, lock, queue)
        ids = [event.id for event in events]
        session.execute(delete(EVENTS).where(EVENTS.c.id.in_(ids)))
        _store_mark(session, prefix, through[0])
    # Committed: these ids need no more protection against a second application.
    client.srem(applied_key(prefix), *ids)
    trim_stream(
        client, maxlen=stream_maxlen, retention_days=retention_days, stream=stream, prefix=prefix
    )
    done.difference_update(ids)
    report.applied += len(fresh)
    report.already_applied += len(events) - len(fresh)
    report.batches += 1
    return True
