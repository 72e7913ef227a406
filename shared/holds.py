"""Holds with a record: who kept a number from the purge, when and why; the list of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.clock import iso_timestamp, resolve_now
from shared.controls import operator_record
from shared.lifecycle import lock_number, set_purge_hold
from shared.models import PhoneNumber
from shared.retention import is_purgeable, repurchase_deadline


def hold_number(
    session: Session,
    *,
    phone_number: str,
    by: str,
    reason: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Keep a number from the purge, recording who, when and why; holding again updates it."""
    record = operator_record(by=by, reason=reason, now=now)
    # The `held` event is dated like the record.
    body = set_purge_hold(
        session, phone_number=phone_number, held=True, now=record.at, record=record
    )
    return body | record.as_dict()


def unhold_number(session: Session, *, phone_number: str) -> dict[str, Any]:
    """Lift a number's hold and forget its record; `wasHeld`: whether it was held at all."""
    number = lock_number(session, phone_number)
    was_held = bool(number is not None and number.purge_hold)
    return set_purge_hold(session, phone_number=phone_number, held=False) | {"wasHeld": was_held}


def list_holds(session: Session, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every held number with its record, oldest hold first; `overdue`: kept past its deadline."""
    now = resolve_now(now)
    numbers = session.scalars(
        select(PhoneNumber)
        .where(PhoneNumber.purge_hold.is_(True))
        .order_by(PhoneNumber.hold_set_at.asc().nulls_first(), PhoneNumber.id)
    ).all()
    return [
        {
            "phone_number": number.phone_number,
            "account_id": number.account_id,
            "billing_status": number.billing_status,
            "released_at": iso_timestamp(number.released_at) if number.released_at else None,
            "deadline": iso_timestamp(repurchase_deadline(number.released_at))
            if number.released_at
            else None,
            "overdue": number.released_at is not None
            and is_purgeable(number.released_at, now, held=False),
            "reason": number.hold_reason,
            "by": number.hold_set_by,
            "at": iso_timestamp(number.hold_set_at) if number.hold_set_at else None,
        }
        for number in numbers
    ]
