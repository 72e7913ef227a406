"""The batched purge: tombstone and delete released numbers past their deadline."""

from __future__ import annotations

import contextvars
import fcntl
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

import structlog
from sqlalchemy import (
    BigInteger,
    CursorResult,
    Engine,
    Executable,
    Select,
    any_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import iso_timestamp, not_ahead, resolve_now, utcnow
from shared.controls import pause_reason
from shared.events import record_purged
from shared.models import Base, CampaignAssignment, PhoneNumber, PurgedNumber, PurgeRun
from shared.provider import Provider, UpstreamResult, make_provider
from shared.retention import cutoff as retention_cutoff
from shared.retention import purgeable_clause
from shared.settings import get_settings
from shared.tombstones import TOMBSTONE_COLUMNS, tombstone_values
from shared.upstream import claim_batch, record_failures, release_upstream

log = structlog.get_logger("shared.purge")

# Any constant works; it only has to be the same for every purge process on the database.
PURGE_LOCK_KEY = 0x6E756D62  # "numb"
SAMPLE_SIZE = 10


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
    provider: str = "none"
    provider_released: int = 0
    provider_failed: int = 0
    provider_skipped: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, keys in snake_case."""
        return asdict(self)

    def add_batch(self, purged: int, ms: float, **upstream: int) -> None:
        """Count a committed batch and log its `purge.batch` event (upstream counts too)."""
        self.purged += purged
        self.batches += 1
        self.worst_batch_ms = max(self.worst_batch_ms, ms)
        for key, count in upstream.items():
            setattr(self, key, getattr(self, key) + count)
        log.info(
            "purge.batch",
            run_id=self.run_id,
            batch=self.batches,
            purged=purged,
            total=self.purged,
            ms=ms,
            **upstream,
        )


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


@dataclass(frozen=True)
class _Batches:
    """The statements of one run's batches, built once; each batch binds its own ids."""

    pick_statement: Select[int]
    # Tombstone and delete; the row count of the last one is the number of rows purged.
    purge_statements: tuple[Executable, ...]

    @classmethod
    def build(
        cls,
        dialect: str,
        now: datetime,
        run_id: str,
        *,
        claimed: bool = False,
        provider: str | None = None,
        resolution: str | None = None,
    ) -> _Batches:
        """Statements for the single-phase path (rows no upstream run has touched) or, with
        `claimed`, for the rows this run claimed and settled upstream (`resolution`)."""
        # Fail safe: the single-phase path never deletes a row with upstream state (claimed,
        # or carrying a provider error): the carrier may still hold that number.
        overdue = overdue_filter(now) & (
            (PhoneNumber.purge_state == "purging")
            if claimed
            else (PhoneNumber.purge_state.is_(None) & PhoneNumber.provider_error_code.is_(None))
        )
        stone = partial(
            tombstone_values, now=now, run_id=run_id, provider=provider, resolution=resolution
        )
        # Core tables, not the ORM entities: the session runs these as plain statements with
        # their parameters (for an entity, parameters would mean an ORM bulk INSERT).
        numbers = Base.metadata.tables[PhoneNumber.__tablename__]
        tombstones = Base.metadata.tables[PurgedNumber.__tablename__]
        # A keyset on the primary key: each batch starts where the previous one stopped
        # instead of re-reading the rows already purged, and rows come in heap order (ids grow
        # with inserts), so a run visits each table page about once. With a large backlog the
        # planner walks the primary key; with a few overdue rows it reads the partial index on
        # released_at and sorts. SKIP LOCKED passes by rows another transaction holds (a
        # repurchase in progress, a concurrent batch); they wait for the next run.
        pick = (
            select(PhoneNumber.id)
            .where(overdue, PhoneNumber.id > bindparam("after"))
            .order_by(PhoneNumber.id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        # `overdue` again in the purge: the re-check under the lock (see `purge`).
        if dialect == "postgresql":
            # One statement: the DELETE returns the rows it removed and the INSERT tombstones
            # exactly those, with their campaign (the cascade runs at the statement's end). The
            # ids travel as one array parameter and are looked up through the primary key.
            ids = bindparam("ids", type_=postgresql.ARRAY(BigInteger))
            kept = [name for name in TOMBSTONE_COLUMNS if name in numbers.c]
            gone = (
                delete(numbers)
                .where(numbers.c.id == any_(ids), overdue)
                .returning(numbers.c.id, *(numbers.c[name] for name in kept))
                .cte("gone")
            )
            stones = select(*stone(gone.c)).select_from(
                gone.outerjoin(CampaignAssignment, CampaignAssignment.number_id == gone.c.id)
            )
            return cls(
                pick,
                # SQLAlchemy keeps an INSERT's row count only when asked to.
                (
                    insert(tombstones)
                    .from_select(TOMBSTONE_COLUMNS, stones)
                    .execution_options(preserve_rowcount=True),
                ),
            )
        locked = numbers.c.id.in_(bindparam("ids", expanding=True)) & overdue
        stones = (
            select(*stone(numbers.c))
            .outerjoin(CampaignAssignment, CampaignAssignment.number_id == numbers.c.id)
            .where(locked)
        )
        return cls(
            pick,
            (
                insert(tombstones).from_select(TOMBSTONE_COLUMNS, stones),
                delete(numbers).where(locked),
            ),
        )

    def pick(self, session: Session, *, after: int, limit: int) -> list[int]:
        """Lock up to `limit` overdue numbers with ids above `after`; their ids, ascending."""
        return list(session.scalars(self.pick_statement, {"after": after, "limit": limit}))

    def purge(self, session: Session, ids: list[int]) -> int:
        """Tombstone and delete the locked numbers `ids` that are still overdue; rows purged.

        Runs after the pick, in the same transaction, so its snapshot is taken once the rows
        are locked: the rule is checked again on what is committed now, and a number
        repurchased between the pick's snapshot and its lock is left alone. ON DELETE CASCADE
        removes the campaign assignment with its number.
        """
        purged = 0
        for statement in self.purge_statements:
            result = session.execute(statement, {"ids": ids})
            purged = int(cast(CursorResult[Any], result).rowcount)
        if purged:
            record_purged(session, number_ids=ids)
        return purged


def _purge_batch(
    session: Session, *, now: datetime, run_id: str, limit: int, after: int = 0
) -> int:
    """One batch in the caller's transaction: lock, tombstone, delete. Returns rows purged."""
    batches = _Batches.build(session.get_bind().dialect.name, now, run_id)
    ids = batches.pick(session, after=after, limit=limit)
    return batches.purge(session, ids) if ids else 0


@dataclass
class _Sweep:
    """One run's walk through the overdue numbers in id order, shared by its batches.

    Picks are serialised by `lock` (a few milliseconds each); the tombstone and delete of
    several batches then run at once, each in its own transaction on its own connection.
    Batches are numbered in pick order and reported (logged, counted) in that order, whatever
    order they commit in.
    """

    report: PurgeReport
    batches: _Batches
    batch_size: int
    max_rows: int
    max_seconds: float
    clock: float
    after: int = 0  # keyset: every overdue id up to here is picked or was skipped as locked
    reserved: int = 0  # rows of the max_rows budget taken by picked batches
    picked: int = 0
    stop: str | None = None  # why no further batch starts: completed, limit_reached, failed
    finished: dict[int, tuple[int, float]] = field(default_factory=dict)
    reported: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_limit(self) -> int | None:
        """Rows the next batch may pick, or None when the run must start no further batch."""
        if self.stop is not None:
            return None
        if self.reserved >= self.max_rows or time.monotonic() - self.clock >= self.max_seconds:
            self.stop = "limit_reached"
            return None
        return min(self.batch_size, self.max_rows - self.reserved)

    def halt(self, reason: str) -> None:
        with self.lock:
            self.stop = self.stop or reason

    def finish(self, number: int, picked: int, purged: int, ms: float) -> None:
        """Record a committed batch and report every batch that is next in pick order."""
        with self.lock:
            self.reserved -= picked - purged  # rows that failed the re-check free their budget
            self.finished[number] = (purged, ms)
            while self.reported + 1 in self.finished:
                self.reported += 1
                self._account(self.reported)

    def account_all(self) -> None:
        """Report the committed batches still waiting for an earlier one (that failed)."""
        with self.lock:
            for number in sorted(self.finished):
                self._account(number)

    def _account(self, number: int) -> None:
        self.report.add_batch(*self.finished.pop(number))


def _sweep(factory: sessionmaker[Session], sweep: _Sweep) -> None:
    """Run batches, one transaction each, until the sweep is done, bounded or failed."""
    try:
        while True:
            started = time.monotonic()
            with factory.begin() as session:
                with sweep.lock:
                    limit = sweep.next_limit()
                    if limit is None:
                        return
                    ids = sweep.batches.pick(session, after=sweep.after, limit=limit)
                    if not ids:
                        sweep.stop = sweep.stop or "completed"
                        return
                    sweep.after = max(ids)
                    sweep.reserved += len(ids)
                    sweep.picked += 1
                    number = sweep.picked
                purged = sweep.batches.purge(session, ids)
            sweep.finish(number, len(ids), purged, round((time.monotonic() - started) * 1000, 1))
    except BaseException:
        sweep.halt("failed")
        raise


def _sweep_in_parallel(factory: sessionmaker[Session], sweep: _Sweep, workers: int) -> None:
    """`_sweep` on `workers` threads, each with its own sessions; the first error is raised."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="purge") as pool:
        # Each thread gets a copy of the caller's context: task_id stays bound in batch logs.
        futures = [
            pool.submit(contextvars.copy_context().run, _sweep, factory, sweep)
            for _ in range(workers)
        ]
        try:
            for future in futures:
                future.result()
        finally:
            # An error here (or a time limit in the caller): no further batch starts; the
            # threads finish the batch they are in and the pool waits for them.
            sweep.halt("failed")


def _record_start(factory: sessionmaker[Session], report: PurgeReport, now: datetime) -> None:
    # The record says when the run happened (this host's clock); the decision instant `now`
    # is its cutoff's, so `status` never lists a run from the future.
    started = utcnow()
    with factory.begin() as session:
        # We hold the run lock: a record still 'running' is a run that died (killed worker,
        # lost database) before it could record its end.
        session.execute(
            update(PurgeRun)
            .where(PurgeRun.status == "running")
            .values(status="failed", finished_at=started)
        )
        session.add(
            PurgeRun(
                id=report.run_id,
                started_at=started,
                cutoff=retention_cutoff(now),
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
                finished_at=utcnow(),
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
    provider: Provider | None = None,
) -> PurgeReport:
    """Purge released numbers past their deadline, in batches of one transaction each.

    Bounded by `max_rows` and `max_seconds` (defaults from settings); what is left waits for
    the next run. One run at a time: a concurrent run returns status `skipped`. With an
    upstream `provider` (default: the one settings name) each number is released there first.
    """
    settings = get_settings()
    now = resolve_now(now) if dry_run else not_ahead(now)
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
        provider=provider.name if provider else settings.provider,
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
            _run(
                session_factory, report, now, batch_size, max_rows, max_seconds, clock, paused,
                provider,
            )  # fmt: skip
        except BaseException as error:
            report.status, report.reason = "failed", type(error).__name__
            report.seconds = round(time.monotonic() - clock, 3)
            log.error("purge.failed", **report.as_dict())
            try:
                _record_end(session_factory, report)
            except SQLAlchemyError:
                # The database is what failed: the next run marks this record failed.
                log.warning("purge.record_failed", run_id=report.run_id)
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
    provider: Provider | None,
) -> None:
    with factory() as session:
        reason = pause_reason(session, deploy_paused=paused)
        if reason is not None:
            report.status, report.reason = "paused", reason
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
    dialect = factory.kw["bind"].dialect.name
    if report.provider != "none":
        upstream = provider or make_provider(get_settings())
        try:
            _upstream_sweep(factory, report, now, upstream, max_rows, max_seconds, clock)
        finally:
            if provider is None:
                upstream.close()
        with factory() as session:
            report.remaining = count_overdue(session, now)
        return
    sweep = _Sweep(
        report=report,
        batches=_Batches.build(dialect, now, report.run_id),
        batch_size=batch_size,
        max_rows=max_rows,
        max_seconds=max_seconds,
        clock=clock,
    )
    workers = get_settings().purge_parallel_batches if dialect == "postgresql" else 1
    try:
        if workers == 1:
            _sweep(factory, sweep)
        else:
            _sweep_in_parallel(factory, sweep, workers)
    finally:
        # Every committed batch counts, even when another one failed.
        sweep.account_all()
    report.status = "limit_reached" if sweep.stop == "limit_reached" else "completed"
    with factory() as session:
        report.remaining = count_overdue(session, now)
    if report.status == "limit_reached" and report.remaining == 0:
        report.status = "completed"


def _upstream_sweep(
    factory: sessionmaker[Session],
    report: PurgeReport,
    now: datetime,
    provider: Provider,
    max_rows: int,
    max_seconds: float,
    clock: float,
) -> None:
    """Two-phase batches: claim (committed), release upstream (no transaction open), then
    tombstone and delete what the provider released, keeping the rest with their errors."""
    settings = get_settings()
    dialect = factory.kw["bind"].dialect.name
    # One set of statements per way a release was proven; each tombstone says which.
    settle = {
        resolution: _Batches.build(
            dialect,
            now,
            report.run_id,
            claimed=True,
            provider=None if resolution == "no_provider_id" else provider.name,
            resolution=resolution,
        )
        for resolution in ("provider", "not_found", "no_provider_id")
    }
    report.status, after, claimed = "completed", 0, 0
    # Before anything is claimed: a read-only call proving the base URL and the key work.
    refused = provider.check()
    if refused is not None:
        _stop_upstream(report, refused)
        return
    while True:
        if claimed >= max_rows or time.monotonic() - clock >= max_seconds:
            report.status = "limit_reached"
            return
        started = time.monotonic()
        limit = min(settings.provider_batch_size, max_rows - claimed)
        with factory.begin() as session:
            claims = claim_batch(session, now=now, after=after, limit=limit)
        if not claims:
            return
        after, claimed = claims[-1].id, claimed + len(claims)
        outcome = release_upstream(
            provider,
            claims,
            concurrency=settings.provider_concurrency,
            failure_streak=settings.provider_failure_streak,
        )
        # An answer showing a misconfiguration casts doubt on the batch's other answers (the
        # same wrong host gave them): nothing of it is deleted; the next run asks again.
        settled = {} if outcome.stopped_by else outcome.settled()
        with factory.begin() as session:
            purged = sum(
                settle[resolution].purge(session, ids) for resolution, ids in settled.items()
            )
            record_failures(
                session,
                outcome.failed,
                now=now,
                base=settings.provider_backoff_seconds,
                cap=settings.provider_backoff_max_seconds,
            )
        report.add_batch(
            purged,
            round((time.monotonic() - started) * 1000, 1),
            provider_released=len(outcome.released),
            provider_failed=len(outcome.failed),
            provider_skipped=len(outcome.skipped),
        )
        if outcome.stopped_by is not None:
            _stop_upstream(report, outcome.stopped_by)
            return
        if outcome.provider_down:
            report.status = "provider_unavailable"
            report.reason = f"{settings.provider_failure_streak} upstream failures in a row"
            return


def _stop_upstream(report: PurgeReport, result: UpstreamResult) -> None:
    """End the run on an answer that forbids going on: a misconfiguration, or no provider."""
    report.status = (
        "provider_misconfigured" if result.outcome == "misconfigured" else "provider_unavailable"
    )
    error = result.error
    report.reason = f"{error.message} Fix: {error.fix}" if error else result.outcome
