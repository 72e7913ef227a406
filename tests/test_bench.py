"""The benchmarks still run and print their closing line (tiny stores; no timing asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

BENCH = Path(__file__).parent.parent / "bench"

# Each benchmark runs as the script it is, in a process of its own.
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.processes(moved_clock=False)]


@pytest.mark.parametrize(
    ("script", "args", "last_line"),
    [
        (
            "purge.py",
            ["--rows", "3000", "--repeat", "1"],
            r"purge: rows=\d+ project=\d+ limit=\d+ naive=\d+ vs_limit=[\d.]+ vs_naive=[\d.]+ "
            r"worst_batch_ms=[\d.]+ peak_rss_mb=[\d.]+",
        ),
        (
            "list.py",
            ["--rows", "3000", "--calls", "50", "--repeat", "1"],
            r"list: median_ms=[\d.]+ p99_ms=[\d.]+ floor_median_ms=[\d.]+ ratio=[\d.]+",
        ),
        ("publish.py", ["--rows", "3000", "--repeat", "1"], r"publish: numbers=\d+ seconds=[\d.]+"),
        (
            "releasable.py",
            ["--releasable", "3000", "--repeat", "2"],
            r"releasable: numbers=\d+ full_s=[\d.]+ changes=\d+ incremental_s=[\d.]+",
        ),
        (
            "ratelimit.py",
            ["--rates", "50", "--seconds", "0.4"],
            r"ratelimit: rates=50 worst_ratio=[\d.]+ worst_429_pct=[\d.]+",
        ),
        (
            "impact.py",
            ["--rows", "3000", "--repeat", "1", "--idle-seconds", "0.5"],
            r"impact: list_p99_ratio=[\d.]+ write_p99_ratio=[\d.]+ purge_rows_s=\d+ "
            r"worst_batch_ms=[\d.]+ worst_transaction_ms=[\d.]+",
        ),
        (
            "impact.py",
            [
                "--rows",
                "3000",
                "--repeat",
                "1",
                "--idle-seconds",
                "0.5",
                "--lanes",
                "telnyx,twilio",
            ],
            r"impact: list_p99_ratio=[\d.]+ write_p99_ratio=[\d.]+ purge_rows_s=\d+ "
            r"worst_batch_ms=[\d.]+ worst_transaction_ms=[\d.]+",
        ),
        (
            "api.py",
            ["--smoke"],
            r"api: list_ratio=[\d.]+ list_p99_ratio=[\d.]+ during_purge_p99_ratio=[\d.]+",
        ),
    ],
)
def test_benchmark_runs(
    pg_url: str, redis_url: str, script: str, args: list[str], last_line: str
) -> None:
    # Named after the test database: test runs on other databases do not share these.
    database = f"{make_url(pg_url).database}_bench_smoke"
    url = make_url(pg_url).set(database=database).render_as_string(hide_password=False)
    extra = ["--redis-url", redis_url] if script in ("publish.py", "releasable.py") else []
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--url", url, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.fullmatch(last_line, done.stdout.strip().splitlines()[-1])
