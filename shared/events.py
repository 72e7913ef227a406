"""Lifecycle events, written in the caller's transaction by every function that changes a number.

The outbox (`number_events`) is what the relay (`shared.releasable.relay`) applies to the
releasable set and appends to the `numbers:events` stream. An event is inserted after the
change it records, while the number's row is locked (or, for a new number, while its unique
key is held), so the events of one number get ids in the order their transactions commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import BigInteger, ColumnElement, Table, any_, insert, literal, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from shared.models import Base, NumberEvent, PhoneNumber, PurgedNumber
from shared.retention import deadline_clause, repurchase_deadline

EVENTS: Table = Base.metadata.tables[NumberEvent.__tablename__]
COLUMNS = ("kind", "phone_number", "account_id", "number_id", "deadline", "occurred_at")


def record(session: Session, *, kind: str, number: PhoneNumber, now: datetime) -> None:
    """One event for `number` as it is now (flushed first, so the event follows the change)."""
    session.flush()
    deadline = repurchase_deadline(number.released_at) if number.released_at is not None else None
    session.execute(
        insert(EVENTS).values(
            kind=kind,
            phone_number=number.phone_number,
            account_id=number.account_id,
            number_id=number.id,
            deadline=deadline,
            occurred_at=now,
        )
    )


def record_claimed(session: Session, *, number_ids: Sequence[int], now: datetime) -> None:
    """`claimed` for each number a purge batch just claimed (its rows are locked)."""
    _record_numbers(session, "claimed", number_ids, now)


def record_upstream_failed(session: Session, *, number_ids: Sequence[int], now: datetime) -> None:
    """`upstream_failed` for each claimed number the provider did not release."""
    _record_numbers(session, "upstream_failed", number_ids, now)


def record_purged(session: Session, *, number_ids: Sequence[int]) -> None:
    """`purged` for each of `number_ids` that this transaction tombstoned and deleted.

    Read from the tombstones (the instant is their `purged_at`): a number that failed the
    purge's re-check has none, and one that has a tombstone was purged by this transaction,
    which holds its row lock.
    """
    if number_ids:
        stones = Base.metadata.tables[PurgedNumber.__tablename__]
        _insert_from(
            session,
            "purged",
            source=stones,
            number_id=stones.c.number_id,
            number_ids=number_ids,
            occurred_at=stones.c.purged_at,
        )


def _record_numbers(session: Session, kind: str, number_ids: Sequence[int], now: datetime) -> None:
    if number_ids:
        numbers = Base.metadata.tables[PhoneNumber.__tablename__]
        _insert_from(
            session,
            kind,
            source=numbers,
            number_id=numbers.c.id,
            number_ids=number_ids,
            occurred_at=literal(now, EVENTS.c.occurred_at.type),
        )


def _insert_from(
    session: Session,
    kind: str,
    *,
    source: Table,
    number_id: ColumnElement[int],
    number_ids: Sequence[int],
    occurred_at: ColumnElement[datetime],
) -> None:
    """Events of `kind` for the rows of `source` (numbers or tombstones) with these ids."""
    if session.get_bind().dialect.name == "postgresql":
        # One INSERT ... SELECT: a purge batch writes thousands of events at a few ms.
        ids = literal(list(number_ids), postgresql.ARRAY(BigInteger))
        rows = select(
            literal(kind),
            source.c.phone_number,
            source.c.account_id,
            number_id,
            deadline_clause(source.c.released_at),
            occurred_at,
        ).where(number_id == any_(ids))
        session.execute(insert(EVENTS).from_select(COLUMNS, rows.order_by(number_id)))
        return
    # SQLite has no interval arithmetic that keeps microseconds: compute deadlines in Python.
    found = session.execute(
        select(
            source.c.phone_number, source.c.account_id, number_id, source.c.released_at, occurred_at
        )
        .where(number_id.in_(list(number_ids)))
        .order_by(number_id)
    ).all()
    if found:
        session.execute(
            insert(EVENTS),
            [
                {
                    "kind": kind,
                    "phone_number": phone_number,
                    "account_id": account_id,
                    "number_id": row_id,
                    "deadline": repurchase_deadline(released) if released is not None else None,
                    "occurred_at": occurred,
                }
                for phone_number, account_id, row_id, released, occurred in found
            ],
        )
