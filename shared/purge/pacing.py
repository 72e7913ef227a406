"""Room for the API: how long the purge rests between batches.

The field's anchors: pt-archiver's `--sleep-coef` (rest in proportion to the batch's time) and
`--check-slave-lag`, gh-ost's throttling on replica lag. Three reasons to rest, the longest
wins: the run's own batches getting slower per row than its best (the database is busy with
someone else), a replica replaying too far behind, and an operator's rows-per-second ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

# Batch-to-batch noise on an idle machine stays within this factor of the best time per row;
# only time beyond it counts as pressure.
TOLERANCE = 1.3
# Batches smaller than this are mostly fixed cost (round trips, commit): no per-row signal.
MIN_ROWS = 50
# Replication lag is looked up at most this often, and waited for in steps this long.
LAG_PROBE_SECONDS = 1.0
# One rest never exceeds this: a stop or a pause is seen within it.
MAX_REST_SECONDS = 2.0

REPLICA_LAG = text(
    "SELECT coalesce(max(extract(epoch FROM greatest(replay_lag, write_lag, flush_lag))), 0)"
    " FROM pg_stat_replication"
)


def replica_lag(session: Session) -> float:
    """Seconds the furthest-behind streaming replica lags (0 without replicas or rights)."""
    if session.get_bind().dialect.name != "postgresql":
        return 0.0
    return float(session.scalar(REPLICA_LAG) or 0.0)


@dataclass
class Pacer:
    """Rests after batches; its `rested` seconds go into the run's summary."""

    pressure_rest: float
    max_replica_lag: float
    rows_per_second: float = 0.0  # the ceiling in force (the store's pace or the setting)
    best_ms_per_row: float | None = None
    rested: float = 0.0
    lag_checked_at: float | None = None

    def rest_after(self, *, rows: int, ms: float) -> float:
        """Seconds to rest after a batch of `rows` that took `ms`."""
        rest = 0.0
        if rows >= MIN_ROWS:
            per_row = ms / rows
            best = self.best_ms_per_row = min(self.best_ms_per_row or per_row, per_row)
            # The time this batch took beyond what it would have on a quiet database.
            extra_ms = ms - TOLERANCE * best * rows
            rest = max(rest, self.pressure_rest * extra_ms / 1000)
        if self.rows_per_second > 0:
            rest = max(rest, rows / self.rows_per_second - ms / 1000)
        rest = min(max(rest, 0.0), MAX_REST_SECONDS)
        self.rested += rest
        return rest

    def replica_wait(self, session: Session, now: float) -> float:
        """Seconds to wait before the next batch because a replica lags (0: go on)."""
        if self.max_replica_lag <= 0:
            return 0.0
        if self.lag_checked_at is not None and now - self.lag_checked_at < LAG_PROBE_SECONDS:
            return 0.0
        self.lag_checked_at = now
        if replica_lag(session) <= self.max_replica_lag:
            return 0.0
        self.rested += LAG_PROBE_SECONDS
        self.lag_checked_at = None  # look again right after the wait
        return LAG_PROBE_SECONDS
