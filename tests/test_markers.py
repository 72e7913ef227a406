"""The suite's own rules: a test that starts a process says so (`processes`)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_an_unmarked_test_that_starts_a_process_fails() -> None:
    with pytest.raises(pytest.fail.Exception, match="is not marked `processes`"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


@pytest.mark.processes(moved_clock=False)
def test_a_marked_test_may_start_one() -> None:
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
