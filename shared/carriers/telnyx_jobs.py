"""Telnyx's bulk deletion jobs: `POST /v2/phone_numbers/jobs/delete_phone_numbers` takes up to
1,000 numbers and answers 202 with a `phone_numbers_job`; `GET /v2/phone_numbers/jobs/{id}`
reads it later, its numbers moving from `pending_operations` to `successful_operations` or
`failed_operations` (each with Telnyx's `errors`). For a large backlog
(TELNYX_BULK_DELETE=true): the numbers go to the `submitted` state with the job id, and later
runs settle each number by its own operation (shared/purge/orders.py).
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from shared.carriers.base import REFUSED_CODE, Submitted, UpstreamResult, answer_kind, json_body
from shared.carriers.telnyx import (
    _NUMBER_ID,
    TelnyxProvider,
    _error,
    _failure,
    _first_error,
    _telnyx_errors,
    misconfigured,
)

JOBS = "/v2/phone_numbers/jobs"
_JOB_ID = re.compile(r"[0-9a-fA-F-]{1,64}")
# A job's numbers that Telnyx no longer holds: not found, as a DELETE's 404 (code 10005).
NOT_FOUND = "10005"


class TelnyxJobsProvider(TelnyxProvider):
    """Telnyx with its numbers released by bulk deletion jobs."""

    max_order = 1000

    def invalid(self, provider_number_id: str) -> UpstreamResult | None:
        if _NUMBER_ID.fullmatch(provider_number_id):
            return None
        return self.release(provider_number_id)  # refuses it without sending anything

    def submit(self, provider_number_ids: list[str]) -> Submitted | UpstreamResult:
        response = self._call(
            "POST",
            f"{JOBS}/delete_phone_numbers",
            json={"phone_numbers": provider_number_ids},
        )
        if isinstance(response, UpstreamResult):
            return response
        job = _job(json_body(response))
        if (
            response.status_code == 202
            and job is not None
            and job["type"] == "delete_phone_numbers"
        ):
            return Submitted(str(job["id"]))
        return self._stopping(response, "placing a deletion job")

    def settle(
        self, order_id: str, provider_number_ids: list[str]
    ) -> dict[str, UpstreamResult] | UpstreamResult:
        if not _JOB_ID.fullmatch(order_id):
            return misconfigured(f"the stored job id {order_id[:40]!r} is not Telnyx's")
        response = self._call("GET", f"{JOBS}/{order_id}")
        if isinstance(response, UpstreamResult):
            return response
        job = _job(json_body(response))
        if response.status_code != 200 or job is None or str(job["id"]) != order_id:
            return self._stopping(response, f"reading deletion job {order_id}")
        return _outcomes(job, order_id, provider_number_ids)

    def _stopping(self, response: httpx.Response, what: str) -> UpstreamResult:
        payload = json_body(response)
        errors = _telnyx_errors(payload)
        status = response.status_code
        if status in (401, 403) and payload is not None:
            return misconfigured(
                f"{what} answered {answer_kind(response)}{_first_error(payload)}", cause="key"
            )
        if status == 429 or status >= 500:
            return _failure(response, errors)
        return misconfigured(f"{what} answered {answer_kind(response)}")


def _job(payload: object) -> dict[str, Any] | None:
    data = payload.get("data") if isinstance(payload, dict) else None
    if isinstance(data, dict) and data.get("record_type") == "phone_numbers_job" and data.get("id"):
        return data
    return None


def _ids(job: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    operations = job.get(key)
    if not isinstance(operations, list):
        return {}
    return {str(op.get("id")): op for op in operations if isinstance(op, dict)}


def _outcomes(job: dict[str, Any], job_id: str, numbers: list[str]) -> dict[str, UpstreamResult]:
    """Each number's own operation in the job; numbers still pending are left out."""
    done, failed = _ids(job, "successful_operations"), _ids(job, "failed_operations")
    proof = {"call": f"POST {JOBS}/delete_phone_numbers", "job": job_id}
    outcomes: dict[str, UpstreamResult] = {}
    for number in numbers:
        if number in done:
            outcomes[number] = UpstreamResult(
                "released", resolution="provider", proof={"resolution": "provider", **proof}
            )
        elif number in failed:
            errors = _telnyx_errors({"errors": failed[number].get("errors")})
            code = str(errors[0]["code"]) if errors else None
            if code == NOT_FOUND:
                outcomes[number] = UpstreamResult(
                    "released",
                    resolution="not_found",
                    proof={"resolution": "not_found", **proof, "error": code},
                )
                continue
            detail = (errors[0].get("detail") or errors[0].get("title")) if errors else None
            outcomes[number] = UpstreamResult(
                "refused",
                _error(
                    f"Telnyx's deletion job {job_id} failed number {number}: "
                    f"{str(detail or 'no error given')[:300]}",
                    code=REFUSED_CODE,
                    fix="Settle it at Telnyx as its code says, then `numbers-retention "
                    "retry-upstream PHONE`.",
                    provider_code=code or "failed_operation",
                ),
                waits_on="person",
            )
    return outcomes
