"""Query plans on PostgreSQL: the list and the purge read through indexes, not whole tables.

Not timed (bench/ measures speed). The statements are the ones the functions really send,
captured as they run, then explained on a store of 20,000 numbers with fresh statistics, all
inside one transaction that is rolled back.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared.purge import lanes, purge_batch
from shared.purge.boundary import Halt
from shared.purge.report import PurgeReport
from shared.purge.service import _finish

pytestmark = pytest.mark.postgres

ACCOUNTS = 200
NUMBERS = 20_000


@pytest.fixture
def store(pg_engine: Engine, now: datetime) -> Iterator[Connection]:
    """20,000 numbers over 200 accounts, with ids apart from other tests' data: a third active,
    the rest released over the last 13 days, and every 1000th 20 days ago (overdue, as between
    two purge runs); analyzed; rolled back after the test."""
    with pg_engine.connect() as connection:
        outer = connection.begin()
        try:
            connection.execute(
                text(
                    "INSERT INTO accounts (id, plan, created_at) "
                    "SELECT 'plans_' || lpad(g::text, 5, '0'), 'paid', :now - interval '400 days' "
                    "FROM generate_series(1, :accounts) g"
                ),
                {"now": now, "accounts": ACCOUNTS},
            )
            connection.execute(
                text(
                    "INSERT INTO phone_numbers (account_id, phone_number, created_at, "
                    "country_code, number_type, billing_status, next_billing_date, "
                    "monthly_price, released_at) "
                    "SELECT 'plans_' || lpad((g % :accounts + 1)::text, 5, '0'), "
                    "'+1999' || (2000000 + g), :now - interval '100 days', 'US', 'local', "
                    "CASE WHEN g % 3 = 0 AND g % 1000 <> 1 THEN 'active' ELSE 'released' END, "
                    "(:now)::date + 10, 1.00, "
                    "CASE WHEN g % 1000 = 1 THEN :now - interval '20 days' "
                    "WHEN g % 3 = 0 THEN NULL "
                    "ELSE :now - (g % 13 + 1) * interval '1 day' - interval '1 hour' END "
                    "FROM generate_series(1, :numbers) g"
                ),
                {"now": now, "accounts": ACCOUNTS, "numbers": NUMBERS},
            )
            connection.execute(text("ANALYZE accounts, phone_numbers, campaign_assignments"))
            yield connection
        finally:
            outer.rollback()


def captured(connection: Connection) -> list[tuple[str, Any]]:
    """Collects (statement, parameters) of everything `connection` sends from now on."""
    statements: list[tuple[str, Any]] = []

    @event.listens_for(connection, "before_cursor_execute")
    def _capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    return statements


def plan_nodes(connection: Connection, statement: str, parameters: Any) -> list[dict[str, Any]]:
    """Every node of the statement's plan (EXPLAIN, not executed), flattened."""
    plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar()
    nodes, todo = [], [plan[0]["Plan"]]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return nodes


NUMBER_INDEXES = {
    "phone_numbers_pkey",
    "phone_numbers_phone_number_key",
    "ix_phone_numbers_account_released",
    "ix_phone_numbers_released_at",
    "ix_phone_numbers_account_active",
    "ix_phone_numbers_claimed",
    "ix_phone_numbers_lane_due",
}


def reads_of_numbers(nodes: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """The node types that read phone_numbers, and the indexes of phone_numbers used."""
    kinds = {node["Node Type"] for node in nodes if node.get("Relation Name") == "phone_numbers"}
    indexes = {node["Index Name"] for node in nodes if node.get("Index Name") in NUMBER_INDEXES}
    return kinds, indexes


def test_released_list_reads_the_accounts_index(store: Connection, now: datetime) -> None:
    statements = captured(store)
    with Session(bind=store, join_transaction_mode="create_savepoint") as session:
        body = shared.released_numbers_body(session, account_id="plans_00007", now=now)
    assert len(body["numbers"]) > 20
    (query,) = [s for s in statements if "FROM phone_numbers" in s[0]]
    kinds, indexes = reads_of_numbers(plan_nodes(store, *query))
    assert "Seq Scan" not in kinds
    assert indexes == {"ix_phone_numbers_account_released"}


def test_purge_batch_reads_indexes_between_runs(store: Connection, now: datetime) -> None:
    """A few overdue numbers among many, as between two runs: the pick reads the partial index
    on released_at instead of walking the primary key, and the tombstone-and-delete reaches
    the picked rows through an index too."""
    statements = captured(store)
    with Session(bind=store, join_transaction_mode="create_savepoint") as session:
        purged = purge_batch(session, now=now, run_id="plan", limit=5000)
    assert purged == NUMBERS // 1000
    pick, purge = [s for s in statements if "phone_numbers" in s[0]]
    assert "FOR UPDATE SKIP LOCKED" in pick[0]
    kinds, indexes = reads_of_numbers(plan_nodes(store, *pick))
    assert "Seq Scan" not in kinds
    assert indexes == {"ix_phone_numbers_released_at"}
    kinds, indexes = reads_of_numbers(plan_nodes(store, *purge))
    assert "Seq Scan" not in kinds
    # By id, or (with so few overdue rows) by the same partial index: both read only them.
    assert indexes in ({"phone_numbers_pkey"}, {"ix_phone_numbers_released_at"})


def rows_read_from_numbers(connection: Connection, statement: str, parameters: Any) -> int:
    """Rows of phone_numbers the statement visits (returned or filtered out), executed."""
    plan = connection.exec_driver_sql(
        f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters
    ).scalar()
    nodes, todo = [], [plan[0]["Plan"]]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return sum(
        (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
        for node in nodes
        if node.get("Relation Name") == "phone_numbers"
        or node.get("Index Name") in NUMBER_INDEXES | {"ix_phone_numbers_upstream"}
    )


@pytest.mark.parametrize("provider", ["none", "telnyx"])
def test_a_runs_end_does_not_count_the_backlog(
    store: Connection, now: datetime, provider: str
) -> None:
    """What a run leaves overdue comes from the kept counts, not a count of the backlog: on a
    store of 10 million numbers the two counts at the end of every run (an index scan of each
    overdue row, a sequential scan of the table for those waiting) cost as much as purging
    tens of thousands of rows (bench/scale.py: rows/s 0.70-0.78x at 10M of 1M)."""
    # A backlog: the released numbers overdue for days, spread over ten hours.
    store.execute(
        text(
            "UPDATE phone_numbers SET released_at = :at - (id % 600) * interval '1 minute' "
            "WHERE released_at IS NOT NULL"
        ),
        {"at": now - timedelta(days=40)},
    )
    store.execute(text("ANALYZE phone_numbers"))
    backlog = store.execute(
        text("SELECT count(*) FROM phone_numbers WHERE released_at IS NOT NULL")
    ).scalar_one()
    assert backlog > NUMBERS // 2
    statements = captured(store)
    report = PurgeReport(run_id="plan", status="running", cutoff="", now="", provider=provider)
    factory = sessionmaker(bind=store, join_transaction_mode="create_savepoint")
    _finish(factory, report, Halt("limit_reached"), now)
    assert (report.remaining, report.remaining_waiting) == (backlog, 0)
    reads = [s for s in statements if "phone_numbers" in s[0]]
    assert reads
    for statement, parameters in reads:
        # The backlog's rows are not visited (before: all of them, twice).
        assert rows_read_from_numbers(store, statement, parameters) < 100, statement


def test_a_run_finds_its_carriers_lanes_without_a_pass_over_the_due_numbers(
    store: Connection, now: datetime
) -> None:
    """Which carriers hold due numbers, at the start of every run: one index probe per carrier
    (before: a pass over every due number, 700 ms at 10M numbers in bench/scale.py, which
    made the purge's rows/s there half its rate at 1M)."""
    store.execute(
        text(
            "UPDATE phone_numbers SET released_at = :at - (id % 600) * interval '1 minute',"
            " carrier = CASE WHEN id % 7 = 0 THEN 'twilio' WHEN id % 2 = 0 THEN 'telnyx' END"
            " WHERE released_at IS NOT NULL"
        ),
        {"at": now - timedelta(days=40)},
    )
    store.execute(text("ANALYZE phone_numbers"))
    statements = captured(store)
    with Session(bind=store, join_transaction_mode="create_savepoint") as session:
        assert lanes.due_lanes(session, now, "bandwidth") == ["bandwidth", "telnyx", "twilio"]
    reads = [s for s in statements if "phone_numbers" in s[0]]
    assert len(reads) == 4  # telnyx, twilio, none after twilio; the numbers without one
    for statement, parameters in reads:
        assert rows_read_from_numbers(store, statement, parameters) < 100, statement
