"""What the carriers' fakes share: a scripted answer, a loopback server, and a handler that
sends answers and logs nothing.

Each fake (`fake_telnyx`, `fake_twilio`, `fake_bandwidth`) keeps its carrier's resources and
answers; this module only serves them.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class ScriptedFake:
    """A carrier's fake: scripted answers by key (each used once, in order), every request
    logged, and the URL it is served at while `running`."""

    script: dict[str, list[Reply]] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def scripted(self, key: str) -> Reply | None:
        """The next answer scripted for `key`, used up (None: none left)."""
        with self._lock:
            replies = self.script.get(key)
            return replies.pop(0) if replies else None

    def reset(self) -> None:
        """Forget the script and the log (a fake adds what else it forgets)."""
        with self._lock:
            self.script.clear()
            self.log.clear()


class FakeServer(ThreadingHTTPServer):
    """A loopback server whose handlers answer from `fake`."""

    fake: Any
    # Room for every call of a batch at once (the default backlog of 5 drops connections
    # past it, and the client's retry comes after its timeout).
    request_queue_size = 64


@contextmanager
def serving(fake: object, handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `fake` with `handler` on a free loopback port; yields the server's URL."""
    server = FakeServer(("127.0.0.1", 0), handler)
    server.fake = fake
    server.daemon_threads = True
    server.block_on_close = False  # a slow scripted reply must not hold up the test
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class FakeHandler(BaseHTTPRequestHandler):
    """Sends `Reply`s; logs nothing (the fakes keep their own log)."""

    # The Content-Type of an answer that names none (None: send none).
    default_content_type: ClassVar[str | None] = "application/json"

    def send_reply(self, reply: Reply, headers: Mapping[str, str] | None = None) -> None:
        """Send `reply` (with `headers` before its own); a 204 goes without a body."""
        payload = (reply.body or "").encode()
        empty = reply.status == 204
        try:
            self.send_response(reply.status)
            if not empty and self.default_content_type and "Content-Type" not in reply.headers:
                self.send_header("Content-Type", self.default_content_type)
            if not empty:
                self.send_header("Content-Length", str(len(payload)))
            for key, value in {**(headers or {}), **reply.headers}.items():
                self.send_header(key, value)
            self.end_headers()
            if not empty:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    def log_message(self, format: str, *args: Any) -> None:
        return


def basic_auth(user: str, password: str) -> str:
    """The Authorization header of HTTP basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class BasicAuthHandler(FakeHandler):
    """A carrier with HTTP basic authentication: each request is logged on the fake, checked
    against `authorization` (else `unauthorized`), then answered by `route` after the reply's
    delay."""

    authorization: ClassVar[str]
    unauthorized: ClassVar[Reply]

    def route(self, fake: Any, method: str, path: str, body: bytes) -> Reply:
        raise NotImplementedError

    def _answer(self, method: str) -> None:
        fake = self.server.fake  # type: ignore[attr-defined]
        path = self.path.split("?")[0]
        with fake._lock:
            fake.log.append((method, path))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Authorization") != self.authorization:
            self.send_reply(self.unauthorized)
            return
        reply = self.route(fake, method, path, body)
        time.sleep(reply.delay)
        self.send_reply(reply)
