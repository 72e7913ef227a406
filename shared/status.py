"""The store's retention health: backlog, oldest overdue number, holds, last runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.controls import read_controls
from shared.listing import iso_timestamp, offered
from shared.models import PhoneNumber, PurgeRun
from shared.purge import overdue_filter
from shared.retention import RETENTION, resolve_now

STUCK_SHOWN = 20


def store_status(session: Session, *, now: datetime | None = None, runs: int = 5) -> dict[str, Any]:
    """Counts and the last `runs` purge runs, as JSON-ready values."""
    now = resolve_now(now)
    overdue, oldest = session.execute(
        select(func.count(), func.min(PhoneNumber.released_at)).where(overdue_filter(now))
    ).one()
    held = session.scalar(
        select(func.count()).where(
            PhoneNumber.billing_status == "released", PhoneNumber.purge_hold.is_(True)
        )
    )
    releasable = session.scalar(select(func.count()).where(offered(now)))
    failed_upstream = PhoneNumber.provider_error_code.is_not(None)
    upstream_failed, upstream_permanent = session.execute(
        select(
            func.count(),
            func.count().filter(PhoneNumber.provider_failed_permanently.is_(True)),
        ).where(failed_upstream)
    ).one()
    stuck = session.scalars(
        select(PhoneNumber)
        .where(failed_upstream)
        .order_by(PhoneNumber.provider_failed_permanently.desc(), PhoneNumber.released_at)
        .limit(STUCK_SHOWN)
    ).all()
    last_runs = session.scalars(
        select(PurgeRun).order_by(PurgeRun.started_at.desc()).limit(runs)
    ).all()
    # An overdue number's lag is how long it has been past its deadline.
    oldest_seconds = (now - (oldest + RETENTION)).total_seconds() if oldest is not None else 0.0
    controls = read_controls(session)
    pause = controls.pause
    return {
        "now": iso_timestamp(now),
        "paused": pause is not None,
        "pause": pause.as_dict() if pause else None,
        "pace": controls.pace.as_dict() if controls.pace else None,
        "overdue": overdue,
        "oldest_overdue_seconds": round(max(oldest_seconds, 0.0), 3),
        "oldest_overdue_released_at": iso_timestamp(oldest) if oldest is not None else None,
        "held": held or 0,
        "releasable": releasable or 0,
        "upstream_failed": upstream_failed,
        "upstream_permanent": upstream_permanent,
        "upstream_stuck": [
            {
                "phone_number": number.phone_number,
                "account_id": number.account_id,
                "permanent": number.provider_failed_permanently,
                "error_code": number.provider_error_code,
                "provider_code": number.provider_code,
                "message": number.provider_error_message,
                "attempts": number.provider_attempts,
                "next_attempt_at": iso_timestamp(number.provider_next_attempt_at)
                if number.provider_next_attempt_at
                else None,
            }
            for number in stuck
        ],
        "last_runs": [
            {
                "run_id": run.id,
                "status": run.status,
                "started_at": iso_timestamp(run.started_at),
                "finished_at": iso_timestamp(run.finished_at) if run.finished_at else None,
                "cutoff": iso_timestamp(run.cutoff),
                "seconds": (run.summary or {}).get("seconds"),
                "purged": run.purged,
                "batches": run.batches,
                "remaining": run.remaining,
                "reason": (run.summary or {}).get("reason"),
            }
            for run in last_runs
        ],
    }
