"""A real HTTP server on loopback that answers like Telnyx's `/v2/phone_numbers` endpoints.

Its answers follow Telnyx's documentation (docs/runbook.md, "What each answer of Telnyx
means"): errors are `{"errors": [{"code", "title", "detail", "source", "meta"}]}` with
Telnyx's codes (`10005` not found, `10009` authentication failed, `10010` authorization
failed, `10035` resource locked); `DELETE /v2/phone_numbers/{id}` answers the phone-number
record (`status`, `deletion_lock_enabled`) of that id.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "KEY_test_0123456789abcdef"
# Where Telnyx's error `meta.url` points: its page per code.
ERRORS_URL = "https://developers.telnyx.com/api/errors/"


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def telnyx_error(
    status: int,
    code: str,
    title: str = "Error",
    detail: str = "",
    *,
    pointer: str = "/",
    retryable: bool | None = None,
) -> Reply:
    """Telnyx's error answer: one error with its code, title, detail, source and meta."""
    meta: dict[str, Any] = {"url": f"{ERRORS_URL}{code}"}
    if retryable is not None:
        meta["retryable"] = retryable
    error = {
        "code": code,
        "title": title,
        "detail": detail or title,
        "source": {"pointer": pointer},
        "meta": meta,
    }
    return Reply(status, json.dumps({"errors": [error]}))


def record(number_id: str, *, status: str = "deleted", deletion_lock: bool = False) -> Reply:
    """Telnyx's 200 answer to a DELETE: the phone-number record of that id (Telnyx documents
    `status` "deleted" for a number it released; `deletion_lock_enabled` false)."""
    data = {
        "id": number_id,
        "record_type": "phone_number",
        "phone_number": "+19705555098",
        "status": status,
        "deletion_lock_enabled": deletion_lock,
    }
    return Reply(200, json.dumps({"data": data}))


# The default answer: the record of whichever id was asked for.
OK = Reply(200, None)
NOT_FOUND = telnyx_error(404, "10005", "Resource not found")
UNAUTHORIZED = telnyx_error(
    401,
    "10009",
    "Authentication failed",
    "The required authentication headers were either invalid or not included in the request.",
)
FORBIDDEN = telnyx_error(
    403,
    "10010",
    "Authorization failed",
    "You do not have permission to perform the requested action on the specified resource "
    "or resources.",
)
# Telnyx locked this number administratively: "Contact Telnyx support" (its page for 10035).
LOCKED = telnyx_error(
    403, "10035", "Resource locked", "The resource has been locked. Contact Telnyx support."
)


def port_out_refusal(*, retryable: bool | None = None) -> Reply:
    """A 422 for a number with a port-out in progress (retryable as Telnyx's meta says)."""
    return telnyx_error(
        422,
        "10015",
        "Bad Request",
        "The phone number has a pending port-out order and cannot be deleted.",
        pointer="/id",
        retryable=retryable,
    )


def deletion_locked(number_id: str) -> Reply:
    """A record of the id with its deletion lock on: the number was not deleted."""
    return record(number_id, status="active", deletion_lock=True)


def port_out_pending(number_id: str) -> Reply:
    """A record of the id whose status is `port-out-pending`: not deleted, leaving by port."""
    return record(number_id, status="port-out-pending")


class _Server(ThreadingHTTPServer):
    fake: FakeTelnyx
    # Room for every call of a batch at once (the default backlog of 5 drops connections
    # past it, and the client's retry comes after its timeout).
    request_queue_size = 64


class _Handler(BaseHTTPRequestHandler):
    """Answers as Telnyx does, from the script of the server's FakeTelnyx."""

    server: _Server

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {API_KEY}":
            return True
        self.server.fake.unauthorized += 1
        self._send(UNAUTHORIZED)
        return False

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
            gate = self.server.fake.gates.get(number_id)
            if gate is not None:  # a test holds this call until it has done its part
                gate.arrived.set()
                gate.opened.wait(GATE_TIMEOUT)
            reply = self.server.fake.answer(number_id)
            time.sleep(reply.delay)
            if releases(reply, number_id):
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
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    def log_message(self, format: str, *args: object) -> None:
        return


GATE_TIMEOUT = 30.0


def releases(reply: Reply, number_id: str) -> bool:
    """Whether Telnyx gave the number up with this answer: its 404, or the record of that id
    in status "deleted" without a deletion lock."""
    if reply.status == 404:
        return True
    if reply.status != 200:
        return False
    try:
        data = json.loads(reply.body or "").get("data")
    except (ValueError, AttributeError):
        return False
    return (
        isinstance(data, dict)
        and str(data.get("id")) == number_id
        and data.get("status") == "deleted"
        and not data.get("deletion_lock_enabled")
    )


@dataclass
class Gate:
    """Holds one DELETE: `arrived` is set once the call reached the server, which answers only
    after `open()`."""

    arrived: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)

    def wait_arrived(self, timeout: float = 10.0) -> None:
        assert self.arrived.wait(timeout), "the call never reached the fake carrier"

    def open(self) -> None:
        self.opened.set()


class FakeTelnyx:
    """Scripted answers per number id (consumed in order, the last one repeats); records calls."""

    def __init__(self) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.default: Reply = OK
        self.calls: defaultdict[str, int] = defaultdict(int)
        self.released: set[str] = set()  # ids answered "deleted" or 404: gone upstream
        self.unauthorized = 0
        self.checks = 0  # read-only GET /v2/phone_numbers calls (the run's pre-flight check)
        self.paths: list[str] = []  # every DELETE's path, as sent
        # The ids the key's account holds (None: every id not released through this server).
        self.held: set[str] | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.gates: dict[str, Gate] = {}
        self._lock = threading.Lock()
        self.url = ""

    def block(self, number_id: str) -> Gate:
        """Hold every DELETE of this id until the gate is opened (opened when the server stops)."""
        gate = self.gates[number_id] = Gate()
        return gate

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
            for gate in self.gates.values():
                gate.open()
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
