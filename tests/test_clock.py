"""The suite's clocks: the processes a test starts read the clock pytest reads (make test-clock)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest


@pytest.mark.processes  # on the host's clock and with it moved: the lanes' own check
def test_a_process_started_elsewhere_reads_the_clock_of_the_suite(
    wall_now: datetime, tmp_path: Path
) -> None:
    # From another folder, as worker, beat and compose's services start: with the clock moved,
    # a child on the real calendar would contradict every instant the test decided on.
    child = subprocess.run(
        [sys.executable, "-c", "from datetime import UTC, datetime; print(datetime.now(UTC))"],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert abs(datetime.fromisoformat(child.stdout.strip()) - wall_now) < timedelta(minutes=1)
