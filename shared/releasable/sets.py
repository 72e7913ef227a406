"""A lifecycle event, and what it changes in the sets (the relay and the reconciliation's
replay apply events the same way)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from shared.clock import iso_timestamp
from shared.releasable.keys import PREFIX, account_key, accounts_key, all_key

# Events that put a number into the set (while its deadline is ahead) or take it out; the
# others (held, unheld, upstream_failed, upstream_reset) do not change what is offered.
ADDS = frozenset({"released"})
REMOVES = frozenset({"registered", "repurchased", "claimed", "purged"})


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
