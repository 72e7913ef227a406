"""Releasing numbers at the upstream telecom provider: `none` (nothing to call) or Telnyx."""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import quote

import httpx

from shared.errors import ProviderError, ValidationError
from shared.ratelimit import CallDeferred, CarrierPace, shared_pace
from shared.settings import Settings

# `deferred`: not called (or refused with 429) and not waited for within the run's bounds (the
# carrier's rate limit, see shared/ratelimit.py): not the number's failure, asked again later.
Outcome = Literal["released", "transient", "permanent", "misconfigured", "deferred"]
# How a release was proven: the provider's record of the id, or its "not found" error.
Resolution = Literal["provider", "not_found"]

# Telnyx's phone-number ids are decimal integers; anything else could address another resource.
_NUMBER_ID = re.compile(r"[0-9]{1,32}")


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


@dataclass(frozen=True)
class UpstreamResult:
    """What one upstream release did; `error` and `retry_after` only on failures."""

    outcome: Outcome
    error: ProviderError | None = None
    retry_after: float | None = None
    resolution: Resolution | None = None


RELEASED = UpstreamResult("released", resolution="provider")


class Provider(Protocol):
    """Releases a number held at the provider; safe to call again for the same number."""

    name: str

    @property
    def pace(self) -> CarrierPace | None:
        """How its calls are paced to the carrier's rate limit (None: they are not)."""
        ...

    def check(self) -> UpstreamResult | None:
        """None when the provider answers as configured; else why a run must not start."""
        ...

    def holds(self, provider_number_id: str) -> bool:
        """Whether the key's account holds this number: True only on its record."""
        ...

    def release(self, provider_number_id: str) -> UpstreamResult: ...

    def close(self) -> None: ...


class NoProvider:
    """No upstream: every number counts as released."""

    name = "none"
    pace: CarrierPace | None = None

    def check(self) -> UpstreamResult | None:
        return None

    def holds(self, provider_number_id: str) -> bool:
        return False

    def release(self, provider_number_id: str) -> UpstreamResult:
        return RELEASED

    def close(self) -> None:
        return None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _json(response: httpx.Response) -> Any:
    """The body as JSON when the answer says it is JSON, else None."""
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return response.json()
    except ValueError:  # also UnicodeDecodeError
        return None


def _telnyx_errors(payload: Any) -> list[dict[str, Any]] | None:
    """The `errors` of Telnyx's error shape, `{"errors": [{"code": ..., ...}]}`, or None."""
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(errors, list) or not errors:
        return None
    if not all(isinstance(error, dict) and error.get("code") is not None for error in errors):
        return None
    return errors


def _error(message: str, *, code: str, fix: str, provider_code: object = None) -> ProviderError:
    return ProviderError(
        message[:1000],
        code=code,
        fix=fix,
        provider="telnyx",
        provider_code=str(provider_code)[:32] if provider_code is not None else None,
    )


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


def misconfigured(what: str) -> UpstreamResult:
    """An answer that does not prove a release: the run stops, nothing of its batch is purged."""
    return UpstreamResult(
        "misconfigured",
        _error(
            f"The provider's answer does not prove a release: {what}.",
            code="provider_misconfigured",
            fix="Check TELNYX_BASE_URL (Telnyx's API root, e.g. https://api.telnyx.com, no path) "
            "and TELNYX_API_KEY; nothing is purged until the provider answers as Telnyx does.",
        ),
    )


def _number_path(provider_number_id: str) -> str:
    # One path segment, percent-encoded: the id can never address another resource.
    return f"/v2/phone_numbers/{quote(provider_number_id, safe='')}"


def _is_record_of(payload: object, provider_number_id: str) -> bool:
    """Whether a JSON body is Telnyx's phone-number record of that very id."""
    data = payload.get("data") if isinstance(payload, dict) else None
    return (
        isinstance(data, dict)
        and str(data.get("id")) == provider_number_id
        and data.get("record_type") == "phone_number"
    )


def _answer(response: httpx.Response) -> str:
    kind = response.headers.get("Content-Type", "no content type").split(";")[0]
    return f"HTTP {response.status_code} {kind}"


class TelnyxProvider:
    """`DELETE {base}/v2/phone_numbers/{id}` with a bearer key.

    Fail safe: a release counts only on an answer that proves it, the phone-number record of
    that very id, or Telnyx's own "not found" error. Any other answer (HTML from a proxy, a
    record of another id, a redirect) says the base URL or key is wrong: `misconfigured`.
    """

    name = "telnyx"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout: float = 10.0,
        pace: CarrierPace | None = None,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=timeout,
        )
        self._timeout = timeout
        self.pace = pace or CarrierPace()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response | UpstreamResult:
        """The provider's answer, or the failure of the call as an outcome. Paced to the
        carrier's rate limit: a 429 is waited out and asked again, within the run's bounds."""
        try:
            return self.pace.send(
                lambda: self._client.request(method, path, **kwargs), max_wait=self._timeout
            )
        except CallDeferred as deferred:
            return UpstreamResult("deferred", retry_after=deferred.wait)
        except httpx.UnsupportedProtocol:
            return misconfigured("TELNYX_BASE_URL has no http(s) scheme")
        except httpx.HTTPError as exc:  # timeouts, refused connections, undecodable bodies
            return UpstreamResult(
                "transient",
                _error(
                    f"Telnyx could not be reached or its answer read: {type(exc).__name__}.",
                    code="provider_unreachable",
                    fix="The purge retries later; check the provider's status if it persists.",
                ),
            )

    def check(self) -> UpstreamResult | None:
        """A read-only request (list one number) proving the base URL and key work."""
        response = self._call("GET", "/v2/phone_numbers", params={"page[size]": "1"})
        if isinstance(response, UpstreamResult):
            return response
        payload = _json(response)
        listed = payload.get("data") if isinstance(payload, dict) else None
        if response.status_code == 200 and isinstance(listed, list):
            return None
        if response.status_code == 429 or response.status_code >= 500:
            return _failure(response, _telnyx_errors(payload))
        return misconfigured(f"listing numbers answered {_answer(response)}")

    def holds(self, provider_number_id: str) -> bool:
        """`GET /v2/phone_numbers/{id}`: True only on that number's record, else False."""
        if not _NUMBER_ID.fullmatch(provider_number_id):
            return False
        response = self._call("GET", _number_path(provider_number_id))
        if isinstance(response, UpstreamResult) or response.status_code != 200:
            return False
        return _is_record_of(_json(response), provider_number_id)

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
        payload = _json(response)
        status = response.status_code
        if 200 <= status < 300:
            if _is_record_of(payload, provider_number_id):
                return RELEASED
            return misconfigured(f"{_answer(response)} is not the record of {provider_number_id}")
        errors = _telnyx_errors(payload)
        if status in (401, 403):
            return misconfigured(f"{_answer(response)}: the key is refused")
        if status == 404 and errors is not None:
            # Gone upstream already: what we wanted, and what makes the call safe to repeat.
            return UpstreamResult("released", resolution="not_found")
        if status == 429 or status >= 500:
            return _failure(response, errors)
        if 400 <= status < 500 and errors is not None:
            return UpstreamResult("permanent", _telnyx_error(response, errors))
        return misconfigured(f"{_answer(response)} is not Telnyx's answer")

    def close(self) -> None:
        self._client.close()


def _failure(response: httpx.Response, errors: list[dict[str, Any]] | None) -> UpstreamResult:
    """A 429 or 5xx: transient, honouring Retry-After."""
    error = (
        _telnyx_error(response, errors)
        if errors
        else _error(
            f"Telnyx answered {_answer(response)}.",
            code="provider_release_failed",
            fix="The purge retries transient failures by itself.",
        )
    )
    return UpstreamResult("transient", error, _retry_after(response.headers.get("Retry-After")))


def make_provider(settings: Settings) -> Provider:
    """The provider the settings name."""
    if settings.provider == "telnyx":
        api_key = settings.telnyx_api_key.get_secret_value()
        return TelnyxProvider(
            base_url=settings.telnyx_base_url,
            api_key=api_key,
            timeout=settings.provider_timeout_seconds,
            # What one run learns of the limit (a Retry-After) holds for the process's next.
            pace=shared_pace(settings.telnyx_base_url, api_key),
        )
    return NoProvider()
