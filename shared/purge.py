"""The batched purge: tombstone and delete released numbers past their deadline."""

from __future__ import annotations

import fcntl
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import structlog
from sqlalchemy import CursorResult, Engine, delete, func, insert, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.listing import iso_timestamp
from shared.models import CampaignAssignment, PhoneNumber, PurgedNumber, PurgeRun
from shared.retention import cutoff as retention_cutoff
from shared.retention import purgeable_clause, resolve_now
from shared.settings import get_settings

log = structlog.get_logger("shared.purge")

# Any constant works; it only has to be the same for every purge process on the database.
PURGE_LOCK_KEY = 0x6E756D62  # "numb"
SAMPLE_SIZE = 10
TOMBSTONE_COLUMNS = (
    "number_id", "account_id", "phone_number", "label", "created_at", "country_code",
    "number_type", "next_billing_date", "monthly_price", "released_at", "provider_number_id",
    "campaign_id", "a2p_status", "purged_at", "run_id",
)  # fmt: skip


@dataclass
class PurgeReport:
    """What a purge run did; `as_dict()` is the task's JSON summary."""

    run_id: str
    status: str
    cutoff: str
    now: str
    purged: int = 0
    batches: int = 0
    remaining: int | None = None
    seconds: float = 0.0
    worst_batch_ms: float = 0.0
    dry_run: bool = False
    would_purge: int | None = None
    sample: list[str] = field(default_factory=list)
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, keys in snake_case."""
        return asdict(self)


def overdue_filter(now: datetime) -> Any:
    """Released numbers past their deadline at `now` and not on hold: the purge's rows."""
    return purgeable_clause(PhoneNumber.released_at, PhoneNumber.purge_hold, now)


def count_overdue(session: Session, now: datetime) -> int:
    """How many numbers the purge would remove at `now`."""
    return session.scalar(select(func.count()).where(overdue_filter(now))) or 0


@contextmanager
def run_lock(engine: Engine) -> Iterator[bool]:
    """Yield whether this process holds the one-run-at-a-time lock.

    PostgreSQL: a session advisory lock on its own connection, released when the connection
    closes, so a killed worker never leaves it behind. SQLite: flock on a file beside the
    database, released by the kernel when the process dies.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            got = bool(conn.scalar(select(func.pg_try_advisory_lock(PURGE_LOCK_KEY))))
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.scalar(select(func.pg_advisory_unlock(PURGE_LOCK_KEY)))
                    conn.commit()
        return
    database = engine.url.database or ""
    lock_path = Path(f"{database}.purge.lock")
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _purge_batch(session: Session, *, now: datetime, run_id: str, limit: int) -> int:
    """One batch in the caller's transaction: lock, tombstone, delete. Returns rows purged."""
    ids = list(
        session.scalars(
            select(PhoneNumber.id)
            .where(overdue_filter(now))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not ids:
        return 0
    # Re-check the rule under the lock: a number repurchased between our snapshot and the lock
    # no longer matches and is left alone.
    locked = PhoneNumber.id.in_(ids) & overdue_filter(now)
    snapshot = (
        select(
            PhoneNumber.id,
            PhoneNumber.account_id,
            PhoneNumber.phone_number,
            PhoneNumber.label,
            PhoneNumber.created_at,
            PhoneNumber.country_code,
            PhoneNumber.number_type,
            PhoneNumber.next_billing_date,
            PhoneNumber.monthly_price,
            PhoneNumber.released_at,
            PhoneNumber.provider_number_id,
            CampaignAssignment.campaign_id,
            CampaignAssignment.status,
            literal(now, PurgedNumber.purged_at.type),
            literal(run_id),
        )
        .outerjoin(CampaignAssignment, CampaignAssignment.number_id == PhoneNumber.id)
        .where(locked)
    )
    session.execute(insert(PurgedNumber).from_select(TOMBSTONE_COLUMNS, snapshot))
    # ON DELETE CASCADE removes the campaign assignment with its number.
    deleted = session.execute(delete(PhoneNumber).where(locked))
    return int(cast(CursorResult[Any], deleted).rowcount)


def _record_start(factory: sessionmaker[Session], report: PurgeReport, started: datetime) -> None:
    with factory.begin() as session:
        session.add(
            PurgeRun(
                id=report.run_id,
                started_at=started,
                cutoff=retention_cutoff(started),
                status="running",
                purged=0,
                batches=0,
            )
        )


def _record_end(factory: sessionmaker[Session], report: PurgeReport) -> None:
    with factory.begin() as session:
        session.execute(
            update(PurgeRun)
            .where(PurgeRun.id == report.run_id)
            .values(
                status=report.status,
                finished_at=resolve_now(None),
                purged=report.purged,
                batches=report.batches,
                remaining=report.remaining,
                summary=report.as_dict(),
            )
        )


def purge_expired(
    session_factory: sessionmaker[Session],
    *,
    now: datetime | None = None,
    batch_size: int | None = None,
    max_rows: int | None = None,
    max_seconds: float | None = None,
    dry_run: bool = False,
    paused: bool | None = None,
) -> PurgeReport:
    """Purge released numbers past their deadline, in batches of one transaction each.

    Bounded by `max_rows` and `max_seconds` (defaults from settings); what is left waits for
    the next run. One run at a time: a concurrent run returns status `skipped`.
    """
    settings = get_settings()
    now = resolve_now(now)
    batch_size = batch_size or settings.purge_batch_size
    max_rows = max_rows or settings.purge_max_rows
    max_seconds = max_seconds or settings.purge_max_seconds
    paused = settings.purge_paused if paused is None else paused
    report = PurgeReport(
        run_id=str(uuid.uuid4()),
        status="running",
        cutoff=iso_timestamp(retention_cutoff(now)),
        now=iso_timestamp(now),
        dry_run=dry_run,
    )
    clock = time.monotonic()
    engine = session_factory.kw["bind"]
    with run_lock(engine) as got_lock:
        if not got_lock:
            report.status, report.reason = "skipped", "locked"
            report.seconds = round(time.monotonic() - clock, 3)
            log.info("purge.skipped", **report.as_dict())
            return report
        _record_start(session_factory, report, now)
        log.info("purge.started", run_id=report.run_id, cutoff=report.cutoff, dry_run=dry_run)
        try:
            _run(session_factory, report, now, batch_size, max_rows, max_seconds, clock, paused)
        except BaseException:
            report.status = "failed"
            report.seconds = round(time.monotonic() - clock, 3)
            _record_end(session_factory, report)
            log.error("purge.failed", **report.as_dict())
            raise
        report.seconds = round(time.monotonic() - clock, 3)
        _record_end(session_factory, report)
    log.info("purge.finished", **report.as_dict())
    return report


def _run(
    factory: sessionmaker[Session],
    report: PurgeReport,
    now: datetime,
    batch_size: int,
    max_rows: int,
    max_seconds: float,
    clock: float,
    paused: bool,
) -> None:
    if paused:
        report.status, report.reason = "paused", "PURGE_PAUSED is set"
        with factory() as session:
            report.remaining = count_overdue(session, now)
        return
    if report.dry_run:
        with factory() as session:
            report.would_purge = report.remaining = count_overdue(session, now)
            report.sample = list(
                session.scalars(
                    select(PhoneNumber.phone_number)
                    .where(overdue_filter(now))
                    .order_by(PhoneNumber.released_at, PhoneNumber.id)
                    .limit(SAMPLE_SIZE)
                )
            )
        report.status = "dry_run"
        return
    report.status = "completed"
    while True:
        if report.purged >= max_rows or time.monotonic() - clock >= max_seconds:
            report.status = "limit_reached"
            break
        started = time.monotonic()
        with factory.begin() as session:
            purged = _purge_batch(
                session,
                now=now,
                run_id=report.run_id,
                limit=min(batch_size, max_rows - report.purged),
            )
        if purged == 0:
            break
        batch_ms = round((time.monotonic() - started) * 1000, 1)
        report.purged += purged
        report.batches += 1
        report.worst_batch_ms = max(report.worst_batch_ms, batch_ms)
        log.info(
            "purge.batch",
            run_id=report.run_id,
            batch=report.batches,
            purged=purged,
            total=report.purged,
            ms=batch_ms,
        )
    with factory() as session:
        report.remaining = count_overdue(session, now)
    if report.status == "limit_reached" and report.remaining == 0:
        report.status = "completed"
