"""The reconciliation: rebuild the releasable set from the store, repair and report drift.

The relay keeps the sets current; this is the safety net (hourly, and on demand). It builds
the sets from one snapshot of the store under staging keys while the relay goes on, then swaps
them in under the writers' lock. Events the relay applied after the snapshot would be undone
by the swap, so they are replayed onto the staging sets first: they are the stream's entries
after the mark taken *before* the snapshot (every event streamed by then had committed, so the
snapshot holds it; a number's later events are a suffix of its history, and applying a suffix
on a state at least as recent as its start gives the number's current state).
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import redis
import structlog
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.clock import iso_timestamp, not_ahead, resolve_now
from shared.clock_skew import check_clocks
from shared.errors import InternalError
from shared.models import PhoneNumber
from shared.releasable.fencing import LockLost, fenced, writer_lock
from shared.releasable.keys import (
    GAP,
    PREFIX,
    STREAM,
    account_key,
    accounts_key,
    all_key,
    meta_key,
    published_key,
)
from shared.releasable.record import LAST_SUCCESS
from shared.releasable.sets import Event, apply_event
from shared.retention import repurchasable_numbers, repurchase_deadline

log = structlog.get_logger("shared.releasable.reconcile")

CHUNK = 5000
LOCK_SECONDS = 60.0
LOCK_WAIT_SECONDS = 60.0
# Staging keys expire this long after their last write, so that a reconciliation killed
# mid-build (SIGKILL, the task's hard time limit) leaves nothing behind for good; well above
# the task's hard time limit (660 s). The next reconciliation also deletes leftovers older than
# this (keys a version without the TTL left, which Redis never expires).
STAGING_SECONDS = 3600


@dataclass(frozen=True)
class StreamMark:
    """Where the stream stood: its last entry's id and how many entries it ever received."""

    last_id: str
    added: int


def stream_mark(client: redis.Redis, stream: str = STREAM) -> StreamMark:
    """The stream's position now (0-0 and 0 when it does not exist)."""
    try:
        info: dict[str, Any] = client.xinfo_stream(stream)
    except redis.ResponseError:  # no such key
        return StreamMark("0-0", 0)
    last = info["last-generated-id"]
    return StreamMark(
        last.decode() if isinstance(last, bytes) else str(last), info["entries-added"]
    )


def reconcile_releasable(
    session: Session,
    client: redis.Redis,
    *,
    now: datetime | None = None,
    prefix: str = PREFIX,
    stream: str = STREAM,
    lock_seconds: float = LOCK_SECONDS,
    lock_wait: float = LOCK_WAIT_SECONDS,
    progress: Callable[[int], None] = lambda _numbers: None,
    clock_skew_max: float | None = None,
) -> dict[str, Any]:
    """Replace the published sets with the store's repurchasable numbers; report the drift.

    `progress` is told the numbers of each chunk written to the staging sets. Refused
    (ClockSkewError, nothing replaced) while this host's clock and the database server's
    differ by more than `clock_skew_max` seconds (default CLOCK_SKEW_MAX_SECONDS)."""
    now = not_ahead(now)  # decided later, it would hide numbers still repurchasable
    check_clocks(session.get_bind(), tolerance=clock_skew_max)
    clock = time.monotonic()
    # Named after Redis's own clock (one clock for every host), so that a later reconciliation
    # can tell a dead one's leftovers from a live one's keys.
    started = int(client.time()[0])
    drop_stale_staging(client, before=started - STAGING_SECONDS, prefix=prefix)
    staging = f"{prefix}:staging:{started}.{uuid.uuid4().hex}"
    try:
        summary = _reconcile(
            session,
            client,
            now=now,
            staging=staging,
            expires=started + STAGING_SECONDS,
            prefix=prefix,
            stream=stream,
            lock_seconds=lock_seconds,
            lock_wait=lock_wait,
            progress=progress,
        )
    finally:
        # Whatever happened (the swap renamed what it used), nothing stays under staging.
        _drop_staging(client, staging)
    summary |= {"seconds": round(time.monotonic() - clock, 3)}
    log.info("releasable.published", **summary)
    drift = summary["drift_added"] or summary["drift_removed"] or summary["drift_rescored"]
    if drift and not summary["first"]:
        log.warning("releasable.drift_repaired", **summary)
    return summary


def _reconcile(
    session: Session,
    client: redis.Redis,
    *,
    now: datetime,
    staging: str,
    expires: int,
    prefix: str,
    stream: str,
    lock_seconds: float,
    lock_wait: float,
    progress: Callable[[int], None],
) -> dict[str, Any]:
    """Build under `staging`, then replay and swap under the writers' lock; refuse the swap
    once the staging keys may have expired or been dropped as stale (at `expires`, Redis's
    clock): a set missing from them would be published as empty."""
    # The mark first, then the snapshot: see the module's docstring.
    mark = stream_mark(client, stream)
    per_account, drift = _build(session, client, now, staging, prefix, progress)
    lock = writer_lock(client, seconds=lock_seconds, prefix=prefix)
    if not lock.acquire(blocking=True, blocking_timeout=lock_wait):
        raise InternalError(
            "The releasable set's writers' lock stayed taken; nothing was replaced.",
            code="publication_lock_busy",
            fix="Run the publication again; check for a relay that does not finish.",
        )
    try:
        if int(client.time()[0]) >= expires:
            raise InternalError(
                "The releasable set's rebuild outlived its staging keys; nothing was replaced.",
                code="publication_too_slow",
                fix="Run the publication again; check what slows the store's read.",
            )
        replayed = _replay(
            client, mark, now=now, staging=staging, per_account=per_account, stream=stream
        )
        summary = _swap(
            client,
            lock,
            now=now,
            staging=staging,
            per_account=per_account,
            drift=drift,
            prefix=prefix,
        )
    except LockLost:
        raise InternalError(
            "The releasable set's writers' lock expired during the swap; nothing was replaced.",
            code="publication_lock_lost",
            fix="Run the publication again; raise its lock time if the swap is slow.",
        ) from None
    finally:
        if lock.owned():
            lock.release()
    return summary | {"replayed": replayed}


@dataclass
class Drift:
    """How the live all-set differed from the store, found while the staging sets are built.

    Compared chunk by chunk (ZMSCORE of each chunk's members), never as a whole: set algebra
    on a million members inside one MULTI would block Redis for seconds. Changes the relay
    applies during the rebuild can show as drift of one each (at most `replayed`).
    """

    live: int = 0  # live members still ahead of their deadline when the rebuild began
    trimmed: int = 0  # live members past their deadline
    found: int = 0  # store members found in the live set ahead of their deadline
    added: int = 0
    rescored: int = 0

    @property
    def removed(self) -> int:
        return max(self.live - self.found, 0)


def _build(  # noqa: PLR0917 - one caller, in order
    session: Session,
    client: redis.Redis,
    now: datetime,
    staging: str,
    prefix: str,
    progress: Callable[[int], None],
) -> tuple[defaultdict[str, int], Drift]:
    """Write the store's repurchasable numbers under the staging keys, and compare them with
    the live set; members per account, and the drift."""
    live = all_key(prefix)
    cutoff = now.timestamp()
    drift = Drift(
        live=int(client.zcount(live, f"({cutoff}", "+inf")),
        trimmed=int(client.zcount(live, "-inf", cutoff)),
    )
    rows = session.execute(
        select(PhoneNumber.phone_number, PhoneNumber.account_id, PhoneNumber.released_at)
        .where(repurchasable_numbers(now))
        .execution_options(yield_per=CHUNK)
    )
    per_account: defaultdict[str, int] = defaultdict(int)
    # Closed on failure too: the server-side cursor must not outlive a failed build.
    with rows:
        for chunk in rows.partitions():
            pipe = client.pipeline(transaction=False)
            scores: dict[str, float] = {}
            by_account: defaultdict[str, dict[str, float]] = defaultdict(dict)
            for phone_number, account_id, released_at in chunk:
                score = repurchase_deadline(cast(datetime, released_at)).timestamp()
                scores[phone_number] = score
                by_account[account_id][phone_number] = score
            pipe.zmscore(live, list(scores))
            pipe.zadd(all_key(staging), scores)
            pipe.expire(all_key(staging), STAGING_SECONDS)
            for account_id, members in by_account.items():
                pipe.zadd(account_key(account_id, staging), members)
                pipe.expire(account_key(account_id, staging), STAGING_SECONDS)
                per_account[account_id] += len(members)
            found = cast(list[float | None], pipe.execute()[0])
            progress(len(scores))
            for score, was in zip(scores.values(), found, strict=True):
                if was is None or was <= cutoff:
                    drift.added += 1
                else:
                    drift.found += 1
                    drift.rescored += was != score
    return per_account, drift


def _replay(
    client: redis.Redis,
    mark: StreamMark,
    *,
    now: datetime,
    staging: str,
    per_account: defaultdict[str, int],
    stream: str,
) -> int:
    """Apply the events streamed since `mark` to the staging sets; how many there were.

    Refuses (nothing replaced) when the stream lost entries meanwhile (trimmed past the mark
    by its MAXLEN, or Redis emptied): the swap would then undo changes it cannot see.
    """
    since = stream_mark(client, stream)
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]],
        client.xrange(stream, min=f"({mark.last_id}", max="+") if since.added else [],
    )
    if len(entries) != since.added - mark.added:
        raise InternalError(
            f"The event stream lost entries during the publication ({since.added - mark.added} "
            f"streamed, {len(entries)} left); nothing was replaced.",
            code="publication_stream_trimmed",
            fix="Run the publication again; raise EVENTS_STREAM_MAXLEN if it keeps happening.",
        )
    pipe = client.pipeline(transaction=False)
    for _id, fields in entries:
        if fields.get(b"kind") == GAP.encode():  # the relay's record of a gap: no number's
            continue
        event = Event.from_fields(fields)
        apply_event(pipe, event, now=now, prefix=staging)
        per_account.setdefault(event.account_id, 0)
    pipe.execute()
    return len(entries)


def _swap(
    client: redis.Redis,
    lock: Any,
    *,
    now: datetime,
    staging: str,
    per_account: defaultdict[str, int],
    drift: Drift,
    prefix: str,
) -> dict[str, Any]:
    """Put the staging sets in place, in one fenced MULTI/EXEC."""
    # A replayed removal can empty a staging set (Redis then drops the key): check which exist.
    candidates = list(per_account)
    exists = client.pipeline(transaction=False)
    for account_id in candidates:
        exists.exists(account_key(account_id, staging))
    accounts = [a for a, found in zip(candidates, exists.execute(), strict=True) if found]
    previous = {a.decode() for a in cast(set[bytes], client.smembers(accounts_key(prefix)))}
    # Without an earlier publication (a new or emptied Redis) everything is "added". The last
    # success, not the hash: a failed publication leaves its marker there too.
    first = not client.hexists(meta_key(prefix), LAST_SUCCESS)
    generated_at = iso_timestamp(resolve_now(None))

    def queue(pipe: Pipeline) -> None:
        pipe.zcard(all_key(staging))
        # UNLINK frees the replaced sets in the background: deleting a million members in
        # RENAME would block Redis for everyone for about a second.
        pipe.unlink(all_key(prefix))
        if accounts:
            # RENAME keeps the staging key's TTL: the published sets must not expire.
            pipe.rename(all_key(staging), all_key(prefix))
            pipe.persist(all_key(prefix))
        for account_id in accounts:
            pipe.unlink(account_key(account_id, prefix))
            pipe.rename(account_key(account_id, staging), account_key(account_id, prefix))
            pipe.persist(account_key(account_id, prefix))
        for account_id in previous - set(accounts):
            pipe.unlink(account_key(account_id, prefix))
        pipe.delete(accounts_key(prefix))
        if accounts:
            pipe.sadd(accounts_key(prefix), *accounts)
        # Readers take the sets as published from here on (read_releasable).
        pipe.set(published_key(prefix), generated_at)

    results = fenced(client, lock, queue)
    summary: dict[str, Any] = {
        "published": int(results[0]),
        "accounts": len(accounts),
        "removed_accounts": len(previous - set(accounts)),
        "drift_added": drift.added,
        "drift_removed": drift.removed,
        "drift_rescored": drift.rescored,
        "trimmed": drift.trimmed,
        "first": first,
        "now": iso_timestamp(now),
        "generated_at": generated_at,
    }
    # The last successful publication: read by `status` and the metrics exporter.
    meta: dict[FieldT, EncodableT] = {"count": summary["published"]}
    meta |= {key: value for key, value in summary.items() if key not in {"published", "first"}}
    client.hset(meta_key(prefix), mapping=meta)
    return summary


def _unlink(client: redis.Redis, keys: Iterable[bytes]) -> int:
    """UNLINK `keys` a thousand at a time; how many existed."""
    dropped, batch = 0, []
    for key in keys:
        batch.append(key)
        if len(batch) == 1000:
            dropped += int(client.unlink(*batch))
            batch = []
    return dropped + (int(client.unlink(*batch)) if batch else 0)


def _drop_staging(client: redis.Redis, staging: str) -> None:
    """Remove what is left under this reconciliation's staging keys (all of them when the swap
    did not happen: the build failed, the lock stayed taken, the stream lost entries)."""
    _unlink(client, client.scan_iter(match=f"{staging}:*", count=1000))


def drop_stale_staging(client: redis.Redis, *, before: int, prefix: str = PREFIX) -> int:
    """Delete staging keys of reconciliations started before `before` (Redis's clock, epoch
    seconds), and those named without a start (left by a version that set no TTL); how many."""

    def stale(key: bytes) -> bool:
        started, dot, _ = key.decode().removeprefix(f"{prefix}:staging:").partition(".")
        return not dot or not started.isdigit() or int(started) < before

    keys = client.scan_iter(match=f"{prefix}:staging:*", count=1000)
    dropped = _unlink(client, (key for key in cast(Iterator[bytes], keys) if stale(key)))
    if dropped:
        log.warning("releasable.staging_dropped", keys=dropped)
    return dropped
