"""`status` shows what a purge is doing: a running run's rows so far, rate and what is left,
and what a run can take now apart from what waits on the provider or a person (issue 19)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared.controls import set_pace
from shared.purge import StopRequest
from shared.purge.report import PurgeReport
from shared.status import store_status
from tests.factories import make_number
from tests.purging import purge_expired
from tests.stores import fail_upstream
from worker.cli.render import status_table

Factory = sessionmaker[Session]


def seed(factory: Factory, now: datetime, count: int, prefix: str = "+1415630") -> None:
    with factory.begin() as session:
        for i in range(count):
            make_number(
                session,
                account_id="acc_p",
                phone_number=f"{prefix}{i:04d}",
                released_at=now - timedelta(days=20),
                now=now,
            )


def test_a_running_purge_shows_its_rows_so_far_its_rate_and_what_is_left(
    pg_factory: Factory, now: datetime
) -> None:
    seed(pg_factory, now, 60)
    with pg_factory.begin() as session:
        # 40 rows/s: batches of 20, one every half second; the run takes 1.5 s at least.
        set_pace(session, rows_per_second=40, by="ops")
    stop = StopRequest()
    reports: list[PurgeReport] = []
    runner = threading.Thread(
        target=lambda: reports.append(purge_expired(pg_factory, now=now, stop=stop))
    )
    runner.start()
    seen: dict[str, Any] | None = None
    try:
        deadline = time.monotonic() + 20  # a guard against a hang, not a measurement
        while seen is None and time.monotonic() < deadline and runner.is_alive():
            with pg_factory() as session:
                runs = store_status(session, now=now)["last_runs"]
            if runs and runs[0]["status"] == "running" and runs[0]["batches"] >= 1:
                seen = runs[0]
            else:
                time.sleep(0.02)
    finally:
        stop.request("test")
        runner.join()
    assert seen is not None, "the run record never counted a batch while running"
    # The record counts committed batches: rows so far, and what is left of the 60.
    assert seen["purged"] == 20 * seen["batches"]
    # (the backlog is counted a moment before the runs are read: a batch may commit between)
    assert 60 - seen["purged"] <= seen["remaining"] <= 60 - seen["purged"] + 20
    assert seen["rows_per_second"] == round(seen["purged"] / seen["seconds"], 1)
    assert seen["eta_seconds"] == round(seen["remaining"] / seen["rows_per_second"], 1)
    assert reports[0].purged >= seen["purged"]


def test_a_run_without_a_provider_counts_upstream_rows_as_waiting_not_purgeable_now(
    session_factory: Factory, now: datetime
) -> None:
    seed(session_factory, now, 5)
    with session_factory.begin() as session:
        # Left claimed with a provider error by an earlier run with the provider configured.
        fail_upstream(session, "+14156300000", permanent=True, now=now)
        fail_upstream(session, "+14156300001", permanent=False, now=now)
    report = purge_expired(session_factory, now=now, max_rows=3)
    # It took the 3 it could; the 2 with upstream state wait: nothing left to take now.
    assert (report.purged, report.remaining, report.remaining_waiting) == (3, 2, 2)
    assert report.status == "completed"
    with session_factory() as session:
        status = store_status(session, now=now)
        with_provider = store_status(session, now=now, provider="telnyx")
    assert (status["overdue"], status["overdue_waiting"]) == (2, 2)
    assert status["last_runs"][0]["remaining_waiting"] == 2
    # With the provider configured, the one given up on waits for a person, the other backs
    # off until a day after its failure.
    assert with_provider["overdue_waiting"] == 2
    assert with_provider["overdue"] == 2
    lines = status_table(status | {"publication": None}).splitlines()
    assert "  Overdue (purgeable now)  0 (+2 waiting on the provider or a person)" in lines


def test_the_status_table_shows_a_running_runs_rate_and_estimate() -> None:
    run = {
        "started_at": "2026-11-27T11:59:00Z",
        "status": "running",
        "purged": 24_000,
        "batches": 48,
        "remaining": 120_000,
        "seconds": 60.0,
        "rows_per_second": 400.0,
        "eta_seconds": 300.0,
        "reason": None,
    }
    report = {
        "now": "2026-11-27T12:00:00Z",
        "overdue": 120_000,
        "overdue_waiting": 0,
        "oldest_overdue_seconds": 60.0,
        "oldest_overdue_released_at": "2026-11-13T11:59:00Z",
        "held": 0,
        "releasable": 0,
        "upstream_failed": 0,
        "upstream_permanent": 0,
        "upstream_claimed": 0,
        "upstream_refused_person": 0,
        "upstream_refused_carrier": 0,
        "upstream_stuck": [],
        "paused": False,
        "pause": None,
        "last_runs": [run],
    }
    assert status_table(report).splitlines()[-1] == (
        "  2026-11-27 11:59:00Z  running  24,000       48    120,000  60.0s  400 rows/s, ~5m left"
    )
