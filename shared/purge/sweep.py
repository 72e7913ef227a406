"""The single-phase sweep: batches walk the overdue numbers in id order, one transaction each."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from shared.purge.boundary import Boundary, Halt
from shared.purge.budget import BatchSizer
from shared.purge.records import record_progress
from shared.run_status import RunStatus

# Lanes after the first wait while the share of batches that found others at work is above
# this, looking again this often.
SOLO_WHEN_BUSY = 0.05
LANE_WAIT_SECONDS = 0.05


class Batches(Protocol):
    """A walk in key order over rows due for one change: the purge's `BatchStatements`, the
    audit prune's (shared/audit.py)."""

    def pick(self, session: Session, *, after: Any, limit: int) -> list[Any]:
        """Lock up to `limit` due rows with keys above `after`; their keys, ascending."""
        ...

    def purge(self, session: Session, ids: list[Any]) -> int:
        """Change the locked rows `ids` that are still due; rows changed."""
        ...


class BatchReport(Protocol):
    """What a sweep tells its run: each committed batch, in pick order."""

    run_id: str

    def add_batch(self, purged: int, ms: float, *, size: int) -> None: ...


@dataclass
class _Done:
    """A committed batch, waiting to be reported in pick order."""

    size: int
    purged: int
    ms: float


@dataclass
class Sweep:
    """One run's walk through the overdue numbers, shared by its batches.

    Picks are serialised by `lock` (a few milliseconds each); the tombstone and delete of
    several batches may then run at once, each in its own transaction on its own connection.
    Batches are numbered in pick order and reported (logged, counted) in that order, whatever
    order they commit in.
    """

    report: BatchReport
    statements: Batches
    boundary: Boundary
    sizer: BatchSizer
    after: Any = 0  # keyset: every overdue id up to here is picked or was skipped as locked
    # Counts each committed batch in the run's `purge_runs` record, in the batch's own
    # transaction (None: a run recorded elsewhere, as the audit prune).
    record: Callable[[Session, str, int], None] | None = record_progress
    picked: int = 0
    halt: Halt | None = None  # why no further batch starts
    finished: dict[int, _Done] = field(default_factory=dict)
    reported: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def end(self, halt: Halt) -> None:
        """No further batch starts; the first reason given is the run's."""
        with self.lock:
            self.halt = self.halt or halt

    def finish(self, number: int, done: _Done, picked: int) -> float:
        """Record a committed batch, report those next in pick order; seconds to rest."""
        with self.lock:
            self.boundary.budget.give_back(picked - done.purged)  # rows that failed the re-check
            self.sizer.observe(asked=done.size, rows=picked, ms=done.ms)
            self.finished[number] = done
            while self.reported + 1 in self.finished:
                self.reported += 1
                self._report_batch(self.reported)
            return self.boundary.pacer.rest_after(rows=picked, ms=done.ms)

    def apply(self, session: Session, ids: list[Any]) -> int:
        """Change the picked rows `ids` in the batch's transaction and count them in the
        run's record; rows changed."""
        purged = self.statements.purge(session, ids)
        if self.record is not None:
            self.record(session, self.report.run_id, purged)
        return purged

    def report_the_rest(self) -> None:
        """Report the committed batches still waiting for an earlier one (that failed)."""
        with self.lock:
            for number in sorted(self.finished):
                self._report_batch(number)

    def _report_batch(self, number: int) -> None:
        done = self.finished.pop(number)
        self.report.add_batch(done.purged, done.ms, size=done.size)


def run_batches(factory: sessionmaker[Session], sweep: Sweep, lane: int = 0) -> None:
    """Run batches, one transaction each, until the sweep is done, halted or failed.

    Lanes after the first run only while no other session is at work on the store: parallel
    batches pay off on an otherwise idle database (catching up a backlog), and cost the API
    its latency when it is busy (bench/RESULTS.md).
    """
    boundary = sweep.boundary
    try:
        while True:
            if lane and sweep.halt is None and boundary.pacer.busy > SOLO_WHEN_BUSY:
                boundary.stop.sleep(LANE_WAIT_SECONDS)
                continue
            started = time.monotonic()
            with boundary.pacer.batch(), factory.begin() as session:
                with sweep.lock:
                    if sweep.halt is not None:
                        return
                    halt = boundary.check(session)
                    if halt is not None:
                        sweep.halt = halt
                        return
                    # Rest for the API's sessions (the two-phase batches do too, for the time
                    # they spend in the store: shared/purge/upstream_sweep.py).
                    boundary.pacer.sample_activity(session)
                    wait = (
                        boundary.pacer.replica_wait(session, started)
                        or boundary.pacer.ceiling_wait()
                    )
                    if not wait:
                        size = boundary.pacer.ceiling_size(
                            min(sweep.sizer.size, boundary.budget.rows_left())
                        )
                        ids = sweep.statements.pick(session, after=sweep.after, limit=size)
                        if not ids:
                            sweep.halt = Halt(RunStatus.COMPLETED)
                            return
                        sweep.after = ids[-1]
                        boundary.budget.take(len(ids))
                        boundary.pacer.count(len(ids))
                        sweep.picked += 1
                        number = sweep.picked
                if not wait:
                    purged = sweep.apply(session, ids)
            if wait:
                boundary.stop.sleep(wait)
                continue
            boundary.progress(purged)  # committed
            ms = round((time.monotonic() - started) * 1000, 1)
            boundary.stop.sleep(sweep.finish(number, _Done(size, purged, ms), len(ids)))
    except BaseException:
        sweep.end(Halt(RunStatus.FAILED))
        raise


def run_batches_in_parallel(factory: sessionmaker[Session], sweep: Sweep, workers: int) -> None:
    """`run_batches` on `workers` threads, each with its own sessions; the first error is
    raised."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="purge") as pool:
        # Each thread gets a copy of the caller's context: task_id stays bound in batch logs.
        futures = [
            pool.submit(contextvars.copy_context().run, run_batches, factory, sweep, lane)
            for lane in range(workers)
        ]
        try:
            for future in futures:
                future.result()
        finally:
            # An error here (or a time limit in the caller): no further batch starts; the
            # threads finish the batch they are in and the pool waits for them.
            sweep.end(Halt(RunStatus.FAILED))
