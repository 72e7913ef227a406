"""Calls to the carrier paced by the rate limit it announces (Telnyx's x-ratelimit-* headers,
429 with code 10011 and Retry-After): the pace alone on a simulated clock, then the purge
against the fake Telnyx server enforcing a limit."""

from __future__ import annotations

import heapq
import math
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Literal

import pytest
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from shared.provider import TelnyxProvider, make_provider
from shared.purge import StopRequest
from shared.ratelimit import Announced, CallDeferred, CarrierPace, announced, run_bounds
from shared.settings import Settings
from tests.fake_telnyx import OK, TOO_MANY_REQUESTS, FakeTelnyx, RateLimit, Reply
from tests.purging import purge_expired
from tests.stores import numbers_by_phone, tombstones_by_phone
from tests.test_upstream_purge import seed

Factory = sessionmaker[Session]


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def headers(limit: int, remaining: int, reset: float, retry_after: str | None = None) -> dict:
    said = {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(reset),
    }
    return said | ({"Retry-After": retry_after} if retry_after is not None else {})


# --- the headers -----------------------------------------------------------------------------


def test_the_headers_are_read_as_telnyx_documents_them() -> None:
    said = announced(
        {
            "X-RateLimit-Limit": "20",
            "x-ratelimit-remaining": "7",
            "x-ratelimit-reset": "1",
            "Retry-After": "3",
        }
    )
    assert said == Announced(limit=20, remaining=7, reset=1.0, retry_after=3.0)
    assert announced({"x-ratelimit-reset": "0.250"}).reset == 0.25
    in_a_minute = "Wed, 21 Oct 2099 07:28:00 GMT"
    assert (announced({"Retry-After": in_a_minute}).retry_after or 0) > 0


@pytest.mark.parametrize("value", ["", "soon", "-1", "inf", "nan", "1e400"])
def test_headers_that_say_nothing_usable_are_left_out(value: str) -> None:
    said = announced(
        {
            "x-ratelimit-limit": value,
            "x-ratelimit-remaining": value,
            "x-ratelimit-reset": value,
            "Retry-After": value,
        }
    )
    assert said == Announced()


# --- the pace, on a clock of the test's own ----------------------------------------------


def test_the_first_call_goes_alone_and_without_headers_the_rest_are_not_paced() -> None:
    clock = Clock()
    pace = CarrierPace(clock)
    first = pace.start(pace.ready_at(clock.now))
    assert pace.ready_at(clock.now) == math.inf  # until it answers
    pace.observe(first, 200, {}, clock.now)
    for _ in range(5):
        assert pace.ready_at(clock.now) <= clock.now
        pace.start(clock.now)
    assert (pace.in_flight, pace.rate()) == (5, None)


def test_calls_never_outnumber_what_the_window_has_left_and_are_spread_until_its_reset() -> None:
    clock = Clock()
    pace = CarrierPace(clock)
    pace.observe(pace.start(clock.now), 200, headers(5, 4, 1), clock.now)  # ends in 1 s
    starts = []
    while (at := pace.ready_at(clock.now)) < 1000 + 1:
        clock.now = max(clock.now, at)
        starts.append(round(clock.now - 1000, 3))
        pace.start(clock.now)  # none of them answers yet
    # The 4 left, evenly until the reset, none more; the next waits for the reset.
    assert starts == [0.2, 0.4, 0.6, 0.8]
    assert (pace.budget, pace.ready_at(clock.now)) == (0, 1000 + 1)


def test_calls_sent_after_an_answer_are_taken_from_what_it_says_is_left() -> None:
    clock = Clock()
    pace = CarrierPace(clock)
    pace.observe(pace.start(clock.now), 200, headers(10, 8, 1), clock.now)
    early = pace.start(clock.now)
    later = [pace.start(clock.now) for _ in range(3)]
    # `early` was counted before the three sent after it: 6 left, less those 3 in flight.
    pace.observe(early, 200, headers(10, 6, 1), clock.now)
    assert pace.budget == 3
    # An older answer of the same window that was counted later can only lower it.
    pace.observe(later[0], 200, headers(10, 5, 1), clock.now)
    assert pace.budget == 3  # 5 left less the 2 sent after it
    assert pace.in_flight == 2


def test_a_429_stops_every_call_until_retry_after_then_one_asks_alone() -> None:
    clock = Clock()
    pace = CarrierPace(clock)
    pace.observe(pace.start(clock.now), 200, headers(10, 9, 1), clock.now)
    calls = [pace.start(clock.now) for _ in range(4)]
    clock.now += 0.01
    pace.observe(calls[0], 429, headers(10, 0, 1, retry_after="3"), clock.now)
    assert pace.paused_until == clock.now + 3
    # The other calls in flight when it came are refused too: one refusal, not four (the
    # calls allowed in flight are halved once).
    for call in calls[1:]:
        pace.observe(call, 429, headers(10, 0, 1, retry_after="3"), clock.now)
    assert (pace.limited, pace.paused_until, pace.cap) == (4, clock.now + 3, 2.0)
    clock.now += 3
    asking = pace.start(pace.ready_at(clock.now))
    assert pace.ready_at(clock.now) == math.inf  # one alone until it answers
    pace.observe(asking, 200, headers(10, 9, 1), clock.now)
    assert pace.ready_at(clock.now) < math.inf


def test_429s_in_a_row_without_retry_after_wait_longer_each_time() -> None:
    clock = Clock()
    pace = CarrierPace(clock)
    waits = []
    for _ in range(4):
        clock.now = max(clock.now, pace.ready_at(clock.now))
        pace.observe(pace.start(clock.now), 429, {}, clock.now)
        waits.append(pace.paused_until - clock.now)
    assert waits == [0.25, 0.5, 1.0, 2.0]


def test_a_call_waits_only_within_its_bounds() -> None:
    clock = Clock()
    pace = CarrierPace(clock)
    pace.observe(pace.start(clock.now), 429, {"Retry-After": "30"}, clock.now)
    with run_bounds(deadline=clock.now + 10), pytest.raises(CallDeferred) as deferred:
        pace.acquire(max_wait=60)
    assert deferred.value.wait == 30
    with pytest.raises(CallDeferred):  # without a run's bounds: `max_wait`
        pace.acquire(max_wait=5)
    with run_bounds(clock.now + 60, stopping=lambda: True), pytest.raises(CallDeferred) as stop:
        pace.acquire(max_wait=60)
    assert stop.value.reason == "the run is stopping"


def test_a_batch_claims_what_the_announced_rate_calls_in_a_few_seconds() -> None:
    pace = CarrierPace()
    assert pace.claim_size(200) == 200  # the rate is not known yet
    pace.observe(pace.start(0), 200, headers(20, 19, 1), 0)
    assert (pace.rate(), pace.claim_size(200), pace.claim_size(50)) == (20, 100, 50)
    pace.observe(pace.start(0), 200, headers(1, 0, 60), 0)
    assert pace.claim_size(200) == 1  # one call a minute: one number a batch


Kind = tuple[Literal["window", "bucket"], bool]


@pytest.mark.parametrize("rate", [5, 20, 100])
@pytest.mark.parametrize(
    "kind",
    [("window", False), ("window", True), ("bucket", False), ("bucket", True)],
    ids=["window-whole-seconds", "window-ms", "bucket-whole-seconds", "bucket-ms"],
)
def test_simulated_against_a_limit_the_pace_reaches_it_without_a_429(rate: int, kind: Kind) -> None:
    """Calls from 8 threads, 3 ms there and back, for 30 simulated seconds against R
    requests/s (fixed windows or a token bucket, resets in whole seconds or milliseconds)."""
    clock = Clock()
    server = RateLimit(rate, kind=kind[0], fractional=kind[1], clock=clock)
    clock.now += 0.37  # the client starts anywhere in the server's window
    pace = CarrierPace(clock)
    answers: list[tuple[float, int, int, dict[str, str]]] = []
    begun, ok = clock.now, 0
    while clock.now < begun + 30:
        at = pace.ready_at(clock.now) if pace.in_flight < 8 else math.inf
        if answers and answers[0][0] <= at:
            clock.now, call, status, said = heapq.heappop(answers)
            pace.observe(call, status, said, clock.now)
            ok += status == 200
            continue
        clock.now = max(clock.now, at)
        call = pace.start(clock.now)
        clock.now += 0.0015
        allowed, said = server.take()
        clock.now -= 0.0015
        heapq.heappush(answers, (clock.now + 0.003, call, 200 if allowed else 429, said))
    assert server.limited == 0
    assert ok >= 0.9 * rate * 30


# --- the purge against the fake Telnyx server enforcing a limit -------------------------------


@pytest.mark.postgres
def test_a_rate_limited_carrier_gets_every_number_released_in_one_run(
    pg_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    """Issue 20: against 20 requests/s, 429s were spent as numbers' failures (backed off,
    and 20 of them in a row ended the run provider_unavailable with 19 of 60 purged). Now
    no 429 is a number's failure and one run purges them all."""
    numbers = seed(pg_factory, now, 60)
    fake_telnyx.rate_limit = RateLimit(20)
    report = purge_expired(pg_factory, now=now, provider=telnyx)
    failed = {n: row.provider_code for n, row in numbers_by_phone(pg_factory).items()}
    assert (report.status, report.purged, report.provider_failed, failed) == (
        "completed",
        60,
        0,
        {},
    )
    assert sorted(tombstones_by_phone(pg_factory)) == numbers
    # Each 429 the carrier sent is in the summary; with its headers read, it sends (almost)
    # none: the calls in flight stay within what each answer says is left.
    assert report.provider_rate_limited == fake_telnyx.rate_limit.limited <= 1
    # A batch claims what 20 calls a second release in 5 s.
    assert report.batch_sizes == {"min": 100, "max": 100, "last": 100}


def test_429s_are_asked_again_and_never_count_toward_the_failure_streak(
    session_factory: Factory,
    now: datetime,
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
    settings_env: Callable[..., None],
) -> None:
    seed(session_factory, now, 5)
    refused = Reply(429, TOO_MANY_REQUESTS, {"Retry-After": "0"})
    for i in range(5):
        fake_telnyx.script[f"70{i}"] = [refused, OK]
    settings_env(PROVIDER_FAILURE_STREAK="2")
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged, report.provider_failed) == ("completed", 5, 0)
    assert (report.provider_rate_limited, report.provider_deferred) == (5, 0)
    assert dict(fake_telnyx.calls) == {f"70{i}": 2 for i in range(5)}


def test_a_stop_ends_the_wait_for_the_carrier_and_keeps_the_numbers_unfailed(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    numbers = seed(session_factory, now, 3)
    fake_telnyx.default = Reply(429, TOO_MANY_REQUESTS, {"Retry-After": "120"})
    stop = StopRequest()

    def stop_once_refused() -> None:
        while not fake_telnyx.paths:
            threading.Event().wait(0.01)
        stop.request("SIGTERM")

    stopper = threading.Thread(target=stop_once_refused)
    stopper.start()
    report = purge_expired(session_factory, now=now, provider=telnyx, stop=stop)
    stopper.join()
    assert (report.status, report.purged, report.provider_failed) == ("interrupted", 0, 0)
    kept = numbers_by_phone(session_factory)
    assert sorted(kept) == numbers
    assert {(row.provider_error_code, row.provider_next_attempt_at) for row in kept.values()} == {
        (None, None)
    }


def test_every_run_of_a_worker_process_shares_what_it_learned_of_the_limit() -> None:
    settings = Settings(PROVIDER="telnyx", TELNYX_API_KEY=SecretStr("KEY_pace"))
    first, second = make_provider(settings), make_provider(settings)
    try:
        assert first.pace is not None
        assert first.pace is second.pace
        other = Settings(PROVIDER="telnyx", TELNYX_API_KEY=SecretStr("KEY_other"))
        third = make_provider(other)
        assert third.pace is not first.pace
        third.close()
    finally:
        first.close()
        second.close()
