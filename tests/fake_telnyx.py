"""A real HTTP server on loopback that answers like Telnyx's `/v2/phone_numbers` endpoints."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

API_KEY = "KEY_test_0123456789abcdef"


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def telnyx_error(status: int, code: str, title: str = "Error", detail: str = "") -> Reply:
    body = json.dumps({"errors": [{"code": code, "title": title, "detail": detail or title}]})
    return Reply(status, body)


def record(number_id: str) -> Reply:
    """Telnyx's 200 answer to a DELETE: the phone-number record of that id."""
    data = {"id": number_id, "record_type": "phone_number", "status": "deleted"}
    return Reply(200, json.dumps({"data": data}))


# The default answer: the record of whichever id was asked for.
OK = Reply(200, None)
NOT_FOUND = telnyx_error(404, "10005", "Resource not found")
# Telnyx's answer past its rate limit (developers.telnyx.com, "Rate limiting"): status 429, code
# 10011.
TOO_MANY_REQUESTS = json.dumps(
    {
        "errors": [
            {
                "code": "10011",
                "title": "Too many requests",
                "detail": "You have exceeded the maximum number of allowed requests.",
            }
        ]
    }
)


@dataclass
class RateLimit:
    """At most `rate` requests per second, as Telnyx enforces its limits: every answer says
    `x-ratelimit-limit` (requests per window), `x-ratelimit-remaining` (left in this window)
    and `x-ratelimit-reset` (seconds until the limit resets); a request past the limit is
    answered 429 with code 10011 and `Retry-After`, and is not counted.

    `kind="window"`: fixed windows of `window` seconds, `rate * window` requests each.
    `kind="bucket"`: a token bucket of `rate * window` tokens refilled at `rate` per second;
    `x-ratelimit-reset` is the time until it is full again.
    Telnyx's documentation says the reset is "time in seconds": whole seconds (rounded up)
    unless `fractional`, then milliseconds (rounded up). `Retry-After` is always whole
    seconds (HTTP's delta-seconds), rounded up.
    """

    rate: float
    window: float = 1.0
    kind: Literal["window", "bucket"] = "window"
    fractional: bool = False
    # The server's clock (a test's simulation passes its own).
    clock: Callable[[], float] = time.monotonic
    # Counters: requests let through, requests answered 429.
    allowed: int = 0
    limited: int = 0
    _start: float = 0.0
    _index: int = -1  # the current fixed window
    _used: int = 0  # requests in it
    _tokens: float | None = None
    _filled_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # Windows follow the server's clock from its start, not the client's first call.
        self._start = self._filled_at = self.clock()

    @property
    def limit(self) -> int:
        return max(1, round(self.rate * self.window))

    def take(self) -> tuple[bool, dict[str, str]]:
        """Whether a request arriving now may go on, and the headers of its answer."""
        with self._lock:
            now = self.clock()
            if self.kind == "window":
                ok, remaining, reset, wait = self._window(now)
            else:
                ok, remaining, reset, wait = self._bucket(now)
            if ok:
                self.allowed += 1
            else:
                self.limited += 1
        headers = {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(remaining),
            "x-ratelimit-reset": (
                f"{math.ceil(reset * 1000) / 1000:.3f}"
                if self.fractional
                else str(math.ceil(reset))
            ),
        }
        if not ok:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return ok, headers

    def _window(self, now: float) -> tuple[bool, int, float, float]:
        index = int((now - self._start) // self.window)
        if index != self._index:
            self._index, self._used = index, 0
        reset = self._start + (index + 1) * self.window - now
        ok = self._used < self.limit
        if ok:
            self._used += 1
        return ok, self.limit - self._used, reset, reset

    def _bucket(self, now: float) -> tuple[bool, int, float, float]:
        if self._tokens is None:
            self._tokens = float(self.limit)
        self._tokens = min(self.limit, self._tokens + (now - self._filled_at) * self.rate)
        self._filled_at = now
        ok = self._tokens >= 1 - 1e-9  # a token refilled to the announced instant counts
        if ok:
            self._tokens = max(self._tokens - 1, 0.0)
        reset = (self.limit - self._tokens) / self.rate
        return ok, int(self._tokens + 1e-9), reset, (1 - self._tokens) / self.rate


class _Server(ThreadingHTTPServer):
    fake: FakeTelnyx


class _Handler(BaseHTTPRequestHandler):
    """Answers as Telnyx does, from the script of the server's FakeTelnyx."""

    server: _Server

    def _authorized(self) -> bool:
        """Whether the request may be answered: the right key, within the rate limit."""
        self._limit_headers: dict[str, str] = {}
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            self.server.fake.unauthorized += 1
            self._send(telnyx_error(401, "10009", "Authentication failed"))
            return False
        limit = self.server.fake.rate_limit
        if limit is None:
            return True
        ok, self._limit_headers = limit.take()
        if not ok:
            self._send(Reply(429, TOO_MANY_REQUESTS))
        return ok

    def do_GET(self) -> None:
        if not self._authorized():
            return
        path, prefix = self.path.split("?")[0], "/v2/phone_numbers/"
        if path.startswith(prefix):  # retrieve one number: its record while the account holds it
            number_id = path[len(prefix) :]
            self._send(record(number_id) if self.server.fake.holds(number_id) else NOT_FOUND)
            return
        if path != "/v2/phone_numbers":
            self._send(NOT_FOUND)
            return
        self.server.fake.checks += 1
        self._send(Reply(200, json.dumps({"data": [], "meta": {"total_results": 0}})))

    def do_DELETE(self) -> None:
        if not self._authorized():
            return
        self.server.fake.paths.append(self.path)
        prefix = "/v2/phone_numbers/"
        if not self.path.startswith(prefix):
            self._send(NOT_FOUND)
            return
        with self.server.fake._lock:
            self.server.fake.in_flight += 1
            self.server.fake.max_in_flight = max(
                self.server.fake.max_in_flight, self.server.fake.in_flight
            )
        try:
            number_id = self.path[len(prefix) :]
            reply = self.server.fake.answer(number_id)
            time.sleep(reply.delay)
            if reply.status in (200, 404):
                with self.server.fake._lock:
                    self.server.fake.released.add(number_id)
            self._send(reply)
        finally:
            with self.server.fake._lock:
                self.server.fake.in_flight -= 1

    def _send(self, reply: Reply) -> None:
        payload = (reply.body if reply.body is not None else "").encode()
        try:
            self.send_response(reply.status)
            if "Content-Type" not in reply.headers:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in {**getattr(self, "_limit_headers", {}), **reply.headers}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    def log_message(self, format: str, *args: object) -> None:
        return


class FakeTelnyx:
    """Scripted answers per number id (consumed in order, the last one repeats); records calls."""

    def __init__(self) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.default: Reply = OK
        self.calls: defaultdict[str, int] = defaultdict(int)
        self.released: set[str] = set()  # ids answered 200 or 404: gone upstream
        self.unauthorized = 0
        self.checks = 0  # read-only GET /v2/phone_numbers calls (the run's pre-flight check)
        self.paths: list[str] = []  # every DELETE's path, as sent
        # The ids the key's account holds (None: every id not released through this server).
        self.held: set[str] | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        # Optional: a rate limit on every request with the right key (None: unlimited).
        self.rate_limit: RateLimit | None = None
        self._lock = threading.Lock()
        self.url = ""

    def answer(self, number_id: str) -> Reply:
        with self._lock:
            self.calls[number_id] += 1
            replies = self.script.get(number_id)
            reply = self.default
            if replies:
                reply = replies.pop(0) if len(replies) > 1 else replies[0]
            if reply.status == 200 and reply.body is None:  # the record of the id asked for
                return Reply(200, record(number_id).body, reply.headers, reply.delay)
            return reply

    def holds(self, number_id: str) -> bool:
        with self._lock:
            held = self.held is None or number_id in self.held
            return held and number_id not in self.released

    @contextmanager
    def running(self) -> Iterator[FakeTelnyx]:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        server.daemon_threads = True
        server.block_on_close = False  # a slow scripted reply must not hold up the test
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


class StaticServer:
    """A web server that gives every request the same answer (a proxy, a wrong host)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.url = ""

    def __enter__(self) -> StaticServer:
        reply = self.reply

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                payload = (reply.body or "").encode()
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
