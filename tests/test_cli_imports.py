"""The command line builds no Celery app where it needs none: `--help`, and every command's
help, import neither the Celery app (worker/app.py) nor the tasks' module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Fresh interpreters, whose answers no date changes: once, with the fixed-instant tests.
pytestmark = pytest.mark.processes(moved_clock=False)

# In a fresh interpreter (this test process has long imported the app): the command line run
# in process (click's runner), then which of the worker's heavy modules it imported.
SCRIPT = """
import json, sys
from click.testing import CliRunner
from worker.cli import main
result = CliRunner().invoke(main, sys.argv[1:])
heavy = ("worker.app", "worker.tasks", "worker.metrics", "alembic")
print(json.dumps({"exit": result.exit_code, "output": result.output,
                  "imported": [name for name in heavy if name in sys.modules]}))
"""


def _help(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def test_help_builds_no_celery_app() -> None:
    answer = _help("--help")
    assert answer["exit"] == 0
    assert "Retention worker for released phone numbers." in str(answer["output"])
    assert answer["imported"] == []


@pytest.mark.parametrize("command", ["run", "purge", "prune", "publish", "status", "metrics"])
def test_a_commands_help_builds_no_celery_app(command: str) -> None:
    answer = _help(command, "--help")
    assert answer["exit"] == 0
    assert f"Usage: main {command} [OPTIONS]" in str(answer["output"])
    assert answer["imported"] == []
