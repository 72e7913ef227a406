"""Room for the API: how long the purge rests between batches.

The field's anchors: pt-archiver's `--sleep-coef` (rest in proportion to the batch's time) and
`--check-slave-lag`, gh-ost's throttling on `Threads_running` and on replica lag. Four reasons
to rest, the longest wins:

- other sessions at work on the store (the API): sampled in `pg_stat_activity` before each
  batch (running a statement, or idle for under a second), the purge rests `busy_rest` times
  each batch's time in proportion to how often it found them, so it takes turns with the API
  instead of sharing every moment with it; longer when a probe shows that the batches slow
  the API's calls that meet them (shared/purge/probe.py: batches then take at most the share
  of the time that keeps the API's p99 within 1.5 times); that many times more with several
  runs at work at once (carriers' lanes, the audit prune: their run locks), which share that
  room;
- a batch taking clearly longer than the target its size aims at (the database got busier
  than the size had adapted to);
- a replica replaying too far behind;
- an operator's rows-per-second ceiling.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared.purge.probe import PROBE, PROBE_EVERY_SECONDS, Interference, interference_on

log = structlog.get_logger("shared.purge")

# Batches hover around the target as their size adapts; only time beyond this factor of the
# target counts as pressure (on a steady machine, adapting alone keeps batches below it).
TOLERANCE = 1.5
# Replication lag is looked up at most this often, and waited for in steps this long.
LAG_PROBE_SECONDS = 1.0
# One rest never exceeds this: a stop or a pause is seen within it.
MAX_REST_SECONDS = 2.0
# Under a rows/s ceiling a batch holds at most this many seconds of the pace: over any window
# of T seconds the run purges at most pace * (T + BURST_SECONDS) rows (5 % over a 10 s window).
BURST_SECONDS = 0.5

# How fast the share of batches that found others at work follows a change (per batch).
BUSY_SMOOTHING = 0.2

# Names this batch's session for the rest of its transaction (so parallel batches do not
# count each other, and operators see the purge in pg_stat_activity), then counts the others.
# The worker's other sessions (the relay woken by the purge's own commits, the reconciliation,
# the exporter) carry WORKER_APPLICATION_NAME on their connections and are not counted either:
# the purge takes turns with the API, not with itself.
APPLICATION_NAME = "numbers-retention purge"
WORKER_APPLICATION_NAME = "numbers-retention worker"
# A session idle for less than this was at work just now: an API answers a call in a
# millisecond or two and spends the rest of it in its own process (HTTP, JSON), so a look at
# one instant would find its session idle almost always while the API is in steady use.
RECENTLY_AT_WORK_SECONDS = 1.0
OTHERS_AT_WORK = text(
    "SELECT set_config('application_name', :name, true), pg_backend_pid(), ("
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND pid <> pg_backend_pid() AND NOT pid = ANY(:own) AND backend_type = 'client backend'"
    " AND (state IN ('active', 'idle in transaction')"
    " OR (state = 'idle' AND state_change > now() - make_interval(secs => :recent)))"
    " AND application_name IS DISTINCT FROM :name"
    " AND application_name IS DISTINCT FROM :worker), ("
    # The runs at work that delete in batches (their run locks: shared/purge/lock.py), this
    # one included: a session advisory lock on a key below 2^32 shows as (classid 0, objid).
    # The whole store's run holds its lock and, in turn, each lane's: one run, not two.
    "SELECT greatest(count(*) FILTER (WHERE objid::bigint <> :umbrella),"
    " count(*) FILTER (WHERE objid::bigint = :umbrella))"
    " FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 0"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND objid::bigint = ANY(:runs))"
).bindparams(name=APPLICATION_NAME, worker=WORKER_APPLICATION_NAME)
REPLICA_LAG = text(
    "SELECT coalesce(max(extract(epoch FROM greatest(replay_lag, write_lag, flush_lag))), 0)"
    " FROM pg_stat_replication"
)


def replica_lag(session: Session) -> float:
    """Seconds the furthest-behind streaming replica lags (0 without replicas or rights)."""
    if session.get_bind().dialect.name != "postgresql":
        return 0.0
    return float(session.scalar(REPLICA_LAG) or 0.0)


def look_around(
    session: Session,
    *,
    recent: float = RECENTLY_AT_WORK_SECONDS,
    own: set[int] | None = None,
    runs: tuple[int, ...] = (),
) -> tuple[int, int]:
    """Other client sessions at work on the store (running a statement or a transaction now,
    or idle for less than `recent` seconds), and the runs at work of those whose run locks
    are `runs` (the first: the whole store's run, which also holds a lane's lock in turn).

    `own`: the server processes of the caller's other connections (the purge's pool, which
    its batches just used), not counted; this session's is added to it.
    PostgreSQL reads pg_stat_activity once per transaction: call it first in a fresh one
    (each batch's), or it answers what the transaction saw before.
    """
    if session.get_bind().dialect.name != "postgresql":
        return 0, 0
    mine = own if own is not None else set()
    umbrella = runs[0] if runs else 0
    found = {"recent": recent, "own": sorted(mine), "runs": list(runs), "umbrella": umbrella}
    row = session.execute(OTHERS_AT_WORK, found).one()
    mine.add(int(row[1]))
    return int(row[2] or 0), int(row[3] or 0)


def others_at_work(session: Session, **options: Any) -> int:
    """Other client sessions at work on the store (`look_around`)."""
    return look_around(session, **options)[0]


@dataclass
class Pacer:
    """Rests after batches; its `rested` seconds go into the run's summary.

    The rows/s ceiling is a ceiling, not an average: rows count when a batch picks them, a
    batch holds no more rows than the pace allows in `BURST_SECONDS`, and no batch is picked
    before the rows already picked are due (`ceiling_wait`, looked at again after each wait,
    so the cap on one rest never lets the run run ahead).
    """

    pressure_rest: float
    max_replica_lag: float
    target_ms: float
    busy_rest: float = 0.0
    rows_per_second: float = 0.0  # the ceiling in force (the store's pace or the setting)
    # Rows picked since the ceiling took effect, and when: the ceiling holds for the whole run,
    # whatever the number of lanes.
    ceiling_rows: int = 0
    ceiling_since: float = 0.0
    busy: float = 0.0  # smoothed share of batches that found other sessions at work
    own_sessions: set[int] = field(default_factory=set)  # the run's server processes
    # The run locks of the runs that delete in batches (shared/purge/lock.py), and how many of
    # them were at work at the last look, this one included: they share the room for the API.
    run_keys: tuple[int, ...] = ()
    runs: int = 1
    lag_checked_at: float | None = None
    clock: Callable[[], float] = time.monotonic
    # Seconds each lane (thread) rested: lanes rest side by side, so the run rested as long as
    # its longest-resting lane, never more than the run's own time.
    lane_rests: dict[int, float] = field(default_factory=dict)
    # How much the batches slow the API's calls that meet them (`probing`), and the batches in
    # flight now (`batch`).
    interference: Interference = field(default_factory=Interference)
    in_flight: int = 0
    _flights: threading.Lock = field(default_factory=threading.Lock)
    _looked: bool = False  # whether `sample_activity` looked yet

    @property
    def rested(self) -> float:
        return max(self.lane_rests.values(), default=0.0)

    def rest_after(self, *, rows: int, ms: float) -> float:
        """Seconds to rest after a batch of `rows` that took `ms`."""
        # Turns with the other sessions, and the time this batch took beyond what its size
        # was chosen to take. The ceiling is kept before the next pick (`ceiling_wait`).
        # Batches in flight at most `duty` of the time the API is at work, shared by the runs.
        turns = self.busy * max(self.runs, 1) * ms / 1000
        rest = max(
            self.busy_rest * turns,
            # (the probes are sorted for it: only when there is someone to make room for)
            (1 / self.interference.duty() - 1) * turns if turns and self.busy_rest > 0 else 0.0,
            self.pressure_rest * (ms - TOLERANCE * self.target_ms) / 1000,
        )
        return self._rest(rest)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """A batch's time in the store (its transaction), as the probe sees it."""
        with self._flights:
            self.in_flight += 1
        try:
            yield
        finally:
            with self._flights:
                self.in_flight -= 1

    @contextmanager
    def probing(self, engine: Engine) -> Iterator[None]:
        """Time `PROBE` while the block runs and other sessions are at work, in a batch and
        between batches (`interference`). PostgreSQL with a busy rest set: else nothing."""
        if engine.dialect.name != "postgresql" or self.busy_rest <= 0:
            yield
            return
        self.interference = interference_on(engine)
        done = threading.Event()
        thread = threading.Thread(
            target=self._probe, args=(engine, done), name="purge-probe", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _probe(self, engine: Engine, done: threading.Event) -> None:
        try:
            with engine.connect() as connection:
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
                named = text(
                    "SELECT set_config('application_name', :name, false), pg_backend_pid()"
                )
                pid = connection.execute(named, {"name": APPLICATION_NAME}).one()[1]
                self.own_sessions.add(int(pid))
                while not done.wait(PROBE_EVERY_SECONDS):
                    if self.busy <= 0:
                        continue
                    in_batch = self.in_flight > 0
                    started = time.perf_counter()
                    connection.execute(PROBE)
                    ms = (time.perf_counter() - started) * 1000
                    self.interference.add(ms, in_batch=in_batch)
                # Closed, not pooled: a connection more left in the pool outlived the tests'
                # engines (psycopg's ResourceWarning when one was collected).
                connection.invalidate()
        except SQLAlchemyError:
            # The store went away: the batches meet that themselves; no more measures.
            log.debug("purge.probe_stopped")

    def set_ceiling(self, rows_per_second: float) -> None:
        """The ceiling in force from now on (0: none); a new one starts its own count."""
        if rows_per_second != self.rows_per_second:
            self.rows_per_second = rows_per_second
            self.ceiling_rows, self.ceiling_since = 0, self.clock()

    def ceiling_size(self, size: int) -> int:
        """`size` cut to what the ceiling allows one batch (at least one row)."""
        if self.rows_per_second <= 0:
            return size
        return max(1, min(size, int(self.rows_per_second * BURST_SECONDS)))

    def ceiling_wait(self) -> float:
        """Seconds to wait before the next pick, until the rows picked so far are due (0: go).

        A batch is picked once the run is no more than one batch's worth ahead (BURST_SECONDS)
        of the pace; with batches of at most that size, any window keeps to the pace plus one
        batch.
        """
        if self.rows_per_second <= 0:
            return 0.0
        due = self.ceiling_rows / self.rows_per_second
        return self._rest(due - (self.clock() - self.ceiling_since))

    def count(self, rows: int) -> None:
        """Rows a batch just picked, counted against the ceiling."""
        if self.rows_per_second > 0:
            self.ceiling_rows += rows

    def _rest(self, seconds: float) -> float:
        rest = min(max(seconds, 0.0), MAX_REST_SECONDS)
        lane = threading.get_ident()
        self.lane_rests[lane] = self.lane_rests.get(lane, 0.0) + rest
        return rest

    def sample_activity(self, session: Session) -> None:
        """Look whether other sessions are at work on the store (once per batch)."""
        if self.busy_rest <= 0:
            return
        others, self.runs = look_around(session, own=self.own_sessions, runs=self.run_keys)
        found = 1.0 if others else 0.0
        # The first look counts whole: a run that starts beside the API rests from its first
        # batch (smoothed from 0, a run's first batches hardly rested: a scheduled run is
        # short, and two thirds of those of the impact benchmark's 3 s runs met the API).
        self.busy = found if not self._looked else self.busy + BUSY_SMOOTHING * (found - self.busy)
        self._looked = True

    def replica_wait(self, session: Session, now: float) -> float:
        """Seconds to wait before the next batch because a replica lags (0: go on)."""
        if self.max_replica_lag <= 0:
            return 0.0
        if self.lag_checked_at is not None and now - self.lag_checked_at < LAG_PROBE_SECONDS:
            return 0.0
        self.lag_checked_at = now
        if replica_lag(session) <= self.max_replica_lag:
            return 0.0
        self._rest(LAG_PROBE_SECONDS)
        self.lag_checked_at = None  # look again right after the wait
        return LAG_PROBE_SECONDS
