"""The worker's own records: how long they are kept, and the prune that keeps to it.

Decided at the run's `now` (the host's clock or a past `--now`, never the database's clock),
with R = AUDIT_RETENTION_DAYS and D = TOMBSTONE_REDACT_DAYS:

- a tombstone's label (the one field its account wrote about the number) is erased once
  `purged_at + D <= now`; every other field stays;
- a tombstone, an entry of the ledger of disconnections, is deleted once its whole
  disconnection month lies R days behind: `first day of the next month + R <= now`. A month's
  report (`report disconnects --month`) stays complete while any day of that month lies within
  R days, and then goes as a whole, never in part;
- a purge run's record is deleted once `started_at + R <= now`, unless it is still `running`,
  or it is the last run of its status (dry runs apart): what `status`, the exporter and the
  alerts read. The numbers its run purged are first added to `pruned_totals`, so
  `purged_total`, a Prometheus counter, never goes down.

Each change goes in batches through the purge's own machinery (`shared.purge.sweep`): the
adaptive batch size aimed at PURGE_BATCH_TARGET_MS, the pacing, the pause, an operator's stop,
the run's row and time bounds. Nothing else is ever deleted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import ColumnElement, CursorResult, delete, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from shared.clock import iso_timestamp, not_ahead, resolve_now
from shared.clock_skew import check_clocks
from shared.models import PURGED_BY_PRUNED_RUNS, Base, PrunedTotal, PurgedNumber, PurgeRun
from shared.purge import lock
from shared.purge.boundary import Boundary, Halt
from shared.purge.budget import BatchSizer, Budget
from shared.purge.config import PurgeConfig
from shared.purge.stop import StopRequest
from shared.purge.sweep import Sweep, run_batches
from shared.run_status import RunStatus
from shared.status import dry_run_clause

log = structlog.get_logger("shared.audit")


@dataclass(frozen=True)
class AuditRetention:
    """How long the worker keeps its own records (days): R and D above."""

    audit_days: int
    redact_days: int

    def ledger_before(self, now: datetime) -> date:
        """Tombstones disconnected before this date are due: the first day of the month
        R days before `now` (a month goes once its last instant is R days old)."""
        return (now - timedelta(days=self.audit_days)).date().replace(day=1)

    def runs_before(self, now: datetime) -> datetime:
        """Run records started at or before this instant are due (unless kept)."""
        return now - timedelta(days=self.audit_days)

    def labels_before(self, now: datetime) -> datetime:
        """Labels of tombstones purged at or before this instant are erased."""
        return now - timedelta(days=self.redact_days)


def kept_runs(session: Session) -> set[str]:
    """The last run of each status, real and dry runs apart: what `status` and the exporter
    read (the last run, the last success, the last dry run)."""
    rank = (
        func.row_number()
        .over(
            partition_by=(PurgeRun.status, dry_run_clause()),
            order_by=(PurgeRun.started_at.desc(), PurgeRun.id.desc()),
        )
        .label("rank")
    )
    ranked = select(PurgeRun.id, rank).subquery()
    return set(session.scalars(select(ranked.c.id).where(ranked.c.rank == 1)))


def _rowcount(result: object) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


# Core tables, not the ORM entities (as the purge's statements): plain statements, no ORM
# bulk path per batch.
TOMBSTONES = Base.metadata.tables[PurgedNumber.__tablename__]
RUNS = Base.metadata.tables[PurgeRun.__tablename__]


def _delete_tombstones(session: Session, rows: ColumnElement[bool]) -> int:
    return _rowcount(session.execute(delete(TOMBSTONES).where(rows)))


def _erase_labels(session: Session, rows: ColumnElement[bool]) -> int:
    return _rowcount(session.execute(update(TOMBSTONES).where(rows).values(label=None)))


def _delete_runs(session: Session, rows: ColumnElement[bool]) -> int:
    """Delete the run records `rows`; their purged numbers go to the kept total first."""
    purged = session.execute(
        select(func.coalesce(func.sum(PurgeRun.purged), 0)).where(rows)
    ).scalar_one()
    gone = _rowcount(session.execute(delete(RUNS).where(rows)))
    total = session.get(PrunedTotal, PURGED_BY_PRUNED_RUNS)
    if total is None:
        session.add(PrunedTotal(name=PURGED_BY_PRUNED_RUNS, value=purged))
    else:
        total.value += purged
    session.flush()
    return gone


@dataclass(frozen=True)
class Step:
    """One change of the prune as a keyset walk over a table's primary key: `due` rows are
    picked in key order (locked, skipping rows another transaction holds), and `change`d
    under their lock, the rule checked again."""

    name: str
    key: InstrumentedAttribute[Any]
    due: ColumnElement[bool]
    change: Callable[[Session, ColumnElement[bool]], int]

    def count(self, session: Session) -> int:
        return int(session.scalar(select(func.count()).where(self.due)) or 0)

    def start(self, session: Session) -> Any:
        """Just below the first due key (None: nothing due), found without a lock."""
        first = session.scalar(select(func.min(self.key)).where(self.due))
        if first is None:
            return None
        # Integer ids: one below the first; run ids (UUID text) all sort above ''.
        return first - 1 if isinstance(first, int) else ""

    def pick(self, session: Session, *, after: Any, limit: int) -> list[Any]:
        return list(
            session.scalars(
                select(self.key)
                .where(self.due, self.key > after)
                .order_by(self.key)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )

    def purge(self, session: Session, ids: list[Any]) -> int:
        return self.change(session, self.key.in_(ids) & self.due)


def steps(session: Session, retention: AuditRetention, now: datetime) -> list[Step]:
    """The prune's changes in the order it makes them: tombstones that go need no erasing."""
    kept = kept_runs(session)
    return [
        Step(
            "tombstones",
            PurgedNumber.id,
            PurgedNumber.disconnect_date < retention.ledger_before(now),
            _delete_tombstones,
        ),
        Step(
            "labels",
            PurgedNumber.id,
            PurgedNumber.label.is_not(None)
            & (PurgedNumber.purged_at <= retention.labels_before(now)),
            _erase_labels,
        ),
        Step(
            "runs",
            PurgeRun.id,
            (PurgeRun.started_at <= retention.runs_before(now))
            & (PurgeRun.status != RunStatus.RUNNING)
            & PurgeRun.id.not_in(kept),
            _delete_runs,
        ),
    ]


@dataclass
class StepReport:
    """One step's committed batches (the sweep's report)."""

    run_id: str
    step: str
    rows: int = 0
    batches: int = 0
    worst_batch_ms: float = 0.0

    def add_batch(self, purged: int, ms: float, *, size: int) -> None:
        self.rows += purged
        self.batches += 1
        self.worst_batch_ms = max(self.worst_batch_ms, ms)
        log.info(
            "prune.batch",
            run_id=self.run_id,
            step=self.step,
            batch=self.batches,
            size=size,
            rows=purged,
            total=self.rows,
            ms=ms,
        )


@dataclass
class PruneReport:
    """What a prune run did; `as_dict()` is the task's JSON summary.

    `done`: rows changed by step (tombstones and runs deleted, labels erased); `due`: rows
    still due by step after the run (a dry run's: what a run would change).
    """

    run_id: str
    status: RunStatus  # completed, limit_reached, paused, interrupted, skipped, dry_run, failed
    now: str
    cutoffs: dict[str, str]
    dry_run: bool = False
    done: dict[str, int] = field(default_factory=dict)
    due: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    worst_batch_ms: float = 0.0
    seconds: float = 0.0
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add_step(self, step: StepReport) -> None:
        self.done[step.step] = self.done.get(step.step, 0) + step.rows
        self.batches += step.batches
        self.worst_batch_ms = max(self.worst_batch_ms, step.worst_batch_ms)


def prune_audit(
    factory: sessionmaker[Session],
    *,
    retention: AuditRetention,
    config: PurgeConfig,
    now: datetime | None = None,
    dry_run: bool = False,
    stop: StopRequest | None = None,
) -> PruneReport:
    """Erase due labels and delete due tombstones and run records, in batches of one
    transaction each, within `config`'s bounds (what is left waits for the next run).

    One run at a time (its own lock: it never waits for a purge); a concurrent run returns
    `skipped`. A real run at a `now` ahead of the host's clock is refused, and so is one on a
    host whose clock differs from the database server's (ClockSkewError); a dry run counts.
    """
    now = resolve_now(now) if dry_run else not_ahead(now)
    report = PruneReport(
        run_id=str(uuid.uuid4()),
        status=RunStatus.RUNNING,
        now=iso_timestamp(now),
        dry_run=dry_run,
        cutoffs={
            "tombstones_disconnected_before": retention.ledger_before(now).isoformat(),
            "labels_purged_at_or_before": iso_timestamp(retention.labels_before(now)),
            "runs_started_at_or_before": iso_timestamp(retention.runs_before(now)),
        },
    )
    if not dry_run:  # it deletes what cannot come back: the database's clock vouches first
        check_clocks(factory.kw["bind"], tolerance=config.clock_skew_max_seconds)
    budget = Budget(config.max_rows, config.max_seconds, started=time.monotonic())
    with lock.run_lock(factory.kw["bind"], lock.PRUNE_LOCK_KEY, "prune") as got_lock:
        if not got_lock:
            report.status, report.reason = RunStatus.SKIPPED, "locked"
            log.info("prune.skipped", **report.as_dict())
            return report
        log.info("prune.started", run_id=report.run_id, dry_run=dry_run, **report.cutoffs)
        try:
            with factory() as session:
                work = steps(session, retention, now)
            report.done = {step.name: 0 for step in work}
            halt = (
                Halt(RunStatus.DRY_RUN)
                if dry_run
                else _prune(factory, report, work=work, config=config, budget=budget, stop=stop)
            )
            report.status, report.reason = halt.status, halt.reason
            with factory() as session:
                report.due = {step.name: step.count(session) for step in work}
        except BaseException as error:
            report.status, report.reason = RunStatus.FAILED, type(error).__name__
            report.seconds = round(budget.elapsed(), 3)
            log.error("prune.failed", **report.as_dict())
            raise
    report.seconds = round(budget.elapsed(), 3)
    log.info("prune.finished", **report.as_dict())
    return report


def _prune(
    factory: sessionmaker[Session],
    report: PruneReport,
    *,
    work: list[Step],
    config: PurgeConfig,
    budget: Budget,
    stop: StopRequest | None,
) -> Halt:
    """Each step's batches in turn, under one boundary (stop, pause, the run's bounds)."""
    boundary = Boundary.for_run(config, budget, stop)
    for step in work:
        with factory() as session:
            after = step.start(session)
        if after is None:
            continue
        step_report = StepReport(report.run_id, step.name)
        sweep = Sweep(
            report=step_report,
            statements=step,
            boundary=boundary,
            sizer=BatchSizer.for_run(config),
            after=after,
            record=None,
        )
        try:
            run_batches(factory, sweep)
        finally:
            sweep.report_the_rest()
            report.add_step(step_report)
        if sweep.halt is not None and sweep.halt.status != RunStatus.COMPLETED:
            return sweep.halt
    return Halt(RunStatus.COMPLETED)
