"""The purge's steering parts: the adaptive batch size, the budget, the pacing, the live pace
control, the cap on the batch size, and the configuration built once from the settings."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import text, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

import shared.purge.stop as stop_module
from shared.controls import clear_pace, read_controls, set_pace
from shared.db import make_session_factory
from shared.errors import ValidationError
from shared.models import PhoneNumber
from shared.provider import TelnyxProvider
from shared.purge import PurgeConfig, StopRequest
from shared.purge.budget import BatchSizer, Budget
from shared.purge.lanes import lane_lock_key
from shared.purge.lock import PURGE_LOCK_KEY, deleter_keys
from shared.purge.pacing import (
    APPLICATION_NAME,
    BURST_SECONDS,
    MAX_REST_SECONDS,
    WORKER_APPLICATION_NAME,
    Pacer,
    others_at_work,
    replica_lag,
)
from shared.settings import Settings, get_settings
from tests.factories import make_number
from tests.purging import purge_expired
from worker.app import create_app, visibility_timeout
from worker.connections import engine as worker_engine
from worker.tasks import PRUNE, PURGE, RECONCILE, RELAY

Factory = sessionmaker[Session]
Invoke = Callable[..., Result]


def seed(
    factory: Factory, now: datetime, count: int, *, prefix: str = "+1415620", ids: str = ""
) -> None:
    """`count` numbers 20 days past their release; with `ids`, each with its carrier's id."""
    with factory.begin() as session:
        for i in range(count):
            number = f"{prefix}{i:04d}"
            make_number(
                session,
                account_id="acc_s",
                phone_number=number,
                released_at=now - timedelta(days=20),
                now=now,
            )
            if ids:
                session.execute(
                    update(PhoneNumber)
                    .where(PhoneNumber.phone_number == number)
                    .values(provider_number_id=f"{ids}{i}")
                )


# --- the adaptive batch size (pure) ----------------------------------------------------------


def sizer(size: int = 1000) -> BatchSizer:
    return BatchSizer(target_ms=100, floor=50, cap=4000, size=size)


@pytest.mark.parametrize(
    ("rows", "ms", "after"),
    [
        (1000, 30, 1200),  # fast: grows by a fifth, no more
        (1000, 45, 1111),  # near the aim (half the target): grows only towards it
        (1000, 50, 1000),  # at the aim: stays
        (1000, 100, 1000),  # up to the target: stays
        (1000, 200, 250),  # twice the target: to what would have met the aim, at once
        (1000, 1000, 50),  # ten times
        (1000, 100_000, 50),  # never below the floor
        (300, 20, 1000),  # a short batch (the backlog's end) says nothing about larger ones
        (300, 300, 50),  # ... unless it was slow: scaled by the rows it had
        (0, 500, 1000),  # an empty batch: nothing learnt
    ],
)
def test_the_batch_size_grows_slowly_and_shrinks_at_once(rows: int, ms: float, after: int) -> None:
    adaptive = sizer()
    adaptive.observe(asked=1000, rows=rows, ms=ms)
    assert adaptive.size == after


def test_the_batch_size_never_exceeds_its_cap() -> None:
    adaptive = sizer(3900)
    for _ in range(5):
        adaptive.observe(asked=adaptive.size, rows=adaptive.size, ms=1)
    assert adaptive.size == 4000


def test_the_batch_size_settles_near_the_target_on_a_steady_machine() -> None:
    """A machine where a batch costs 5 ms plus 40 us per row: from any start the size settles
    where a batch takes between the aim (half the target) and the target."""
    for start in (50, 4000):
        adaptive = sizer(start)
        for _ in range(60):
            size = adaptive.size
            adaptive.observe(asked=size, rows=size, ms=5 + 0.04 * size)
        assert 45 <= 5 + 0.04 * adaptive.size <= 100, adaptive.size


# --- the budget and the pacing (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("reserved", "elapsed", "over"),
    [(0, 0.0, False), (99, 9.9, False), (100, 0.0, True), (0, 10.0, True)],
)
def test_the_budget_is_over_at_its_rows_or_its_seconds(
    reserved: int, elapsed: float, over: bool
) -> None:
    budget = Budget(max_rows=100, max_seconds=10, started=time.monotonic() - elapsed)
    budget.take(reserved)
    assert budget.over_limit() is over
    assert budget.rows_left() == 100 - reserved


def pacer(**kw: Any) -> Pacer:
    return Pacer(**({"pressure_rest": 2.0, "max_replica_lag": 0, "target_ms": 100} | kw))


def test_no_rest_while_batches_keep_under_one_and_a_half_targets() -> None:
    quiet = pacer()
    rests = [quiet.rest_after(rows=1000, ms=ms) for ms in (50, 95, 140, 60, 150)]
    assert rests == [0.0] * 5
    assert quiet.rested == 0


def test_a_batch_far_slower_than_the_target_rests_in_proportion() -> None:
    pressed = pacer()
    # 250 ms: 100 ms beyond 1.5 times the target; rest twice that.
    assert pressed.rest_after(rows=1000, ms=250) == pytest.approx(0.2)
    assert pressed.rest_after(rows=1000, ms=100_000) == MAX_REST_SECONDS
    assert pressed.rested == pytest.approx(0.2 + MAX_REST_SECONDS)


def test_the_purge_takes_turns_with_sessions_found_at_work() -> None:
    shared_ = pacer(busy_rest=3.0)
    assert shared_.rest_after(rows=1000, ms=60) == 0  # no one else seen yet
    shared_.busy = 0.5  # found others at work before half of the recent batches
    assert shared_.rest_after(rows=1000, ms=60) == pytest.approx(0.09)


def test_a_rows_per_second_ceiling_spreads_the_batches() -> None:
    clock = FakeClock()
    ceiling = pacer(pressure_rest=0, clock=clock)
    ceiling.set_ceiling(1000)
    # A batch holds at most half a second of the pace; 500 rows are due half a second on.
    assert ceiling.ceiling_size(4000) == 500
    assert ceiling.ceiling_wait() == 0
    ceiling.count(500)
    assert ceiling.ceiling_wait() == pytest.approx(0.5)
    clock.now += 2  # two seconds later: far behind the ceiling, no wait
    assert ceiling.ceiling_wait() == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def paced_run(
    pace: float, *, seconds: float, batch_ms: float, lanes: int
) -> list[tuple[float, int]]:
    """The picks (instant, rows) of a simulated sweep under `pace`, its batches taking
    `batch_ms`, `lanes` at once, each waiting as `run_batches` does."""
    clock = FakeClock()
    steer = pacer(pressure_rest=0, clock=clock)
    sizes = BatchSizer(target_ms=100, floor=50, cap=4000, size=1000)
    steer.set_ceiling(pace)
    start = clock.now
    free_at = [start] * lanes  # when each lane may look for its next batch
    picks: list[tuple[float, int]] = []
    while True:
        lane = min(range(lanes), key=free_at.__getitem__)
        clock.now = free_at[lane]
        if clock.now - start >= seconds:
            return picks
        wait = steer.ceiling_wait()
        if wait:
            free_at[lane] = clock.now + wait
            continue
        rows = steer.ceiling_size(sizes.size)
        steer.count(rows)
        picks.append((clock.now, rows))
        free_at[lane] = clock.now + batch_ms / 1000 + steer.rest_after(rows=rows, ms=batch_ms)


@pytest.mark.parametrize("pace", [10, 100, 1000])
@pytest.mark.parametrize(("batch_ms", "lanes"), [(1, 1), (40, 1), (40, 4), (900, 2)])
def test_the_pace_is_a_ceiling_over_any_ten_second_window(
    pace: float, batch_ms: float, lanes: int
) -> None:
    picks = paced_run(pace, seconds=60, batch_ms=batch_ms, lanes=lanes)
    # No batch holds more rows than the pace allows in its half second.
    assert max(rows for _, rows in picks) <= max(1, pace * BURST_SECONDS)
    # Every 10 s window starting at a pick keeps within 10 % of the pace.
    for at, _ in picks:
        window = sum(rows for when, rows in picks if at <= when < at + 10)
        assert window <= 1.1 * pace * 10, (at, window)
    # ... and the ceiling is not a crawl: a run that is free to go keeps close to it.
    if batch_ms * 1 < 1000 * BURST_SECONDS:
        assert sum(rows for _, rows in picks) >= 0.9 * pace * 60


def test_lanes_resting_side_by_side_count_once() -> None:
    steer = pacer(busy_rest=3.0)
    steer.busy = 1.0
    rests = [0.0, 0.0]
    together = threading.Barrier(2)  # both lanes alive at once, as in the pool

    def lane(i: int) -> None:
        together.wait()
        for _ in range(10):
            rests[i] += steer.rest_after(rows=10, ms=100)
        together.wait()

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert steer.rested == pytest.approx(max(rests)) == pytest.approx(3.0)


def test_a_stop_ends_a_rest_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop asked for during a rest ends it after the slice under way; one already asked for
    rests not at all (on a clock of the test's: the slices slept are counted, not timed)."""
    clock = [0.0]
    slept: list[float] = []
    stop = StopRequest()

    def sleep(seconds: float) -> None:
        clock[0] += seconds
        slept.append(seconds)
        if len(slept) == 3:
            stop.request("test")  # asked for while the third slice is under way

    fake_time = SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep)
    monkeypatch.setattr(stop_module, "time", fake_time)
    stop.sleep(60)
    assert slept == [stop_module.SLICE_SECONDS] * 3
    stop.sleep(60)
    assert len(slept) == 3


# --- on the stores ----------------------------------------------------------------------------


def test_batches_never_exceed_the_cap_and_the_summary_shows_the_sizes(
    session_factory: Factory, now: datetime
) -> None:
    seed(session_factory, now, 23)
    with capture_logs() as logs:
        report = purge_expired(session_factory, now=now, batch_size=5)
    sizes = [e["size"] for e in logs if e["event"] == "purge.batch"]
    assert sizes == [5, 5, 5, 5, 5]
    assert report.batch_sizes == {"min": 5, "max": 5, "last": 5}
    assert (report.purged, report.status) == (23, "completed")


def test_a_pace_in_the_store_slows_every_run_until_cleared(
    session_factory: Factory, now: datetime
) -> None:
    seed(session_factory, now, 60)
    with session_factory.begin() as session:
        set_pace(session, rows_per_second=200, by="ops", reason="API latency")
    report = purge_expired(session_factory, now=now, batch_size=20)
    # 60 rows at 200 rows/s: three batches of 20, each taking (with its rest) 100 ms at least.
    assert (report.purged, report.batches) == (60, 3)
    assert report.seconds >= 0.3
    with session_factory.begin() as session:
        assert read_controls(session).pace is not None
        assert clear_pace(session) == {"pace": None, "was_paced": True}
        assert read_controls(session).pace is None


def test_under_a_pace_a_batch_holds_no_more_than_the_pace_allows(
    session_factory: Factory, now: datetime
) -> None:
    seed(session_factory, now, 60)
    with session_factory.begin() as session:
        set_pace(session, rows_per_second=100, by="ops")
    report = purge_expired(session_factory, now=now, batch_size=1000)
    # 100 rows/s: half a second's worth, 50 rows, at most per batch; the rest waits its turn.
    assert (report.purged, report.status) == (60, "completed")
    assert report.batch_sizes is not None
    assert report.batch_sizes["max"] <= 50
    assert report.batches == 2
    assert report.paced_seconds <= report.seconds


@pytest.mark.parametrize("bad", [0, -5, float("inf"), float("nan"), True, "100"])
def test_a_bad_pace_is_refused_with_the_envelope(session_factory: Factory, bad: object) -> None:
    with session_factory.begin() as session, pytest.raises(ValidationError) as refused:
        set_pace(session, rows_per_second=bad, by="ops")  # type: ignore[arg-type]
    assert refused.value.code == "invalid_pace"


def test_pace_and_status_from_the_command_line(
    pg_url: str, pg_factory: Factory, tmp_path: Path, cli_in: Callable[..., Invoke]
) -> None:
    cli = cli_in(tmp_path, DATABASE_URL=pg_url)

    set_ = cli("pace", "--rows-per-second", "2500", "--reason", "peak hours", "--by", "ops")
    assert set_.exit_code == 0, set_.stderr
    status = json.loads(cli("status", "--json").stdout)
    assert status["pace"]["rows_per_second"] == 2500
    assert (status["pace"]["by"], status["pace"]["reason"]) == ("ops", "peak hours")
    assert "at most 2,500 rows/s, set by ops" in cli("status").stdout
    assert cli("pace").exit_code == 2  # neither a ceiling nor --off
    assert json.loads(cli("pace", "--off").stdout) == {"pace": None, "was_paced": True}
    assert json.loads(cli("status", "--json").stdout)["pace"] is None


# --- configuration ----------------------------------------------------------------------------


def test_the_configuration_comes_from_the_settings_and_the_callers_bounds(
    settings_env: Callable[..., None],
) -> None:
    settings_env(
        PURGE_BATCH_SIZE="3000",
        PURGE_BATCH_FLOOR="200",
        PURGE_BATCH_TARGET_MS="80",
        PURGE_MAX_ROWS_PER_SECOND="5000",
    )
    config = PurgeConfig.from_settings(get_settings())
    assert (config.batch_cap, config.batch_floor, config.target_ms) == (3000, 200, 80)
    assert config.max_rows_per_second == 5000
    capped = config.overridden(batch_size=50, max_rows=7)
    # A cap below the floor lowers the floor: the cap is never exceeded.
    assert (capped.batch_cap, capped.batch_floor, capped.first_batch, capped.max_rows) == (
        50,
        50,
        50,
        7,
    )
    # A run starts at the floor (before: 500 rows, 280 ms on a loaded machine).
    assert config.first_batch == 200


def test_a_run_starts_at_the_floor_and_grows_while_its_batches_are_fast(
    session_factory: Factory, now: datetime, settings_env: Callable[..., None]
) -> None:
    settings_env(PURGE_BATCH_SIZE="1000", PURGE_BATCH_FLOOR="10", PURGE_BATCH_TARGET_MS="10000")
    seed(session_factory, now, 300, prefix="+1415626")
    report = purge_expired(session_factory, now=now)
    assert (report.status, report.purged) == ("completed", 300)
    assert report.batch_sizes["min"] == 10
    assert report.batch_sizes["max"] > 10


def test_the_redis_visibility_timeout_outlasts_the_longest_run() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", purge_max_seconds=600)
    app = create_app(settings)
    timeout = app.conf.broker_transport_options["visibility_timeout"]
    assert timeout == visibility_timeout(settings) == 780
    # Above the purge task's hard time limit, far below Celery's default hour.
    assert 600 + 120 < timeout < 3600


def test_the_redis_visibility_timeout_outlasts_every_tasks_hard_limit() -> None:
    # A short purge: the reconciliation's hard limit is then the longest a task holds its message.
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", purge_max_seconds=60)
    app = create_app(settings)
    timeout = app.conf.broker_transport_options["visibility_timeout"]
    limits = {name: task.time_limit for name, task in app.tasks.items() if task.time_limit}
    assert set(limits) == {PURGE, RECONCILE, RELAY, PRUNE}
    assert timeout > max(limits.values())
    assert timeout > settings.task_retry_backoff_max


def seen_at_work(looker: Connection, **options: Any) -> int:
    # Each look in a transaction of its own, as each batch has: PostgreSQL keeps one snapshot
    # of pg_stat_activity per transaction. One connection for every look (a pool hands out
    # its connections in turn, and each look would make the others recently at work).
    with Session(bind=looker) as session:
        return others_at_work(session, **options)


def backend_pid(connection: Connection) -> int:
    pid = connection.scalar(text("SELECT pg_backend_pid()"))
    connection.rollback()
    return int(pid)


@pytest.mark.postgres
def test_sessions_at_work_on_the_store_are_seen_and_the_purges_own_are_not(
    pg_factory: Factory,
) -> None:
    engine = pg_factory.kw["bind"]
    # A window long enough that no look below falls outside it on a busy machine; first, wait
    # until the fixtures' pooled sessions have been idle for longer than that.
    window: dict[str, Any] = {"recent": 5.0}
    with engine.connect() as looker, engine.connect() as other:
        deadline = time.monotonic() + 60
        while seen_at_work(looker, **window) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert seen_at_work(looker, **window) == 0
        assert replica_lag(Session(bind=looker)) == 0  # no replica here
        looker.rollback()
        other.execute(text("SELECT 1"))  # now idle in a transaction: at work
        assert seen_at_work(looker, recent=0) == 1
        other.rollback()
        # Idle, but at work a moment ago: an API between two calls (it spends most of each
        # call in its own process). Seen while that moment is recent (failed before: a look
        # at one instant saw an API in steady use almost never).
        assert seen_at_work(looker, **window) == 1
        assert seen_at_work(looker, recent=0) == 0
        # The purge's own connections (its pool, used by its earlier batches) are not.
        own = {backend_pid(other)}
        assert seen_at_work(looker, own=own, **window) == 0
        assert backend_pid(looker) in own  # the looking session joins them
        for name in (APPLICATION_NAME, WORKER_APPLICATION_NAME):
            # A parallel batch of the purge itself; the worker's relay woken by its commits.
            other.execute(text("SELECT set_config('application_name', :n, false)"), {"n": name})
            other.commit()  # a name set in a transaction rolled back would be undone with it
            other.execute(text("SELECT 1"))
            assert seen_at_work(looker, recent=0) == 0
            other.rollback()
            assert seen_at_work(looker, **window) == 0
        other.invalidate()  # named: not back into the pool the next tests use


@pytest.mark.postgres
@pytest.mark.parametrize("api", [False, True], ids=["alone", "beside-an-api"])
def test_the_purge_takes_turns_with_an_api_in_use_and_not_with_itself(
    api: bool, pg_url: str, pg_factory: Factory, now: datetime, settings_env: Callable[..., None]
) -> None:
    settings_env(PURGE_BUSY_REST="3", PURGE_PARALLEL_BATCHES="2", PURGE_PRESSURE_REST="0")
    seed(pg_factory, now, 40)
    engine = pg_factory.kw["bind"]
    # The fixtures' sessions out of the window first (looking from a connection named as the
    # worker's: its own reset when it goes back to its pool does not count).
    with worker_engine(pg_url).connect() as looker:
        deadline = time.monotonic() + 60
        while seen_at_work(looker) and time.monotonic() < deadline:
            time.sleep(0.2)
    done, serving = threading.Event(), threading.Event()

    def use_the_api() -> None:  # short calls with time in between, as an API's are
        with engine.connect() as client:
            while not done.is_set():
                client.execute(text("SELECT count(*) FROM phone_numbers"))
                client.rollback()
                serving.set()
                time.sleep(0.005)

    client = threading.Thread(target=use_the_api)
    if api:
        client.start()
        assert serving.wait(60)
    try:
        # On the worker's engine, as the purge task runs: its sessions carry the worker's name.
        report = purge_expired(make_session_factory(worker_engine(pg_url)), now=now, batch_size=2)
    finally:
        done.set()
        if api:
            client.join()
    assert (report.status, report.purged, report.batches) == ("completed", 40, 20)
    if api:
        # Seen at work before every batch, so the purge rested 3 times each batch's time as the
        # share of batches that found it climbed to 1: most of the run (failed before: a look
        # at one instant found the API's session running its statement now and then, and the
        # purge rested a tenth of the run or so).
        assert report.paced_seconds > report.seconds / 2
    else:
        # Nothing else at work: no rest, with two lanes (its own connections do not count).
        assert report.paced_seconds == 0


@pytest.mark.postgres
def test_the_runs_at_work_share_the_room_for_the_api(pg_factory: Factory) -> None:
    """Two carriers' lanes at once, each resting as one run alone would, worked twice as much
    beside the API as one run (bench/impact.py --lanes: list p99 2.19x idle against 1.65x).
    Each run counts the run locks held and rests that many times more."""
    engine = pg_factory.kw["bind"]
    pacer = Pacer(
        pressure_rest=0, max_replica_lag=0, target_ms=100, busy_rest=3, run_keys=deleter_keys()
    )

    def look() -> int:
        with pg_factory() as session:
            pacer.sample_activity(session)
        return pacer.runs

    with engine.connect() as whole, engine.connect() as lane, engine.connect() as other:
        take = text("SELECT pg_advisory_lock(:key)")
        whole.execute(take, {"key": PURGE_LOCK_KEY})  # the whole store's run...
        whole.commit()
        assert look() == 1
        lane.execute(take, {"key": lane_lock_key("telnyx")})  # ...in its Telnyx lane: one run
        lane.commit()
        assert look() == 1
        other.execute(take, {"key": lane_lock_key("twilio")})  # Twilio's lane on another worker
        other.commit()
        assert look() == 2
        pacer.busy = 1.0
        assert pacer.rest_after(rows=100, ms=100) == pytest.approx(0.6)  # 3 x 100 ms x 2 runs
        other.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lane_lock_key("twilio")})
        other.commit()
        assert look() == 1
        pacer.busy = 1.0
        assert pacer.rest_after(rows=100, ms=100) == pytest.approx(0.3)
        for connection in (whole, lane):
            connection.execute(text("SELECT pg_advisory_unlock_all()"))
            connection.commit()


@pytest.mark.postgres
def test_the_workers_own_sessions_carry_its_name(pg_url: str) -> None:
    with worker_engine(pg_url).connect() as connection:
        assert connection.scalar(text("SHOW application_name")) == WORKER_APPLICATION_NAME


def test_two_phase_claims_shrink_to_the_transaction_target(
    session_factory: Factory,
    now: datetime,
    telnyx: TelnyxProvider,
    settings_env: Callable[..., None],
) -> None:
    """A claim's settle (a tombstone and a delete per number) is one transaction: its size
    adapts to the target as a single-phase batch's does (before: always the carrier's batch
    size, whatever the database's speed; a busy one held its locks past the 250 ms promise)."""
    settings_env(PROVIDER_BATCH_SIZE="16", PURGE_BATCH_FLOOR="2", PURGE_BATCH_TARGET_MS="0.001")
    seed(session_factory, now, 24, prefix="+1415624", ids="91")
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged) == ("completed", 24)
    # Every transaction took more than a microsecond: every claim asked for the floor, the
    # first one too (before: the carrier's 16).
    assert report.batch_sizes == {"min": 2, "max": 2, "last": 2}


def test_two_phase_claims_start_at_the_floor_and_grow_while_fast(
    session_factory: Factory,
    now: datetime,
    telnyx: TelnyxProvider,
    settings_env: Callable[..., None],
) -> None:
    """A run's first claim is the floor's size, not the carrier's batch size: on a busy
    database the first claims of two lanes beside the API held a transaction up to 334 ms.
    While its transactions stay fast, the claims grow to the carrier's batch size."""
    settings_env(PROVIDER_BATCH_SIZE="16", PURGE_BATCH_FLOOR="2", PURGE_BATCH_TARGET_MS="10000")
    # Growing by a fifth a claim from 2, the claims reach 16 after 96 numbers.
    seed(session_factory, now, 100, prefix="+1415625", ids="92")
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged) == ("completed", 100)
    assert (report.batch_sizes["min"], report.batch_sizes["max"]) == (2, 16)


def test_the_pace_holds_for_the_two_phase_purge_too(
    session_factory: Factory,
    now: datetime,
    telnyx: TelnyxProvider,
    settings_env: Callable[..., None],
) -> None:
    settings_env(PROVIDER_BATCH_SIZE="4")
    seed(session_factory, now, 8, prefix="+1415621", ids="90")
    with session_factory.begin() as session:
        set_pace(session, rows_per_second=20, by="ops")
    report = purge_expired(session_factory, now=now, provider=telnyx)
    # Two batches of 4 at 20 rows/s: each taking (with its rest) 0.2 s at least.
    assert (report.status, report.purged, report.batches) == ("completed", 8, 2)
    assert report.seconds >= 0.4
