"""Faults on real processes: a worker SIGKILLed mid-purge, PostgreSQL restarted under a run,
Redis away during `publish_releasable`, several workers purging at once.

Each test seeds a store, injects the fault into real `celery worker`/`celery beat` processes
and then checks the end state row by row: every overdue number tombstoned exactly once, with
its fields, and every other number untouched. Servers that a test stops or restarts are its
own (tests/servers.py); the shared PostgreSQL and Redis are only used as they are.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from shared import purge as purge_module
from shared.db import make_engine, make_session_factory
from shared.demo import seed_demo
from shared.models import PurgedNumber
from shared.purge import lock as purge_lock
from shared.releasable.read import read_releasable
from shared.releasable.record import last_reconciliation
from shared.retention import RETENTION
from tests.factories import make_numbers
from tests.processes import (
    Process,
    service_env,
    start_beat,
    start_worker,
    start_worker_and_beat,
    wait_for,
)
from tests.purging import purge_expired
from tests.servers import PostgresServer, RedisServer, celery_client, task_meta, wait_task
from tests.stores import clear_the_next_hour

# Restarts, kills and lost services: what the processes do about them no date changes (the
# clock-moved lanes run the purges, leases and heartbeats that do decide by the date).
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.processes(moved_clock=False),
]

# Figures quoted in docs/guarantees.md; change them together.
KILL_NUMBERS = 30_000  # seeded for the SIGKILL test, about two thirds of them overdue
KILL_BATCH = 20  # rows per purge transaction: a run is ~1,000 batches, easy to cut in two
RESTART_NUMBERS = 20_000
RESTART_BATCH = 10  # ~1,400 batches: the restart (a subprocess away) lands well inside the run
RACING_WORKERS = 3  # worker processes, 2 pool processes each
RACING_NUMBERS = 12_000
RACING_MAX_ROWS = 1_500  # per run, so many runs (on different workers) share the work
FAST_RETRIES = {"TASK_RETRY_BACKOFF": "1", "TASK_RETRY_BACKOFF_MAX": "2"}

NUMBER_COLUMNS = (
    "id", "account_id", "phone_number", "label", "created_at", "country_code", "number_type",
    "billing_status", "next_billing_date", "monthly_price", "released_at", "purge_hold",
    "provider_number_id", "purge_state",
)  # fmt: skip
# What a tombstone keeps of its number, and of the number's campaign assignment.
TOMBSTONE_COLUMNS = (
    "number_id", "account_id", "phone_number", "label", "created_at", "country_code",
    "number_type", "next_billing_date", "monthly_price", "released_at", "provider_number_id",
    "campaign_id", "a2p_status",
)  # fmt: skip
RELEASED_AT, HELD = NUMBER_COLUMNS.index("released_at"), NUMBER_COLUMNS.index("purge_hold")


def expected_tombstone(row: tuple[Any, ...], campaign: tuple[Any, ...] | None) -> tuple[Any, ...]:
    """The tombstone that number `row` (NUMBER_COLUMNS) with `campaign` must leave."""
    fields = dict(zip(NUMBER_COLUMNS, row, strict=True))
    fields["number_id"] = fields["id"]
    fields["campaign_id"], fields["a2p_status"] = campaign or (None, None)
    return tuple(fields[name] for name in TOMBSTONE_COLUMNS)


@dataclass
class StoreState:
    numbers: dict[int, tuple[Any, ...]]
    campaigns: dict[int, tuple[Any, ...]]
    tombstones: list[tuple[Any, ...]]


def read_state(engine: Engine) -> StoreState:
    with engine.connect() as connection:
        numbers = {
            row[0]: tuple(row)
            for row in connection.execute(
                text(f"SELECT {', '.join(NUMBER_COLUMNS)} FROM phone_numbers")
            )
        }
        campaigns = {
            row[0]: tuple(row[1:])
            for row in connection.execute(
                text("SELECT number_id, campaign_id, status FROM campaign_assignments")
            )
        }
        tombstones = [
            tuple(row)
            for row in connection.execute(
                text(f"SELECT {', '.join(TOMBSTONE_COLUMNS)} FROM purged_numbers")
            )
        ]
    return StoreState(numbers, campaigns, tombstones)


@dataclass
class Seeded:
    before: StoreState
    overdue: set[int]  # ids the purge must tombstone, exactly once

    @property
    def kept(self) -> dict[int, tuple[Any, ...]]:
        return {k: v for k, v in self.before.numbers.items() if k not in self.overdue}


def seed_store(engine: Engine, *, numbers: int, now: datetime) -> Seeded:
    """Demo data, most of it released, about two thirds overdue, some on hold."""
    seed_demo(
        engine,
        numbers=numbers,
        accounts=max(numbers // 150, 1),
        now=now,
        released_share=0.95,
        window_days=60,
        seed=7,
    )
    with engine.begin() as connection:
        clear_the_next_hour(connection, now)
    cut = now - RETENTION
    before = read_state(engine)
    overdue = {
        id_
        for id_, row in before.numbers.items()
        if row[RELEASED_AT] is not None and row[RELEASED_AT] <= cut and not row[HELD]
    }
    assert 0 < len(overdue) < len(before.numbers)
    return Seeded(before, overdue)


def tombstone_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM purged_numbers")).scalar_one())


def assert_consistent(engine: Engine, seeded: Seeded) -> StoreState:
    """Mid-way or at the end: each overdue number is a row or a tombstone, never both or neither;
    every other number is exactly as it was; a tombstone keeps its number's fields."""
    state = read_state(engine)
    assert {k: v for k, v in state.numbers.items() if k not in seeded.overdue} == seeded.kept
    for id_, row in state.numbers.items():
        if id_ in seeded.overdue:
            assert row == seeded.before.numbers[id_]
    stones = Counter(stone[0] for stone in state.tombstones)
    assert [id_ for id_, n in stones.items() if n > 1] == []  # exactly once
    assert set(stones) <= seeded.overdue  # nothing else was purged
    assert set(stones).isdisjoint(state.numbers)  # never both
    assert set(stones) | (seeded.overdue & set(state.numbers)) == seeded.overdue  # never neither
    for stone in state.tombstones:
        number_id = stone[0]
        assert stone == expected_tombstone(
            seeded.before.numbers[number_id], seeded.before.campaigns.get(number_id)
        )
    assert state.campaigns == {
        k: v for k, v in seeded.before.campaigns.items() if k in state.numbers
    }
    return state


def assert_all_purged(engine: Engine, seeded: Seeded) -> None:
    state = assert_consistent(engine, seeded)
    assert len(state.tombstones) == len(seeded.overdue)
    assert set(state.numbers) == set(seeded.kept)


def retry_countdowns(process: Process, task_name: str) -> list[int]:
    """The countdowns Celery logged for retries of `task_name` ("Retry in 2s: ...")."""
    pattern = re.compile(r"Retry in (\d+)s")
    return [
        int(match.group(1))
        for event in process.events()
        if task_name in str(event.get("event", ""))
        and (match := pattern.search(str(event.get("event", ""))))
    ]


# --- 1. SIGKILL in the middle of a large purge ------------------------------------------------


def test_sigkill_mid_purge_then_restart_finishes_exactly_once(
    pg_store: Engine,
    process_env: Callable[..., dict[str, str]],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    seeded = seed_store(pg_store, numbers=KILL_NUMBERS, now=datetime.now(UTC))
    env = process_env(
        PURGE_EVERY_SECONDS="2",
        PUBLISH_EVERY_SECONDS="3600",
        # Not the relay: its runs over the seed's 60,000 events would be what `stop()` cuts.
        RELAY_EVERY_SECONDS="3600",
        PURGE_BATCH_SIZE=str(KILL_BATCH),
    )
    beat = start_beat(env, tmp_path / "beat.log", tmp_path / "beat-schedule")
    first = start_worker(env, tmp_path / "worker-1.log", name="w1")
    second: Process | None = None
    try:
        wait_for(
            lambda: tombstone_count(pg_store) > 0,
            timeout=60,
            interval=0.01,
            what="the first purge batch",
        )
        first.kill(signal.SIGKILL)
        first.popen.wait(10)
        cut_at = tombstone_count(pg_store)
        assert 0 < cut_at < len(seeded.overdue), "the kill did not land mid-run"
        assert_consistent(pg_store, seeded)

        second = start_worker(env, tmp_path / "worker-2.log", name="w2")
        wait_for(
            lambda: tombstone_count(pg_store) >= len(seeded.overdue),
            timeout=90,
            what="the restarted worker to finish the purge",
        )
        wait_for(
            lambda: any(e["event"] == "purge.finished" for e in second.events()),  # type: ignore[union-attr]
            timeout=30,
            what="purge.finished from the restarted worker",
        )
    finally:
        beat.stop()
        first.stop()
        if second is not None:
            second.stop()
    assert_all_purged(pg_store, seeded)
    assert "Traceback" not in second.output(), second.output()[-3000:]


# --- 2. PostgreSQL restarted during a run -----------------------------------------------------


def test_postgres_restart_mid_run_fails_cleanly_and_the_retry_finishes(
    fault_pg: PostgresServer, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    engine = make_engine(fault_pg.url)
    try:
        seeded = seed_store(engine, numbers=RESTART_NUMBERS, now=datetime.now(UTC))
        env = service_env(
            database_url=fault_pg.url,
            redis_url=redis_url,
            data_dir=tmp_path,
            PURGE_BATCH_SIZE=str(RESTART_BATCH),
            **FAST_RETRIES,
        )
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            with celery_client(redis_url) as client:
                task_id = client.send_task("numbers.purge_expired").id
            wait_for(
                lambda: tombstone_count(engine) > 0,
                timeout=60,
                interval=0.01,
                what="the first purge batch",
            )
            fault_pg.restart()
            meta = wait_task(redis_client, task_id, timeout=90)
        finally:
            worker.stop()
        summary = meta["result"]
        assert meta["retries"] >= 1, meta  # the first attempt failed and was retried
        assert (summary["status"], summary["remaining"]) == ("completed", 0)
        assert 0 < summary["purged"] < len(seeded.overdue)  # the retry finished the rest
        assert_all_purged(engine, seeded)
        assert retry_countdowns(worker, "numbers.purge_expired"), worker.output()[-3000:]
        assert "OperationalError" in worker.output()
        assert worker.popen.returncode == 0  # the worker itself never crashed
        # The run cut short is recorded as failed when the database lets us, else left
        # running; either way the retry's run is recorded as completed.
        with engine.connect() as connection:
            statuses = Counter(connection.scalars(text("SELECT status FROM purge_runs")))
        assert statuses["completed"] >= 1
    finally:
        engine.dispose()


def test_a_run_cut_by_a_database_restart_is_logged_and_not_left_running(
    fault_pg: PostgresServer,
) -> None:
    engine = make_engine(fault_pg.url)
    factory = make_session_factory(engine)
    try:
        seed_store(engine, numbers=RESTART_NUMBERS, now=datetime.now(UTC))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                purge_expired(factory, batch_size=RESTART_BATCH)
            except OperationalError as error:
                errors.append(error)

        with capture_logs() as logs:
            runner = threading.Thread(target=run)
            runner.start()
            wait_for(lambda: tombstone_count(engine) > 0, timeout=60, interval=0.01)
            fault_pg.restart()
            runner.join(60)
        assert errors, "the restart did not land mid-run"
        assert [e for e in logs if e["event"] == "purge.failed"]
        purge_expired(factory)  # the next run
        with engine.connect() as connection:
            statuses = Counter(connection.scalars(text("SELECT status FROM purge_runs")))
        assert statuses == {"failed": 1, "completed": 1}
    finally:
        engine.dispose()


# --- 3. Redis unreachable during publish_releasable -------------------------------------------


def _seed_releasable(engine: Engine, now: datetime, count: int = 12) -> set[str]:
    factory = make_session_factory(engine)
    fresh = {f"+1415440{i:04d}" for i in range(count)}
    with factory.begin() as session:
        make_numbers(
            session,
            account_id="acc_pub",
            ages=dict.fromkeys(sorted(fresh), timedelta(days=3)),
            now=now,
        )
    return fresh


def test_publish_retries_with_backoff_while_redis_is_away(
    pg_store: Engine,
    process_env: Callable[..., dict[str, str]],
    redis_url: str,
    redis_client: redis.Redis,
    fault_redis: RedisServer,
    tmp_path: Path,
) -> None:
    """The releasable set's Redis is down when the task runs: it retries with growing,
    capped, jittered delays, and publishes once Redis is back. The broker stays up."""
    fresh = _seed_releasable(pg_store, datetime.now(UTC))
    env = process_env(**FAST_RETRIES)
    env |= {"REDIS_URL": fault_redis.url(), "RESULT_BACKEND": redis_url}
    fault_redis.stop()
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        with celery_client(redis_url) as client:
            task_id = client.send_task("numbers.publish_releasable").id
        wait_for(
            lambda: len(retry_countdowns(worker, "numbers.publish_releasable")) >= 2,
            timeout=60,
            what="two retries while Redis is away",
        )
        assert task_meta(redis_client, task_id)["status"] in ("RETRY", "STARTED")  # type: ignore[index]
        fault_redis.start()
        meta = wait_task(redis_client, task_id, timeout=60)
    finally:
        worker.stop()
    assert meta["result"]["published"] == len(fresh)
    assert meta["retries"] >= 2
    with fault_redis.client() as set_client:
        assert {n for n, _ in read_releasable(set_client, account_id="acc_pub")} == fresh
    countdowns = retry_countdowns(worker, "numbers.publish_releasable")
    # Full jitter: each delay is drawn from [0, min(max, base * 2**retry)].
    assert all(c <= min(2, 1 * 2**i) for i, c in enumerate(countdowns)), countdowns
    assert "ConnectionError" in worker.output()


def test_worker_and_beat_recover_when_redis_comes_back(
    pg_store: Engine, pg_url: str, fault_redis: RedisServer, tmp_path: Path
) -> None:
    """One Redis for everything (broker, results, RedBeat, the set) is killed and restarted
    empty: the worker and beat reconnect by themselves and publishing resumes."""
    fresh = _seed_releasable(pg_store, datetime.now(UTC))
    env = service_env(
        database_url=pg_url,
        redis_url=fault_redis.url(),
        data_dir=tmp_path,
        PUBLISH_EVERY_SECONDS="1",
        PURGE_EVERY_SECONDS="3600",
        BEAT_MAX_LOOP_SECONDS="1",
        BEAT_LOCK_TIMEOUT_SECONDS="10",
        **FAST_RETRIES,
    )
    worker, beat = start_worker_and_beat(env, tmp_path)
    client = fault_redis.client()
    try:
        wait_for(lambda: last_reconciliation(client), timeout=60, what="a first publication")
        fault_redis.stop()
        time.sleep(4)  # several beat ticks and publish attempts meet a dead Redis
        restarted = datetime.now(UTC)
        fault_redis.start()

        def published_again() -> bool:
            meta = last_reconciliation(client)
            return bool(meta) and datetime.fromisoformat(meta["generated_at"]) > restarted

        wait_for(published_again, timeout=90, what="a publication after Redis came back")
        assert worker.popen.poll() is None
        assert beat.popen.poll() is None
        assert {n for n, _ in read_releasable(client, account_id="acc_pub")} == fresh
    finally:
        client.close()
        beat.stop()
        worker.stop()


# --- 4. Several workers purging at once --------------------------------------------------------


def test_several_workers_purging_at_once_reach_the_one_worker_end_state(
    pg_store: Engine,
    process_env: Callable[..., dict[str, str]],
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    seeded = seed_store(pg_store, numbers=RACING_NUMBERS, now=datetime.now(UTC))
    env = process_env(PURGE_BATCH_SIZE="100", PURGE_MAX_ROWS=str(RACING_MAX_ROWS))
    workers = [
        start_worker(env, tmp_path / f"worker-{i}.log", name=f"w{i}", concurrency=2)
        for i in range(RACING_WORKERS)
    ]
    task_ids: list[str] = []
    try:
        wait_for(
            lambda: all("ready." in w.output() for w in workers),
            timeout=60,
            what="every worker to be ready",
        )
        with celery_client(redis_url) as client:
            deadline = time.monotonic() + 120
            while tombstone_count(pg_store) < len(seeded.overdue):
                assert time.monotonic() < deadline, "the workers did not finish the purge"
                # A volley at once: the pool processes of all workers start together.
                task_ids += [
                    client.send_task("numbers.purge_expired").id for _ in range(2 * RACING_WORKERS)
                ]
                time.sleep(0.5)
        metas = [wait_task(redis_client, task_id, timeout=60) for task_id in task_ids]
    finally:
        for worker in workers:
            worker.stop()
    summaries = [meta["result"] for meta in metas]
    assert {s["status"] for s in summaries} <= {"completed", "limit_reached", "skipped"}
    assert sum(s["purged"] for s in summaries) == len(seeded.overdue)
    assert any(s["status"] == "skipped" for s in summaries)  # runs really overlapped
    assert len({meta["worker"] for meta in metas}) >= 2  # on more than one worker
    assert_all_purged(pg_store, seeded)
    for worker in workers:
        assert "deadlock" not in worker.output().lower()
        assert "Traceback" not in worker.output(), worker.output()[-3000:]


def test_concurrent_purges_without_the_run_lock_still_tombstone_once(
    pg_store: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: even if the one-run lock were lost (two databases' worth of workers,
    an operator's manual run...), batches skip each other's locked rows and the tombstone's
    unique number id keeps every purge exactly-once."""
    seeded = seed_store(pg_store, numbers=3_000, now=datetime.now(UTC))

    class NoLock:
        def __init__(self, _engine: Engine, *_key_and_name: object) -> None: ...
        def __enter__(self) -> bool:
            return True

        def __exit__(self, *_exc: object) -> None: ...

    monkeypatch.setattr(purge_lock, "run_lock", NoLock)
    factory: sessionmaker[Session] = make_session_factory(pg_store)
    barrier = threading.Barrier(4)
    reports: list[purge_module.PurgeReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(10)
            reports.append(purge_expired(factory, batch_size=7))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert len(reports) == 4
    assert sum(r.purged for r in reports) == len(seeded.overdue)
    assert sum(1 for r in reports if r.purged) >= 2  # the batches really interleaved
    assert_all_purged(pg_store, seeded)
    with make_session_factory(pg_store)() as session:
        assert session.scalar(select(func.count()).select_from(PurgedNumber)) == len(seeded.overdue)
