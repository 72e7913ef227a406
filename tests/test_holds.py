"""Holds with a record: who, when and why; listed oldest first; cleared with the hold."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import shared
from shared.controls import OperatorRecord, pause_purge, set_pace
from shared.errors import ValidationError
from shared.holds import hold_number, list_holds, unhold_number
from shared.models import NumberEvent, PhoneNumber
from tests.factories import NOW, make_number

DAY = timedelta(days=1)


@pytest.fixture
def numbers(session: Session) -> Session:
    make_number(
        session, account_id="acc_1", phone_number="+14155550101", released_at=NOW - 15 * DAY
    )
    make_number(session, account_id="acc_1", phone_number="+14155550102", released_at=NOW - DAY)
    make_number(session, account_id="acc_2", phone_number="+14155550103")
    return session


def assert_unheld_without_record(numbers: Session, phone_number: str) -> None:
    """The number is not held and keeps no trace of its hold (who, why, when)."""
    row = numbers.query(PhoneNumber).filter_by(phone_number=phone_number).one()
    assert (row.purge_hold, row.hold_reason, row.hold_set_by, row.hold_set_at) == (
        False,
        None,
        None,
        None,
    )


def test_a_hold_records_who_when_and_why_and_unhold_forgets_it(numbers: Session) -> None:
    body = hold_number(
        numbers, phone_number="+14155550101", by="alice", reason="dispute #4411", now=NOW - DAY
    )
    assert body == {
        "phoneNumber": "+14155550101",
        "held": True,
        "reason": "dispute #4411",
        "by": "alice",
        "at": "2025-11-26T12:00:00Z",
    }
    hold_number(numbers, phone_number="+14155550103", by="bob", now=NOW - 2 * DAY)
    hold_number(numbers, phone_number="+14155550102", by="carol", reason="legal", now=NOW)

    held = list_holds(numbers, now=NOW)
    assert [(h["phone_number"], h["by"], h["reason"]) for h in held] == [
        ("+14155550103", "bob", None),
        ("+14155550101", "alice", "dispute #4411"),
        ("+14155550102", "carol", "legal"),
    ]
    active, overdue, fresh = held
    assert (active["billing_status"], active["released_at"], active["overdue"]) == (
        "active",
        None,
        False,
    )
    assert (overdue["deadline"], overdue["overdue"]) == ("2025-11-26T12:00:00Z", True)
    assert fresh["overdue"] is False

    # Holding again replaces the record.
    hold_number(numbers, phone_number="+14155550101", by="dave", reason="still open", now=NOW)
    again = {h["phone_number"]: h for h in list_holds(numbers, now=NOW)}["+14155550101"]
    assert (again["by"], again["reason"], again["at"]) == (
        "dave",
        "still open",
        "2025-11-27T12:00:00Z",
    )

    assert unhold_number(numbers, phone_number="+14155550101") == {
        "phoneNumber": "+14155550101",
        "held": False,
        "wasHeld": True,
    }
    assert_unheld_without_record(numbers, "+14155550101")
    assert [h["phone_number"] for h in list_holds(numbers, now=NOW)] == [
        "+14155550103",
        "+14155550102",
    ]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"phone_number": "+14155559999", "by": "ops"}, "number_not_found"),
        ({"phone_number": "4155550101", "by": "ops"}, "invalid_phone_number"),
        ({"phone_number": "+14155550101", "by": "ops", "reason": "x" * 501}, "invalid_reason"),
        ({"phone_number": "+14155550101", "by": ""}, "invalid_by"),
    ],
)
def test_a_bad_hold_is_refused_and_changes_nothing(
    numbers: Session, kwargs: dict[str, str], code: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        hold_number(numbers, now=NOW, **kwargs)
    assert refused.value.code == code
    assert list_holds(numbers, now=NOW) == []


def test_unhold_of_an_unknown_number_is_not_found(numbers: Session) -> None:
    with pytest.raises(ValidationError) as refused:
        unhold_number(numbers, phone_number="+14155559999")
    assert refused.value.code == "number_not_found"


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_the_schema_refuses_a_hold_record_on_a_number_not_held(numbers: Session) -> None:
    with pytest.raises(IntegrityError), numbers.begin_nested():
        numbers.execute(
            update(PhoneNumber)
            .where(PhoneNumber.phone_number == "+14155550101")
            .values(hold_set_by="ops", hold_set_at=NOW)
        )
    assert (
        numbers.scalar(text("SELECT count(*) FROM phone_numbers WHERE hold_set_by IS NOT NULL"))
        == 0
    )


def test_lifting_a_recorded_hold_through_set_purge_hold_forgets_the_record(
    numbers: Session,
) -> None:
    hold_number(numbers, phone_number="+14155550101", by="alice", reason="dispute", now=NOW)
    assert shared.set_purge_hold(numbers, phone_number="+14155550101", held=False, now=NOW) == {
        "phoneNumber": "+14155550101",
        "held": False,
    }
    assert_unheld_without_record(numbers, "+14155550101")
    assert list_holds(numbers, now=NOW) == []


def test_the_held_event_is_dated_like_the_hold_record(numbers: Session) -> None:
    hold_number(numbers, phone_number="+14155550102", by="alice", now=NOW - DAY)
    row = numbers.query(PhoneNumber).filter_by(phone_number="+14155550102").one()
    occurred = numbers.scalars(
        select(NumberEvent.occurred_at).where(
            NumberEvent.phone_number == "+14155550102", NumberEvent.kind == "held"
        )
    ).all()
    assert occurred == [row.hold_set_at] == [NOW - DAY]


def test_set_purge_hold_takes_a_record_only_with_a_hold_and_checks_it(numbers: Session) -> None:
    record = OperatorRecord(reason="dispute", by="alice", at=NOW)
    with pytest.raises(ValidationError) as refused:
        shared.set_purge_hold(numbers, phone_number="+14155550101", held=False, record=record)
    assert refused.value.code == "invalid_hold_record"
    with pytest.raises(ValidationError) as refused:
        shared.set_purge_hold(
            numbers,
            phone_number="+14155550101",
            held=True,
            record=OperatorRecord(reason="dispute", by="", at=NOW),
        )
    assert refused.value.code == "invalid_by"
    assert list_holds(numbers, now=NOW) == []
    shared.set_purge_hold(numbers, phone_number="+14155550101", held=True, now=NOW, record=record)
    held = list_holds(numbers, now=NOW)
    assert [(h["reason"], h["by"], h["at"]) for h in held] == [
        ("dispute", "alice", "2025-11-27T12:00:00Z")
    ]


@pytest.mark.parametrize("act", [hold_number, pause_purge, set_pace])
def test_a_bad_by_is_refused_with_a_hint_for_an_operator(
    numbers: Session, act: Callable[..., object]
) -> None:
    kwargs = {"hold_number": {"phone_number": "+14155550101"}, "set_pace": {"rows_per_second": 5}}
    with pytest.raises(ValidationError) as refused:
        act(numbers, by="x" * 65, now=NOW, **kwargs.get(act.__name__, {}))
    assert (refused.value.code, refused.value.fix) == (
        "invalid_by",
        "Pass who acts, e.g. --by alice or an operator id of at most 64 printable characters.",
    )
