"""Tombstones: what a purged number was, when it went, and how it was settled upstream."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import literal

from shared.models import CampaignAssignment, PurgedNumber

TOMBSTONE_COLUMNS = (
    "number_id", "account_id", "phone_number", "label", "created_at", "country_code",
    "number_type", "next_billing_date", "monthly_price", "released_at", "provider_number_id",
    "campaign_id", "a2p_status", "purged_at", "run_id", "provider", "upstream_released_at",
    "resolution", "resolved_by", "resolution_note", "carrier", "disconnect_date",
    "disconnect_reason",
)  # fmt: skip


def tombstone_values(
    number: Any,
    *,
    now: datetime,
    run_id: str,
    provider: str | None = None,
    resolution: str | None = None,
    resolved_by: str | None = None,
    note: str | None = None,
    carrier: str = "none",
    reason: str = "released",
) -> list[Any]:
    """The tombstone's values in TOMBSTONE_COLUMNS order, from the number's columns `number`
    (the table's or a CTE's) and its campaign assignment (outer-joined by the caller).

    `provider`: who released the number upstream in this run (None: nothing upstream);
    `resolution`: how that was proven ('provider', 'not_found', 'no_provider_id', 'operator').
    The ledger: `carrier` held the number ('none': no carrier configured), disconnected for
    `reason` ('released', 'operator', 'ported_out') on the UTC date of `now`.
    """
    values = {
        "number_id": number.id,
        "campaign_id": CampaignAssignment.campaign_id,
        "a2p_status": CampaignAssignment.status,
        "purged_at": literal(now, PurgedNumber.purged_at.type),
        "run_id": literal(run_id),
        "provider": literal(provider, PurgedNumber.provider.type),
        "upstream_released_at": literal(
            now if provider else None, PurgedNumber.upstream_released_at.type
        ),
        "resolution": literal(resolution, PurgedNumber.resolution.type),
        "resolved_by": literal(resolved_by, PurgedNumber.resolved_by.type),
        "resolution_note": literal(note, PurgedNumber.resolution_note.type),
        "carrier": literal(carrier, PurgedNumber.carrier.type),
        "disconnect_date": literal(now.astimezone(UTC).date(), PurgedNumber.disconnect_date.type),
        "disconnect_reason": literal(reason, PurgedNumber.disconnect_reason.type),
    }
    return [values[name] if name in values else number[name] for name in TOMBSTONE_COLUMNS]
