"""Accounts and numbers through their life, on both backends; a refusal changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

import shared
from shared.models import CampaignAssignment, PhoneNumber
from tests.factories import NOW, REGISTERED_BEFORE, make_number, snapshot, valid_order

SECOND = timedelta(seconds=1)
MICROSECOND = timedelta(microseconds=1)
TOKYO = timezone(timedelta(hours=9))
NEW_YORK_WINTER = timezone(timedelta(hours=-5))
CREATED_AT = "2025-10-28T12:00:00Z"  # NOW - 30 days, as make_number registers


def register(session: Session, **overrides: Any) -> dict[str, Any]:
    """register_number with a valid order, overridden field by field."""
    return shared.register_number(session, **valid_order(**overrides))


def stored(session: Session, phone_number: str) -> PhoneNumber:
    row = session.scalars(select(PhoneNumber).where(PhoneNumber.phone_number == phone_number))
    return row.one()


def released_list(session: Session, account_id: str, now: datetime = NOW) -> list[str]:
    body = shared.released_numbers_body(session, account_id=account_id, now=now)
    return [number["phoneNumber"] for number in body["numbers"]]


# --- accounts and registration ---------------------------------------------------------------


@pytest.mark.parametrize("plan", ["free", "paid"])
def test_open_account(session: Session, plan: str) -> None:
    assert shared.open_account(session, account_id="acc_new", plan=plan) == {
        "accountId": "acc_new",
        "plan": plan,
    }
    assert shared.released_numbers_body(session, account_id="acc_new", now=NOW) == {"numbers": []}


def test_register_number(session: Session, phone_number_validator: Draft202012Validator) -> None:
    shared.open_account(session, account_id="acc_a", plan="paid")
    body = register(session, monthly_price="1.50", label="Front desk", provider_number_id="1001")
    assert body == {
        "phoneNumber": "+14155550999",
        "label": "Front desk",
        "createdAt": "2025-11-27T12:00:00Z",
        "countryCode": "US",
        "numberType": "local",
        "billingStatus": "active",
        "nextBillingDate": "2025-12-27",
        "monthlyPrice": 1.5,
    }
    phone_number_validator.validate(body)
    row = stored(session, "+14155550999")
    assert (row.account_id, row.billing_status, row.released_at) == ("acc_a", "active", None)
    assert row.created_at == NOW
    assert row.monthly_price == Decimal("1.50")
    assert (row.provider_number_id, row.purge_hold, row.purge_state) == ("1001", False, None)


@pytest.mark.parametrize(
    ("now", "created_at", "next_billing_date"),
    [
        (NOW, "2025-11-27T12:00:00Z", "2025-12-27"),
        (datetime(2026, 1, 31, 8, 0, tzinfo=UTC), "2026-01-31T08:00:00Z", "2026-02-28"),
        # Past instants only: a write path refuses a `now` ahead of the host's clock.
        (datetime(2024, 1, 31, 8, 0, tzinfo=UTC), "2024-01-31T08:00:00Z", "2024-02-29"),
        (
            datetime(2025, 12, 15, 0, 0, 0, 250_000, tzinfo=UTC),
            "2025-12-15T00:00:00.250000Z",
            "2026-01-15",
        ),
        # 23:30 in New York is already the next day in UTC: the date follows UTC.
        (
            datetime(2025, 12, 31, 23, 30, tzinfo=NEW_YORK_WINTER),
            "2026-01-01T04:30:00Z",
            "2026-02-01",
        ),
        (datetime(2025, 11, 28, 1, 0, tzinfo=TOKYO), "2025-11-27T16:00:00Z", "2025-12-27"),
    ],
)
def test_register_times_are_utc(
    session: Session, now: datetime, created_at: str, next_billing_date: str
) -> None:
    shared.open_account(session, account_id="acc_a", plan="paid")
    body = register(session, now=now)
    assert (body["createdAt"], body["nextBillingDate"]) == (created_at, next_billing_date)
    assert stored(session, "+14155550999").created_at == now


@pytest.mark.parametrize(
    ("price", "shown", "kept"),
    [
        ("1.00", 1.0, Decimal("1")),
        ("0", 0.0, Decimal("0")),
        (2, 2.0, Decimal("2")),
        (0.5, 0.5, Decimal("0.5")),
        (Decimal("0.1234"), 0.1234, Decimal("0.1234")),
        ("99999999", 99999999.0, Decimal("99999999")),
    ],
)
def test_monthly_price_is_a_number(
    session: Session, price: object, shown: float, kept: Decimal
) -> None:
    shared.open_account(session, account_id="acc_a", plan="paid")
    body = register(session, monthly_price=price)
    assert type(body["monthlyPrice"]) is float
    assert body["monthlyPrice"] == shown
    assert stored(session, "+14155550999").monthly_price == kept


@pytest.mark.parametrize(("plan", "cap"), [("free", 1), ("paid", 49)])
def test_plan_caps_active_numbers(session: Session, plan: str, cap: int) -> None:
    shared.open_account(session, account_id="acc_cap", plan=plan)
    for n in range(cap):
        register(session, account_id="acc_cap", phone_number=f"+1415555{n:04d}")
    before = snapshot(session)
    with pytest.raises(shared.UsageLimitError) as caught:
        register(session, account_id="acc_cap", phone_number="+14155559999")
    assert (caught.value.status, caught.value.code) == (402, "plan_limit_reached")
    assert snapshot(session) == before
    # A released number no longer counts against the cap.
    shared.release_number(session, account_id="acc_cap", phone_number="+14155550000", now=NOW)
    body = register(session, account_id="acc_cap", phone_number="+14155559999")
    assert body["billingStatus"] == "active"


def test_other_accounts_do_not_count_against_the_cap(session: Session) -> None:
    make_number(session, account_id="acc_other", phone_number="+14155550100", plan="free")
    shared.open_account(session, account_id="acc_free", plan="free")
    assert register(session, account_id="acc_free")["billingStatus"] == "active"


# --- release and repurchase ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "released_at"),
    [
        (NOW, "2025-11-27T12:00:00Z"),
        (datetime(2025, 11, 27, 21, 0, tzinfo=TOKYO), "2025-11-27T12:00:00Z"),
        (datetime(2025, 11, 27, 7, 0, 0, 5, tzinfo=NEW_YORK_WINTER), "2025-11-27T12:00:00.000005Z"),
        # Releasing at the very instant of registration is allowed.
        (NOW - REGISTERED_BEFORE, CREATED_AT),
    ],
)
def test_release_answer(session: Session, now: datetime, released_at: str) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550100")
    answer = shared.release_number(
        session, account_id="acc_a", phone_number="+14155550100", now=now
    )
    assert answer == {"phoneNumber": "+14155550100", "released": True, "releasedAt": released_at}
    row = stored(session, "+14155550100")
    assert (row.billing_status, row.released_at) == ("released", now)
    # No refund for the current month: the billing date is left as it was.
    assert row.next_billing_date.isoformat() == "2025-11-28"


def test_repurchase(session: Session, phone_number_validator: Draft202012Validator) -> None:
    released_at = NOW - timedelta(days=3)
    make_number(
        session,
        account_id="acc_a",
        phone_number="+14155550100",
        released_at=released_at,
        label="Sales",
        monthly_price="2.25",
    )
    body = shared.repurchase_number(
        session, account_id="acc_a", phone_number="+14155550100", now=NOW
    )
    assert body == {
        "phoneNumber": "+14155550100",
        "label": "Sales",
        "createdAt": CREATED_AT,
        "countryCode": "US",
        "numberType": "local",
        "billingStatus": "active",
        "nextBillingDate": "2025-12-27",
        "monthlyPrice": 2.25,
    }
    phone_number_validator.validate(body)
    row = stored(session, "+14155550100")
    assert (row.billing_status, row.released_at, row.created_at) == (
        "active",
        None,
        NOW - REGISTERED_BEFORE,
    )
    assert released_list(session, "acc_a") == []


def test_repurchase_keeps_the_campaign_status(session: Session) -> None:
    make_number(
        session,
        account_id="acc_a",
        phone_number="+14155550100",
        released_at=NOW - timedelta(days=1),
        a2p_status="approved",
    )
    body = shared.repurchase_number(
        session, account_id="acc_a", phone_number="+14155550100", now=NOW
    )
    assert body["a2pStatus"] == "approved"


RELEASED = NOW - timedelta(days=10)
DEADLINE = RELEASED + timedelta(days=14)


@pytest.mark.parametrize(
    ("now", "allowed"),
    [
        (RELEASED, True),
        (RELEASED + timedelta(days=1), True),
        (DEADLINE - SECOND, True),
        (DEADLINE - MICROSECOND, True),
        (DEADLINE, False),
        (DEADLINE + MICROSECOND, False),
        (DEADLINE + SECOND, False),
        (DEADLINE.astimezone(TOKYO) - SECOND, True),
        (DEADLINE.astimezone(TOKYO), False),
    ],
)
def test_repurchase_window(session: Session, now: datetime, allowed: bool) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550100", released_at=RELEASED)
    if allowed:
        body = shared.repurchase_number(
            session, account_id="acc_a", phone_number="+14155550100", now=now
        )
        assert body["billingStatus"] == "active"
        assert body["createdAt"] == CREATED_AT
        return
    before = snapshot(session)
    with pytest.raises(shared.ValidationError) as caught:
        shared.repurchase_number(session, account_id="acc_a", phone_number="+14155550100", now=now)
    assert caught.value.code == "repurchase_window_closed"
    assert "2025-12-01T12:00:00Z" in caught.value.message  # the deadline, in UTC
    assert snapshot(session) == before


@pytest.mark.parametrize(
    "later", [timedelta(0), timedelta(hours=1), timedelta(days=14) - MICROSECOND]
)
def test_ordering_own_released_number_reactivates_it(session: Session, later: timedelta) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550100", released_at=RELEASED)
    row_id = stored(session, "+14155550100").id
    body = register(session, phone_number="+14155550100", now=RELEASED + later)
    assert body["billingStatus"] == "active"
    assert body["createdAt"] == CREATED_AT
    assert "releasedAt" not in body
    row = stored(session, "+14155550100")
    assert (row.id, row.released_at, row.created_at) == (row_id, None, NOW - REGISTERED_BEFORE)
    assert session.scalar(select(func.count()).select_from(PhoneNumber)) == 1


def test_release_then_repurchase_round_trip(session: Session) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550100")
    for day in range(3):
        at = NOW + timedelta(days=day)
        shared.release_number(session, account_id="acc_a", phone_number="+14155550100", now=at)
        assert released_list(session, "acc_a", at) == ["+14155550100"]
        shared.repurchase_number(
            session, account_id="acc_a", phone_number="+14155550100", now=at + SECOND
        )
        assert released_list(session, "acc_a", at + SECOND) == []
    assert stored(session, "+14155550100").created_at == NOW - REGISTERED_BEFORE


# --- campaigns and holds ---------------------------------------------------------------------


def test_assign_campaign(session: Session, phone_number_validator: Draft202012Validator) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550100")
    body = shared.assign_campaign(
        session, phone_number="+14155550100", campaign_id="cmp_1", status="pending"
    )
    assert body["a2pStatus"] == "pending"
    phone_number_validator.validate(body)
    body = shared.assign_campaign(
        session, phone_number="+14155550100", campaign_id="cmp_2", status="approved"
    )
    assert body["a2pStatus"] == "approved"
    assignment = session.scalars(select(CampaignAssignment)).one()
    assert (assignment.campaign_id, assignment.status) == ("cmp_2", "approved")
    assert assignment.number_id == stored(session, "+14155550100").id


def test_set_purge_hold(session: Session) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550100", released_at=RELEASED)
    assert shared.set_purge_hold(session, phone_number="+14155550100", held=True) == {
        "phoneNumber": "+14155550100",
        "held": True,
    }
    assert stored(session, "+14155550100").purge_hold is True
    # A hold only stops the purge: the number stays repurchasable within its window.
    assert released_list(session, "acc_a") == ["+14155550100"]
    assert shared.set_purge_hold(session, phone_number="+14155550100", held=False) == {
        "phoneNumber": "+14155550100",
        "held": False,
    }
    session.expire_all()
    assert stored(session, "+14155550100").purge_hold is False


# --- refusals: a clear error, and not one row changed ---------------------------------------

A, B, FREE = "acc_a", "acc_b", "acc_free"
A_ACTIVE, A_RELEASED, A_EXPIRED, A_PURGING, A_GB = (
    "+14155550100",
    "+14155550101",
    "+14155550102",
    "+14155550103",
    "+442071838750",
)
B_ACTIVE, B_RELEASED = "+14155550200", "+14155550201"
FREE_ACTIVE, FREE_RELEASED = "+14155550300", "+14155550301"
UNKNOWN = "+14155550999"
NAIVE = datetime(2026, 11, 27, 12, 0)


@pytest.fixture
def world(session: Session) -> Session:
    """Three accounts with active, released, expired and purging numbers."""
    yesterday = NOW - timedelta(days=1)
    make_number(session, account_id=A, phone_number=A_ACTIVE, a2p_status="testing")
    make_number(session, account_id=A, phone_number=A_RELEASED, released_at=yesterday)
    make_number(session, account_id=A, phone_number=A_EXPIRED, released_at=NOW - timedelta(15))
    make_number(session, account_id=A, phone_number=A_PURGING, released_at=yesterday)
    make_number(session, account_id=A, phone_number=A_GB, country_code="GB")
    make_number(session, account_id=B, phone_number=B_ACTIVE)
    make_number(session, account_id=B, phone_number=B_RELEASED, released_at=yesterday)
    make_number(
        session, account_id=FREE, phone_number=FREE_RELEASED, plan="free", released_at=yesterday
    )
    make_number(session, account_id=FREE, phone_number=FREE_ACTIVE)
    # As a purge batch leaves a claimed row (two-phase purge).
    session.execute(
        update(PhoneNumber)
        .where(PhoneNumber.phone_number == A_PURGING)
        .values(purge_state="purging")
    )
    session.flush()
    return session


Call = Callable[[Session], object]


def reg(**overrides: Any) -> Call:
    return lambda s: register(s, **overrides)


def release(phone_number: str, account_id: str = A, now: object = NOW) -> Call:
    return lambda s: shared.release_number(
        s,
        account_id=account_id,
        phone_number=phone_number,
        now=now,
    )


def repurchase(phone_number: str, account_id: str = A, now: object = NOW) -> Call:
    return lambda s: shared.repurchase_number(
        s,
        account_id=account_id,
        phone_number=phone_number,
        now=now,
    )


def assign(phone_number: str, campaign_id: str = "cmp_9", status: str = "approved") -> Call:
    return lambda s: shared.assign_campaign(
        s, phone_number=phone_number, campaign_id=campaign_id, status=status
    )


def refusal(call: Call, error: type[shared.ApiError], code: str, test_id: str) -> Any:
    return pytest.param(call, error, code, id=test_id)


V, U, L = shared.ValidationError, shared.UnauthorizedError, shared.UsageLimitError
REFUSALS = [
    # register_number: the order's fields
    *(
        refusal(reg(phone_number=value), V, "invalid_phone_number", f"register-e164-{i}")
        for i, value in enumerate(
            [
                "4155550999",
                "+04155550999",
                "+1 415 555 0999",
                "+1415555099a",
                "+1234567890123456",
                "+",
                "",
                "+14155550999\n",
                "\uff0b14155550999",
                None,
                14155550999,
            ]
        )
    ),
    *(
        refusal(reg(country_code=value), V, "invalid_country_code", f"register-country-{value!r}")
        for value in ["us", "XX", "USA", "", "U", "Us", None]
    ),
    *(
        refusal(reg(monthly_price=value), V, "invalid_price", f"register-price-{value!r}")
        for value in [
            -1,
            "-0.01",
            Decimal("-1"),
            float("nan"),
            "NaN",
            Decimal("NaN"),
            float("inf"),
            "-Infinity",
            "abc",
            "",
            True,
            False,
            None,
            [1],
            "1.00001",
            "100000000",
            "1_000",
            " 1.00",
            "1e2",
        ]
    ),
    refusal(reg(label="x" * 256), V, "invalid_label", "register-label-256"),
    refusal(reg(label=42), V, "invalid_label", "register-label-not-str"),
    pytest.param(
        reg(label="front\x00desk"),
        V,
        "invalid_label",
        id="register-label-nul",
    ),
    refusal(reg(number_type="Local"), V, "invalid_number_type", "register-type"),
    refusal(reg(provider_number_id=""), V, "invalid_provider_number_id", "register-provider-id"),
    refusal(reg(now=NAIVE), V, "naive_datetime", "register-naive-now"),
    refusal(reg(now="2026-11-27T12:00:00Z"), V, "invalid_datetime", "register-str-now"),
    refusal(reg(account_id="acc_nobody"), U, "account_not_found", "register-unknown-account"),
    refusal(reg(account_id=""), V, "invalid_account_id", "register-empty-account"),
    refusal(reg(phone_number=A_ACTIVE), V, "number_unavailable", "register-own-active"),
    refusal(reg(phone_number=B_ACTIVE), V, "number_unavailable", "register-other-active"),
    refusal(reg(phone_number=B_RELEASED), V, "number_unavailable", "register-other-released"),
    refusal(reg(phone_number=A_EXPIRED), V, "number_unavailable", "register-own-expired"),
    refusal(reg(phone_number=A_PURGING), V, "number_being_purged", "register-own-purging"),
    refusal(reg(account_id=FREE), L, "plan_limit_reached", "register-over-free-cap"),
    refusal(
        reg(account_id=FREE, phone_number=FREE_RELEASED),
        L,
        "plan_limit_reached",
        "register-reactivate-over-cap",
    ),
    # release_number
    refusal(release(UNKNOWN), V, "number_not_found", "release-unknown-number"),
    refusal(release(B_ACTIVE), V, "number_not_found", "release-other-accounts-number"),
    refusal(release("4155550100"), V, "invalid_phone_number", "release-e164"),
    refusal(release(A_ACTIVE, now=NAIVE), V, "naive_datetime", "release-naive-now"),
    refusal(
        release(A_ACTIVE, now=NOW - REGISTERED_BEFORE - MICROSECOND),
        V,
        "release_before_created",
        "release-before-created",
    ),
    refusal(release(A_RELEASED), V, "number_already_released", "release-twice"),
    refusal(
        release(A_ACTIVE, account_id="acc_nobody"),
        U,
        "account_not_found",
        "release-unknown-account",
    ),
    # repurchase_number
    refusal(repurchase(UNKNOWN), V, "number_not_found", "repurchase-unknown-number"),
    refusal(repurchase(B_RELEASED), V, "number_not_found", "repurchase-other-accounts-number"),
    refusal(repurchase("+1-415-555-0101"), V, "invalid_phone_number", "repurchase-e164"),
    refusal(repurchase(A_ACTIVE), V, "number_not_released", "repurchase-active"),
    refusal(repurchase(A_RELEASED, now=NAIVE), V, "naive_datetime", "repurchase-naive-now"),
    refusal(
        repurchase(A_RELEASED, now=NOW - timedelta(days=2)),
        V,
        "repurchase_before_release",
        "repurchase-before-release",
    ),
    refusal(repurchase(A_EXPIRED), V, "repurchase_window_closed", "repurchase-expired"),
    refusal(repurchase(A_PURGING), V, "number_being_purged", "repurchase-purging"),
    refusal(
        repurchase(FREE_RELEASED, account_id=FREE), L, "plan_limit_reached", "repurchase-over-cap"
    ),
    refusal(
        repurchase(A_RELEASED, account_id="acc_nobody"),
        U,
        "account_not_found",
        "repurchase-unknown-account",
    ),
    # assign_campaign
    refusal(assign(A_GB), V, "a2p_us_only", "assign-non-us"),
    refusal(assign(UNKNOWN), V, "number_not_found", "assign-unknown-number"),
    refusal(assign("+1415555"), V, "number_not_found", "assign-unknown-short-number"),
    refusal(assign("14155550100"), V, "invalid_phone_number", "assign-e164"),
    refusal(assign(A_ACTIVE, status="approve"), V, "invalid_a2p_status", "assign-status"),
    refusal(assign(A_ACTIVE, status=""), V, "invalid_a2p_status", "assign-empty-status"),
    refusal(assign(A_ACTIVE, campaign_id=""), V, "invalid_campaign_id", "assign-campaign-id"),
    # set_purge_hold
    refusal(
        lambda s: shared.set_purge_hold(s, phone_number=UNKNOWN, held=True),
        V,
        "number_not_found",
        "hold-unknown-number",
    ),
    pytest.param(
        lambda s: shared.set_purge_hold(s, phone_number=A_RELEASED, held="false"),
        V,
        "invalid_held",
        id="hold-not-a-bool",
    ),
    refusal(
        lambda s: shared.set_purge_hold(s, phone_number="+1 415", held=True),
        V,
        "invalid_phone_number",
        "hold-e164",
    ),
    # open_account
    refusal(
        lambda s: shared.open_account(s, account_id=A, plan="paid"),
        V,
        "account_exists",
        "open-existing",
    ),
    refusal(
        lambda s: shared.open_account(s, account_id="acc_new", plan="gold"),
        V,
        "invalid_plan",
        "open-unknown-plan",
    ),
    refusal(
        lambda s: shared.open_account(s, account_id="", plan="free"),
        V,
        "invalid_account_id",
        "open-empty-id",
    ),
    refusal(
        lambda s: shared.open_account(s, account_id="a" * 65, plan="free"),
        V,
        "invalid_account_id",
        "open-long-id",
    ),
    # released_numbers_body
    refusal(
        lambda s: shared.released_numbers_body(s, account_id="acc_nobody", now=NOW),
        U,
        "account_not_found",
        "list-unknown-account",
    ),
    refusal(
        lambda s: shared.released_numbers_body(s, account_id=A, now=NAIVE),
        V,
        "naive_datetime",
        "list-naive-now",
    ),
]


@pytest.mark.parametrize(("call", "error", "code"), REFUSALS)
def test_refusal_changes_nothing(
    world: Session,
    call: Call,
    error: type[shared.ApiError],
    code: str,
    error_validator: Draft202012Validator,
) -> None:
    before = snapshot(world)
    with pytest.raises(shared.ApiError) as caught:
        call(world)
    assert type(caught.value) is error
    assert caught.value.code == code
    assert caught.value.status == error.status
    assert caught.value.message
    assert caught.value.fix
    error_validator.validate(caught.value.body())
    assert snapshot(world) == before


@pytest.mark.parametrize(
    "act",
    [
        pytest.param(lambda s, n: release(n)(s), id="release"),
        pytest.param(lambda s, n: repurchase(n)(s), id="repurchase"),
    ],
)
def test_another_accounts_number_looks_unknown(world: Session, act: Callable[..., object]) -> None:
    """Acting on another account's number must not reveal that the number exists."""
    errors = {}
    for kind, number in {"other": B_RELEASED, "unknown": UNKNOWN}.items():
        with pytest.raises(shared.ValidationError) as caught:
            act(world, number)
        errors[kind] = caught.value
    other, unknown = errors["other"], errors["unknown"]
    assert other.code == unknown.code == "number_not_found"
    assert other.status == unknown.status == 400
    assert other.message.replace(B_RELEASED, "<n>") == unknown.message.replace(UNKNOWN, "<n>")
    assert other.fix == unknown.fix
    other_body, unknown_body = other.body("trk_x"), unknown.body("trk_x")
    assert other_body["error"].keys() == unknown_body["error"].keys()
