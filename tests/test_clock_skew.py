"""The second clock: what cannot be undone waits until this host's clock agrees with the
database server's, and write paths refuse a `now` far ahead of this host's clock.

The in-process tests move this process's clock (time-machine) relative to the database
server's, which nothing moves; the process test moves a real purge's clock with libfaketime.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest
import redis
import time_machine
from jsonschema import Draft202012Validator
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

import shared
from shared.audit import AuditRetention, prune_audit
from shared.clock import as_utc, utcnow
from shared.clock_skew import ClockSkewError, read_clocks
from shared.db import make_session_factory
from shared.models import NumberEvent, PhoneNumber, PurgedNumber, PurgeRun
from shared.purge.config import PurgeConfig
from shared.releasable.reconcile import reconcile_releasable
from shared.releasable.record import reconciliation_status, recording_failures
from shared.releasable.relay import relay_events
from shared.retention import RETENTION
from shared.settings import Settings, StoreSettings, get_settings, get_store_settings
from shared.status import store_status
from tests.factories import make_number, make_numbers, snapshot
from tests.processes import cli_env, program
from tests.purging import purge_expired
from tests.test_audit_retention import add_tombstone
from worker.app import create_app
from worker.cli.errors import CLOCK_SKEW_EXIT_CODE
from worker.tasks import PURGE, RECONCILE, RELAY, PurgeStopped

DAY = timedelta(days=1)
TOLERANCE = 5.0
CLI = str(Path(sys.executable).parent / "numbers-retention")


def database_clock(engine: Engine) -> datetime:
    """The database server's clock now (nothing in the tests moves it)."""
    with engine.connect() as connection:
        return as_utc(connection.execute(text("SELECT clock_timestamp()")).scalar_one())


def tight_config() -> PurgeConfig:
    """The settings' purge configuration with the default tolerance, whatever the lane sets."""
    return replace(PurgeConfig.from_settings(get_settings()), clock_skew_max_seconds=TOLERANCE)


def test_the_second_clock_is_the_database_servers_and_sqlite_has_none(
    pg_engine: Engine, sqlite_engine: Engine
) -> None:
    reading = read_clocks(pg_engine)
    assert reading is not None
    assert not reading.beyond(TOLERANCE)  # this host and the test server: one clock
    assert reading.trusted == min(reading.host, reading.database)
    # One host, one clock: on SQLite the guard is the refusal of a `now` ahead only.
    assert read_clocks(sqlite_engine) is None
    # A store setting (the library's write paths read it): refused by `import shared` itself.
    for wrong in ("0", "-1", "inf", "nan"):
        with pytest.raises(pydantic.ValidationError, match="clock_skew_max_seconds"):
            StoreSettings(CLOCK_SKEW_MAX_SECONDS=wrong)


@pytest.mark.postgres
@pytest.mark.parametrize("skew", [DAY, -DAY], ids=["ahead", "behind"])
def test_a_purge_on_a_host_whose_clock_disagrees_is_refused_and_dated_in_no_future(
    pg_store: Engine, skew: timedelta
) -> None:
    factory = make_session_factory(pg_store)
    with factory.begin() as session:
        # Overdue by every clock: only the refusal keeps it.
        make_numbers(session, account_id="acc_a", ages={"+14155550101": timedelta(days=20)})
    before = database_clock(pg_store)
    with time_machine.travel(before + skew, tick=True):
        report = purge_expired(factory, config=tight_config())
    after = database_clock(pg_store)
    assert (report.status, report.purged, report.batches) == ("clock_skew", 0, 0)
    assert report.clock_skew_seconds is not None
    assert abs(report.clock_skew_seconds - skew.total_seconds()) < 60
    assert report.reason is not None
    assert ("ahead of" if skew > timedelta(0) else "behind") in report.reason
    assert "CLOCK_SKEW_MAX_SECONDS is 5" in report.reason
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(PurgedNumber)) == 0
        assert session.scalar(select(func.count()).select_from(PhoneNumber)) == 1
        run = session.scalars(select(PurgeRun)).one()
        assert run.status == "clock_skew"
        # Dated at the earlier clock: in the future by neither. Ahead, that is the
        # database's: the newest record, read by `status` and the exporter.
        assert run.started_at == run.finished_at <= after
        assert run.cutoff == run.started_at - RETENTION
        if skew > timedelta(0):
            assert run.started_at >= before
        last = store_status(session, now=after)["last_finished_run"]
        assert (last["status"], last["reason"]) == ("clock_skew", report.reason)


@pytest.mark.postgres
@pytest.mark.redis
def test_a_publication_and_a_relay_on_a_host_clock_ahead_are_refused_and_change_nothing(
    pg_store: Engine, redis_client: redis.Redis, error_validator: Draft202012Validator
) -> None:
    factory = make_session_factory(pg_store)
    with factory.begin() as session:
        make_number(session, account_id="acc_a", phone_number="+14155550102", released_at=utcnow())
    with factory() as session:
        before = snapshot(session)
    events = len(before["number_events"])
    assert events == 2  # registered, released: waiting for the relay
    with time_machine.travel(database_clock(pg_store) + DAY, tick=True):
        with (
            pytest.raises(ClockSkewError) as refused,
            recording_failures(redis_client),
            factory() as session,
        ):
            reconcile_releasable(session, redis_client, clock_skew_max=TOLERANCE)
        with pytest.raises(ClockSkewError):
            relay_events(factory, redis_client, clock_skew_max=TOLERANCE)
    error = refused.value
    assert (error.status, error.code) == (500, "clock_skew")
    assert "ahead of the database server's" in error.message
    error_validator.validate(error.body())
    with factory() as session:
        assert snapshot(session) == before  # the outbox kept its events
    # Nothing published, nothing streamed: only the failure marker, dated at the database's
    # clock (a marker dated a day ahead would say "failing" after the next success).
    assert [key.decode() for key in redis_client.keys("*")] == ["releasable:meta"]
    now = database_clock(pg_store)
    publication = reconciliation_status(redis_client, now=now)
    assert (publication["failing"], publication["last_failure"]) == (True, "ClockSkewError")
    assert datetime.fromisoformat(publication["last_failure_at"]) <= now


@pytest.mark.postgres
@pytest.mark.redis
def test_the_tasks_fail_on_a_host_clock_ahead(
    pg_store: Engine, pg_url: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Flower counts them failed: the purge's summary in its error, the others' envelope."""
    settings = Settings(
        database_url=pg_url,
        redis_url=redis_url,
        NUMBERS_RETENTION_DATA=tmp_path,
        clock_skew_max_seconds=TOLERANCE,
    )
    tasks = create_app(settings).tasks
    with time_machine.travel(database_clock(pg_store) + DAY, tick=True):
        purge, publish, relay = (tasks[name].apply() for name in (PURGE, RECONCILE, RELAY))
    assert purge.failed()
    assert isinstance(purge.result, PurgeStopped)
    assert purge.result.summary["status"] == "clock_skew"
    for refused in (publish, relay):
        assert refused.failed()
        assert isinstance(refused.result, ClockSkewError)
    assert not redis_client.exists("releasable:all")


@pytest.mark.parametrize(
    "ahead",
    [DAY, datetime(8999, 12, 31, tzinfo=UTC)],
    ids=["a-day-ahead", "year-8999"],
)
def test_write_paths_refuse_a_now_ahead_of_the_host_clock_and_change_nothing(
    session: Session, error_validator: Draft202012Validator, ahead: timedelta | datetime
) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550103")
    make_number(session, account_id="acc_a", phone_number="+14155550104", released_at=utcnow())
    future = utcnow() + ahead if isinstance(ahead, timedelta) else ahead
    before = snapshot(session)
    calls: list[tuple[Any, dict[str, Any]]] = [
        (
            shared.register_number,
            {
                "phone_number": "+14155550105",
                "country_code": "US",
                "number_type": "local",
                "monthly_price": "1.00",
            },
        ),
        (shared.release_number, {"phone_number": "+14155550103"}),
        (shared.repurchase_number, {"phone_number": "+14155550104"}),
    ]
    for call, kwargs in calls:
        with pytest.raises(shared.ValidationError) as refused:
            call(session, account_id="acc_a", now=future, **kwargs)
        assert refused.value.code == "now_in_future", call.__name__
        assert "CLOCK_SKEW_MAX_SECONDS" in refused.value.message
        error_validator.validate(refused.value.body())
        assert snapshot(session) == before
    # Within the tolerance (a caller on another host a little ahead): taken.
    slightly = utcnow() + timedelta(seconds=get_store_settings().clock_skew_max_seconds / 2)
    body = shared.release_number(
        session, account_id="acc_a", phone_number="+14155550103", now=slightly
    )
    assert body["released"] is True


def _faketime() -> str:
    return program("faketime", "faketime")


@pytest.mark.postgres
@pytest.mark.processes
def test_a_purge_process_on_a_host_clock_a_day_ahead_is_refused_and_deletes_nothing(
    pg_store: Engine, pg_url: str, tmp_path: Path
) -> None:
    """The issue's case: a day ahead, the purge would tombstone numbers whose deadline is 12 h
    away by every other clock, and date its record a day ahead."""
    factory = make_session_factory(pg_store)
    # Everything relative to the database server's clock, which no test lane moves.
    released = database_clock(pg_store) - RETENTION + timedelta(hours=12)
    numbers = [f"+1415555020{i}" for i in range(10)]
    with factory.begin() as session:
        for number in numbers:
            make_number(
                session,
                account_id="acc_a",
                phone_number=number,
                now=released,
                released_at=released,
            )
    env = cli_env(
        tmp_path,
        DATABASE_URL=pg_url,
        CLOCK_SKEW_MAX_SECONDS=str(TOLERANCE),
        # Python waits on its monotonic clock with absolute deadlines: left as it is.
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    env.pop("TESTS_CLOCK_SHIFT_DAYS", None)  # libfaketime alone moves this process's clock
    done = subprocess.run(
        [_faketime(), "-f", "+1d", CLI, "purge"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == CLOCK_SKEW_EXIT_CODE, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["status"], summary["purged"]) == ("clock_skew", 0)
    assert 86_400 - 60 < summary["clock_skew_seconds"] < 86_400 + 60
    assert "ahead of the database server's" in done.stderr
    now = database_clock(pg_store)
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(PurgedNumber)) == 0
        kept = session.scalars(select(PhoneNumber.phone_number).order_by(PhoneNumber.id)).all()
        assert kept == numbers
        # Nothing dated ahead of the database's clock: the run, its cutoff, any event.
        run = session.scalars(select(PurgeRun)).one()
        assert run.status == "clock_skew"
        assert run.started_at <= now
        assert run.finished_at is not None
        assert run.finished_at <= now
        assert run.cutoff <= now - RETENTION
        latest = session.scalar(select(func.max(NumberEvent.occurred_at)))
        assert latest is not None
        assert latest <= now


@pytest.mark.postgres
def test_a_prune_on_a_host_clock_ahead_is_refused_and_deletes_nothing(pg_store: Engine) -> None:
    """The audit prune deletes tombstones and run records for good: the same second clock."""
    factory = make_session_factory(pg_store)
    long_ago = database_clock(pg_store) - timedelta(days=800)
    with factory.begin() as session:
        add_tombstone(session, 1, long_ago)
    with factory() as session:
        before = snapshot(session)
    retention = AuditRetention(audit_days=400, redact_days=90)
    with (
        time_machine.travel(database_clock(pg_store) + DAY, tick=True),
        pytest.raises(ClockSkewError) as refused,
    ):
        prune_audit(factory, retention=retention, config=tight_config())
    assert "ahead of the database server's" in refused.value.message
    with factory() as session:
        assert snapshot(session) == before
    # On the same clock as the database's, the same prune deletes the tombstone.
    done = prune_audit(factory, retention=retention, config=tight_config())
    assert done.status == "completed"
    with factory() as session:
        assert session.scalars(select(PurgedNumber)).all() == []
