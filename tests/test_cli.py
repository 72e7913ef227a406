"""The `numbers-retention` command line, run as a user would, on the embedded default: in this
process (click's runner) where output and exit codes are the point, a process where the process
is (`run`, the console script's own start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import Result
from jsonschema import Draft202012Validator
from sqlalchemy import Engine

from tests.processes import Process, json_events, wait_for
from tests.runbook import first_column, table_after

SCRIPT = str(Path(sys.executable).parent / "numbers-retention")
Invoke = Callable[..., Result]


def embedded_env(data: Path) -> dict[str, str]:
    """No configuration at all but a data folder: the embedded default."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "BROKER_", "REDIS_", "PURGE_", "PUBLISH_", "LOG_"))
    }
    return env | {"NUMBERS_RETENTION_DATA": str(data)}


@pytest.fixture
def cli(tmp_path: Path, cli_in: Callable[..., Invoke]) -> Invoke:
    """The command line on the embedded default in `tmp_path`, no other setting, the log
    format left to the command (off a terminal: JSON)."""
    return cli_in(tmp_path, LOG_FORMAT="auto")


def test_seed_demo_then_list_prints_a_body_that_meets_the_contract(
    cli: Invoke, released_numbers_validator: Draft202012Validator
) -> None:
    seeded = cli("seed-demo", "--numbers", "300", "--accounts", "4")
    assert seeded.exit_code == 0, seeded.stderr
    summary = json.loads(seeded.stdout)
    assert (summary["numbers"], summary["accounts"]) == (300, 4)
    assert summary["overdue"] > 0
    listed = cli("list", "--account", "acc_00001")
    assert listed.exit_code == 0, listed.stderr
    body = json.loads(listed.stdout)
    released_numbers_validator.validate(body)
    assert body["numbers"]
    again = cli("seed-demo", "--if-empty")
    assert again.exit_code == 0
    assert json.loads(again.stdout) == {"seeded": False, "reason": "store_not_empty"}


def test_purge_dry_run_then_purge(cli: Invoke) -> None:
    seeded = cli("seed-demo", "--numbers", "200", "--accounts", "3")
    assert seeded.exit_code == 0
    dry = json.loads(cli("purge", "--dry-run").stdout)
    assert dry["status"] == "dry_run"
    assert dry["would_purge"] == json.loads(seeded.stdout)["overdue"] > 0
    done = cli("purge")
    report = json.loads(done.stdout)
    assert (report["status"], report["purged"], report["remaining"]) == (
        "completed",
        dry["would_purge"],
        0,
    )
    # Off a terminal the events are JSON lines on stderr.
    events = [e["event"] for e in json_events(done.stderr)]
    assert events[0] == "purge.started"
    assert events[-1] == "purge.finished"
    assert "purge.batch" in events


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["list", "--account", "acc_missing"], "account_not_found"),
        (["list", "--account", "acc_00001", "--now", "2026-11-27T12:00:00"], "naive_datetime"),
        (["purge", "--now", "last tuesday"], "invalid_now"),
    ],
)
def test_errors_print_the_envelope_and_exit_2(cli: Invoke, args: list[str], code: str) -> None:
    assert cli("migrate").exit_code == 0
    result = cli(*args)
    assert result.exit_code == 2
    envelope = json.loads(result.stderr.strip().splitlines()[-1])
    assert envelope["error"]["code"] == code
    assert envelope["error"]["fix"]
    assert envelope["trackingId"]


@pytest.mark.processes(moved_clock=False)
def test_run_purges_demo_numbers_on_the_embedded_default(tmp_path: Path, cli: Invoke) -> None:
    """README's main job: no configuration, the demo's overdue numbers go within a minute."""
    seeded = json.loads(cli("seed-demo", "--numbers", "500", "--accounts", "5").stdout)
    process = Process([SCRIPT, "run"], embedded_env(tmp_path), tmp_path / "run.log")
    try:
        finished = wait_for(
            lambda: [e for e in process.events() if e["event"] == "purge.finished"],
            timeout=60,
            what="purge.finished from `numbers-retention run`",
        )
    finally:
        process.stop()
    assert finished[0]["purged"] == seeded["overdue"]
    assert finished[0]["task_name"] == "numbers.purge_expired"
    status = json.loads(cli("status", "--json").stdout)
    assert status["overdue"] == 0
    assert status["last_runs"][0]["purged"] == seeded["overdue"]


def test_the_runbook_names_every_key_of_status_json(cli: Invoke) -> None:
    assert cli("migrate").exit_code == 0
    status = cli("status", "--json", "--max-lag", "1h")
    assert status.exit_code == 0, status.stderr
    documented = first_column(table_after("`status --json` prints the same as JSON")) - {"key"}
    assert documented == set(json.loads(status.stdout))


def test_an_unmigrated_store_gets_the_envelope_not_a_traceback(tmp_path: Path, cli: Invoke) -> None:
    (tmp_path / "numbers.db").touch()  # a store nothing migrated (a missing one: test_embedded)
    result = cli("status")
    assert result.exit_code == 1
    envelope = json.loads(result.stderr.strip().splitlines()[-1])
    assert envelope["error"]["code"] == "store_not_migrated"
    assert "numbers-retention migrate" in envelope["error"]["fix"]
    assert "Traceback" not in result.stderr


def test_an_unreachable_store_is_named_without_its_password(
    tmp_path: Path, cli_in: Callable[..., Invoke]
) -> None:
    cli = cli_in(tmp_path, DATABASE_URL="postgresql://ops:s3cret-pw@127.0.0.1:9/x")
    result = cli("list", "--account", "acc_1")
    assert result.exit_code == 1
    envelope = json.loads(result.stderr.strip().splitlines()[-1])
    assert envelope["error"]["code"] == "store_unavailable"
    assert "ops:***@127.0.0.1:9" in envelope["error"]["message"]
    assert "s3cret-pw" not in result.stderr + result.stdout


@pytest.mark.postgres
def test_commands_against_postgresql_leave_no_embedded_folders_behind(
    tmp_path: Path,
    pg_store: Engine,
    pg_url: str,
    cli_in: Callable[..., Invoke],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a worker, beat or a producer on the embedded broker makes its folders."""
    monkeypatch.chdir(tmp_path)
    cli = cli_in(tmp_path / "data", DATABASE_URL=pg_url, LOG_FORMAT="auto")
    for args, code in (
        (("status",), 0),
        (("list", "--account", "acc_nobody"), 2),
        (("purge", "--dry-run"), 0),
    ):
        assert cli(*args).exit_code == code
    assert list(tmp_path.iterdir()) == []


@pytest.mark.processes(moved_clock=False)
@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="script"),
        # The version needs no settings: it is what an operator asks first of a broken deploy.
        pytest.param({"RETENTION_DAYS": "abc", "PROVIDER": "twilio"}, id="script-wrong-settings"),
    ],
)
def test_version_prints_the_installed_version(tmp_path: Path, settings: dict[str, str]) -> None:
    """The console script answers before it checks the settings (worker/entry.py)."""
    done = subprocess.run(
        [SCRIPT, "--version"],
        env=embedded_env(tmp_path) | settings,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"numbers-retention {version('numbers-retention')}\n"
    assert done.stderr == ""


def test_the_command_line_prints_the_installed_version(cli: Invoke) -> None:
    """The command group's own `--version` (worker/cli.py), as `python -m worker.cli` answers."""
    done = cli("--version")
    assert done.exit_code == 0, done.stderr
    assert done.stdout == f"numbers-retention {version('numbers-retention')}\n"
    assert done.stderr == ""
