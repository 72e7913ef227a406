"""The store's retention health: backlog, oldest overdue number, holds, last runs, last success."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, false, func, select
from sqlalchemy.orm import Session

from shared.clock import as_utc, iso_timestamp, resolve_now, utcnow
from shared.controls import read_controls
from shared.counts import kept_counts, waiting_count
from shared.models import PURGED_BY_PRUNED_RUNS, PhoneNumber, PrunedTotal, PurgeRun
from shared.provider import REFUSED_CODE
from shared.retention import repurchase_deadline
from shared.run_status import SUCCEEDED, RunStatus

STUCK_SHOWN = 20
# A run that did its job: everything overdue purged, or its share of a larger backlog.


def dry_run_clause() -> ColumnElement[bool]:
    """Dry runs (a paused dry run records status `paused`: its summary says it was dry)."""
    return (PurgeRun.status == RunStatus.DRY_RUN) | func.coalesce(
        PurgeRun.summary["dry_run"].as_boolean(), false()
    ).is_(True)


def _run(run: PurgeRun, *, takeable: int | None = None) -> dict[str, Any]:
    """A run's record; a running one's (its record counts every committed batch) with its
    seconds so far, its rate, and what is left to take now with an estimate of the time."""
    summary = run.summary or {}
    seconds, remaining, eta = summary.get("seconds"), run.remaining, None
    if run.status == RunStatus.RUNNING:
        # The record's times are this host's clock (`utcnow`), whatever `now` status decides at.
        started = run.started_at
        started = started if started.tzinfo else started.replace(tzinfo=UTC)
        seconds = round(max((utcnow() - started).total_seconds(), 0.0), 3)
        remaining = takeable
    rate = round(run.purged / seconds, 1) if seconds else None
    if run.status == RunStatus.RUNNING and rate and remaining is not None:
        eta = round(remaining / rate, 1)
    return {
        "run_id": run.id,
        "status": run.status,
        "started_at": iso_timestamp(run.started_at),
        "finished_at": iso_timestamp(run.finished_at) if run.finished_at else None,
        "cutoff": iso_timestamp(run.cutoff),
        "seconds": seconds,
        "purged": run.purged,
        "batches": run.batches,
        "remaining": remaining,
        "remaining_waiting": summary.get("remaining_waiting"),
        "rows_per_second": rate,
        "eta_seconds": eta,
        "reason": summary.get("reason"),
    }


def _waits_on(number: PhoneNumber) -> str | None:
    """Who a number kept upstream waits on: a person (given up until `retry-upstream`), the
    carrier (refused for now: a port-out it carries out), or None (retried by itself)."""
    if number.provider_failed_permanently:
        return "person"
    return "carrier" if number.provider_error_code == REFUSED_CODE else None


def _submitted(session: Session, now: datetime) -> dict[str, Any]:
    """Numbers submitted in carrier orders not settled yet: how many, in how many orders, and
    how long the oldest has waited (0: none). An order that never settles shows here."""
    numbers, orders, oldest = session.execute(
        select(
            func.count(),
            func.count(func.distinct(PhoneNumber.provider_order_id)),
            func.min(PhoneNumber.provider_submitted_at),
        ).where(PhoneNumber.provider_order_id.is_not(None))
    ).one()
    age = (now - as_utc(oldest)).total_seconds() if oldest is not None else 0.0
    return {"numbers": numbers, "orders": orders, "oldest_age_seconds": round(max(age, 0.0), 3)}


def _stuck(number: PhoneNumber) -> dict[str, Any]:
    return {
        "phone_number": number.phone_number,
        "account_id": number.account_id,
        "permanent": number.provider_failed_permanently,
        "refused": number.provider_error_code == REFUSED_CODE,
        "waits_on": _waits_on(number),
        "error_code": number.provider_error_code,
        "provider_code": number.provider_code,
        "message": number.provider_error_message,
        "attempts": number.provider_attempts,
        "next_attempt_at": iso_timestamp(number.provider_next_attempt_at)
        if number.provider_next_attempt_at
        else None,
    }


def counts_status(
    session: Session, *, now: datetime, provider: str = "none", stuck: bool = True
) -> dict[str, Any]:
    """The store's counts at `now` (kept, not scanned: shared/counts.py, so a reading costs
    the same whatever the store's size) and, with `stuck`, the numbers kept upstream."""
    counts = kept_counts(session, now)
    oldest = counts.oldest_overdue
    # An overdue number's lag is how long it has been past its deadline.
    oldest_seconds = (now - repurchase_deadline(oldest)).total_seconds() if oldest else 0.0
    # The outbox: events the relay has not applied (or, without Redis, discarded) yet.
    outbox_oldest = counts.outbox_oldest
    outbox_age = (now - as_utc(outbox_oldest)).total_seconds() if outbox_oldest else 0.0
    report: dict[str, Any] = {
        "overdue": counts.overdue,
        # Of them, those a run cannot take now: they wait on the provider or a person.
        "overdue_waiting": waiting_count(session, now, provider),
        "oldest_overdue_seconds": round(max(oldest_seconds, 0.0), 3),
        "oldest_overdue_released_at": iso_timestamp(oldest) if oldest is not None else None,
        "held": counts.held,
        "releasable": counts.releasable,
        "upstream_failed": counts.upstream_failed,
        "upstream_permanent": counts.upstream_permanent,
        "upstream_claimed": counts.upstream_claimed,
        "upstream_refused_person": counts.upstream_refused_person,
        "upstream_refused_carrier": counts.upstream_refused_carrier,
        # Numbers in orders the carrier has not settled yet (asynchronous releases).
        "submitted": _submitted(session, now),
        "outbox": {
            "events": counts.outbox_events,
            "oldest_age_seconds": round(max(outbox_age, 0.0), 3),
        },
    }
    if stuck:
        numbers = session.scalars(
            select(PhoneNumber)
            .where(PhoneNumber.provider_error_code.is_not(None))
            .order_by(PhoneNumber.provider_failed_permanently.desc(), PhoneNumber.released_at)
            .limit(STUCK_SHOWN)
        ).all()
        report["upstream_stuck"] = [_stuck(number) for number in numbers]
    return report


def runs_status(
    session: Session,
    *,
    now: datetime,
    runs: int = 5,
    deploy_paused: bool = False,
    takeable: int | None = None,
) -> dict[str, Any]:
    """The pause and pace, the last `runs` real purge runs (a running one with `takeable`,
    what is left for it to take now), the last dry run, finished run and success."""
    # Dry runs are listed apart, so trying one never pushes the real runs out of view.
    real = ~dry_run_clause()
    last_runs = session.scalars(
        select(PurgeRun).where(real).order_by(PurgeRun.started_at.desc()).limit(runs)
    ).all()
    last_dry_run = session.scalars(
        select(PurgeRun).where(dry_run_clause()).order_by(PurgeRun.started_at.desc()).limit(1)
    ).one_or_none()
    last_finished = session.scalars(
        select(PurgeRun)
        # A run that found the lock taken did nothing: the last one that ran counts.
        .where(
            real,
            PurgeRun.finished_at.is_not(None),
            PurgeRun.status.not_in((RunStatus.RUNNING, RunStatus.SKIPPED)),
        )
        .order_by(PurgeRun.finished_at.desc())
        .limit(1)
    ).one_or_none()
    last_success = session.scalar(
        select(func.max(PurgeRun.finished_at)).where(real, PurgeRun.status.in_(SUCCEEDED))
    )
    purged_total = session.execute(select(func.coalesce(func.sum(PurgeRun.purged), 0))).scalar_one()
    # Runs pruned after AUDIT_RETENTION_DAYS left their count behind (shared/audit.py).
    purged_total += session.execute(
        select(func.coalesce(func.sum(PrunedTotal.value), 0)).where(
            PrunedTotal.name == PURGED_BY_PRUNED_RUNS
        )
    ).scalar_one()
    controls = read_controls(session)
    pause = controls.pause
    return {
        "now": iso_timestamp(now),
        "paused": pause is not None or deploy_paused,
        "paused_by_setting": deploy_paused,
        "pause": pause.as_dict() if pause else None,
        "pace": controls.pace.as_dict() if controls.pace else None,
        "last_runs": [_run(run, takeable=takeable) for run in last_runs],
        "last_dry_run": _run(last_dry_run) if last_dry_run else None,
        "purge_last_success_at": iso_timestamp(last_success) if last_success else None,
        # The newest run that ended (what it purged, how long it and its slowest batch took).
        "last_finished_run": _run(last_finished)
        | {"worst_batch_ms": (last_finished.summary or {}).get("worst_batch_ms")}
        if last_finished
        else None,
        "purged_total": int(purged_total),
    }


def store_status(
    session: Session,
    *,
    now: datetime | None = None,
    runs: int = 5,
    deploy_paused: bool = False,
    provider: str = "none",
) -> dict[str, Any]:
    """Counts, the last `runs` real purge runs and the last success, as JSON-ready values.

    `deploy_paused`: the caller's PURGE_PAUSED, which pauses runs as a stored pause does;
    `provider`: the caller's PROVIDER, which decides which overdue numbers a run can take now.
    """
    now = resolve_now(now)
    counts = counts_status(session, now=now, provider=provider)
    takeable = counts["overdue"] - counts["overdue_waiting"]
    return (
        runs_status(session, now=now, runs=runs, deploy_paused=deploy_paused, takeable=takeable)
        | counts
    )
