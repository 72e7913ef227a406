"""The retention rule: one deadline, repurchasable before it, purgeable from it on."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import DateTime, Engine, literal, select, update
from sqlalchemy.orm import Session

import shared
from shared.models import PhoneNumber
from shared.retention import (
    deadline_clause,
    is_purgeable,
    is_repurchasable,
    purgeable_clause,
    repurchasable_clause,
    repurchase_deadline,
)
from tests.factories import NOW, make_number

RELEASED = datetime(2026, 11, 13, 12, 0, tzinfo=UTC)
DEADLINE = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MICROSECOND = timedelta(microseconds=1)
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = timezone(timedelta(hours=9))


def test_retention_is_exactly_fourteen_days() -> None:
    retention = shared.RETENTION
    assert retention == timedelta(days=14)
    assert retention.total_seconds() == 14 * 24 * 3600


@pytest.mark.parametrize(
    ("released_at", "deadline"),
    [
        (RELEASED, DEADLINE),
        (datetime(2026, 11, 13, 21, 0, tzinfo=TOKYO), DEADLINE),
        (datetime(2026, 11, 13, 7, 0, tzinfo=NEW_YORK), DEADLINE),
        (
            datetime(2026, 12, 25, 23, 59, 59, 999_999, tzinfo=UTC),
            datetime(2027, 1, 8, 23, 59, 59, 999_999, tzinfo=UTC),
        ),
        # Leap day inside the window.
        (datetime(2028, 2, 20, 0, 0, tzinfo=UTC), datetime(2028, 3, 5, 0, 0, tzinfo=UTC)),
        # Across New York's DST start (2026-03-08): 14 x 24 hours, not 14 wall-clock days.
        (datetime(2026, 3, 1, 10, 0, tzinfo=NEW_YORK), datetime(2026, 3, 15, 15, 0, tzinfo=UTC)),
        # Across its DST end (2026-11-01).
        (datetime(2026, 10, 25, 10, 0, tzinfo=NEW_YORK), datetime(2026, 11, 8, 14, 0, tzinfo=UTC)),
    ],
)
def test_repurchase_deadline(released_at: datetime, deadline: datetime) -> None:
    result = shared.repurchase_deadline(released_at)
    assert result == deadline
    assert result.utcoffset() == timedelta(0)
    assert result - released_at == timedelta(days=14)


@pytest.mark.parametrize(
    ("now", "repurchasable", "purgeable"),
    [
        (RELEASED, True, False),
        (RELEASED + timedelta(days=7), True, False),
        (DEADLINE - SECOND, True, False),
        (DEADLINE - MICROSECOND, True, False),
        (DEADLINE, False, True),
        (DEADLINE + MICROSECOND, False, True),
        (DEADLINE + SECOND, False, True),
        (DEADLINE + timedelta(days=365), False, True),
        # The same instants seen from other time zones.
        (datetime(2026, 11, 27, 20, 59, 59, tzinfo=TOKYO), True, False),
        (datetime(2026, 11, 27, 21, 0, tzinfo=TOKYO), False, True),
        (datetime(2026, 11, 27, 6, 59, 59, 999_999, tzinfo=NEW_YORK), True, False),
        (datetime(2026, 11, 27, 7, 0, tzinfo=NEW_YORK), False, True),
    ],
)
def test_boundaries(now: datetime, repurchasable: bool, purgeable: bool) -> None:
    assert is_repurchasable(RELEASED, now) is repurchasable
    assert is_purgeable(RELEASED, now) is purgeable
    assert is_purgeable(RELEASED, now, held=False) is purgeable


@pytest.mark.parametrize(
    "now",
    [RELEASED, DEADLINE - SECOND, DEADLINE, DEADLINE + SECOND, DEADLINE + timedelta(days=900)],
)
def test_held_number_is_never_purgeable(now: datetime) -> None:
    assert is_purgeable(RELEASED, now, held=True) is False


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: repurchase_deadline(datetime(2026, 11, 13, 12)), id="deadline"),
        pytest.param(lambda: is_repurchasable(datetime(2026, 11, 13, 12), NOW), id="released_at"),
        pytest.param(lambda: is_repurchasable(RELEASED, datetime(2026, 11, 27, 12)), id="now"),
        pytest.param(lambda: is_purgeable(datetime(2026, 11, 13, 12), NOW), id="purge-released"),
        pytest.param(lambda: is_purgeable(RELEASED, datetime(2026, 11, 27, 12)), id="purge-now"),
    ],
)
def test_naive_datetimes_are_refused(call: object) -> None:
    assert callable(call)
    with pytest.raises(shared.ValidationError) as caught:
        call()
    assert caught.value.code == "naive_datetime"
    assert caught.value.status == 400
    assert caught.value.fix


@pytest.mark.parametrize("value", [date(2026, 11, 13), "2026-11-13T12:00:00Z", 1_700_000_000])
def test_non_datetimes_are_refused(value: object) -> None:
    with pytest.raises(shared.ValidationError) as caught:
        repurchase_deadline(value)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_datetime"


@pytest.mark.parametrize(
    "released_at",
    [
        datetime(2026, 11, 13, 21, 0, tzinfo=TOKYO),
        datetime(2026, 11, 13, 7, 0, tzinfo=NEW_YORK),
        datetime(2026, 11, 13, 6, 30, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    ],
)
def test_non_utc_inputs_are_converted(released_at: datetime) -> None:
    assert released_at == RELEASED
    assert repurchase_deadline(released_at).tzinfo is UTC
    assert repurchase_deadline(released_at) == repurchase_deadline(RELEASED)
    assert is_repurchasable(released_at, DEADLINE - MICROSECOND)
    assert is_purgeable(released_at, DEADLINE)


# --- properties ------------------------------------------------------------------------------

offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ).map(lambda delta: timedelta(minutes=delta // timedelta(minutes=1))),
)
instants = st.datetimes(
    min_value=datetime(1980, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets
)
# Offsets from the deadline, microseconds to days, so the boundary itself is well covered.
near_deadline = st.timedeltas(min_value=-timedelta(days=2), max_value=timedelta(days=2)) | (
    st.integers(min_value=-3, max_value=3).map(lambda n: timedelta(microseconds=n))
)


@st.composite
def released_and_now(draw: st.DrawFn) -> tuple[datetime, datetime]:
    released_at = draw(instants)
    if draw(st.booleans()):
        now = draw(instants)
    else:
        deadline = released_at + shared.RETENTION + draw(near_deadline)
        now = deadline.astimezone(draw(offsets))
    return released_at, now


@given(released_and_now())
@example((RELEASED, DEADLINE - MICROSECOND))
@example((RELEASED, DEADLINE))
def test_exactly_one_of_repurchasable_or_purgeable(pair: tuple[datetime, datetime]) -> None:
    released_at, now = pair
    repurchasable = is_repurchasable(released_at, now)
    purgeable = is_purgeable(released_at, now, held=False)
    assert repurchasable != purgeable
    assert repurchasable == (now < repurchase_deadline(released_at))
    assert is_purgeable(released_at, now, held=True) is False


def test_sql_clauses_agree_with_python(session: Session) -> None:
    """The SQL twins give the Python answer on a stored row, boundaries included."""
    make_number(session, account_id="acc_prop", phone_number="+14155550199", released_at=NOW)
    table = PhoneNumber.__table__

    @settings(max_examples=30, deadline=None)
    @given(pair=released_and_now(), held=st.booleans())
    @example(pair=(RELEASED, DEADLINE - MICROSECOND), held=False)
    @example(pair=(RELEASED, DEADLINE), held=False)
    @example(pair=(RELEASED, DEADLINE), held=True)
    @example(pair=(RELEASED.astimezone(TOKYO), DEADLINE.astimezone(NEW_YORK)), held=False)
    def check(pair: tuple[datetime, datetime], held: bool) -> None:
        released_at, now = pair
        session.execute(
            update(table)
            .where(table.c.phone_number == "+14155550199")
            .values(released_at=released_at, purge_hold=held)
        )
        repurchasable, purgeable = session.execute(
            select(
                repurchasable_clause(table.c.released_at, now),
                purgeable_clause(table.c.released_at, table.c.purge_hold, now),
            ).where(table.c.phone_number == "+14155550199")
        ).one()
        assert bool(repurchasable) is is_repurchasable(released_at, now)
        assert bool(purgeable) is is_purgeable(released_at, now, held=held)

    check()


@pytest.mark.postgres
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Australia/Lord_Howe"])
def test_the_sql_deadline_is_the_python_deadline_in_any_session_time_zone(
    pg_engine: Engine, zone: str
) -> None:
    """The deadline an event carries is computed in SQL: an interval of days would be added in
    the session's time zone and land an hour off across a DST change."""
    across_dst = [
        datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
    ]
    with pg_engine.connect() as connection:
        connection.exec_driver_sql(f"SET TIME ZONE '{zone}'")
        for released_at in across_dst:
            value = literal(released_at, DateTime(timezone=True))
            deadline = connection.execute(select(deadline_clause(value))).scalar_one()
            assert deadline == repurchase_deadline(released_at), (zone, released_at)
