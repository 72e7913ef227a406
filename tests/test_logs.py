"""Log rendering: JSON lines off a terminal, console rendering on one; URL passwords masked."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

SNIPPET = """
import structlog
from shared.settings import get_settings
from worker.logs import configure_logging
configure_logging(get_settings())
structlog.get_logger().info("purge.batch", purged=3, url="redis://:hunter2@host:6379/0")
"""


def run(stderr: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOG_FORMAT"}
    subprocess.run([sys.executable, "-c", SNIPPET], stderr=stderr, env=env, timeout=60, check=True)


@pytest.mark.processes(moved_clock=False)
def test_json_lines_when_not_on_a_terminal() -> None:
    read, write = os.pipe()
    run(write)
    os.close(write)
    with os.fdopen(read) as pipe:
        event = json.loads(pipe.read().strip().splitlines()[-1])
    assert (event["event"], event["purged"], event["level"]) == ("purge.batch", 3, "info")
    assert event["url"] == "redis://:***@host:6379/0"
    assert event["timestamp"].endswith("Z")


@pytest.mark.processes(moved_clock=False)
def test_console_rendering_on_a_terminal() -> None:
    master, slave = pty.openpty()
    run(slave)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed: everything was read
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    text = output.decode()
    assert "purge.batch" in text
    assert "purged" in text
    assert not text.lstrip().startswith("{")  # not a JSON line
    assert "hunter2" not in text
