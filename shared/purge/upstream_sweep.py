"""The two-phase sweep: claim (committed), release upstream (no transaction open), settle."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import get_args

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session, sessionmaker

from shared.carriers.base import Provider, Resolution, UpstreamResult, is_async
from shared.ledger import record_proofs
from shared.purge.boundary import Boundary, Halt
from shared.purge.budget import BatchSizer
from shared.purge.config import PurgeConfig
from shared.purge.orders import Orders
from shared.purge.records import record_progress
from shared.purge.report import PurgeReport
from shared.purge.statements import BatchStatements
from shared.purge.upstream import (
    Claim,
    UpstreamOutcome,
    account_probe,
    account_proven,
    begin_call,
    claim_batch,
    record_failures,
    release_upstream,
)
from shared.run_status import RunStatus

# How a tombstone's release was proven: each way the provider proves one, or no id to release.
RESOLUTIONS = (*get_args(Resolution), "no_provider_id")


class TransactionClock:
    """The longest transaction of a two-phase batch (ms), taken when the batch is counted.
    Thread-safe: the marks of the carrier calls (`UpstreamSweep._begin_call`) commit from the
    calls' threads."""

    def __init__(self, in_flight: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
        self._lock = threading.Lock()
        self._worst = 0.0
        self._in_flight = in_flight  # marks the transaction's time (the pacer's probe)

    @contextmanager
    def begin(self, factory: sessionmaker[Session]) -> Iterator[Session]:
        """`factory.begin()`, timed from its start to its commit."""
        started = time.monotonic()
        with self._in_flight(), factory.begin() as session:
            yield session
        ms = (time.monotonic() - started) * 1000
        with self._lock:
            self._worst = max(self._worst, ms)

    def take(self) -> float:
        """The longest transaction since the last `take`."""
        with self._lock:
            worst, self._worst = self._worst, 0.0
        return worst


@dataclass(frozen=True)
class UpstreamSweep:
    """One run's claim, release and settle batches; each tombstone says how its release was
    proven (one set of statements per way)."""

    report: PurgeReport
    config: PurgeConfig
    boundary: Boundary
    provider: Provider
    settle: dict[str, BatchStatements]
    now: datetime
    limited_before: int = 0  # the carrier's 429s counted before this run
    # The numbers of this carrier's lane (shared/purge/lanes.py; None: every number).
    lane: ColumnElement[bool] | None = None
    # The statements of the numbers a carrier's order released (held since or not).
    settle_ordered: dict[str, BatchStatements] = field(default_factory=dict)
    # Each transaction of the run timed: the report's worst_transaction_ms.
    transactions: TransactionClock = field(init=False)
    # Rows a batch claims, aimed at the run's target for its longest transaction (the settle:
    # a tombstone and a delete per number), as the single-phase batches are: a busy database
    # gets smaller claims, up to the carrier's batch size. A run starts at the floor and grows
    # while its transactions are fast: started at the carrier's batch size, the first claims of
    # two lanes beside the API held a transaction up to 334 ms (bench/RESULTS.md, issue 21).
    sizer: BatchSizer = field(init=False)

    def __post_init__(self) -> None:
        cap = self.config.provider_batch_size
        floor = min(self.config.batch_floor, cap)
        sizer = BatchSizer(target_ms=self.config.target_ms, floor=floor, cap=cap, size=floor)
        object.__setattr__(self, "sizer", sizer)  # frozen: set once, here
        object.__setattr__(self, "transactions", TransactionClock(self.boundary.pacer.batch))

    @classmethod
    def build(
        cls,
        factory: sessionmaker[Session],
        report: PurgeReport,
        *,
        config: PurgeConfig,
        boundary: Boundary,
        provider: Provider,
        now: datetime,
        lane: ColumnElement[bool] | None = None,
    ) -> UpstreamSweep:
        dialect = factory.kw["bind"].dialect.name

        def statements(*, ordered: bool) -> dict[str, BatchStatements]:
            return {
                resolution: BatchStatements.build(
                    dialect,
                    now,
                    report.run_id,
                    claimed=True,
                    provider=None if resolution == "no_provider_id" else provider.name,
                    resolution=resolution,
                    carrier=provider.name,
                    ordered=ordered,
                )
                for resolution in RESOLUTIONS
            }

        limited = provider.pace.limited if provider.pace is not None else 0
        ordered = statements(ordered=True) if is_async(provider) else {}
        return cls(
            report,
            config,
            boundary,
            provider,
            statements(ordered=False),
            now,
            limited,
            lane,
            ordered,
        )

    def run(self, factory: sessionmaker[Session]) -> Halt:
        """Batches until the backlog is done or something halts the run; why it ended."""
        halt, proven, orders = self._start(factory)
        if halt is not None:
            return halt
        after = 0
        while True:
            started = time.monotonic()
            with self.transactions.begin(factory) as session:
                halt = self.boundary.check(session)
                if halt is not None:
                    return halt
                pacer = self.boundary.pacer
                # Lanes of several carriers purge at once: each takes turns with the API's
                # sessions for the time it spends in the store (claim and settle).
                pacer.sample_activity(session)
                wait = pacer.replica_wait(session, started) or pacer.ceiling_wait()
                if not wait:
                    limit = pacer.ceiling_size(
                        min(self._claim_size(), self.boundary.budget.rows_left())
                    )
                    claims = claim_batch(
                        session, now=self.now, after=after, limit=limit, lane=self.lane
                    )
                    pacer.count(len(claims))
            if wait:
                self.boundary.stop.sleep(wait)
                continue
            if not claims:
                # Orders submitted this run may have settled already.
                return (orders and orders.settle(factory)) or Halt(RunStatus.COMPLETED)
            after = claims[-1].id
            self.boundary.budget.take(len(claims))
            claimed_ms = (time.monotonic() - started) * 1000
            outcome = self._release(factory, claims, orders, proven)
            settling = time.monotonic()
            longest = self.settle_outcome(factory, outcome, started=started, size=limit)
            self.sizer.observe(asked=limit, rows=len(claims), ms=longest)
            store_ms = claimed_ms + (time.monotonic() - settling) * 1000
            self.boundary.stop.sleep(self.boundary.pacer.rest_after(rows=len(claims), ms=store_ms))
            if outcome.stopped_by is not None:
                return _provider_halt(outcome.stopped_by)
            if outcome.deferred_by is not None and not self.boundary.stop.requested:
                return _provider_halt(outcome.deferred_by)
            if outcome.provider_down:
                return Halt(
                    RunStatus.PROVIDER_UNAVAILABLE,
                    f"{self.config.provider_failure_streak} upstream failures in a row",
                )

    def _release(
        self,
        factory: sessionmaker[Session],
        claims: list[Claim],
        orders: Orders | None,
        proven: bool,
    ) -> UpstreamOutcome:
        """The batch's releases: orders placed (an asynchronous carrier), else one call each."""
        if orders is not None:
            return orders.submit(factory, claims)
        return release_upstream(
            self.provider,
            claims,
            concurrency=self.config.provider_concurrency,
            failure_streak=self.config.provider_failure_streak,
            account_proven=proven,
            stopping=lambda: self.boundary.stop.requested,
            before_call=lambda claim: self._begin_call(factory, claim),
        )

    def _start(self, factory: sessionmaker[Session]) -> tuple[Halt | None, bool, Orders | None]:
        """Before anything is claimed: a read-only call proving the base URL and the key
        work, the account proven (or not), the orders submitted before read."""
        refused = self.provider.check()
        if refused is not None:
            return _provider_halt(refused), False, None
        with factory() as session:
            proven = account_proven(self.provider, account_probe(session, self.lane))
        orders = Orders(self, proven) if is_async(self.provider) else None
        halt = orders.settle(factory) if orders is not None else None
        return halt, proven, orders

    def _begin_call(self, factory: sessionmaker[Session], claim: Claim) -> bool:
        """Just before a carrier call, in a transaction of its own: whether the number may
        still be released, marking the call in flight (`shared.purge.upstream.begin_call`)."""
        with self.transactions.begin(factory) as session:
            return begin_call(session, claim, run_id=self.report.run_id, now=self.now)

    def _claim_size(self) -> int:
        """Rows per batch: the sizer's (its longest transaction aimed at the run's target), at
        most what the carrier's announced rate calls in a few seconds."""
        pace = self.provider.pace
        cap = self.sizer.size
        return pace.claim_size(cap) if pace is not None else cap

    def _rate_limited(self) -> int:
        """429s the carrier answered since the last batch was counted (the calls were asked
        again: none is a number's failure)."""
        pace = self.provider.pace
        if pace is None:
            return 0
        return pace.limited - self.limited_before - self.report.provider_rate_limited

    def settle_outcome(
        self,
        factory: sessionmaker[Session],
        outcome: UpstreamOutcome,
        *,
        started: float,
        size: int,
    ) -> float:
        """Tombstone what the carrier released, keep the failures (see `_settle`), and count
        it as a batch of `size` rows begun at `started` (monotonic); its longest transaction
        (ms)."""
        purged = self._settle(factory, outcome)
        ms = round((time.monotonic() - started) * 1000, 1)
        with self.transactions.begin(factory) as session:
            record_progress(session, self.report.run_id, purged)
        self.boundary.progress(purged)
        longest = self.transactions.take()
        self.report.add_batch(
            purged,
            ms,
            size=size,
            transaction_ms=longest,
            provider_released=len(outcome.released),
            provider_failed=len(outcome.failed) - outcome.refused,
            provider_refused=outcome.refused,
            provider_skipped=len(outcome.skipped),
            provider_held=len(outcome.withheld),
            provider_deferred=len(outcome.deferred),
            provider_rate_limited=self._rate_limited(),
        )
        return longest

    def _settle(self, factory: sessionmaker[Session], outcome: UpstreamOutcome) -> int:
        """Tombstone and delete what the provider released; keep the failures with their
        errors. One transaction; the rows purged."""
        # Each release stands on its own proof (the record of that very id, or Telnyx's 404
        # once the key's account was proven): a batch stopped by another number's answer
        # still settles them, so no number stays in the store once released at the carrier.
        settled = outcome.settled()
        statements = self.settle_ordered if outcome.ordered else self.settle
        with self.transactions.begin(factory) as session:
            purged = sum(
                statements[resolution].purge(session, ids) for resolution, ids in settled.items()
            )
            # Each tombstone's release proof and detach steps (the ledger of disconnections).
            tombstoned = {i for ids in settled.values() for i in ids}
            record_proofs(session, {i: p for i, p in outcome.proofs.items() if i in tombstoned})
            record_failures(
                session,
                outcome.failed,
                now=self.now,
                base=self.config.provider_backoff_seconds,
                cap=self.config.provider_backoff_max_seconds,
            )
        return purged


def _provider_halt(result: UpstreamResult) -> Halt:
    """The run's end on an answer that forbids going on: a misconfiguration, or no provider;
    or on the carrier's rate limit, past the run's time bound (what is left waits)."""
    if result.outcome == "deferred":
        return Halt(
            RunStatus.LIMIT_REACHED,
            f"rate limited: the carrier allows the next call in {result.retry_after or 0:.1f} s, "
            "past this run's time bound; the numbers not called stay for the next run, unfailed",
        )
    status = (
        RunStatus.PROVIDER_MISCONFIGURED
        if result.outcome == "misconfigured"
        else RunStatus.PROVIDER_UNAVAILABLE
    )
    error = result.error
    return Halt(status, f"{error.message} Fix: {error.fix}" if error else result.outcome)
