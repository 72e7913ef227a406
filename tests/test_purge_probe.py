"""The purge's probe: how much a batch in flight slows the API's calls that meet it, and the
share of the time batches may take while the API is at work (shared/purge/probe.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from shared.purge.pacing import APPLICATION_NAME, Pacer
from shared.purge.probe import PROBE_MIN_SAMPLES, SLOWED_SHARE, Interference, interference_on


def pacer(**kw: Any) -> Pacer:
    return Pacer(**({"pressure_rest": 2.0, "max_replica_lag": 0, "target_ms": 100} | kw))


def probed(between: list[float], in_batch: list[float]) -> Interference:
    found = Interference()
    for ms in between:
        found.add(ms, in_batch=False)
    for ms in in_batch:
        found.add(ms, in_batch=True)
    return found


def test_too_few_probes_decide_nothing() -> None:
    few = [1.0] * (PROBE_MIN_SAMPLES - 1)
    found = probed(few, [9.0] * (PROBE_MIN_SAMPLES - 1))
    assert (found.slowed(), found.duty()) == (None, 1.0)


def test_batches_that_push_no_probe_past_one_and_a_half_times_set_no_bound() -> None:
    # Slower in a batch, but none past 1.5 times the p99 between batches.
    found = probed([1.0] * 100, [1.4] * 100)
    assert (found.slowed(), found.duty()) == (0.0, 1.0)


def test_the_share_of_probes_a_batch_slows_sets_the_share_of_time_batches_take() -> None:
    # A tenth of the probes in a batch past 1.5 times: batches may take 0.5 % / 10 % = 5 % of
    # the time, so that at most 0.5 % of the API's calls are pushed past it.
    found = probed([1.0] * 100, [1.0] * 90 + [2.0] * 10)
    assert found.slowed() == pytest.approx(0.1)
    assert found.duty() == pytest.approx(SLOWED_SHARE / 0.1)
    # Every probe in a batch slowed: 0.5 % of the time.
    assert probed([1.0] * 100, [3.0] * 100).duty() == pytest.approx(SLOWED_SHARE)


def test_a_pacer_rests_so_that_its_batches_take_that_share_while_the_api_is_at_work() -> None:
    steer = pacer(busy_rest=3.0)
    steer.interference = probed([1.0] * 100, [1.0] * 90 + [2.0] * 10)  # 5 % of the time
    assert steer.rest_after(rows=100, ms=50) == 0  # no one else at work: no rest
    steer.busy = 1.0
    # 50 ms in flight, then 950 ms of rest: 5 % (the busy rest alone: 150 ms, 25 %).
    assert steer.rest_after(rows=100, ms=50) == pytest.approx(0.95)
    steer.runs = 2  # two runs at work share that share
    assert steer.rest_after(rows=100, ms=50) == pytest.approx(1.9)
    # The busy rest switched off (PURGE_BUSY_REST=0): no turns with the API at all.
    off = pacer(busy_rest=0.0, busy=1.0)
    off.interference = steer.interference
    assert off.rest_after(rows=100, ms=50) == 0


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def probe_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "purge-probe"]


@pytest.fixture
def store(pg_store: Engine) -> Engine:
    """The PostgreSQL store, with no probe kept from another test on its engine."""
    kept = interference_on(pg_store)
    kept.inside.clear()
    kept.outside.clear()
    return pg_store


@pytest.mark.postgres
def test_the_probe_times_its_read_in_a_batch_and_between_unseen_as_the_api(
    store: Engine,
) -> None:
    steer = pacer(busy_rest=3.0, busy=1.0)
    with steer.probing(store):
        with steer.batch():
            wait_until(lambda: len(steer.interference.inside) >= 3, "probes in a batch")
        wait_until(lambda: len(steer.interference.outside) >= 3, "probes between batches")
        # Its session is named as the purge's, so `look_around` does not count it as one of
        # the API's sessions at work; its server process is among the run's own.
        (pid,) = steer.own_sessions
        with store.connect() as connection:
            named = connection.scalar(
                text("SELECT application_name FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            )
        assert named == APPLICATION_NAME
    assert probe_threads() == []
    # What it found stays with the engine for the next run.
    assert interference_on(store) is steer.interference
    again = pacer(busy_rest=3.0)
    with again.probing(store):
        assert again.interference is steer.interference


@pytest.mark.postgres
def test_the_probe_waits_while_no_one_else_is_at_work(store: Engine) -> None:
    steer = pacer(busy_rest=3.0)  # busy 0: nothing to protect
    with steer.probing(store):
        assert len(probe_threads()) == 1
        time.sleep(0.3)  # six probing intervals
    assert (len(steer.interference.inside), len(steer.interference.outside)) == (0, 0)


@pytest.mark.postgres
def test_no_probe_on_sqlite_or_with_the_busy_rest_off(pg_store: Engine) -> None:
    sqlite = create_engine("sqlite://")
    for engine, busy_rest in ((sqlite, 3.0), (pg_store, 0.0)):
        with pacer(busy_rest=busy_rest, busy=1.0).probing(engine):
            assert probe_threads() == []
