"""A purge lane per carrier: the numbers held at one carrier, purged under that carrier's lock.

A number is in the lane of its recorded carrier; a number stored without one (NULL) is in the
lane of the run's default carrier (PROVIDER). Runs of different lanes proceed at once, on
different workers, each with its own budget, pace and rate limit: one carrier down, slow or
rate-limited holds up no other.
"""

from __future__ import annotations

import zlib
from datetime import datetime

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from shared.models import PhoneNumber
from shared.retention import purgeable_numbers


def in_lane(carrier: str, default: str) -> ColumnElement[bool]:
    """The numbers of `carrier`'s lane for a run whose default carrier is `default`."""
    own = PhoneNumber.carrier == carrier
    return or_(own, PhoneNumber.carrier.is_(None)) if carrier == default else own


def due_lanes(session: Session, now: datetime, default: str) -> list[str]:
    """The carriers holding numbers due at `now` ('none' first: nothing to call there).

    One index probe per carrier (ix_phone_numbers_lane_due: the next carrier in order that
    holds a due number), not a pass over every due number: at 10M numbers that pass took
    700 ms at the start of every run.
    """
    due = purgeable_numbers(now)
    found: set[str] = set()
    after: str | None = None
    while True:
        query = select(PhoneNumber.carrier).where(PhoneNumber.carrier.is_not(None), due)
        if after is not None:
            query = query.where(PhoneNumber.carrier > after)
        after = session.scalar(query.order_by(PhoneNumber.carrier).limit(1))
        if after is None:
            break
        found.add(after)
    # In the index's order, as the probes above: the planner walks it, not the table.
    without = select(PhoneNumber.id).where(PhoneNumber.carrier.is_(None), due)
    if session.scalar(without.order_by(PhoneNumber.carrier, PhoneNumber.released_at).limit(1)):
        found.add(default)
    return sorted(found, key=lambda name: (name != "none", name))


def lane_lock_key(carrier: str) -> int:
    """The advisory lock key of one carrier's lane (PostgreSQL takes a bigint)."""
    return zlib.crc32(f"numbers-retention purge lane {carrier}".encode())
