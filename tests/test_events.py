"""Lifecycle events: every change of a number writes one outbox row, in its own transaction."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared.models import NumberEvent
from shared.provider import TelnyxProvider
from shared.purge.operator import reset_upstream
from shared.retention import RETENTION
from tests.factories import ensure_account, make_number, valid_order
from tests.fake_telnyx import FakeTelnyx, telnyx_error
from tests.purging import purge_expired

NUMBER = "+14155550300"


def events(session: Session) -> list[tuple[Any, ...]]:
    """(kind, number, account, deadline, occurred_at) of every outbox row, in id order."""
    return [
        (e.kind, e.phone_number, e.account_id, e.deadline, e.occurred_at)
        for e in session.scalars(select(NumberEvent).order_by(NumberEvent.id))
    ]


def test_register_release_repurchase_hold_write_one_event_each(
    session: Session, now: datetime
) -> None:
    ensure_account(session, "acc_ev")
    registered = now - timedelta(days=30)
    released = now - timedelta(days=3)
    shared.register_number(
        session, **valid_order(account_id="acc_ev", phone_number=NUMBER, now=registered)
    )
    shared.release_number(session, account_id="acc_ev", phone_number=NUMBER, now=released)
    shared.set_purge_hold(session, phone_number=NUMBER, held=True, now=now)
    shared.set_purge_hold(session, phone_number=NUMBER, held=True, now=now)  # no change
    shared.set_purge_hold(session, phone_number=NUMBER, held=False, now=now)
    # Ordering a number the account released within its window is a repurchase.
    shared.register_number(
        session, **valid_order(account_id="acc_ev", phone_number=NUMBER, now=now)
    )
    deadline = released + RETENTION
    assert events(session) == [
        ("registered", NUMBER, "acc_ev", None, registered),
        ("released", NUMBER, "acc_ev", deadline, released),
        ("held", NUMBER, "acc_ev", deadline, now),
        ("unheld", NUMBER, "acc_ev", deadline, now),
        ("repurchased", NUMBER, "acc_ev", None, now),
    ]


def test_a_refused_change_writes_no_event(session: Session, now: datetime) -> None:
    make_number(session, account_id="acc_ev", phone_number=NUMBER, released_at=now - RETENTION)
    before = events(session)
    with pytest.raises(shared.ValidationError):
        shared.release_number(session, account_id="acc_ev", phone_number=NUMBER, now=now)
    with pytest.raises(shared.ValidationError):  # the window closed at the deadline itself
        shared.repurchase_number(session, account_id="acc_ev", phone_number=NUMBER, now=now)
    with pytest.raises(shared.UnauthorizedError):
        shared.release_number(session, account_id="acc_nobody", phone_number=NUMBER, now=now)
    assert events(session) == before


def test_the_purge_writes_purged_events_from_its_tombstones(
    session_factory: sessionmaker[Session], now: datetime
) -> None:
    overdue = [f"+1415551{i:04d}" for i in range(7)]
    with session_factory.begin() as session:
        for number in overdue:
            make_number(
                session, account_id="acc_ev", phone_number=number, released_at=now - RETENTION
            )
        make_number(
            session, account_id="acc_ev", phone_number=NUMBER, released_at=now - timedelta(days=1)
        )
    report = purge_expired(session_factory, now=now, batch_size=3)
    assert report.purged == 7
    with session_factory() as session:
        purged = [e for e in events(session) if e[0] == "purged"]
    # Batches on two lanes commit in either order: one event per number, whatever the order.
    assert sorted(purged) == [("purged", n, "acc_ev", now, now) for n in overdue]


def test_claims_upstream_failures_and_resets_write_events(
    session_factory: sessionmaker[Session],
    now: datetime,
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
) -> None:
    released = now - timedelta(days=15)
    with session_factory.begin() as session:
        for i, number in enumerate((NUMBER, "+14155550301")):
            make_number(
                session,
                account_id="acc_up",
                phone_number=number,
                provider_number_id=f"70{i}",
                released_at=released,
                now=now,
            )
    fake_telnyx.script["700"] = [telnyx_error(500, "10007", "Unexpected error")]
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.purged, report.provider_failed) == (1, 1)
    with session_factory.begin() as session:
        reset_upstream(session, phone_number=NUMBER)
    with session_factory() as session:
        kinds = [(kind, number) for kind, number, *_ in events(session)][4:]
        deadlines = {deadline for _, _, _, deadline, _ in events(session)[4:]}
    assert sorted(kinds[:2]) == [("claimed", NUMBER), ("claimed", "+14155550301")]
    assert sorted(kinds[2:4]) == [("purged", "+14155550301"), ("upstream_failed", NUMBER)]
    assert kinds[4:] == [("upstream_reset", NUMBER)]
    assert deadlines == {released + RETENTION}
