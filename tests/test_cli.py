"""The `numbers-retention` command line, run as a user would, on the embedded default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import Engine

from tests.processes import Process, json_events, wait_for
from tests.runbook import first_column, table_after

CLI = [sys.executable, "-m", "worker.cli"]


def embedded_env(data: Path) -> dict[str, str]:
    """No configuration at all but a data folder: the embedded default."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "BROKER_", "REDIS_", "PURGE_", "PUBLISH_", "LOG_"))
    }
    return env | {"NUMBERS_RETENTION_DATA": str(data)}


def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=embedded_env(data),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_seed_demo_then_list_prints_a_body_that_meets_the_contract(
    tmp_path: Path, released_numbers_validator: Draft202012Validator
) -> None:
    seeded = cli(tmp_path, "seed-demo", "--numbers", "300", "--accounts", "4")
    assert seeded.returncode == 0, seeded.stderr
    summary = json.loads(seeded.stdout)
    assert (summary["numbers"], summary["accounts"]) == (300, 4)
    assert summary["overdue"] > 0
    listed = cli(tmp_path, "list", "--account", "acc_00001")
    assert listed.returncode == 0, listed.stderr
    body = json.loads(listed.stdout)
    released_numbers_validator.validate(body)
    assert body["numbers"]
    again = cli(tmp_path, "seed-demo", "--if-empty")
    assert again.returncode == 0
    assert json.loads(again.stdout) == {"seeded": False, "reason": "store_not_empty"}


def test_purge_dry_run_then_purge(tmp_path: Path) -> None:
    assert cli(tmp_path, "seed-demo", "--numbers", "200", "--accounts", "3").returncode == 0
    dry = json.loads(cli(tmp_path, "purge", "--dry-run").stdout)
    assert dry["status"] == "dry_run"
    assert dry["would_purge"] > 0
    done = cli(tmp_path, "purge")
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
def test_errors_print_the_envelope_and_exit_2(tmp_path: Path, args: list[str], code: str) -> None:
    cli(tmp_path, "migrate")
    result = cli(tmp_path, *args)
    assert result.returncode == 2
    envelope = json.loads(result.stderr.strip().splitlines()[-1])
    assert envelope["error"]["code"] == code
    assert envelope["error"]["fix"]
    assert envelope["trackingId"]


def test_run_purges_demo_numbers_on_the_embedded_default(tmp_path: Path) -> None:
    """README's main job: no configuration, the demo's overdue numbers go within a minute."""
    seeded = json.loads(cli(tmp_path, "seed-demo", "--numbers", "500", "--accounts", "5").stdout)
    process = Process([*CLI, "run"], embedded_env(tmp_path), tmp_path / "run.log")
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
    status = json.loads(cli(tmp_path, "status", "--json").stdout)
    assert status["overdue"] == 0
    assert status["last_runs"][0]["purged"] == seeded["overdue"]


def test_the_runbook_names_every_key_of_status_json(tmp_path: Path) -> None:
    assert cli(tmp_path, "migrate").returncode == 0
    status = cli(tmp_path, "status", "--json", "--max-lag", "1h")
    assert status.returncode == 0, status.stderr
    documented = first_column(table_after("`status --json` prints the same as JSON")) - {"key"}
    assert documented == set(json.loads(status.stdout))


def test_an_unmigrated_store_gets_the_envelope_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "numbers.db").touch()  # a store nothing migrated (a missing one: test_embedded)
    result = cli(tmp_path, "status")
    assert result.returncode == 1
    envelope = json.loads(result.stderr.strip().splitlines()[-1])
    assert envelope["error"]["code"] == "store_not_migrated"
    assert "numbers-retention migrate" in envelope["error"]["fix"]
    assert "Traceback" not in result.stderr


def test_an_unreachable_store_is_named_without_its_password(tmp_path: Path) -> None:
    env = embedded_env(tmp_path) | {"DATABASE_URL": "postgresql://ops:s3cret-pw@127.0.0.1:9/x"}
    result = subprocess.run(
        [*CLI, "list", "--account", "acc_1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    envelope = json.loads(result.stderr.strip().splitlines()[-1])
    assert envelope["error"]["code"] == "store_unavailable"
    assert "ops:***@127.0.0.1:9" in envelope["error"]["message"]
    assert "s3cret-pw" not in result.stderr + result.stdout


@pytest.mark.postgres
def test_commands_against_postgresql_leave_no_embedded_folders_behind(
    tmp_path: Path, pg_store: Engine, pg_url: str
) -> None:
    """Only a worker, beat or a producer on the embedded broker makes its folders."""
    env = embedded_env(tmp_path / "data") | {"DATABASE_URL": pg_url}
    for args in (("status",), ("list", "--account", "acc_nobody"), ("purge", "--dry-run")):
        subprocess.run([*CLI, *args], env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "settings"),
    [
        pytest.param([str(Path(sys.executable).parent / "numbers-retention")], {}, id="script"),
        # The version needs no settings: it is what an operator asks first of a broken deploy.
        pytest.param(
            [str(Path(sys.executable).parent / "numbers-retention")],
            {"RETENTION_DAYS": "abc", "PROVIDER": "twilio"},
            id="script-wrong-settings",
        ),
        pytest.param(CLI, {}, id="module"),
    ],
)
def test_version_prints_the_installed_version(
    tmp_path: Path, command: list[str], settings: dict[str, str]
) -> None:
    done = subprocess.run(
        [*command, "--version"],
        env=embedded_env(tmp_path) | settings,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"numbers-retention {version('numbers-retention')}\n"
    assert done.stderr == ""
