"""The schema the migrations build: its constraints hold even for SQL that skips Python."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared import migrate
from shared.db import make_engine
from shared.models import EVENT_KINDS, Base
from shared.run_status import RECORDED, RunStatus
from tests.factories import NOW, make_number

TABLES = {
    "accounts",
    "phone_numbers",
    "campaign_assignments",
    "purged_numbers",
    "purge_runs",
    "purge_controls",
    "pruned_totals",
}

VALID_NUMBER: dict[str, Any] = {
    "account_id": "acc_raw",
    "phone_number": "+14155550100",
    "label": "Desk",
    "country_code": "US",
    "number_type": "local",
    "billing_status": "released",
    "monthly_price": 1,
    "purge_state": None,
    "released": True,
}


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    """A raw connection in a transaction rolled back after the test, one account in it."""
    with engine.connect() as conn:
        outer = conn.begin()
        conn.execute(
            text("INSERT INTO accounts (id, plan, created_at) VALUES ('acc_raw', 'paid', :at)"),
            {"at": NOW.isoformat()},
        )
        try:
            yield conn
        finally:
            outer.rollback()


def insert_number(connection: Connection, **overrides: Any) -> None:
    """INSERT through plain SQL: no model, no validation, no type conversion."""
    values = VALID_NUMBER | overrides
    released_at = "CURRENT_TIMESTAMP" if values.pop("released") else "NULL"
    connection.execute(
        text(
            "INSERT INTO phone_numbers (account_id, phone_number, label, created_at, country_code,"
            " number_type, billing_status, next_billing_date, monthly_price, released_at,"
            " purge_hold, purge_state)"
            " VALUES (:account_id, :phone_number, :label, CURRENT_TIMESTAMP, :country_code,"
            f" :number_type, :billing_status, CURRENT_DATE, :monthly_price, {released_at},"
            " false, :purge_state)"
        ),
        values,
    )


def refused(connection: Connection, **overrides: Any) -> None:
    with pytest.raises(IntegrityError), connection.begin_nested():
        insert_number(connection, **overrides)


def test_valid_rows_are_accepted(connection: Connection) -> None:
    insert_number(connection)
    insert_number(
        connection, phone_number="+4930123456", billing_status="active", released=False, label=None
    )
    insert_number(connection, phone_number="+12", monthly_price=0, purge_state="purging")
    insert_number(connection, phone_number="+123456789012345", label="x" * 255)
    count = connection.scalar(text("SELECT count(*) FROM phone_numbers"))
    assert count == 4


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"billing_status": "released", "released": False}, id="released-without-at"),
        pytest.param({"billing_status": "active", "released": True}, id="active-with-released-at"),
        pytest.param({"billing_status": "deleted"}, id="unknown-billing-status"),
        pytest.param({"country_code": "us"}, id="lower-case-country"),
        pytest.param({"country_code": "U1"}, id="digit-in-country"),
        pytest.param({"phone_number": "4155550100"}, id="e164-no-plus"),
        pytest.param({"phone_number": "+04155550100"}, id="e164-leading-zero"),
        pytest.param({"phone_number": "+1415555O100"}, id="e164-letter"),
        pytest.param({"phone_number": "+1 415555010"}, id="e164-space"),
        pytest.param({"phone_number": "+1"}, id="e164-too-short"),
        pytest.param({"monthly_price": -1}, id="negative-price"),
        pytest.param({"monthly_price": -0.0001}, id="negative-price-fraction"),
        pytest.param({"label": "x" * 256}, id="label-too-long"),
        pytest.param({"purge_state": "gone"}, id="unknown-purge-state"),
        pytest.param(
            {"purge_state": "purging", "billing_status": "active", "released": False},
            id="purging-active-number",
        ),
        pytest.param({"account_id": "acc_nobody"}, id="unknown-account"),
    ],
)
def test_check_constraints(connection: Connection, overrides: dict[str, Any]) -> None:
    refused(connection, **overrides)
    assert connection.scalar(text("SELECT count(*) FROM phone_numbers")) == 0


def test_phone_number_is_unique(connection: Connection) -> None:
    insert_number(connection)
    refused(connection)
    refused(connection, billing_status="active", released=False)
    assert connection.scalar(text("SELECT count(*) FROM phone_numbers")) == 1


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param(
            "INSERT INTO accounts (id, plan, created_at) VALUES ('acc_gold', 'gold', :at)",
            id="unknown-plan",
        ),
        pytest.param(
            "INSERT INTO accounts (id, plan, created_at) VALUES ('acc_raw', 'free', :at)",
            id="duplicate-account",
        ),
        pytest.param(
            "INSERT INTO campaign_assignments (number_id, campaign_id, status, assigned_at)"
            " SELECT id, 'cmp', 'denied', :at FROM phone_numbers",
            id="unknown-a2p-status",
        ),
        pytest.param(
            "INSERT INTO campaign_assignments (number_id, campaign_id, status, assigned_at)"
            " VALUES (999999, 'cmp', 'approved', :at)",
            id="assignment-without-number",
        ),
        pytest.param(
            "INSERT INTO purge_runs (id, started_at, cutoff, status, purged, batches)"
            " VALUES ('run', :at, :at, 'exploded', 0, 0)",
            id="unknown-run-status",
        ),
    ],
)
def test_other_tables_constraints(connection: Connection, statement: str) -> None:
    insert_number(connection)
    with pytest.raises(IntegrityError), connection.begin_nested():
        connection.execute(text(statement), {"at": NOW.isoformat()})


def test_the_migrated_store_takes_every_event_kind_of_the_models_and_no_other(
    connection: Connection,
) -> None:
    """The migrations freeze their own copy of the kinds: they must still agree with the models."""
    insert = text(
        "INSERT INTO number_events (kind, phone_number, account_id, number_id, occurred_at)"
        " VALUES (:kind, '+14155550100', 'acc_raw', 1, :at)"
    )
    for kind in EVENT_KINDS:
        connection.execute(insert, {"kind": kind, "at": NOW.isoformat()})
    with pytest.raises(IntegrityError), connection.begin_nested():
        connection.execute(insert, {"kind": "exploded", "at": NOW.isoformat()})


def test_the_migrated_store_takes_every_run_status_of_the_models_and_no_other(
    connection: Connection,
) -> None:
    """The migrations freeze their own copy of the statuses (clock_skew: 0011)."""
    assert RunStatus.LOST_LOCK not in RECORDED  # the relay's, never recorded
    insert = text(
        "INSERT INTO purge_runs (id, started_at, cutoff, status, purged, batches)"
        " VALUES (:id, :at, :at, :status, 0, 0)"
    )
    for status in RECORDED:
        connection.execute(insert, {"id": f"run-{status}", "status": status, "at": NOW})
    with pytest.raises(IntegrityError), connection.begin_nested():
        connection.execute(insert, {"id": "run-x", "status": "exploded", "at": NOW})


def test_the_migrated_run_status_check_lists_exactly_the_recorded_run_statuses(
    engine: Engine,
) -> None:
    """The CHECK the migrations built and the one `RunStatus` the code uses name the same
    statuses: a status added to one only fails here, not at a run's first write."""
    (check,) = (
        constraint
        for constraint in inspect(engine).get_check_constraints("purge_runs")
        if constraint["name"] == "run_status_known"
    )
    assert set(re.findall(r"'([a-z_]+)'", check["sqltext"])) == {str(s) for s in RECORDED}


def test_deleting_a_number_deletes_its_assignment(connection: Connection) -> None:
    insert_number(connection)
    connection.execute(
        text(
            "INSERT INTO campaign_assignments (number_id, campaign_id, status, assigned_at)"
            " SELECT id, 'cmp', 'approved', CURRENT_TIMESTAMP FROM phone_numbers"
        )
    )
    connection.execute(text("DELETE FROM phone_numbers"))
    assert connection.scalar(text("SELECT count(*) FROM campaign_assignments")) == 0


def test_schema_matches_the_models(engine: Engine) -> None:
    """The migration and the models describe the same tables (autogenerate finds nothing)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn)
        assert compare_metadata(context, Base.metadata) == []
        assert context.get_current_revision() is not None
    assert set(inspect(engine).get_table_names()) >= TABLES


def test_downgrade_to_base_and_upgrade_again(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/fresh.db")
    try:
        migrate.upgrade(engine)
        assert set(inspect(engine).get_table_names()) >= TABLES
        migrate.downgrade(engine, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(engine)
        assert set(inspect(engine).get_table_names()) >= TABLES
        migrate.upgrade(engine)  # already at head: nothing to do, no error
        with Session(engine) as session, session.begin():
            make_number(session, account_id="acc_a", phone_number="+14155550100")
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM phone_numbers")) == 1
    finally:
        engine.dispose()


# --- the test store itself: isolation the other tests rely on --------------------------------


def test_session_fixture_never_reaches_the_store(session: Session, engine: Engine) -> None:
    """Even a commit inside a test stays in the outer transaction that is rolled back."""
    make_number(session, account_id="acc_a", phone_number="+14155550100", released_at=NOW)
    session.commit()
    # A reader beside the test's open write transaction (SQLite: DEFERRED, or it would wait).
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as other:
        assert other.scalar(text("SELECT count(*) FROM phone_numbers")) == 0
        assert other.scalar(text("SELECT count(*) FROM accounts")) == 0


def test_session_factory_commits(session_factory: sessionmaker[Session], engine: Engine) -> None:
    with session_factory.begin() as db:
        make_number(db, account_id="acc_a", phone_number="+14155550100", released_at=NOW)
    with engine.connect() as other:
        assert other.scalar(text("SELECT count(*) FROM phone_numbers")) == 1
    with session_factory() as db:
        body = shared.released_numbers_body(db, account_id="acc_a", now=NOW)
        assert [n["phoneNumber"] for n in body["numbers"]] == ["+14155550100"]


def test_store_is_empty_between_tests(engine: Engine) -> None:
    """Runs after the committing test above: its rows were deleted."""
    with engine.connect() as conn:
        for table in TABLES:
            assert conn.scalar(text(f"SELECT count(*) FROM {table}")) == 0
