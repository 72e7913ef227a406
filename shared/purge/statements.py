"""The purge's statements: which rows are overdue, and one batch's pick, tombstone and delete.

`TombstoneAndDelete` is the one place numbers are tombstoned and deleted (a batch's, through
`BatchStatements.purge`, or a person's settlement by hand).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CursorResult,
    Executable,
    Select,
    any_,
    bindparam,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from shared.events import record_purged
from shared.models import Base, CampaignAssignment, PhoneNumber, PurgedNumber
from shared.retention import cutoff, purgeable_numbers
from shared.tombstones import TOMBSTONE_COLUMNS, tombstone_values


def count_overdue(session: Session, now: datetime, lane: ColumnElement[bool] | None = None) -> int:
    """How many numbers the purge would remove at `now` (of one carrier's `lane`)."""
    where = purgeable_numbers(now) if lane is None else purgeable_numbers(now) & lane
    return session.execute(select(func.count()).where(where)).scalar_one()


@dataclass(frozen=True)
class TombstoneAndDelete:
    """The one place numbers are tombstoned and deleted: by a purge's batch, or by a person who
    settled a number upstream by hand (shared/purge/operator.py)."""

    # On PostgreSQL one statement; elsewhere an INSERT and a DELETE. The row count of the last
    # one is the number of rows purged.
    statements: tuple[Executable, ...]

    @classmethod
    def build(
        cls, dialect: str, where: ColumnElement[bool], stone: Callable[[Any], list[Any]]
    ) -> TombstoneAndDelete:
        """Statements that tombstone (the values `stone` gives for a number's columns) and
        delete the numbers whose ids are bound as `ids` and that still match `where`."""
        # Core tables, not the ORM entities: the session runs these as plain statements with
        # their parameters (for an entity, parameters would mean an ORM bulk INSERT).
        numbers = Base.metadata.tables[PhoneNumber.__tablename__]
        tombstones = Base.metadata.tables[PurgedNumber.__tablename__]
        if dialect == "postgresql":
            # One statement: the DELETE returns the rows it removed and the INSERT tombstones
            # exactly those, with their campaign (the cascade runs at the statement's end). The
            # ids travel as one array parameter and are looked up through the primary key.
            ids = bindparam("ids", type_=postgresql.ARRAY(BigInteger))
            kept = [name for name in TOMBSTONE_COLUMNS if name in numbers.c]
            gone = (
                delete(numbers)
                .where(numbers.c.id == any_(ids), where)
                .returning(numbers.c.id, *(numbers.c[name] for name in kept))
                .cte("gone")
            )
            stones = select(*stone(gone.c)).select_from(
                gone.outerjoin(CampaignAssignment, CampaignAssignment.number_id == gone.c.id)
            )
            # SQLAlchemy keeps an INSERT's row count only when asked to.
            return cls(
                (
                    insert(tombstones)
                    .from_select(TOMBSTONE_COLUMNS, stones)
                    .execution_options(preserve_rowcount=True),
                )
            )
        locked = numbers.c.id.in_(bindparam("ids", expanding=True)) & where
        stones = (
            select(*stone(numbers.c))
            .outerjoin(CampaignAssignment, CampaignAssignment.number_id == numbers.c.id)
            .where(locked)
        )
        return cls(
            (
                insert(tombstones).from_select(TOMBSTONE_COLUMNS, stones),
                delete(numbers).where(locked),
            )
        )

    def run(self, session: Session, ids: list[int]) -> int:
        """Tombstone and delete the numbers `ids` (locked by the caller) that still match;
        rows purged, each with its `purged` event. ON DELETE CASCADE removes the campaign
        assignment with its number."""
        purged = 0
        for statement in self.statements:
            result = session.execute(statement, {"ids": ids})
            purged = int(cast(CursorResult[Any], result).rowcount)
        if purged:
            record_purged(session, number_ids=ids)
        return purged


@dataclass(frozen=True)
class BatchStatements:
    """The statements of one run's batches, built once; each batch binds its own ids."""

    pick_statement: Select[int]
    start_statement: Select[int]
    purge_statement: TombstoneAndDelete

    @classmethod
    def build(
        cls,
        dialect: str,
        now: datetime,
        run_id: str,
        *,
        claimed: bool = False,
        provider: str | None = None,
        resolution: str | None = None,
        carrier: str = "none",
        lane: ColumnElement[bool] | None = None,
        ordered: bool = False,
    ) -> BatchStatements:
        """Statements for the single-phase path (rows no upstream run has touched) or, with
        `claimed`, for the rows this run claimed and settled upstream (`resolution`) at
        `carrier`, the run's provider (its ledger's carrier; 'none' single-phase); with
        `ordered`, for the rows a carrier's order released (held since or not: a number
        submitted in an order is in the carrier's hands, shared/purge/orders.py)."""
        # Fail safe: the single-phase path never deletes a row with upstream state (claimed,
        # or carrying a provider error): the carrier may still hold that number.
        if ordered:
            overdue = (
                (PhoneNumber.released_at <= cutoff(now))
                & (PhoneNumber.purge_state == "purging")
                & PhoneNumber.provider_order_id.is_not(None)
            )
        else:
            overdue = purgeable_numbers(now) & (
                (PhoneNumber.purge_state == "purging")
                if claimed
                else (PhoneNumber.purge_state.is_(None) & PhoneNumber.provider_error_code.is_(None))
            )
        if lane is not None:  # the single-phase path takes the numbers of no carrier only
            overdue = overdue & lane
        stone = partial(
            tombstone_values,
            now=now,
            run_id=run_id,
            provider=provider,
            resolution=resolution,
            carrier=carrier,
        )
        # A keyset on the primary key: each batch starts where the previous one stopped
        # instead of re-reading the rows already purged, and rows come in heap order (ids grow
        # with inserts), so a run visits each table page about once. With a large backlog the
        # planner walks the primary key; with a few overdue rows it reads the partial index on
        # released_at and sorts. SKIP LOCKED passes by rows another transaction holds (a
        # repurchase in progress, a concurrent batch); they wait for the next run.
        pick = (
            select(PhoneNumber.id)
            .where(overdue, PhoneNumber.id > bindparam("after"))
            .order_by(PhoneNumber.id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        start = select(PhoneNumber.id).where(overdue).order_by(PhoneNumber.id).limit(1)
        # `overdue` again in the purge: the re-check under the lock (see `purge`).
        return cls(pick, start, TombstoneAndDelete.build(dialect, overdue, stone))

    def start(self, session: Session) -> int:
        """The keyset's start: just below the first overdue id, found without any lock.

        After a large purge the primary key's first pages are full of entries of deleted rows
        until VACUUM runs; the first scan past them pays for it (and marks them dead for the
        next). Paid here, in a read-only statement, rather than inside the first batch's
        transaction, whose locks the API may be waiting on.
        """
        first = session.scalar(self.start_statement)
        return 0 if first is None else int(first) - 1

    def pick(self, session: Session, *, after: int, limit: int) -> list[int]:
        """Lock up to `limit` overdue numbers with ids above `after`; their ids, ascending."""
        return list(session.scalars(self.pick_statement, {"after": after, "limit": limit}))

    def purge(self, session: Session, ids: list[int]) -> int:
        """Tombstone and delete the locked numbers `ids` that are still overdue; rows purged.

        Runs after the pick, in the same transaction, so its snapshot is taken once the rows
        are locked: the rule is checked again on what is committed now, and a number
        repurchased between the pick's snapshot and its lock is left alone.
        """
        return self.purge_statement.run(session, ids)


def purge_batch(session: Session, *, now: datetime, run_id: str, limit: int, after: int = 0) -> int:
    """One batch in the caller's transaction: lock, tombstone, delete. Returns rows purged."""
    batches = BatchStatements.build(session.get_bind().dialect.name, now, run_id)
    ids = batches.pick(session, after=after, limit=limit)
    return batches.purge(session, ids) if ids else 0
