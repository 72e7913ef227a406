"""A scrape always answers within its budget: a stalled database (its processes stopped with
SIGSTOP, so no server-side timeout can fire) or a locked table costs that source only, named
by `numbers_retention_scrape_source_up`; hundreds of concurrent scrapes all get an answer."""

from __future__ import annotations

import os
import signal
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from shared.db import make_session_factory
from shared.settings import get_settings
from tests.servers import PostgresServer
from tests.test_metrics import Samples, scrape
from worker.metrics import Reader, RetentionCollector, exporter_engine, start_server

pytestmark = pytest.mark.postgres

SOURCE_UP = "numbers_retention_scrape_source_up"
# Small, so that the tests wait little; what is asserted is the answer, not its time.
BUDGET = 1.0


def sources(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["source"]: value
        for (name, labels), value in samples.items()
        if name == SOURCE_UP
    }


def _cluster_pids(server: PostgresServer) -> list[int]:
    """The private cluster's postmaster and every process it forked (the backends)."""
    postmaster = int((server.data / "postmaster.pid").read_text().splitlines()[0])
    children = [
        int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _parent(int(pid)) == postmaster
    ]
    return [postmaster, *children]


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


@contextmanager
def stalled(server: PostgresServer) -> Iterator[None]:
    """Every process of the cluster stopped: open connections get no answer, new ones hang."""
    pids = _cluster_pids(server)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def http_scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def concurrent(scrapes: int, scrape_once: Callable[[], Samples]) -> list[Samples]:
    answers: list[Samples] = []
    lock = threading.Lock()

    def one() -> None:
        samples = scrape_once()
        with lock:
            answers.append(samples)

    threads = [threading.Thread(target=one) for _ in range(scrapes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@pytest.fixture
def exporter_on(settings_env: Callable[..., None]) -> Iterator[Callable[[str], Reader]]:
    """A Reader as `metrics` makes one for a store URL: a statement timeout far longer than
    the budget, so that only the exporter's own deadline can end a wait."""
    engines: list[Engine] = []

    def make(url: str) -> Reader:
        settings_env(DATABASE_URL=url, METRICS_STATEMENT_TIMEOUT_SECONDS="60")
        engines.append(exporter_engine(get_settings()))
        return Reader(make_session_factory(engines[-1]), None, budget=BUDGET)

    yield make
    for engine in engines:
        engine.dispose()


def test_a_stalled_database_costs_its_sources_only_and_every_scrape_answers(
    fault_pg: PostgresServer,
    exporter_on: Callable[[str], Reader],
    redis_client: redis.Redis,
) -> None:
    reader = exporter_on(fault_pg.url)
    reader = Reader(reader.factory, redis_client, budget=BUDGET)
    collector = RetentionCollector(reader, cache_seconds=0)
    assert sources(scrape(collector)) == {"store": 1, "runs": 1, "redis": 1}
    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = start_server(0, "127.0.0.1", registry)
    port = server.server_address[1]
    try:
        with stalled(fault_pg):
            # Open connections wait for an answer that never comes; the scrape does not.
            samples = scrape(collector)
            assert sources(samples) == {"store": 0, "runs": 0, "redis": 1}
            assert samples[("numbers_retention_up", ())] == 0
            assert ("numbers_retention_publish_failing", ()) in samples
            # Many scrapes at once, over HTTP: each answers, none starts another read.
            answers = concurrent(100, lambda: http_scrape(port))
            assert [sources(answer) for answer in answers] == [
                {"store": 0, "runs": 0, "redis": 1}
            ] * 100
            threads = [t.name for t in threading.enumerate() if t.name.startswith("metrics-")]
            assert sorted(threads) == ["metrics-runs", "metrics-store"]
        # Resumed, the reads in flight finish and the next scrapes read the store again.
        again = RetentionCollector(Reader(reader.factory, redis_client), cache_seconds=0)
        assert sources(scrape(again)) == {"store": 1, "runs": 1, "redis": 1}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_locked_table_costs_its_source_only_and_concurrent_scrapes_all_answer(
    pg_url: str, pg_engine: Engine, exporter_on: Callable[[str], Reader]
) -> None:
    reader = exporter_on(pg_url)
    collector = RetentionCollector(reader, cache_seconds=0)
    assert sources(scrape(collector)) == {"store": 1, "runs": 1}
    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = start_server(0, "127.0.0.1", registry)
    port = server.server_address[1]
    try:
        with pg_engine.connect() as blocker:
            # The purge's records locked (a migration, a VACUUM FULL): the counts still answer.
            blocker.exec_driver_sql("LOCK TABLE purge_runs IN ACCESS EXCLUSIVE MODE")
            try:
                answers = concurrent(200, lambda: http_scrape(port))
            finally:
                blocker.rollback()
        assert [sources(answer) for answer in answers] == [{"store": 1, "runs": 0}] * 200
        assert all(("numbers_retention_overdue", ()) in answer for answer in answers)
        assert not [a for a in answers if ("numbers_retention_paused", ()) in a]
        # The lock gone, the read in flight ends and the runs come back.
        again = RetentionCollector(Reader(reader.factory, None), cache_seconds=0)
        assert sources(scrape(again)) == {"store": 1, "runs": 1}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
