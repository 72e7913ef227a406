"""A real Prometheus scrapes a real `numbers-retention metrics`; it sees what `status` says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import utcnow
from tests.factories import make_number, make_numbers
from tests.processes import Process, program, service_env, wait_for
from tests.servers import free_port
from tests.test_metrics import Samples, expected

CLI = str(Path(sys.executable).parent / "numbers-retention")


pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.processes]

ALERTS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"
DAY = timedelta(days=1)
# oldest_overdue_seconds grows with the clock: Prometheus's value is up to a cache window
# plus a scrape interval older than status's.
CLOCK_SLACK = 10.0
# The exporter's settings are the defaults: the alert rules measure ages against these.
DEFAULT_SCHEDULE = {"purge": 900, "publish": 3600, "relay": 2}


def _binary(name: str) -> str:
    return program(name, "prometheus")


@pytest.fixture
def env(pg_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: the test store and Redis, a short exporter cache."""
    return service_env(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        METRICS_CACHE_SECONDS="0.5",
    )


@pytest.fixture
def exporter(
    env: dict[str, str],
    pg_factory: sessionmaker[Session],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> Iterator[str]:
    """`numbers-retention metrics` on a free port; yields its host:port."""
    port = free_port()
    process = Process([CLI, "metrics", "--port", str(port)], env, tmp_path / "metrics.log")
    address = f"127.0.0.1:{port}"
    try:
        wait_for(
            lambda: _answers(f"http://{address}/metrics"),
            timeout=30,
            what="the exporter to answer",
        )
        yield address
    finally:
        process.stop()
    assert "Traceback" not in process.output(), process.output()[-3000:]
    assert [e["event"] for e in process.events()][-1] == "metrics.stopped"


@pytest.fixture
def prometheus(exporter: str, tmp_path: Path) -> Iterator[str]:
    """Debian's prometheus on a free port, scraping the exporter every second, with the alerts."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "numbers-retention", "static_configs": [{"targets": [exporter]}]}
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    process = Process(
        [
            _binary("prometheus"),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        dict(os.environ),
        tmp_path / "prometheus.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/-/ready"), timeout=60, what="Prometheus to be ready")
        yield base
    finally:
        process.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def scraped(base: str) -> Samples:
    """Prometheus's latest value of every numbers_retention_* series, without target labels."""
    answer = httpx.get(
        f"{base}/api/v1/query", params={"query": '{__name__=~"numbers_retention_.+"}'}, timeout=5
    ).json()
    assert answer["status"] == "success", answer
    samples: Samples = {}
    for series in answer["data"]["result"]:
        labels = dict(series["metric"])
        name = labels.pop("__name__")
        del labels["job"], labels["instance"]
        samples[(name, tuple(sorted(labels.items())))] = float(series["value"][1])
    return samples


def run_then_scrape(
    env: dict[str, str], prometheus: str, command: str, *, timeout: float, seen: str, what: str
) -> Samples:
    """`numbers-retention <command>`, which must succeed; then Prometheus's values, once its
    latest complete scrape shows `seen`, a series only the command's end writes (a scrape
    taken while it ran lacks it)."""
    done = subprocess.run([CLI, command], env=env, capture_output=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return wait_for(
        lambda: (
            values if (seen, ()) in (values := scraped(prometheus)) and complete(values) else None
        ),
        timeout=60,
        what=what,
    )


def complete(values: Samples) -> bool:
    """A scrape in which every source answered within the exporter's budget: on a loaded
    machine one may not have (numbers_retention_scrape_source_up 0, its metrics absent)."""
    sources = {
        labels: value
        for (name, labels), value in values.items()
        if name == "numbers_retention_scrape_source_up"
    }
    return len(sources) == 3 and set(sources.values()) == {1.0}


def status(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [CLI, "status", "--json"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def agree(prometheus_values: Samples, report: dict[str, Any]) -> None:
    """Prometheus's values are status's, the ever-growing ages within the clock's slack."""
    want, got = expected(report, report["publication"], DEFAULT_SCHEDULE), dict(prometheus_values)
    # Redis's own state, not a status key: its eviction policy (the test Redis's, whatever it is).
    policies = [key for key in got if key[0] == "numbers_retention_redis_maxmemory_policy"]
    assert [got.pop(key) for key in policies] == [1]
    # The stream's own state (tests/test_stream.py): its ceiling, the default setting, and
    # nothing dropped unread; its length (what the relay appended so far) is no status key.
    assert got.pop(("numbers_retention_stream_maxlen", ())) == 100_000
    assert got.pop(("numbers_retention_stream_dropped_unread_total", ())) == 0
    got.pop(("numbers_retention_stream_entries", ()))
    for oldest in (
        ("numbers_retention_oldest_overdue_seconds", ()),
        ("numbers_retention_outbox_oldest_event_age_seconds", ()),
    ):
        assert got.pop(oldest) == pytest.approx(want.pop(oldest), abs=CLOCK_SLACK)
    assert set(got) == set(want)  # the same series first: a clear diff if not
    assert got == pytest.approx(want, abs=1e-3)


def test_prometheus_sees_what_status_says_before_and_after_a_purge(
    env: dict[str, str], pg_factory: sessionmaker[Session], prometheus: str
) -> None:
    now = utcnow()
    with pg_factory.begin() as session:
        make_numbers(
            session,
            account_id="acc_1",
            ages={f"+1415555010{i}": (15 + i) * DAY for i in range(3)},
            now=now,
        )
        make_number(
            session, account_id="acc_2", phone_number="+14155550200", released_at=now - DAY, now=now
        )
    before = run_then_scrape(
        env,
        prometheus,
        "publish",
        timeout=60,
        seen="numbers_retention_publish_last_success_timestamp_seconds",
        what="Prometheus to scrape the seeded store",
    )
    agree(before, status(env))
    assert ("numbers_retention_purge_last_success_timestamp_seconds", ()) not in before
    assert before[("numbers_retention_oldest_overdue_seconds", ())] >= 3 * 86400 - CLOCK_SLACK

    after = run_then_scrape(
        env,
        prometheus,
        "purge",
        timeout=120,
        # The finished run, not purged_total: a run record counts its rows batch by batch, so
        # a scrape taken just before the run ended showed 3 already (it failed in CI).
        seen="numbers_retention_purge_last_run_purged",
        what="Prometheus to scrape the purged store",
    )
    report = status(env)
    agree(after, report)
    assert after[("numbers_retention_overdue", ())] == 0
    assert after[("numbers_retention_releasable", ())] == 1
    assert after[("numbers_retention_purge_last_run_purged", ())] == 3

    # The alert rules load and evaluate in a real Prometheus.
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    [group] = rules
    assert group["name"] == "numbers-retention"
    rules_file = yaml.safe_load(ALERTS.read_text())
    # Every rule of the file, by name (a count written here went stale with each new rule).
    written = [rule["alert"] for rule in rules_file["groups"][0]["rules"]]
    assert sorted(rule["name"] for rule in group["rules"]) == sorted(written)
    assert "NumbersRetentionScrapeSourceSlow" in written
    assert {rule["health"] for rule in group["rules"]} == {"ok"}
