"""The Celery tasks and app configuration, run in-process with frozen time."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.utils.saferepr import saferepr
from freezegun import freeze_time
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker
from structlog.contextvars import get_contextvars, merge_contextvars
from structlog.testing import capture_logs

import shared
from shared.errors import ValidationError
from shared.models import NumberEvent, PurgedNumber
from shared.releasable.keys import account_key
from shared.settings import Settings, get_settings
from tests.factories import make_number, make_numbers, snapshot
from tests.fake_telnyx import API_KEY, FakeTelnyx
from tests.processes import wait_for
from tests.purging import purge_expired
from worker.app import app, beat_schedule, broker_options, create_app
from worker.stopping import STOP
from worker.tasks import PRUNE, PURGE, PURGE_HARD_MARGIN, RECONCILE, RELAY, PurgeStopped, Summary

Factory = sessionmaker[Session]


def app_for(store: Factory, data: Path, **settings: Any) -> Celery:
    """An app configured for the test's store: its settings passed in, nothing patched."""
    url = store.kw["bind"].url.render_as_string(hide_password=False)
    return create_app(Settings(database_url=url, NUMBERS_RETENTION_DATA=data, **settings))


@pytest.fixture
def task_store(session_factory: Factory) -> Factory:
    """The test's store, emptied after the test."""
    return session_factory


# freezegun moves this process's clock to the fixed instant, not the database server's: the
# second clock's tolerance covers the distance in the tests that freeze it (shared/clock_skew.py).
FROZEN_CLOCK = {"clock_skew_max_seconds": 3650 * 86_400}


@pytest.fixture
def task_app(task_store: Factory, tmp_path: Path) -> Celery:
    """An app whose tasks use the test's store."""
    return app_for(task_store, tmp_path, **FROZEN_CLOCK)


def test_celery_accepts_json_only_and_acks_late() -> None:
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert conf.result_accept_content == ["json"]
    assert (conf.task_serializer, conf.result_serializer) == ("json", "json")
    assert conf.task_acks_late
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_send_task_events
    assert conf.task_send_sent_event
    assert conf.enable_utc
    assert conf.timezone == "UTC"
    purge = app.tasks["numbers.purge_expired"]
    assert purge.soft_time_limit < purge.time_limit
    assert purge.retry_jitter
    assert purge.retry_backoff


def test_beat_schedule_uses_crontab_with_expiry() -> None:
    schedule = beat_schedule(Settings(redis_url="redis://localhost:6379/0"))
    assert str(schedule["purge-expired"]["schedule"]).startswith("<crontab: */15 ")
    # The reconciliation hourly (on the hour), the relay every 2 seconds.
    assert str(schedule["publish-releasable"]["schedule"]).startswith("<crontab: */60 ")
    assert schedule["relay-events"]["schedule"] == timedelta(seconds=2)
    assert schedule["relay-events"]["options"]["expires"] < 2
    assert schedule["purge-expired"]["options"]["expires"] < 15 * 60
    # The worker's own records are pruned once a day (shared/audit.py), on every deployment.
    assert str(schedule["prune-audit"]["schedule"]).startswith("<crontab: 17 3 ")
    assert schedule["prune-audit"]["options"]["expires"] < 24 * 3600
    # No Redis configured (the embedded default): nothing to publish to, no publish entry;
    # the relay empties the outbox there. A PostgreSQL store keeps its events for a relay.
    assert set(beat_schedule(Settings())) == {"purge-expired", "prune-audit", "relay-events"}
    pg = Settings(database_url="postgresql://u@h/db")
    assert set(beat_schedule(pg)) == {"purge-expired", "prune-audit"}
    short = beat_schedule(Settings(purge_every_seconds=2))
    assert short["purge-expired"]["schedule"] == timedelta(seconds=2)


def test_beat_schedules_one_purge_per_lane_of_a_configured_carrier() -> None:
    """One purge task per lane, its carrier the task's third argument: the default carrier's
    (`purge-expired`, also the numbers stored without a carrier), `none`'s, and each carrier
    whose credentials are set; a carrier with part of them gets no lane (before: one entry,
    a run of every lane in turn)."""

    def lanes(settings: Settings) -> dict[str, tuple[Any, ...]]:
        return {
            name: tuple(entry["args"])
            for name, entry in beat_schedule(settings).items()
            if entry["task"] == PURGE
        }

    assert lanes(Settings()) == {"purge-expired": (None, False, "none")}
    configured = Settings(
        provider="twilio",
        twilio_account_sid="AC" + "0" * 32,
        twilio_auth_token="token",
        bandwidth_account_id="9900001",
        bandwidth_username="user",
        bandwidth_password="secret",
        purge_every_seconds=600,
    )
    assert lanes(configured) == {
        "purge-expired": (None, False, "twilio"),
        "purge-expired-none": (None, False, "none"),
        "purge-expired-bandwidth": (None, False, "bandwidth"),
    }
    schedule = beat_schedule(configured)
    for name in ("purge-expired", "purge-expired-none", "purge-expired-bandwidth"):
        assert str(schedule[name]["schedule"]).startswith("<crontab: */10 ")
        assert schedule[name]["options"]["expires"] < 600
    no_password = Settings(provider="telnyx", telnyx_api_key="KEY", bandwidth_account_id="99")
    assert lanes(no_password) == {
        "purge-expired": (None, False, "telnyx"),
        "purge-expired-none": (None, False, "none"),
    }


def test_embedded_default_uses_a_filesystem_broker(tmp_path) -> None:
    options = broker_options(Settings(NUMBERS_RETENTION_DATA=tmp_path))
    assert options["broker_url"] == "filesystem://"
    assert options["result_backend"] == f"file://{tmp_path / 'results'}"
    # Configuring the app makes no folder: a worker, beat or a producer does, when it starts.
    assert not (tmp_path / "broker").exists()
    redis_options = broker_options(Settings(broker_url="redis://h:6379/0"))
    assert redis_options["beat_scheduler"] == "worker.beat:ResilientRedBeatScheduler"


def test_without_redis_the_relay_empties_a_sqlite_outbox_and_keeps_a_postgresql_one(
    task_store: Factory, tmp_path: Path
) -> None:
    with task_store.begin() as session:
        make_numbers(session, account_id="acc_r", ages={"+14155550311": timedelta(days=1)})
        make_number(session, account_id="acc_r", phone_number="+14155550312")
    with task_store() as session:
        events = session.scalar(select(func.count()).select_from(NumberEvent))
    assert events == 3  # two registered, one released
    relay = app_for(task_store, tmp_path, relay_batch_size=2).tasks[RELAY]
    if task_store.kw["bind"].dialect.name == "sqlite":
        result = relay.apply().get()
        assert (result["status"], result["discarded"], result["batches"]) == ("completed", 3, 2)
        left = 0
    else:
        with pytest.raises(ValidationError) as refused:
            relay.apply().get()
        assert refused.value.code == "redis_not_configured"
        left = events
    with task_store() as session:
        assert session.scalar(select(func.count()).select_from(NumberEvent)) == left


def test_purge_task_at_a_frozen_instant(
    task_store: Factory, task_app: Celery, now: datetime
) -> None:
    with task_store.begin() as session:
        make_numbers(
            session,
            account_id="acc_a",
            ages={"+14155550301": timedelta(days=14), "+14155550302": timedelta(days=13, hours=23)},
        )
    with freeze_time(now), capture_logs() as logs:
        result = task_app.tasks[PURGE].apply().get()
    assert (result["status"], result["purged"], result["remaining"]) == ("completed", 1, 0)
    assert result["now"] == "2025-11-27T12:00:00Z"
    finished = [e for e in logs if e["event"] == "purge.finished"]
    assert finished
    assert finished[0]["purged"] == 1
    # An hour later the second number's deadline has passed too.
    with freeze_time(now + timedelta(hours=1)):
        assert task_app.tasks[PURGE].apply().get()["purged"] == 1


@pytest.mark.redis
def test_task_results_are_json_in_events_and_objects_in_the_backend(
    task_store: Factory, redis_url: str, now: datetime, tmp_path: Path
) -> None:
    """Flower's task list shows the text Celery's tracer puts in the task-succeeded event
    (saferepr of the return value, cut at the task's resultrepr_maxsize): it is the summary's
    JSON, whole; the result backend's JSON encoding of it is the plain object."""
    task_app = app_for(task_store, tmp_path, redis_url=redis_url, **FROZEN_CLOCK)
    with task_store.begin() as session:
        make_numbers(
            session,
            account_id="acc_a",
            ages={"+14155550304": timedelta(days=20), "+14155550305": timedelta(days=1)},
        )
    for name, kwargs in ((PURGE, {"dry_run": True}), (RECONCILE, {})):
        task = task_app.tasks[name]
        with freeze_time(now):
            result = task.apply(kwargs=kwargs).get()
        assert isinstance(result, Summary)
        event_text = saferepr(result, task.resultrepr_maxsize)
        assert json.loads(event_text) == dict(result), name
        stored = task_app.backend.decode(task_app.backend.encode({"result": result}))
        assert type(stored["result"]) is dict
        assert stored["result"] == dict(result)
    assert json.loads(event_text)["published"] == 1


def test_purge_task_binds_task_id_and_name_and_clears_them(task_app: Celery) -> None:
    with capture_logs(processors=[merge_contextvars]) as logs:
        result = task_app.tasks[PURGE].apply(task_id="t-123")
    assert result.successful()
    started = next(e for e in logs if e["event"] == "purge.started")
    assert (started["task_id"], started["task_name"]) == ("t-123", "numbers.purge_expired")
    assert "task_id" not in get_contextvars()


def test_purge_task_takes_now_and_dry_run(
    task_store: Factory, task_app: Celery, now: datetime
) -> None:
    with task_store.begin() as session:
        make_numbers(session, account_id="acc_a", ages={"+14155550303": timedelta(days=20)})
    result = (
        task_app.tasks[PURGE].apply(kwargs={"now": "2025-11-27T12:00:00Z", "dry_run": True}).get()
    )
    assert (result["status"], result["would_purge"]) == ("dry_run", 1)


def test_prune_task_takes_now_and_dry_run(
    task_store: Factory, task_app: Celery, now: datetime
) -> None:
    september = datetime(2024, 9, 20, 12, 0, tzinfo=UTC)
    with task_store.begin() as session:
        make_numbers(
            session, account_id="acc_a", ages={"+14155550306": timedelta(days=15)}, now=september
        )
    assert purge_expired(task_store, now=september).purged == 1
    at = {"now": "2025-11-27T12:00:00Z"}
    dry = task_app.tasks[PRUNE].apply(kwargs=at | {"dry_run": True}).get()
    assert (dry["status"], dry["due"]["tombstones"]) == ("dry_run", 1)
    done = task_app.tasks[PRUNE].apply(kwargs=at).get()
    assert (done["status"], done["done"]["tombstones"], done["due"]["tombstones"]) == (
        "completed",
        1,
        0,
    )
    # The purge's run record (September 2024) is the last of its status: kept.
    assert done["done"]["runs"] == 0
    with task_store() as session:
        assert session.scalar(select(func.count()).select_from(PurgedNumber)) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"now": 12345},
        {"now": "yesterday"},
        {"now": "2026-11-27T12:00:00"},  # naive: refused, never guessed
        {"dry_run": "yes"},
    ],
)
def test_purge_task_refuses_bad_arguments_and_changes_nothing(
    task_store: Factory, task_app: Celery, now: datetime, kwargs: dict[str, object]
) -> None:
    with task_store.begin() as session:
        make_numbers(session, account_id="acc_a", ages={"+14155550304": timedelta(days=20)})
    with task_store() as session:
        before = snapshot(session)
    result = task_app.tasks[PURGE].apply(kwargs=kwargs)
    assert result.failed()
    assert isinstance(result.result, ValidationError)
    with task_store() as session:
        assert snapshot(session) == before


@pytest.mark.redis
def test_publish_task(
    task_store: Factory, redis_url: str, redis_client: redis.Redis, now: datetime, tmp_path: Path
) -> None:
    task_app = app_for(task_store, tmp_path, redis_url=redis_url, **FROZEN_CLOCK)
    with task_store.begin() as session:
        make_numbers(session, account_id="acc_a", ages={"+14155550305": timedelta(days=1)})
    with freeze_time(now):
        result = task_app.tasks[RECONCILE].apply().get()
    assert result["published"] == 1
    assert redis_client.zcard("releasable:all") == 1


def test_tasks_take_their_limits_and_retry_policy_from_the_settings_passed_in(
    task_store: Factory, tmp_path: Path
) -> None:
    tuned = app_for(task_store, tmp_path, purge_max_seconds=30, task_retry_backoff=7)
    purge = tuned.tasks[PURGE]
    assert (purge.soft_time_limit, purge.time_limit) == (90, 150)
    # Autoretry keeps the backoff it was registered with: the app's own, not the process's.
    assert purge.retry_backoff == 7
    assert app.tasks[PURGE].time_limit == get_settings().purge_max_seconds + PURGE_HARD_MARGIN


def telnyx_app_with_an_overdue_number(
    store: Factory, data: Path, now: datetime, base_url: str, provider_id: str
) -> Celery:
    """An app whose settings name Telnyx at `base_url`, and one number overdue in `store`,
    Telnyx's `provider_id` (its E.164 number +1415555 0 and that id)."""
    with store.begin() as session:
        make_number(
            session,
            account_id="acc_a",
            phone_number=f"+14155550{provider_id}",
            released_at=now - timedelta(days=20),
            provider_number_id=provider_id,
        )
    return app_for(store, data, provider="telnyx", telnyx_base_url=base_url, telnyx_api_key=API_KEY)


@pytest.mark.postgres
def test_purge_task_releases_through_the_provider_its_settings_name(
    pg_factory: Factory, fake_telnyx: FakeTelnyx, now: datetime, tmp_path: Path
) -> None:
    telnyx = telnyx_app_with_an_overdue_number(pg_factory, tmp_path, now, fake_telnyx.url, "306")
    result = telnyx.tasks[PURGE].apply().get()
    assert (result["provider"], result["purged"]) == ("telnyx", 1)
    assert fake_telnyx.released == {"306"}


@pytest.mark.postgres
def test_a_purge_the_provider_stopped_fails_the_task_with_its_summary_in_the_error(
    pg_factory: Factory, fake_telnyx: FakeTelnyx, now: datetime, tmp_path: Path
) -> None:
    # An extra path in the base URL: the pre-flight check stops the run provider_misconfigured.
    telnyx = telnyx_app_with_an_overdue_number(
        pg_factory, tmp_path, now, fake_telnyx.url + "/v2", "307"
    )
    with capture_logs() as logs:
        result = telnyx.tasks[PURGE].apply()
    assert result.state == "FAILURE"
    error = result.result
    assert isinstance(error, PurgeStopped)
    assert (error.summary["status"], error.summary["purged"]) == ("provider_misconfigured", 0)
    assert json.loads(str(error)) == error.summary
    [finished] = [e for e in logs if e["event"] == "purge.finished"]
    assert (finished["log_level"], finished["status"]) == ("warning", "provider_misconfigured")
    assert fake_telnyx.released == set()


@pytest.mark.postgres
@pytest.mark.redis
def test_a_scheduled_relay_applies_a_commit_while_it_waits_for_its_next_run(
    pg_factory: Factory, redis_url: str, redis_client: redis.Redis, wall_now: datetime, tmp_path
) -> None:
    """On PostgreSQL a scheduled relay LISTENs until its next run is due: a release committed
    meanwhile reaches the published set in that same run (the outbox trigger's NOTIFY wakes
    it), not one interval later."""
    settings = {"redis_url": redis_url, "relay_every_seconds": 10}
    relay = app_for(pg_factory, tmp_path, **settings).tasks[RELAY]
    with pg_factory.begin() as session:
        make_number(session, account_id="acc_w", phone_number="+14155550321", now=wall_now)
    runs: list[dict[str, Any]] = []
    waiting = threading.Thread(target=lambda: runs.append(relay.apply().get()))
    waiting.start()
    try:
        wait_for(lambda: listeners(pg_factory), timeout=30, what="the relay to LISTEN")
        # Its first pass applied the registration: what comes next only a wake-up applies (a
        # release committed during that pass was applied by it, on a loaded CI lane).
        wait_for(lambda: outbox(pg_factory) == 0, timeout=30, what="the relay's first pass")
        with pg_factory.begin() as session:
            shared.release_number(session, account_id="acc_w", phone_number="+14155550321")
        wait_for(
            lambda: redis_client.zscore(account_key("acc_w"), "+14155550321"),
            timeout=30,
            interval=0.01,
            what="the release in the published set",
        )
        assert waiting.is_alive()  # the run that was waiting applied it
    finally:
        STOP.request("test over")
        waiting.join(30)
        STOP.clear()
    assert [(run["status"], run["applied"]) for run in runs] == [("completed", 1)]


def outbox(factory: Factory) -> int | None:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(NumberEvent))


def listeners(factory: Factory) -> int | None:
    """Connections to the test's database whose last statement was the relay's LISTEN (a new
    transaction each time: pg_stat_activity is a snapshot within one)."""
    with factory() as session:
        return session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query = 'LISTEN numbers_outbox'"
            )
        )
