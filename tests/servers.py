"""Throwaway PostgreSQL and Redis servers on free loopback ports, and a Celery client for them.

Fault tests stop, restart and kill these servers; the shared services on 5432 and 6379 are
never touched. PostgreSQL is initialised once per session (about two seconds) with durability
off, Redis is started per test (milliseconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from celery import Celery

from shared import migrate
from shared.db import make_engine
from shared.settings import Settings
from tests.processes import Process, wait_for
from tests.stores import TRUNCATE_ALL, service_missing
from worker.app import create_app

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
# Speed over durability: these clusters live for one test session.
PG_OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
    "-c full_page_writes=off -c max_connections=60 -c shared_buffers=32MB"
)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


class PostgresServer:
    """A private PostgreSQL cluster in `root`, listening on 127.0.0.1:`port` (trust auth)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.data = root / "data"
        self.log = root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        command = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w"]
        subprocess.run(
            _as_postgres([*command, "-t", "30", *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def init(self) -> None:
        subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        self._pg_ctl("-o", f"-p {self.port} -k {self.root} {PG_OPTIONS}", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session at once (what a restart by an operator does)."""
        self._pg_ctl("-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-o", f"-p {self.port} -k {self.root} {PG_OPTIONS}", "restart")

    def running(self) -> bool:
        try:
            with psycopg.connect(
                host="127.0.0.1", port=self.port, user="postgres", connect_timeout=2
            ) as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True


class RedisServer:
    """A private redis-server on 127.0.0.1:`port`, with a password, no persistence."""

    def __init__(self, root: Path, port: int, password: str) -> None:
        self.root, self.port, self.password = root, port, password
        self.log = root / "redis.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            db=db,
            password=self.password,
            socket_timeout=5,
            socket_connect_timeout=2,
        )

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                [
                    shutil.which("redis-server") or "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(self.root),
                    "--requirepass",
                    self.password,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.running, timeout=10, interval=0.02, what=f"redis-server on {self.port}")

    def stop(self) -> None:
        """Kill the server at once: clients see refused connections from now on."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)
        self.popen = None

    def running(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False


@pytest.fixture(scope="session")
def fault_pg_server() -> Iterator[PostgresServer]:
    """One private cluster per session, migrated; tests may restart or stop it."""
    if not (PG_BIN / "initdb").exists():
        service_missing("PostgreSQL binaries", FileNotFoundError(str(PG_BIN / "initdb")))
    # Not under pytest's root-only tmp folder: the postgres user must reach it.
    root = Path(tempfile.mkdtemp(prefix="numbers-fault-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = PostgresServer(root, free_port())
    try:
        server.init()
        server.start()
        engine = make_engine(server.url)
        migrate.upgrade(engine)
        engine.dispose()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fault_pg(fault_pg_server: PostgresServer) -> Iterator[PostgresServer]:
    """The private cluster, running and with empty tables, for one test."""
    if not fault_pg_server.running():
        fault_pg_server.start()
    yield fault_pg_server
    if not fault_pg_server.running():
        fault_pg_server.start()
    with psycopg.connect(
        host="127.0.0.1", port=fault_pg_server.port, user="postgres", autocommit=True
    ) as connection:
        connection.execute(TRUNCATE_ALL)


@pytest.fixture
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private Redis for one test, password-protected; the test may kill and restart it."""
    if shutil.which("redis-server") is None:
        service_missing("redis-server", FileNotFoundError("redis-server"))
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port(), "r3dis-Pa55w0rd-x9")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- talking to the workers ------------------------------------------------------------------


@contextlib.contextmanager
def celery_client(broker_url: str, *, accept_pickle: bool = False) -> Iterator[Celery]:
    """A Celery app that only sends tasks (results are read from Redis with `task_meta`)."""
    app = create_app(Settings(broker_url=broker_url, redis_url=broker_url))
    if accept_pickle:
        # What an attacker's (or a misconfigured) producer does; the worker must refuse it.
        app.conf.accept_content = ["json", "pickle"]
    try:
        yield app
    finally:
        app.close()


def task_meta(client: redis.Redis, task_id: str) -> dict[str, Any] | None:
    """The stored result of a task (state, result, retries, worker), or None while pending."""
    raw = client.get(f"celery-task-meta-{task_id}")
    return None if raw is None else json.loads(raw)  # type: ignore[arg-type]


def wait_task(
    client: redis.Redis, task_id: str, *, timeout: float, states: tuple[str, ...] = ("SUCCESS",)
) -> dict[str, Any]:
    """Wait for the task to reach a final state; fail if it is not one of `states`."""

    def final() -> dict[str, Any] | None:
        meta = task_meta(client, task_id)
        return meta if meta and meta["status"] in ("SUCCESS", "FAILURE", "REVOKED") else None

    meta = wait_for(final, timeout=timeout, interval=0.1, what=f"task {task_id}")
    assert meta["status"] in states, meta
    return meta


@contextlib.contextmanager
def serving_api(env: dict[str, str], log: Path) -> Iterator[tuple[Process, str]]:
    """`numbers-retention serve` on a free port, as the runbook runs it, once it answers its
    health check; stopped on the way out as docker and systemd stop it (SIGTERM)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "numbers-retention"), "serve", "--port", str(port)]
    process = Process(command, env, log)

    def healthy() -> bool:
        assert process.popen.poll() is None, process.output()[-3000:]
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, timeout=60, interval=0.1, what="the API to serve")
        yield process, url
    finally:
        process.stop()
