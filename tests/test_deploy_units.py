"""deploy/systemd/: the units verify with systemd's own tools and run what the runbook runs."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.processes import program
from tests.runbook import deploy_check
from worker import api, health

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
INSTALLED_BIN = "/opt/numbers-retention/bin/"
NAMES = ("migrate", "worker", "beat", "flower", "metrics", "api")


def systemd_analyze() -> str:
    return program("systemd-analyze")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / f"numbers-retention-{name}.service")
    return parser


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units as installed here: their ExecStart= pointed at this virtualenv's scripts
    (`verify` needs the binaries to exist)."""
    folder = tmp_path_factory.mktemp("units")
    for path in UNITS.glob("*.service"):
        text = path.read_text().replace(INSTALLED_BIN, f"{Path(sys.executable).parent}/")
        (folder / path.name).write_text(text)
    return folder


def test_there_is_a_unit_for_each_process() -> None:
    assert sorted(path.name for path in UNITS.glob("*.service")) == sorted(
        f"numbers-retention-{name}.service" for name in NAMES
    )


@pytest.mark.processes(moved_clock=False)
def test_the_units_verify(installed: Path) -> None:
    done = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", *sorted(installed.glob("*.service"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # A unit systemd would refuse fails; an unknown or misspelt key only warns: no output.
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.processes(moved_clock=False)
def test_each_unit_is_hardened(installed: Path, name: str) -> None:
    done = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=true",
            "--threshold=25",  # exposure 2.5 of 10 at most ("OK")
            str(installed / f"numbers-retention-{name}.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    service = unit(name)["Service"]
    assert service["User"] == "numbers-retention"
    assert service["EnvironmentFile"] == "/etc/numbers-retention/env"
    # The heartbeat files, Celery's and the embedded default's folders: the state directory.
    assert service["StateDirectory"] == "numbers-retention"
    assert service["Environment"] == "NUMBERS_RETENTION_DATA=/var/lib/numbers-retention"
    assert service["ExecStart"].startswith(INSTALLED_BIN)
    if name != "migrate":
        assert service["Restart"] == "on-failure"


@pytest.mark.parametrize("role", health.ROLES)
def test_worker_and_beat_feed_a_watchdog_longer_than_their_heartbeats_max_age(role: str) -> None:
    service = unit(role)["Service"]
    assert service["Type"] == "notify"
    assert float(service["WatchdogSec"]) >= health.default_max_age(Settings(), role)
    # A warm shutdown: SIGTERM to the main process, which stops its pool itself.
    assert service["KillMode"] == "mixed"


def test_the_api_stops_gracefully_before_systemd_kills_it() -> None:
    """SIGTERM to uvicorn's main process alone (it stops its own worker processes), and time
    for the requests in flight to finish before the SIGKILL."""
    service = unit("api")["Service"]
    assert service["KillMode"] == "mixed"
    assert float(service["TimeoutStopSec"]) > api.GRACEFUL_SECONDS
    # Started after the migration, as the exporter is.
    assert "numbers-retention-migrate.service" in unit("api")["Unit"]["After"]


def test_the_units_run_the_runbooks_plain_processes() -> None:
    """The commands the runbook gives and the deployment check runs (tests/test_docs.py)."""
    commands = deploy_check().runbook_commands()
    for name in NAMES:
        command = unit(name)["Service"]["ExecStart"].replace(INSTALLED_BIN, ".venv/bin/")
        assert command in commands, name
