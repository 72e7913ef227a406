"""`purge_expired`: take the run lock, record the run, sweep in batches, record its end."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared import validation
from shared.carriers.base import Provider
from shared.clock import iso_timestamp, not_ahead, resolve_now
from shared.clock_skew import ClockReading, describe, log_refusal, read_clocks
from shared.controls import pause_reason, read_controls
from shared.counts import kept_counts, waiting_count
from shared.models import PhoneNumber
from shared.purge import lanes, lock
from shared.purge.boundary import Boundary, Halt
from shared.purge.budget import BatchSizer, Budget
from shared.purge.config import PurgeConfig
from shared.purge.records import record_end, record_refused, record_skipped, record_start
from shared.purge.report import PurgeReport
from shared.purge.statements import BatchStatements, count_overdue
from shared.purge.stop import StopRequest
from shared.purge.sweep import Sweep, run_batches, run_batches_in_parallel
from shared.purge.upstream_sweep import UpstreamSweep
from shared.ratelimit import run_bounds
from shared.retention import cutoff as retention_cutoff
from shared.retention import purgeable_numbers, waiting_numbers
from shared.run_status import PROVIDER_STOPPED, RunStatus
from shared.settings import DAY, MAX_BATCH, MAX_COUNT

log = structlog.get_logger("shared.purge")
SAMPLE_SIZE = 10


def purge_expired(
    session_factory: sessionmaker[Session],
    *,
    config: PurgeConfig,
    now: datetime | None = None,
    batch_size: int | None = None,
    max_rows: int | None = None,
    max_seconds: float | None = None,
    dry_run: bool = False,
    paused: bool | None = None,
    provider: Provider | None = None,
    stop: StopRequest | None = None,
    progress: Callable[[int], None] | None = None,
    carrier: str | None = None,
    carriers: Mapping[str, Provider] | None = None,
    carrier_factory: Callable[[str], Provider] | None = None,
) -> PurgeReport:
    """Purge released numbers past their deadline, in batches of one transaction each.

    `config` is everything the run decides with (`PurgeConfig.from_settings`: the caller's
    settings; the library reads none). Bounded by `max_rows` and `max_seconds`; `batch_size`
    caps the adaptive batch (defaults: `config`'s). What is left waits for the next run. One
    run at a time: a concurrent run returns `skipped`. Before every batch the run honours
    `stop` (status `interrupted`) and a pause (`paused`). With an upstream `provider` each
    number is released there first. `progress` is told the rows of each committed batch (a
    progress bar's).

    Each number is released at its own carrier (shared/purge/lanes.py): `provider` is the
    adapter of the default carrier (PROVIDER), `carriers` the adapters of others by name;
    `carrier_factory(name)` builds (and the run closes) the adapter of a carrier given
    neither way. With `carrier` the run takes that carrier's lane alone, under that lane's
    lock: runs of different lanes proceed at once.
    """
    config = config.overridden(
        batch_size=_optional(validation.count, batch_size, name="batch_size", limit=MAX_BATCH),
        max_rows=_optional(validation.count, max_rows, name="max_rows", limit=MAX_COUNT),
        max_seconds=_optional(validation.seconds, max_seconds, name="max_seconds", limit=DAY),
        paused=_optional(validation.flag, paused, name="paused"),
    )
    dry_run = validation.flag(dry_run, name="dry_run")
    now = resolve_now(now) if dry_run else not_ahead(now)
    report = PurgeReport(
        run_id=str(uuid.uuid4()),
        status=RunStatus.RUNNING,
        cutoff=iso_timestamp(retention_cutoff(now)),
        now=iso_timestamp(now),
        dry_run=dry_run,
        provider=provider.name if provider else config.provider,
    )
    # Before the lock: even a skipped run's record would be dated by a wrong clock.
    clocks = read_clocks(session_factory.kw["bind"])
    if clocks is not None and clocks.beyond(config.clock_skew_max_seconds):
        return _refused(session_factory, report, clocks, config.clock_skew_max_seconds)
    budget = Budget(config.max_rows, config.max_seconds, started=time.monotonic())
    with _run_lock(session_factory, carrier) as got_lock:
        if not got_lock:
            report.status, report.reason = RunStatus.SKIPPED, "locked"
            report.seconds = round(budget.elapsed(), 3)
            record_skipped(session_factory, report, now)
            log.info("purge.skipped", **report.as_dict())
            return report
        record_start(session_factory, report, now)
        log.info("purge.started", run_id=report.run_id, cutoff=report.cutoff, dry_run=dry_run)
        try:
            if dry_run:
                halt = _dry_run(session_factory, report, config, now)
            else:
                boundary = Boundary.for_run(config, budget, stop)
                if progress is not None:  # told the rows of each committed batch
                    boundary.progress = progress
                adapters = dict(carriers or {})
                if provider is not None:
                    adapters[provider.name] = provider
                with boundary.pacer.probing(session_factory.kw["bind"]):
                    halt = _purge_lanes(
                        session_factory,
                        report,
                        boundary,
                        now,
                        Lanes(adapters, carrier, carrier_factory),
                    )
                # The longest-resting lane's rests, within the run's own time.
                report.paced_seconds = round(min(boundary.pacer.rested, budget.elapsed()), 3)
            _finish(session_factory, report, halt, now, carrier)
        except BaseException as error:
            report.status, report.reason = RunStatus.FAILED, type(error).__name__
            report.seconds = round(budget.elapsed(), 3)
            log.error("purge.failed", **report.as_dict())
            try:
                record_end(session_factory, report)
            except SQLAlchemyError:
                # The database is what failed: the next run marks this record failed.
                log.warning("purge.record_failed", run_id=report.run_id)
            raise
        report.seconds = round(budget.elapsed(), 3)
        record_end(session_factory, report)
    # A run the provider stopped is logged as a warning: its numbers were kept, none released.
    stopped = report.status in PROVIDER_STOPPED
    level = log.warning if stopped else log.info
    level("purge.finished", **report.as_dict())
    return report


def _optional(check: Callable[..., Any], value: object, **kwargs: Any) -> Any:
    """`value` checked by `check`, or None when the caller left it out."""
    return None if value is None else check(value, **kwargs)


def _refused(
    factory: sessionmaker[Session], report: PurgeReport, clocks: ClockReading, tolerance: float
) -> PurgeReport:
    """A run refused because this host's clock and the database server's disagree: nothing
    done, recorded (status `clock_skew`) at the earlier of the two clocks."""
    log_refusal(clocks, tolerance)
    at = clocks.trusted
    report.status = RunStatus.CLOCK_SKEW
    report.reason = describe(clocks.skew_seconds, tolerance)
    report.clock_skew_seconds = clocks.skew_seconds
    report.now, report.cutoff = iso_timestamp(at), iso_timestamp(retention_cutoff(at))
    record_refused(factory, report, at)
    log.warning("purge.clock_skew", **report.as_dict())
    return report


@contextmanager
def _run_lock(factory: sessionmaker[Session], carrier: str | None) -> Iterator[bool]:
    """The whole store's run lock, or one carrier lane's."""
    engine = factory.kw["bind"]
    if carrier is None:
        with lock.run_lock(engine) as got:
            yield got
    else:
        with lock.run_lock(engine, lanes.lane_lock_key(carrier), f"purge.{carrier}") as got:
            yield got


@dataclass(frozen=True)
class Lanes:
    """The carriers' adapters a run was given (by name), the one lane it is limited to, and
    what builds the adapter of a carrier not given."""

    adapters: dict[str, Provider]
    only: str | None = None
    factory: Callable[[str], Provider] | None = None

    def build(self, name: str) -> Provider:
        """A new adapter for carrier `name` (its caller closes it)."""
        if self.factory is None:
            raise ValueError(
                f"No adapter for carrier {name!r}: pass it in `carriers` or a `carrier_factory`."
            )
        return self.factory(name)


# The status a run of several lanes ends with: the most telling of its lanes' (the first
# here); each lane's own is in the reason.
_WORST = (
    RunStatus.FAILED,
    RunStatus.PROVIDER_MISCONFIGURED,
    RunStatus.PROVIDER_UNAVAILABLE,
    RunStatus.INTERRUPTED,
    RunStatus.PAUSED,
    RunStatus.LIMIT_REACHED,
    RunStatus.COMPLETED,
)


def _purge_lanes(
    factory: sessionmaker[Session],
    report: PurgeReport,
    boundary: Boundary,
    now: datetime,
    given: Lanes,
) -> Halt:
    """Each carrier's lane in turn (or the one asked for), each under its own lock; one
    carrier stopped (misconfigured, down) holds up no other lane. Why the run ended."""
    default = report.provider or "none"
    if given.only is not None:
        return _purge_lane(factory, report, boundary, now, given=given, name=given.only)
    with factory() as session:
        due = lanes.due_lanes(session, now, default)
    if default not in due:
        due.insert(0 if default == "none" else len(due), default)
    halts: dict[str, Halt] = {}
    engine = factory.kw["bind"]
    for name in due:
        with lock.run_lock(engine, lanes.lane_lock_key(name), f"purge.{name}") as got:
            if not got:  # a run of this lane alone is under way on another worker
                halts[name] = Halt(RunStatus.COMPLETED, "lane locked: purged by its own run")
                continue
            halt = _purge_lane(factory, report, boundary, now, given=given, name=name)
        halts[name] = halt
        if halt.status in (RunStatus.INTERRUPTED, RunStatus.PAUSED, RunStatus.FAILED):
            break
    return _combined(halts)


def _combined(halts: dict[str, Halt]) -> Halt:
    """One Halt for the lanes' Halts: the most telling status, each lane's reason named."""
    if len(halts) == 1:
        return next(iter(halts.values()))
    status = min((h.status for h in halts.values()), key=_WORST.index)
    reasons = [
        f"{name}: {h.status}" + (f" ({h.reason})" if h.reason else "") for name, h in halts.items()
    ]
    return Halt(status, "; ".join(reasons))


def _purge_lane(
    factory: sessionmaker[Session],
    report: PurgeReport,
    boundary: Boundary,
    now: datetime,
    *,
    given: Lanes,
    name: str,
) -> Halt:
    """One carrier's lane: single-phase for numbers held nowhere, else through the carrier."""
    default = report.provider or "none"
    lane = lanes.in_lane(name, default)
    if name == "none":
        return _single_phase(factory, report, boundary, now, lane)
    config = boundary.config
    upstream = given.adapters.get(name) or given.build(name)
    # No call waits for the carrier's rate limit past the run's time bound, nor a stop.
    deadline = boundary.budget.started + config.max_seconds
    try:
        with run_bounds(deadline, lambda: boundary.stop.requested):
            return UpstreamSweep.build(
                factory,
                report,
                config=config,
                boundary=boundary,
                provider=upstream,
                now=now,
                lane=lane,
            ).run(factory)
    finally:
        if name not in given.adapters:
            upstream.close()


def _single_phase(
    factory: sessionmaker[Session],
    report: PurgeReport,
    boundary: Boundary,
    now: datetime,
    lane: ColumnElement[bool],
) -> Halt:
    """The numbers held at no carrier: tombstoned and deleted in one phase."""
    config = boundary.config
    dialect = factory.kw["bind"].dialect.name
    statements = BatchStatements.build(dialect, now, report.run_id, lane=lane)
    with factory() as session:
        after = statements.start(session)
    sweep = Sweep(
        report=report,
        statements=statements,
        after=after,
        boundary=boundary,
        sizer=BatchSizer.for_run(config),
    )
    # SQLite has one writer at a time: parallel batches would only wait for each other.
    workers = config.parallel_batches if dialect == "postgresql" else 1
    try:
        if workers == 1:
            run_batches(factory, sweep)
        else:
            run_batches_in_parallel(factory, sweep, workers)
    finally:
        # Every committed batch counts, even when another one failed.
        sweep.report_the_rest()
    return sweep.halt or Halt(RunStatus.COMPLETED)


def _dry_run(
    factory: sessionmaker[Session], report: PurgeReport, config: PurgeConfig, now: datetime
) -> Halt:
    """Count and sample what a run would purge; delete nothing."""
    with factory() as session:
        paused = pause_reason(read_controls(session).pause, deploy_paused=config.paused)
        if paused is not None:
            return Halt(RunStatus.PAUSED, paused)
        report.would_purge = count_overdue(session, now)
        report.sample = list(
            session.scalars(
                select(PhoneNumber.phone_number)
                .where(purgeable_numbers(now))
                .order_by(PhoneNumber.released_at, PhoneNumber.id)
                .limit(SAMPLE_SIZE)
            )
        )
    return Halt(RunStatus.DRY_RUN)


def _finish(
    factory: sessionmaker[Session],
    report: PurgeReport,
    halt: Halt,
    now: datetime,
    carrier: str | None = None,
) -> None:
    """The run's status and what is left overdue (in its lane, for a run of one lane)."""
    report.status, report.reason = halt.status, halt.reason
    lane = None if carrier is None else lanes.in_lane(carrier, report.provider or "none")
    waiting = waiting_numbers(now, carrier or report.provider)
    with factory() as session:
        if lane is None:
            # From the kept counts and the indexes of the rows with upstream state
            # (shared/counts.py), not a count of the backlog: counting it cost a run the same
            # as purging tens of thousands of rows on a store of 10 million numbers (an index
            # scan of every overdue row, and a sequential scan of the whole table for those
            # waiting), so the larger the store, the fewer rows per second.
            report.remaining = kept_counts(session, now).overdue
            report.remaining_waiting = waiting_count(session, now, carrier or report.provider)
        else:
            report.remaining = count_overdue(session, now, lane)
            report.remaining_waiting = session.execute(
                select(func.count()).where(waiting & lane)
            ).scalar_one()
    # Nothing left that a run could take now: what waits on the provider or a person is not
    # this run's share.
    if report.status == RunStatus.LIMIT_REACHED and report.remaining == report.remaining_waiting:
        report.status = RunStatus.COMPLETED
