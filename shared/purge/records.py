"""Run records: one row per run in `purge_runs`, for `status` and dashboards."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import utcnow
from shared.models import PurgedNumber, PurgeRun
from shared.purge.report import PurgeReport
from shared.retention import cutoff as retention_cutoff
from shared.run_status import RunStatus

DIED = "the run ended without recording its end (worker killed or database lost)"


def record_start(factory: sessionmaker[Session], report: PurgeReport, now: datetime) -> None:
    """Record the run as running; first close the records of runs that died."""
    # The record says when the run happened (this host's clock); the decision instant `now`
    # is its cutoff's, so `status` never lists a run from the future.
    started = utcnow()
    with factory.begin() as session:
        close_dead_runs(session, at=started)
        session.add(
            PurgeRun(
                id=report.run_id,
                started_at=started,
                cutoff=retention_cutoff(now),
                status=RunStatus.RUNNING,
                purged=0,
                batches=0,
            )
        )


def record_skipped(factory: sessionmaker[Session], report: PurgeReport, now: datetime) -> None:
    """Record a run that found the lock taken and did nothing (operators see the overlap)."""
    record_ended_at_once(factory, report, at=utcnow(), now=now)


def record_refused(factory: sessionmaker[Session], report: PurgeReport, at: datetime) -> None:
    """Record a run refused before it began (`clock_skew`), dated `at`: an instant the caller
    trusts (never this host's clock when that is what was refused)."""
    record_ended_at_once(factory, report, at=at, now=at)


def record_ended_at_once(
    factory: sessionmaker[Session], report: PurgeReport, *, at: datetime, now: datetime
) -> None:
    """Record a run that ended as it began, with its status and summary, dated `at` (its
    cutoff is `now`'s)."""
    with factory.begin() as session:
        session.add(
            PurgeRun(
                id=report.run_id,
                started_at=at,
                finished_at=at,
                cutoff=retention_cutoff(now),
                status=report.status,
                purged=0,
                batches=0,
                summary=report.as_dict(),
            )
        )


def close_dead_runs(session: Session, *, at: datetime) -> None:
    """Mark runs still 'running' as failed, with the rows they really purged.

    Called under the run lock: a record still 'running' is a run that died before it could
    record its end. Its tombstones carry its run id, so its true count survives it.
    """
    dead = session.scalars(select(PurgeRun).where(PurgeRun.status == RunStatus.RUNNING)).all()
    for run in dead:
        purged = session.scalar(
            select(func.count()).select_from(PurgedNumber).where(PurgedNumber.run_id == run.id)
        )
        run.status, run.finished_at, run.purged = RunStatus.FAILED, at, int(purged or 0)
        run.summary = {
            "run_id": run.id,
            "status": RunStatus.FAILED,
            "purged": run.purged,
            "reason": DIED,
        }
    session.flush()


def record_progress(session: Session, run_id: str, purged: int) -> None:
    """Count a committed batch in the run's record, in the batch's own transaction: `status`
    shows a running run's rows so far and its rate."""
    session.execute(
        update(PurgeRun)
        .where(PurgeRun.id == run_id)
        .values(purged=PurgeRun.purged + purged, batches=PurgeRun.batches + 1)
    )


def record_end(factory: sessionmaker[Session], report: PurgeReport) -> None:
    """Record the run's end: status, counts and its summary."""
    with factory.begin() as session:
        session.execute(
            update(PurgeRun)
            .where(PurgeRun.id == report.run_id)
            .values(
                status=report.status,
                finished_at=utcnow(),
                purged=report.purged,
                batches=report.batches,
                remaining=report.remaining,
                summary=report.as_dict(),
            )
        )
