"""seed-demo: realistic, deterministic demo data that respects the plans and the schema."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import islice

import pytest
from dateutil.relativedelta import relativedelta
from jsonschema import Draft202012Validator
from sqlalchemy import ColumnElement, Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared import validation
from shared.demo import NUMBER_COLUMNS, DemoGenerator, _next_billing_date, seed_demo
from shared.models import PLANS, Account, CampaignAssignment, PhoneNumber
from shared.retention import purgeable_clause

COUNTRY_PREFIXES = {"US": "+1", "GB": "+44", "DE": "+49"}


def count(session: Session, *where: ColumnElement[bool]) -> int:
    query = select(func.count()).select_from(PhoneNumber).where(*where)
    return session.execute(query).scalar_one()


def test_seeds_the_requested_counts_and_a_matching_summary(
    engine: Engine, session_factory: sessionmaker[Session], now: datetime
) -> None:
    summary = seed_demo(engine, numbers=2000, accounts=20, now=now)

    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Account)) == 20
        assert count(session) == 2000
        released = count(session, PhoneNumber.billing_status == "released")
        overdue = count(
            session, purgeable_clause(PhoneNumber.released_at, PhoneNumber.purge_hold, now)
        )
        held = count(session, PhoneNumber.purge_hold.is_(True))
    assert (summary.accounts, summary.numbers) == (20, 2000)
    assert (summary.released, summary.overdue, summary.held) == (released, overdue, held)
    # Some of it is overdue and some still repurchasable, as a demo of the purge needs.
    assert 0 < summary.overdue < summary.released
    assert summary.as_dict()["overdue"] == summary.overdue
    assert summary.seconds >= 0


def test_plan_caps_hold_for_every_account(
    engine: Engine, session_factory: sessionmaker[Session], now: datetime
) -> None:
    seed_demo(engine, numbers=2000, accounts=20, now=now)

    with session_factory() as session:
        rows = session.execute(
            select(Account.id, Account.plan, func.count(PhoneNumber.id))
            .outerjoin(
                PhoneNumber,
                (PhoneNumber.account_id == Account.id) & (PhoneNumber.billing_status == "active"),
            )
            .group_by(Account.id, Account.plan)
        ).all()
    assert {plan for _, plan, _ in rows} == {"free", "paid"}
    for account_id, plan, active in rows:
        assert active <= PLANS[plan], account_id


def test_rows_are_valid_and_consistent(
    engine: Engine, session_factory: sessionmaker[Session], now: datetime
) -> None:
    seed_demo(engine, numbers=2000, accounts=20, now=now)

    with session_factory() as session:
        numbers = session.scalars(select(PhoneNumber)).all()
        campaigns = session.execute(
            select(
                PhoneNumber.country_code, PhoneNumber.number_type, CampaignAssignment.status
            ).join(CampaignAssignment, CampaignAssignment.number_id == PhoneNumber.id)
        ).all()
    today = now.date()
    for number in numbers:
        assert validation.phone_number(number.phone_number)
        assert validation.country_code(number.country_code)
        assert number.phone_number.startswith(COUNTRY_PREFIXES[number.country_code])
        assert number.number_type in {"local", "toll_free", "mobile"}
        assert number.created_at.utcoffset() == timedelta(0)
        assert now - timedelta(days=400) <= number.created_at <= now - timedelta(days=30)
        assert today < number.next_billing_date <= today + relativedelta(months=1)
        assert number.monthly_price >= 0
        assert (number.billing_status == "released") == (number.released_at is not None)
        if number.released_at is not None:
            assert number.created_at <= number.released_at <= now
            assert number.released_at >= now - timedelta(days=30)
        else:
            assert not number.purge_hold
    assert any(number.label for number in numbers)
    assert any(number.label is None for number in numbers)
    assert sum(number.provider_number_id is not None for number in numbers) > 1800
    # 10DLC is a US long-code notion: campaigns on US local numbers only.
    assert campaigns
    assert {(country, kind) for country, kind, _ in campaigns} == {("US", "local")}
    assert {status for _, _, status in campaigns} <= set(shared.models.A2P_STATUSES)


def test_seeding_twice_adds_without_clashing(
    engine: Engine, session_factory: sessionmaker[Session], now: datetime
) -> None:
    first = seed_demo(engine, numbers=500, accounts=5, now=now)
    second = seed_demo(engine, numbers=500, accounts=5, now=now)

    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Account)) == 10
        assert count(session) == 1000
        assert session.scalar(select(func.count(func.distinct(PhoneNumber.phone_number)))) == 1000
        # The id sequence moved past the loaded rows: an ordinary purchase still works.
        shared.open_account(session, account_id="acc_after_demo", plan="paid")
        shared.register_number(
            session,
            account_id="acc_after_demo",
            phone_number="+15005550100",
            country_code="US",
            number_type="local",
            monthly_price="1.00",
            now=now,
        )
        session.commit()
        released = count(session, PhoneNumber.billing_status == "released")
    assert first.released + second.released == released


def test_released_list_of_a_seeded_account_matches_the_contract(
    engine: Engine,
    session_factory: sessionmaker[Session],
    now: datetime,
    released_numbers_validator: Draft202012Validator,
) -> None:
    seed_demo(engine, numbers=2000, accounts=20, now=now)

    with session_factory() as session:
        account_id = session.scalar(
            select(PhoneNumber.account_id)
            .join(CampaignAssignment, CampaignAssignment.number_id == PhoneNumber.id)
            .where(PhoneNumber.released_at > now - timedelta(days=14))
            .limit(1)
        )
        assert account_id is not None
        body = shared.released_numbers_body(session, account_id=account_id, now=now)
    released_numbers_validator.validate(body)
    assert body["numbers"]
    assert any("a2pStatus" in number for number in body["numbers"])


def generate(seed: int, numbers: int = 300) -> list[tuple[object, ...]]:
    generator = DemoGenerator(
        numbers=numbers,
        accounts=7,
        now=datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
        released_share=0.6,
        window_days=30,
        seed=seed,
    )
    return [(*number, campaign) for number, campaign in generator.numbers()]


def test_the_same_seed_gives_the_same_rows() -> None:
    assert generate(seed=7) == generate(seed=7)
    assert generate(seed=7) != generate(seed=8)
    phone = NUMBER_COLUMNS.index("phone_number")
    assert len({row[phone] for row in generate(seed=7)}) == 300


def test_the_released_share_is_respected_within_the_caps(now: datetime) -> None:
    generator = DemoGenerator(
        numbers=10_000, accounts=1_000, now=now, released_share=0.3, window_days=30, seed=1
    )
    rows = list(islice(generator.numbers(), 10_000))
    assert len(rows) == 10_000
    assert 0.25 < generator.released / 10_000 < 0.35
    # Released uniformly over 30 days: about half are past the 14-day deadline.
    assert 0.4 < generator.overdue / generator.released < 0.6


@pytest.mark.parametrize(
    ("numbers", "accounts", "released_share", "window_days"),
    [(-1, 1, 0.6, 30), (10, 0, 0.6, 30), (10, 1, 1.5, 30), (10, 1, 0.6, 0)],
)
def test_nonsense_arguments_are_refused(
    numbers: int, accounts: int, released_share: float, window_days: int, now: datetime
) -> None:
    with pytest.raises(ValueError, match="must"):
        DemoGenerator(
            numbers=numbers,
            accounts=accounts,
            now=now,
            released_share=released_share,
            window_days=window_days,
            seed=0,
        )


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(shared.ValidationError):
        DemoGenerator(
            numbers=1,
            accounts=1,
            now=datetime(2026, 11, 27, 12, 0),
            released_share=0.6,
            window_days=30,
            seed=0,
        )


def test_next_billing_is_the_next_monthly_anniversary() -> None:
    assert _next_billing_date(5, date(2026, 11, 27)) == date(2026, 12, 5)
    assert _next_billing_date(30, date(2026, 11, 27)) == date(2026, 11, 30)
    assert _next_billing_date(27, date(2026, 11, 27)) == date(2026, 12, 27)
    assert _next_billing_date(31, date(2027, 1, 31)) == date(2027, 2, 28)
