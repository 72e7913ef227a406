"""Bandwidth: disconnect orders of its Dashboard (Numbers) API, XML, HTTP basic.

`POST /accounts/{accountId}/disconnects` with a `DisconnectTelephoneNumberOrder` answers
`201 Created` with the order (`orderRequest/id`, `OrderStatus` RECEIVED); `GET
/accounts/{accountId}/disconnects/{orderId}` answers the order until its `OrderStatus` is
COMPLETE, PARTIAL or FAILED, with the numbers it disconnected
(`DisconnectedTelephoneNumberList`) and an `ErrorList` of `Error` (`Code`, `Description`,
`TelephoneNumber`) per number it did not. Bandwidth does not retry its order webhooks: reading
the order is the proof. Each number settles by its own outcome: disconnected (released, the
order id in the ledger); gone already (released, where the account is proven): 5076
"Number does not belong to this account." or 5006 whose description says the number "is not
associated with your account"; any other error, 5006 "TelephoneNumber Disconnect Error"
included, kept with Bandwidth's code, for a person.

The codes are the Dashboard API's documented `OrderErrorType` codes (Bandwidth/api-docs,
site/docs/numbers/errors.mdx: 5006 "TelephoneNumber Disconnect Error", 5076 "Number does not
belong to this account."); 5006 is Bandwidth's generic disconnect error, which its own SDK's
fixture of a FAILED disconnect order (Bandwidth/java-bandwidth-iris, IrisClientTestUtils) shows
with the description "could not be disconnected since it is not associated with your account":
5006 alone proves nothing, its description decides.
"""

from __future__ import annotations

import re
from functools import partial
from urllib.parse import quote
from xml.etree import ElementTree

import httpx
from defusedxml import ElementTree as SafeElementTree

from shared.carriers.base import (
    REFUSED_CODE,
    Cause,
    HttpCarrier,
    Submitted,
    UpstreamResult,
    answer_kind,
    carrier_error,
    misconfiguration,
)
from shared.ratelimit import CarrierPace, retry_after, shared_pace
from shared.settings import Settings

# A telephone number as Bandwidth keys it: 10 digits, no +1.
NUMBER_ID = re.compile(r"[2-9][0-9]{9}")
_ORDER_ID = re.compile(r"[0-9A-Za-z-]{1,64}")
# A number the account does not hold (gone already): 5076 always; 5006, Bandwidth's generic
# disconnect error, only with this description.
NOT_BELONGING = "5076"
DISCONNECT_ERROR = "5006"
NOT_ASSOCIATED = "not associated with your account"
PENDING = frozenset({"RECEIVED", "PROCESSING"})
FINAL = frozenset({"COMPLETE", "PARTIAL", "FAILED"})
_FIXES: dict[Cause, str] = {
    "key": "Check BANDWIDTH_ACCOUNT_ID, BANDWIDTH_USERNAME and BANDWIDTH_PASSWORD: an API user "
    "of the account that holds this store's numbers; restart the workers after changing them.",
    "base_url": "Check BANDWIDTH_BASE_URL (the Dashboard API's root, e.g. "
    "https://dashboard.bandwidth.com/api); nothing is purged until Bandwidth answers as it does.",
}


_error = partial(carrier_error, "bandwidth")


def misconfigured(what: str, *, cause: Cause = "base_url") -> UpstreamResult:
    lead = (
        "Bandwidth refused the credentials" if cause == "key" else "The answer is not Bandwidth's"
    )
    return misconfiguration("bandwidth", lead=lead, what=what, fix=_FIXES[cause])


def xml_body(response: httpx.Response) -> ElementTree.Element | None:
    """The body as XML when the answer says it is XML, else None."""
    if "xml" not in response.headers.get("Content-Type", ""):
        return None
    try:
        parsed: ElementTree.Element = SafeElementTree.fromstring(response.content)
    except (ElementTree.ParseError, ValueError):  # also defusedxml's refusals
        return None
    return parsed


def _text(element: ElementTree.Element | None, path: str) -> str | None:
    found = element.find(path) if element is not None else None
    return found.text.strip() if found is not None and found.text else None


def _order_xml(numbers: list[str]) -> bytes:
    order = ElementTree.Element("DisconnectTelephoneNumberOrder")
    ElementTree.SubElement(order, "name").text = "numbers-retention purge"
    kind = ElementTree.SubElement(order, "DisconnectTelephoneNumberOrderType")
    listed = ElementTree.SubElement(kind, "TelephoneNumberList")
    for number in numbers:
        ElementTree.SubElement(listed, "TelephoneNumber").text = number
    return b'<?xml version="1.0"?>' + ElementTree.tostring(order)


class BandwidthProvider(HttpCarrier):
    """Bandwidth's disconnect orders for one account, with an API user's name and password."""

    name = "bandwidth"
    base_url_setting = "BANDWIDTH_BASE_URL"
    max_order = 5000

    def __init__(
        self,
        *,
        base_url: str,
        account_id: str,
        username: str,
        password: str,
        timeout: float = 10.0,
        pace: CarrierPace | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            auth=(username, password),
            headers={"Accept": "application/xml"},
            timeout=timeout,
            pace=pace,
        )
        self._account = f"/accounts/{quote(account_id, safe='')}"

    def misconfigured(self, what: str) -> UpstreamResult:
        return misconfigured(what)

    def _stopping(self, response: httpx.Response, what: str) -> UpstreamResult:
        status = response.status_code
        if status in (401, 403):
            return misconfigured(f"{what} answered {status}", cause="key")
        if status == 429 or status >= 500:
            return UpstreamResult(
                "transient",
                _error(
                    f"Bandwidth answered {answer_kind(response)}.",
                    code="provider_release_failed",
                    fix="The purge retries transient failures by itself.",
                    provider_code=_text(xml_body(response), ".//ErrorCode"),
                ),
                retry_after(response.headers.get("Retry-After")),
            )
        return misconfigured(f"{what} answered {answer_kind(response)}")

    def check(self) -> UpstreamResult | None:
        """`GET /accounts/{accountId}`: the account's own record proves the base URL and the
        credentials."""
        response = self._call("GET", self._account)
        if isinstance(response, UpstreamResult):
            return response
        body = xml_body(response)
        if response.status_code == 200 and _text(body, ".//AccountId") == self._account[10:]:
            return None
        return self._stopping(response, "reading the account")

    def holds(self, provider_number_id: str) -> bool:
        """`GET /accounts/{accountId}/inserviceNumbers/{tn}`: 200 while the account holds it."""
        if not NUMBER_ID.fullmatch(provider_number_id):
            return False
        response = self._call(
            "GET", f"{self._account}/inserviceNumbers/{quote(provider_number_id, safe='')}"
        )
        return isinstance(response, httpx.Response) and response.status_code == 200

    def invalid(self, provider_number_id: str) -> UpstreamResult | None:
        if NUMBER_ID.fullmatch(provider_number_id):
            return None
        return UpstreamResult(
            "permanent",
            _error(
                f"The stored provider id {provider_number_id[:40]!r} is not a 10-digit "
                "telephone number.",
                code="invalid_provider_number_id",
                fix="Correct the id in the store, then `numbers-retention retry-upstream`.",
            ),
        )

    def release(self, provider_number_id: str) -> UpstreamResult:
        """Not used: Bandwidth releases by orders (`submit`, `settle`)."""
        return self.invalid(provider_number_id) or UpstreamResult(
            "permanent",
            _error(
                "Bandwidth releases numbers by disconnect orders only.",
                code="provider_call_failed",
                fix="Purge through the Bandwidth lane.",
            ),
        )

    def submit(self, provider_number_ids: list[str]) -> Submitted | UpstreamResult:
        """`POST /accounts/{accountId}/disconnects`: the order's id (`orderRequest/id`)."""
        response = self._call(
            "POST",
            f"{self._account}/disconnects",
            content=_order_xml(provider_number_ids),
            headers={"Content-Type": "application/xml; charset=utf-8"},
        )
        if isinstance(response, UpstreamResult):
            return response
        order_id = _text(xml_body(response), "orderRequest/id")
        if response.status_code in (200, 201) and order_id and _ORDER_ID.fullmatch(order_id):
            return Submitted(order_id)
        return self._stopping(response, "placing a disconnect order")

    def settle(
        self, order_id: str, provider_number_ids: list[str]
    ) -> dict[str, UpstreamResult] | UpstreamResult:
        """`GET /accounts/{accountId}/disconnects/{orderId}`: each number's outcome once the
        order is COMPLETE, PARTIAL or FAILED; nothing while it is RECEIVED or PROCESSING."""
        if not _ORDER_ID.fullmatch(order_id):
            return misconfigured(f"the stored order id {order_id[:40]!r} is not Bandwidth's")
        path = f"{self._account}/disconnects/{quote(order_id, safe='')}"
        response = self._call("GET", path)
        if isinstance(response, UpstreamResult):
            return response
        body = xml_body(response)
        status = _text(body, "OrderStatus")
        if response.status_code != 200 or body is None or status is None:
            return self._stopping(response, f"reading disconnect order {order_id}")
        if status in PENDING:
            return {}
        if status not in FINAL:
            return misconfigured(f"disconnect order {order_id} is in status {status[:40]!r}")
        return _outcomes(body, order_id, status, provider_number_ids)


def _outcomes(
    body: ElementTree.Element, order_id: str, status: str, numbers: list[str]
) -> dict[str, UpstreamResult]:
    """Each number's own outcome in a settled order."""
    done = {(e.text or "").strip() for e in body.findall("DisconnectedTelephoneNumberList/*")}
    errors = {
        _text(e, "TelephoneNumber"): (_text(e, "Code"), _text(e, "Description"))
        for e in body.findall("ErrorList/Error")
    }
    proof = {"call": "POST /accounts/{accountId}/disconnects", "order": order_id, "status": status}
    outcomes: dict[str, UpstreamResult] = {}
    for number in numbers:
        if number in done:
            outcomes[number] = UpstreamResult(
                "released", resolution="provider", proof={"resolution": "provider", **proof}
            )
            continue
        code, description = errors.get(number, (None, None))
        if _gone_already(code, description):
            outcomes[number] = UpstreamResult(
                "released",
                resolution="not_found",
                proof={"resolution": "not_found", **proof, "error": code},
            )
            continue
        outcomes[number] = UpstreamResult(
            "refused",
            _error(
                f"Bandwidth's disconnect order {order_id} ({status}) kept {number}: "
                f"{(description or 'no error given for it')[:300]}",
                code=REFUSED_CODE,
                fix="Settle it at Bandwidth as its code says, then `numbers-retention "
                "retry-upstream PHONE`.",
                provider_code=code or status,
            ),
            waits_on="person",
        )
    return outcomes


def configured(settings: Settings) -> bool:
    """Whether the settings give Bandwidth's credentials (BANDWIDTH_ACCOUNT_ID,
    BANDWIDTH_USERNAME, BANDWIDTH_PASSWORD): its lane is scheduled."""
    return bool(
        settings.bandwidth_account_id
        and settings.bandwidth_username
        and settings.bandwidth_password.get_secret_value()
    )


def _gone_already(code: str | None, description: str | None) -> bool:
    """Whether a number's error in a settled order says the account does not hold it."""
    if code == NOT_BELONGING:
        return True
    return code == DISCONNECT_ERROR and NOT_ASSOCIATED in (description or "").lower()


def from_settings(settings: Settings) -> BandwidthProvider:
    """The Bandwidth adapter the settings describe (BANDWIDTH_ACCOUNT_ID, BANDWIDTH_USERNAME,
    BANDWIDTH_PASSWORD, BANDWIDTH_BASE_URL)."""
    password = settings.bandwidth_password.get_secret_value()
    return BandwidthProvider(
        base_url=settings.bandwidth_base_url,
        account_id=settings.bandwidth_account_id,
        username=settings.bandwidth_username,
        password=password,
        timeout=settings.provider_timeout_seconds,
        pace=shared_pace(settings.bandwidth_base_url, f"{settings.bandwidth_username}:{password}"),
    )
