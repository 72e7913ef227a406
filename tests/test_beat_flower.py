"""Deployed behaviour with real processes: two beats send each run once; Flower shows the runs."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import states
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import PhoneNumber, PurgeRun
from shared.settings import Settings
from tests import fake_telnyx as telnyx_script
from tests.factories import make_number, make_numbers
from tests.fake_telnyx import API_KEY, FakeTelnyx
from tests.processes import (
    Process,
    celery,
    start_beat,
    start_worker,
    wait_for,
)
from tests.servers import free_port
from worker.app import create_app
from worker.tasks import PurgeStopped

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.processes]

PUBLISH = "numbers.publish_releasable"
PURGE = "numbers.purge_expired"
RELAY = "numbers.relay_events"
SENDING_PUBLISH = "Sending due task publish-releasable"


def took_lock(output: str) -> bool:
    """RedBeat's start-up acquisition, or our scheduler's own once the lock was free again."""
    return "beat: Acquired lock" in output or '"beat.lock_acquired"' in output


# Beat sends a run every second; a second send of the same slot would come within milliseconds.
SLOT_SECONDS = 1.0


def queued(client: redis.Redis, task: str) -> list[datetime]:
    """When each queued `task` message was sent, oldest first, read from the broker itself.

    No worker consumes the queue, so every message beat sent is still there; its `expires`
    header is the send time plus the schedule entry's fixed expiry.
    """
    sent = []
    for raw in client.lrange("celery", 0, -1):
        headers = json.loads(raw)["headers"]
        if headers["task"] == task:
            sent.append(datetime.fromisoformat(headers["expires"]))
    return sorted(sent)


def gaps(times: list[datetime]) -> list[float]:
    return [(later - earlier).total_seconds() for earlier, later in pairwise(times)]


@pytest.mark.processes(moved_clock=False)  # a lock's expiry and takeover: no date changes them
def test_a_second_beat_waits_on_the_lock_and_takes_over_when_the_first_dies(
    process_env: Callable[..., dict[str, str]], redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = process_env(
        PUBLISH_EVERY_SECONDS="1",
        PURGE_EVERY_SECONDS="3600",
        # A short lock and loop, so that the standby notices a dead holder within seconds.
        BEAT_MAX_LOOP_SECONDS="1",
        BEAT_LOCK_TIMEOUT_SECONDS="4",
    )
    beats = [
        start_beat(env, tmp_path / f"beat-{name}.log", tmp_path / f"schedule-{name}")
        for name in ("a", "b")
    ]
    try:
        wait_for(
            lambda: len(queued(redis_client, PUBLISH)) >= 5,
            timeout=30,
            what="five scheduled publish runs on the broker",
        )
        holders = [beat for beat in beats if took_lock(beat.output())]
        assert len(holders) == 1, [beat.output()[-2000:] for beat in beats]
        [holder] = holders
        [standby] = [beat for beat in beats if beat is not holder]

        def sent_once() -> bool:
            # Every run a beat logged reached the broker once (a send in flight can lag its log
            # line by a moment, hence the wait); a duplicate would leave more messages than lines.
            logged = [beat.output().count(SENDING_PUBLISH) for beat in beats]
            return len(queued(redis_client, PUBLISH)) == sum(logged)

        wait_for(sent_once, timeout=5, what="one message per logged send")
        assert standby.output().count(SENDING_PUBLISH) == 0
        assert min(gaps(queued(redis_client, PUBLISH))) >= SLOT_SECONDS * 0.9

        # Kill the holder just after a send, far from the next one: the lock is not released
        # and must expire by itself.
        count = len(queued(redis_client, PUBLISH))
        wait_for(lambda: len(queued(redis_client, PUBLISH)) > count, timeout=5, interval=0.02)
        holder.kill(signal.SIGKILL)
        holder.popen.wait(5)

        wait_for(
            lambda: standby.output().count(SENDING_PUBLISH) >= 3,
            timeout=20,
            what="the standby beat to take over and send",
        )
        assert took_lock(standby.output())
        wait_for(sent_once, timeout=5, what="one message per logged send after the takeover")
        sent = queued(redis_client, PUBLISH)
        # Across the takeover, still never two sends for one slot ...
        assert min(gaps(sent)) >= SLOT_SECONDS * 0.9
        # ... and the standby waited for the dead holder's lock (4 s) to expire.
        assert max(gaps(sent)) >= 2.5
    finally:
        for beat in beats:
            beat.stop()
    for beat in beats:
        assert "Traceback" not in beat.output(), beat.output()[-3000:]


class Flower:
    """Flower's HTTP API on a local port, with and without the basic-auth credentials."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.auth = (user, password)

    def get(self, path: str, *, auth: tuple[str, str] | None = None) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", auth=auth, timeout=5)

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.base}{path}", params=params, auth=self.auth, timeout=5)
        response.raise_for_status()
        return response.json()

    def succeeded(self, task_id: str) -> dict[str, Any] | None:
        """The task's info once Flower has seen it succeed, else None."""
        return self._ended(task_id, ("SUCCESS",))

    def finished(self, task_id: str) -> dict[str, Any] | None:
        """The task's info once Flower has seen it end (SUCCESS or FAILURE), else None."""
        return self._ended(task_id, ("SUCCESS", "FAILURE"))

    def _ended(self, task_id: str, states: tuple[str, ...]) -> dict[str, Any] | None:
        """The task's info once Flower has seen it in one of `states`, else None."""
        response = self.get(f"/api/task/info/{task_id}", auth=self.auth)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        info: dict[str, Any] = response.json()
        return info if info["state"] in states else None

    def up(self) -> bool:
        try:
            return self.get("/healthcheck").status_code == 200
        except httpx.TransportError:
            return False


def summary(task: dict[str, Any]) -> dict[str, Any]:
    """The task's return value: Flower shows the text the worker put in its event, JSON."""
    result: dict[str, Any] = json.loads(task["result"])
    return result


def test_flower_shows_a_scheduled_purge_with_its_summary_and_refuses_strangers(
    pg_factory: sessionmaker[Session],
    process_env: Callable[..., dict[str, str]],
    redis_client: redis.Redis,
    pg_url: str,
    redis_url: str,
    fake_telnyx: FakeTelnyx,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    overdue = [f"+1415555{i:04d}" for i in range(6)]
    with pg_factory.begin() as session:
        make_numbers(
            session, account_id="acc_ops", ages=dict.fromkeys(overdue, timedelta(days=15)), now=now
        )
    env = process_env(
        PURGE_EVERY_SECONDS="2",
        PUBLISH_EVERY_SECONDS="3600",
        PROVIDER="telnyx",
        TELNYX_BASE_URL=fake_telnyx.url,
        TELNYX_API_KEY=API_KEY,
    )
    port, user, password = free_port(), "ops", "flower-test-secret"
    flower = Flower(port, user, password)
    processes: list[Process] = []
    try:
        # Flower first: it only shows the tasks whose events it saw.
        processes.append(
            celery(
                [
                    "flower",
                    f"--port={port}",
                    "--address=127.0.0.1",
                    f"--basic-auth={user}:{password}",
                ],
                env,
                tmp_path / "flower.log",
            )
        )
        wait_for(flower.up, timeout=30, what="Flower to answer")
        # Beat sends a purge per carrier lane (Telnyx's and `none`'s) and the relay every 2 s:
        # a process for each, as the runbook asks (with one, the relay's runs waited past
        # their expiry behind the purges and were discarded as revoked).
        processes.append(start_worker(env, tmp_path / "worker.log", concurrency=3))
        processes.append(start_beat(env, tmp_path / "beat.log", tmp_path / "beat-schedule"))

        def purge_that_purged() -> str | None:
            tasks = flower.api("/api/tasks", taskname=PURGE, state="SUCCESS")
            for task_id, task in tasks.items():
                if summary(task)["purged"]:
                    return str(task_id)
            return None

        task_id = wait_for(purge_that_purged, timeout=45, what="Flower to show a purge run")
        task = flower.api(f"/api/task/info/{task_id}")
        assert (task["name"], task["state"]) == (PURGE, "SUCCESS")
        result = summary(task)
        assert (result["status"], result["purged"], result["remaining"]) == ("completed", 6, 0)
        assert {"run_id", "cutoff", "batches", "seconds"} <= result.keys()
        # The same summary as JSON: Flower's result endpoint reads the result backend.
        stored = flower.api(f"/api/task/result/{task_id}")
        assert (stored["state"], stored["result"]) == ("SUCCESS", result)
        with pg_factory() as session:
            run = session.get(PurgeRun, result["run_id"])
            assert run is not None
            assert (run.status, run.purged) == ("completed", 6)
            assert session.scalars(select(PhoneNumber.phone_number)).all() == []

        # Without credentials, or with wrong ones, Flower refuses: its pages and its API.
        for auth in (None, (user, "wrong")):
            for path in ("/", "/api/tasks", f"/api/task/info/{task_id}", "/api/workers"):
                assert flower.get(path, auth=auth).status_code == 401, (path, auth)
        refused = httpx.post(
            f"{flower.base}/api/task/async-apply/{PURGE}", json={"kwargs": {"dry_run": True}}
        )
        assert refused.status_code == 401
        # Open without credentials, as the runbook says: the liveness probe and Celery's
        # generic counters (task and worker names, no arguments, results or secrets).
        for path in ("/healthcheck", "/metrics"):
            opened = flower.get(path, auth=None)
            assert opened.status_code == 200, path
            assert password not in opened.text
            assert "+1415555" not in opened.text

        # An operator's dry run on demand through Flower's API, as the runbook shows.
        applied = httpx.post(
            f"{flower.base}/api/task/async-apply/{PURGE}",
            json={"kwargs": {"dry_run": True}},
            auth=flower.auth,
            timeout=5,
        )
        assert applied.status_code == 200, applied.text
        dry_id = applied.json()["task-id"]
        dry = wait_for(lambda: flower.succeeded(dry_id), timeout=20, what="the dry run")
        assert (summary(dry)["status"], summary(dry)["would_purge"]) == ("dry_run", 0)

        # The carrier now refuses the key: the next run stops provider_misconfigured, keeps
        # its number, and ends the task in FAILURE, for Celery's client and for Flower.
        monkeypatch.setattr(telnyx_script, "API_KEY", "revoked")
        with pg_factory.begin() as session:
            make_number(
                session,
                account_id="acc_ops",
                phone_number="+14155559999",
                released_at=now - timedelta(days=20),
                now=now,
                provider_number_id="9999",
            )
        # Beat's scheduled runs meet the refused key too. Once one has, beat stops and what it
        # sent finishes: the run asked for next must hold the lane's lock (beside a scheduled
        # run it found the lock taken and ended skipped, a SUCCESS, on a loaded machine).
        wait_for(
            lambda: flower.api("/api/tasks", taskname=PURGE, state="FAILURE"),
            timeout=30,
            what="a scheduled run to meet the refused key",
        )
        processes[2].stop()
        wait_for(
            lambda: all(
                task["state"] in states.READY_STATES
                for task in flower.api("/api/tasks", taskname=PURGE).values()
            ),
            timeout=30,
            what="the runs beat sent to finish",
        )
        applied = httpx.post(
            f"{flower.base}/api/task/async-apply/{PURGE}", json={}, auth=flower.auth, timeout=5
        )
        assert applied.status_code == 200, applied.text
        stopped_id = applied.json()["task-id"]
        client = create_app(
            Settings(
                database_url=pg_url,
                broker_url=redis_url,
                redis_url=redis_url,
                NUMBERS_RETENTION_DATA=tmp_path,
            )
        )
        outcome = client.AsyncResult(stopped_id)
        with pytest.raises(PurgeStopped) as raised:
            outcome.get(timeout=30)
        assert outcome.state == "FAILURE"
        stopped = raised.value.summary
        assert (stopped["status"], stopped["purged"]) == ("provider_misconfigured", 0)
        assert json.loads(str(outcome.result)) == stopped
        failed = wait_for(lambda: flower.finished(stopped_id), timeout=20, what="the stopped run")
        assert failed["state"] == "FAILURE"
        assert "provider_misconfigured" in failed["exception"]
        listed = flower.api("/api/tasks", taskname=PURGE, state="FAILURE")
        # Beat's scheduled runs that met the refused key are listed failed with it.
        assert stopped_id in listed
        assert all("provider_misconfigured" in task["exception"] for task in listed.values())
        workers = flower.api("/workers", json="1")
        assert sum(w.get("task-failed", 0) for w in workers["data"]) >= 1, workers
        with pg_factory() as session:
            kept = session.scalars(select(PhoneNumber.phone_number)).all()
            assert kept == ["+14155559999"]

        # The relay ran every 2 s all along, and relayed the purges' events, yet Flower lists
        # none of its runs and Celery logged none of them: only what it applied.
        assert any(e["event"] == "relay.applied" for e in processes[1].events())
        assert flower.api("/api/tasks", taskname=RELAY) == {}
        assert set(flower.api("/api/tasks")) >= {stopped_id, task_id, dry_id}
    finally:
        for process in reversed(processes):
            process.stop()
    for process in processes:
        assert "Traceback" not in process.output(), process.output()[-3000:]
    # Celery's own lines name a run as "numbers.relay_events[<id>]" (worker) or
    # "Sending due task relay-events (numbers.relay_events)" (beat): none for the relay.
    assert f"{RELAY}[" not in processes[1].output()
    assert RELAY not in processes[2].output()
    assert "Sending due task purge-expired" in processes[2].output()
