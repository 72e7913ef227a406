"""API bodies: a number as the seed's PhoneNumber object, and the released-numbers list."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.orm import Session

from shared import validation
from shared.errors import UnauthorizedError
from shared.models import Account, CampaignAssignment, PhoneNumber
from shared.retention import repurchasable_clause, resolve_now


def iso_timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with a Z, e.g. 2026-11-27T09:30:00.123456Z."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def a2p_status(number: PhoneNumber, campaign_status: str | None) -> str | None:
    """10DLC readiness is a US notion: derived from the assignment, for US numbers only."""
    return campaign_status if number.country_code == "US" else None


def number_body(number: PhoneNumber, campaign_status: str | None) -> dict[str, Any]:
    """The seed's PhoneNumber object: camelCase, optional keys left out when empty."""
    body: dict[str, Any] = {"phoneNumber": number.phone_number}
    if number.label:
        body["label"] = number.label
    body |= {
        "createdAt": iso_timestamp(number.created_at),
        "countryCode": number.country_code,
        "numberType": number.number_type,
        "billingStatus": number.billing_status,
        "nextBillingDate": number.next_billing_date.isoformat(),
        "monthlyPrice": float(number.monthly_price),
    }
    status = a2p_status(number, campaign_status)
    if status:
        body["a2pStatus"] = status
    if number.released_at is not None:
        body["releasedAt"] = iso_timestamp(number.released_at)
    return body


def offered(now: datetime) -> ColumnElement[bool]:
    """Numbers the account can buy back at `now`: released, in their window, not claimed."""
    return and_(
        PhoneNumber.billing_status == "released",
        PhoneNumber.purge_state.is_(None),
        repurchasable_clause(PhoneNumber.released_at, now),
    )


def require_account(session: Session, account_id: object, *, lock: bool = False) -> Account:
    """The account, or a 401: the API only acts for an account it knows."""
    query = select(Account).where(Account.id == validation.account_id(account_id))
    account = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if account is None:
        raise UnauthorizedError(
            "No such account.",
            code="account_not_found",
            fix="Open the account first, or check the account id your credentials belong to.",
        )
    return account


def released_numbers_body(
    session: Session, *, account_id: str, now: datetime | None = None
) -> dict[str, Any]:
    """GET /numbers/released: the account's repurchasable numbers, newest release first."""
    now = resolve_now(now)
    rows = session.execute(
        select(PhoneNumber, CampaignAssignment.status)
        .outerjoin(CampaignAssignment, CampaignAssignment.number_id == PhoneNumber.id)
        .where(PhoneNumber.account_id == validation.account_id(account_id), offered(now))
        .order_by(PhoneNumber.released_at.desc(), PhoneNumber.id.desc())
    ).all()
    if not rows:
        # Only an empty list needs to tell "no numbers" from "no such account" (one query less
        # on the hot path).
        require_account(session, account_id)
    return {"numbers": [number_body(number, status) for number, status in rows]}
