"""The race that matters: repurchases right at the deadline against purges, many rounds.

Each round has released numbers whose deadline is the purge's `now`. From one barrier it
starts a repurchase per number (a microsecond before the deadline, one exactly at it) and two
purges (batches of one row, so they interleave with the repurchases), each after a random
delay of up to two milliseconds. Whatever the order, every number must end active and intact
or tombstoned, never both and never neither, and a repurchase that was told "success" (its
transaction committed) is never undone.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared.models import Account, PhoneNumber, PurgedNumber
from shared.purge import PurgeReport
from shared.retention import RETENTION
from tests.purging import purge_config, purge_expired

pytestmark = pytest.mark.postgres

# Figures quoted in docs/guarantees.md; change them together.
ROUNDS = 100
RACERS = 6  # numbers at their deadline per round, one repurchase thread each
PURGERS = 2  # purge threads per round
ACCOUNTS = 3  # accounts per round (repurchases of one account queue on its row lock)
REPURCHASE_SPREAD = 0.025  # seconds: random delays after the barrier
PURGE_SPREAD = 0.002
BASE = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

Factory = sessionmaker[Session]


@dataclass
class Round:
    now: datetime  # the purge's instant: the racing numbers' deadline
    owners: dict[str, str]  # racing number -> account
    fresh: str  # deadline a second after `now`: never purged in this round
    active: str  # never released
    rows: dict[str, tuple[Any, ...]]  # every number's row before the race


def _row(number: PhoneNumber) -> tuple[Any, ...]:
    return (
        number.id,
        number.account_id,
        number.phone_number,
        number.label,
        number.created_at,
        number.country_code,
        number.number_type,
        number.monthly_price,
        number.provider_number_id,
        number.billing_status,
        number.released_at,
    )


def _rows(session: Session, numbers: list[str]) -> dict[str, tuple[Any, ...]]:
    found = session.scalars(select(PhoneNumber).where(PhoneNumber.phone_number.in_(numbers)))
    return {number.phone_number: _row(number) for number in found}


def _tombstones(session: Session, numbers: list[str]) -> list[str]:
    return list(
        session.scalars(
            select(PurgedNumber.phone_number).where(PurgedNumber.phone_number.in_(numbers))
        )
    )


def seed_rounds(factory: Factory) -> list[Round]:
    """Every round's accounts and numbers, in one transaction, as the lifecycle leaves them.

    Round i's racing numbers were released RETENTION before its `now` (deadline = now); its
    `fresh` number a second later; its `active` number was never released. Bulk-inserted:
    registration and release have their own tests, this one is about the race.
    """
    rounds = []
    with factory.begin() as session:
        for index in range(ROUNDS):
            now = BASE + timedelta(hours=index)
            racing = [f"+1415{index:03d}{i:04d}" for i in range(RACERS)]
            owners = {number: f"acc_r{index}_{i % ACCOUNTS}" for i, number in enumerate(racing)}
            fresh, active = f"+1415{index:03d}9998", f"+1415{index:03d}9999"
            session.add_all(
                Account(id=account, plan="paid", created_at=now - timedelta(days=400))
                for account in sorted(set(owners.values()))
            )
            released = {number: now - RETENTION for number in racing}
            released |= {fresh: now - RETENTION + timedelta(seconds=1), active: None}
            for number, released_at in released.items():
                session.add(
                    PhoneNumber(
                        account_id=owners.get(number, owners[racing[0]]),
                        phone_number=number,
                        label=f"line {number[-4:]}",
                        created_at=now - timedelta(days=30),
                        country_code="US",
                        number_type="local",
                        billing_status="active" if released_at is None else "released",
                        next_billing_date=(now + timedelta(days=1)).date(),
                        monthly_price=Decimal("1.00"),
                        released_at=released_at,
                        purge_hold=False,
                        provider_number_id=number[1:],
                    )
                )
            rounds.append(Round(now, owners, fresh, active, {}))
    with factory() as session:
        rows = _rows(session, [n for r in rounds for n in (*r.owners, r.fresh, r.active)])
    for rnd in rounds:
        rnd.rows.update({n: rows[n] for n in (*rnd.owners, rnd.fresh, rnd.active)})
    return rounds


def race(
    pool: ThreadPoolExecutor, factory: Factory, rnd: Round, rng: random.Random
) -> tuple[dict[str, str], list[PurgeReport]]:
    """Run the round's repurchases and purges from one barrier; the repurchases' outcomes."""
    barrier = threading.Barrier(RACERS + PURGERS)
    # Racer 0 comes exactly at the deadline (must be refused), the others a microsecond before.
    instants = {n: rnd.now - (MICROSECOND if i else timedelta(0)) for i, n in enumerate(rnd.owners)}
    # Repurchases spread over 25 ms, purges over 2 ms: a purge takes its run lock, records the
    # run and reads the live controls (about 8 ms here) before its first pick, so both orders
    # happen.
    delays = [rng.uniform(0, REPURCHASE_SPREAD) for _ in range(RACERS)]
    delays += [rng.uniform(0, PURGE_SPREAD) for _ in range(PURGERS)]

    def repurchase(number: str, delay: float) -> str:
        barrier.wait(30)
        time.sleep(delay)
        with factory() as session:
            try:
                with session.begin():
                    body = shared.repurchase_number(
                        session,
                        account_id=rnd.owners[number],
                        phone_number=number,
                        now=instants[number],
                    )
            except shared.ApiError as error:
                return error.code
        # Committed: the buyer is told "success" only now.
        assert body["billingStatus"] == "active"
        assert "releasedAt" not in body
        return "success"

    # Batches of one row taking turns with the repurchases, not resting for them: they count
    # as an API at work (shared/purge/pacing.py), and the purge resting after each row lost
    # every race (in CI: 500 repurchases won, no purge came first).
    eager = replace(purge_config(), busy_rest=0)

    def purge(delay: float) -> PurgeReport:
        barrier.wait(30)
        time.sleep(delay)
        return purge_expired(factory, now=rnd.now, batch_size=1, config=eager)

    buys = {n: pool.submit(repurchase, n, delays[i]) for i, n in enumerate(rnd.owners)}
    purges = [pool.submit(purge, delays[RACERS + i]) for i in range(PURGERS)]
    outcomes = {number: future.result(60) for number, future in buys.items()}
    return outcomes, [future.result(60) for future in purges]


def check_round(factory: Factory, rnd: Round, outcomes: dict[str, str]) -> None:
    racing = list(rnd.owners)
    everything = [*racing, rnd.fresh, rnd.active]
    assert set(outcomes.values()) <= {"success", "number_not_found", "repurchase_window_closed"}
    assert outcomes[racing[0]] != "success"  # at the deadline itself: never repurchasable

    def state() -> tuple[dict[str, tuple[Any, ...]], list[str]]:
        with factory() as session:
            return _rows(session, everything), _tombstones(session, everything)

    rows, stones = state()
    assert sorted(stones) == sorted(set(stones))  # tombstoned at most once
    assert set(stones).isdisjoint(rows)  # never both
    assert set(stones) | set(rows) == set(everything)  # never neither
    for number, outcome in outcomes.items():
        if outcome == "number_not_found":
            assert number in stones  # refused only because the purge had taken it

    # The next run takes what a failed repurchase still held locked during this one.
    purge_expired(factory, now=rnd.now, batch_size=RACERS)
    rows, stones = state()
    assert sorted(stones) == sorted(set(stones))
    assert set(stones).isdisjoint(rows)
    for number, outcome in outcomes.items():
        before = rnd.rows[number]
        if outcome == "success":
            # Active and intact: same row, same createdAt, only the release undone.
            assert rows[number] == (*before[:9], "active", None)
        else:
            assert number in stones
            assert number not in rows
    assert rows[rnd.fresh] == rnd.rows[rnd.fresh]
    assert rows[rnd.active] == rnd.rows[rnd.active]


def test_repurchase_at_the_deadline_races_the_purge(pg_factory: Factory) -> None:
    rng = random.Random(2026)
    tally = {"success": 0, "number_not_found": 0, "repurchase_window_closed": 0}
    succeeded: dict[str, tuple[Any, ...]] = {}
    with ThreadPoolExecutor(max_workers=RACERS + PURGERS) as pool:
        for rnd in seed_rounds(pg_factory):
            outcomes, _reports = race(pool, pg_factory, rnd, rng)
            check_round(pg_factory, rnd, outcomes)
            for number, outcome in outcomes.items():
                tally[outcome] += 1
                if outcome == "success":
                    succeeded[number] = rnd.rows[number]
    # Both orders really happened: some repurchases won, some purges came first.
    assert min(tally["success"], tally["number_not_found"]) > 0, tally
    # Much later, every purge since has left the repurchased numbers alone.
    purge_expired(pg_factory, now=BASE + timedelta(hours=ROUNDS, days=60))
    with pg_factory() as session:
        rows = _rows(session, list(succeeded))
        assert _tombstones(session, list(succeeded)) == []
    assert {n: r[:9] for n, r in rows.items()} == {n: r[:9] for n, r in succeeded.items()}
    assert all(r[9:] == ("active", None) for r in rows.values())
