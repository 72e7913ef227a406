"""The event stream against real PostgreSQL and Redis: a consumer group that reads nothing loses
nothing until the ceiling, and the loss at the ceiling is counted and exported; read entries
older than the audit period go, unread or unacknowledged ones stay."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from shared.releasable.keys import STREAM
from shared.releasable.relay import relay_events
from shared.stream import consumer_groups, stream_state, trim_stream
from tests.factories import make_number
from tests.test_metrics import scrape
from worker.metrics import Reader, RetentionCollector

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

Factory = sessionmaker[Session]
CEILING = 50


def register(factory: Factory, first: int, count: int) -> None:
    """`count` numbers bought: one `registered` event each."""
    with factory.begin() as session:
        for n in range(first, first + count):
            make_number(session, account_id=f"acc_st{n // 40}", phone_number=f"+1415556{n:04d}")


def event_ids(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[int]:
    return [int(fields[b"id"]) for _, fields in entries]


def test_a_group_that_reads_nothing_loses_nothing_until_the_ceiling(
    pg_factory: Factory, redis_client: redis.Redis
) -> None:
    redis_client.xgroup_create(STREAM, "billing", id="$", mkstream=True)
    relay = {"stream_maxlen": CEILING, "batch_size": 20}
    register(pg_factory, 0, 45)
    assert relay_events(pg_factory, redis_client, **relay).applied == 45
    assert redis_client.xlen(STREAM) == 45  # past the old per-XADD trim, nothing unread went
    assert stream_state(redis_client)["dropped_unread"] == 0

    register(pg_factory, 45, 15)  # 60 unread: 10 over the ceiling
    with capture_logs() as logs:
        assert relay_events(pg_factory, redis_client, **relay).applied == 15
    state = stream_state(redis_client)
    assert (state["entries"], state["dropped_unread"]) == (CEILING, 10)
    assert state["groups"] == [{"name": "billing", "pending": 0, "lag": CEILING}]
    dropped = [e for e in logs if e["event"] == "stream.dropped_unread"]
    assert [(e["dropped"], e["groups"]) for e in dropped] == [(10, ["billing"])]
    # The group reads the newest CEILING events, the oldest ten are the ones dropped.
    read = redis_client.xreadgroup("billing", "b1", {STREAM: ">"}, count=100)
    ids = event_ids(read[0][1])
    assert len(ids) == CEILING
    assert ids == sorted(ids)

    reader = Reader(pg_factory, redis_client, stream_maxlen=CEILING)
    samples = scrape(RetentionCollector(reader, cache_seconds=0))
    assert samples[("numbers_retention_stream_dropped_unread_total", ())] == 10
    assert samples[("numbers_retention_stream_entries", ())] == CEILING
    assert samples[("numbers_retention_stream_maxlen", ())] == CEILING
    assert samples[("numbers_retention_stream_group_lag", (("group", "billing"),))] == 0
    assert samples[("numbers_retention_stream_group_pending", (("group", "billing"),))] == CEILING


def test_without_a_group_the_ceiling_alone_applies_uncounted(
    pg_factory: Factory, redis_client: redis.Redis
) -> None:
    register(pg_factory, 0, 60)
    relay_events(pg_factory, redis_client, stream_maxlen=CEILING, batch_size=20)
    assert stream_state(redis_client) == {"entries": CEILING, "groups": [], "dropped_unread": 0}


def test_old_entries_go_once_read_and_acknowledged_by_every_group(
    redis_client: redis.Redis,
) -> None:
    # Stream ids are Redis's clock in ms: these five are from 1970, past any audit period.
    old = [f"{ms}-0" for ms in range(1000, 1005)]
    for stream_id in old:
        redis_client.xadd(STREAM, {"kind": "registered"}, id=stream_id)
    redis_client.xadd(STREAM, {"kind": "registered"})  # now: within the period
    redis_client.xgroup_create(STREAM, "billing", id="0")
    redis_client.xgroup_create(STREAM, "audit", id="0")
    billing = redis_client.xreadgroup("billing", "b1", {STREAM: ">"}, count=4)[0][1]
    redis_client.xack(STREAM, "billing", *[entry_id for entry_id, _ in billing])
    audit = redis_client.xreadgroup("audit", "a1", {STREAM: ">"}, count=3)[0][1]
    redis_client.xack(STREAM, "audit", audit[0][0], audit[2][0])  # 1001-0 stays pending
    floors = {g.name: g.floor for g in consumer_groups(redis_client)}
    assert floors == {"billing": "1003-1", "audit": "1001-0"}  # after 1003-0; its pending one

    trim = trim_stream(redis_client, maxlen=1000, retention_days=1)
    assert (trim.trimmed, trim.dropped_unread) == (1, 0)  # 1000-0: read by both
    kept = [entry_id.decode() for entry_id, _ in redis_client.xrange(STREAM)]
    assert kept[:4] == old[1:]
    assert len(kept) == 5

    redis_client.xack(STREAM, "audit", audit[1][0])
    assert trim_stream(redis_client, maxlen=1000, retention_days=1).trimmed == 2  # to 1003-0
    assert redis_client.xrange(STREAM)[0][0] == b"1003-0"
