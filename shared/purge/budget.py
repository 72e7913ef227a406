"""How much one run may do (rows, seconds), and how large its next batch is."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.purge.config import PurgeConfig

# Grow by at most this factor per batch: slow growth keeps one batch from overshooting when
# the machine gets busier between two batches.
GROWTH = 1.2
# Batches aim at this share of the target, not at the target itself: on a busy 2-core host a
# batch now and then takes 4 to 5 times its usual time (the CPU is taken), and one aimed at
# 50 ms still ends within 250 ms then (bench/RESULTS.md).
AIM = 0.5


@dataclass
class Budget:
    """A run's bounds: `max_rows` rows and `max_seconds` seconds; checked before each batch."""

    max_rows: int
    max_seconds: float
    started: float  # time.monotonic() when the run began
    # Rows taken by picked batches; a row that fails the re-check is given back.
    reserved: int = 0

    def over_limit(self) -> bool:
        """True once no further batch may start."""
        return self.reserved >= self.max_rows or self.elapsed() >= self.max_seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rows_left(self) -> int:
        return max(self.max_rows - self.reserved, 0)

    def take(self, rows: int) -> None:
        self.reserved += rows

    def give_back(self, rows: int) -> None:
        self.reserved -= rows


@dataclass
class BatchSizer:
    """The adaptive batch size, aimed at `target_ms` per batch transaction.

    As GitLab's batched background migration optimizer does: grow slowly while batches are
    fast, shrink at once when one is slower than the target (to the size that would have met
    the aim), always between `floor` and `cap`.
    """

    target_ms: float
    floor: int
    cap: int
    size: int

    @classmethod
    def for_run(cls, config: PurgeConfig) -> BatchSizer:
        """A run's sizer, from its configuration: the purge's and the prune's alike."""
        return cls(
            target_ms=config.target_ms,
            floor=config.batch_floor,
            cap=config.batch_cap,
            size=config.first_batch,
        )

    def observe(self, *, asked: int, rows: int, ms: float) -> None:
        """Learn from a committed batch that asked for `asked` rows and picked `rows`."""
        if rows <= 0:
            return
        if ms > self.target_ms:
            # Scaled by the rows it really had: a short batch that was slow is slower per row.
            wanted = int(rows * AIM * self.target_ms / ms)
            self.size = max(self.floor, min(self.size, wanted))
        elif rows >= asked and ms < AIM * self.target_ms:
            # Only a full batch says how a larger one would do.
            factor = min(GROWTH, AIM * self.target_ms / max(ms, 0.001))
            self.size = min(self.cap, max(self.size + 1, int(self.size * factor)))
