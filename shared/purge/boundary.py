"""What every run checks before every batch: an operator's stop, a pause, its budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from shared.controls import pause_reason, read_controls
from shared.purge.budget import Budget
from shared.purge.config import PurgeConfig
from shared.purge.lock import deleter_keys
from shared.purge.pacing import Pacer
from shared.purge.stop import StopRequest
from shared.run_status import RunStatus


@dataclass(frozen=True)
class Halt:
    """Why a run starts no further batch: its final status and the reason shown with it."""

    status: RunStatus  # completed, limit_reached, paused, interrupted, failed
    reason: str | None = None


@dataclass
class Boundary:
    """The checks between two batches; the pace the store holds is taken up here too."""

    config: PurgeConfig
    budget: Budget
    pacer: Pacer
    stop: StopRequest
    # Told the rows of each committed batch (the CLI's progress bar on a terminal).
    progress: Callable[[int], None] = lambda _rows: None

    @classmethod
    def for_run(cls, config: PurgeConfig, budget: Budget, stop: StopRequest | None) -> Boundary:
        """A run's boundary: its bounds, and a pacer on the settings' rests and targets."""
        pacer = Pacer(
            pressure_rest=config.pressure_rest,
            max_replica_lag=config.max_replica_lag_seconds,
            target_ms=config.target_ms,
            busy_rest=config.busy_rest,
            run_keys=deleter_keys(),
            # Replicas are first looked at a second into the run: a short run (the usual one
            # between two schedules) starts at once.
            lag_checked_at=budget.started,
        )
        return cls(config, budget, pacer, stop or StopRequest())

    def check(self, session: Session) -> Halt | None:
        """A Halt when the run must end before its next batch, else None.

        Reads the store's controls in the batch's own transaction: a pause or a pace set on
        any host reaches every running purge at its next batch, without a restart.
        """
        if self.stop.requested:
            return Halt(RunStatus.INTERRUPTED, self.stop.reason)
        controls = read_controls(session)
        paused = pause_reason(controls.pause, deploy_paused=self.config.paused)
        if paused is not None:
            return Halt(RunStatus.PAUSED, paused)
        if self.budget.over_limit():
            return Halt(RunStatus.LIMIT_REACHED)
        self.pacer.set_ceiling(
            controls.pace.rows_per_second if controls.pace else self.config.max_rows_per_second
        )
        return None
