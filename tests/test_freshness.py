"""Freshness: `numbers-retention run` at default settings keeps the set within 10 s of commits."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared.releasable.keys import STREAM
from shared.releasable.read import read_releasable
from shared.releasable.record import last_reconciliation
from tests.factories import make_number
from tests.processes import Process, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.processes]

FRESH_WITHIN = 10.0
CLI = [sys.executable, "-m", "worker.cli"]


def offered_to(client: redis.Redis, account_id: str) -> set[str]:
    return {n for n, _ in read_releasable(client, account_id=account_id)}


def seconds_until(check: object, what: str) -> float:
    started = time.monotonic()
    wait_for(check, timeout=30, interval=0.05, what=what)  # type: ignore[arg-type]
    return time.monotonic() - started


def test_release_and_repurchase_reach_the_published_set_within_10_seconds(
    pg_factory: sessionmaker[Session],
    process_env: Callable[..., dict[str, str]],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    with pg_factory.begin() as session:
        make_number(session, account_id="acc_f", phone_number="+14155550501", now=now)
        make_number(
            session,
            account_id="acc_f",
            phone_number="+14155550502",
            released_at=now - timedelta(days=1),
            now=now,
        )
    # Default settings: only the services are named.
    run = Process([*CLI, "run"], process_env(), tmp_path / "run.log")
    try:
        # Started: the start-up reconciliation published what the store offers.
        wait_for(
            lambda: last_reconciliation(redis_client), timeout=60, what="the first publication"
        )
        assert offered_to(redis_client, "acc_f") == {"+14155550502"}
        lags = []
        for _ in range(3):
            with pg_factory.begin() as session:
                shared.release_number(session, account_id="acc_f", phone_number="+14155550501")
            lags.append(
                seconds_until(
                    lambda: "+14155550501" in offered_to(redis_client, "acc_f"), "the release"
                )
            )
            with pg_factory.begin() as session:
                shared.repurchase_number(session, account_id="acc_f", phone_number="+14155550501")
            lags.append(
                seconds_until(
                    lambda: "+14155550501" not in offered_to(redis_client, "acc_f"),
                    "the repurchase",
                )
            )
        events = run.events()
    finally:
        # As `docker stop` does: SIGTERM to the main process alone, which ends its pool
        # children itself. A SIGTERM to the whole group killed them at once, and a relay that
        # beat sent during the warm shutdown went to a dead child (WorkerLostError, logged
        # with a traceback).
        run.popen.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.popen.wait(20)
        run.stop()
    assert max(lags) <= FRESH_WITHIN, lags
    print(f"freshness lags (s): {[round(lag, 2) for lag in lags]}")
    kinds = [fields[b"kind"] for _, fields in redis_client.xrange(STREAM)]
    assert kinds[-6:] == [b"released", b"repurchased"] * 3
    relayed = [e for e in events if e["event"] == "relay.applied"]
    assert relayed
    assert all(e["task_name"] == "numbers.relay_events" for e in relayed)
    assert "Traceback" not in run.output(), run.output()[-3000:]
