"""The ledger of disconnections: every tombstone says which carrier held the number, how its
release was proven, what was detached from it there, and when and why it was permanently
disconnected; on both backends, the two-phase purge against the Telnyx-like server on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.orm import Session, sessionmaker

from shared import migrate
from shared.db import make_engine
from shared.models import PhoneNumber
from shared.provider import TelnyxProvider
from shared.purge.operator import resolve_by_operator
from tests.factories import make_number
from tests.fake_telnyx import FakeTelnyx, telnyx_error
from tests.purging import purge_expired
from tests.stores import fail_upstream, tombstones_by_phone

Factory = sessionmaker[Session]
OVERDUE = timedelta(days=15)


def seed(factory: Factory, now: datetime, numbers: dict[str, str | None]) -> None:
    """Overdue numbers with these provider ids (None: nothing held upstream)."""
    for number, provider_id in numbers.items():
        with factory.begin() as session:
            make_number(
                session,
                account_id="acc_lg",
                phone_number=number,
                provider_number_id=provider_id,
                released_at=now - OVERDUE,
                now=now,
            )


def hold_active(factory: Factory, now: datetime) -> None:
    """An active number the key's account holds: a 404 proves a release."""
    with factory.begin() as session:
        make_number(
            session,
            account_id="acc_lg",
            phone_number="+14157599999",
            provider_number_id="999",
            now=now,
        )


def test_the_two_phase_purge_records_carrier_proofs_detach_steps_and_the_disconnection(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    hold_active(session_factory, now)
    seed(
        session_factory,
        now,
        {"+14157500001": "901", "+14157500002": "902", "+14157500003": None},
    )
    fake_telnyx.attach("901", "+14157500001", campaign="cmp_a", emergency=True, cnam="ACME")
    fake_telnyx.script["902"] = [telnyx_error(404, "10005", "Resource not found")]
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert report.purged == 3
    stones = tombstones_by_phone(session_factory)
    released, gone, no_id = (stones[n] for n in ("+14157500001", "+14157500002", "+14157500003"))
    for stone in (released, gone, no_id):
        assert (stone.carrier, stone.disconnect_reason) == ("telnyx", "released")
        assert stone.disconnect_date == now.date()
    assert released.release_proof == {
        "resolution": "provider",
        "call": "DELETE /v2/phone_numbers/901",
        "record": {"id": "901", "record_type": "phone_number"},
    }
    assert gone.release_proof == {
        "resolution": "not_found",
        "call": "DELETE /v2/phone_numbers/902",
        "error": "HTTP 404 in Telnyx's error shape",
    }
    assert no_id.release_proof == {"resolution": "no_provider_id"}
    assert [(s["step"], s["proof"]) for s in released.detach_steps] == [
        ("campaign", "removed"),
        ("emergency", "removed"),
        ("cnam", "removed"),
    ]
    campaign, emergency, _cnam = released.detach_steps
    assert campaign["evidence"]["campaignId"] == "cmp_a"
    [job] = fake_telnyx.jobs
    assert emergency["evidence"]["job_id"] == job
    assert [(s["step"], s["proof"]) for s in gone.detach_steps] == [
        ("campaign", "none"),
        ("emergency", "none"),
        ("cnam", "none"),
    ]
    assert no_id.detach_steps == []


def test_the_single_phase_purge_records_a_ledger_entry_too(
    session_factory: Factory, now: datetime
) -> None:
    seed(session_factory, now, {"+14157500011": None, "+14157500012": "911"})
    report = purge_expired(session_factory, now=now)
    assert (report.provider, report.purged) == ("none", 2)
    for stone in tombstones_by_phone(session_factory).values():
        assert (stone.carrier, stone.disconnect_reason) == ("none", "released")
        assert stone.disconnect_date == now.date()
        assert stone.release_proof is None
        assert stone.detach_steps is None


def test_the_disconnect_date_is_the_utc_date_of_the_purge(session_factory: Factory) -> None:
    # 01:30 on the 27th at UTC+2 is 23:30 on the 26th in UTC.
    when = datetime(2025, 11, 27, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    seed(session_factory, when, {"+14157500021": None})
    purge_expired(session_factory, now=when)
    [stone] = tombstones_by_phone(session_factory).values()
    assert stone.disconnect_date == date(2025, 11, 26)


@pytest.mark.parametrize(("ported_out", "reason"), [(False, "operator"), (True, "ported_out")])
def test_a_number_settled_by_an_operator_is_recorded_with_why(
    session_factory: Factory, now: datetime, ported_out: bool, reason: str
) -> None:
    seed(session_factory, now, {"+14157500031": "931"})
    with session_factory.begin() as session:
        fail_upstream(session, "+14157500031", permanent=True, provider_code="10007", now=now)
    with session_factory.begin() as session:
        resolve_by_operator(
            session,
            phone_number="+14157500031",
            reason="ported out to another carrier" if ported_out else "released in the portal",
            by="alice",
            now=now,
            carrier="telnyx",
            ported_out=ported_out,
        )
    [stone] = tombstones_by_phone(session_factory).values()
    assert (stone.carrier, stone.disconnect_reason, stone.resolution) == (
        "telnyx",
        reason,
        "operator",
    )
    assert stone.disconnect_date == now.date()


# --- the migration: tombstones written before the ledger -------------------------------------


@pytest.fixture(params=["postgresql", "sqlite"])
def store_at_0006(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> Iterator[Engine]:
    """A fresh store migrated up to 0006 (before the ledger): a SQLite file, or a PostgreSQL
    schema of its own in the test database."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path}/old.db")
    else:
        schema = "ledger_migration"
        admin = make_engine(pg_url)
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
        admin.dispose()
        # A server far from UTC: the backfill must take purged_at's date in UTC all the same.
        options = f"-csearch_path={schema} -ctimezone=Pacific/Kiritimati"
        engine = make_engine(pg_url, connect_args={"options": options})
    try:
        migrate.upgrade(engine, "0006")
        yield engine
    finally:
        engine.dispose()
        if request.param == "postgresql":
            admin = make_engine(pg_url)
            with admin.begin() as connection:
                connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            admin.dispose()


OLD_TOMBSTONES = [
    # number_id, phone number, purged_at, provider, resolution
    (1, "+14155550001", "2025-10-31 23:30:00", None, None),  # single-phase, PROVIDER=none
    (2, "+14155550002", "2025-11-01 00:10:00", "telnyx", "provider"),
    (3, "+14155550003", "2025-11-02 12:00:00", None, "operator"),
    (4, "+14155550004", "2025-11-03 12:00:00", None, "no_provider_id"),
]


def test_the_migration_backfills_the_ledger_of_existing_tombstones(
    store_at_0006: Engine,
) -> None:
    with store_at_0006.begin() as connection:
        for number_id, phone, purged_at, provider, resolution in OLD_TOMBSTONES:
            connection.execute(
                text(
                    "INSERT INTO purged_numbers (number_id, account_id, phone_number, created_at,"
                    " country_code, number_type, next_billing_date, monthly_price, released_at,"
                    " purged_at, run_id, provider, resolution) VALUES (:id, 'acc_old', :phone,"
                    " :at, 'US', 'local', '2025-12-01', 1, :at, :at, 'run-old', :provider,"
                    " :resolution)"
                ),
                {
                    "id": number_id,
                    "phone": phone,
                    "at": f"{purged_at}+00:00"
                    if store_at_0006.dialect.name == "postgresql"
                    else purged_at,
                    "provider": provider,
                    "resolution": resolution,
                },
            )
    migrate.upgrade(store_at_0006)
    with store_at_0006.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT number_id, carrier, disconnect_reason, disconnect_date"
                " FROM purged_numbers ORDER BY number_id"
            )
        ).all()
    dates = [row.disconnect_date for row in rows]
    if store_at_0006.dialect.name == "sqlite":
        dates = [date.fromisoformat(d) for d in dates]
    assert [(r.number_id, r.carrier, r.disconnect_reason) for r in rows] == [
        (1, "none", "released"),
        (2, "telnyx", "released"),
        (3, "none", "operator"),
        (4, "none", "released"),
    ]
    # The UTC date of purged_at, whatever the database server's time zone.
    assert dates == [date(2025, 10, 31), date(2025, 11, 1), date(2025, 11, 2), date(2025, 11, 3)]
    migrate.downgrade(store_at_0006, "0006")
    migrate.upgrade(store_at_0006)


def test_the_store_refuses_an_unknown_disconnect_reason(
    session_factory: Factory, now: datetime
) -> None:
    seed(session_factory, now, {"+14157500041": None})
    purge_expired(session_factory, now=now)
    with pytest.raises(Exception, match="disconnect_reason_known"), session_factory.begin() as s:
        s.execute(text("UPDATE purged_numbers SET disconnect_reason = 'moved'"))


def test_claimed_rows_keep_no_ledger_until_they_are_purged(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    """A number kept by a failed step has no tombstone, so no ledger entry, until released."""
    seed(session_factory, now, {"+14157500051": "951"})
    fake_telnyx.attach("951", "+14157500051", campaign="cmp_a")
    fake_telnyx.detach_script["campaign_delete"] = [telnyx_error(503, "90001", "Unavailable")]
    purge_expired(session_factory, now=now, provider=telnyx)
    assert tombstones_by_phone(session_factory) == {}
    fake_telnyx.detach_script.clear()
    with session_factory.begin() as session:
        session.execute(update(PhoneNumber).values(provider_next_attempt_at=None))
    purge_expired(session_factory, now=now, provider=telnyx)
    [stone] = tombstones_by_phone(session_factory).values()
    assert stone.detach_steps[0]["proof"] == "removed"
