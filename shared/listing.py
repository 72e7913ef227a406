"""API bodies: a number as the API's PhoneNumber object, and the released-numbers list."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, bindparam, select
from sqlalchemy.orm import Session

from shared import validation
from shared.accounts import require_account
from shared.clock import iso_timestamp, resolve_now
from shared.models import CampaignAssignment, PhoneNumber
from shared.retention import cutoff, repurchasable_after, repurchasable_where


def number_body(number: PhoneNumber, campaign_status: str | None) -> dict[str, Any]:
    """The API's PhoneNumber object: camelCase, optional keys left out when empty."""
    return _body(
        (
            number.phone_number, number.label, number.created_at, number.country_code,
            number.number_type, number.billing_status, number.next_billing_date,
            number.monthly_price, number.released_at, campaign_status,
        )
    )  # fmt: skip


def _body(row: tuple[Any, ...]) -> dict[str, Any]:
    # Plain values, not a model: the list builds its bodies straight from its rows (the
    # columns of _LIST, in order).
    (
        phone_number, label, created_at, country_code, number_type, billing_status,
        next_billing_date, monthly_price, released_at, campaign_status,
    ) = row  # fmt: skip
    body: dict[str, Any] = {"phoneNumber": phone_number}
    if label:
        body["label"] = label
    body["createdAt"] = iso_timestamp(created_at)
    body["countryCode"] = country_code
    body["numberType"] = number_type
    body["billingStatus"] = billing_status
    body["nextBillingDate"] = next_billing_date.isoformat()
    body["monthlyPrice"] = float(monthly_price)
    # 10DLC readiness is a US notion: derived from the assignment, for US numbers only.
    if campaign_status and country_code == "US":
        body["a2pStatus"] = campaign_status
    if released_at is not None:
        body["releasedAt"] = iso_timestamp(released_at)
    return body


# The list as plain Core columns, built once: rows come back as tuples, with no ORM objects
# to build (identity map, instance state) and no statement to build per call, which was most
# of the call's time (bench/RESULTS.md). The account and the cutoff are its parameters.
_NUMBERS = PhoneNumber.__table__.c
_CAMPAIGNS = CampaignAssignment.__table__.c
_LIST = (
    select(
        _NUMBERS.phone_number,
        _NUMBERS.label,
        _NUMBERS.created_at,
        _NUMBERS.country_code,
        _NUMBERS.number_type,
        _NUMBERS.billing_status,
        _NUMBERS.next_billing_date,
        _NUMBERS.monthly_price,
        _NUMBERS.released_at,
        _CAMPAIGNS.status,
    )
    .outerjoin_from(
        PhoneNumber.__table__, CampaignAssignment.__table__, _CAMPAIGNS.number_id == _NUMBERS.id
    )
    .where(
        _NUMBERS.account_id == bindparam("account_id"),
        repurchasable_where(repurchasable_after(_NUMBERS.released_at, bindparam("cutoff"))),
    )
    .order_by(_NUMBERS.released_at.desc(), _NUMBERS.id.desc())
)


def released_numbers_body(
    session: Session, *, account_id: str, now: datetime | None = None
) -> dict[str, Any]:
    """GET /numbers/released: the account's repurchasable numbers, newest release first."""
    params = {"account_id": validation.account_id(account_id), "cutoff": cutoff(resolve_now(now))}
    bind = session.get_bind(PhoneNumber)
    if isinstance(bind, Engine) and not (
        session.in_transaction() or session.new or session.dirty or session.deleted
    ):
        # The API's usual call, on a fresh session: one statement reads one consistent
        # snapshot without a transaction, so it runs in autocommit, which spares the BEGIN and
        # ROLLBACK round trips (two of the three the call made; bench/RESULTS.md). The session
        # stays as it was: nothing of the caller's can be uncommitted yet.
        with bind.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            rows = connection.execute(_LIST, params).all()
    else:
        rows = session.connection().execute(_LIST, params).all()
    numbers = [_body(row) for row in cast(list[tuple[Any, ...]], rows)]
    if not numbers:
        # Only an empty list needs to tell "no numbers" from "no such account" (one query less
        # on the hot path).
        require_account(session, account_id)
    return {"numbers": numbers}
