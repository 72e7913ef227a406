"""The relay against real PostgreSQL and Redis: order, idempotence, a relay killed mid-way."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

import shared
from shared.events import EVENTS
from shared.models import PhoneNumber
from shared.releasable.fencing import LockLost, fenced, writer_lock
from shared.releasable.keys import STREAM, account_key, all_key, applied_key, meta_key
from shared.releasable.reconcile import reconcile_releasable
from shared.releasable.record import recording_failures
from shared.releasable.relay import relay_events, relay_meta_key
from shared.retention import RETENTION, repurchasable_numbers
from tests.factories import make_number, make_numbers
from tests.purging import purge_expired

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

Factory = sessionmaker[Session]


def stream_ids(client: redis.Redis) -> list[int]:
    return [int(fields[b"id"]) for _, fields in client.xrange(STREAM)]


def published(client: redis.Redis, now: datetime, account_id: str | None = None) -> set[str]:
    """What the sets offer at `now`, published or not (read_releasable refuses to read sets no
    reconciliation published: tests/test_redis_state.py)."""
    key = all_key() if account_id is None else account_key(account_id)
    return {n.decode() for n in client.zrangebyscore(key, f"({now.timestamp()}", "+inf")}


def store_offers(factory: Factory, now: datetime) -> set[str]:
    with factory() as session:
        return set(
            session.scalars(select(PhoneNumber.phone_number).where(repurchasable_numbers(now)))
        )


def after_the_snapshot(monkeypatch: pytest.MonkeyPatch, then: Callable[[], None]) -> None:
    """Run `then` in the reconciliation, just after it has read the store's releasable numbers."""
    import shared.releasable.reconcile as reconcile

    build = reconcile._build

    def build_then(*args: object, **kwargs: object) -> object:
        per_account = build(*args, **kwargs)  # type: ignore[arg-type]
        then()
        return per_account

    monkeypatch.setattr(reconcile, "_build", build_then)


def outbox(factory: Factory) -> int:
    with factory() as session:
        return session.execute(select(func.count()).select_from(EVENTS)).scalar_one()


def test_release_repurchase_purge_reach_the_sets_and_the_stream(
    pg_factory: Factory, redis_client: redis.Redis, now: datetime
) -> None:
    with pg_factory.begin() as session:
        make_number(session, account_id="acc_r", phone_number="+14155550401", released_at=now)
        make_number(session, account_id="acc_r", phone_number="+14155550402", released_at=now)
        make_number(
            session, account_id="acc_r", phone_number="+14155550403", released_at=now - RETENTION
        )
    report = relay_events(pg_factory, redis_client, now=now)
    assert (report.status, report.applied, report.remaining) == ("completed", 6, 0)
    assert published(redis_client, now, "acc_r") == {"+14155550401", "+14155550402"}
    assert report.unpublished  # no reconciliation ran yet
    with pg_factory.begin() as session:
        shared.repurchase_number(session, account_id="acc_r", phone_number="+14155550402", now=now)
    purge_expired(pg_factory, now=now)
    with capture_logs() as logs:
        report = relay_events(pg_factory, redis_client, now=now)
    assert (report.applied, outbox(pg_factory)) == (2, 0)
    assert published(redis_client, now, "acc_r") == {"+14155550401"}
    assert [e["event"] for e in logs] == ["relay.applied"]
    entries = redis_client.xrange(STREAM)
    assert [f[b"kind"] for _, f in entries[-2:]] == [b"repurchased", b"purged"]
    released = next(f for _, f in entries if f[b"kind"] == b"released")
    assert released == {
        b"id": released[b"id"],
        b"kind": b"released",
        b"phone_number": b"+14155550401",
        b"account_id": b"acc_r",
        b"number_id": released[b"number_id"],
        b"deadline": (now + RETENTION).isoformat().replace("+00:00", "Z").encode(),
        b"occurred_at": now.isoformat().replace("+00:00", "Z").encode(),
    }
    assert b"deadline" not in entries[-2][1]  # an active number has no deadline
    # Idempotent: nothing left to relay, nothing applied or streamed twice.
    again = relay_events(pg_factory, redis_client, now=now)
    assert (again.applied, again.batches) == (0, 0)
    assert len(stream_ids(redis_client)) == len(set(stream_ids(redis_client))) == 8


def test_remaining_is_the_outbox_left_and_an_emptied_outbox_is_not_counted(
    pg_factory: Factory, redis_client: redis.Redis, now: datetime
) -> None:
    with pg_factory.begin() as session:
        for i in range(5):  # registered and released: 10 events
            make_number(
                session, account_id="acc_m", phone_number=f"+1415555048{i}", released_at=now
            )
    cut = relay_events(pg_factory, redis_client, now=now, batch_size=4, max_seconds=0)
    assert (cut.status, cut.applied, cut.remaining) == ("limit_reached", 4, 6)
    counts: list[str] = []

    def note_counts(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "count(" in statement.lower():
            counts.append(statement)

    engine = pg_factory.kw["bind"]
    event.listen(engine, "before_cursor_execute", note_counts)
    try:
        done = relay_events(pg_factory, redis_client, now=now)
    finally:
        event.remove(engine, "before_cursor_execute", note_counts)
    assert (done.status, done.applied, done.remaining) == ("completed", 6, 0)
    assert counts == []  # the run ended on an empty outbox: nothing to count
    assert outbox(pg_factory) == 0


def test_a_lower_id_committed_late_is_not_skipped(
    pg_factory: Factory, redis_client: redis.Redis, now: datetime
) -> None:
    """Ids come from a sequence, not in commit order: no high-water mark may pass them by."""
    with pg_factory.begin() as session:
        make_number(session, account_id="acc_r", phone_number="+14155550411")
        make_number(session, account_id="acc_r", phone_number="+14155550412")
    relay_events(pg_factory, redis_client, now=now)
    slow = pg_factory()
    slow.begin()
    shared.release_number(slow, account_id="acc_r", phone_number="+14155550411", now=now)
    with pg_factory.begin() as session:  # a higher id, committed first
        shared.release_number(session, account_id="acc_r", phone_number="+14155550412", now=now)
    assert relay_events(pg_factory, redis_client, now=now).applied == 1
    slow.commit()
    slow.close()
    assert relay_events(pg_factory, redis_client, now=now).applied == 1
    assert published(redis_client, now) == {"+14155550411", "+14155550412"}


def test_interrupted_between_redis_and_commit_the_next_relay_applies_nothing_twice(
    pg_factory: Factory, redis_client: redis.Redis, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg_factory.begin() as session:
        for i in range(5):
            make_number(
                session, account_id="acc_r", phone_number=f"+1415555042{i}", released_at=now
            )

    def crash(*_args: object) -> None:
        raise RuntimeError("killed after EXEC, before the outbox's DELETE")

    with monkeypatch.context() as patch:
        patch.setattr("shared.releasable.relay.delete", crash)
        with pytest.raises(RuntimeError):
            relay_events(pg_factory, redis_client, now=now, batch_size=4)
    # Applied to Redis, still in the outbox, and marked as applied.
    assert outbox(pg_factory) == 10
    assert len(redis_client.smembers(applied_key())) == 4
    report = relay_events(pg_factory, redis_client, now=now, batch_size=4)
    assert (report.applied, report.already_applied, report.remaining) == (6, 4, 0)
    assert sorted(stream_ids(redis_client)) == sorted(set(stream_ids(redis_client)))
    assert len(stream_ids(redis_client)) == 10
    assert published(redis_client, now) == store_offers(pg_factory, now)
    assert redis_client.smembers(applied_key()) == set()


def test_one_writer_at_a_time_and_a_stale_one_writes_nothing(
    pg_factory: Factory, redis_client: redis.Redis, now: datetime
) -> None:
    with pg_factory.begin() as session:
        make_number(session, account_id="acc_r", phone_number="+14155550431", released_at=now)
    held = writer_lock(redis_client, seconds=0.3)
    assert held.acquire(blocking=False)
    assert relay_events(pg_factory, redis_client, now=now).status == "skipped"
    time.sleep(0.4)  # the holder stalls past its lock's expiry; another writer takes over
    assert relay_events(pg_factory, redis_client, now=now).applied == 2
    with pytest.raises(LockLost):
        fenced(redis_client, held, lambda pipe: pipe.set("stale-write", 1))
    assert not redis_client.exists("stale-write")


RELAY_CHILD = """
import sys
import redis
from shared.db import make_engine, make_session_factory
from shared.releasable.relay import relay_events

factory = make_session_factory(make_engine(sys.argv[1]))
client = redis.Redis.from_url(sys.argv[2])
# One batch per call, a line per batch: the test kills it in the middle of the next one.
while relay_events(factory, client, batch_size=10, max_seconds=0).remaining:
    print("batch", flush=True)
"""


@pytest.mark.processes(moved_clock=False)
def test_a_relay_killed_with_sigkill_loses_and_duplicates_nothing(
    pg_factory: Factory,
    pg_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    wall_now: datetime,
    tmp_path: Path,
) -> None:
    now = wall_now  # the relay child decides on the host's clock
    with pg_factory.begin() as session:
        for i in range(400):
            make_number(
                session,
                account_id=f"acc_k{i // 40}",
                phone_number=f"+1415556{i:04d}",
                released_at=now - timedelta(days=i % 12),
            )
            if i % 3 == 0:
                shared.repurchase_number(
                    session, account_id=f"acc_k{i // 40}", phone_number=f"+1415556{i:04d}", now=now
                )
    events = outbox(pg_factory)
    script = tmp_path / "relay_child.py"
    script.write_text(RELAY_CHILD)
    for batches in (5, 17, 29, 41):
        with subprocess.Popen(
            [sys.executable, str(script), pg_url, redis_url], stdout=subprocess.PIPE
        ) as child:
            assert child.stdout is not None
            seen = 0
            while seen < batches:  # its log lines go to stdout too
                line = child.stdout.readline()
                assert line, "the relay ended before it could be killed"
                seen += line == b"batch\n"
            child.send_signal(signal.SIGKILL)
            assert child.wait(10) == -signal.SIGKILL
        # A killed relay leaves its lock to expire; the test does not wait for that.
        redis_client.delete(writer_lock(redis_client, seconds=1).name)
    assert 0 < outbox(pg_factory) < events
    report = relay_events(pg_factory, redis_client, max_seconds=60)
    assert report.remaining == 0
    ids = stream_ids(redis_client)
    assert len(ids) == len(set(ids)) == events
    assert published(redis_client, now) == store_offers(pg_factory, now)
    assert published(redis_client, now, "acc_k3") == {
        n for n in store_offers(pg_factory, now) if 120 <= int(n[-4:]) < 160
    }
    assert len(store_offers(pg_factory, now)) > 100
    assert redis_client.smembers(applied_key()) == set()


def test_reconciliation_repairs_and_reports_drift(
    pg_factory: Factory, redis_client: redis.Redis, now: datetime
) -> None:
    with pg_factory.begin() as session:
        make_numbers(
            session,
            account_id="acc_d",
            ages={f"+1415555044{i}": timedelta(days=i) for i in range(4)},
            now=now,
        )
    with pg_factory() as session:
        first = reconcile_releasable(session, redis_client, now=now)
    assert (first["first"], first["drift_added"], first["published"]) == (True, 4, 4)
    score = (now + RETENTION).timestamp()
    for key in ("releasable:all", account_key("acc_d")):
        redis_client.zrem(key, "+14155550440")  # lost
        redis_client.zadd(key, {"+19995550000": score})  # never offered
        redis_client.zadd(key, {"+14155550441": score + 60})  # wrong deadline
        redis_client.zadd(key, {"+18885550000": now.timestamp() - 1})  # expired
    later = now + timedelta(seconds=1)
    with pg_factory() as session, capture_logs() as logs:
        summary = reconcile_releasable(session, redis_client, now=later)
    drift = {k: summary[k] for k in ("drift_added", "drift_removed", "drift_rescored", "trimmed")}
    assert drift == {"drift_added": 1, "drift_removed": 1, "drift_rescored": 1, "trimmed": 1}
    assert [e["event"] for e in logs] == ["releasable.published", "releasable.drift_repaired"]
    assert published(redis_client, later, "acc_d") == store_offers(pg_factory, later)
    assert redis_client.zrange("releasable:all", 0, -1) == redis_client.zrange(
        account_key("acc_d"), 0, -1
    )
    meta = {k.decode(): v.decode() for k, v in redis_client.hgetall("releasable:meta").items()}
    assert meta["generated_at"] == summary["generated_at"]
    assert (meta["count"], meta["drift_added"], meta["trimmed"]) == ("4", "1", "1")
    assert {"published", "first", "replayed", "seconds"}.isdisjoint(meta)  # the summary's only


def test_a_failed_first_publication_still_counts_as_nothing_published(
    pg_factory: Factory, redis_client: redis.Redis, now: datetime
) -> None:
    """A failure marker shares the metadata hash with the last success; it is no success."""
    with pg_factory.begin() as session:
        make_number(session, account_id="acc_f", phone_number="+14155550471", released_at=now)
    with pytest.raises(RuntimeError), recording_failures(redis_client):
        raise RuntimeError("the first reconciliation on an empty Redis failed")
    assert redis_client.exists(meta_key())
    assert relay_events(pg_factory, redis_client, now=now).unpublished  # one is still due
    with pg_factory.begin() as session:  # not relayed: the first publication adds it
        make_number(session, account_id="acc_f", phone_number="+14155550472", released_at=now)
    with pg_factory() as session, capture_logs() as logs:
        summary = reconcile_releasable(session, redis_client, now=now)
    assert (summary["first"], summary["drift_added"]) == (True, 1)
    assert [e["event"] for e in logs] == ["releasable.published"]  # a first one repairs nothing
    assert not relay_events(pg_factory, redis_client, now=now).unpublished


def test_events_relayed_during_a_reconciliation_survive_its_swap(
    pg_factory: Factory, redis_client: redis.Redis, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg_factory.begin() as session:
        make_number(session, account_id="acc_s", phone_number="+14155550451", released_at=now)
        make_number(session, account_id="acc_s", phone_number="+14155550452", released_at=now)
        make_number(session, account_id="acc_t", phone_number="+14155550453")
    relay_events(pg_factory, redis_client, now=now)

    def change() -> None:
        # After the snapshot: a repurchase and a release commit and the relay applies them.
        with pg_factory.begin() as session:
            shared.repurchase_number(
                session, account_id="acc_s", phone_number="+14155550452", now=now
            )
            shared.release_number(session, account_id="acc_t", phone_number="+14155550453", now=now)
        assert relay_events(pg_factory, redis_client, now=now).applied == 2

    after_the_snapshot(monkeypatch, change)
    with pg_factory() as session:
        summary = reconcile_releasable(session, redis_client, now=now)
    assert summary["replayed"] == 2
    assert published(redis_client, now) == {"+14155550451", "+14155550453"}
    assert published(redis_client, now, "acc_t") == {"+14155550453"}
    assert published(redis_client, now) == store_offers(pg_factory, now)


def test_a_stream_trimmed_during_a_reconciliation_replaces_nothing(
    pg_factory: Factory, redis_client: redis.Redis, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg_factory.begin() as session:
        make_number(session, account_id="acc_s", phone_number="+14155550461", released_at=now)
    relay_events(pg_factory, redis_client, now=now)

    def repurchase_then_trim() -> None:
        with pg_factory.begin() as session:
            shared.repurchase_number(
                session, account_id="acc_s", phone_number="+14155550461", now=now
            )
        relay_events(pg_factory, redis_client, now=now)
        redis_client.xtrim(STREAM, maxlen=0)

    after_the_snapshot(monkeypatch, repurchase_then_trim)
    with pg_factory() as session, pytest.raises(shared.InternalError) as refused:
        reconcile_releasable(session, redis_client, now=now)
    assert refused.value.code == "publication_stream_trimmed"
    assert published(redis_client, now) == set()  # the relay's removal stands
    assert [k for k in redis_client.scan_iter("releasable:staging:*")] == []
    # Beside the stream and the publication's hash, the relay's record (releasable:relay:meta).
    assert Counter(k.split(b":")[0] for k in redis_client.scan_iter()) == Counter(
        {b"releasable": 2, b"numbers": 1}
    )
    assert redis_client.exists(relay_meta_key())
