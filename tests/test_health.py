"""`numbers-retention healthcheck worker|beat` against real worker and beat processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from tests.factories import make_numbers
from tests.processes import Process, start_beat, start_worker, wait_for
from tests.servers import celery_client
from worker import health

SCRIPT = str(Path(sys.executable).parent / "numbers-retention")


def healthcheck(env: dict[str, str], role: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, "healthcheck", role, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def healthy(env: dict[str, str], role: str, *args: str) -> bool:
    done = healthcheck(env, role, *args)
    assert done.returncode in {0, 1}, done.stderr
    return done.returncode == 0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(10)
        yield sock


@pytest.mark.processes(moved_clock=False)
def test_a_fresh_heartbeat_of_a_live_process_is_healthy_a_stale_or_orphaned_one_is_not(
    tmp_path: Path,
) -> None:
    path = tmp_path / "worker.heartbeat"
    health.beat(path)
    assert health.check(path, max_age=5)[0]
    pid, at = path.read_text().split()
    path.write_text(f"{pid} {float(at) - 10}\n")
    ok, why = health.check(path, max_age=5)
    assert not ok
    assert why.startswith("last heartbeat 10 s ago, over 5 s")
    # A process that died without removing its file (SIGKILL): its PID is gone.
    dead = subprocess.Popen(["true"])
    dead.wait()
    path.write_text(f"{dead.pid} {time.time()}\n")
    ok, why = health.check(path, max_age=5)
    assert not ok
    assert why.endswith(f"(pid {dead.pid}) is gone")
    # Stopped: the file goes, if it is this process's.
    health.beat(path)
    health.stopped(path)
    assert health.check(path, max_age=5) == (
        False,
        f"no heartbeat at {path}: not started yet, or stopped",
    )


def test_a_heartbeat_that_cannot_be_written_leaves_the_process_running(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    path = tmp_path / "not-a-folder" / "beat.heartbeat"
    health.beat(path)  # logged, not raised: beat and the worker go on
    assert health.check(path, max_age=5) == (False, f"cannot read {path}: Not a directory")


@pytest.mark.postgres
@pytest.mark.redis
# Heartbeats and signals, whatever the date: once, not again with the clock moved (it took
# about a minute in each of the three clock lanes, and timed out on a loaded machine in two).
@pytest.mark.processes(moved_clock=False)
def test_a_busy_worker_is_healthy_a_hung_or_stopped_one_is_not(
    pg_factory: sessionmaker[Session],
    process_env: Callable[..., dict[str, str]],
    redis_url: str,
    redis_client: redis.Redis,
    notify_socket: socket.socket,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    # 240 rows at 8 a second: 30 s of work, more than the checks below take on a busy machine
    # (40 rows, 5 s, were once done before the third check).
    overdue = {f"+1415777{i:04d}": timedelta(days=15) for i in range(240)}
    with pg_factory.begin() as session:
        make_numbers(session, account_id="acc_busy", ages=overdue, now=now)
    # One pool process, kept busy by a purge paced to 8 rows a second, one row per batch.
    env = process_env(
        PURGE_EVERY_SECONDS="3600",
        PURGE_BATCH_SIZE="1",
        PURGE_PARALLEL_BATCHES="1",
        PURGE_MAX_ROWS_PER_SECOND="8",
        NOTIFY_SOCKET=notify_socket.getsockname(),
    )
    assert not healthy(env, "worker")  # not started yet
    worker = start_worker(env, tmp_path / "worker.log", concurrency=1)
    try:
        wait_for(lambda: healthy(env, "worker"), timeout=30, what="a healthy worker")
        # systemd's protocol (Type=notify, WatchdogSec=): ready, then a ping per heartbeat.
        assert notify_socket.recv(100) == b"READY=1\nWATCHDOG=1"

        with celery_client(redis_url) as client:
            client.send_task("numbers.purge_expired")
        wait_for(lambda: '"purge.batch"' in worker.output(), timeout=30, what="the purge to start")
        # Its only pool process is busy purging; the worker's own loop goes on.
        for _ in range(3):
            assert healthy(env, "worker", "--max-age", "3")
        assert '"purge.finished"' not in worker.output()

        # A hung worker (its main loop stopped) goes stale, and comes back when it resumes.
        os.kill(worker.popen.pid, signal.SIGSTOP)
        try:
            wait_for(
                lambda: not healthy(env, "worker", "--max-age", "3"),
                timeout=15,
                what="a stopped worker's heartbeat to go stale",
            )
            stale = healthcheck(env, "worker", "--max-age", "3")
            assert "UNHEALTHY: last heartbeat" in stale.stderr
        finally:
            os.kill(worker.popen.pid, signal.SIGCONT)
        wait_for(lambda: healthy(env, "worker", "--max-age", "3"), timeout=15, what="recovery")
    finally:
        # As `docker stop` and the unit (KillMode=mixed) do: SIGTERM to the main process alone,
        # which ends the purge at its next batch (to the group, it killed the busy child).
        worker.popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.popen.wait(20)
        worker.stop()
    # A warm shutdown takes the heartbeat away at once.
    done = healthcheck(env, "worker")
    assert done.returncode == 1
    assert "UNHEALTHY: no heartbeat" in done.stderr
    assert not (tmp_path / "worker.heartbeat").exists()
    messages = []
    while b"STOPPING=1" not in messages:
        messages.append(notify_socket.recv(100))
    assert "Traceback" not in worker.output(), worker.output()[-3000:]


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.processes
def test_beat_holding_the_lock_and_beat_standing_by_are_healthy_a_killed_one_is_not(
    process_env: Callable[..., dict[str, str]], redis_client: redis.Redis, tmp_path: Path
) -> None:
    # Two beats on one Redis, each with its own data folder (its own heartbeat file).
    envs = {
        name: process_env(
            NUMBERS_RETENTION_DATA=str(tmp_path / name),
            PURGE_EVERY_SECONDS="3600",
            BEAT_MAX_LOOP_SECONDS="1",
            BEAT_LOCK_TIMEOUT_SECONDS="4",
        )
        for name in ("a", "b")
    }
    beats: dict[str, Process] = {}
    try:
        for name, env in envs.items():
            beats[name] = start_beat(env, tmp_path / f"beat-{name}.log", tmp_path / f"s-{name}")
            wait_for(lambda env=env: healthy(env, "beat"), timeout=30, what=f"beat {name}")
        holder = next(name for name, beat in beats.items() if "lock_acquired" in beat.output())
        standby = "b" if holder == "a" else "a"
        # The standby ticks too (it tries the lock once a loop): healthy past its max age.
        assert healthy(envs[standby], "beat", "--max-age", "3")

        beats[holder].kill(signal.SIGKILL)
        beats[holder].popen.wait(5)
        done = healthcheck(envs[holder], "beat")
        assert done.returncode == 1
        assert "is gone" in done.stderr
        wait_for(
            lambda: "lock_acquired" in beats[standby].output(),
            timeout=20,
            what="the standby to take the lock",
        )
        assert healthy(envs[standby], "beat", "--max-age", "3")
    finally:
        for beat in beats.values():
            beat.stop()
    assert not healthy(envs[standby], "beat")
    assert "Traceback" not in beats[standby].output(), beats[standby].output()[-3000:]
