"""Steering a running purge from outside, with real processes on real PostgreSQL: pause and
resume, SIGTERM/SIGINT to `numbers-retention purge`, a warm shutdown of a real worker, a
SIGKILLed run's record, and the batch size adapting to a competing session's locks.

Each run is slowed down (small batches, a rows-per-second ceiling) so that the stop lands in
its middle; every test ends with the next run finishing the backlog, each number tombstoned
exactly once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from shared.demo import seed_demo
from shared.models import PhoneNumber, PurgedNumber, PurgeRun
from shared.retention import RETENTION
from shared.settings import Settings
from tests.processes import Process, start_worker, wait_for
from tests.purging import purge_expired
from tests.stores import clear_the_next_hour
from worker.app import create_app, make_embedded_folders

pytestmark = [pytest.mark.postgres]

Factory = sessionmaker[Session]
CLI = str(Path(sys.executable).parent / "numbers-retention")
NUMBERS = 6_000  # about 3,900 overdue
SLOW = {"PURGE_BATCH_SIZE": "20", "PURGE_MAX_ROWS_PER_SECOND": "500"}  # ~8 s for the backlog


def seed(factory: Factory, numbers: int = NUMBERS) -> set[int]:
    """Demo numbers around the host's clock, most released and overdue; the overdue ids."""
    now = datetime.now(UTC)
    engine: Engine = factory.kw["bind"]
    seed_demo(engine, numbers=numbers, accounts=40, now=now, released_share=0.95, window_days=60)
    cut = now - RETENTION
    with factory.begin() as session:
        clear_the_next_hour(session, now)
        overdue = set(
            session.scalars(
                select(PhoneNumber.id).where(
                    PhoneNumber.released_at <= cut, PhoneNumber.purge_hold.is_(False)
                )
            )
        )
    assert len(overdue) > 1_000
    return overdue


def tombstones(factory: Factory, run_id: str | None = None) -> int:
    with factory() as session:
        query = select(func.count()).select_from(PurgedNumber)
        if run_id is not None:
            query = query.where(PurgedNumber.run_id == run_id)
        return int(session.execute(query).scalar_one())


def run_record(factory: Factory, run_id: str) -> PurgeRun:
    with factory() as session:
        run = session.get(PurgeRun, run_id)
        assert run is not None
        return run


def assert_all_purged_once(factory: Factory, overdue: set[int]) -> None:
    with factory() as session:
        stones = Counter(session.scalars(select(PurgedNumber.number_id)))
        left = set(session.scalars(select(PhoneNumber.id))) & overdue
    assert [number for number, n in stones.items() if n > 1] == []
    assert set(stones) == overdue
    assert left == set()


@contextlib.contextmanager
def purge_under_way(
    factory: Factory, env: dict[str, str], folder: Path, *, past: int, what: str
) -> Iterator[Process]:
    """`numbers-retention purge` (its log purge.log in `folder`), once it has tombstoned more
    than `past` numbers; stopped when the block ends."""
    purge = Process([CLI, "purge"], env, folder / "purge.log")
    try:
        wait_for(lambda: tombstones(factory) > past, timeout=60, interval=0.02, what=what)
        yield purge
    finally:
        purge.stop()


def finished(process: Process) -> dict[str, Any]:
    [summary] = [e for e in process.events() if e["event"] == "purge.finished"]
    return summary


@pytest.fixture
def cli_env(process_env: Callable[..., dict[str, str]]) -> dict[str, str]:
    return process_env(**SLOW)


@pytest.mark.processes(moved_clock=False)
def test_a_pause_stops_a_running_purge_at_its_next_batch_and_resume_lets_it_go_on(
    pg_factory: Factory,
    cli_env: dict[str, str],
    tmp_path: Path,
    cli_on: Callable[..., Callable[..., Result]],
) -> None:
    overdue = seed(pg_factory)
    operator = cli_on(pg_factory.kw["bind"], **SLOW)  # `pause` and `resume`, in this process
    with purge_under_way(pg_factory, cli_env, tmp_path, past=0, what="a batch") as purge:
        paused = operator("pause", "--reason", "carrier audit", "--by", "ops")
        assert paused.exit_code == 0, paused.stderr
        assert '"paused": true' in paused.stdout
        assert purge.popen.wait(30) == 0  # the running purge ends by itself, soon
    summary = finished(purge)
    assert summary["status"] == "paused"
    assert summary["reason"] == "paused by ops: carrier audit"
    cut_at = tombstones(pg_factory)
    assert 0 < summary["purged"] == cut_at < len(overdue)
    assert summary["remaining"] == len(overdue) - cut_at
    run = run_record(pg_factory, summary["run_id"])
    assert (run.status, run.purged) == ("paused", cut_at)

    # While paused, a new run purges nothing; after `resume` the next run finishes.
    assert purge_expired(pg_factory).status == "paused"
    assert tombstones(pg_factory) == cut_at
    assert operator("resume").exit_code == 0
    after = purge_expired(pg_factory)
    assert (after.status, after.purged, after.remaining) == ("completed", len(overdue) - cut_at, 0)
    assert_all_purged_once(pg_factory, overdue)


@pytest.mark.processes(moved_clock=False)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_cli_ends_the_run_at_a_batch_boundary_as_interrupted(
    pg_factory: Factory, cli_env: dict[str, str], tmp_path: Path, sig: signal.Signals
) -> None:
    overdue = seed(pg_factory)
    with purge_under_way(pg_factory, cli_env, tmp_path, past=0, what="a batch") as purge:
        purge.popen.send_signal(sig)
        assert purge.popen.wait(30) == 0
    summary = finished(purge)
    assert summary["status"] == "interrupted"
    assert summary["reason"] == f"{sig.name} received"
    # At the next batch boundary, not after the rest of the backlog: some are left.
    cut_at = tombstones(pg_factory)
    assert 0 < summary["purged"] == cut_at < len(overdue)
    run = run_record(pg_factory, summary["run_id"])
    assert (run.status, run.purged, run.batches) == ("interrupted", cut_at, summary["batches"])
    # An operator's stop is not a failure.
    assert [e for e in purge.events() if e.get("level") in ("error", "critical")] == []
    assert "Traceback" not in purge.output()

    after = purge_expired(pg_factory)
    assert (after.status, after.remaining) == ("completed", 0)
    assert_all_purged_once(pg_factory, overdue)


@pytest.mark.processes(moved_clock=False)
def test_a_killed_runs_record_gets_its_true_count_from_the_next_run(
    pg_factory: Factory, cli_env: dict[str, str], tmp_path: Path
) -> None:
    overdue = seed(pg_factory)
    with purge_under_way(pg_factory, cli_env, tmp_path, past=100, what="batches") as purge:
        purge.kill(signal.SIGKILL)
        purge.popen.wait(10)
    with pg_factory() as session:
        [dead] = session.scalars(select(PurgeRun).where(PurgeRun.status == "running")).all()
    cut_at = tombstones(pg_factory, dead.id)
    assert 100 < cut_at < len(overdue)

    after = purge_expired(pg_factory)
    run = run_record(pg_factory, dead.id)
    assert (run.status, run.purged) == ("failed", cut_at)
    assert run.summary is not None
    assert "without recording its end" in run.summary["reason"]
    assert after.purged == len(overdue) - cut_at
    assert_all_purged_once(pg_factory, overdue)


@pytest.mark.redis
@pytest.mark.processes(moved_clock=False)  # a signal's handling: no date changes it
@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_a_warm_shutdown_of_a_worker_ends_its_purge_at_a_batch_boundary(
    pg_factory: Factory, cli_env: dict[str, str], tmp_path: Path, broker: str
) -> None:
    """On both brokers: the embedded one runs a thread-backed prefork pool whose children
    billiard guards against every signal of its full list (SIGUSR1, SIGUSR2, ...); a stop sent
    with one of those killed the running purge instead of stopping it."""
    env = cli_env if broker == "redis" else cli_env | {"BROKER_URL": "", "REDIS_URL": ""}
    settings = Settings(
        database_url=env["DATABASE_URL"],
        broker_url=env["BROKER_URL"],
        redis_url=env["REDIS_URL"],
        NUMBERS_RETENTION_DATA=tmp_path,
    )
    make_embedded_folders(settings)  # before the producer's result backend looks for them
    producer = create_app(settings)
    overdue = seed(pg_factory)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        task = producer.send_task("numbers.purge_expired")
        wait_for(lambda: tombstones(pg_factory) > 0, timeout=60, interval=0.02, what="a batch")
        # What `docker stop` does: SIGTERM to the main process only (pool children too would
        # be killed, not stopped, by it).
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(30) == 0
        summary = task.get(timeout=10)
    finally:
        worker.stop()
    assert summary["status"] == "interrupted"
    assert summary["reason"].startswith("worker ")
    # At a batch boundary, not after the rest of the backlog: some are left.
    cut_at = tombstones(pg_factory)
    assert 0 < summary["purged"] == cut_at < len(overdue)
    assert run_record(pg_factory, summary["run_id"]).status == "interrupted"
    assert "purge.failed" not in worker.output()
    assert "exitcode" not in worker.output()  # no pool child was killed

    after = purge_expired(pg_factory)
    assert (after.status, after.remaining) == ("completed", 0)
    assert_all_purged_once(pg_factory, overdue)


def test_batches_shrink_when_a_competing_session_holds_locks_and_grow_back(
    pg_factory: Factory, settings_env: Callable[..., None]
) -> None:
    """A session that keeps taking a lock the purge's INSERT needs, in bursts of 300 ms,
    makes batches slow: the size drops at once to what would have met the aim (half the
    target), then grows back by at most a fifth per batch once the bursts stop."""
    # One lane: each batch is picked after the one before it has taught the size.
    settings_env(PURGE_PARALLEL_BATCHES="1")
    # About 7,800 overdue: from the floor to the cap takes about 1,640 rows, and the run must
    # still be at work when the competitor's bursts come (with 3,900 it had ended in CI).
    overdue = seed(pg_factory, 2 * NUMBERS)
    engine: Engine = pg_factory.kw["bind"]
    compete = threading.Event()
    done = threading.Event()

    def competitor() -> None:
        with engine.connect() as connection:
            while not done.is_set():
                if not compete.wait(0.01):
                    continue
                with connection.begin():
                    connection.execute(text("LOCK TABLE purged_numbers IN SHARE MODE"))
                    time.sleep(0.3)
                time.sleep(0.02)

    thread = threading.Thread(target=competitor)
    thread.start()
    reports: list[Any] = []
    try:
        with capture_logs() as logs:
            runner = threading.Thread(
                target=lambda: reports.append(
                    purge_expired(pg_factory, batch_size=400, max_rows=len(overdue))
                )
            )
            runner.start()

            def at_the_cap() -> bool:
                # A run starts at the floor (100) and grows: competition starts once its
                # batches reached the cap with nothing competing.
                return any(e["event"] == "purge.batch" and e["size"] == 400 for e in logs)

            wait_for(at_the_cap, timeout=60, interval=0.01)
            compete.set()
            time.sleep(2)
            compete.clear()
            runner.join(120)
    finally:
        done.set()
        thread.join(10)
    [report] = reports
    assert (report.status, report.remaining) == ("completed", 0)
    batches = [(e["size"], e["purged"], e["ms"]) for e in logs if e["event"] == "purge.batch"]
    target = 100.0
    # The batches over the aim: the scenario needs some (the competitor slowed them down);
    # what follows each is decided from its logged time, no limit of the test's own.
    slow = [i for i, (_, _, ms) in enumerate(batches[:-1]) if ms > target]
    assert slow, batches
    for i, (size, purged, ms) in enumerate(batches[:-1]):
        following = batches[i + 1][0]
        if ms > target:  # shrinks at once, to what would have met the aim
            assert following <= max(100, int(purged * 0.5 * target / ms)), (i, batches)
        else:  # grows by at most a fifth
            assert following <= max(size + 1, int(size * 1.2)), (i, batches)
    assert min(size for size, _, _ in batches[slow[0] + 1 :]) <= 200
    assert report.batch_sizes["max"] == 400  # reached the cap when nothing competed
    assert batches[0][0] == 100  # from the floor
    assert_all_purged_once(pg_factory, overdue)
