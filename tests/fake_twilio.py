"""A real HTTP server on loopback that answers like Twilio's IncomingPhoneNumbers resource.

Its answers follow Twilio's API reference (docs/runbook.md, "Twilio"):
- HTTP basic authentication with the account's SID and auth token; anything else is answered
  401 with Twilio's error shape `{"code": 20003, "message": "Authenticate", "more_info",
  "status": 401}`;
- `GET /2010-04-01/Accounts/{AccountSid}.json`: the account's record;
- `GET .../IncomingPhoneNumbers/{Sid}.json`: the number's record while the account holds it,
  else 404 with code 20404 ("The requested resource ... was not found");
- `DELETE .../IncomingPhoneNumbers/{Sid}.json`: `204 No Content`, no body; 404 (20404) for a
  number the account does not hold; a number with an emergency address is refused until the
  address is removed (a 400 in Twilio's error shape). No documented code was found for that
  refusal (Twilio's error list and IncomingPhoneNumber reference searched, 2026-12-05): the
  code used here, EMERGENCY_ADDRESS_CODE, remains this fake's assumption, and the adapter
  does not depend on it; what is documented, and what the adapter reads after a refusal, is
  the record's `emergency_address_status` (`registered` while the address is on it);
- too many requests: 429 with code 20429 ("safe to retry after backing off") and Retry-After.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.fake_http import BasicAuthHandler, Reply, ScriptedFake, basic_auth, serving

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio_token_0123456789abcdef"
ERRORS = "https://www.twilio.com/docs/errors/"
EMERGENCY_ADDRESS_CODE = 21631
NUMBERS = f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers/"


def sid(i: int) -> str:
    """A number SID of Twilio's pattern: PN and 32 hex digits."""
    return f"PN{i:032x}"


def twilio_error(status: int, code: int, message: str) -> Reply:
    body = {"code": code, "message": message, "more_info": f"{ERRORS}{code}", "status": status}
    return Reply(status, json.dumps(body))


UNAUTHORIZED = twilio_error(401, 20003, "Authenticate")
TOO_MANY_REQUESTS = twilio_error(429, 20429, "Too Many Requests")


def not_found(path: str) -> Reply:
    return twilio_error(404, 20404, f"The requested resource {path} was not found")


def emergency_refusal() -> Reply:
    return twilio_error(
        400,
        EMERGENCY_ADDRESS_CODE,
        "Phone number has an emergency address: remove it before releasing the number.",
    )


@dataclass
class FakeTwilio(ScriptedFake):
    """Numbers the account holds; scripted DELETE answers per SID (each used once, in order,
    then the number is answered for as it stands); every request logged."""

    held: set[str] = field(default_factory=set)
    emergency: set[str] = field(default_factory=set)  # held numbers with an emergency address
    calls: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.held.clear()
            self.emergency.clear()
            self.calls.clear()

    def delete(self, path: str, number: str) -> Reply:
        reply = self.scripted(number)
        if reply is not None:
            return reply
        with self._lock:
            if number not in self.held:
                return not_found(path)
            if number in self.emergency:
                return emergency_refusal()
            self.held.discard(number)
        return Reply(204, "")

    def read(self, path: str, number: str) -> Reply:
        with self._lock:
            if number not in self.held:
                return not_found(path)
        record = {
            "sid": number,
            "account_sid": ACCOUNT_SID,
            "phone_number": "+14155550100",
            "emergency_address_status": (
                "registered" if number in self.emergency else "unregistered"
            ),
            "status": "in-use",
        }
        return Reply(200, json.dumps(record))

    @contextmanager
    def running(self) -> Iterator[FakeTwilio]:
        with serving(self, _Handler) as self.url:
            yield self


class _Handler(BasicAuthHandler):
    authorization = basic_auth(ACCOUNT_SID, AUTH_TOKEN)
    unauthorized = UNAUTHORIZED

    def route(self, fake: FakeTwilio, method: str, path: str, body: bytes) -> Reply:
        if method == "GET" and path == f"/2010-04-01/Accounts/{ACCOUNT_SID}.json":
            return Reply(200, json.dumps({"sid": ACCOUNT_SID, "status": "active"}))
        if not (path.startswith(NUMBERS) and path.endswith(".json")):
            return not_found(path)
        number = path[len(NUMBERS) : -len(".json")]
        with fake._lock:
            fake.calls[f"{method} {number}"] += 1
        return fake.delete(path, number) if method == "DELETE" else fake.read(path, number)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_DELETE(self) -> None:
        self._answer("DELETE")
