"""The exporter's metrics: the numbers of `status --json`, cached; `up 0` on a dead store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker

from shared import migrate
from shared.db import make_engine, make_session_factory
from shared.models import NumberEvent, PhoneNumber
from shared.releasable.reconcile import reconcile_releasable
from shared.releasable.record import reconciliation_status
from shared.releasable.relay import discard_events, relay_events
from shared.settings import Settings, get_settings
from shared.status import store_status
from tests.factories import NOW, make_number, make_numbers
from tests.metric_names import CONTRACT, EXTRAS, finished_run, status_read
from tests.purging import purge_expired
from tests.servers import free_port
from tests.stores import fail_upstream
from worker.metrics import (
    RUN_STATUSES,
    VERSION,
    Reader,
    Reading,
    RetentionCollector,
    exporter_engine,
    families,
    schedule_seconds,
)

DAY = timedelta(days=1)
# What a store the exporter cannot read gives: up 0, and the build (never a store metric).
DEAD_STORE = {
    ("numbers_retention_up", ()): 0,
    ("numbers_retention_build_info", (("version", VERSION),)): 1,
    ("numbers_retention_scrape_source_up", (("source", "store"),)): 0,
    ("numbers_retention_scrape_source_up", (("source", "runs"),)): 0,
}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(collector: Any) -> Samples:
    """The exposition text Prometheus would read, parsed back into samples."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def expected(
    status: dict[str, Any],
    publication: dict[str, Any] | None = None,
    schedule: dict[str, int] | None = None,
) -> Samples:
    """The contract: each metric is the `status --json` value of the same name (and the
    schedule, the settings')."""

    def at(iso: str) -> float:
        return datetime.fromisoformat(iso).timestamp()

    last = status["last_finished_run"]
    samples: Samples = {
        ("numbers_retention_up", ()): 1,
        ("numbers_retention_build_info", (("version", VERSION),)): 1,
        ("numbers_retention_outbox_events", ()): status["outbox"]["events"],
        ("numbers_retention_outbox_oldest_event_age_seconds", ()): status["outbox"][
            "oldest_age_seconds"
        ],
        ("numbers_retention_overdue", ()): status["overdue"],
        ("numbers_retention_submitted_numbers", ()): status["submitted"]["numbers"],
        ("numbers_retention_submitted_oldest_age_seconds", ()): status["submitted"][
            "oldest_age_seconds"
        ],
        ("numbers_retention_oldest_overdue_seconds", ()): status["oldest_overdue_seconds"],
        ("numbers_retention_held", ()): status["held"],
        ("numbers_retention_releasable", ()): status["releasable"],
        ("numbers_retention_upstream_failed", (("kind", "transient"),)): status["upstream_failed"]
        - status["upstream_permanent"]
        - status["upstream_refused_carrier"],
        ("numbers_retention_upstream_failed", (("kind", "permanent"),)): status[
            "upstream_permanent"
        ]
        - status["upstream_refused_person"],
        ("numbers_retention_upstream_failed", (("kind", "refused_person"),)): status[
            "upstream_refused_person"
        ],
        ("numbers_retention_upstream_failed", (("kind", "refused_carrier"),)): status[
            "upstream_refused_carrier"
        ],
        ("numbers_retention_paused", ()): int(status["paused"]),
        ("numbers_retention_purged_total", ()): status["purged_total"],
    }
    # Every source read within the scrape's budget (Redis: when there is one).
    for source in ("store", "runs", *(["redis"] if publication is not None else [])):
        samples[("numbers_retention_scrape_source_up", (("source", source),))] = 1
    if status["purge_last_success_at"]:
        samples[("numbers_retention_purge_last_success_timestamp_seconds", ())] = at(
            status["purge_last_success_at"]
        )
    if last:
        for name in {*RUN_STATUSES, last["status"]}:
            samples[("numbers_retention_purge_last_run_status", (("status", name),))] = int(
                name == last["status"]
            )
        samples |= {
            ("numbers_retention_purge_last_run_seconds", ()): last["seconds"],
            ("numbers_retention_purge_last_run_purged", ()): last["purged"],
            ("numbers_retention_purge_last_run_worst_batch_seconds", ()): last["worst_batch_ms"]
            / 1000,
        }
    if publication is not None:
        samples[("numbers_retention_publish_failing", ())] = int(publication["failing"])
        if publication["last_success_at"]:
            samples[("numbers_retention_publish_last_success_timestamp_seconds", ())] = at(
                publication["last_success_at"]
            )
    for task, seconds in (schedule or {}).items():
        samples[("numbers_retention_schedule_seconds", (("task", task),))] = seconds
    return samples


def seed(factory: sessionmaker[Session]) -> None:
    """Three overdue numbers (one a day past its deadline), one held, one fresh, two stuck."""
    with factory.begin() as session:
        make_numbers(
            session, account_id="acc_1", ages={f"+1415555010{i}": (15 + i) * DAY for i in range(3)}
        )
        make_number(
            session, account_id="acc_1", phone_number="+14155550110", released_at=NOW - 20 * DAY
        )
        make_number(
            session, account_id="acc_2", phone_number="+14155550200", released_at=NOW - 2 * DAY
        )
        for phone_number, permanent in [("+14155550300", True), ("+14155550301", False)]:
            make_number(
                session, account_id="acc_3", phone_number=phone_number, released_at=NOW - 30 * DAY
            )
            fail_upstream(session, phone_number, permanent=permanent)
        session.execute(
            update(PhoneNumber)
            .where(PhoneNumber.phone_number == "+14155550110")
            .values(purge_hold=True)
        )


def at_now(factory: sessionmaker[Session]) -> Reader:
    return Reader(factory, None, clock=lambda: NOW)


def test_metrics_agree_with_status_before_and_after_a_purge(
    session_factory: sessionmaker[Session],
) -> None:
    seed(session_factory)
    collector = RetentionCollector(at_now(session_factory), cache_seconds=0)
    with session_factory() as session:
        before = store_status(session, now=NOW)
    samples = scrape(collector)
    assert samples == expected(before)
    # The seed, as numbers: the stuck ones are overdue too (claimed rows stay purgeable).
    assert samples[("numbers_retention_overdue", ())] == 5
    assert samples[("numbers_retention_oldest_overdue_seconds", ())] == 16 * 86400
    assert samples[("numbers_retention_held", ())] == 1
    assert samples[("numbers_retention_upstream_failed", (("kind", "permanent"),))] == 1
    assert ("numbers_retention_purge_last_success_timestamp_seconds", ()) not in samples

    report = purge_expired(session_factory, now=NOW)
    with session_factory() as session:
        after = store_status(session, now=NOW)
    samples = scrape(collector)
    assert samples == expected(after)
    # Whether the purge may take the stuck rows is the purge's rule; the metrics report what it did.
    assert report.purged >= 3
    assert samples[("numbers_retention_purged_total", ())] == report.purged
    assert samples[("numbers_retention_purge_last_run_purged", ())] == report.purged
    assert samples[("numbers_retention_purge_last_success_timestamp_seconds", ())] > 0


@pytest.mark.redis
@pytest.mark.postgres
def test_publication_metrics_come_from_redis(
    pg_factory: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    seed(pg_factory)
    reader = Reader(pg_factory, redis_client, clock=lambda: NOW)
    samples = scrape(RetentionCollector(reader, cache_seconds=0))
    assert samples[("numbers_retention_publish_failing", ())] == 0
    assert ("numbers_retention_publish_last_success_timestamp_seconds", ()) not in samples

    with pg_factory() as session:
        summary = reconcile_releasable(session, redis_client, now=NOW)
    samples = scrape(RetentionCollector(reader, cache_seconds=0))
    with pg_factory() as session:
        status = store_status(session, now=NOW)
    policy = str(redis_client.info("memory")["maxmemory_policy"])
    assert samples.pop(("numbers_retention_redis_maxmemory_policy", (("policy", policy),))) == 1
    # The stream (tests/test_stream.py): empty, no group, nothing dropped.
    assert samples.pop(("numbers_retention_stream_entries", ())) == 0
    assert samples.pop(("numbers_retention_stream_dropped_unread_total", ())) == 0
    assert samples == expected(status, reconciliation_status(redis_client, now=NOW))
    assert (
        samples[("numbers_retention_publish_last_success_timestamp_seconds", ())]
        == datetime.fromisoformat(summary["generated_at"]).timestamp()
    )


def test_the_relay_records_its_last_success_in_redis_for_the_exporter(
    pg_factory: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    """A relay that stopped (or failed every run) showed a fresh publication and nothing else."""
    reader = Reader(pg_factory, redis_client, clock=lambda: NOW)
    samples = scrape(RetentionCollector(reader, cache_seconds=0))
    assert ("numbers_retention_relay_last_success_timestamp_seconds", ()) not in samples
    before = time.time()
    assert relay_events(pg_factory, redis_client).status == "completed"
    samples = scrape(RetentionCollector(reader, cache_seconds=0))
    stamp = samples[("numbers_retention_relay_last_success_timestamp_seconds", ())]
    assert before - 1 <= stamp <= time.time() + 1
    policies = [
        dict(labels)["policy"]
        for (name, labels), value in samples.items()
        if name == "numbers_retention_redis_maxmemory_policy" and value == 1
    ]
    assert policies == [str(redis_client.info("memory")["maxmemory_policy"])]


def test_one_reading_serves_the_scrapes_of_the_cache_window() -> None:
    clock = [100.0]
    reads: list[int] = []

    def read() -> Reading:
        reads.append(1)
        return Reading(None, None, sources={"store": False, "runs": False})

    collector = RetentionCollector(read, cache_seconds=5, monotonic=lambda: clock[0])
    for _ in range(3):
        assert scrape(collector) == DEAD_STORE
    assert len(reads) == 1
    clock[0] += 4.9
    scrape(collector)
    assert len(reads) == 1
    clock[0] += 0.1
    scrape(collector)
    assert len(reads) == 2


def test_concurrent_scrapes_read_the_store_once() -> None:
    started, release = threading.Event(), threading.Event()
    reads: list[int] = []

    def slow_read() -> Reading:
        reads.append(1)
        started.set()
        release.wait(5)
        return Reading(None, None, sources={"store": False, "runs": False})

    collector = RetentionCollector(slow_read, cache_seconds=60)
    threads = [threading.Thread(target=scrape, args=(collector,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert started.wait(5)
    release.set()
    for thread in threads:
        thread.join(5)
    assert len(reads) == 1


@pytest.fixture
def unreachable_store() -> Iterator[Engine]:
    engine = make_engine(
        f"postgresql://nobody@127.0.0.1:{free_port()}/none", connect_args={"connect_timeout": 1}
    )
    yield engine
    engine.dispose()


def test_an_unreadable_store_is_up_0_and_nothing_else(unreachable_store: Engine) -> None:
    reader = Reader(make_session_factory(unreachable_store), None)
    assert scrape(RetentionCollector(reader, cache_seconds=0)) == DEAD_STORE


def test_an_unreadable_redis_leaves_out_the_publication_only(
    session_factory: sessionmaker[Session],
) -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=1)
    samples = scrape(
        RetentionCollector(Reader(session_factory, client, clock=lambda: NOW), cache_seconds=0)
    )
    assert samples[("numbers_retention_up", ())] == 1
    assert not [name for name, _ in samples if name.startswith("numbers_retention_publish")]


@pytest.fixture
def exporter_settings(pg_url: str, settings_env: Callable[..., None]) -> None:
    """The exporter on the test PostgreSQL with a short statement timeout."""
    settings_env(DATABASE_URL=pg_url, METRICS_STATEMENT_TIMEOUT_SECONDS="0.5")


@pytest.mark.postgres
def test_a_query_past_the_statement_timeout_is_up_0(
    exporter_settings: None, pg_engine: Engine
) -> None:
    engine = exporter_engine(get_settings())
    collector = RetentionCollector(Reader(make_session_factory(engine), None), cache_seconds=0)
    try:
        assert scrape(collector)[("numbers_retention_up", ())] == 1
        # A migration (or anything) holding the table: the scrape gives up instead of piling up.
        with pg_engine.connect() as blocker:
            blocker.exec_driver_sql("LOCK TABLE phone_numbers IN ACCESS EXCLUSIVE MODE")
            try:
                samples = scrape(collector)
                # The counts are left out; the runs, another table, are still read.
                assert {k: v for k, v in samples.items() if k in DEAD_STORE} == DEAD_STORE | {
                    ("numbers_retention_scrape_source_up", (("source", "runs"),)): 1
                }
                assert ("numbers_retention_paused", ()) in samples
                # A scrape that waited for the lock would not be here before the rollback:
                # the counts are left out because the statement timed out.
                assert ("numbers_retention_overdue", ()) not in samples
            finally:
                blocker.rollback()
        assert scrape(collector)[("numbers_retention_up", ())] == 1
    finally:
        engine.dispose()


def test_a_scrape_of_the_embedded_store_never_waits_for_a_writer(
    tmp_path: Path, settings_env: Callable[..., None]
) -> None:
    url = f"sqlite:///{tmp_path / 'numbers.db'}"
    settings_env(DATABASE_URL=url)
    writer = make_engine(url)
    migrate.upgrade(writer)
    engine = exporter_engine(get_settings())
    collector = RetentionCollector(Reader(make_session_factory(engine), None), cache_seconds=0)
    try:
        assert scrape(collector)[("numbers_retention_up", ())] == 1
        # A purge batch under way: its transaction holds the file's write lock until it ends.
        with writer.begin() as batch:
            batch.execute(update(PhoneNumber).values(purge_hold=False))
            # A reader that asked for the write lock would wait busy_timeout (30 s) for it,
            # then fail: up 0.
            assert scrape(collector)[("numbers_retention_up", ())] == 1
    finally:
        engine.dispose()
        writer.dispose()


def test_families_name_only_the_contract_and_its_extras() -> None:
    status = status_read(
        purge_last_success_at="2026-11-27T12:00:00Z",
        last_finished_run=finished_run("completed", 1.5, 7, 120.0),
        purged_total=7,
    )
    publication = {"last_success_at": "2026-11-27T12:00:00Z", "failing": False}
    schedule = {"purge": 900, "publish": 3600, "relay": 2}
    redis_state = {
        "relay_last_success_at": "2026-11-27T12:00:00Z",
        "maxmemory_policy": "noeviction",
    }
    names = {
        family.name
        for family in families(
            Reading(status, publication, schedule, redis_state, sources={"store": True})
        )
    }
    assert names == {f"numbers_retention_{name}" for name in EXPORTED}


def test_the_schedule_is_exported_as_configured_for_the_alert_rules(tmp_path: Path) -> None:
    """The alert rules measure ages against these: they follow the settings (and the tasks beat
    schedules), not constants that fit one schedule."""
    redis_store = {"database_url": f"sqlite:///{tmp_path}/a.db", "redis_url": "redis://r:6379/0"}
    assert schedule_seconds(Settings(**redis_store)) == {"purge": 900, "publish": 3600, "relay": 2}
    tuned = Settings(
        **redis_store, purge_every_seconds=300, publish_every_seconds=600, relay_every_seconds=5
    )
    assert schedule_seconds(tuned) == {"purge": 300, "publish": 600, "relay": 5}
    # The embedded store: no publication; the relay empties the outbox.
    embedded = Settings(database_url=f"sqlite:///{tmp_path}/b.db", redis_url="")
    assert schedule_seconds(embedded) == {"purge": 900, "relay": 2}
    reading = Reading(None, None, schedule_seconds(tuned))
    samples = scrape(RetentionCollector(lambda: reading, cache_seconds=0))
    assert {
        labels: value
        for (name, labels), value in samples.items()
        if name == "numbers_retention_schedule_seconds"
    } == {(("task", "purge"),): 300, (("task", "publish"),): 600, (("task", "relay"),): 5}


EXPORTED = CONTRACT + EXTRAS


def test_the_outbox_shows_in_status_and_metrics_until_the_relay_empties_it(
    session_factory: sessionmaker[Session],
) -> None:
    """Events the relay has not applied are counted, the oldest one's age too; a stopped relay
    was invisible before (only the publication's metrics existed)."""
    with session_factory.begin() as session:
        for seconds, phone_number in [(90, "+14155550100"), (30, "+14155550101")]:
            session.add(
                NumberEvent(
                    kind="released",
                    phone_number=phone_number,
                    account_id="acc_1",
                    number_id=1,
                    deadline=NOW + 14 * DAY,
                    occurred_at=NOW - timedelta(seconds=seconds),
                )
            )
    with session_factory() as session:
        assert store_status(session, now=NOW)["outbox"] == {
            "events": 2,
            "oldest_age_seconds": 90.0,
        }
    collector = RetentionCollector(at_now(session_factory), cache_seconds=0)
    samples = scrape(collector)
    assert samples[("numbers_retention_outbox_events", ())] == 2
    assert samples[("numbers_retention_outbox_oldest_event_age_seconds", ())] == 90.0

    assert discard_events(session_factory).discarded == 2  # the embedded store's relay
    with session_factory() as session:
        assert store_status(session, now=NOW)["outbox"] == {"events": 0, "oldest_age_seconds": 0}
    samples = scrape(collector)
    assert samples[("numbers_retention_outbox_events", ())] == 0
    assert samples[("numbers_retention_outbox_oldest_event_age_seconds", ())] == 0


def test_the_last_run_status_is_one_of_a_labelled_set() -> None:
    """1 for the last run's status and 0 for the others, so that an alert can match a status."""
    status = status_read(last_finished_run=finished_run("provider_unavailable", 1.0, 0, None))
    samples = scrape(RetentionCollector(lambda: Reading(status, None), cache_seconds=0))
    statuses = {
        dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "numbers_retention_purge_last_run_status"
    }
    assert statuses == {name: int(name == "provider_unavailable") for name in RUN_STATUSES}
    assert samples[("numbers_retention_build_info", (("version", VERSION),))] == 1
