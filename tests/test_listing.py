"""GET /numbers/released: the account's repurchasable numbers, as the contract's 200 body."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import update
from sqlalchemy.orm import Session

import shared
from shared.models import PhoneNumber
from tests.factories import NOW, make_number

SECOND = timedelta(seconds=1)
MICROSECOND = timedelta(microseconds=1)
TOKYO = timezone(timedelta(hours=9))
RETENTION = timedelta(days=14)


def listed(session: Session, account_id: str = "acc_a", now: datetime = NOW) -> list[str]:
    body = shared.released_numbers_body(session, account_id=account_id, now=now)
    return [number["phoneNumber"] for number in body["numbers"]]


def parse_utc(value: str) -> datetime:
    assert value.endswith("Z"), value
    parsed = datetime.fromisoformat(value.removesuffix("Z") + "+00:00")
    assert parsed.utcoffset() == timedelta(0)
    return parsed


def test_exactly_the_accounts_repurchasable_numbers_newest_first(
    session: Session, released_numbers_validator: Draft202012Validator
) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550100")  # active
    make_number(session, account_id="acc_a", phone_number="+14155550101", released_at=NOW - SECOND)
    make_number(
        session, account_id="acc_a", phone_number="+14155550102", released_at=NOW - timedelta(3)
    )
    make_number(
        session,
        account_id="acc_a",
        phone_number="+14155550103",
        released_at=NOW - RETENTION + MICROSECOND,  # its last microsecond
    )
    make_number(
        session, account_id="acc_a", phone_number="+14155550104", released_at=NOW - RETENTION
    )  # at its deadline: gone
    make_number(
        session, account_id="acc_a", phone_number="+14155550105", released_at=NOW - timedelta(20)
    )
    make_number(session, account_id="acc_b", phone_number="+14155550200", released_at=NOW - SECOND)
    make_number(
        session,
        account_id="acc_a",
        phone_number="+14155550106",
        released_at=(NOW - timedelta(hours=1)).astimezone(TOKYO),
    )

    body = shared.released_numbers_body(session, account_id="acc_a", now=NOW)
    released_numbers_validator.validate(body)
    assert [n["phoneNumber"] for n in body["numbers"]] == [
        "+14155550101",
        "+14155550106",
        "+14155550102",
        "+14155550103",
    ]
    assert all(n["billingStatus"] == "released" for n in body["numbers"])
    assert listed(session, "acc_b") == ["+14155550200"]


def test_same_release_instant_is_ordered_deterministically(session: Session) -> None:
    for n in range(4):
        make_number(
            session, account_id="acc_a", phone_number=f"+1415555010{n}", released_at=NOW - SECOND
        )
    first = listed(session)
    assert sorted(first) == [f"+1415555010{n}" for n in range(4)]
    assert listed(session) == first


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (NOW, ["+14155550101"]),
        (NOW + RETENTION - SECOND, ["+14155550101"]),
        (NOW + RETENTION - MICROSECOND, ["+14155550101"]),
        (NOW + RETENTION, []),
        (NOW + RETENTION + SECOND, []),
        ((NOW + RETENTION - MICROSECOND).astimezone(TOKYO), ["+14155550101"]),
        ((NOW + RETENTION).astimezone(TOKYO), []),
    ],
)
def test_window_boundaries(session: Session, now: datetime, expected: list[str]) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550101", released_at=NOW)
    assert listed(session, now=now) == expected


def test_held_numbers_follow_the_same_window(session: Session) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550101", released_at=NOW)
    shared.set_purge_hold(session, phone_number="+14155550101", held=True)
    assert listed(session, now=NOW + RETENTION - SECOND) == ["+14155550101"]
    assert listed(session, now=NOW + RETENTION) == []


def test_numbers_claimed_by_the_purge_are_not_offered(session: Session) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550101", released_at=NOW - SECOND)
    make_number(session, account_id="acc_a", phone_number="+14155550102", released_at=NOW - SECOND)
    session.execute(
        update(PhoneNumber)
        .where(PhoneNumber.phone_number == "+14155550102")
        .values(purge_state="purging")
    )
    with pytest.raises(shared.ValidationError):
        shared.repurchase_number(session, account_id="acc_a", phone_number="+14155550102", now=NOW)
    assert listed(session) == ["+14155550101"]


def test_body_fields(session: Session, released_numbers_validator: Draft202012Validator) -> None:
    make_number(
        session,
        account_id="acc_a",
        phone_number="+14155550101",
        released_at=datetime(2025, 11, 26, 21, 30, 15, 250_000, tzinfo=TOKYO),
        label="Support line",
        monthly_price="1.2345",
        number_type="toll_free",
        a2p_status="approved",
    )
    body = shared.released_numbers_body(session, account_id="acc_a", now=NOW)
    released_numbers_validator.validate(body)
    assert body == {
        "numbers": [
            {
                "phoneNumber": "+14155550101",
                "label": "Support line",
                "createdAt": "2025-10-28T12:00:00Z",
                "countryCode": "US",
                "numberType": "toll_free",
                "billingStatus": "released",
                "nextBillingDate": "2025-11-28",
                "monthlyPrice": 1.2345,
                "a2pStatus": "approved",
                "releasedAt": "2025-11-26T12:30:15.250000Z",
            }
        ]
    }


@pytest.mark.parametrize(
    ("country_code", "phone_number", "label", "a2p_status", "expected_keys"),
    [
        ("US", "+14155550101", None, None, set()),
        ("US", "+14155550101", "", None, set()),
        ("US", "+14155550101", "Desk", None, {"label"}),
        ("US", "+14155550101", None, "pending", {"a2pStatus"}),
        ("US", "+14155550101", "Desk", "testing", {"label", "a2pStatus"}),
        ("GB", "+442071838750", "Desk", None, {"label"}),
        ("DE", "+4930123456", None, None, set()),
    ],
)
def test_optional_keys_are_omitted_when_empty(
    session: Session,
    released_numbers_validator: Draft202012Validator,
    country_code: str,
    phone_number: str,
    label: str | None,
    a2p_status: str | None,
    expected_keys: set[str],
) -> None:
    make_number(
        session,
        account_id="acc_a",
        phone_number=phone_number,
        country_code=country_code,
        label=label,
        a2p_status=a2p_status,
        released_at=NOW - SECOND,
    )
    body = shared.released_numbers_body(session, account_id="acc_a", now=NOW)
    released_numbers_validator.validate(body)
    (number,) = body["numbers"]
    required = {
        "phoneNumber",
        "createdAt",
        "countryCode",
        "numberType",
        "billingStatus",
        "nextBillingDate",
        "monthlyPrice",
        "releasedAt",
    }
    assert set(number) == required | expected_keys
    assert None not in number.values()
    assert "" not in number.values()


def test_active_number_body_has_no_release_keys(
    session: Session, phone_number_validator: Draft202012Validator
) -> None:
    body = make_number(session, account_id="acc_a", phone_number="+14155550100")
    phone_number_validator.validate(body)
    assert not {"releasedAt", "label", "a2pStatus"} & set(body)


@pytest.mark.parametrize(
    ("price", "expected"),
    [
        ("0", 0),
        ("0.0001", 0.0001),
        ("1.00", 1),
        ("1.5", 1.5),
        (3, 3),
        ("12345678.9999", 12345678.9999),
    ],
)
def test_monthly_price_is_a_json_number(session: Session, price: str, expected: float) -> None:
    make_number(
        session,
        account_id="acc_a",
        phone_number="+14155550101",
        released_at=NOW,
        monthly_price=price,
    )
    body = shared.released_numbers_body(session, account_id="acc_a", now=NOW)
    encoded = json.dumps(body)
    assert json.loads(encoded) == body
    shown = json.loads(encoded)["numbers"][0]["monthlyPrice"]
    assert isinstance(shown, int | float)
    assert not isinstance(shown, bool)
    assert shown == expected
    assert re.search(r'"monthlyPrice": [0-9]', encoded)


@pytest.mark.parametrize(
    "released_at",
    [
        NOW - SECOND,
        NOW - timedelta(days=13, hours=23),
        datetime(2025, 11, 27, 5, 0, 0, 1, tzinfo=timezone(timedelta(hours=-6))),
        datetime(2025, 11, 27, 20, 59, tzinfo=TOKYO),
    ],
)
def test_timestamps_are_utc_with_z(session: Session, released_at: datetime) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550101", released_at=released_at)
    (number,) = shared.released_numbers_body(session, account_id="acc_a", now=NOW)["numbers"]
    assert parse_utc(number["releasedAt"]) == released_at
    assert parse_utc(number["createdAt"]) == NOW - timedelta(days=30)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", number["nextBillingDate"])
    assert datetime.strptime(number["nextBillingDate"], "%Y-%m-%d").replace(tzinfo=UTC)


def test_other_accounts_see_nothing(session: Session) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550101", released_at=NOW)
    shared.open_account(session, account_id="acc_empty", plan="free")
    assert shared.released_numbers_body(session, account_id="acc_empty", now=NOW) == {"numbers": []}


@pytest.mark.parametrize(
    ("account_id", "now", "error", "code"),
    [
        ("acc_nobody", NOW, shared.UnauthorizedError, "account_not_found"),
        ("", NOW, shared.ValidationError, "invalid_account_id"),
        ("acc_a", datetime(2026, 11, 27, 12), shared.ValidationError, "naive_datetime"),
    ],
)
def test_error_bodies_follow_the_contract(
    session: Session,
    error_validator: Draft202012Validator,
    account_id: str,
    now: datetime,
    error: type[shared.ApiError],
    code: str,
) -> None:
    shared.open_account(session, account_id="acc_a", plan="paid")
    with pytest.raises(error) as caught:
        shared.released_numbers_body(session, account_id=account_id, now=now)
    body: dict[str, Any] = caught.value.body()
    error_validator.validate(body)
    assert body["error"]["code"] == code


def test_validators_reject_off_contract_bodies(
    released_numbers_validator: Draft202012Validator, error_validator: Draft202012Validator
) -> None:
    """The schema checks bite: a wrong body is caught, not waved through."""
    good = {
        "phoneNumber": "+14155550101",
        "createdAt": "2025-10-28T12:00:00Z",
        "countryCode": "US",
        "numberType": "local",
        "billingStatus": "released",
        "nextBillingDate": "2025-11-28",
        "monthlyPrice": 1.0,
        "releasedAt": "2025-11-27T12:00:00Z",
    }
    released_numbers_validator.validate({"numbers": [good]})
    for bad in [
        {**good, "monthlyPrice": "1.00"},
        {**good, "releasedAt": "yesterday"},
        {**good, "createdAt": "2026-10-28 12:00:00"},
        {**good, "label": None},
        {**good, "released_at": "2026-11-27T12:00:00Z"},
        {**good, "a2pStatus": "denied"},
        {**good, "countryCode": "us"},
    ]:
        assert not released_numbers_validator.is_valid({"numbers": [bad]}), bad
    assert not error_validator.is_valid({"trackingId": "t", "error": {"code": "x"}})
