"""Counts kept, not scanned (shared/counts.py): after any sequence of changes the kept counts
equal a full scan, at any instant; the reconciliation finds and repairs drift."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

import shared
import shared.counts
from shared.counts import (
    COMPACT_AT,
    MINUTE_NAMES,
    compact_counts,
    counts_drift,
    kept_counts,
    reconcile_counts,
    scanned_counts,
)
from shared.db import make_session_factory
from shared.demo import seed_demo
from shared.lifecycle import set_purge_hold
from shared.models import NumberCount, NumberCountDelta, PhoneNumber
from shared.provider import REFUSED_CODE
from shared.releasable.relay import discard_events
from shared.retention import RETENTION, cutoff
from tests.factories import make_number
from tests.purging import purge_expired
from tests.stores import TABLES, delete_all_rows

NUMBERS = [f"+1415558{i:04d}" for i in range(10)]
ACCOUNT = "acc_counts"
# Release times around the deadline's hour and, to the second, around the readings' cutoffs
# (SHIFTS), so that readings split hours and minutes at the cutoff.
AGES = (
    [RETENTION + timedelta(minutes=m) for m in (-70, -20, -1, 0, 1, 15, 45, 61, 150, 60 * 24 * 3)]
    + [
        RETENTION - timedelta(minutes=m, seconds=s)
        for m, s in ((10, 5), (10, 50), (25, 30), (25, 55), (36, 59), (37, 0), (37, 1), (59, 59))
    ]
    + [timedelta(days=1)]
)
SEEDED = [
    RETENTION + timedelta(minutes=m, seconds=s)
    for m, s in ((-20, 0), (1, 0), (15, 0), (45, 0), (61, 0), (-10, -5), (-25, -55), (-37, 0))
] + [RETENTION - timedelta(minutes=36, seconds=59), None]
# The instants the counts are read at, around the store's `now` (on the hour): cutoffs early in
# their hour (counted up to the cutoff) and late (counted after it), early and late in their
# minute, on a minute's boundary and on the hour's, each with releases on the side counted.
SHIFTS = [
    timedelta(minutes=m, seconds=s)
    for m, s in ((-50, 0), (-15, 0), (0, 0), (10, 0), (25, 0), (10, 20), (25, 40), (37, 0))
] + [timedelta(hours=1), timedelta(days=1)]
FAILURES = {
    "transient": ("provider_refused", False),
    "permanent": ("provider_refused", True),
    "refused_person": (REFUSED_CODE, True),
    "refused_carrier": (REFUSED_CODE, False),
}
OPERATION = st.one_of(
    st.tuples(st.just("register"), st.integers(0, len(NUMBERS) - 1)),
    st.tuples(st.just("release"), st.integers(0, len(NUMBERS) - 1), st.sampled_from(AGES)),
    st.tuples(st.just("repurchase"), st.integers(0, len(NUMBERS) - 1)),
    st.tuples(st.sampled_from(["hold", "unhold", "reset"]), st.integers(0, len(NUMBERS) - 1)),
    st.tuples(st.just("fail"), st.integers(0, len(NUMBERS) - 1), st.sampled_from(sorted(FAILURES))),
    st.tuples(st.sampled_from(["purge", "relay", "compact", "reconcile"])),
)


def _fail(session: Session, phone_number: str, kind: str, now: datetime) -> None:
    code, permanent = FAILURES[kind]
    session.execute(
        update(PhoneNumber)
        .where(PhoneNumber.phone_number == phone_number, PhoneNumber.billing_status == "released")
        .values(
            purge_state="purging",
            provider_error_code=code,
            provider_failed_permanently=permanent,
            provider_next_attempt_at=None if permanent else now + timedelta(hours=1),
        )
    )


def _change(session: Session, operation: tuple[object, ...], now: datetime) -> None:
    action, *args = operation
    number = NUMBERS[int(str(args[0]))] if args else ""
    if action == "register":
        make_number(session, account_id=ACCOUNT, phone_number=number, now=now)
    elif action == "release":
        age = args[1]
        assert isinstance(age, timedelta)
        shared.release_number(session, account_id=ACCOUNT, phone_number=number, now=now - age)
    elif action == "repurchase":
        released = session.scalar(
            select(PhoneNumber.released_at).where(PhoneNumber.phone_number == number)
        )
        when = (released or now) + timedelta(minutes=1)
        shared.repurchase_number(session, account_id=ACCOUNT, phone_number=number, now=when)
    elif action in {"hold", "unhold"}:
        set_purge_hold(session, phone_number=number, held=action == "hold", now=now)
    elif action == "fail":
        _fail(session, number, str(args[1]), now)
    elif action == "reset":
        session.execute(
            update(PhoneNumber)
            .where(PhoneNumber.phone_number == number)
            .values(purge_state=None, provider_error_code=None, provider_failed_permanently=False)
        )


def _deltas(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(NumberCountDelta)) or 0)


def _apply(factory: sessionmaker[Session], operation: tuple[object, ...], now: datetime) -> None:
    if operation[0] == "purge":
        purge_expired(factory, now=now, batch_size=2)
    elif operation[0] == "relay":
        discard_events(factory, batch_size=3)
    elif operation[0] == "compact":  # the deltas folded (PostgreSQL), as the relay's hour does
        with factory.begin() as session:
            compact_counts(session)
    elif operation[0] == "reconcile":  # and the minute rows before the cutoff's hour dropped
        with factory() as session:
            reconcile_counts(session, now)
    else:
        try:
            with factory.begin() as session:
                _change(session, operation, now)
        except shared.ApiError:
            pass  # refused by the rules: no change


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=st.lists(OPERATION, min_size=1, max_size=14))
def test_the_kept_counts_equal_a_full_scan_after_any_changes(
    operations: list[tuple[object, ...]], engine: Engine, now: datetime
) -> None:
    factory = make_session_factory(engine)
    with factory.begin() as session:
        # Every example starts from released numbers on both sides of each reading's cutoff.
        for number, age in zip(NUMBERS, SEEDED, strict=True):
            released = None if age is None else now - age
            make_number(session, account_id=ACCOUNT, phone_number=number, released_at=released)
    try:
        for operation in operations:
            _apply(factory, operation, now)
        with factory() as session:
            for shift in SHIFTS:
                assert kept_counts(session, now + shift) == scanned_counts(session, now + shift)
            assert counts_drift(session) == {}
            assert _deltas(session) < COMPACT_AT
        # Folding the deltas changes no reading.
        _apply(factory, ("compact",), now)
        with factory() as session:
            assert _deltas(session) == 0
            for shift in SHIFTS:
                assert kept_counts(session, now + shift) == scanned_counts(session, now + shift)
    finally:
        # Every example starts empty (DELETE: quicker than TRUNCATE for a few rows).
        with engine.begin() as connection:
            for table in TABLES:
                connection.execute(text(f"DELETE FROM {table}"))


def test_the_reconciliation_repairs_and_reports_drift(
    session_factory: sessionmaker[Session], now: datetime
) -> None:
    with session_factory.begin() as session:
        make_number(session, account_id=ACCOUNT, phone_number=NUMBERS[0], released_at=now)
        make_number(session, account_id=ACCOUNT, phone_number=NUMBERS[1], released_at=now)
    with session_factory.begin() as session:
        # The deltas folded into the base rows (PostgreSQL; SQLite keeps none) ...
        folded = compact_counts(session)
        assert (folded > 0) == (session.get_bind().dialect.name == "postgresql")
        assert session.scalar(select(func.count()).select_from(NumberCountDelta)) == 0
    with session_factory.begin() as session:
        # ... and drift, as a bug or a hand edit with the triggers off would leave it.
        rows = session.execute(
            text("UPDATE number_counts SET n = n + 5 WHERE name = 'unclaimed'")
        ).rowcount
        session.execute(text("DELETE FROM number_counts WHERE name = 'outbox'"))
    with session_factory() as session:
        assert kept_counts(session, now) != scanned_counts(session, now)
    with session_factory() as session:
        # Each counter row over by 5, and the 4 events of the outbox missing.
        assert rows >= 1
        assert reconcile_counts(session) == {"counts_drift": rows * 5 + 4}
    with session_factory() as session:
        assert kept_counts(session, now) == scanned_counts(session, now)
        assert _deltas(session) == 0  # the repair's deltas folded too
    with session_factory() as session:
        assert reconcile_counts(session) == {"counts_drift": 0}
    # Emptied as the tests empty a store (TRUNCATE on PostgreSQL), the counts follow.
    delete_all_rows(session_factory.kw["bind"])
    with session_factory() as session:
        assert kept_counts(session, now) == scanned_counts(session, now)
        assert kept_counts(session, now).outbox_events == 0
        assert counts_drift(session) == {}


@pytest.mark.postgres
def test_the_migration_backfills_the_counts_of_an_existing_store(
    pg_store: Engine, now: datetime
) -> None:
    from shared import migrate

    factory = make_session_factory(pg_store)
    try:
        with factory.begin() as session:
            make_number(session, account_id=ACCOUNT, phone_number=NUMBERS[0], released_at=now)
            make_number(
                session, account_id=ACCOUNT, phone_number=NUMBERS[1], released_at=now - AGES[5]
            )
            set_purge_hold(session, phone_number=NUMBERS[1], held=True, now=now)
        # Back before the minute rows (0019_count_minutes): none left, the readings still right.
        migrate.downgrade(pg_store, "0018_lane_index")
        with factory() as session:
            assert _minute_rows(session) == []
            assert kept_counts(session, now) == scanned_counts(session, now)
        migrate.downgrade(pg_store, "0008_disconnect_ledger")
        migrate.upgrade(pg_store)
        with factory() as session:
            assert kept_counts(session, now) == scanned_counts(session, now)
            assert kept_counts(session, now).held == 1
            # Both counters in the minute of one release, `unclaimed` alone in the held one's.
            assert len(_minute_rows(session)) == 3
            assert counts_drift(session) == {}
    finally:
        delete_all_rows(pg_store)


def _same_shard_transactions(engine: Engine) -> tuple[Connection, Connection]:
    """Two open transactions whose transaction ids are equal modulo 8 (the counters' shards
    before migration 0016 kept one counter row per shard: the two then meet on the same rows)."""
    first = engine.connect()
    first.begin()
    xid = int(first.exec_driver_sql("SELECT txid_current()").scalar_one())
    second = engine.connect()
    while True:
        second.begin()
        if int(second.exec_driver_sql("SELECT txid_current()").scalar_one()) % 8 == xid % 8:
            return first, second
        second.rollback()


@pytest.mark.postgres
def test_writers_that_change_the_same_counters_in_opposite_orders_do_not_deadlock(
    pg_store: Engine, now: datetime
) -> None:
    # Two numbers released in each of two hours: a delete changes the counters of its hour.
    early, late = now - RETENTION - timedelta(hours=5), now - RETENTION - timedelta(hours=2)
    factory = make_session_factory(pg_store)
    with factory.begin() as session:
        for number, released in zip(NUMBERS, (early, early, late, late), strict=False):
            make_number(session, account_id=ACCOUNT, phone_number=number, released_at=released)
    delete = "DELETE FROM phone_numbers WHERE phone_number = %(number)s"
    first, second = _same_shard_transactions(pg_store)
    errors: list[BaseException] = []
    try:
        pid = first.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        # First takes the early hour's counters, second the late hour's ...
        first.exec_driver_sql(delete, {"number": NUMBERS[0]})
        second.exec_driver_sql(delete, {"number": NUMBERS[2]})

        def first_takes_the_late_hour() -> None:
            try:
                first.exec_driver_sql(delete, {"number": NUMBERS[3]})
                first.commit()
            except BaseException as error:  # noqa: BLE001 - reported by the assertion below
                errors.append(error)
                first.rollback()

        # ... then first the late hour's (it waits, if it must, for second) ...
        thread = threading.Thread(target=first_takes_the_late_hour)
        thread.start()
        with pg_store.connect() as observer:
            while thread.is_alive():
                waiting = observer.exec_driver_sql(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %(pid)s",
                    {"pid": pid},
                ).scalar_one()
                observer.rollback()
                if waiting:
                    break
                time.sleep(0.01)
        # ... and second the early hour's: with counter rows both update, a cycle.
        try:
            second.exec_driver_sql(delete, {"number": NUMBERS[1]})
            second.commit()
        except BaseException as error:  # noqa: BLE001
            errors.append(error)
            second.rollback()
        thread.join()
    finally:
        first.close()
        second.close()
    assert errors == []
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(PhoneNumber)) == 0
        assert kept_counts(session, now) == scanned_counts(session, now)
        assert counts_drift(session) == {}


@pytest.mark.postgres
def test_the_deltas_a_reading_sums_stay_below_the_compaction_threshold(
    pg_store: Engine, now: datetime
) -> None:
    """Writers taking turns: after every commit fewer than COMPACT_AT deltas are left (the
    statement that finds that many folds them all), and the readings stay exact."""
    factory = make_session_factory(pg_store)
    ages = [RETENTION + timedelta(hours=h) for h in range(-3, 3)]
    with factory.begin() as session:
        for number, age in zip(NUMBERS[: len(ages)], ages, strict=True):
            make_number(session, account_id=ACCOUNT, phone_number=number, released_at=now - age)
    seen, folded = 0, False
    for turn in range(2 * COMPACT_AT):
        with factory.begin() as session:
            # Each turn's hold or release of the hold: deltas of its number's hour, and of held.
            number, held = NUMBERS[turn % len(ages)], turn // len(ages) % 2 == 0
            set_purge_hold(session, phone_number=number, held=held, now=now)
        with factory() as session:
            left = _deltas(session)
        assert left < COMPACT_AT
        folded = folded or left < seen
        seen = left
    assert folded  # the compaction ran
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(NumberCount)) > 0
        for shift in SHIFTS:
            assert kept_counts(session, now + shift) == scanned_counts(session, now + shift)
        assert counts_drift(session) == {}


@pytest.mark.postgres
def test_a_transaction_compacts_once_and_a_bulk_load_folds_its_counts_at_its_end(
    pg_store: Engine, now: datetime
) -> None:
    """One transaction of many statements (a bulk load) folds the deltas at most once: folding
    at every statement would rescan the deltas each fold deleted, dead only once it commits."""
    factory = make_session_factory(pg_store)
    ages = [RETENTION + timedelta(hours=h) for h in range(-3, 3)]
    with factory.begin() as session:
        for number, age in zip(NUMBERS[: len(ages)], ages, strict=True):
            make_number(session, account_id=ACCOUNT, phone_number=number, released_at=now - age)
        for turn in range(2 * COMPACT_AT):
            number, held = NUMBERS[turn % len(ages)], turn // len(ages) % 2 == 0
            set_purge_hold(session, phone_number=number, held=held, now=now)
        # Folded once (the base rows hold counts), then the deltas of the later statements.
        assert session.scalar(select(func.count()).select_from(NumberCount)) > 0
        assert _deltas(session) >= COMPACT_AT
    with factory() as session:
        assert kept_counts(session, now) == scanned_counts(session, now)
    # The next transaction's first statement folds them.
    with factory.begin() as session:
        set_purge_hold(session, phone_number=NUMBERS[0], held=True, now=now)
    with factory() as session:
        assert _deltas(session) < COMPACT_AT
        assert kept_counts(session, now) == scanned_counts(session, now)
    # A demo store's load (one transaction) leaves its counts folded.
    delete_all_rows(pg_store)
    seed_demo(pg_store, numbers=500, accounts=5, now=now, seed=3)
    with factory() as session:
        assert _deltas(session) == 0
        for shift in SHIFTS:
            assert kept_counts(session, now + shift) == scanned_counts(session, now + shift)


def _counted_by_index(
    session_factory: sessionmaker[Session], at: datetime, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """The counts a reading at `at` takes by index (not held, held, claimed), the reading
    checked against a full scan."""
    counted: list[int] = []

    def count(session: Session, where: Any) -> int:
        counted.append(found := counting(session, where))
        return found

    counting = shared.counts._count
    with monkeypatch.context() as patch, session_factory() as session:
        patch.setattr(shared.counts, "_count", count)
        assert kept_counts(session, at) == scanned_counts(session, at)
    return counted


def test_a_reading_counts_by_index_only_the_rows_of_the_cutoffs_minute(
    session_factory: sessionmaker[Session], now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reading's cutoff at 10 min 20 s into its hour (early in its minute: the rows up to it
    # are counted by index); 3 releases in its minute up to it, 2 after, and 100 in the rest of
    # its hour, on both sides, and in the minutes next to it.
    at = now + timedelta(minutes=10, seconds=20)
    line = cutoff(at)
    start = line.replace(second=0)
    minute = [
        start,
        line - timedelta(seconds=7),
        line,
        line + timedelta(seconds=1),
        start + timedelta(seconds=59),
    ]
    hour = [line.replace(minute=m, second=s) for m in range(60) for s in (0, 30) if m != 10][:100]
    with session_factory.begin() as session:
        for i, released in enumerate(minute + hour):
            make_number(
                session, account_id=ACCOUNT, phone_number=f"+1415559{i:04d}", released_at=released
            )
    # Not held, held, claimed: the 3 rows of the minute up to the cutoff, none of the hour's.
    assert _counted_by_index(session_factory, at, monkeypatch) == [3, 0, 0]
    # Late in its minute (40 s): the rows after it, 1 of the minute's.
    assert _counted_by_index(session_factory, at + timedelta(seconds=20), monkeypatch) == [1, 0, 0]
    # On the minute's boundary (10 min), early: the row released at that instant.
    assert _counted_by_index(session_factory, now + timedelta(minutes=10), monkeypatch) == [1, 0, 0]
    # On a minute's boundary late in the hour (45 min): the row released at that instant.
    at = now + timedelta(minutes=45)
    assert _counted_by_index(session_factory, at, monkeypatch) == [1, 0, 0]
    # The minute rows of the hours before the cutoff's are dropped by the reconciliation: a
    # reading in such an hour (the clock moved back) counts its hour's side by index, and is
    # still right (late in the hour: the 11 rows released after 45 min).
    with session_factory() as session:
        reconcile_counts(session, now + timedelta(hours=1))
    assert _counted_by_index(session_factory, at, monkeypatch) == [11, 0, 0]


def _minute_rows(session: Session) -> list[int]:
    """The hours of the minute rows kept and recorded as deltas."""
    hours = []
    for table in (NumberCount, NumberCountDelta):
        minutes = session.scalars(select(table.hour).where(table.name.in_(MINUTE_NAMES)))
        hours += [minute // 60 for minute in minutes]
    return hours


def test_the_reconciliation_keeps_no_minute_row_before_the_cutoffs_hour(
    session_factory: sessionmaker[Session], now: datetime
) -> None:
    """The bound: after a reconciliation at `now`, minute rows only of the hours from its
    cutoff's on, at most 2 per minute (two counters); later writes before it add none."""
    line = cutoff(now)
    ages = [timedelta(hours=h, minutes=m) for h in (-30, -2, 0, 3) for m in (0, 7, 31)]
    with session_factory.begin() as session:
        for i, age in enumerate(ages):
            make_number(
                session, account_id=ACCOUNT, phone_number=f"+1415559{i:04d}", released_at=line + age
            )
        make_number(session, account_id=ACCOUNT, phone_number=NUMBERS[0])
    floor = int(line.timestamp()) // 3600
    with session_factory() as session:
        assert min(_minute_rows(session)) < floor
    with session_factory() as session:
        assert reconcile_counts(session, now) == {"counts_drift": 0}
    with session_factory() as session:
        kept = _minute_rows(session)
        assert min(kept) == floor
        assert len(kept) <= 2 * 60 * (max(kept) - floor + 1)
        assert counts_drift(session) == {}
    # A release and a purge before the floor's hour: no minute row again, counts still exact.
    with session_factory.begin() as session:
        shared.release_number(
            session, account_id=ACCOUNT, phone_number=NUMBERS[0], now=line - timedelta(hours=5)
        )
    purge_expired(session_factory, now=now, batch_size=2)
    with session_factory.begin() as session:
        compact_counts(session)
    with session_factory() as session:
        assert min(_minute_rows(session)) == floor
        for shift in SHIFTS:
            assert kept_counts(session, now + shift) == scanned_counts(session, now + shift)
        assert counts_drift(session) == {}
    # A reconciliation at an earlier instant (a clock moved back) lowers the floor and builds
    # the minute rows of the hour it needs, here of a release below the floor that had none.
    with session_factory.begin() as session:
        make_number(
            session,
            account_id=ACCOUNT,
            phone_number=NUMBERS[1],
            released_at=line - timedelta(minutes=30),
        )
    with session_factory() as session:
        assert min(_minute_rows(session)) == floor
    with session_factory() as session:
        reconcile_counts(session, now - timedelta(hours=1))
    with session_factory() as session:
        assert min(_minute_rows(session)) == floor - 1
        assert counts_drift(session) == {}
        assert kept_counts(session, now - timedelta(minutes=30)) == scanned_counts(
            session, now - timedelta(minutes=30)
        )
