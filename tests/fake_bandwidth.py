"""A real HTTP server on loopback that answers like Bandwidth's Dashboard (Numbers) API for
disconnect orders, as its reference documents them (docs/runbook.md, "Bandwidth"):

- HTTP basic authentication with an API user; anything else is answered 401;
- `GET /accounts/{accountId}`: the account (`AccountResponse/Account/AccountId`);
- `GET /accounts/{accountId}/inserviceNumbers/{tn}`: 200 while the account holds the number,
  else 404;
- `POST /accounts/{accountId}/disconnects` with a `DisconnectTelephoneNumberOrder`: `201
  Created`, a Location header and `DisconnectTelephoneNumberOrderResponse` with
  `orderRequest/id` and `OrderStatus` RECEIVED;
- `GET /accounts/{accountId}/disconnects/{orderId}`: the order, RECEIVED for
  `pending_reads` reads, then COMPLETE (every number disconnected), PARTIAL (some numbers in
  the `ErrorList`) or FAILED (none disconnected); a number the account does not hold is
  error 5006 ("could not be disconnected since it is not associated with your account"), as
  in Bandwidth's own SDK's fixture of a FAILED disconnect order (Bandwidth/java-bandwidth-iris,
  IrisClientTestUtils), or `NOT_BELONGING` (5076, "Number does not belong to this account.")
  when a test sets `not_belonging`; a number refused for itself (`refuse`) carries its own
  error, e.g. `DISCONNECT_ERROR` (5006 with Bandwidth's own generic description, "TelephoneNumber
  Disconnect Error"). The codes and texts are those of the Dashboard API's documented
  `OrderErrorType` table (Bandwidth/api-docs, site/docs/numbers/errors.mdx);
- too many requests: 429 with Retry-After.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from xml.etree import ElementTree

from tests.fake_http import BasicAuthHandler, Reply, ScriptedFake, basic_auth, serving

ACCOUNT_ID = "9900001"
USERNAME = "bw_api_user"
PASSWORD = "bw_password_0123456789"
ACCOUNT = f"/accounts/{ACCOUNT_ID}"
XML = {"Content-Type": "application/xml; charset=utf-8"}
HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'


def tn(i: int) -> str:
    """A 10-digit telephone number as Bandwidth keys it."""
    return f"919555{i:04d}"


def xml_reply(status: int, body: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, HEAD + body, {**XML, **(headers or {})})


def response_status(status: int, code: str, description: str) -> Reply:
    """Bandwidth's error shape for a request it refused as a whole."""
    return xml_reply(
        status,
        f"<ErrorResponse><ResponseStatus><ErrorCode>{code}</ErrorCode>"
        f"<Description>{description}</Description></ResponseStatus></ErrorResponse>",
    )


UNAUTHORIZED = Reply(401, "", {})
# Per-number errors of a settled disconnect order, from the documented OrderErrorType table.
DISCONNECT_ERROR = ("5006", "TelephoneNumber Disconnect Error")
NOT_BELONGING = ("5076", "Number does not belong to this account.")
TOO_MANY_REQUESTS = response_status(429, "429", "Too many requests")


@dataclass
class Order:
    numbers: list[str]
    reads: int = 0
    # Per number: an error (code, description) the order keeps it with; and the numbers it
    # disconnected, once carried out.
    errors: dict[str, tuple[str, str]] = field(default_factory=dict)
    done: list[str] | None = None


@dataclass
class FakeBandwidth(ScriptedFake):
    """Numbers the account holds and its disconnect orders; scripted answers by request
    ("POST", "GET order", "GET account"), each used once; every request logged."""

    held: set[str] = field(default_factory=set)
    # Numbers an order keeps with this error (code, description) instead of disconnecting.
    refuse: dict[str, tuple[str, str]] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    # Reads of an order that still show it RECEIVED (None: never settles).
    pending_reads: int | None = 0
    # A number the account does not hold is answered NOT_BELONGING (5076) instead of 5006.
    not_belonging: bool = False

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.held.clear()
            self.refuse.clear()
            self.orders.clear()
            self.pending_reads = 0
            self.not_belonging = False

    def place(self, body: bytes) -> Reply:
        try:
            numbers = [
                (e.text or "").strip() for e in ElementTree.fromstring(body).iter("TelephoneNumber")
            ]
        except ElementTree.ParseError:
            return response_status(400, "12655", "The request body is not valid XML")
        if not numbers:
            return response_status(400, "5002", "TelephoneNumberList is required")
        order_id = str(uuid.uuid4())
        with self._lock:
            self.orders[order_id] = Order(numbers)
        listed = "".join(f"<TelephoneNumber>{n}</TelephoneNumber>" for n in numbers)
        return xml_reply(
            201,
            "<DisconnectTelephoneNumberOrderResponse><orderRequest>"
            f"<OrderCreateDate>2025-11-25T10:00:00.000Z</OrderCreateDate><id>{order_id}</id>"
            "<DisconnectTelephoneNumberOrderType><TelephoneNumberList>"
            f"{listed}</TelephoneNumberList><DisconnectMode>normal</DisconnectMode>"
            "</DisconnectTelephoneNumberOrderType></orderRequest>"
            "<OrderStatus>RECEIVED</OrderStatus></DisconnectTelephoneNumberOrderResponse>",
            {"Location": f"{self.url}{ACCOUNT}/disconnects/{order_id}"},
        )

    def read(self, order_id: str) -> Reply:
        with self._lock:
            order = self.orders.get(order_id)
            if order is None:
                return response_status(404, "5004", f"Order {order_id} not found")
            order.reads += 1
            if self.pending_reads is None or order.reads <= self.pending_reads:
                status, done = "RECEIVED", []
            else:
                done = self._carry_out(order)
                status = (
                    "COMPLETE"
                    if len(done) == len(order.numbers)
                    else ("FAILED" if not done else "PARTIAL")
                )
        disconnected = "".join(f"<TelephoneNumber>{n}</TelephoneNumber>" for n in done)
        errors = "".join(
            f"<Error><Code>{code}</Code><Description>{text}</Description>"
            f"<TelephoneNumber>{n}</TelephoneNumber></Error>"
            for n, (code, text) in order.errors.items()
        )
        return xml_reply(
            200,
            "<DisconnectTelephoneNumberOrderResponse>"
            f"<DisconnectedTelephoneNumberList>{disconnected}</DisconnectedTelephoneNumberList>"
            f"<ErrorList>{errors}</ErrorList><orderRequest><id>{order_id}</id></orderRequest>"
            f"<OrderStatus>{status}</OrderStatus></DisconnectTelephoneNumberOrderResponse>",
        )

    def _carry_out(self, order: Order) -> list[str]:
        """Carry the order out once (under the lock): the numbers it disconnected."""
        if order.done is not None:
            return order.done
        order.done = []
        for number in order.numbers:
            if number in self.refuse:
                order.errors[number] = self.refuse[number]
            elif number in self.held:
                self.held.discard(number)
                order.done.append(number)
            elif self.not_belonging:
                order.errors[number] = NOT_BELONGING
            else:
                order.errors[number] = (
                    "5006",
                    f"The telephone number {number} could not be disconnected since it is "
                    "not associated with your account",
                )
        return order.done

    @contextmanager
    def running(self) -> Iterator[FakeBandwidth]:
        with serving(self, _Handler) as self.url:
            yield self


class _Handler(BasicAuthHandler):
    authorization = basic_auth(USERNAME, PASSWORD)
    unauthorized = UNAUTHORIZED
    default_content_type = None  # Bandwidth's answers name theirs (XML)

    def route(self, fake: FakeBandwidth, method: str, path: str, body: bytes) -> Reply:
        if method == "GET" and path == ACCOUNT:
            return fake.scripted("GET account") or xml_reply(
                200,
                f"<AccountResponse><Account><AccountId>{ACCOUNT_ID}</AccountId>"
                "</Account></AccountResponse>",
            )
        if method == "GET" and path.startswith(f"{ACCOUNT}/inserviceNumbers/"):
            number = path.rsplit("/", 1)[1]
            return Reply(200 if number in fake.held else 404, "", XML)
        if method == "POST" and path == f"{ACCOUNT}/disconnects":
            return fake.scripted("POST") or fake.place(body)
        if method == "GET" and path.startswith(f"{ACCOUNT}/disconnects/"):
            return fake.scripted("GET order") or fake.read(path.rsplit("/", 1)[1])
        return response_status(404, "404", "Resource not found")

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")
