"""The event stream `numbers:events`: trimmed only below what every consumer group has read.

Other services register by creating a consumer group on the stream (runbook: "The stream").
The relay trims after each batch it appends:

- entries every group has read and acknowledged, older than `AUDIT_RETENTION_DAYS` by their
  stream id (Redis's clock), are trimmed (XTRIM MINID, never past the slowest group);
- the stream never holds more than `EVENTS_STREAM_MAXLEN` entries, the memory ceiling: beyond
  it the oldest go, read ones first (they are the oldest). An entry at or above the slowest
  group's floor (not read, or not acknowledged) that goes that way is counted
  (`dropped_unread`, exported and alerted) and logged.

Without any group nobody is registered to lose an entry: the ceiling alone applies, uncounted.
A group's floor is its oldest pending entry (delivered, not acknowledged: a consumer that died
may claim it again) or else the entry after its last delivered one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import structlog

from shared.releasable.keys import PREFIX, STREAM

log = structlog.get_logger("shared.stream")

DAY_MS = 86_400_000
DROPPED_UNREAD = "dropped_unread"

# Trims the stream to ARGV[2] entries; counts the entries dropped at or above the floor
# ARGV[1] (unread by the slowest group; '' when no group is registered). Atomic, and the
# entries it counts never leave Redis.
_CEILING = """
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[2])
if excess <= 0 then return {0, 0} end
local read = excess
if ARGV[1] ~= '' then
  read = #redis.call('XRANGE', KEYS[1], '-', '(' .. ARGV[1], 'COUNT', excess)
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[2])
return {excess, excess - read}
"""


def stream_meta_key(prefix: str = PREFIX) -> str:
    """Hash of the stream's record: `dropped_unread`, entries dropped before a group read them."""
    return f"{prefix}:stream:meta"


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Group:
    """A consumer group as the trim sees it."""

    name: str
    pending: int  # delivered, not acknowledged
    lag: int | None  # not delivered yet (None: Redis cannot tell)
    floor: str  # the oldest entry it may still need

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pending": self.pending, "lag": self.lag}


def consumer_groups(client: redis.Redis, stream: str = STREAM) -> list[Group]:
    """The stream's consumer groups (none when the stream does not exist)."""
    try:
        raw: list[dict[str, Any]] = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such key
        return []
    groups = []
    for info in raw:
        name = _text(info["name"])
        ms, seq = _id(_text(info["last-delivered-id"]))
        floor = f"{ms}-{seq + 1}"
        if info["pending"]:
            oldest = _text(client.xpending(stream, name)["min"])
            floor = min(floor, oldest, key=_id)
        lag = info.get("lag")
        groups.append(Group(name, int(info["pending"]), None if lag is None else int(lag), floor))
    return groups


@dataclass(frozen=True)
class Trim:
    """What one trim removed: `trimmed` entries, `dropped_unread` of them unread by a group."""

    trimmed: int = 0
    dropped_unread: int = 0


def trim_stream(
    client: redis.Redis,
    *,
    maxlen: int,
    retention_days: int,
    stream: str = STREAM,
    prefix: str = PREFIX,
) -> Trim:
    """Trim the stream by the rules of the module's docstring."""
    groups = consumer_groups(client, stream)
    floor = min((group.floor for group in groups), key=_id) if groups else None
    seconds, micros = client.time()
    cutoff = f"{seconds * 1000 + micros // 1000 - retention_days * DAY_MS}-0"
    minid = cutoff if floor is None else min(cutoff, floor, key=_id)
    trimmed = int(client.xtrim(stream, minid=minid, approximate=False))
    capped = client.register_script(_CEILING)
    excess, unread = (int(n) for n in capped(keys=[stream], args=[floor or "", maxlen]))
    if unread:
        client.hincrby(stream_meta_key(prefix), DROPPED_UNREAD, unread)
        slowest = [group.name for group in groups if group.floor == floor]
        log.warning("stream.dropped_unread", dropped=unread, maxlen=maxlen, groups=slowest)
    return Trim(trimmed + excess, unread)


def stream_state(client: redis.Redis, stream: str = STREAM, prefix: str = PREFIX) -> dict[str, Any]:
    """The stream's length, its groups (pending, lag) and the entries ever dropped unread."""
    dropped = client.hget(stream_meta_key(prefix), DROPPED_UNREAD)
    return {
        "entries": int(client.xlen(stream)),
        "groups": [group.as_dict() for group in consumer_groups(client, stream)],
        "dropped_unread": int(dropped or 0),
    }
