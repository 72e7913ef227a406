"""Twilio: `DELETE /2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers/{Sid}.json`.

Twilio answers a deletion with `204 No Content` and no body: nothing in it names the number.
The proof of a release is a following read of that number answering Twilio's own 404 (its
error shape `{code, message, more_info, status}` with code 20404), for an account proven to
hold this store's numbers (the same rule as Telnyx's 404, shared/purge/upstream.py). Whose problem
any other answer shows decides its scope: the credentials (401, Twilio's 20003; a 403) or the
base URL (HTML, a redirect, a 2xx other than 204) stop the run; this number alone (a 4xx in
Twilio's error shape: a number with an emergency address is refused until it is removed) is
kept with Twilio's code, waiting on a person; Twilio down (5xx, 429 = 20429, timeouts,
unreadable bodies) backs off, honouring Retry-After.

No documented error code was found for a deletion refused for an emergency address, so none
is relied on: any per-number refusal is kept, and the number's record is read for its
documented `emergency_address_status` (registered, unregistered, pending-registration,
registration-failure, pending-unregistration, unregistration-failure; Twilio's changelog of
2021-10-06 and the IncomingPhoneNumber resource): anything but `unregistered` names the
emergency address as what to remove (Twilio's Emergency Calling API: set the number's
emergency address to null, then check its status is `unregistered`).
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx

from shared.carriers.base import (
    REFUSED_CODE,
    Cause,
    HttpCarrier,
    UpstreamResult,
    answer_kind,
    carrier_error,
    json_body,
    misconfiguration,
)
from shared.ratelimit import CarrierPace, retry_after, shared_pace
from shared.settings import Settings

# An IncomingPhoneNumber's SID: PN and 32 hex digits (Twilio's documented pattern).
NUMBER_ID = re.compile(r"PN[0-9a-fA-F]{32}")
API = "/2010-04-01/Accounts"
NOT_FOUND = 20404
# A 4xx in Twilio's error shape about the number asked for (not the credentials, not a 404,
# not the rate limit): that number alone is kept, with Twilio's code.
_NUMBER_REFUSALS = frozenset({400, 409, 412, 422, 423})
_FIXES: dict[Cause, str] = {
    "key": "Check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN: the account (or subaccount) "
    "that holds this store's numbers; restart the workers after changing them.",
    "base_url": "Check TWILIO_BASE_URL (Twilio's API root, e.g. https://api.twilio.com, no "
    "path, no proxy that answers for it); nothing is purged until Twilio answers as it does.",
}


_error = partial(carrier_error, "twilio")


def twilio_error(payload: Any) -> dict[str, Any] | None:
    """Twilio's error shape, `{"code": 20404, "message": ..., "more_info": ..., "status": 404}`,
    or None."""
    if not isinstance(payload, dict):
        return None
    code, status = payload.get("code"), payload.get("status")
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(status, int):
        return None
    return payload if isinstance(payload.get("message"), str) else None


def misconfigured(what: str, *, cause: Cause = "base_url") -> UpstreamResult:
    lead = "Twilio refused the credentials" if cause == "key" else "The answer is not Twilio's"
    return misconfiguration("twilio", lead=lead, what=what, fix=_FIXES[cause])


def _failure(response: httpx.Response, error: dict[str, Any] | None) -> UpstreamResult:
    """A 429 (20429) or 5xx: transient, honouring Retry-After."""
    return UpstreamResult(
        "transient",
        _error(
            f"Twilio answered {answer_kind(response)}"
            + (f": {str(error['message'])[:300]}" if error else "."),
            code="provider_release_failed",
            fix="The purge retries transient failures by itself.",
            provider_code=error["code"] if error else None,
        ),
        retry_after(response.headers.get("Retry-After")),
    )


def _refused(sid: str, error: dict[str, Any], emergency: str | None = None) -> UpstreamResult:
    """Twilio refused to release this number alone; `emergency`: the number's
    `emergency_address_status` as its record shows it (None: not read)."""
    message = f"Twilio kept number {sid}: {str(error['message'])[:300]}"
    fix = "Settle it at Twilio as its code says, then `numbers-retention retry-upstream PHONE`."
    if emergency is not None and emergency != "unregistered":
        message += f" (its emergency address is {emergency[:40]})"
        fix = (
            "Remove the number's emergency address at Twilio (update the IncomingPhoneNumber "
            "with an empty EmergencyAddressSid) and wait until its emergency_address_status is "
            "unregistered, then `numbers-retention retry-upstream PHONE`."
        )
    return UpstreamResult(
        "refused",
        _error(message, code=REFUSED_CODE, fix=fix, provider_code=error["code"]),
        waits_on="person",
    )


def _is_not_found(response: httpx.Response, error: dict[str, Any] | None) -> bool:
    return response.status_code == 404 and error is not None and error["code"] == NOT_FOUND


class TwilioProvider(HttpCarrier):
    """Twilio's IncomingPhoneNumbers with the account's SID and auth token (HTTP basic)."""

    name = "twilio"
    base_url_setting = "TWILIO_BASE_URL"

    def __init__(
        self,
        *,
        base_url: str,
        account_sid: str,
        auth_token: str,
        timeout: float = 10.0,
        pace: CarrierPace | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            auth=(account_sid, auth_token),
            headers={"Accept": "application/json"},
            timeout=timeout,
            pace=pace,
        )
        self._account = account_sid

    def misconfigured(self, what: str) -> UpstreamResult:
        return misconfigured(what)

    def _path(self, sid: str) -> str:
        # One encoded path segment each: an id can never address another resource.
        return (
            f"{API}/{quote(self._account, safe='')}/IncomingPhoneNumbers/{quote(sid, safe='')}.json"
        )

    def _stopping(self, response: httpx.Response, what: str) -> UpstreamResult:
        """An answer other than the expected ones: the credentials, Twilio down, or not Twilio."""
        error = twilio_error(json_body(response))
        status = response.status_code
        if status in (401, 403) and error is not None:
            return misconfigured(f"{what} answered {status} ({error['code']})", cause="key")
        if status == 429 or status >= 500:
            return _failure(response, error)
        return misconfigured(f"{what} answered {answer_kind(response)}")

    def check(self) -> UpstreamResult | None:
        """`GET /2010-04-01/Accounts/{AccountSid}.json`: the account's own record proves the
        base URL and the credentials."""
        response = self._call("GET", f"{API}/{quote(self._account, safe='')}.json")
        if isinstance(response, UpstreamResult):
            return response
        payload = json_body(response)
        if (
            response.status_code == 200
            and isinstance(payload, dict)
            and payload.get("sid") == self._account
        ):
            return None
        return self._stopping(response, "reading the account")

    def holds(self, provider_number_id: str) -> bool:
        """True only on the account's record of that very number."""
        if not NUMBER_ID.fullmatch(provider_number_id):
            return False
        response = self._call("GET", self._path(provider_number_id))
        if isinstance(response, UpstreamResult) or response.status_code != 200:
            return False
        record = json_body(response)
        return (
            isinstance(record, dict)
            and record.get("sid") == provider_number_id
            and record.get("account_sid") == self._account
        )

    def release(self, provider_number_id: str) -> UpstreamResult:
        sid = provider_number_id
        if not NUMBER_ID.fullmatch(sid):
            return UpstreamResult(
                "permanent",
                _error(
                    f"The stored provider id {sid[:40]!r} is not a Twilio number SID.",
                    code="invalid_provider_number_id",
                    fix="Correct the id in the store, then `numbers-retention retry-upstream`.",
                ),
            )
        path = self._path(sid)
        response = self._call("DELETE", path)
        if isinstance(response, UpstreamResult):
            return response
        error = twilio_error(json_body(response))
        if response.status_code == 204:
            return self._read_after_delete(sid, path)
        if _is_not_found(response, error):
            return UpstreamResult(
                "released",
                resolution="not_found",
                proof={"resolution": "not_found", "call": f"DELETE {path}", "error": NOT_FOUND},
            )
        if error is not None and response.status_code in _NUMBER_REFUSALS:
            return _refused(sid, error, self._emergency_address_status(path))
        return self._stopping(response, f"DELETE of {sid}")

    def _emergency_address_status(self, path: str) -> str | None:
        """The number's `emergency_address_status`, as its record shows it (None: unread)."""
        response = self._call("GET", path)
        if not isinstance(response, httpx.Response) or response.status_code != 200:
            return None
        body = json_body(response)
        status = body.get("emergency_address_status") if isinstance(body, dict) else None
        return status if isinstance(status, str) else None

    def _read_after_delete(self, sid: str, path: str) -> UpstreamResult:
        """After the bodiless 204, the proof: a read of that number answering Twilio's 404."""
        response = self._call("GET", path)
        if isinstance(response, UpstreamResult):
            return response
        error = twilio_error(json_body(response))
        if _is_not_found(response, error):
            return UpstreamResult(
                "released",
                resolution="provider",
                account_bound=True,
                proof={
                    "resolution": "provider",
                    "call": f"DELETE {path}",
                    "answer": 204,
                    "read": f"GET {path}",
                    "error": NOT_FOUND,
                },
            )
        if response.status_code == 200:
            return UpstreamResult(
                "refused",
                _error(
                    f"Twilio answered the deletion of {sid} with 204 but still lists it.",
                    code=REFUSED_CODE,
                    fix="Nothing to do: the purge reads it again after its backoff.",
                ),
                waits_on="carrier",
            )
        return self._stopping(response, f"reading {sid} after its deletion")


def configured(settings: Settings) -> bool:
    """Whether the settings give Twilio's credentials (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN):
    its lane is scheduled."""
    return bool(settings.twilio_account_sid and settings.twilio_auth_token.get_secret_value())


def from_settings(settings: Settings) -> TwilioProvider:
    """The Twilio adapter the settings describe (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN,
    TWILIO_BASE_URL)."""
    token = settings.twilio_auth_token.get_secret_value()
    return TwilioProvider(
        base_url=settings.twilio_base_url,
        account_sid=settings.twilio_account_sid,
        auth_token=token,
        timeout=settings.provider_timeout_seconds,
        pace=shared_pace(settings.twilio_base_url, f"{settings.twilio_account_sid}:{token}"),
    )
