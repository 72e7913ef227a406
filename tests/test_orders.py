"""Orders back: recorded under the orderId they are answered with, found again with the same
answer, by their account only (on PostgreSQL and SQLite)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import shared
from shared.errors import UsageLimitError, ValidationError
from shared.models import NumberOrder, PhoneNumber
from tests.factories import NOW, make_number

RELEASED, ACTIVE, OTHERS = "+14155550101", "+14155550102", "+14155550201"


@pytest.fixture
def numbers(session: Session) -> Session:
    """acc_a: a number released a day before NOW and an active one; acc_b: a released one."""
    make_number(session, account_id="acc_a", phone_number=RELEASED, released_at=NOW - timedelta(1))
    make_number(session, account_id="acc_a", phone_number=ACTIVE)
    make_number(session, account_id="acc_b", phone_number=OTHERS, released_at=NOW - timedelta(1))
    return session


def test_an_order_is_recorded_under_the_id_it_answers(numbers: Session) -> None:
    answer = shared.order_number(numbers, account_id="acc_a", phone_number=RELEASED, now=NOW)
    assert answer["orderId"].startswith("ord_")
    assert answer == {"orderId": answer["orderId"], "status": "completed", "phoneNumber": RELEASED}
    number = numbers.scalars(select(PhoneNumber).where(PhoneNumber.phone_number == RELEASED)).one()
    assert number.billing_status == "active"
    order = numbers.get(NumberOrder, answer["orderId"])
    assert order is not None
    assert (order.account_id, order.phone_number, order.number_id) == ("acc_a", RELEASED, number.id)
    # The release it reversed, and the repurchase's instant.
    assert (order.released_at, order.ordered_at) == (NOW - timedelta(1), NOW)
    # Found again, with the same answer.
    assert shared.find_order(numbers, account_id="acc_a", order_id=answer["orderId"]) == answer


@pytest.mark.parametrize(
    ("account", "number", "refusal"),
    [
        ("acc_a", ACTIVE, "number_not_released"),
        ("acc_a", OTHERS, "number_not_found"),
        ("acc_a", "+14155550999", "number_not_found"),
    ],
)
def test_a_refused_order_records_nothing(
    numbers: Session, account: str, number: str, refusal: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        shared.order_number(numbers, account_id=account, phone_number=number, now=NOW)
    assert raised.value.code == refusal
    assert numbers.scalars(select(NumberOrder)).all() == []


def test_an_order_past_the_plan_cap_records_nothing(session: Session) -> None:
    make_number(
        session,
        account_id="acc_free",
        phone_number=RELEASED,
        plan="free",
        released_at=NOW - timedelta(1),
    )
    make_number(session, account_id="acc_free", phone_number=ACTIVE, plan="free")
    with pytest.raises(UsageLimitError):
        shared.order_number(session, account_id="acc_free", phone_number=RELEASED, now=NOW)
    assert session.scalars(select(NumberOrder)).all() == []


@pytest.mark.parametrize(
    "order_id", ["theirs", "ord_" + "0" * 32, "ord_", "nope", "ord_%", 7, None]
)
def test_another_accounts_order_is_not_found_like_an_unknown_one(
    numbers: Session, order_id: object
) -> None:
    theirs = shared.order_number(numbers, account_id="acc_b", phone_number=OTHERS, now=NOW)
    with pytest.raises(ValidationError) as raised:
        shared.find_order(
            numbers,
            account_id="acc_a",
            order_id=theirs["orderId"] if order_id == "theirs" else order_id,
        )
    assert raised.value.code == "order_not_found"
    assert raised.value.body()["error"] == {
        "code": "order_not_found",
        "message": "No such order on this account.",
        "fix": "Pass the orderId that POST /numbers/order answered (ord_...).",
    }


def test_the_store_refuses_an_order_id_of_another_shape(numbers: Session) -> None:
    number = numbers.scalars(select(PhoneNumber).where(PhoneNumber.phone_number == RELEASED)).one()
    nested = numbers.begin_nested()
    numbers.add(
        NumberOrder(
            id="order-1",
            account_id="acc_a",
            phone_number=RELEASED,
            number_id=number.id,
            released_at=NOW,
            ordered_at=NOW,
        )
    )
    with pytest.raises(IntegrityError):
        numbers.flush()
    nested.rollback()
