"""Detach before release: what a number carries at the carrier is removed, and proven gone,
before the number itself is released there.

At Telnyx a number can carry resources of its own that its release does not remove: its 10DLC
campaign assignment (kept by the campaign registry under the E.164 number), its emergency
services with their address, and its CNAM listing. Each is a step, run in that order before
the release, each idempotent and proven by the carrier's own answer (docs/runbook.md,
"Detach before release", cites Telnyx's API reference for every call):

- campaign: `GET /v2/10dlc/phone_number_campaigns/{phoneNumber}` answers the assignment record,
  or Telnyx's documented not-found error (HTTP 404, `{"errors": [{"code": ...}]}`) when the
  number has none; `DELETE` on the same path removes it, and the assignment counts as removed
  once a GET answers that 404 again. While Telnyx still shows it `PENDING_UNASSIGNMENT` the
  number is kept (`detach_campaign_pending`); `FAILED_UNASSIGNMENT` needs a person. US numbers
  only: 10DLC does not exist elsewhere.
- emergency: `GET /v2/phone_numbers/{id}/voice` shows `emergency.emergency_enabled` and
  `emergency_status`; when on, `POST /v2/phone_numbers/jobs/update_emergency_settings` with
  `{"emergency_enabled": false, "phone_numbers": [id]}` (a background job) switches it off, and
  the voice settings read again must show it `disabled`. While the carrier still shows it
  `deprovisioning` the number is kept (`detach_emergency_pending`) and asked about again later.
- cnam: the same voice settings show `cnam_listing.cnam_listing_enabled`; when on,
  `PATCH /v2/phone_numbers/{id}/voice` with `{"cnam_listing": {"cnam_listing_enabled": false}}`
  answers the settings with it off.

A step's refusal keeps that number with the step's error (`detach_<step>_failed`, permanent for
a 4xx in Telnyx's shape, transient for a 429 or 5xx) and the run goes on; an answer that is not
Telnyx's (HTML, another record, a redirect, a refused key) proves nothing: `misconfigured`, the
run stops, as for the release itself. Each proof is kept for the tombstone (`detach_steps`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from shared.carriers.base import Provider, UpstreamResult
from shared.carriers.base import answer_kind as _answer
from shared.carriers.base import json_body as _json
from shared.carriers.telnyx import (
    TelnyxProvider,
    _error,
    _failure,
    _locked,
    _record_of,
    _telnyx_errors,
    misconfigured,
)
from shared.errors import ProviderError

# The ids and numbers the calls put in a path: never anything that could address another
# resource (the release validates its id the same way).
_NUMBER_ID = re.compile(r"[0-9]{1,32}")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")

CAMPAIGNS = "/v2/10dlc/phone_number_campaigns/"
EMERGENCY_JOB = "/v2/phone_numbers/jobs/update_emergency_settings"
STEP_NAMES = {
    "campaign": "its 10DLC campaign assignment",
    "emergency": "its emergency services (E911 address)",
    "cnam": "its CNAM listing",
}

Proof = dict[str, Any]


class Call(Protocol):
    def __call__(
        self, method: str, path: str, **kwargs: Any
    ) -> httpx.Response | UpstreamResult: ...


@dataclass(frozen=True)
class Target:
    """The number to detach: the carrier's id for it, its E.164 number, its country."""

    number_id: str
    phone_number: str
    country_code: str


def _proof(step: str, state: str, **evidence: Any) -> Proof:
    """One step's proof: `none` (nothing was there) or `removed` (we removed it), and how the
    carrier showed it."""
    return {"step": step, "proof": state, "evidence": evidence}


def _refused(step: str, call: str, response: httpx.Response) -> UpstreamResult:
    """An answer that is not the step's proof: whose problem it shows decides its scope."""
    errors = _telnyx_errors(_json(response))
    status = response.status_code
    if status in (401, 403) and not _locked(status, errors):
        if errors is None:  # HTML or another content type: not Telnyx answering
            return misconfigured(f"{call} answered {_answer(response)}, not Telnyx's answer")
        return misconfigured(f"{call} answered {_answer(response)}", cause="key")
    if status == 429 or status >= 500:
        failed = _failure(response, errors)
        return replace(failed, error=_step_error(step, call, response, errors))
    if 400 <= status < 500 and errors is not None:
        # This number's step refused (locked, unprocessable, ...): it is kept for a person and
        # the run goes on, as for a refused release (shared/provider.py).
        return UpstreamResult(
            "refused", _step_error(step, call, response, errors), waits_on="person"
        )
    return misconfigured(f"{call} answered {_answer(response)}, not Telnyx's answer")


def _step_error(
    step: str, call: str, response: httpx.Response, errors: list[dict[str, Any]] | None
) -> ProviderError:
    first = errors[0] if errors else {}
    detail = first.get("detail") or first.get("title")
    return _error(
        f"Removing {STEP_NAMES[step]} before the release: {call} answered "
        f"HTTP {response.status_code}" + (f": {str(detail)[:300]}" if detail else "."),
        code=f"detach_{step}_failed",
        fix="The number is kept and not released at the carrier. Transient failures are "
        "retried by the purge; otherwise settle it at the carrier, then "
        "`numbers-retention retry-upstream PHONE`.",
        provider_code=first.get("code"),
    )


@dataclass(frozen=True)
class Absent:
    """Telnyx's documented not-found answer: there is nothing (its error code)."""

    code: str


def _unassigning(assignment: dict[str, Any], call: str) -> UpstreamResult | None:
    """An assignment Telnyx is removing already (pending), or failed to remove (permanent)."""
    state = assignment.get("assignmentStatus")
    if state == "PENDING_UNASSIGNMENT":
        return _campaign_pending(assignment)
    if state == "FAILED_UNASSIGNMENT":
        reasons = str(assignment.get("failureReasons") or "no reason given")[:300]
        return UpstreamResult(
            "permanent",
            _error(
                f"Removing {STEP_NAMES['campaign']} before the release: {call} shows it "
                f"FAILED_UNASSIGNMENT: {reasons}",
                code="detach_campaign_failed",
                fix="Have the campaign's owner unassign the number (Telnyx portal), then "
                "`numbers-retention retry-upstream PHONE`.",
            ),
        )
    return None


def _campaign_pending(assignment: dict[str, Any]) -> UpstreamResult:
    return UpstreamResult(
        "transient",
        _error(
            f"Telnyx is still removing the number's 10DLC campaign assignment (campaign "
            f"{str(assignment.get('campaignId'))[:64]}, assignmentStatus "
            f"{assignment.get('assignmentStatus')!r}). The number is released once Telnyx no "
            "longer shows it.",
            code="detach_campaign_pending",
            fix="Nothing to do: the purge asks again after its backoff.",
        ),
    )


def _pending(job_id: str | None, status: object) -> UpstreamResult:
    job = f" (job {job_id})" if job_id else ""
    return UpstreamResult(
        "transient",
        _error(
            f"Telnyx is still switching off the number's emergency services{job}: its voice "
            f"settings show emergency_status {status!r}. The number is released once they show "
            "'disabled'.",
            code="detach_emergency_pending",
            fix="Nothing to do: the purge asks again after its backoff.",
        ),
    )


def _voice_settings(payload: object, number_id: str) -> dict[str, Any] | None:
    """Telnyx's voice settings of that very number (`{"data": {..., "record_type":
    "voice_settings"}}`), or None."""
    return _record_of(payload, number_id, "voice_settings")


def _section(settings: dict[str, Any], name: str) -> dict[str, Any]:
    section = settings.get(name)
    return section if isinstance(section, dict) else {}


class TelnyxDetacher:
    """The detach steps at Telnyx, through the provider's own HTTP client."""

    def __init__(self, call: Call) -> None:
        self._call = call

    def detach(self, target: Target) -> tuple[list[Proof], UpstreamResult | None]:
        """Run the steps in order; the proofs so far, and the failure that stopped them."""
        proofs: list[Proof] = []
        failure = self._campaign(target, proofs) or self._voice(target, proofs)
        return proofs, failure

    def _campaign(self, target: Target, proofs: list[Proof]) -> UpstreamResult | None:
        if target.country_code != "US":
            proofs.append(_proof("campaign", "none", reason="10DLC applies to US numbers only"))
            return None
        if not _E164.fullmatch(target.phone_number):  # the store's CHECK makes this unreachable
            return UpstreamResult(
                "permanent",
                _error(
                    f"The stored number {target.phone_number[:20]!r} is not E.164.",
                    code="detach_campaign_failed",
                    fix="Correct the number in the store, then `numbers-retention retry-upstream`.",
                ),
            )
        path = CAMPAIGNS + quote(target.phone_number, safe="+")
        assignment = self._assignment("GET", path, target)
        if not isinstance(assignment, dict):
            if isinstance(assignment, Absent):
                proofs.append(
                    _proof("campaign", "none", call=f"GET {path}", status=404, code=assignment.code)
                )
                return None
            return assignment
        # One already on its way out is not asked for again; a failed one needs a person.
        waiting = _unassigning(assignment, f"GET {path}")
        if waiting is not None:
            return waiting
        removed = self._assignment("DELETE", path, target)
        if isinstance(removed, UpstreamResult):
            return removed
        # Removed only once Telnyx no longer shows it: unassigning takes the carriers' time.
        confirm = self._assignment("GET", path, target)
        if isinstance(confirm, UpstreamResult):
            return confirm
        if isinstance(confirm, dict):
            return _unassigning(confirm, f"GET {path}") or _campaign_pending(confirm)
        record = removed if isinstance(removed, dict) else assignment
        proofs.append(
            _proof(
                "campaign",
                "removed",
                call=f"DELETE {path}",
                campaignId=str(record["campaignId"]),
                assignmentStatus=record.get("assignmentStatus"),
                confirmed_by=f"GET {path}",
                status=404,
            )
        )
        return None

    def _assignment(
        self, method: str, path: str, target: Target
    ) -> dict[str, Any] | Absent | UpstreamResult:
        """`GET` or `DELETE` the number's assignment: its record (the one deleted, for a
        DELETE), or Absent on Telnyx's documented not-found error."""
        response = self._call(method, path)
        if isinstance(response, UpstreamResult):
            return response
        payload = _json(response)
        errors = _telnyx_errors(payload)
        if response.status_code == 404 and errors is not None:
            return Absent(str(errors[0]["code"]))
        if (
            response.status_code == 200
            and isinstance(payload, dict)
            and payload.get("phoneNumber") == target.phone_number
            and payload.get("campaignId")
        ):
            return payload
        return _refused("campaign", f"{method} {path}", response)

    def _read_voice(self, target: Target) -> dict[str, Any] | UpstreamResult | None:
        """The number's voice settings; None when Telnyx answers its documented not-found
        error (it holds no such number, so nothing of it either)."""
        path = f"/v2/phone_numbers/{quote(target.number_id, safe='')}/voice"
        response = self._call("GET", path)
        if isinstance(response, UpstreamResult):
            return response
        payload = _json(response)
        if response.status_code == 404 and _telnyx_errors(payload) is not None:
            return None
        settings = _voice_settings(payload, target.number_id)
        if response.status_code == 200 and settings is not None:
            return settings
        if response.status_code == 200:
            return misconfigured(
                f"GET {path} answered {_answer(response)}, not the voice settings of "
                f"{target.number_id}"
            )
        return _refused("emergency", f"GET {path}", response)

    def _voice(self, target: Target, proofs: list[Proof]) -> UpstreamResult | None:
        settings = self._read_voice(target)
        if isinstance(settings, UpstreamResult):
            return settings
        if settings is None:
            call = f"GET /v2/phone_numbers/{target.number_id}/voice"
            for step in ("emergency", "cnam"):
                proofs.append(_proof(step, "none", call=call, status=404, reason="no such number"))
            return None
        return self._emergency(target, settings, proofs) or self._cnam(target, settings, proofs)

    def _emergency(
        self, target: Target, settings: dict[str, Any], proofs: list[Proof]
    ) -> UpstreamResult | None:
        read = f"GET /v2/phone_numbers/{target.number_id}/voice"
        if not isinstance(settings.get("emergency"), dict):  # no state to prove anything by
            return UpstreamResult(
                "permanent",
                _error(
                    f"Removing {STEP_NAMES['emergency']} before the release: {read} answered "
                    "voice settings without their emergency state.",
                    code="detach_emergency_failed",
                    fix="Check the number's emergency settings in the Telnyx portal, then "
                    "`numbers-retention retry-upstream PHONE`.",
                ),
            )
        emergency = _section(settings, "emergency")
        enabled, status = emergency.get("emergency_enabled"), emergency.get("emergency_status")
        if enabled is False and status == "disabled":
            proofs.append(_proof("emergency", "none", call=read, emergency_status=status))
            return None
        if status == "deprovisioning":  # switched off already, not yet done at the carrier
            return _pending(None, status)
        job = self._switch_off_emergency(target)
        if isinstance(job, UpstreamResult):
            return job
        settings_now = self._read_voice(target)
        if isinstance(settings_now, UpstreamResult):
            return settings_now
        emergency = _section(settings_now or {}, "emergency")
        status = emergency.get("emergency_status")
        if settings_now is not None and not (
            emergency.get("emergency_enabled") is False and status == "disabled"
        ):
            return _pending(job, status)
        proofs.append(
            _proof("emergency", "removed", call=f"POST {EMERGENCY_JOB}", job_id=job,
                   confirmed_by=read, emergency_status=status or "no such number")
        )  # fmt: skip
        return None

    def _switch_off_emergency(self, target: Target) -> str | UpstreamResult:
        """Ask Telnyx to switch the number's emergency services off; the job's id."""
        call = f"POST {EMERGENCY_JOB}"
        response = self._call(
            "POST",
            EMERGENCY_JOB,
            json={"emergency_enabled": False, "phone_numbers": [target.number_id]},
        )
        if isinstance(response, UpstreamResult):
            return response
        data = _json(response)
        job = data.get("data") if isinstance(data, dict) else None
        if not (
            response.status_code in (200, 202)
            and isinstance(job, dict)
            and job.get("record_type") == "phone_numbers_job"
            and isinstance(job.get("id"), str)
        ):
            return _refused("emergency", call, response)
        for failed in job.get("failed_operations") or []:
            if isinstance(failed, dict) and str(failed.get("id")) == target.number_id:
                errors = _telnyx_errors(failed) or [{"detail": "the job failed for this number"}]
                return UpstreamResult("permanent", _step_error("emergency", call, response, errors))
        return str(job["id"])

    def _cnam(
        self, target: Target, settings: dict[str, Any], proofs: list[Proof]
    ) -> UpstreamResult | None:
        path = f"/v2/phone_numbers/{quote(target.number_id, safe='')}/voice"
        listing = _section(settings, "cnam_listing")
        if listing.get("cnam_listing_enabled") is not True:  # documented default: false
            proofs.append(_proof("cnam", "none", call=f"GET {path}", cnam_listing_enabled=False))
            return None
        call = f"PATCH {path}"
        response = self._call("PATCH", path, json={"cnam_listing": {"cnam_listing_enabled": False}})
        if isinstance(response, UpstreamResult):
            return response
        answered = _voice_settings(_json(response), target.number_id)
        if response.status_code != 200 or answered is None:
            return _refused("cnam", call, response)
        if _section(answered, "cnam_listing").get("cnam_listing_enabled") is not False:
            error = _step_error("cnam", call, response, [{"detail": "the listing is still on"}])
            return UpstreamResult("transient", error)
        proofs.append(_proof("cnam", "removed", call=call, cnam_listing_enabled=False))
        return None


def detacher_for(provider: Provider) -> TelnyxDetacher | None:
    """The detach steps of this carrier; None where a number carries nothing to remove
    (no provider)."""
    if isinstance(provider, TelnyxProvider):
        return TelnyxDetacher(provider.request)
    return None


def release_detached(
    provider: Provider, *, number_id: str, phone_number: str, country_code: str
) -> UpstreamResult:
    """Detach the number at the carrier, then release it there; the result carries the
    detach proofs (`detached`). A step that fails is the number's outcome: not released."""
    detacher = detacher_for(provider)
    proofs: list[Proof] = []
    # An id that could address another resource is never sent: the release refuses it by
    # itself (invalid_provider_number_id), and nothing is detached.
    if detacher is not None and _NUMBER_ID.fullmatch(number_id):
        proofs, failure = detacher.detach(Target(number_id, phone_number, country_code))
        if failure is not None:
            return replace(failure, detached=tuple(proofs))
    return replace(provider.release(number_id), detached=tuple(proofs))
