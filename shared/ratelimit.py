"""Calls to the carrier paced by the rate limit it announces.

Telnyx publishes no fixed limit (developers.telnyx.com, "Rate limiting"): every answer carries
`x-ratelimit-limit` (the requests its window allows), `x-ratelimit-remaining` (how many are
left in the current window) and `x-ratelimit-reset` (seconds until the limit resets); past the
limit it answers 429 with error code 10011, and `Retry-After` says how long to wait.

`CarrierPace` reads those headers from every answer and decides when the next call may start:

- **how many at once**: never more calls than the window has left (`remaining`, less the
  calls sent since that answer); once it is spent, none until the window resets;
- **how fast**: what the window has left is spread evenly over the time until it resets (the
  longest reset seen is taken as the window's length: limit / window is the carrier's rate);
- **after a 429**: no call at all until `Retry-After` (or the reset) has passed, then one
  call alone until an answer says how much the new window allows; the calls allowed in flight
  are halved (and grow back by one per answered round), for a carrier that sends no headers.
  A 429 is the carrier's pace, never the number's answer: `send` waits and asks again.

A call waits only within its bounds (`run_bounds`: the run's deadline, an operator's stop;
without them, `max_wait`): a wait that would end past them raises `CallDeferred` at once, and
the caller keeps the number for a later run, unfailed.
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

# A carrier's announced reset or Retry-After beyond this is taken as this (a day).
LONGEST_WAIT = 86_400.0
# After 429s in a row without a usable Retry-After, wait this long, doubling, at most MAX.
BACKOFF_BASE = 0.25
BACKOFF_MAX = 60.0
# Past this many calls allowed in flight (grown back after a 429), the cap is lifted: the
# caller's own concurrency (PROVIDER_CONCURRENCY, at most 256) bounds them.
MAX_IN_FLIGHT = 256
# Waiting threads look at an operator's stop this often.
SLICE_SECONDS = 0.05
# A purge batch claims what the announced rate calls in this time (at most
# PROVIDER_BATCH_SIZE): a pause or a pace is taken up within it even at a few calls a second.
BATCH_SECONDS = 5.0


class CallDeferred(Exception):
    """The call was not made: the wait it needs ends past its bounds (or a stop came)."""

    def __init__(self, wait: float, reason: str) -> None:
        super().__init__(reason)
        self.wait = wait
        self.reason = reason


@dataclass(frozen=True)
class Bounds:
    """Until when calls may wait to start (time.monotonic()), and whether a stop came."""

    deadline: float
    stopping: Callable[[], bool]


_BOUNDS: ContextVar[Bounds | None] = ContextVar("carrier_call_bounds", default=None)


@contextmanager
def run_bounds(deadline: float, stopping: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Calls made in this context (and in threads given a copy of it) start by `deadline`."""
    token = _BOUNDS.set(Bounds(deadline, stopping))
    try:
        yield
    finally:
        _BOUNDS.reset(token)


@dataclass(frozen=True)
class Announced:
    """What one answer says about the limit; None where it says nothing usable."""

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None
    retry_after: float | None = None


def _count(value: str | None) -> int | None:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number >= 0 else None


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return min(seconds, LONGEST_WAIT) if math.isfinite(seconds) and seconds >= 0 else None


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (None: unusable)."""
    if value is None or not value.strip():
        return None
    seconds = _seconds(value.strip())
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), LONGEST_WAIT)


def announced(headers: Mapping[str, str]) -> Announced:
    """The rate-limit headers of an answer (names in any case, as HTTP allows)."""
    lower = {key.lower(): value for key, value in headers.items()}
    limit = _count(lower.get("x-ratelimit-limit"))
    return Announced(
        limit=limit if limit else None,
        remaining=_count(lower.get("x-ratelimit-remaining")),
        reset=_seconds(lower.get("x-ratelimit-reset")),
        retry_after=retry_after(lower.get("retry-after")),
    )


class CarrierPace:
    """When the next call to one carrier account may start; shared by every thread calling it.

    `ready_at(now)` / `start(now)` / `observe(...)` decide on a `now` passed in (tests drive
    them with a clock of their own); `send` is the loop a caller uses.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self.limit: int | None = None  # requests per window, as last announced
        self.window = 0.0  # the longest reset announced: the window's length
        self.budget: int | None = None  # calls that may still start before reset_at
        self.reset_at: float | None = None
        self.paused_until = 0.0
        self.cap = math.inf  # calls allowed in flight (halved by a 429, grows back)
        self._last_start: float | None = None
        self._in_flight: dict[int, float] = {}  # call number: when it started
        self._calls = 0
        self._applied = 0  # the call whose answer the budget comes from
        # Answers to calls started before this (the end of the last window or pause) speak
        # of a window that is over.
        self._window_from = -math.inf
        self._window_call = 0  # the first call answered in the current window
        self._strikes = 0  # 429s in a row (those of calls in flight together count once)
        self._paused_at = -math.inf  # when the last new 429 came
        self._heard = False  # any answer yet
        self.limited = 0  # answers 429, for the run's summary

    # --- decisions on a given `now` -------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def rate(self) -> float | None:
        """The carrier's announced rate (requests per second), once learned."""
        if self.limit is None or self.window <= 0:
            return None
        return self.limit / self.window

    def ready_at(self, now: float) -> float:
        """The earliest time the next call may start (math.inf: once a call in flight answers)."""
        if self.reset_at is not None and now >= self.reset_at:
            # The window is over: the next answer says what the new one allows.
            self._window_from = self.reset_at
            self.budget = self.reset_at = None
        if len(self._in_flight) >= self.cap:
            return math.inf
        at = self.paused_until
        if self.budget is None:
            # Nothing heard yet, or headers known but not this window's: one call alone asks.
            asking = self.limit is not None or not self._heard
            return math.inf if asking and self._in_flight else at
        if self.budget <= 0 or self.reset_at is None:
            return max(at, self.reset_at or at)
        if self._last_start is not None:
            # What is left, spread evenly until the reset.
            spread = (self.reset_at - self._last_start) / (self.budget + 1)
            at = max(at, self._last_start + spread)
        return at

    def start(self, now: float) -> int:
        """Count a call starting now; its number, for `observe` or `abandon`."""
        self._calls += 1
        self._in_flight[self._calls] = now
        if self.budget is not None:
            self.budget -= 1
        self._last_start = now
        return self._calls

    def abandon(self, call: int) -> None:
        """A call that got no answer (a timeout, a refused connection)."""
        with self._cond:
            self._in_flight.pop(call, None)
            self._cond.notify_all()

    def observe(self, call: int, status: int, headers: Mapping[str, str], now: float) -> None:
        """Learn from the answer to `call`."""
        with self._cond:
            started = self._in_flight.pop(call, now)
            self._heard = True
            said = announced(headers)
            if said.limit is not None:
                self.limit = said.limit
            if said.reset is not None:
                self.window = max(self.window, said.reset)
            if status == 429:
                self._limited(said, started, now)
            else:
                self._answered(call, said, started, now)
            self._cond.notify_all()

    def _limited(self, said: Announced, started: float, now: float) -> None:
        """A 429: no call until the carrier's wait has passed, fewer in flight after it."""
        self.limited += 1
        wait = said.retry_after if said.retry_after is not None else said.reset or 0.0
        if started >= self._paused_at:
            # A new refusal, not one more of the calls in flight when the last one came.
            self._strikes += 1
            self._paused_at = now
            self.cap = max(1.0, (len(self._in_flight) + 1) / 2)
        floor = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (self._strikes - 1))
        self.paused_until = max(self.paused_until, now + max(wait, floor))
        self._window_from = self.paused_until
        self.budget = self.reset_at = None

    def _answered(self, call: int, said: Announced, started: float, now: float) -> None:
        self._strikes = 0
        if self.cap != math.inf:
            self.cap += 1 / self.cap
            if self.cap > MAX_IN_FLIGHT:
                self.cap = math.inf
        if said.remaining is None or said.reset is None:
            return
        if started < self._window_from or call < self._window_call:
            return  # about a window that is over
        # Calls sent after this one may not be counted in what it says is left.
        left = said.remaining - sum(1 for later in self._in_flight if later > call)
        reset_at = now + said.reset
        if call < self._applied:
            # An older answer of this window (the carrier may count calls in another order
            # than they were sent): it can only say less is left.
            if self.budget is not None:
                self.budget = min(self.budget, left)
            return
        self._applied = call
        if self.budget is None or self.reset_at is None or left > self.budget:
            # A new window (more is left than this one had).
            self.budget, self.reset_at, self._window_call = left, reset_at, call
        else:
            # The same window: a reset in whole seconds only ever says it ends later.
            self.budget, self.reset_at = left, min(self.reset_at, reset_at)

    def claim_size(self, cap: int, seconds: float = BATCH_SECONDS) -> int:
        """How many numbers to claim for a batch: what the announced rate calls in
        `seconds` (at least one), at most `cap`; `cap` while the rate is unknown."""
        rate = self.rate()
        return cap if rate is None else max(1, min(cap, math.ceil(rate * seconds)))

    # --- the caller's loop ----------------------------------------------------------------

    def acquire(self, max_wait: float) -> int:
        """Wait until a call may start, within the bounds; its number. Raises `CallDeferred`
        when the wait would end past them (a stop ends it at once)."""
        bounds = _BOUNDS.get()
        deadline = bounds.deadline if bounds is not None else self._clock() + max_wait
        with self._cond:
            while True:
                now = self._clock()
                if bounds is not None and bounds.stopping():
                    raise CallDeferred(0.0, "the run is stopping")
                at = self.ready_at(now)
                if at <= now:
                    return self.start(now)
                if now >= deadline or (at > deadline and at != math.inf):
                    wait = at - now if at != math.inf else 0.0
                    raise CallDeferred(
                        wait,
                        f"the carrier's rate limit allows the next call in {wait:.1f} s, "
                        "past this run's time bound",
                    )
                self._cond.wait(min(at - now, deadline - now, SLICE_SECONDS))

    def send(self, call: Callable[[], httpx.Response], *, max_wait: float) -> httpx.Response:
        """`call()` when the pace allows, again after each 429 once its wait has passed; the
        first answer that is not a 429. Raises `CallDeferred` (see `acquire`) and whatever
        `call` raises."""
        while True:
            number = self.acquire(max_wait)
            try:
                response = call()
            except BaseException:
                self.abandon(number)
                raise
            self.observe(number, response.status_code, response.headers, self._clock())
            if response.status_code != 429:
                return response
            response.close()


_SHARED: dict[str, CarrierPace] = {}
_SHARED_LOCK = threading.Lock()


def shared_pace(base_url: str, api_key: str) -> CarrierPace:
    """This process's pace for one carrier account: what a run learned (a limit, a pause
    until Retry-After) holds for the next runs of the process too."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:16]
    key = f"{base_url.rstrip('/')} {digest}"
    with _SHARED_LOCK:
        return _SHARED.setdefault(key, CarrierPace())
