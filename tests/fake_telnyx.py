"""A real HTTP server on loopback that answers like Telnyx's `/v2/phone_numbers` endpoints."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


class _Server(ThreadingHTTPServer):
    fake: FakeTelnyx


class _Handler(BaseHTTPRequestHandler):
    """Answers as Telnyx does, from the script of the server's FakeTelnyx."""

    server: _Server

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {API_KEY}":
            return True
        self.server.fake.unauthorized += 1
        self._send(telnyx_error(401, "10009", "Authentication failed"))
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
            for key, value in reply.headers.items():
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
