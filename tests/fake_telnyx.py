"""A real HTTP server on loopback that answers like Telnyx's `/v2/phone_numbers` endpoints.

Its answers follow Telnyx's documentation (docs/runbook.md, "What each answer of Telnyx
means"): errors are `{"errors": [{"code", "title", "detail", "source", "meta"}]}` with
Telnyx's codes (`10005` not found, `10009` authentication failed, `10010` authorization
failed, `10035` resource locked); `DELETE /v2/phone_numbers/{id}` answers the phone-number
record (`status`, `deletion_lock_enabled`) of that id.

Besides the numbers themselves it holds what a number carries at Telnyx, each answered as
Telnyx's API reference documents it (docs/runbook.md, "Detach before release", cites them):

- a 10DLC campaign assignment per E.164 number: `GET` and `DELETE
  /v2/10dlc/phone_number_campaigns/{phoneNumber}` answer the assignment record itself (no
  `data` envelope), or Telnyx's error shape with a 404; a deleted one is `PENDING_UNASSIGNMENT`
  for `campaign_pending_reads` reads, then gone;
- voice settings per number id, with its `emergency` and `cnam_listing`: `GET` and `PATCH
  /v2/phone_numbers/{id}/voice` answer `{"data": {..., "record_type": "voice_settings"}}`;
- emergency is switched off by a background job, `POST
  /v2/phone_numbers/jobs/update_emergency_settings` (202, a `phone_numbers_job`), which the
  voice settings show as `deprovisioning` for `emergency_pending_reads` reads, then `disabled`.

Telnyx does not document refusing the deletion of a number that still carries any of them, so
this server does not refuse it either: it records what each number still carried when its
DELETE came (`carried_at_delete`) and the order of every call (`log`).
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from tests.fake_http import FakeHandler, FakeServer, Reply, serving

API_KEY = "KEY_test_0123456789abcdef"
# Where Telnyx's error `meta.url` points: its page per code.
ERRORS_URL = "https://developers.telnyx.com/api/errors/"


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


NUMBERS = "/v2/phone_numbers/"
CAMPAIGNS = "/v2/10dlc/phone_number_campaigns/"
EMERGENCY_JOB = "/v2/phone_numbers/jobs/update_emergency_settings"
DELETE_JOB = "/v2/phone_numbers/jobs/delete_phone_numbers"
JOBS = "/v2/phone_numbers/jobs/"


@dataclass
class Carried:
    """What one number carries at Telnyx besides itself."""

    phone_number: str
    emergency_enabled: bool = False
    emergency_address_id: str | None = None
    emergency_status: str = "disabled"
    cnam_enabled: bool = False
    cnam_details: str | None = None

    def voice(self, number_id: str) -> dict[str, Any]:
        """The number's voice settings as Telnyx's API reference shows them."""
        return {
            "id": number_id,
            "record_type": "voice_settings",
            "connection_id": "1d0e6cb8-8668-462e-94c6-49ae0f0ed48b",
            "emergency": {
                "emergency_enabled": self.emergency_enabled,
                "emergency_address_id": self.emergency_address_id,
                "emergency_status": self.emergency_status,
            },
            "cnam_listing": {
                "cnam_listing_enabled": self.cnam_enabled,
                "cnam_listing_details": self.cnam_details,
            },
            "usage_payment_method": "pay-per-minute",
        }


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


class _Server(FakeServer):
    fake: FakeTelnyx


class _Handler(FakeHandler):
    """Answers as Telnyx does, from the script of the server's FakeTelnyx."""

    server: _Server

    def _authorized(self) -> bool:
        """Whether the request may be answered: the right key, within the rate limit."""
        self._limit_headers: dict[str, str] = {}
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            self.server.fake.unauthorized += 1
            self._send(UNAUTHORIZED)
            return False
        limit = self.server.fake.rate_limit
        if limit is None:
            return True
        ok, self._limit_headers = limit.take()
        if not ok:
            self._send(Reply(429, TOO_MANY_REQUESTS))
        return ok

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            return None

    def do_GET(self) -> None:
        fake = self.server.fake
        fake.logged("GET", self.path)
        if not self._authorized():
            return
        path, prefix = self.path.split("?")[0], NUMBERS
        if path.startswith(JOBS):
            self._send(fake.scripted_job("GET job") or fake.read_job(path[len(JOBS) :]))
            return
        if path.startswith(CAMPAIGNS):
            key = unquote(path[len(CAMPAIGNS) :])
            self._send(fake.detach_reply("campaign_get", key) or fake.campaign(path, delete=False))
            return
        if path.startswith(prefix) and path.endswith("/voice"):
            number_id = path[len(prefix) : -6]
            self._send(fake.detach_reply("voice_get", number_id) or fake.voice(number_id))
            return
        if path.startswith(prefix):  # retrieve one number: its record while the account holds it
            number_id = path[len(prefix) :]
            self._send(record(number_id) if fake.holds(number_id) else NOT_FOUND)
            return
        if path != "/v2/phone_numbers":
            self._send(NOT_FOUND)
            return
        self.server.fake.checks += 1
        self._send(Reply(200, json.dumps({"data": [], "meta": {"total_results": 0}})))

    def do_POST(self) -> None:
        fake = self.server.fake
        body = self._body()
        numbers = body.get("phone_numbers") if isinstance(body, dict) else None
        key = str(numbers[0]) if isinstance(numbers, list) and numbers else ""
        fake.logged("POST", self.path, about=key)
        if not self._authorized():
            return
        if self.path == DELETE_JOB:
            reply = fake.scripted_job("POST job") or fake.delete_job(body)
            time.sleep(reply.delay)
            self._send(reply)
            return
        if self.path != EMERGENCY_JOB:
            self._send(NOT_FOUND)
            return
        self._send(fake.detach_reply("emergency_job", key) or fake.emergency_job(body))

    def do_PATCH(self) -> None:
        fake = self.server.fake
        fake.logged("PATCH", self.path)
        if not self._authorized():
            return
        body = self._body()
        if not (self.path.startswith(NUMBERS) and self.path.endswith("/voice")):
            self._send(NOT_FOUND)
            return
        number_id = self.path[len(NUMBERS) : -6]
        self._send(fake.detach_reply("voice_patch", number_id) or fake.patch_voice(number_id, body))

    def do_DELETE(self) -> None:
        self.server.fake.logged("DELETE", self.path)
        if not self._authorized():
            return
        fake = self.server.fake
        if self.path.startswith(CAMPAIGNS):
            reply = fake.detach_reply("campaign_delete", unquote(self.path[len(CAMPAIGNS) :]))
            self._send(reply or fake.campaign(self.path, delete=True))
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
            self.server.fake.note_delete(number_id)
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
        self.send_reply(reply, getattr(self, "_limit_headers", {}))


GATE_TIMEOUT = 30.0


def pending_job(job_id: str, kind: str, numbers: list[Any]) -> dict[str, Any]:
    """A phone-numbers job of `kind` as Telnyx answers it when created: pending, every
    number's operation pending."""
    return {
        "id": job_id,
        "record_type": "phone_numbers_job",
        "status": "pending",
        "type": kind,
        "phone_numbers": [{"id": str(n)} for n in numbers],
        "pending_operations": [{"id": str(n)} for n in numbers],
        "successful_operations": [],
        "failed_operations": [],
    }


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
        # Optional: a rate limit on every request with the right key (None: unlimited).
        self.rate_limit: RateLimit | None = None
        self._lock = threading.Lock()
        self.url = ""
        # What numbers carry at Telnyx (by number id), and their 10DLC campaign assignments
        # (by E.164 number, as Telnyx keys them).
        self.carried: dict[str, Carried] = {}
        self.campaigns: dict[str, dict[str, Any]] = {}
        # Scripted answers of the detach endpoints, by kind: campaign_get, campaign_delete,
        # voice_get, voice_patch, emergency_job, for every number, or for one as
        # "<kind> <E.164 number or id>" (consumed in order, the last one repeats).
        self.detach_script: dict[str, list[Reply]] = {}
        # Reads of the voice settings that still show `deprovisioning` after an emergency job,
        # and of an assignment that still show it `PENDING_UNASSIGNMENT` after its DELETE.
        self.emergency_pending_reads = 0
        self.campaign_pending_reads = 0
        self._unassigning: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        # Deletion jobs: errors a job fails numbers with (code, detail), reads that still show
        # a job pending, and scripted answers ("POST job", "GET job").
        self.job_failures: dict[str, tuple[str, str]] = {}
        self.job_pending_reads = 0
        self.job_script: dict[str, list[Reply]] = {}
        self._job_reads: dict[str, int] = {}
        # Every request, in order: (method, path, the number id a job's body names or "").
        self.log: list[tuple[str, str, str]] = []
        # For each number DELETE: what the number still carried at Telnyx at that moment.
        self.carried_at_delete: dict[str, set[str]] = {}

    def logged(self, method: str, path: str, *, about: str = "") -> None:
        with self._lock:
            self.log.append((method, path, about))

    def attach(
        self,
        number_id: str,
        phone_number: str,
        *,
        campaign: str | None = None,
        emergency: bool = False,
        cnam: str | None = None,
    ) -> None:
        """Give a number what a customer may have set up at Telnyx: a 10DLC campaign
        assignment, emergency services with an address, a CNAM listing."""
        self.carried[number_id] = Carried(
            phone_number,
            emergency_enabled=emergency,
            emergency_address_id="1315261609962112019" if emergency else None,
            emergency_status="active" if emergency else "disabled",
            cnam_enabled=cnam is not None,
            cnam_details=cnam,
        )
        if campaign is not None:
            self.campaigns[phone_number] = {
                "phoneNumber": phone_number,
                "campaignId": campaign,
                "brandId": "7ba705b7-22af-493f-addc-ac04b7ca071c",
                "tcrCampaignId": "CCAMPA1",
                "assignmentStatus": "ASSIGNED",
                "createdAt": "2025-03-08T17:57:48.801186",
                "updatedAt": "2025-03-08T17:57:48.801186",
            }

    def still_carries(self, number_id: str) -> set[str]:
        """What the number carries at Telnyx now: campaign, emergency, cnam."""
        with self._lock:
            carried = self.carried.get(number_id)
            if carried is None:
                return set()
            kinds = set()
            if carried.phone_number in self.campaigns:
                kinds.add("campaign")
            if carried.emergency_enabled or carried.emergency_status != "disabled":
                kinds.add("emergency")
            if carried.cnam_enabled:
                kinds.add("cnam")
            return kinds

    def note_delete(self, number_id: str) -> None:
        self.carried_at_delete[number_id] = self.still_carries(number_id)

    def detach_reply(self, kind: str, key: str) -> Reply | None:
        """The scripted answer for this kind of call about this number (its E.164 number for
        the campaign, else its id), or for every number; None: answer as Telnyx does."""
        with self._lock:
            replies = self.detach_script.get(f"{kind} {key}") or self.detach_script.get(kind)
            if not replies:
                return None
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def campaign(self, path: str, *, delete: bool) -> Reply:
        """`GET`/`DELETE /v2/10dlc/phone_number_campaigns/{phoneNumber}`: the assignment record,
        or Telnyx's 404 when the number has none. A DELETE answers the record as
        `PENDING_UNASSIGNMENT`; GETs still show it so for `campaign_pending_reads` reads."""
        phone_number = unquote(path.split("?")[0][len(CAMPAIGNS) :])
        with self._lock:
            assignment = self.campaigns.get(phone_number)
            if assignment is None:
                return NOT_FOUND
            if delete:
                assignment = {**assignment, "assignmentStatus": "PENDING_UNASSIGNMENT"}
                if self.campaign_pending_reads:
                    self.campaigns[phone_number] = assignment
                    self._unassigning[phone_number] = self.campaign_pending_reads
                else:
                    del self.campaigns[phone_number]
            elif phone_number in self._unassigning:
                left = self._unassigning[phone_number]
                if left <= 0:
                    del self.campaigns[phone_number], self._unassigning[phone_number]
                    return NOT_FOUND
                self._unassigning[phone_number] = left - 1
        return Reply(200, json.dumps(assignment))

    def voice(self, number_id: str) -> Reply:
        """`GET /v2/phone_numbers/{id}/voice`: the number's voice settings, or Telnyx's 404."""
        if not self.holds(number_id):
            return NOT_FOUND
        with self._lock:
            carried = self.carried.setdefault(number_id, Carried(""))
            if carried.emergency_status == "deprovisioning":
                left = self._pending.get(number_id, 0)
                if left <= 0:
                    carried.emergency_status = "disabled"
                self._pending[number_id] = left - 1
            return Reply(200, json.dumps({"data": carried.voice(number_id)}))

    def patch_voice(self, number_id: str, body: Any) -> Reply:
        """`PATCH /v2/phone_numbers/{id}/voice`: only what the request names changes."""
        if not self.holds(number_id):
            return NOT_FOUND
        listing = body.get("cnam_listing") if isinstance(body, dict) else None
        if body and "emergency" in body:  # not an updatable field of the voice settings
            return telnyx_error(422, "10015", "Bad Request", "emergency is not updatable here")
        with self._lock:
            carried = self.carried.setdefault(number_id, Carried(""))
            if isinstance(listing, dict) and "cnam_listing_enabled" in listing:
                carried.cnam_enabled = bool(listing["cnam_listing_enabled"])
            return Reply(200, json.dumps({"data": carried.voice(number_id)}))

    def emergency_job(self, body: Any) -> Reply:
        """`POST /v2/phone_numbers/jobs/update_emergency_settings`, validated as documented:
        `phone_numbers` and `emergency_enabled` required; `emergency_address_id` null or absent
        when disabling."""
        numbers = body.get("phone_numbers") if isinstance(body, dict) else None
        enabled = body.get("emergency_enabled") if isinstance(body, dict) else None
        if not isinstance(numbers, list) or not numbers or not isinstance(enabled, bool):
            return telnyx_error(422, "10015", "Bad Request", "phone_numbers must be present")
        if enabled or body.get("emergency_address_id") is not None:
            return telnyx_error(422, "10015", "Bad Request", "only disabling is scripted here")
        job_id = str(uuid.uuid4())
        with self._lock:
            for number_id in numbers:
                carried = self.carried.setdefault(str(number_id), Carried(""))
                carried.emergency_enabled = False
                carried.emergency_address_id = None
                carried.emergency_status = (
                    "deprovisioning" if self.emergency_pending_reads else "disabled"
                )
                self._pending[str(number_id)] = self.emergency_pending_reads
            job = pending_job(job_id, "update_emergency_settings", numbers)
            self.jobs[job_id] = job
        return Reply(202, json.dumps({"data": job}))

    def scripted_job(self, key: str) -> Reply | None:
        """A scripted answer to a deletion job's POST or GET ("POST job", "GET job"), used
        once."""
        with self._lock:
            replies = self.job_script.get(key)
            return replies.pop(0) if replies else None

    def delete_job(self, body: Any) -> Reply:
        """`POST /v2/phone_numbers/jobs/delete_phone_numbers`: 202 with a pending job; its
        numbers are carried out at the job's first read after `job_pending_reads` reads."""
        numbers = body.get("phone_numbers") if isinstance(body, dict) else None
        if not isinstance(numbers, list) or not numbers or len(numbers) > 1000:
            return telnyx_error(422, "10015", "Bad Request", "phone_numbers: 1 to 1000 numbers")
        job_id = str(uuid.uuid4())
        job = pending_job(job_id, "delete_phone_numbers", numbers)
        with self._lock:
            self.jobs[job_id] = job
            self._job_reads[job_id] = 0
        return Reply(202, json.dumps({"data": job}))

    def read_job(self, job_id: str) -> Reply:
        """`GET /v2/phone_numbers/jobs/{id}`: the job, its operations settled once carried out."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return NOT_FOUND
            self._job_reads[job_id] = reads = self._job_reads.get(job_id, 0) + 1
            pending = job["type"] == "delete_phone_numbers" and job["pending_operations"]
            if pending and reads > self.job_pending_reads:
                self._carry_out(job)
            return Reply(200, json.dumps({"data": job}))

    def _carry_out(self, job: dict[str, Any]) -> None:
        """Each pending number deleted, failed with its scripted error, or not found."""
        for operation in job["pending_operations"]:
            number_id = operation["id"]
            held = (self.held is None or number_id in self.held) and number_id not in self.released
            error = self.job_failures.get(number_id)
            if error is None and held:
                self.released.add(number_id)
                job["successful_operations"].append({"id": number_id})
                continue
            code, detail = error or ("10005", "Resource not found")
            job["failed_operations"].append(
                {"id": number_id, "errors": [{"code": code, "title": detail, "detail": detail}]}
            )
        job["pending_operations"] = []
        job["status"] = "completed"

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
        with serving(self, _Handler) as self.url:
            try:
                yield self
            finally:
                for gate in self.gates.values():
                    gate.open()


class StaticServer:
    """A web server that gives every request the same answer (a proxy, a wrong host)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.url = ""
        self._stack = ExitStack()

    def __enter__(self) -> StaticServer:
        self.url = self._stack.enter_context(serving(self, _StaticHandler))
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()


class _StaticHandler(FakeHandler):
    default_content_type = None

    def _answer(self) -> None:
        self.send_reply(self.server.fake.reply)  # type: ignore[attr-defined]

    do_GET = do_DELETE = do_POST = _answer
