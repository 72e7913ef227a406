"""Test data through the public functions only, and a snapshot of every table."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared.models import Base

# The suite's fixed instant, for tests that pass `now` to every call. It lies more than a year
# before any date the suite runs on (the clock moved a year back included), so a test that
# mixes it with a process or a library default on the host's clock fails at once, every day,
# instead of on some later date: such a test takes `wall_now` (tests/conftest.py) instead.
NOW = datetime(2025, 11, 27, 12, 0, tzinfo=UTC)
REGISTERED_BEFORE = timedelta(days=30)


def ensure_account(session: Session, account_id: str, *, plan: str = "paid") -> None:
    """Open the account unless it exists already."""
    try:
        shared.open_account(session, account_id=account_id, plan=plan)
    except shared.ValidationError as error:
        if error.code != "account_exists":
            raise


def valid_order(**overrides: Any) -> dict[str, Any]:
    """register_number's arguments for a valid order (acc_a's +14155550999, a local US number at
    1.00, on NOW), overridden field by field."""
    return {
        "account_id": "acc_a",
        "phone_number": "+14155550999",
        "country_code": "US",
        "number_type": "local",
        "monthly_price": "1.00",
        "now": NOW,
    } | overrides


def make_number(
    session: Session,
    *,
    account_id: str,
    phone_number: str,
    released_at: datetime | None = None,
    country_code: str = "US",
    now: datetime = NOW,
    plan: str = "paid",
    number_type: str = "local",
    monthly_price: object = "1.00",
    label: str | None = None,
    a2p_status: str | None = None,
    provider_number_id: str | None = None,
    carrier: str | None = None,
) -> dict[str, Any]:
    """A number registered 30 days before `now`, released at `released_at` if given.

    Returns the number's body as the API would show it after these steps.
    """
    ensure_account(session, account_id, plan=plan)
    body = shared.register_number(
        session,
        account_id=account_id,
        phone_number=phone_number,
        country_code=country_code,
        number_type=number_type,
        monthly_price=monthly_price,
        label=label,
        provider_number_id=provider_number_id,
        now=now - REGISTERED_BEFORE,
        carrier=carrier,
    )
    if a2p_status is not None:
        body = shared.assign_campaign(
            session, phone_number=phone_number, campaign_id=f"cmp_{account_id}", status=a2p_status
        )
    if released_at is not None:
        answer = shared.release_number(
            session, account_id=account_id, phone_number=phone_number, now=released_at
        )
        body = {**body, "billingStatus": "released", "releasedAt": answer["releasedAt"]}
    return body


def make_numbers(
    session: Session,
    *,
    account_id: str,
    ages: dict[str, timedelta | None],
    now: datetime = NOW,
) -> None:
    """`make_number` for each number, released `age` before `now` (None: still active)."""
    for number, age in ages.items():
        make_number(
            session,
            account_id=account_id,
            phone_number=number,
            released_at=None if age is None else now - age,
            now=now,
        )


def make_overdue(
    factory: sessionmaker[Session],
    account_id: str,
    prefix: str,
    count: int,
    ids: Callable[[int], str | None],
    *,
    now: datetime,
    age: timedelta,
    start: int = 0,
    country_code: str = "US",
) -> list[str]:
    """`count` numbers `prefix` + i in 4 digits (i from `start`), provider ids ids(i), released
    `age` before `now`; their E.164 numbers. One transaction each: the plan caps active
    numbers at 49, and each is released before the next is registered."""
    numbers = [f"{prefix}{i:04d}" for i in range(start, start + count)]
    for i, number in enumerate(numbers, start):
        with factory.begin() as session:
            make_number(
                session,
                account_id=account_id,
                phone_number=number,
                country_code=country_code,
                provider_number_id=ids(i),
                released_at=now - age,
                now=now,
            )
    return numbers


def snapshot(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order (flushes pending changes first)."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for table in Base.metadata.sorted_tables:
        order = ", ".join(column.name for column in table.primary_key.columns)
        result = session.execute(text(f"SELECT * FROM {table.name} ORDER BY {order}"))
        rows[table.name] = [tuple(row) for row in result]
    return rows
