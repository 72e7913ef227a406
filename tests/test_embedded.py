"""The embedded default as an operator meets it: the console script, run from any folder."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from shared.settings import Settings
from tests.factories import NOW
from tests.processes import Process, wait_for
from tests.servers import free_port

SCRIPT = str(Path(sys.executable).with_name("numbers-retention"))
CELERY = str(Path(sys.executable).with_name("celery"))


def embedded_env(data: Path | None) -> dict[str, str]:
    """No configuration at all (but the data folder, when given): the embedded default."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("DATABASE_", "BROKER_", "REDIS_", "RESULT_", "PURGE_", "PUBLISH_", "RELAY_", "LOG_")
        )
        and k != "NUMBERS_RETENTION_DATA"
    }
    env["LOG_FORMAT"] = "json"
    return env if data is None else env | {"NUMBERS_RETENTION_DATA": str(data)}


def script(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def queued(data: Path) -> list[Path]:
    """The messages waiting in the embedded broker's queue folder."""
    queue = data / "broker" / "queue"
    return sorted(queue.iterdir()) if queue.exists() else []


@pytest.mark.processes(moved_clock=False)
def test_a_run_that_fails_on_a_bad_flag_leaves_nothing_queued(tmp_path: Path) -> None:
    data = tmp_path / "data"
    failed = script("run", "--bogus-flag", env=embedded_env(data), cwd=tmp_path)
    assert failed.returncode == 2  # Celery's usage error
    assert "--bogus-flag" in failed.stderr
    # Before: the start-up purge was sent before Celery read its arguments, and the next
    # `run` purged once for each failed attempt.
    assert queued(data) == []


def user_env(tmp_path: Path) -> dict[str, str]:
    """The embedded default with NUMBERS_RETENTION_DATA unset, the user's data folder in
    `tmp_path` (never the real home's)."""
    return embedded_env(None) | {"XDG_DATA_HOME": str(tmp_path / "xdg")}


def folders(tmp_path: Path) -> tuple[Path, Path]:
    """A project folder and another one, both empty."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    return project, elsewhere


@pytest.mark.processes(moved_clock=False)
def test_commands_from_any_folder_open_the_same_embedded_store(tmp_path: Path) -> None:
    env, (project, elsewhere) = user_env(tmp_path), folders(tmp_path)
    seeded = script("seed-demo", "--numbers", "200", "--accounts", "3", env=env, cwd=project)
    assert seeded.returncode == 0, seeded.stderr
    # Before: `status` here opened a second, empty store under ./data and said to migrate it.
    status = script("status", "--json", env=env, cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["overdue"] == json.loads(seeded.stdout)["overdue"] > 0
    assert list(project.iterdir()) == list(elsewhere.iterdir()) == []
    store = tmp_path / "xdg" / "numbers-retention" / "numbers.db"
    assert store.is_file()
    assert str(store) in script("migrate", env=env, cwd=elsewhere).stdout


@pytest.mark.processes(moved_clock=False)
def test_celery_call_from_another_folder_reaches_the_running_worker(tmp_path: Path) -> None:
    env, (project, elsewhere) = user_env(tmp_path), folders(tmp_path)
    run = Process([SCRIPT, "run", "--concurrency=1"], env, tmp_path / "run.log", cwd=project)
    try:
        wait_for(
            lambda: [e for e in run.events() if e["event"] == "purge.finished"],
            timeout=60,
            what="the start-up purge",
        )
        # Before: it failed on a results folder it looked for under ./data of this folder.
        called = subprocess.run(
            [CELERY, "-A", "worker", "call", "numbers.purge_expired"],
            env=env,
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert called.returncode == 0, called.stderr
        task_id = called.stdout.strip()
        finished = wait_for(
            lambda: [
                e
                for e in run.events()
                if e["event"] == "purge.finished" and e.get("task_id") == task_id
            ],
            timeout=60,
            what="the purge sent from another folder",
        )
    finally:
        run.stop()
    assert finished[0]["status"] == "completed"
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["list", "--account", "acc_00001"],
        ["purge", "--dry-run"],
        ["holds"],
        ["pause"],
        ["metrics", "--port", "free"],
    ],
)
def test_commands_refuse_an_embedded_store_that_does_not_exist(
    tmp_path: Path,
    args: list[str],
    cli_in: Callable[..., Callable[..., Result]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only `run`, `migrate` and `seed-demo` create a store; the others name the one they
    looked for and how to point at the right one."""
    data = tmp_path / "typo"
    args = [str(free_port()) if arg == "free" else arg for arg in args]
    monkeypatch.chdir(tmp_path)
    result = cli_in(data)(*args)
    assert result.exit_code == 1
    envelope = json.loads(result.stderr.strip().splitlines()[-1])
    assert envelope["error"]["code"] == "store_not_found"
    assert str(data / "numbers.db") in envelope["error"]["message"]
    assert "NUMBERS_RETENTION_DATA" in envelope["error"]["fix"]
    assert "numbers-retention migrate" in envelope["error"]["fix"]
    assert not (data / "numbers.db").exists()


def outbox_events(store: Path) -> int:
    """Events in the outbox (`number_events`) of the SQLite store at `store`."""
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        count: int = db.execute("SELECT count(*) FROM number_events").fetchone()[0]
    return count


@pytest.mark.processes(moved_clock=False)
def test_the_outbox_of_an_embedded_store_stays_bounded(tmp_path: Path) -> None:
    """No Redis, no one to relay to: the events of a purge must not pile up in the SQLite file.

    Seeded and purged twice by the console script, 30k numbers each, `run` up meanwhile.
    """
    data, batch = tmp_path / "data", Settings.model_fields["relay_batch_size"].default
    # Only the start-up purge runs on the worker; the purges here are the console script's.
    env = embedded_env(data) | {"PURGE_EVERY_SECONDS": "86400"}
    run = Process([SCRIPT, "run", "--concurrency=1"], env, tmp_path / "run.log", cwd=tmp_path)
    sizes = []
    try:
        wait_for(
            lambda: [e for e in run.events() if e["event"] == "purge.finished"],
            timeout=60,
            what="the start-up purge",
        )
        # Seeded and purged at one instant: on a busy machine, numbers seeded a moment before
        # their deadline passed it before the purge read its own clock (2 more purged).
        at = NOW.isoformat()
        for _ in range(2):
            seeded = script("seed-demo", "--numbers", "30000", "--now", at, env=env, cwd=tmp_path)
            assert seeded.returncode == 0, seeded.stderr
            purged = script("purge", "--now", at, env=env, cwd=tmp_path)
            assert purged.returncode == 0, purged.stderr
            overdue = json.loads(seeded.stdout)["overdue"]
            assert json.loads(purged.stdout)["purged"] == overdue > 12_000
            # Before: every `purged` event stayed, 52k more a round.
            wait_for(
                lambda: outbox_events(data / "numbers.db") <= batch,
                timeout=60,
                what=f"the outbox down to one relay batch ({batch})",
            )
            sizes.append((data / "numbers.db").stat().st_size)
    finally:
        run.stop()
    print(f"store sizes after each round (bytes): {sizes}")
    assert "Traceback" not in run.output(), run.output()[-3000:]
