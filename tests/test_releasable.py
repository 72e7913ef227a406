"""The releasable set in real Redis: contents, scores, atomic replacement, stale scores."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
import redis
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from shared.releasable.keys import account_key, all_key
from shared.releasable.read import read_releasable
from shared.releasable.reconcile import reconcile_releasable
from shared.releasable.record import last_reconciliation
from shared.retention import RETENTION
from tests.factories import make_number, make_numbers

pytestmark = pytest.mark.redis


def _seed(session: Session, now: datetime) -> None:
    make_numbers(
        session,
        account_id="acc_a",
        ages={"+14155550201": timedelta(days=1), "+14155550202": timedelta(days=13)},
        now=now,
    )
    make_numbers(
        session,
        account_id="acc_b",
        ages={"+14155550203": timedelta(hours=1), "+14155550204": RETENTION},
        now=now,
    )
    make_numbers(session, account_id="acc_c", ages={"+14155550205": None}, now=now)


def test_publishes_repurchasable_numbers_scored_by_deadline(
    session: Session, redis_client: redis.Redis, now: datetime
) -> None:
    _seed(session, now)
    with capture_logs() as logs:
        summary = reconcile_releasable(session, redis_client, now=now)
    assert (summary["published"], summary["accounts"]) == (3, 2)
    assert [e["event"] for e in logs] == ["releasable.published"]
    assert logs[0]["published"] == 3
    scores = dict(redis_client.zrange(all_key(), 0, -1, withscores=True))
    assert scores == {
        b"+14155550201": (now - timedelta(days=1) + RETENTION).timestamp(),
        b"+14155550202": (now - timedelta(days=13) + RETENTION).timestamp(),
        b"+14155550203": (now - timedelta(hours=1) + RETENTION).timestamp(),
    }
    assert redis_client.zrange(account_key("acc_a"), 0, -1) == [b"+14155550202", b"+14155550201"]
    assert redis_client.zrange(account_key("acc_b"), 0, -1) == [b"+14155550203"]
    assert not redis_client.exists(account_key("acc_c"))
    meta = last_reconciliation(redis_client)
    assert (meta["count"], meta["accounts"]) == ("3", "2")
    assert meta["now"] == now.isoformat().replace("+00:00", "Z")


def test_reader_treats_scores_at_or_before_now_as_gone(
    session: Session, redis_client: redis.Redis, now: datetime
) -> None:
    _seed(session, now)
    reconcile_releasable(session, redis_client, now=now)
    deadline = now - timedelta(days=13) + RETENTION
    assert [n for n, _ in read_releasable(redis_client, account_id="acc_a", now=now)] == [
        "+14155550202",
        "+14155550201",
    ]
    # The published set is stale by now; the reader still never offers an expired number.
    assert [
        n
        for n, _ in read_releasable(
            redis_client, account_id="acc_a", now=deadline - timedelta(seconds=1)
        )
    ] == [
        "+14155550202",
        "+14155550201",
    ]
    assert [n for n, _ in read_releasable(redis_client, account_id="acc_a", now=deadline)] == [
        "+14155550201"
    ]
    number, when = read_releasable(redis_client, now=now)[0]
    assert (number, when) == ("+14155550202", deadline)


def test_republishing_replaces_the_sets(
    session: Session, redis_client: redis.Redis, now: datetime
) -> None:
    now -= timedelta(days=21)  # a publication is never decided ahead of the host's clock
    _seed(session, now)
    reconcile_releasable(session, redis_client, now=now)
    later = now + timedelta(days=2)  # +14155550202 expired, acc_a keeps one, acc_b keeps one
    summary = reconcile_releasable(session, redis_client, now=later)
    assert summary["published"] == 2
    assert redis_client.zrange(all_key(), 0, -1) == [b"+14155550201", b"+14155550203"]
    much_later = now + timedelta(days=20)
    summary = reconcile_releasable(session, redis_client, now=much_later)
    assert (summary["published"], summary["removed_accounts"]) == (0, 2)
    assert not redis_client.exists(all_key(), account_key("acc_a"), account_key("acc_b"))
    assert [k for k in redis_client.scan_iter("releasable:staging:*")] == []


def test_a_reader_never_sees_half_a_set(
    session: Session, redis_client: redis.Redis, now: datetime
) -> None:
    for i in range(300):
        make_number(
            session,
            account_id=f"acc_{i % 5}",
            phone_number=f"+1415444{i:04d}",
            released_at=now - timedelta(days=1),
        )
    reconcile_releasable(session, redis_client, now=now)
    seen: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        reader = redis.Redis(connection_pool=redis_client.connection_pool)
        while not stop.is_set():
            seen.add(int(reader.zcard(all_key())))

    thread = threading.Thread(target=read)
    thread.start()
    for _ in range(5):
        reconcile_releasable(session, redis_client, now=now)
    stop.set()
    thread.join()
    assert seen == {300}


def test_read_releasable_is_part_of_the_public_contract() -> None:
    import shared

    assert shared.read_releasable is read_releasable
    assert "read_releasable" in shared.__all__
