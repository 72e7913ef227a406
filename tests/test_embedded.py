"""The embedded default as an operator meets it: the console script, run from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = str(Path(sys.executable).with_name("numbers-retention"))


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


def test_a_run_that_fails_on_a_bad_flag_leaves_nothing_queued(tmp_path: Path) -> None:
    data = tmp_path / "data"
    failed = script("run", "--bogus-flag", env=embedded_env(data), cwd=tmp_path)
    assert failed.returncode != 0
    assert "--bogus-flag" in failed.stderr
    # Before: the start-up purge was sent before Celery read its arguments, and the next
    # `run` purged once for each failed attempt.
    assert queued(data) == []
