"""What every carrier adapter shares: the outcome of one release, the adapter's protocol, and
the reading of an answer's body.

Whose problem an answer shows decides its scope (docs/runbook.md, "What each answer of the
carrier means"): `misconfigured`, the credentials or the base URL (the run stops); `refused`,
this number alone (kept, the run goes on); `transient`, the carrier down (backed off).
`deferred`: not called (or refused with 429) and not waited for within the run's bounds (the
carrier's rate limit, see shared/ratelimit.py): not the number's failure, asked again later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import httpx

from shared.errors import ProviderError
from shared.ratelimit import CallDeferred, CarrierPace

Outcome = Literal["released", "transient", "permanent", "refused", "misconfigured", "deferred"]
# How a release was proven: the carrier's record of the id, or its "not found" error.
Resolution = Literal["provider", "not_found"]
# Who a number the carrier refused waits on: a person (a lock to lift, a port-out to settle,
# an emergency address to remove), or the carrier itself (asked again after a backoff).
WaitsOn = Literal["person", "carrier"]
# Which setting an answer that stops the run shows to be wrong.
Cause = Literal["key", "base_url"]
# The error code kept on a number the carrier refused for itself alone (`status` counts them).
REFUSED_CODE = "provider_number_refused"


@dataclass(frozen=True)
class UpstreamResult:
    """What one upstream release did; `error` and `retry_after` only on failures."""

    outcome: Outcome
    error: ProviderError | None = None
    retry_after: float | None = None
    resolution: Resolution | None = None
    waits_on: WaitsOn | None = None  # only for `refused`
    # What was removed from the number at the carrier before its release, each step with the
    # carrier's proof (shared/detach.py); kept in its tombstone.
    detached: tuple[dict[str, Any], ...] = ()
    # How the carrier proved this release, as the ledger keeps it (None: the Telnyx proof
    # `shared.ledger.release_proof` describes).
    proof: dict[str, Any] | None = None
    # A proof that holds only where the key's account is proven to hold this store's numbers
    # (a "not found" read: another account's credentials would read the same).
    account_bound: bool = False

    @property
    def needs_account(self) -> bool:
        """Whether this release counts only once the account is proven."""
        return self.resolution == "not_found" or self.account_bound


RELEASED = UpstreamResult("released", resolution="provider")


class Provider(Protocol):
    """Releases a number held at the carrier; safe to call again for the same number."""

    name: str

    @property
    def pace(self) -> CarrierPace | None:
        """How its calls are paced to the carrier's rate limit (None: they are not)."""
        ...

    def check(self) -> UpstreamResult | None:
        """None when the carrier answers as configured; else why a run must not start."""
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


def json_body(response: httpx.Response) -> Any:
    """The body as JSON when the answer says it is JSON, else None."""
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return response.json()
    except ValueError:  # also UnicodeDecodeError
        return None


def answer_kind(response: httpx.Response) -> str:
    """`HTTP <status> <content type>`: what an answer was, for a message."""
    kind = response.headers.get("Content-Type", "no content type").split(";")[0]
    return f"HTTP {response.status_code} {kind}"


def carrier_error(
    carrier: str, message: str, *, code: str, fix: str, provider_code: object = None
) -> ProviderError:
    """Our envelope's error for what `carrier` answered (cut to what the row keeps)."""
    return ProviderError(
        message[:1000],
        code=code,
        fix=fix,
        provider=carrier,
        provider_code=str(provider_code)[:32] if provider_code is not None else None,
    )


def misconfiguration(carrier: str, *, lead: str, what: str, fix: str) -> UpstreamResult:
    """An answer that shows a setting wrong (`fix` says which): the run stops and says why."""
    return UpstreamResult(
        "misconfigured",
        carrier_error(carrier, f"{lead}: {what}.", code="provider_misconfigured", fix=fix),
    )


def unreachable(carrier: str, exc: Exception) -> UpstreamResult:
    """A call that failed before an answer was read: the carrier down, backed off."""
    return UpstreamResult(
        "transient",
        ProviderError(
            f"{carrier.title()} could not be reached or its answer read: {type(exc).__name__}.",
            code="provider_unreachable",
            fix="The purge retries later; check the carrier's status if it persists.",
            provider=carrier,
        ),
    )


@dataclass(frozen=True)
class Submitted:
    """An asynchronous release accepted by the carrier: its order (or job) id."""

    order_id: str


class AsyncProvider(Protocol):
    """A carrier that releases numbers by orders read later (Bandwidth's disconnect orders,
    Telnyx's deletion jobs): the numbers go to the `submitted` state with the order id; later
    runs read the order and settle each number by its own outcome."""

    name: str
    # At most this many numbers in one order.
    max_order: int

    @property
    def pace(self) -> CarrierPace | None: ...

    def check(self) -> UpstreamResult | None: ...

    def holds(self, provider_number_id: str) -> bool: ...

    def invalid(self, provider_number_id: str) -> UpstreamResult | None:
        """Why this stored id is never sent (None: it is a valid id of this carrier)."""
        ...

    def submit(self, provider_number_ids: list[str]) -> Submitted | UpstreamResult:
        """One order for these numbers: its id, or why none was placed (for all of them)."""
        ...

    def settle(
        self, order_id: str, provider_number_ids: list[str]
    ) -> dict[str, UpstreamResult] | UpstreamResult:
        """Each number's outcome in a settled order (numbers still pending are left out), or
        why the order could not be read."""
        ...

    def close(self) -> None: ...


def is_async(provider: object) -> bool:
    """Whether an adapter releases by orders (`AsyncProvider`)."""
    return callable(getattr(provider, "submit", None))


class HttpCarrier:
    """What the HTTP carriers' adapters share: one client for the carrier's base URL, its
    calls paced to the carrier's rate limit, and what a call that got no answer means."""

    name: ClassVar[str]
    # The setting of the carrier's base URL, named when it has no http(s) scheme.
    base_url_setting: ClassVar[str]

    def __init__(
        self,
        *,
        base_url: str,
        headers: dict[str, str],
        auth: tuple[str, str] | None = None,
        timeout: float = 10.0,
        pace: CarrierPace | None = None,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), auth=auth, headers=headers, timeout=timeout
        )
        self._timeout = timeout
        self.pace = pace or CarrierPace()

    def misconfigured(self, what: str) -> UpstreamResult:
        """The carrier's own `misconfigured` (base URL cause)."""
        raise NotImplementedError

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response | UpstreamResult:
        """The carrier's answer, or the failure of the call as an outcome. Paced to the
        carrier's rate limit: a 429 is waited out and asked again, within the run's bounds."""
        try:
            return self.pace.send(
                lambda: self._client.request(method, path, **kwargs), max_wait=self._timeout
            )
        except CallDeferred as deferred:
            return UpstreamResult("deferred", retry_after=deferred.wait)
        except httpx.UnsupportedProtocol:
            return self.misconfigured(f"{self.base_url_setting} has no http(s) scheme")
        except httpx.HTTPError as exc:  # timeouts, refused connections, undecodable bodies
            return unreachable(self.name, exc)

    def close(self) -> None:
        self._client.close()
