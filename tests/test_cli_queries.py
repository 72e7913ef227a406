"""The library's queries behind `retry-upstream --all-permanent`, `seed-demo --if-empty` and
`publish`'s progress bar (they were the command line's own SQL)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.counts import repurchasable_count
from shared.demo import store_has_numbers
from shared.purge.operator import permanent_failures
from tests.factories import NOW, make_number
from tests.stores import fail_upstream

OVERDUE = timedelta(days=20)


def test_permanent_failures_lists_the_numbers_refused_for_good(session: Session) -> None:
    for number in ("+14155550301", "+14155550302", "+14155550303", "+14155550304"):
        make_number(session, account_id="acc_q", phone_number=number, released_at=NOW - OVERDUE)
    fail_upstream(session, "+14155550301", permanent=True, provider_code="10035")
    fail_upstream(session, "+14155550302", permanent=False, provider_code="10035")
    fail_upstream(session, "+14155550303", permanent=True, provider_code="10008")
    assert permanent_failures(session) == ["+14155550301", "+14155550303"]
    assert permanent_failures(session, provider_code="10035") == ["+14155550301"]
    assert permanent_failures(session, provider_code="99999") == []


def test_store_has_numbers(engine: Engine, session_factory: sessionmaker[Session]) -> None:
    assert store_has_numbers(engine) is False
    with session_factory.begin() as session:
        make_number(session, account_id="acc_q", phone_number="+14155550311")
    assert store_has_numbers(engine) is True


def test_repurchasable_count(session: Session) -> None:
    make_number(session, account_id="acc_q", phone_number="+14155550321")  # active
    make_number(session, account_id="acc_q", phone_number="+14155550322", released_at=NOW - OVERDUE)
    for number in ("+14155550323", "+14155550324"):
        make_number(
            session, account_id="acc_q", phone_number=number, released_at=NOW - timedelta(days=1)
        )
    assert repurchasable_count(session, NOW) == 2
    assert repurchasable_count(session, NOW + timedelta(days=30)) == 0
