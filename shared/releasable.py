"""The releasable set: repurchasable numbers in Redis sorted sets, scored by their deadline.

Two writers keep it: the relay (`shared.relay`) applies lifecycle events as they commit, and
the reconciliation (`shared.reconcile`) rebuilds it from the store. They take turns under one
Redis lock, and every write is fenced by it (see `fenced`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis
from redis.client import Pipeline
from redis.lock import Lock
from redis.typing import EncodableT, FieldT

from shared.clock import iso_timestamp, resolve_now
from shared.errors import InternalError

PREFIX = "releasable"
# The lifecycle stream other services read with consumer groups (runbook: "The event stream").
STREAM = "numbers:events"
# Events that put a number into the set (while its deadline is ahead) or take it out; the
# others (held, unheld, upstream_failed, upstream_reset) do not change what is offered.
ADDS = frozenset({"released"})
REMOVES = frozenset({"registered", "repurchased", "claimed", "purged"})
# The stream entry the relay writes when it finds Redis behind the store: events with ids in
# (`after_id`, `through_id`] may be missing from the stream (runbook: "The stream").
GAP = "gap"


def all_key(prefix: str = PREFIX) -> str:
    """Sorted set of every repurchasable number."""
    return f"{prefix}:all"


def account_key(account_id: str, prefix: str = PREFIX) -> str:
    """Sorted set of one account's repurchasable numbers."""
    return f"{prefix}:account:{account_id}"


def meta_key(prefix: str = PREFIX) -> str:
    """Hash describing the last successful reconciliation (runbook: "The releasable set")."""
    return f"{prefix}:meta"


def published_key(prefix: str = PREFIX) -> str:
    """Set, with the sets, by each successful reconciliation; gone from a Redis that lost its
    data (restarted empty) and deleted by the relay when it finds Redis behind the store:
    without it the sets are not published (`read_releasable` raises `NotPublished`)."""
    return f"{prefix}:published"


def accounts_key(prefix: str = PREFIX) -> str:
    """Set of the account ids that have a published sorted set."""
    return f"{prefix}:accounts"


def lock_key(prefix: str = PREFIX) -> str:
    """The writers' lock: the relay or the reconciliation's swap, one at a time."""
    return f"{prefix}:writer"


def applied_key(prefix: str = PREFIX) -> str:
    """Ids of events applied to Redis whose deletion from the outbox is not yet known to
    have committed (the relay removes them once it has)."""
    return f"{prefix}:relay:applied"


@dataclass(frozen=True)
class Event:
    """A lifecycle event as the relay reads it from the outbox and writes it to the stream."""

    id: int
    kind: str
    phone_number: str
    account_id: str
    number_id: int
    deadline: datetime | None
    occurred_at: datetime

    def fields(self) -> dict[FieldT, EncodableT]:
        """The stream entry's fields (deadline left out when the number has none)."""
        fields: dict[FieldT, EncodableT] = {
            "id": self.id,
            "kind": self.kind,
            "phone_number": self.phone_number,
            "account_id": self.account_id,
            "number_id": self.number_id,
            "occurred_at": iso_timestamp(self.occurred_at),
        }
        if self.deadline is not None:
            fields["deadline"] = iso_timestamp(self.deadline)
        return fields

    @classmethod
    def from_fields(cls, raw: Mapping[bytes, bytes]) -> Event:
        """The event a stream entry holds."""
        value = {k.decode(): v.decode() for k, v in raw.items()}
        deadline = value.get("deadline")
        return cls(
            id=int(value["id"]),
            kind=value["kind"],
            phone_number=value["phone_number"],
            account_id=value["account_id"],
            number_id=int(value["number_id"]),
            deadline=_parse(deadline) if deadline else None,
            occurred_at=_parse(value["occurred_at"]),
        )


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def apply_event(pipe: Pipeline, event: Event, *, now: datetime, prefix: str = PREFIX) -> None:
    """Queue the set changes of `event`: idempotent, and the last event of a number decides."""
    members = (all_key(prefix), account_key(event.account_id, prefix))
    if event.kind in ADDS and event.deadline is not None and event.deadline > now:
        score = event.deadline.timestamp()
        for key in members:
            pipe.zadd(key, {event.phone_number: score})
        pipe.sadd(accounts_key(prefix), event.account_id)
    elif event.kind in ADDS or event.kind in REMOVES:
        # A release already past its deadline is not offered: readers would skip it anyway.
        for key in members:
            pipe.zrem(key, event.phone_number)


class NotPublished(InternalError):
    """503: the sets are not published (Redis lost them); a reconciliation is on its way."""

    status = 503
    default_code = "releasable_not_published"


class LockLost(Exception):
    """The writers' lock expired or was taken over; this writer's changes were not applied."""


def writer_lock(client: redis.Redis, *, seconds: float, prefix: str = PREFIX) -> Lock:
    """The writers' lock (redis-py's token lock), expiring `seconds` after its last use."""
    lock: Lock = client.lock(lock_key(prefix), timeout=seconds, thread_local=False)
    return lock


def fenced(client: redis.Redis, lock: Lock, queue: Callable[[Pipeline], None]) -> list[Any]:
    """Run the commands `queue` adds in one MULTI/EXEC, only while `lock` is still ours.

    A writer that stalled past its lock's expiry (a long pause, a lost connection) must not
    write after another one took over: WATCH on the lock key makes EXEC fail if the lock
    changed hands between the check and the write. The lock's lifetime is renewed with it.
    """
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(lock.name)  # type: ignore[no-untyped-call]
            if pipe.get(lock.name) != lock.local.token:
                raise LockLost(lock.name)
            pipe.multi()
            queue(pipe)
            pipe.pexpire(lock.name, int(cast(float, lock.timeout) * 1000))
            return pipe.execute()
        except redis.WatchError:
            raise LockLost(lock.name) from None


def read_releasable(
    client: redis.Redis,
    *,
    account_id: str | None = None,
    now: datetime | None = None,
    prefix: str = PREFIX,
) -> list[tuple[str, datetime]]:
    """Published numbers still repurchasable at `now`, soonest deadline first.

    A score at or before `now` is treated as gone, so a stale set never offers an expired number.
    Raises `NotPublished` while no reconciliation has published the sets into this Redis (new,
    restarted empty, or found behind the store): an empty list always means none.
    """
    now = resolve_now(now)
    key = all_key(prefix) if account_id is None else account_key(account_id, prefix)
    # One MULTI: the marker and the set are read at the same instant of Redis.
    with client.pipeline(transaction=True) as pipe:
        pipe.exists(published_key(prefix))
        pipe.zrangebyscore(key, f"({now.timestamp()}", "+inf", withscores=True)
        published, members = cast(tuple[int, list[tuple[bytes, float]]], pipe.execute())
    if not published:
        raise NotPublished(
            "The releasable numbers are not published in Redis yet (a new or emptied Redis, or "
            "one found behind the store); a reconciliation is on its way.",
            fix="Retry in a few seconds, or read the store, the source of truth, instead "
            "(released_numbers_body: GET /numbers/released).",
        )
    return [
        (member.decode(), datetime.fromtimestamp(score, tz=now.tzinfo)) for member, score in members
    ]


def publication(client: redis.Redis, *, prefix: str = PREFIX) -> dict[str, str]:
    """Metadata of the last publication (empty when nothing was published yet)."""
    raw = cast(dict[bytes, bytes], client.hgetall(meta_key(prefix)))
    return {k.decode(): v.decode() for k, v in raw.items()}
