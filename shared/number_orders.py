"""Orders back (`POST /numbers/order`): a repurchase recorded under the orderId it is answered
with, so the order can be found again later with the same answer (`number_orders`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.accounts import require_account
from shared.clock import resolve_now
from shared.errors import ValidationError
from shared.lifecycle import lock_number, repurchase_number
from shared.models import NumberOrder

PREFIX = "ord_"
# An order id as made here: the prefix and 32 hex digits; anything else is no order of ours.
ID_LENGTH = len(PREFIX) + 32


def order_number(
    session: Session, *, account_id: str, phone_number: str, now: datetime | None = None
) -> dict[str, Any]:
    """Order back a number the account released (`repurchase_number`, its rules and errors)
    and record the order: `{"orderId", "status": "completed", "phoneNumber"}`."""
    instant = resolve_now(now)
    # Locked in repurchase_number's order (the account, then the number): the release this
    # order reverses is read before the repurchase clears it.
    require_account(session, account_id, lock=True)
    number = lock_number(session, phone_number)
    released_at = None if number is None else number.released_at
    repurchase_number(session, account_id=account_id, phone_number=phone_number, now=instant)
    # repurchase_number refused a number that is not this account's released one.
    assert number is not None
    assert released_at is not None
    order = NumberOrder(
        id=f"{PREFIX}{uuid.uuid4().hex}",
        account_id=number.account_id,
        phone_number=number.phone_number,
        number_id=number.id,
        released_at=released_at,
        ordered_at=instant,
    )
    session.add(order)
    session.flush()
    return order_answer(order)


def find_order(session: Session, *, account_id: str, order_id: object) -> dict[str, Any]:
    """The answer an order of this account was given; another account's order and an unknown
    one are alike `order_not_found`."""
    account = require_account(session, account_id)
    order = None
    if isinstance(order_id, str) and order_id.startswith(PREFIX) and len(order_id) == ID_LENGTH:
        order = session.scalars(
            select(NumberOrder).where(
                NumberOrder.id == order_id, NumberOrder.account_id == account.id
            )
        ).one_or_none()
    if order is None:
        raise ValidationError(
            "No such order on this account.",
            code="order_not_found",
            fix="Pass the orderId that POST /numbers/order answered (ord_...).",
        )
    return order_answer(order)


def order_answer(order: NumberOrder) -> dict[str, Any]:
    """`POST /numbers/order`'s answer for `order`."""
    return {"orderId": order.id, "status": "completed", "phoneNumber": order.phone_number}
