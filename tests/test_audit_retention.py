"""The worker's own retention (shared/audit.py): tombstone labels erased after
TOMBSTONE_REDACT_DAYS, tombstones (whole disconnection months) and run records deleted after
AUDIT_RETENTION_DAYS, in batches through the purge's sweep, at the run's `now`; on both
backends, the command in-process (click's runner).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from click.testing import Result
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from shared.audit import AuditRetention, PruneReport, prune_audit
from shared.controls import pause_purge
from shared.errors import ValidationError
from shared.ledger import disconnects_report, parse_month
from shared.models import PurgedNumber, PurgeRun
from shared.purge import lock
from shared.purge.config import PurgeConfig
from shared.settings import Settings
from shared.status import store_status
from tests.factories import NOW, make_number, snapshot

Factory = sessionmaker[Session]
RETENTION = AuditRetention(audit_days=400, redact_days=90)
CONFIG = PurgeConfig.from_settings(Settings())
# A month's tombstones go once its last instant is 400 days old: September 2024's at this one.
SEPTEMBER_GOES = datetime(2024, 10, 1, tzinfo=UTC) + timedelta(days=400)
SECOND = timedelta(seconds=1)


def prune(factory: Factory, now: datetime, **bounds: Any) -> PruneReport:
    dry_run = bounds.pop("dry_run", False)
    return prune_audit(
        factory,
        retention=RETENTION,
        config=CONFIG.overridden(**bounds),
        now=now,
        dry_run=dry_run,
    )


def add_tombstone(
    session: Session, number_id: int, purged_at: datetime, *, phone: str | None = None
) -> None:
    """A tombstone as the purge writes it, purged (and disconnected) at `purged_at`."""
    session.add(
        PurgedNumber(
            number_id=number_id,
            account_id="acc_audit",
            phone_number=phone or f"+1415555{number_id:04d}",
            label=f"Mobile of customer {number_id}",
            created_at=purged_at - timedelta(days=90),
            country_code="US",
            number_type="local",
            next_billing_date=purged_at.date(),
            monthly_price=Decimal("1.0000"),
            released_at=purged_at - timedelta(days=14),
            provider_number_id=f"pn-{number_id}",
            campaign_id="C-1",
            a2p_status="approved",
            purged_at=purged_at,
            run_id="run-audit",
            provider="telnyx",
            upstream_released_at=purged_at,
            resolution="provider",
            carrier="telnyx",
            release_proof={"resolution": "provider"},
            disconnect_date=purged_at.date(),
            disconnect_reason="released",
        )
    )


def add_run(
    session: Session, run_id: str, started_at: datetime, status: str = "completed", purged: int = 1
) -> None:
    session.add(
        PurgeRun(
            id=run_id,
            started_at=started_at,
            finished_at=None if status == "running" else started_at + SECOND,
            cutoff=started_at - timedelta(days=14),
            status=status,
            purged=purged,
            batches=1,
            summary={"dry_run": status == "dry_run"},
        )
    )


def tombstones(factory: Factory) -> dict[int, dict[str, Any]]:
    with factory() as session:
        rows = session.execute(select(PurgedNumber.__table__)).mappings().all()
        return {row["number_id"]: dict(row) for row in rows}


def run_ids(factory: Factory) -> set[str]:
    with factory() as session:
        return set(session.scalars(select(PurgeRun.id)))


def test_a_label_is_erased_at_its_redaction_instant_and_nothing_else_changes(
    session_factory: Factory,
) -> None:
    purged_at = NOW - timedelta(days=90)
    with session_factory.begin() as session:
        add_tombstone(session, 1, purged_at)
        add_tombstone(session, 2, purged_at + SECOND)
    before = tombstones(session_factory)

    report = prune(session_factory, purged_at + timedelta(days=90) - SECOND)
    assert report.done["labels"] == 0
    assert tombstones(session_factory) == before

    report = prune(session_factory, purged_at + timedelta(days=90))
    assert (report.status, report.done["labels"], report.due["labels"]) == ("completed", 1, 0)
    after = tombstones(session_factory)
    assert after[1]["label"] is None
    # Every other field of the redacted tombstone is what it was; the other one is untouched.
    assert after[1] | {"label": before[1]["label"]} == before[1]
    assert after[2] == before[2]


def test_a_month_of_the_ledger_goes_whole_once_its_last_instant_is_retention_old(
    session_factory: Factory, now: datetime
) -> None:
    with session_factory.begin() as session:
        add_tombstone(session, 1, datetime(2024, 9, 1, 0, 0, tzinfo=UTC))
        add_tombstone(session, 2, datetime(2024, 9, 30, 23, 59, 59, tzinfo=UTC))
        add_tombstone(session, 3, datetime(2024, 10, 1, 0, 0, tzinfo=UTC))
        add_tombstone(session, 4, datetime(2024, 10, 31, 23, 0, tzinfo=UTC))
    october = parse_month("2024-10")
    with session_factory() as session:
        october_report = disconnects_report(session, october)
    assert october_report["count"] == 2

    report = prune(session_factory, SEPTEMBER_GOES - SECOND)
    assert report.done["tombstones"] == 0
    assert set(tombstones(session_factory)) == {1, 2, 3, 4}

    report = prune(session_factory, SEPTEMBER_GOES)
    assert report.cutoffs["tombstones_disconnected_before"] == "2024-10-01"
    assert (report.done["tombstones"], report.due["tombstones"]) == (2, 0)
    assert set(tombstones(session_factory)) == {3, 4}

    # At the suite's instant October 1st is more than 400 days old, but October 31st is not:
    # October's report stays complete.
    assert now - timedelta(days=400) > datetime(2024, 10, 1, tzinfo=UTC)
    report = prune(session_factory, now)
    assert report.done["tombstones"] == 0
    with session_factory() as session:
        assert disconnects_report(session, october) == october_report


def test_run_records_go_after_the_retention_but_never_a_running_one_nor_the_last_of_a_status(
    session_factory: Factory, now: datetime
) -> None:
    old = now - timedelta(days=400)
    with session_factory.begin() as session:
        add_run(session, "a-at-the-boundary", old, purged=5)
        add_run(session, "b-a-second-younger", old + SECOND, purged=7)
        add_run(session, "c-older", old - timedelta(days=100), purged=11)
        add_run(session, "d-recent", now - timedelta(days=1), purged=13)
        add_run(session, "e-still-running", old - timedelta(days=50), status="running")
        add_run(session, "f-last-failed", old - timedelta(days=50), status="failed")
        add_run(session, "g-last-dry-run", old - timedelta(days=50), status="dry_run", purged=0)
    with session_factory() as session:
        status_before = store_status(session, now=now)
    assert status_before["purged_total"] == 38

    # One run record per batch: the second adds to the total the first one started.
    report = prune(session_factory, now, batch_size=1)
    assert (report.status, report.done["runs"], report.due["runs"]) == ("completed", 2, 0)
    assert report.batches == 2
    assert run_ids(session_factory) == {
        "b-a-second-younger",
        "d-recent",
        "e-still-running",
        "f-last-failed",
        "g-last-dry-run",
    }
    with session_factory() as session:
        status_after = store_status(session, now=now)
    # The exporter's counter and what status reads of the runs are unchanged.
    for key in ("purged_total", "purge_last_success_at", "last_finished_run", "last_dry_run"):
        assert status_after[key] == status_before[key], key


def test_pruning_is_batched_resumable_and_deletes_nothing_else(session_factory: Factory) -> None:
    now = SEPTEMBER_GOES
    with session_factory.begin() as session:
        make_number(session, account_id="acc_keep", phone_number="+14155550900", now=now)
        for number_id in range(1, 8):  # September 2024: due
            add_tombstone(session, number_id, datetime(2024, 9, number_id, tzinfo=UTC))
        for number_id in range(8, 11):  # recent: kept, labels too
            add_tombstone(session, number_id, now - timedelta(days=number_id))
    with session_factory() as session:
        before = snapshot(session)

    first = prune(session_factory, now, batch_size=2, max_rows=5)
    assert (first.status, first.done["tombstones"], first.batches) == ("limit_reached", 5, 3)
    assert first.due["tombstones"] == 2
    second = prune(session_factory, now, batch_size=2)
    assert (second.status, second.done["tombstones"], second.due["tombstones"]) == (
        "completed",
        2,
        0,
    )

    with session_factory() as session:
        after = snapshot(session)
    kept = [row for row in before["purged_numbers"] if row[1] >= 8]  # (id, number_id, ...)
    assert after["purged_numbers"] == kept
    assert {name: rows for name, rows in after.items() if name != "purged_numbers"} == {
        name: rows for name, rows in before.items() if name != "purged_numbers"
    }


def test_a_dry_run_counts_and_changes_nothing_and_a_real_run_never_looks_ahead(
    session_factory: Factory,
) -> None:
    with session_factory.begin() as session:
        add_tombstone(session, 1, datetime(2024, 9, 1, tzinfo=UTC))
    before = tombstones(session_factory)
    future = datetime(8000, 1, 1, tzinfo=UTC)

    report = prune(session_factory, future, dry_run=True)
    assert (report.status, report.due, report.batches) == (
        "dry_run",
        {"tombstones": 1, "labels": 1, "runs": 0},
        0,
    )
    with pytest.raises(ValidationError) as refused:
        prune(session_factory, future)
    assert refused.value.code == "now_in_future"
    assert tombstones(session_factory) == before


def test_a_pause_holds_the_prune_and_a_second_prune_is_skipped(
    session_factory: Factory, engine: Engine
) -> None:
    with session_factory.begin() as session:
        add_tombstone(session, 1, datetime(2024, 9, 1, tzinfo=UTC))
    with lock.run_lock(engine, lock.PRUNE_LOCK_KEY, "prune") as held:
        assert held
        # The purge's lock is another one: a purge never waits for a prune.
        with lock.run_lock(engine) as purge_lock:
            assert purge_lock
        assert prune(session_factory, SEPTEMBER_GOES).status == "skipped"
    with session_factory.begin() as session:
        pause_purge(session, by="ops", reason="audit", now=SEPTEMBER_GOES)
    report = prune(session_factory, SEPTEMBER_GOES)
    assert (report.status, report.reason, report.due["tombstones"]) == (
        "paused",
        "paused by ops: audit",
        1,
    )
    assert set(tombstones(session_factory)) == {1}


def test_redaction_cannot_outlast_the_retention() -> None:
    with pytest.raises(pydantic.ValidationError, match="TOMBSTONE_REDACT_DAYS"):
        Settings(audit_retention_days=30, tombstone_redact_days=31)
    assert Settings(audit_retention_days=30, tombstone_redact_days=30)


@pytest.fixture
def cli(
    session_factory: Factory, engine: Engine, cli_on: Callable[..., Callable[..., Result]]
) -> Callable[..., Result]:
    """`numbers-retention ARGS...` in this process, on the test store."""
    return cli_on(engine)


def test_the_prune_command_prints_its_summary(
    cli: Callable[..., Result], session_factory: Factory
) -> None:
    with session_factory.begin() as session:
        add_tombstone(session, 1, datetime(2024, 9, 1, tzinfo=UTC))
        add_tombstone(session, 2, datetime(2025, 7, 1, tzinfo=UTC))
    at = SEPTEMBER_GOES.isoformat()

    with capture_logs() as dry_logs:
        dry = cli("prune", "--dry-run", "--now", at)
    assert dry.exit_code == 0, dry.stderr
    assert json.loads(dry.stdout)["due"] == {"tombstones": 1, "labels": 2, "runs": 0}

    with capture_logs() as logs:
        done = cli("prune", "--now", at)
    assert done.exit_code == 0, done.stderr
    assert [entry["event"] for entry in dry_logs] == ["prune.started", "prune.finished"]
    events = [(entry["event"], entry.get("step"), entry.get("rows")) for entry in logs]
    assert events == [
        ("prune.started", None, None),
        ("prune.batch", "tombstones", 1),
        ("prune.batch", "labels", 1),
        ("prune.finished", None, None),
    ]
    summary = json.loads(done.stdout)
    assert (summary["status"], summary["done"]) == (
        "completed",
        {"tombstones": 1, "labels": 1, "runs": 0},
    )
    assert set(tombstones(session_factory)) == {2}
    assert tombstones(session_factory)[2]["label"] is None
