"""Property: whatever concurrent releases, repurchases and purges commit, once the relay has
caught up the published set is exactly the store's repurchasable set."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared.db import make_session_factory
from shared.models import PhoneNumber
from shared.releasable.keys import STREAM
from shared.releasable.read import read_releasable
from shared.releasable.reconcile import reconcile_releasable
from shared.releasable.relay import relay_events
from shared.retention import repurchasable_numbers
from tests.factories import make_number
from tests.purging import purge_expired
from tests.stores import delete_all_rows

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

NUMBERS = [f"+1415557{i:04d}" for i in range(8)]
ACCOUNTS = ("acc_p0", "acc_p1")
# (action, which number); purge and relay ignore the number.
OPERATION = st.tuples(
    st.sampled_from(["release", "repurchase", "purge", "relay"]), st.integers(0, 7)
)


def _seed(factory: sessionmaker[Session], now: datetime) -> None:
    with factory.begin() as session:
        for i, number in enumerate(NUMBERS):
            # Even: released (some past their deadline, so the purge has work); odd: active.
            released = now - timedelta(days=(15 if i % 4 == 0 else 2)) if i % 2 == 0 else None
            make_number(
                session, account_id=ACCOUNTS[i % 2], phone_number=number, released_at=released
            )


def _run(
    factory: sessionmaker[Session],
    client: redis.Redis,
    now: datetime,
    operations: list[tuple[str, int]],
    barrier: threading.Barrier,
) -> None:
    barrier.wait()
    for action, index in operations:
        number, account_id = NUMBERS[index], ACCOUNTS[index % 2]
        try:
            if action == "purge":
                purge_expired(factory, now=now, batch_size=2)
            elif action == "relay":
                relay_events(factory, client, now=now, batch_size=3)
            else:
                change = shared.release_number if action == "release" else shared.repurchase_number
                with factory.begin() as session:
                    change(session, account_id=account_id, phone_number=number, now=now)
        except shared.ApiError:
            pass  # refused by the rules (already released, window closed, ...): no change


@settings(
    max_examples=12,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(threads=st.lists(st.lists(OPERATION, min_size=1, max_size=8), min_size=3, max_size=3))
def test_after_the_relay_catches_up_the_set_is_the_stores(
    threads: list[list[tuple[str, int]]],
    pg_store: Engine,
    redis_client: redis.Redis,
    now: datetime,
) -> None:
    # Hypothesis runs every example within one use of the fixtures: each starts empty again.
    delete_all_rows(pg_store)
    redis_client.flushdb()
    factory = make_session_factory(pg_store)
    _seed(factory, now)
    with factory() as session:  # as deployed: a reconciliation publishes the sets first
        reconcile_releasable(session, redis_client, now=now)
    barrier = threading.Barrier(len(threads))
    workers = [
        threading.Thread(target=_run, args=(factory, redis_client, now, ops, barrier))
        for ops in threads
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    while relay_events(factory, redis_client, now=now).remaining:
        pass
    with factory() as session:
        offered_now = set(
            session.scalars(select(PhoneNumber.phone_number).where(repurchasable_numbers(now)))
        )
    assert {n for n, _ in read_releasable(redis_client, now=now)} == offered_now
    for account_id in ACCOUNTS:
        mine = {n for i, n in enumerate(NUMBERS) if ACCOUNTS[i % 2] == account_id}
        published = {n for n, _ in read_releasable(redis_client, account_id=account_id, now=now)}
        assert published == offered_now & mine
    ids = [fields[b"id"] for _, fields in redis_client.xrange(STREAM)]
    assert len(ids) == len(set(ids))
