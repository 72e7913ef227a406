"""Holds, settlements and retries against carrier calls in flight (issue 20, point 2).

A person's act on a number the two-phase purge has claimed is honoured by a check made under
the row's lock immediately before its carrier call, or refused (`number_being_purged`) while
that call is in flight: never acknowledged and then overtaken by the call. Each race is made
deterministic by a fake carrier that holds a call until the test has acted; on both backends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared.holds import hold_number, unhold_number
from shared.models import PhoneNumber, PurgeRun
from shared.provider import NoProvider, TelnyxProvider
from shared.purge import PurgeReport
from shared.purge.operator import reset_upstream, resolve_by_operator
from shared.status import store_status
from tests.factories import NOW, make_number
from tests.fake_telnyx import LOCKED, OK, FakeTelnyx
from tests.purging import purge_expired
from tests.stores import numbers_by_phone, tombstones_by_phone

Factory = sessionmaker[Session]
WHEN = NOW - timedelta(days=2)
OVERDUE = timedelta(days=15)
FIRST, SECOND = "+14156500000", "+14156500001"
FIRST_ID, SECOND_ID = "6000", "6001"


@pytest.fixture
def two(session_factory: Factory, settings_env: Callable[..., None]) -> Factory:
    """Two overdue numbers with provider ids; one carrier call at a time, so the second waits
    behind the first: claimed, its call not started."""
    settings_env(PROVIDER_CONCURRENCY="1")
    with session_factory.begin() as session:
        for phone, provider_id in ((FIRST, FIRST_ID), (SECOND, SECOND_ID)):
            make_number(
                session,
                account_id="acc_race",
                phone_number=phone,
                released_at=WHEN - OVERDUE,
                now=WHEN,
                provider_number_id=provider_id,
            )
    return session_factory


@contextmanager
def purging(
    factory: Factory, telnyx: TelnyxProvider, *, at: datetime = WHEN
) -> Iterator[list[PurgeReport]]:
    """A purge run on a thread of its own; its report once the block ends."""
    reports: list[PurgeReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(purge_expired(factory, now=at, provider=telnyx))
        except BaseException as error:  # noqa: BLE001 - re-raised in the test
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield reports
    finally:
        thread.join(30)
    assert not errors, errors
    assert not thread.is_alive()


def act(factory: Factory, action: Callable[[Session], object]) -> object:
    """A person's act in its own transaction: its answer, or the refusal it raised."""
    try:
        with factory.begin() as session:
            return action(session)
    except shared.ApiError as refusal:
        return refusal


def refused_as_being_purged(answer: object) -> bool:
    return isinstance(answer, shared.ApiError) and answer.code == "number_being_purged"


# --- holds ---------------------------------------------------------------------------------------


def test_a_hold_while_the_call_is_in_flight_is_refused_never_acknowledged(
    two: Factory, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    """Before the fix the hold answered `held: true`, the carrier then released the number,
    and it stayed in the store `purging` and held."""
    gate = fake_telnyx.block(FIRST_ID)
    with purging(two, telnyx) as reports:
        gate.wait_arrived()
        answer = act(two, lambda s: hold_number(s, phone_number=FIRST, by="alice", reason="x"))
        gate.open()
    assert refused_as_being_purged(answer), answer
    assert isinstance(answer, shared.ApiError)
    assert "asking the carrier" in answer.message
    assert (reports[0].status, reports[0].purged) == ("completed", 2)
    assert sorted(tombstones_by_phone(two)) == [FIRST, SECOND]


def test_a_hold_after_the_claim_and_before_the_call_is_honoured(
    two: Factory, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    """The second number is claimed and waits for its call while the first call is held: a
    hold placed then is acknowledged, and the run never calls the carrier for it. Before the
    fix it was called and released at the carrier anyway, and stayed `purging` and held."""
    gate = fake_telnyx.block(FIRST_ID)
    with purging(two, telnyx) as reports:
        gate.wait_arrived()
        assert numbers_by_phone(two)[SECOND].purge_state == "purging"  # claimed, not called
        answer = act(two, lambda s: hold_number(s, phone_number=SECOND, by="alice", reason="x"))
        gate.open()
    assert answer == {
        "phoneNumber": SECOND,
        "held": True,
        "reason": "x",
        "by": "alice",
        "at": answer["at"],  # type: ignore[index]
    }
    assert fake_telnyx.calls[SECOND_ID] == 0
    assert SECOND_ID not in fake_telnyx.released
    assert (reports[0].status, reports[0].purged, reports[0].provider_held) == ("completed", 1, 1)
    kept = numbers_by_phone(two)[SECOND]
    assert kept.purge_hold
    assert kept.provider_error_code is None  # never called: nothing to retry or settle
    # Lifting the hold lets the next run call the carrier for it and purge it.
    act(two, lambda s: unhold_number(s, phone_number=SECOND))
    again = purge_expired(two, now=WHEN + timedelta(minutes=1), provider=telnyx)
    assert again.purged == 1
    assert fake_telnyx.calls[SECOND_ID] == 1


# --- resolve-upstream and retry-upstream racing a run ---------------------------------------


def fail_earlier(factory: Factory) -> None:
    """Both numbers as an earlier run left them: claimed, a transient failure, due again."""
    with factory.begin() as session:
        session.execute(
            update(PhoneNumber).values(
                purge_state="purging",
                provider_attempts=1,
                provider_error_code="provider_release_failed",
                provider_code="10007",
                provider_next_attempt_at=WHEN - timedelta(minutes=1),
            )
        )


def test_settling_by_hand_races_a_run_safely(
    two: Factory, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    """While the run's call for the first number is in flight, `resolve-upstream` for it is
    refused (the carrier's answer decides); for the second, still waiting for its call, it
    is taken, and the run never calls the carrier for a number a person settled. Before the
    fix both were tombstoned as settled by hand and both were called at the carrier."""
    fail_earlier(two)
    gate = fake_telnyx.block(FIRST_ID)

    def settle(phone: str) -> Callable[[Session], object]:
        return lambda s: resolve_by_operator(
            s, phone_number=phone, reason="released in the portal", by="ops", now=WHEN
        )

    with purging(two, telnyx) as reports:
        gate.wait_arrived()
        in_flight = act(two, settle(FIRST))
        waiting = act(two, settle(SECOND))
        gate.open()
    assert refused_as_being_purged(in_flight), in_flight
    assert isinstance(waiting, dict)
    assert waiting["resolution"] == "operator"
    assert fake_telnyx.calls[SECOND_ID] == 0
    stones = tombstones_by_phone(two)
    assert (stones[FIRST].resolution, stones[SECOND].resolution) == ("provider", "operator")
    assert (reports[0].purged, reports[0].provider_held) == (1, 1)


def test_a_retry_asked_while_the_call_is_in_flight_is_refused_not_lost(
    two: Factory, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    """`retry-upstream` while the call is in flight is refused: the answer on its way decides.
    Before the fix it answered "retry: next purge run", then the carrier's refusal (locked)
    overwrote it and the number was never retried."""
    fail_earlier(two)
    fake_telnyx.script[FIRST_ID] = [LOCKED, OK]
    gate = fake_telnyx.block(FIRST_ID)
    with purging(two, telnyx):
        gate.wait_arrived()
        answer = act(two, lambda s: reset_upstream(s, phone_number=FIRST))
        gate.open()
    assert refused_as_being_purged(answer), answer
    kept = numbers_by_phone(two)[FIRST]
    assert (kept.provider_code, kept.provider_failed_permanently) == ("10035", True)
    # Asked once the answer is in, the retry holds: the next run calls the carrier again.
    assert act(two, lambda s: reset_upstream(s, phone_number=FIRST)) == {
        "phoneNumber": FIRST,
        "retry": "next purge run",
    }
    del fake_telnyx.gates[FIRST_ID]
    assert purge_expired(two, now=WHEN + timedelta(minutes=1), provider=telnyx).purged == 1
    assert fake_telnyx.calls[FIRST_ID] == 2


def test_a_call_left_in_flight_by_a_dead_run_blocks_nothing_for_long(two: Factory) -> None:
    """A run killed mid-call leaves its mark on the row and its record `running`: a hold is
    refused until the next run (of any kind) closes that record as failed, then taken."""
    fail_earlier(two)
    dead = "00000000-0000-4000-8000-000000000000"
    with two.begin() as session:
        session.add(
            PurgeRun(id=dead, started_at=NOW, cutoff=WHEN, status="running", purged=0, batches=0)
        )
        session.execute(
            update(PhoneNumber)
            .where(PhoneNumber.phone_number == FIRST)
            .values(provider_call_run_id=dead)
        )
    hold = lambda s: hold_number(s, phone_number=FIRST, by="alice")  # noqa: E731
    assert refused_as_being_purged(act(two, hold))
    purge_expired(two, now=WHEN, provider=NoProvider())  # closes the dead run's record
    answer = act(two, hold)
    assert isinstance(answer, dict)
    assert answer["held"] is True
    with two() as session:
        assert store_status(session, now=WHEN)["held"] == 1
