"""The batched purge on PostgreSQL and SQLite: boundaries, holds, bounds, dry run, pause, races."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

import shared
from shared.models import CampaignAssignment, PhoneNumber, PurgedNumber, PurgeRun
from shared.purge import run_lock
from shared.retention import RETENTION
from tests.factories import make_number, snapshot
from tests.purging import purge_expired

Factory = sessionmaker[Session]


def seed(factory: Factory, now: datetime, ages: dict[str, timedelta | None], **kw: object) -> None:
    """Numbers of account acc_a released `age` before `now` (None: still active)."""
    with factory.begin() as session:
        for number, age in ages.items():
            make_number(
                session,
                account_id="acc_a",
                phone_number=number,
                released_at=None if age is None else now - age,
                now=now,
                **kw,  # type: ignore[arg-type]
            )


def phone_numbers(factory: Factory) -> set[str]:
    with factory() as session:
        return set(session.scalars(select(PhoneNumber.phone_number)))


def tombstones(factory: Factory) -> list[str]:
    with factory() as session:
        return sorted(session.scalars(select(PurgedNumber.phone_number)))


@pytest.mark.parametrize(
    ("age", "purged"),
    [
        (RETENTION - timedelta(seconds=1), False),
        (RETENTION - timedelta(microseconds=1), False),
        (RETENTION, True),
        (RETENTION + timedelta(seconds=1), True),
        (timedelta(days=29), True),
        (None, False),
    ],
    ids=["deadline-1s", "deadline-1us", "deadline", "deadline+1s", "long-ago", "active"],
)
def test_purge_boundary(session_factory: Factory, now: datetime, age, purged: bool) -> None:
    seed(session_factory, now, {"+14155550101": age})
    report = purge_expired(session_factory, now=now)
    assert report.status == "completed"
    assert report.purged == int(purged)
    assert ("+14155550101" in phone_numbers(session_factory)) is not purged
    assert tombstones(session_factory) == (["+14155550101"] if purged else [])


def test_tombstone_keeps_fields_and_campaign_goes_with_number(
    session_factory: Factory, now: datetime
) -> None:
    with session_factory.begin() as session:
        make_number(
            session,
            account_id="acc_a",
            phone_number="+14155550102",
            released_at=now - timedelta(days=20),
            label="Front desk",
            a2p_status="approved",
            now=now,
        )
        make_number(session, account_id="acc_b", phone_number="+14155550103", a2p_status="pending")
    report = purge_expired(session_factory, now=now)
    with session_factory() as session:
        stone = session.scalars(select(PurgedNumber)).one()
        assert (stone.phone_number, stone.account_id, stone.label) == (
            "+14155550102",
            "acc_a",
            "Front desk",
        )
        assert (stone.campaign_id, stone.a2p_status) == ("cmp_acc_a", "approved")
        assert stone.released_at == now - timedelta(days=20)
        assert stone.purged_at == now
        assert stone.run_id == report.run_id
        # Only the purged number's assignment is gone; nothing else was deleted.
        assert session.scalar(select(func.count()).select_from(CampaignAssignment)) == 1
        assert session.scalar(select(func.count()).select_from(PhoneNumber)) == 1


def test_held_numbers_are_never_purged(session_factory: Factory, now: datetime) -> None:
    seed(
        session_factory,
        now,
        {"+14155550104": timedelta(days=20), "+14155550105": timedelta(days=20)},
    )
    with session_factory.begin() as session:
        shared.set_purge_hold(session, phone_number="+14155550104", held=True)
    assert purge_expired(session_factory, now=now).purged == 1
    assert phone_numbers(session_factory) == {"+14155550104"}
    with session_factory.begin() as session:
        shared.set_purge_hold(session, phone_number="+14155550104", held=False)
    assert purge_expired(session_factory, now=now).purged == 1
    assert phone_numbers(session_factory) == set()


def test_dry_run_counts_and_samples_but_deletes_nothing(
    session_factory: Factory, now: datetime
) -> None:
    seed(session_factory, now, {f"+1415555{i:04d}": timedelta(days=15 + i) for i in range(12)})
    with session_factory() as session:
        before = snapshot(session)
    report = purge_expired(session_factory, now=now, dry_run=True)
    assert report.status == "dry_run"
    assert (report.purged, report.would_purge, report.remaining) == (0, 12, 12)
    # Oldest first: the sample shows what the next run takes first.
    assert report.sample == [f"+1415555{i:04d}" for i in range(11, 1, -1)]
    with session_factory() as session:
        after = snapshot(session)
    assert {k: v for k, v in after.items() if k != "purge_runs"} == {
        k: v for k, v in before.items() if k != "purge_runs"
    }


def test_paused_runs_log_and_skip(session_factory: Factory, now: datetime) -> None:
    seed(session_factory, now, {"+14155550106": timedelta(days=20)})
    with capture_logs() as logs:
        report = purge_expired(session_factory, now=now, paused=True)
    assert (report.status, report.purged, report.remaining) == ("paused", 0, 1)
    assert phone_numbers(session_factory) == {"+14155550106"}
    assert [e["event"] for e in logs] == ["purge.started", "purge.finished"]
    assert logs[-1]["status"] == "paused"


def test_pause_setting_is_read_from_the_environment(
    session_factory: Factory, now: datetime, settings_env: Callable[..., None]
) -> None:
    seed(session_factory, now, {"+14155550107": timedelta(days=20)})
    settings_env(PURGE_PAUSED="true")
    assert purge_expired(session_factory, now=now).status == "paused"
    settings_env(PURGE_PAUSED="false")
    assert purge_expired(session_factory, now=now).status == "completed"


def test_bounded_runs_resume_and_tombstone_exactly_once(
    session_factory: Factory, now: datetime
) -> None:
    overdue = {f"+1415666{i:04d}": timedelta(days=15, minutes=i) for i in range(25)}
    fresh = {f"+1415777{i:04d}": timedelta(days=13) for i in range(3)}
    seed(session_factory, now, overdue | fresh)

    first = purge_expired(session_factory, now=now, batch_size=4, max_rows=10)
    assert (first.status, first.purged, first.batches, first.remaining) == (
        "limit_reached",
        10,
        3,
        15,
    )
    second = purge_expired(session_factory, now=now, batch_size=4, max_rows=10)
    assert (second.status, second.purged, second.remaining) == ("limit_reached", 10, 5)
    third = purge_expired(session_factory, now=now, batch_size=4, max_rows=10)
    assert (third.status, third.purged, third.remaining) == ("completed", 5, 0)
    again = purge_expired(session_factory, now=now, batch_size=4)
    assert (again.status, again.purged) == ("completed", 0)

    assert tombstones(session_factory) == sorted(overdue)
    assert phone_numbers(session_factory) == set(fresh)


def test_time_bound_stops_between_batches(session_factory: Factory, now: datetime) -> None:
    seed(session_factory, now, {f"+1415888{i:04d}": timedelta(days=20) for i in range(6)})
    report = purge_expired(session_factory, now=now, batch_size=2, max_seconds=1e-9)
    # The bound is checked before each batch: no batch started once it is spent.
    assert (report.status, report.purged, report.remaining) == ("limit_reached", 0, 6)


def test_runs_are_recorded(session_factory: Factory, now: datetime) -> None:
    seed(session_factory, now, {"+14155550108": timedelta(days=20)})
    before = datetime.now(UTC)
    report = purge_expired(session_factory, now=now)
    after = datetime.now(UTC)
    with session_factory() as session:
        run = session.get(PurgeRun, report.run_id)
    assert run is not None
    assert (run.status, run.purged, run.batches, run.remaining) == ("completed", 1, 1, 0)
    # When the run happened, on this host's clock; the decision instant is in the cutoff.
    assert run.finished_at is not None
    assert before <= run.started_at <= run.finished_at <= after
    assert run.cutoff == now - RETENTION
    assert run.summary == report.as_dict()


def test_summary_has_the_documented_keys(session_factory: Factory, now: datetime) -> None:
    summary = purge_expired(session_factory, now=now).as_dict()
    assert {"run_id", "status", "cutoff", "purged", "batches", "remaining", "seconds"} <= set(
        summary
    )
    assert summary["cutoff"] == (now - RETENTION).isoformat().replace("+00:00", "Z")


def test_a_concurrent_run_is_skipped(session_factory: Factory, now: datetime) -> None:
    seed(session_factory, now, {"+14155550109": timedelta(days=20)})
    with run_lock(session_factory.kw["bind"]) as held:
        assert held
        with capture_logs() as logs:
            report = purge_expired(session_factory, now=now)
    assert (report.status, report.reason, report.purged) == ("skipped", "locked", 0)
    assert [e["event"] for e in logs] == ["purge.skipped"]
    assert phone_numbers(session_factory) == {"+14155550109"}
    with session_factory() as session:  # recorded, so `status` shows the overlap
        run = session.get(PurgeRun, report.run_id)
    assert run is not None
    assert (run.status, run.purged, run.summary) == ("skipped", 0, report.as_dict())
    assert purge_expired(session_factory, now=now).purged == 1


def test_purge_logs_one_event_per_batch_and_a_summary(
    session_factory: Factory, now: datetime
) -> None:
    seed(session_factory, now, {f"+1415999{i:04d}": timedelta(days=20) for i in range(5)})
    with capture_logs() as logs:
        report = purge_expired(session_factory, now=now, batch_size=2)
    events = [e["event"] for e in logs]
    assert events == [
        "purge.started",
        "purge.batch",
        "purge.batch",
        "purge.batch",
        "purge.finished",
    ]
    assert [e["purged"] for e in logs if e["event"] == "purge.batch"] == [2, 2, 1]
    assert logs[-1]["purged"] == 5
    assert logs[-1]["run_id"] == report.run_id


@pytest.mark.postgres
def test_number_repurchased_during_a_run_is_kept(pg_factory: Factory, now: datetime) -> None:
    """A repurchase holding the row lock when the purge comes: SKIP LOCKED passes it by, and
    the re-check finds it active afterwards. The number ends active and intact."""
    seed(
        pg_factory,
        now,
        {"+14155550110": RETENTION - timedelta(seconds=1), "+14155550111": timedelta(days=20)},
    )
    buyer = pg_factory()
    buyer.begin()
    shared.repurchase_number(buyer, account_id="acc_a", phone_number="+14155550110", now=now)
    # The purge decides later, when the first number's deadline has passed.
    later = now + timedelta(seconds=5)
    result: dict[str, object] = {}
    runner = threading.Thread(target=lambda: result.update(r=purge_expired(pg_factory, now=later)))
    runner.start()
    runner.join(30)
    assert not runner.is_alive()  # the purge finished while the repurchase held the row lock
    buyer.commit()
    buyer.close()
    report = result["r"]
    assert report.purged == 1  # type: ignore[attr-defined]
    with pg_factory() as session:
        kept = session.scalars(
            select(PhoneNumber).where(PhoneNumber.phone_number == "+14155550110")
        ).one()
    assert (kept.billing_status, kept.released_at) == ("active", None)
    assert tombstones(pg_factory) == ["+14155550111"]


@pytest.mark.postgres
def test_repurchase_after_purge_claimed_row_finds_nothing(
    pg_factory: Factory, now: datetime
) -> None:
    """The other order: the purge locked the row first; the repurchase waits, then finds the
    number gone and is refused. Never both purged and repurchased."""
    seed(pg_factory, now, {"+14155550112": RETENTION})
    with pg_factory.begin() as purge_session:
        from shared.purge import purge_batch

        assert purge_batch(purge_session, now=now, run_id="r1", limit=10) == 1
        errors: list[shared.ApiError] = []

        def buy() -> None:
            with pg_factory.begin() as session:
                try:
                    shared.repurchase_number(
                        session,
                        account_id="acc_a",
                        phone_number="+14155550112",
                        now=now - timedelta(seconds=1),
                    )
                except shared.ApiError as error:
                    errors.append(error)

        buyer = threading.Thread(target=buy)
        buyer.start()
        buyer.join(0.5)
        assert buyer.is_alive()  # blocked on the purge's row lock
    buyer.join(10)
    assert [e.code for e in errors] == ["number_not_found"]
    assert tombstones(pg_factory) == ["+14155550112"]
    assert phone_numbers(pg_factory) == set()


def test_a_purged_number_id_is_never_reused(session_factory: Factory, now: datetime) -> None:
    """SQLite reuses the highest rowid unless AUTOINCREMENT; tombstones are unique per id."""
    seed(session_factory, now, {"+14155550120": None, "+14155550121": timedelta(days=20)})
    assert purge_expired(session_factory, now=now).purged == 1
    seed(session_factory, now, {"+14155550122": timedelta(days=20)})
    assert purge_expired(session_factory, now=now).purged == 1
    assert tombstones(session_factory) == ["+14155550121", "+14155550122"]
