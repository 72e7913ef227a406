"""Telnyx: `DELETE /v2/phone_numbers/{id}`, its answers read as docs/runbook.md says."""

from __future__ import annotations

import re
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx

from shared.carriers.base import (
    REFUSED_CODE,
    RELEASED,
    Cause,
    HttpCarrier,
    UpstreamResult,
    WaitsOn,
    answer_kind,
    carrier_error,
    json_body,
    misconfiguration,
)
from shared.errors import ProviderError, ValidationError
from shared.ratelimit import CarrierPace, retry_after, shared_pace
from shared.settings import Settings

# Telnyx's phone-number ids are decimal integers; anything else could address another resource.
_NUMBER_ID = re.compile(r"[0-9]{1,32}")
NUMBER_ID = _NUMBER_ID


def provider_number_id(value: object) -> str | None:
    """A provider's number id as stored: Telnyx's decimal id, or None (nothing held upstream)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _NUMBER_ID.fullmatch(value):
        raise ValidationError(
            "provider_number_id must be the provider's numeric id (1 to 32 digits).",
            code="invalid_provider_number_id",
            fix="Pass the id as the provider gave it, e.g. '1293384261075731499'.",
        )
    return value


def _telnyx_errors(payload: Any) -> list[dict[str, Any]] | None:
    """The `errors` of Telnyx's error shape, `{"errors": [{"code": ..., ...}]}`, or None."""
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(errors, list) or not errors:
        return None
    if not all(isinstance(error, dict) and error.get("code") is not None for error in errors):
        return None
    return errors


_error = partial(carrier_error, "telnyx")


def _telnyx_error(response: httpx.Response, errors: list[dict[str, Any]]) -> ProviderError:
    """Our envelope's error from Telnyx's first error."""
    first = errors[0]
    detail = first.get("detail") or first.get("title")
    return _error(
        f"Telnyx answered HTTP {response.status_code}"
        + (f": {str(detail)[:300]}" if detail else "."),
        code="provider_release_failed",
        fix="See the provider's code; the purge retries transient failures by itself.",
        provider_code=first.get("code"),
    )


# What to check, by the setting an answer shows to be wrong.
_FIXES: dict[Cause, str] = {
    "base_url": "Check TELNYX_BASE_URL (Telnyx's API root, e.g. https://api.telnyx.com, no path, "
    "no proxy that answers for it); nothing is purged until the provider answers as Telnyx does.",
    "key": "Check TELNYX_API_KEY: a key of the account that holds this store's numbers, allowed "
    "to delete them; restart the workers after changing it.",
}


def misconfigured(what: str, *, cause: Cause = "base_url") -> UpstreamResult:
    """An answer that shows the key or the base URL wrong: the run stops and says which."""
    lead = (
        "Telnyx refused the key"
        if cause == "key"
        else "The provider's answer does not prove a release"
    )
    return misconfiguration("telnyx", lead=lead, what=what, fix=_FIXES[cause])


# 403 codes that are about the number asked for, not the key: Telnyx's 10035 "Resource
# locked" ("locked by Telnyx so they cannot be used or modified. Contact Telnyx support").
_NUMBER_403_CODES = frozenset({"10035"})
# Record statuses that end only by a person's hand; any other status but "deleted" is the
# carrier's work in progress (a port-out it is carrying out): asked again after a backoff.
_STATUSES_FOR_A_PERSON = frozenset({"ported-out"})
_WAITS_FIX: dict[WaitsOn, str] = {
    "person": "Settle it at Telnyx (its detail says how: Telnyx support for a locked number, "
    "lift a deletion lock, settle a port-out), then `numbers-retention retry-upstream PHONE`; "
    "or, once released by hand, `numbers-retention resolve-upstream PHONE --reason ...`.",
    "carrier": "Nothing to do: Telnyx is still carrying something out for this number "
    "(a port-out); the purge asks again after its backoff.",
}


def _locked(status: int, errors: list[dict[str, Any]] | None) -> bool:
    """A 403 about the number asked for (Telnyx's 10035), not about the key."""
    return status == 403 and errors is not None and str(errors[0]["code"]) in _NUMBER_403_CODES


def refused(message: str, *, waits_on: WaitsOn, provider_code: object) -> UpstreamResult:
    """Telnyx refused to release this number alone: kept, waiting on a person or on Telnyx;
    the run goes on, and the refusal never counts as the provider being down."""
    return UpstreamResult(
        "refused",
        _error(
            message,
            code=REFUSED_CODE,
            fix=_WAITS_FIX[waits_on],
            provider_code=provider_code,
        ),
        waits_on=waits_on,
    )


def _refused_by_error(
    response: httpx.Response, errors: list[dict[str, Any]], waits_on: WaitsOn
) -> UpstreamResult:
    return refused(
        _telnyx_error(response, errors).message, waits_on=waits_on, provider_code=errors[0]["code"]
    )


def _retryable(errors: list[dict[str, Any]]) -> bool:
    """Telnyx's `meta.retryable` of the first error: true when the same request can succeed."""
    meta = errors[0].get("meta")
    return isinstance(meta, dict) and meta.get("retryable") is True


def _number_path(provider_number_id: str) -> str:
    # One path segment, percent-encoded: the id can never address another resource.
    return f"/v2/phone_numbers/{quote(provider_number_id, safe='')}"


def _record_of(
    payload: object, provider_number_id: str, record_type: str = "phone_number"
) -> dict[str, Any] | None:
    """Telnyx's record of that type and very id in a JSON body (`{"data": {...}}`), or None."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if (
        isinstance(data, dict)
        and str(data.get("id")) == provider_number_id
        and data.get("record_type") == record_type
    ):
        return data
    return None


def _is_record_of(payload: object, provider_number_id: str) -> bool:
    """Whether a JSON body is Telnyx's phone-number record of that very id."""
    return _record_of(payload, provider_number_id) is not None


def _deleted(record: dict[str, Any], provider_number_id: str) -> UpstreamResult:
    """What the record a DELETE answered says: released only in status "deleted" without a
    deletion lock; else this number is kept (nothing of it was deleted)."""
    status = record.get("status")
    if record.get("deletion_lock_enabled") is True:
        return refused(
            f"Telnyx kept number {provider_number_id}: its deletion lock is on "
            "(deletion_lock_enabled).",
            waits_on="person",
            provider_code="deletion_lock_enabled",
        )
    if status == "deleted":
        return RELEASED
    if not isinstance(status, str) or not status:
        return misconfigured(f"the record of {provider_number_id} has no status")
    return refused(
        f"Telnyx answered the record of {provider_number_id} in status {status[:40]!r}, "
        "not deleted.",
        waits_on="person" if status in _STATUSES_FOR_A_PERSON else "carrier",
        provider_code=status,
    )


class TelnyxProvider(HttpCarrier):
    """`DELETE {base}/v2/phone_numbers/{id}` with a bearer key.

    Fail safe: a release counts only on an answer that proves it, the phone-number record of
    that very id in status "deleted" without a deletion lock, or Telnyx's own "not found"
    error. Whose problem any other answer shows decides its scope: the key (401, a 403
    without the per-number code 10035) or the base URL (HTML, a record of another id, a
    redirect) is `misconfigured`, which stops the run; this number alone (403 10035 resource
    locked, a 422, a record still locked, in port-out or otherwise not deleted) is
    `refused`; Telnyx down (5xx, 429, timeouts, unreadable bodies) is `transient`.
    """

    name = "telnyx"
    base_url_setting = "TELNYX_BASE_URL"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout: float = 10.0,
        pace: CarrierPace | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=timeout,
            pace=pace,
        )

    def misconfigured(self, what: str) -> UpstreamResult:
        return misconfigured(what)

    def check(self) -> UpstreamResult | None:
        """A read-only request (list one number) proving the base URL and key work."""
        response = self._call("GET", "/v2/phone_numbers", params={"page[size]": "1"})
        if isinstance(response, UpstreamResult):
            return response
        payload = json_body(response)
        listed = payload.get("data") if isinstance(payload, dict) else None
        if response.status_code == 200 and isinstance(listed, list):
            return None
        if response.status_code == 429 or response.status_code >= 500:
            return _failure(response, _telnyx_errors(payload))
        what = f"listing numbers answered {answer_kind(response)}"
        if response.status_code in (401, 403) and payload is not None:
            return misconfigured(what + _first_error(payload), cause="key")
        return misconfigured(what)

    def holds(self, provider_number_id: str) -> bool:
        """`GET /v2/phone_numbers/{id}`: True only on that number's record, else False."""
        if not _NUMBER_ID.fullmatch(provider_number_id):
            return False
        response = self._call("GET", _number_path(provider_number_id))
        if isinstance(response, UpstreamResult) or response.status_code != 200:
            return False
        return _is_record_of(json_body(response), provider_number_id)

    def release(self, provider_number_id: str) -> UpstreamResult:
        if not _NUMBER_ID.fullmatch(provider_number_id):
            # Stored before ids were validated: never sent, kept for a person to look at.
            return UpstreamResult(
                "permanent",
                _error(
                    f"The stored provider id {provider_number_id[:40]!r} is not a Telnyx id.",
                    code="invalid_provider_number_id",
                    fix="Correct the id in the store, then `numbers-retention retry-upstream`.",
                ),
            )
        response = self._call("DELETE", _number_path(provider_number_id))
        if isinstance(response, UpstreamResult):
            return response
        payload = json_body(response)
        status = response.status_code
        if 200 <= status < 300:
            record = _record_of(payload, provider_number_id)
            if record is None:
                return misconfigured(
                    f"{answer_kind(response)} is not the record of {provider_number_id}"
                )
            return _deleted(record, provider_number_id)
        return _not_deleted(response, payload)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response | UpstreamResult:
        """One call to Telnyx with this key (the detach steps, shared/detach.py): its answer,
        or the failure of the call as an outcome."""
        return self._call(method, path, **kwargs)


def _not_deleted(response: httpx.Response, payload: Any) -> UpstreamResult:
    """Whose problem a DELETE's answer other than 2xx shows: the key or the base URL (the run
    stops), this number (kept, waiting on a person or on Telnyx), or Telnyx down (retried);
    Telnyx's 404 is a release (see `TelnyxProvider`)."""
    status = response.status_code
    errors = _telnyx_errors(payload)
    if errors and _locked(status, errors):
        return _refused_by_error(response, errors, "person")
    if status in (401, 403):
        if payload is None:  # HTML or another content type: not Telnyx answering
            return misconfigured(f"{answer_kind(response)} is not Telnyx's answer")
        return misconfigured(f"{answer_kind(response)}{_first_error(payload)}", cause="key")
    if status == 404 and errors is not None:
        # Gone upstream already: what we wanted, and what makes the call safe to repeat.
        return UpstreamResult("released", resolution="not_found")
    if status == 429 or status >= 500:
        return _failure(response, errors)
    if status == 422 and errors is not None:
        # This number cannot be deleted as it is (a port-out in progress, say).
        waits_on: WaitsOn = "carrier" if _retryable(errors) else "person"
        return _refused_by_error(response, errors, waits_on)
    if 400 <= status < 500 and errors is not None:
        return UpstreamResult("permanent", _telnyx_error(response, errors))
    return misconfigured(f"{answer_kind(response)} is not Telnyx's answer")


def _first_error(payload: object) -> str:
    """` (<code> <title>)` of Telnyx's first error in a body, or nothing."""
    errors = _telnyx_errors(payload)
    if not errors:
        return ""
    title = errors[0].get("title")
    return f" ({str(errors[0]['code'])[:32]}{f' {str(title)[:80]}' if title else ''})"


def _failure(response: httpx.Response, errors: list[dict[str, Any]] | None) -> UpstreamResult:
    """A 429 or 5xx: transient, honouring Retry-After."""
    error = (
        _telnyx_error(response, errors)
        if errors
        else _error(
            f"Telnyx answered {answer_kind(response)}.",
            code="provider_release_failed",
            fix="The purge retries transient failures by itself.",
        )
    )
    return UpstreamResult("transient", error, retry_after(response.headers.get("Retry-After")))


def configured(settings: Settings) -> bool:
    """Whether the settings give Telnyx's credentials (TELNYX_API_KEY): its lane is scheduled."""
    return bool(settings.telnyx_api_key.get_secret_value().strip())


def from_settings(settings: Settings) -> TelnyxProvider:
    """The Telnyx adapter the settings describe (TELNYX_API_KEY, TELNYX_BASE_URL); with
    TELNYX_BULK_DELETE, the one releasing by bulk deletion jobs (shared/carriers/telnyx_jobs.py)."""
    adapter = TelnyxProvider
    if settings.telnyx_bulk_delete:
        from shared.carriers.telnyx_jobs import TelnyxJobsProvider

        adapter = TelnyxJobsProvider
    api_key = settings.telnyx_api_key.get_secret_value()
    return adapter(
        base_url=settings.telnyx_base_url,
        api_key=api_key,
        timeout=settings.provider_timeout_seconds,
        # What one run learns of the limit (a Retry-After) holds for the process's next.
        pace=shared_pace(settings.telnyx_base_url, api_key),
    )
