"""What a purge run did: the summary the task returns, the CLI prints and the record keeps."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from shared.run_status import RunStatus

log = structlog.get_logger("shared.purge")


@dataclass
class PurgeReport:
    """What a purge run did; `as_dict()` is the task's JSON summary."""

    run_id: str
    status: RunStatus
    cutoff: str
    now: str
    purged: int = 0
    batches: int = 0
    # Overdue numbers left after the run; of them, those this run's path could not take now
    # (they wait on the provider or a person: `shared.retention.waiting_numbers`).
    remaining: int | None = None
    remaining_waiting: int | None = None
    seconds: float = 0.0
    worst_batch_ms: float = 0.0
    # The longest single transaction (ms), what the 250 ms lock promise is about: a
    # single-phase batch is one transaction (its worst_batch_ms); a two-phase batch is several
    # (the claim, each call's mark, an order's record, the settle, the progress), with the
    # carrier's calls between them, outside any, and its batch time counts those calls too.
    worst_transaction_ms: float = 0.0
    # The adaptive batch sizes this run used: smallest, largest, last (None: no batch).
    batch_sizes: dict[str, int] | None = None
    # Seconds the run rested between batches to leave the database to others.
    paced_seconds: float = 0.0
    dry_run: bool = False
    would_purge: int | None = None
    sample: list[str] = field(default_factory=list)
    reason: str | None = None
    provider: str = "none"
    provider_released: int = 0
    # Calls that failed (the provider down, misconfigured, a permanent error), and numbers
    # the provider refused for themselves alone (locked, a port-out): kept, never a stop.
    provider_failed: int = 0
    provider_refused: int = 0
    provider_skipped: int = 0
    # Claimed, then held (or settled by a person) before their call: not called.
    provider_held: int = 0
    # Left claimed, unfailed, because the carrier's rate limit allowed no call before the
    # run's time bound; and the carrier's 429 answers (each call asked again, none a failure).
    provider_deferred: int = 0
    provider_rate_limited: int = 0
    # How far this host's clock was ahead of the database server's (negative: behind), in
    # seconds, when the run was refused for it (`clock_skew`); None otherwise.
    clock_skew_seconds: float | None = None
    # Asynchronous carriers (shared/carriers/base.AsyncProvider): numbers submitted in orders
    # this run, and orders read that settled numbers.
    provider_submitted: int = 0
    provider_orders_settled: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, keys in snake_case."""
        return asdict(self)

    def add_batch(
        self,
        purged: int,
        ms: float,
        *,
        size: int,
        transaction_ms: float | None = None,
        **upstream: int,
    ) -> None:
        """Count a committed batch of `size` rows asked for, whose longest transaction took
        `transaction_ms` (None: the batch was one transaction, `ms`); log its `purge.batch`
        event."""
        self.purged += purged
        self.batches += 1
        self.worst_batch_ms = max(self.worst_batch_ms, ms)
        longest = ms if transaction_ms is None else round(transaction_ms, 1)
        self.worst_transaction_ms = max(self.worst_transaction_ms, longest)
        sizes = self.batch_sizes or {"min": size, "max": size, "last": size}
        self.batch_sizes = {
            "min": min(sizes["min"], size),
            "max": max(sizes["max"], size),
            "last": size,
        }
        for key, count in upstream.items():
            setattr(self, key, getattr(self, key) + count)
        log.info(
            "purge.batch",
            run_id=self.run_id,
            batch=self.batches,
            size=size,
            purged=purged,
            total=self.purged,
            ms=ms,
            transaction_ms=longest,
            **upstream,
        )
