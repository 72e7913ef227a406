"""Redis's own state, checked: staging keys that cannot leak, a Redis that lost what the relay
acknowledged (emptied, or restored from an older snapshot), the published marker readers rely
on, the eviction policy and RedBeat's schedule entries."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

import shared
from shared.models import PhoneNumber
from shared.releasable import reconcile
from shared.releasable.keys import STREAM
from shared.releasable.read import NotPublished, read_releasable
from shared.releasable.reconcile import STAGING_SECONDS, reconcile_releasable
from shared.releasable.relay import RELAYED_THROUGH, relay_events, relay_meta_key
from shared.retention import repurchasable_numbers
from shared.settings import Settings
from tests.factories import make_numbers
from tests.servers import RedisServer
from worker.app import create_app
from worker.beat import ResilientRedBeatScheduler, _check_worker_redis, check_eviction_policy
from worker.tasks import RECONCILE, RECONCILE_REQUESTED, RELAY

DAY = timedelta(days=1)

pytestmark = pytest.mark.redis


def staging_keys(client: redis.Redis) -> list[bytes]:
    return sorted(client.scan_iter(match="releasable:staging:*"))


def _seed(session: Session, now: datetime, accounts: int = 3) -> None:
    for n in range(accounts):
        make_numbers(
            session,
            account_id=f"acc_s{n}",
            ages={f"+1415555{n:02d}{i:02d}": timedelta(days=1) for i in range(2)},
            now=now,
        )


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_a_reconciliation_failing_mid_build_leaves_no_staging_key(
    session: Session, redis_client: redis.Redis, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(session, now)
    monkeypatch.setattr(reconcile, "CHUNK", 2)
    seen: list[tuple[bytes, int]] = []

    def fail_after_first_chunk(_numbers: int) -> None:
        # Written, and each with its TTL: a SIGKILL here would leave nothing for good.
        seen.extend((key, int(redis_client.ttl(key))) for key in staging_keys(redis_client))
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError, match="mid-build"):
        reconcile_releasable(session, redis_client, now=now, progress=fail_after_first_chunk)
    assert seen
    assert all(0 < ttl <= STAGING_SECONDS for _key, ttl in seen)
    assert staging_keys(redis_client) == []


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_published_sets_keep_no_ttl_and_stale_staging_keys_are_dropped(
    session: Session, redis_client: redis.Redis, now: datetime
) -> None:
    _seed(session, now, accounts=1)
    started = int(redis_client.time()[0])
    legacy = b"releasable:staging:0123456789abcdef:all"  # a version without the TTL
    dead = f"releasable:staging:{started - STAGING_SECONDS - 5}.dead:all".encode()
    live = f"releasable:staging:{started}.other:all".encode()  # another reconciliation's
    for key in (legacy, dead, live):
        redis_client.zadd(key, {"+14155559999": 1})
    reconcile_releasable(session, redis_client, now=now)
    assert staging_keys(redis_client) == [live]
    assert redis_client.ttl("releasable:all") == -1
    assert redis_client.ttl("releasable:account:acc_s0") == -1


# --- a Redis that lost what the relay acknowledged ---------------------------------------------


def offered(factory: sessionmaker[Session], now: datetime) -> set[str]:
    with factory() as session:
        return set(
            session.scalars(select(PhoneNumber.phone_number).where(repurchasable_numbers(now)))
        )


def reads(client: redis.Redis, now: datetime) -> set[str]:
    return {number for number, _ in read_releasable(client, now=now)}


@pytest.mark.postgres
@pytest.mark.processes(moved_clock=False)
def test_a_redis_restored_from_an_older_snapshot_is_noticed_and_rebuilt_at_once(
    pg_factory: sessionmaker[Session], fault_redis: RedisServer, now: datetime, tmp_path: Path
) -> None:
    store = pg_factory.kw["bind"].url.render_as_string(hide_password=False)
    url = fault_redis.url()
    settings = Settings(
        database_url=store, broker_url=url, redis_url=url, NUMBERS_RETENTION_DATA=tmp_path
    )
    relay_task = create_app(settings).tasks[RELAY]
    client = fault_redis.client()
    with pg_factory.begin() as session:
        make_numbers(session, account_id="acc_g", ages={"+14155550701": DAY, "+14155550702": DAY})
    relay_events(pg_factory, client, now=now)
    with pg_factory() as session:
        reconcile_releasable(session, client, now=now)
    assert reads(client, now) == {"+14155550701", "+14155550702"}
    client.set(RECONCILE_REQUESTED, 1, ex=600)  # a request pending at the snapshot's time
    client.save()  # the snapshot an operator restores later
    snapshot = fault_redis.root / "snapshot.rdb"
    shutil.copy(fault_redis.root / "dump.rdb", snapshot)
    with pg_factory.begin() as session:
        shared.repurchase_number(session, account_id="acc_g", phone_number="+14155550701", now=now)
        make_numbers(session, account_id="acc_g", ages={"+14155550703": DAY}, now=now)
    through = relay_events(pg_factory, client, now=now)
    assert through.applied == 3
    behind = int(client.hget(relay_meta_key(), RELAYED_THROUGH) or 0)

    fault_redis.stop()
    shutil.copy(snapshot, fault_redis.root / "dump.rdb")
    fault_redis.start()
    client = fault_redis.client()
    assert reads(client, now) == {"+14155550701", "+14155550702"}  # stale, and it looks fine
    with capture_logs() as logs:
        report = relay_task.apply(kwargs={"now": now.isoformat()}).get()
    assert report["gap"]["through_id"] == behind
    assert report["gap"]["after_id"] < behind
    assert report["unpublished"]
    # The reconciliation is asked for at once, whatever request the snapshot held.
    queued = [json.loads(m) for m in client.lrange("celery", 0, -1)]
    assert [m["headers"]["task"] for m in queued] == [RECONCILE]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["relay.redis_behind"]
    last = client.xrevrange(STREAM, count=1)[0][1]
    assert last[b"kind"] == b"gap"
    assert int(last[b"through_id"]) == behind
    with pytest.raises(NotPublished) as refused:
        read_releasable(client, now=now)
    assert (refused.value.status, refused.value.code) == (503, "releasable_not_published")

    with pg_factory() as session:
        reconcile_releasable(session, client, now=now)
    assert reads(client, now) == offered(pg_factory, now) == {"+14155550702", "+14155550703"}
    assert relay_events(pg_factory, client, now=now).gap is None  # reported once


@pytest.mark.postgres
@pytest.mark.parametrize("emptied", ["restart", "flushall"])
@pytest.mark.processes(moved_clock=False)
def test_a_redis_emptied_is_not_published_until_the_reconciliation(
    pg_factory: sessionmaker[Session], fault_redis: RedisServer, now: datetime, emptied: str
) -> None:
    """Readers saw an empty, then partial, set for seconds; now they are told to wait."""
    client = fault_redis.client()
    with pg_factory.begin() as session:
        make_numbers(session, account_id="acc_e", ages={"+14155550711": DAY})
    relay_events(pg_factory, client, now=now)
    with pg_factory() as session:
        reconcile_releasable(session, client, now=now)
    if emptied == "restart":
        fault_redis.stop()
        fault_redis.start()  # no persistence: empty
        client = fault_redis.client()
    else:
        client.flushall()
    with pytest.raises(NotPublished):
        read_releasable(client, now=now)
    with pg_factory.begin() as session:
        make_numbers(session, account_id="acc_e", ages={"+14155550712": DAY}, now=now)
    report = relay_events(pg_factory, client, now=now)  # the new release only: partial
    assert report.gap is not None
    assert report.gap["after_id"] == 0
    assert client.zrange("releasable:all", 0, -1) == [b"+14155550712"]
    with pytest.raises(NotPublished):
        read_releasable(client, now=now)
    with pg_factory() as session:
        reconcile_releasable(session, client, now=now)
    assert reads(client, now) == {"+14155550711", "+14155550712"}


def test_an_empty_publication_reads_as_empty_not_as_unpublished(
    session: Session, redis_client: redis.Redis, now: datetime
) -> None:
    with pytest.raises(NotPublished):
        read_releasable(redis_client, now=now)
    reconcile_releasable(session, redis_client, now=now)
    assert read_releasable(redis_client, now=now) == []
    assert read_releasable(redis_client, account_id="acc_none", now=now) == []


# --- RedBeat's schedule and Redis's eviction policy ---------------------------------------------


def test_beat_re_adds_a_schedule_entry_redis_lost(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/store.db",
        broker_url=redis_url,
        redis_url=redis_url,
        NUMBERS_RETENTION_DATA=tmp_path,
    )
    app = create_app(settings)
    beat = ResilientRedBeatScheduler(app=app)
    key = b"redbeat:publish-releasable"
    try:
        beat.tick()  # takes the lock, installs the schedule
        assert redis_client.zscore("redbeat::schedule", key) is not None
        redis_client.delete(key)  # evicted at maxmemory, or deleted by hand
        # When it falls due, RedBeat finds no entry and drops it from its schedule for good.
        redis_client.zrem("redbeat::schedule", key)
        with capture_logs() as logs:
            beat.tick()  # the next tick puts it back
        assert redis_client.exists(key)
        assert redis_client.zscore("redbeat::schedule", key) is not None
        restored = [e["entries"] for e in logs if e["event"] == "beat.entries_restored"]
        assert restored == [["publish-releasable"]]
        assert beat.restore_lost_entries() == []
    finally:
        beat.close()


@pytest.mark.processes(moved_clock=False)
def test_an_eviction_policy_that_may_drop_the_sets_is_an_error_in_the_log(
    fault_redis: RedisServer, tmp_path: Path
) -> None:
    client = fault_redis.client()
    with capture_logs() as logs:
        assert check_eviction_policy(client) == "noeviction"
    assert logs == []
    client.config_set("maxmemory-policy", "allkeys-lru")
    with capture_logs() as logs:
        assert check_eviction_policy(client) == "allkeys-lru"
    assert [(e["event"], e["log_level"], e["policy"]) for e in logs] == [
        ("redis.may_evict", "error", "allkeys-lru")
    ]
    # What a worker does when it is ready (celery's worker_ready, its consumer the sender).
    url = fault_redis.url()
    app = create_app(
        Settings(database_url=f"sqlite:///{tmp_path}/s.db", redis_url=url, broker_url=url)
    )
    with capture_logs() as logs:
        _check_worker_redis(sender=SimpleNamespace(app=app))
    assert [e["event"] for e in logs] == ["redis.may_evict"]


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_a_rebuild_that_outlived_its_staging_keys_replaces_nothing(
    session: Session, redis_client: redis.Redis, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its keys may have expired, or been dropped as stale by another reconciliation: an
    account set missing from them would have been published as empty."""
    _seed(session, now, accounts=2)
    reconcile_releasable(session, redis_client, now=now)
    before = reads(redis_client, now)
    monkeypatch.setattr(reconcile, "STAGING_SECONDS", 0)  # expired as soon as written
    with pytest.raises(shared.InternalError) as refused:
        reconcile_releasable(session, redis_client, now=now)
    assert refused.value.code == "publication_too_slow"
    assert reads(redis_client, now) == before
    assert len(before) == 4
    assert staging_keys(redis_client) == []
