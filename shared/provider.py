"""Releasing numbers at the upstream telecom provider: `none` (nothing to call) or Telnyx."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import httpx

from shared.errors import ProviderError
from shared.settings import Settings

Outcome = Literal["released", "transient", "permanent"]


@dataclass(frozen=True)
class UpstreamResult:
    """What one upstream release did; `error` and `retry_after` only on failures."""

    outcome: Outcome
    error: ProviderError | None = None
    retry_after: float | None = None


RELEASED = UpstreamResult("released")


class Provider(Protocol):
    """Releases a number held at the provider; safe to call again for the same number."""

    name: str

    def release(self, provider_number_id: str) -> UpstreamResult: ...

    def close(self) -> None: ...


class NoProvider:
    """No upstream: every number counts as released."""

    name = "none"

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


def _telnyx_error(response: httpx.Response) -> ProviderError:
    """Our envelope's error from a Telnyx `{"errors": [{code, title, detail}]}` body."""
    first: dict[str, Any] = {}
    try:
        payload = response.json()
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
    except ValueError:
        pass  # not JSON: the status line says what we know
    code = first.get("code")
    detail = first.get("detail") or first.get("title")
    message = f"Telnyx answered HTTP {response.status_code}" + (
        f": {str(detail)[:300]}" if detail else "."
    )
    return ProviderError(
        message,
        code="provider_release_failed",
        fix="See the provider's code; the purge retries transient failures by itself.",
        provider="telnyx",
        provider_code=str(code)[:32] if code is not None else None,
    )


class TelnyxProvider:
    """`DELETE {base}/v2/phone_numbers/{id}` with a bearer key."""

    name = "telnyx"

    def __init__(self, *, base_url: str, api_key: str, timeout: float = 10.0) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=timeout,
        )

    def release(self, provider_number_id: str) -> UpstreamResult:
        try:
            response = self._client.delete(f"/v2/phone_numbers/{provider_number_id}")
        except httpx.TransportError as exc:  # timeouts, refused connections, resets
            return UpstreamResult(
                "transient",
                ProviderError(
                    f"Telnyx could not be reached: {type(exc).__name__}.",
                    code="provider_unreachable",
                    fix="The purge retries later; check the provider's status if it persists.",
                    provider="telnyx",
                ),
            )
        status = response.status_code
        # 404: the number is already gone upstream, which is what we wanted.
        if status < 300 or status == 404:
            return RELEASED
        error = _telnyx_error(response)
        if status == 429:
            return UpstreamResult(
                "transient", error, _retry_after(response.headers.get("Retry-After"))
            )
        if status >= 500:
            return UpstreamResult("transient", error)
        return UpstreamResult("permanent", error)

    def close(self) -> None:
        self._client.close()


def make_provider(settings: Settings) -> Provider:
    """The provider the settings name."""
    if settings.provider == "telnyx":
        return TelnyxProvider(
            base_url=settings.telnyx_base_url,
            api_key=settings.telnyx_api_key.get_secret_value(),
            timeout=settings.provider_timeout_seconds,
        )
    return NoProvider()
