#!/usr/bin/env python3
"""Deployment check: the runtime install alone, run as the runbook's plain processes.

A fresh virtualenv gets the project as the Dockerfile installs it (the files it copies, its
`pip install .`, no dev extra). Then, on a PostgreSQL database of its own (created here and
dropped after) and a private Redis on a free port, the commands of docs/runbook.md's "Run it
without Docker": migrate, demo data with overdue numbers, Flower with basic auth, a worker,
beat on a 5-second purge schedule and the exporter, until a scheduled purge has purged the
overdue numbers, Flower's API shows it succeeded and /metrics counts what it purged; then the
HTTP API (`serve`, the `[api]` extra the runbook installs), a key made with `api-key create`,
`GET /numbers/released` over HTTP with it, and SIGTERM: the server exits gracefully.
Everything it started is stopped by PID and the database dropped, whatever happens.

    python3 .ci/deploy_check.py [--timeout SECONDS]

PostgreSQL is the server of TEST_DATABASE_URL (default postgres@127.0.0.1:5432); its user
must be allowed to create databases. Standard library only: it runs before any install.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
PURGE = "numbers.purge_expired"

# The runbook's commands, as this check runs them. In docs/runbook.md ("Run it without
# Docker") {venv} is .venv, {flower_port} 5555, {metrics_port} 9808 and {api_port} 8080;
# tests/test_docs.py holds the runbook to these lines and to the Dockerfile's install.
RUNBOOK_VALUES = {
    "venv": ".venv",
    "flower_port": "5555",
    "metrics_port": "9808",
    "api_port": "8080",
}
MIGRATE = "{venv}/bin/numbers-retention migrate"
SEED = "{venv}/bin/numbers-retention seed-demo --numbers 1000 --accounts 10 --if-empty"
SERVICES = {
    "flower": "{venv}/bin/celery -A worker flower --port={flower_port} --address=127.0.0.1",
    "worker": "{venv}/bin/celery -A worker worker --loglevel=INFO --concurrency=3",
    "beat": "{venv}/bin/celery -A worker beat --loglevel=INFO",
    "metrics": "{venv}/bin/numbers-retention metrics --host 127.0.0.1 --port {metrics_port}",
    "api": "{venv}/bin/numbers-retention serve --host 127.0.0.1 --port {api_port}",
}
# A key of the demo's first account, printed once as {"account_id", "key"}.
API_KEY = "{venv}/bin/numbers-retention api-key create --account acc_00001"
HEALTHCHECKS = {
    "worker": "{venv}/bin/numbers-retention healthcheck worker",
    "beat": "{venv}/bin/numbers-retention healthcheck beat",
}
COMMANDS = [MIGRATE, SEED, *SERVICES.values(), API_KEY, *HEALTHCHECKS.values()]


class CheckFailed(Exception):
    """What failed, in words; the logs that tell why are printed with it."""


def runbook_commands() -> list[str]:
    """The commands as the runbook writes them."""
    return [command.format(**RUNBOOK_VALUES) for command in COMMANDS]


def dockerfile_install(dockerfile: Path) -> tuple[list[str], list[str]]:
    """The sources the Dockerfile copies, and its `pip install ...` command."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources = [
        source
        for line in re.findall(r"^COPY\s+(.*)$", text, re.MULTILINE)
        for source in line.split()[:-1]
    ]
    runs = re.findall(r"^RUN\s+(.*)$", text, re.MULTILINE)
    steps = [step.strip() for run in runs for step in run.split("&&")]
    [install] = [step for step in steps if step.startswith("pip install")]
    return sources, shlex.split(install)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(self.end - time.monotonic(), 0.0)

    def wait_for(self, check: Callable[[], T | None], what: str, interval: float = 0.5) -> T:
        """Poll `check` until it returns something truthy, or fail when time is up."""
        while True:
            result = check()
            if result:
                return result
            if not self.left():
                raise CheckFailed(f"timed out waiting for {what}")
            time.sleep(min(interval, self.left()))


class Service:
    """A long-running process of ours, its output in a log file, stopped by its PID."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name, self.log = name, cwd.parent / "logs" / f"{name}.log"
        self.log.parent.mkdir(exist_ok=True)
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def check_running(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise CheckFailed(f"{self.name} exited with code {code}: {self.tail(1)}")

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """As `docker stop` and the systemd units (KillMode=mixed) do: SIGTERM to the main
        process alone (a warm shutdown: it ends its pool's children itself; a SIGTERM to each
        child kills the task in hand, WorkerLostError), then SIGKILL to what is left of its
        own process group after 15 s."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def http_get(
    url: str, auth: tuple[str, str] | None = None, *, bearer: str | None = None
) -> str | None:
    """The body of a 200 answer, else None (not up yet, refused, an error status).

    Only the http:// URLs of the services this check started come here.
    """
    request = urllib.request.Request(url)  # noqa: S310
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def metric(text: str | None, name: str) -> float | None:
    found = re.search(rf"^{name} (\S+)$", text or "", re.MULTILINE)
    return float(found.group(1)) if found else None


class DeployCheck:
    def __init__(self, tmp: Path, deadline: Deadline) -> None:
        self.tmp, self.deadline = tmp, deadline
        self.venv, self.cwd = tmp / "venv", tmp / "run"
        self.cwd.mkdir()
        self.services: dict[str, Service] = {}
        self.database: str | None = None
        self.redis_url = self.flower = self.metrics = ""
        self.overdue = 0
        self.failed_output = ""
        server = urlsplit(
            os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
        )
        self.pg = {
            "PGHOST": server.hostname or "127.0.0.1",
            "PGPORT": str(server.port or 5432),
            "PGUSER": unquote(server.username or "postgres"),
            "PGPASSWORD": unquote(server.password or ""),
        }
        self.flower_auth = ("ops", secrets.token_hex(12))

    # --- steps -----------------------------------------------------------------------------

    def step(self, what: str, action: Callable[[], object]) -> None:
        began = time.monotonic()
        print(f"deploy check: {what} ...", flush=True)
        action()
        print(f"deploy check: {what}: ok ({time.monotonic() - began:.1f} s)", flush=True)

    def run(self, args: list[str], what: str, env: dict[str, str] | None = None) -> str:
        """A one-shot command; its output is shown when it fails."""
        try:
            done = subprocess.run(
                args, env=env, cwd=self.cwd, capture_output=True, text=True,
                timeout=max(self.deadline.left(), 1), check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as error:
            raise CheckFailed(f"timed out: {what}") from error
        if done.returncode != 0:
            self.failed_output = done.stdout + done.stderr
            raise CheckFailed(f"{what} exited with code {done.returncode}")
        return done.stdout

    def install(self) -> None:
        """A fresh virtualenv, then the Dockerfile's install from a copy of what it copies."""
        sources, install = dockerfile_install(ROOT / "Dockerfile")
        app = self.tmp / "app"
        app.mkdir()
        for source in sources:
            path = ROOT / source
            copy = shutil.copytree if path.is_dir() else shutil.copy2
            copy(path, app / path.name)
        self.run([sys.executable, "-m", "venv", str(self.venv)], "python -m venv")
        args = [str(self.venv / "bin" / install[0]), *install[1:]]
        done = subprocess.run(
            args, cwd=app, capture_output=True, text=True,
            timeout=max(self.deadline.left(), 1), check=False,
        )  # fmt: skip
        if done.returncode != 0:
            self.failed_output = done.stdout + done.stderr
            raise CheckFailed(f"{' '.join(install)} exited with code {done.returncode}")

    def create_database(self) -> None:
        name = f"deploy_check_{os.getpid()}"
        self.run(["createdb", name], "createdb", env=os.environ | self.pg)
        self.database = name

    def start_redis(self) -> None:
        port = free_port()
        self.services["redis"] = Service(
            "redis",
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            {"PATH": os.environ["PATH"]},
            self.cwd,
        )  # fmt: skip
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.wait("the private Redis to answer", lambda: redis_answers(port))

    def env(self) -> dict[str, str]:
        """What the runbook exports, and nothing of this machine's but its basics."""
        assert self.database
        user, password = self.pg["PGUSER"], self.pg["PGPASSWORD"]
        credentials = f"{user}:{password}" if password else user
        server = f"{self.pg['PGHOST']}:{self.pg['PGPORT']}"
        basics = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TZ"}}
        return basics | {
            "DATABASE_URL": f"postgresql://{credentials}@{server}/{self.database}",
            "BROKER_URL": self.redis_url,
            "REDIS_URL": self.redis_url,
            "NUMBERS_RETENTION_DATA": str(self.tmp / "data"),
            "FLOWER_BASIC_AUTH": ":".join(self.flower_auth),
            # A short schedule and cache, so that a scheduled run shows within seconds.
            "PURGE_EVERY_SECONDS": "5",
            "METRICS_CACHE_SECONDS": "1",
            "LOG_FORMAT": "json",
        }

    def command(self, template: str, **values: str) -> list[str]:
        return template.format(venv=self.venv, **values).split()

    def seed(self) -> None:
        summary = json.loads(self.run(self.command(SEED), "seed-demo", env=self.env()))
        if not summary.get("overdue"):
            raise CheckFailed(f"seed-demo loaded no overdue numbers: {summary}")
        self.overdue = int(summary["overdue"])
        print(f"deploy check: {summary['numbers']} numbers, {self.overdue} overdue", flush=True)

    def start(self, name: str, **values: str) -> None:
        args = self.command(SERVICES[name], **values)
        self.services[name] = Service(name, args, self.env(), self.cwd)

    def wait(self, what: str, check: Callable[[], T | None]) -> T:
        def alive_and(check: Callable[[], T | None]) -> T | None:
            for service in self.services.values():
                service.check_running()
            return check()

        return self.deadline.wait_for(lambda: alive_and(check), what)

    def start_services(self) -> None:
        flower_port, metrics_port = free_port(), free_port()
        self.flower = f"http://127.0.0.1:{flower_port}"
        self.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        # Flower first: it shows only the tasks whose events it saw.
        self.start("flower", flower_port=str(flower_port))
        self.wait("Flower's /healthcheck", lambda: http_get(f"{self.flower}/healthcheck"))
        self.start("worker")
        self.start("beat")
        self.start("metrics", metrics_port=str(metrics_port))
        self.wait("the exporter's /metrics", lambda: http_get(self.metrics))

    def purged_in_flower(self) -> dict[str, Any] | None:
        """A succeeded purge that purged numbers, as Flower's API shows it."""
        url = f"{self.flower}/api/tasks?taskname={PURGE}&state=SUCCESS"
        tasks = json.loads(http_get(url, auth=self.flower_auth) or "{}")
        for task in tasks.values():
            summary: dict[str, Any] = json.loads(task.get("result") or "{}")  # the JSON summary
            if summary.get("purged"):
                return summary
        return None

    def purged_in_metrics(self) -> float | None:
        text = http_get(self.metrics)
        purged = metric(text, "numbers_retention_purged_total")
        overdue = metric(text, "numbers_retention_overdue")
        return purged if purged and purged >= self.overdue and overdue == 0 else None

    def check_purge(self) -> None:
        summary = self.wait("Flower to show a scheduled purge that purged", self.purged_in_flower)
        print(f"deploy check: Flower shows {PURGE} SUCCESS: {summary}", flush=True)
        purged = self.wait(
            "/metrics to count every overdue number purged and none left", self.purged_in_metrics
        )
        print(f"deploy check: numbers_retention_purged_total {purged:g}", flush=True)

    def healthy(self, role: str) -> bool:
        done = subprocess.run(
            self.command(HEALTHCHECKS[role]), env=self.env(), cwd=self.cwd,
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        return done.returncode == 0

    def check_health(self) -> None:
        for role in HEALTHCHECKS:
            self.wait(f"`healthcheck {role}` to pass", lambda role=role: self.healthy(role))

    def check_api(self) -> None:
        """`serve` as the runbook starts it, a key from `api-key create`, the released list
        over HTTP with it (and a 401 without it), then SIGTERM: a graceful exit."""
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        self.start("api", api_port=str(port))
        self.wait("the API's /health", lambda: http_get(f"{api}/health"))
        created = json.loads(self.run(self.command(API_KEY), "api-key create", env=self.env()))
        if created.get("account_id") != "acc_00001" or not created.get("key"):
            raise CheckFailed(f"api-key create printed {created}")
        body = json.loads(http_get(f"{api}/numbers/released", bearer=created["key"]) or "{}")
        if not isinstance(body.get("numbers"), list) or not body["numbers"]:
            raise CheckFailed(f"GET /numbers/released answered {body}")
        print(f"deploy check: GET /numbers/released: {len(body['numbers'])} numbers", flush=True)
        if http_get(f"{api}/numbers/released") is not None:
            raise CheckFailed("GET /numbers/released answered 200 without a key")
        server = self.services.pop("api")
        server.popen.send_signal(signal.SIGTERM)
        try:
            code = server.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.services["api"] = server  # stopped by cleanup, shown by report
            raise CheckFailed("the API did not exit within 30 s of SIGTERM") from None
        log = server.tail(lines=100_000)
        # uvicorn ends by the signal it got (143 in a shell), once its shutdown ran.
        if code != -signal.SIGTERM or "Application shutdown complete." not in log:
            self.services["api"] = server
            raise CheckFailed(f"the API exited with {code} on SIGTERM, not a graceful shutdown")
        if "Traceback" in log:
            self.services["api"] = server
            raise CheckFailed("the API logged a traceback")

    def stop_worker_and_beat(self) -> None:
        """A warm shutdown of each: their health checks fail, nothing logged a traceback."""
        for role in HEALTHCHECKS:
            self.services[role].stop()
            if self.healthy(role):
                raise CheckFailed(f"`healthcheck {role}` still passes with {role} stopped")
        for service in self.services.values():
            if "Traceback" in service.tail(lines=100_000):
                raise CheckFailed(f"{service.name} logged a traceback")

    def main(self) -> None:
        self.step("install the runtime as the Dockerfile does", self.install)
        self.step("create its own database", self.create_database)
        self.step("start a private Redis", self.start_redis)
        self.step("migrate", lambda: self.run(self.command(MIGRATE), "migrate", env=self.env()))
        self.step("seed demo data", self.seed)
        self.step("start Flower, a worker, beat and the exporter", self.start_services)
        self.step("health checks of the worker and beat", self.check_health)
        self.step("wait for a scheduled purge", self.check_purge)
        self.step("serve the API, list over HTTP with a new key, SIGTERM it", self.check_api)
        self.step("stop the worker and beat", self.stop_worker_and_beat)

    # --- failure and cleanup -----------------------------------------------------------------

    def report(self) -> None:
        if self.failed_output:
            print(self.failed_output[-4000:], file=sys.stderr)
        for service in self.services.values():
            if service.name == "redis" and service.popen.poll() is None:
                continue  # its log says nothing of the project
            print(f"--- {service.name} (last lines of {service.log.name}) ---", file=sys.stderr)
            print(service.tail(), file=sys.stderr)

    def cleanup(self) -> None:
        for service in reversed(self.services.values()):
            service.stop()
        if self.database:
            dropped = subprocess.run(
                ["dropdb", "--force", "--if-exists", self.database],
                env=os.environ | self.pg, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            if dropped.returncode != 0:
                print(f"deploy check: dropdb failed: {dropped.stderr}", file=sys.stderr)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=180, help="seconds for the whole check")
    options = parser.parse_args()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
        check = DeployCheck(Path(tmp), Deadline(options.timeout))
        try:
            check.main()
        except CheckFailed as error:
            print(f"deploy check FAILED: {error}", file=sys.stderr)
            check.report()
            return 1
        finally:
            check.cleanup()
    print(f"deploy check passed in {time.monotonic() - began:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
