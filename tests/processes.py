"""Real `celery worker`, `celery beat` and Flower processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def program(name: str, package: str | None = None) -> str:
    """The path of the program `name`: a test without it fails on CI (`.ci/run` installs it)
    and is skipped elsewhere (`package`: the Debian package that brings it)."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is missing" + (f" (apt-get install {package})" if package else "")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def service_env(
    *, database_url: str, redis_url: str, data_dir: Path, **extra: str
) -> dict[str, str]:
    """Environment for a worker process on the given store and Redis (broker, results, set)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "BROKER_", "REDIS_", "PURGE_", "PUBLISH_", "RELAY_"))
    }
    env |= {
        "DATABASE_URL": database_url,
        "BROKER_URL": redis_url,
        "REDIS_URL": redis_url,
        "NUMBERS_RETENTION_DATA": str(data_dir),
        "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        # The test's own polling of the store (every quarter second, waiting for a purge)
        # would count as an API at work, and every purge would rest three times its batches
        # (shared/purge/pacing.py; tested in process in tests/test_purge_steering.py).
        "PURGE_BUSY_REST": "0",
    }
    return env | extra


# The settings a console-script call of the tests leaves out of this environment: the store's,
# the broker's, the purge's and the retention's.
CLI_UNSET = ("DATABASE_", "BROKER_", "REDIS_", "PURGE_", "PUBLISH_", "RETENTION_", "NUMBERS_")


def cli_settings(data: Path, **extra: str) -> dict[str, str]:
    """The settings a console-script call of the tests adds: the embedded store in `data`, JSON
    logs, and `extra`."""
    return {"NUMBERS_RETENTION_DATA": str(data), "LOG_FORMAT": "json"} | extra


def cli_env(data: Path, **extra: str) -> dict[str, str]:
    """Environment for a console-script call on the embedded store in `data`: none of the
    store's, broker's, purge's or retention settings of this environment, JSON logs."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(CLI_UNSET)}
    return env | cli_settings(data, **extra)


class Process:
    """A child process whose output goes to a log file; stopped on `stop()`."""

    def __init__(
        self, args: list[str], env: dict[str, str], log: Path, *, cwd: Path | None = None
    ) -> None:
        self.log = log
        self._file = log.open("ab")
        try:
            self.popen = subprocess.Popen(
                args,
                env=env,
                cwd=cwd,
                stdout=self._file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            self._file.close()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The structured events this process logged so far."""
        return json_events(self.output())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the whole process group (pool children included)."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15) -> None:
        """Stop it as `docker stop` and the systemd units (KillMode=mixed) do: SIGTERM to the
        main process alone, which ends its pool's children itself (a SIGTERM to the whole group
        killed a child mid-task: WorkerLostError); then SIGKILL to what is left of the group."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(5)
        self._file.close()


def celery(args: list[str], env: dict[str, str], log: Path) -> Process:
    """`celery -A worker <args>` with this interpreter."""
    return Process([sys.executable, "-m", "celery", "-A", "worker", *args], env, log)


def start_worker(
    env: dict[str, str], log: Path, *, name: str = "w1", concurrency: int = 1
) -> Process:
    return celery(
        ["worker", "--loglevel=INFO", f"--concurrency={concurrency}", "-n", f"{name}@%h"],
        env,
        log,
    )


def start_beat(env: dict[str, str], log: Path, schedule: Path) -> Process:
    return celery(["beat", "--loglevel=INFO", "-s", str(schedule)], env, log)


def start_worker_and_beat(env: dict[str, str], folder: Path) -> tuple[Process, Process]:
    """A worker and a beat logging to worker.log and beat.log in `folder`, the schedule there."""
    worker = start_worker(env, folder / "worker.log")
    return worker, start_beat(env, folder / "beat.log", folder / "beat-schedule")


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.25,
    what: str = "condition",
) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def json_events(text: str) -> list[dict[str, Any]]:
    """The JSON log lines in `text` (other lines, e.g. Celery's banner, are passed over)."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events
