"""Asynchronous releases (shared/carriers/base.AsyncProvider): numbers submitted in orders,
settled by later reads of the order.

A batch's claims go to the carrier in one order per `max_order` numbers; each number is then
`submitted` (claimed, with the order id and when), and no run claims it again. Each run first
reads the orders of its lane's submitted numbers: a settled order settles each of its numbers
by its own outcome (released: tombstoned, the order id in its ledger entry; refused or
failed: kept with the carrier's code, as a synchronous failure is); an order still pending
leaves its numbers submitted (`status` and the exporter show how long the oldest waits).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING, cast

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.carriers.base import AsyncProvider, Provider, Submitted, UpstreamResult
from shared.clock import iso_timestamp
from shared.detach import Target, detacher_for
from shared.ledger import release_proof
from shared.models import PhoneNumber
from shared.purge.boundary import Halt
from shared.purge.upstream import Claim, UpstreamOutcome
from shared.run_status import RunStatus

if TYPE_CHECKING:
    from shared.purge.upstream_sweep import UpstreamSweep

log = structlog.get_logger("shared.purge")


class Orders:
    """One run's submissions and order reads for an asynchronous carrier's lane."""

    def __init__(self, sweep: UpstreamSweep, account_proven: bool) -> None:
        self.sweep = sweep
        self.provider = cast(AsyncProvider, sweep.provider)
        self.account_proven = account_proven

    def submit(self, factory: sessionmaker[Session], claims: list[Claim]) -> UpstreamOutcome:
        """Place orders for the claims; the numbers placed become `submitted`."""
        outcome = UpstreamOutcome(skipped=[c.id for c in claims if c.provider_number_id is None])
        for number_id in outcome.skipped:
            outcome.proofs[number_id] = {
                "release": release_proof("no_provider_id", None),
                "detach": [],
            }
        sendable: list[Claim] = []
        for claim in claims:
            number = claim.provider_number_id
            if number is None:
                continue
            bad = self.provider.invalid(number)
            if bad is not None:  # never sent: kept for a person
                outcome.failed[claim.id] = bad
            elif not self.sweep._begin_call(factory, claim):
                outcome.withheld.append(claim.id)
            else:
                failed = self._detach(claim, number)
                if failed is None:
                    sendable.append(claim)
                else:
                    outcome.failed[claim.id] = failed
        size = max(1, self.provider.max_order)
        for start in range(0, len(sendable), size):
            chunk = sendable[start : start + size]
            if not outcome.going_on:
                outcome.deferred.extend(c.id for c in chunk)
                continue
            placed = self.provider.submit([cast(str, c.provider_number_id) for c in chunk])
            self._placed(factory, outcome, chunk, placed)
        return outcome

    def _detach(self, claim: Claim, number: str) -> UpstreamResult | None:
        """What the number carries at the carrier removed before it is ordered released
        (shared/detach.py); a failed step is its outcome. The steps' proofs of a number
        released by order are not kept in its ledger entry (the order id is)."""
        detacher = detacher_for(cast(Provider, self.provider))
        if detacher is None:
            return None
        proofs, failure = detacher.detach(Target(number, claim.phone_number, claim.country_code))
        return None if failure is None else replace(failure, detached=tuple(proofs))

    def _placed(
        self,
        factory: sessionmaker[Session],
        outcome: UpstreamOutcome,
        chunk: list[Claim],
        placed: Submitted | UpstreamResult,
    ) -> None:
        if isinstance(placed, Submitted):
            with self.sweep.transactions.begin(factory) as session:
                session.execute(
                    update(PhoneNumber)
                    .where(PhoneNumber.id.in_([c.id for c in chunk]))
                    .values(
                        provider_order_id=placed.order_id,
                        provider_submitted_at=self.sweep.now,
                        provider_call_run_id=None,
                    )
                )
            self.sweep.report.provider_submitted += len(chunk)
            return
        if placed.outcome == "deferred":
            outcome.defer(chunk[0].id, placed, [])
            outcome.deferred.extend(c.id for c in chunk[1:])
            return
        for claim in chunk:
            outcome.failed[claim.id] = placed
        if placed.outcome == "misconfigured":
            outcome.stopped_by = placed
        else:
            outcome.provider_down = True

    def settle(self, factory: sessionmaker[Session]) -> Halt | None:
        """Read the orders of the lane's submitted numbers; settle each number an order
        settled. A Halt when an answer forbids going on (the credentials, the base URL)."""
        with factory() as session:
            rows = session.execute(
                select(
                    PhoneNumber.id,
                    PhoneNumber.provider_number_id,
                    PhoneNumber.provider_order_id,
                    PhoneNumber.purge_hold,
                    PhoneNumber.hold_set_by,
                    PhoneNumber.hold_reason,
                    PhoneNumber.hold_set_at,
                ).where(
                    PhoneNumber.provider_order_id.is_not(None),
                    PhoneNumber.purge_state == "purging",
                    *(() if self.sweep.lane is None else (self.sweep.lane,)),
                )
            ).all()
        by_order: dict[str, list[Claim]] = defaultdict(list)
        # Holds that got in after a number's submission (a hold is refused from then on:
        # shared/lifecycle.refuse_while_submitted): recorded in the proof of its release.
        holds: dict[int, dict[str, str | None]] = {}
        for row in rows:
            by_order[row.provider_order_id].append(Claim(row.id, row.provider_number_id))
            if row.purge_hold:
                holds[row.id] = {
                    "by": row.hold_set_by,
                    "reason": row.hold_reason,
                    "at": iso_timestamp(row.hold_set_at) if row.hold_set_at else None,
                }
        for order_id, claims in by_order.items():
            halt = self._settle_order(factory, order_id, claims, holds)
            if halt is not None:
                return halt
        return None

    def _settle_order(
        self,
        factory: sessionmaker[Session],
        order_id: str,
        claims: list[Claim],
        holds: dict[int, dict[str, str | None]],
    ) -> Halt | None:
        """Settle each number of one order by its own outcome. A number the order released is
        gone at the carrier: it is tombstoned even when held since its submission (its proof
        says so, `held`), never left submitted, nor kept as a number the store cannot hold
        any more."""
        started = time.monotonic()
        numbers = [cast(str, c.provider_number_id) for c in claims]
        results = self.provider.settle(order_id, numbers)
        if isinstance(results, UpstreamResult):
            if results.outcome == "misconfigured" and results.error is not None:
                return Halt(
                    RunStatus.PROVIDER_MISCONFIGURED,
                    f"{results.error.message} Fix: {results.error.fix}",
                )
            return None  # the carrier down or pacing us: read again at the next run
        if not results:
            return None  # still pending
        outcome = UpstreamOutcome(ordered=True)
        for claim in claims:
            result = results.get(cast(str, claim.provider_number_id))
            if result is None:
                continue
            if result.needs_account and not self.account_proven:
                result = _unproven(self.provider.name, order_id)
            if result.outcome == "released":
                outcome.released[claim.id] = result.resolution or "provider"
                proof = result.proof
                if claim.id in holds:
                    proof = {**(proof or {}), "held": holds[claim.id]}
                    log.warning("purge.held_number_released_by_order", order=order_id)
                outcome.proofs[claim.id] = {"release": proof, "detach": []}
            else:
                outcome.failed[claim.id] = result
        self.sweep.settle_outcome(factory, outcome, started=started, size=len(claims))
        self.sweep.report.provider_orders_settled += 1
        return None


def _unproven(carrier: str, order_id: str) -> UpstreamResult:
    from shared.carriers import carrier_module

    stop: UpstreamResult = carrier_module(carrier).misconfigured(
        f"order {order_id} answered a number unknown to this account, and the account was not "
        "seen holding any active number of this store (another account's credentials?)",
        cause="key",
    )
    return stop
