"""The purge's upstream phase: claim overdue rows, release them at the provider, record errors.

A claimed row (`purge_state = 'purging'`, committed) can no longer be repurchased. The provider
is called outside any open transaction; only rows it released (or that have no provider id)
go on to be tombstoned and deleted. A failed call keeps its row with the error and a next
attempt time; a permanent error stops the retries until a person looks at it.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.orm import Session

from shared import events
from shared.carriers import carrier_module
from shared.carriers.base import Provider, Resolution, UpstreamResult
from shared.clock import not_ahead, resolve_now
from shared.controls import operator_record
from shared.detach import release_detached
from shared.errors import ProviderError, ValidationError
from shared.ledger import release_proof
from shared.lifecycle import lock_number, refuse_while_called
from shared.models import Base, CampaignAssignment, PhoneNumber, PurgedNumber
from shared.retention import claimable_numbers, is_purgeable, purgeable_numbers
from shared.tombstones import TOMBSTONE_COLUMNS, tombstone_values


@dataclass(frozen=True)
class Claim:
    """A row claimed for purging and the provider's id for its number (None: nothing upstream),
    with its E.164 number and country (what the detach steps are keyed by)."""

    id: int
    provider_number_id: str | None
    phone_number: str = ""
    country_code: str = ""


@dataclass
class UpstreamOutcome:
    """What the provider said for a batch's claims."""

    released: dict[int, Resolution] = field(default_factory=dict)  # id: how it was proven
    failed: dict[int, UpstreamResult] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)  # no provider id: nothing to release
    # Not called: a hold, or a person's settlement, came between the claim and the call.
    withheld: list[int] = field(default_factory=list)
    # Not called within the run's bounds (the carrier's rate limit): kept claimed, unfailed.
    deferred: list[int] = field(default_factory=list)
    deferred_by: UpstreamResult | None = None
    provider_down: bool = False
    # An answer that forbids further calls (a misconfiguration): the run stops.
    stopped_by: UpstreamResult | None = None
    # For the ledger of each number that may be tombstoned: {"release": how the carrier proved
    # its release, "detach": what was removed from it there first} (shared/ledger.py).
    proofs: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def refused(self) -> int:
        """Numbers the provider refused for themselves alone (kept, never a stop)."""
        return sum(1 for result in self.failed.values() if result.outcome == "refused")

    @property
    def going_on(self) -> bool:
        """Whether further calls may start: the provider is up, configured, not deferring."""
        return not self.provider_down and self.stopped_by is None and self.deferred_by is None

    def defer(self, number_id: int, result: UpstreamResult, pending: list[Claim]) -> None:
        """The carrier's rate limit deferred this call past the run's bounds: it, and the
        calls not started yet (taken from `pending`), wait for the next run."""
        self.deferred.append(number_id)
        self.deferred.extend(claim.id for claim in pending)
        pending.clear()
        self.deferred_by = self.deferred_by or result

    def settled(self) -> dict[str, list[int]]:
        """The ids that may be tombstoned, by how their release was proven."""
        groups: dict[str, list[int]] = {"no_provider_id": list(self.skipped)}
        for number_id, resolution in self.released.items():
            groups.setdefault(resolution, []).append(number_id)
        return {resolution: ids for resolution, ids in groups.items() if ids}


def claim_batch(
    session: Session,
    *,
    now: datetime,
    after: int,
    limit: int,
    lane: ColumnElement[bool] | None = None,
) -> list[Claim]:
    """Lock and claim up to `limit` claimable rows with ids above `after` (of one carrier's
    `lane`, see shared/purge/lanes.py); commit follows.

    A row a killed worker left claimed is claimable again: calling the provider twice for a
    number is harmless (its 404 counts as released where the account is proven, see
    `account_probe`).
    """
    rows = session.execute(
        select(
            PhoneNumber.id,
            PhoneNumber.provider_number_id,
            PhoneNumber.phone_number,
            PhoneNumber.country_code,
        )
        .where(claimable_numbers(now), PhoneNumber.id > after, *_in(lane))
        .order_by(PhoneNumber.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    claims = [
        Claim(row.id, row.provider_number_id, row.phone_number, row.country_code) for row in rows
    ]
    if claims:
        session.execute(
            update(PhoneNumber)
            .where(PhoneNumber.id.in_([c.id for c in claims]))
            .values(purge_state="purging", claimed_at=now, provider_next_attempt_at=None)
        )
        events.record_claimed(session, number_ids=[c.id for c in claims], now=now)
    return claims


def _in(lane: ColumnElement[bool] | None) -> tuple[ColumnElement[bool], ...]:
    return () if lane is None else (lane,)


def account_probe(session: Session, lane: ColumnElement[bool] | None = None) -> str | None:
    """The provider id of one number the store holds active at the lane's carrier (None: no
    such number).

    The provider's record of it proves that the key's account is the one holding this
    store's numbers: only then does a "not found" prove that a number was released.
    """
    return session.scalar(
        select(PhoneNumber.provider_number_id)
        .where(
            PhoneNumber.released_at.is_(None),
            PhoneNumber.provider_number_id.is_not(None),
            *_in(lane),
        )
        .order_by(PhoneNumber.id)
        .limit(1)
    )


def account_proven(provider: Provider, probe: str | None) -> bool:
    """Whether the provider holds the probe number for this key (see `account_probe`)."""
    return probe is not None and provider.holds(probe)


def _unproven(provider: Provider, claim: Claim) -> UpstreamResult:
    carrier = "Telnyx" if provider.name == "telnyx" else provider.name.title()
    stop: UpstreamResult = carrier_module(provider.name, "telnyx").misconfigured(
        f"{carrier} knows no number {claim.provider_number_id} for this key, and the key's "
        "account was not seen holding any active number of this store (another account's "
        "key?)",
        cause="key",
    )
    return stop


def begin_call(session: Session, claim: Claim, *, run_id: str, now: datetime) -> bool:
    """Under the row's lock, just before the carrier call: whether the number may still be
    released (claimed, due, not held, not settled by a person meanwhile), marking the call in
    flight for `run_id` if so. Commit follows; from then until the call's answer is recorded,
    a hold, a settlement by hand or a retry is refused (`refuse_while_called`)."""
    number_id = session.scalar(
        select(PhoneNumber.id)
        .where(
            PhoneNumber.id == claim.id,
            PhoneNumber.purge_state == "purging",
            purgeable_numbers(now),
        )
        .with_for_update()
    )
    if number_id is None:
        return False
    session.execute(
        update(PhoneNumber).where(PhoneNumber.id == number_id).values(provider_call_run_id=run_id)
    )
    return True


def release_upstream(
    provider: Provider,
    claims: Sequence[Claim],
    *,
    concurrency: int,
    failure_streak: int,
    account_proven: bool,
    stopping: Callable[[], bool] = lambda: False,
    before_call: Callable[[Claim], bool] = lambda claim: True,
) -> UpstreamOutcome:
    """Call the provider for each claim, at most `concurrency` at once; no transaction is open.

    Each number is first detached at the carrier (shared/detach.py: its 10DLC campaign, its
    emergency services, its CNAM listing), then released; a failed step is its outcome.

    After `failure_streak` failures in a row no further call is started: the provider is
    treated as down and the rest stay claimed for a later run. A refusal of one number (a
    lock, a port-out) is an answer, not a failure: it never counts toward the streak and
    ends one, as a release does. After an answer that shows a misconfiguration no call is
    started either, nor once `stopping()` says an operator stops the run: the calls in
    flight finish, the rest stay claimed for the next run. An error of one call, whatever it
    is, is that number's outcome, never the batch's. Unless `account_proven`, a "not found"
    proves nothing (the key may be another account's): it counts as a misconfiguration.
    `before_call(claim)` runs just before each call (see `begin_call`): a claim it turns down
    (held, or settled by a person, since its claim) is not called. A call the carrier's rate
    limit deferred past the run's bounds is no failure (nor part of a streak): no further call
    is started, and the number stays claimed, without an error, for the next run.
    """
    outcome = UpstreamOutcome(skipped=[c.id for c in claims if c.provider_number_id is None])
    for number_id in outcome.skipped:
        outcome.proofs[number_id] = {"release": release_proof("no_provider_id", None), "detach": []}
    pending = [c for c in claims if c.provider_number_id is not None]
    streak = 0
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="upstream") as pool:
        running: dict[Future[UpstreamResult], Claim] = {}
        while pending or running:
            while pending and len(running) < concurrency and outcome.going_on and not stopping():
                claim = pending.pop(0)
                if not before_call(claim):
                    outcome.withheld.append(claim.id)
                    continue
                call = contextvars.copy_context().run
                # What the number carries at the carrier is removed before its release.
                release = partial(
                    release_detached,
                    provider,
                    number_id=cast(str, claim.provider_number_id),
                    phone_number=claim.phone_number,
                    country_code=claim.country_code,
                )
                running[pool.submit(call, release)] = claim
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                claim = running.pop(future)
                result = _result(future)
                if result.needs_account and not account_proven:
                    result = _unproven(provider, claim)
                if result.outcome == "deferred":
                    outcome.defer(claim.id, result, pending)
                    continue
                streak = _take(outcome, claim, result, streak)
                if streak >= failure_streak:
                    outcome.provider_down = True
    return outcome


def _take(outcome: UpstreamOutcome, claim: Claim, result: UpstreamResult, streak: int) -> int:
    """Record one call's result in `outcome`; the failure streak after it."""
    if result.outcome == "released":
        resolution = result.resolution or "provider"
        outcome.released[claim.id] = resolution
        outcome.proofs[claim.id] = {
            "release": result.proof or release_proof(resolution, claim.provider_number_id),
            "detach": list(result.detached),
        }
        return 0
    outcome.failed[claim.id] = result
    if result.outcome == "refused":
        return 0  # the provider is up: it answered for this number
    if result.outcome == "misconfigured":
        outcome.stopped_by = outcome.stopped_by or result
    return streak + 1


def _result(future: Future[UpstreamResult]) -> UpstreamResult:
    """The call's result; an error the adapter did not map is a transient failure of that
    number (kept with its error, retried later), never a crashed run."""
    try:
        return future.result()
    except Exception as error:  # noqa: BLE001 - any error of one call is that number's outcome
        return UpstreamResult(
            "transient",
            ProviderError(
                f"The call to the provider failed: {type(error).__name__}.",
                code="provider_call_failed",
                fix="The purge retries later; the worker's log has the error.",
            ),
        )


def backoff(attempts: int, *, base: float, cap: float) -> timedelta:
    """Wait before attempt `attempts + 1`: base * 2**(attempts - 1), at most `cap`."""
    return timedelta(seconds=min(cap, base * 2 ** max(attempts - 1, 0)))


def record_failures(
    session: Session,
    failures: dict[int, UpstreamResult],
    *,
    now: datetime,
    base: float,
    cap: float,
) -> None:
    """Keep each failed row with its provider error, attempts and next attempt time."""
    if not failures:
        return
    attempts: dict[int, int] = {
        number_id: tries
        for number_id, tries in session.execute(
            select(PhoneNumber.id, PhoneNumber.provider_attempts)
            .where(PhoneNumber.id.in_(list(failures)))
            .with_for_update()
        )
    }
    for number_id, result in failures.items():
        if number_id not in attempts:
            continue  # settled by a person meanwhile (`resolve-upstream`): nothing to record
        error = result.error
        # Waits on a person: a permanent failure, or this number's refusal only a person can
        # lift; neither is asked again until `retry-upstream`.
        for_a_person = result.outcome == "permanent" or (
            result.outcome == "refused" and result.waits_on == "person"
        )
        tries = attempts[number_id] + 1
        wait_for = backoff(tries, base=base, cap=cap)
        if result.retry_after is not None:
            wait_for = max(wait_for, timedelta(seconds=result.retry_after))
        session.execute(
            update(PhoneNumber)
            .where(PhoneNumber.id == number_id)
            .values(
                provider_attempts=tries,
                provider_error_code=error.code if error else "provider_error",
                provider_error_message=error.message[:1000] if error else None,
                provider_code=error.provider_code if error else None,
                provider_failed_permanently=for_a_person,
                provider_next_attempt_at=None if for_a_person else now + wait_for,
                provider_call_run_id=None,  # answered: no call in flight any more
                provider_order_id=None,  # an order's outcome: claimable again after backoff
                provider_submitted_at=None,
            )
        )
    events.record_upstream_failed(
        session, number_ids=[i for i in failures if i in attempts], now=now
    )


def reset_upstream(session: Session, *, phone_number: str) -> dict[str, object]:
    """Clear a claimed number's upstream failure (after a person fixed its cause)."""
    number = lock_number(session, phone_number)
    if number is None or number.provider_error_code is None:
        raise ValidationError(
            f"Number {phone_number} has no upstream failure to retry.",
            code="no_upstream_failure",
            fix="`numbers-retention status` lists the numbers kept by upstream failures.",
        )
    refuse_while_called(session, number, doing="retried")
    number.provider_failed_permanently = False
    number.provider_next_attempt_at = None
    events.record(session, kind="upstream_reset", number=number, now=resolve_now(None))
    return {"phoneNumber": number.phone_number, "retry": "next purge run"}


def permanent_failures(session: Session, *, provider_code: str | None = None) -> list[str]:
    """The numbers the provider refused for good (`retry-upstream --all-permanent`), by id;
    with `provider_code`, only those it refused with that code."""
    query = select(PhoneNumber.phone_number).where(
        PhoneNumber.provider_failed_permanently.is_(True)
    )
    if provider_code is not None:
        query = query.where(PhoneNumber.provider_code == provider_code)
    return list(session.scalars(query.order_by(PhoneNumber.id)))


def resolve_by_operator(
    session: Session,
    *,
    phone_number: str,
    reason: object,
    by: str,
    now: datetime | None = None,
    carrier: str | None = None,
    ported_out: bool = False,
) -> dict[str, object]:
    """A person settled a number upstream by hand: tombstone and delete it now, recording
    who and why. Only for a number that is due and carries upstream state (claimed, or kept
    by a provider error), which the purge itself would never delete without the provider.
    Like a purge run, it refuses an instant ahead of this host's clock.

    The ledger records `carrier` (the carrier that held it; 'unknown' when not given) and the
    disconnect reason 'operator', or 'ported_out' when the number left by a port-out (not a
    permanent disconnection: never in the disconnections report)."""
    note, who, now = operator_record(by=by, reason=reason, now=not_ahead(now))
    if note is None:
        raise ValidationError(
            "A reason is required to settle a number upstream by hand.",
            code="invalid_reason",
            fix="Say what was done, e.g. --reason 'released in the Telnyx portal, ticket 123'.",
        )
    number = lock_number(session, phone_number)
    if number is None or (number.purge_state is None and number.provider_error_code is None):
        raise ValidationError(
            f"Number {phone_number} has no upstream state to settle.",
            code="no_upstream_state",
            fix="Only numbers `status` lists as kept upstream can be settled by hand; "
            "the purge removes the others by itself.",
        )
    assert number.released_at is not None  # claimed rows are released (a CHECK says so)
    refuse_while_called(session, number, doing="settled by hand")
    if not is_purgeable(number.released_at, now, held=number.purge_hold):
        raise ValidationError(
            f"Number {number.phone_number} is not due for purging.",
            code="number_not_due",
            fix="Lift its hold, or wait for its repurchase deadline.",
        )
    run_id = str(uuid.uuid4())
    numbers = Base.metadata.tables[PhoneNumber.__tablename__]
    stone = tombstone_values(
        numbers.c,
        now=now,
        run_id=run_id,
        resolution="operator",
        resolved_by=who,
        note=note,
        carrier=(carrier or "unknown")[:16],
        reason="ported_out" if ported_out else "operator",
    )
    session.execute(
        insert(Base.metadata.tables[PurgedNumber.__tablename__]).from_select(
            TOMBSTONE_COLUMNS,
            select(*stone)
            .outerjoin(CampaignAssignment, CampaignAssignment.number_id == numbers.c.id)
            .where(numbers.c.id == number.id),
        )
    )
    events.record_purged(session, number_ids=[number.id])
    session.execute(delete(numbers).where(numbers.c.id == number.id))
    session.expunge(number)
    return {
        "phoneNumber": number.phone_number,
        "purged": True,
        "resolution": "operator",
        "resolvedBy": who,
        "disconnectReason": "ported_out" if ported_out else "operator",
        "runId": run_id,
    }
