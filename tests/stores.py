"""Plain helpers on the test stores (not fixtures): the tables, emptying them, a missing service,
the numbers and tombstones by phone number, a number left as a failed upstream release leaves
it, no deadline falling inside a test.

Imported by tests/conftest.py, tests/servers.py and tests that reset a store between examples;
fixtures are reached by name only.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from shared.models import PhoneNumber, PurgedNumber
from shared.retention import RETENTION
from tests.factories import NOW

# Child tables first, so a plain DELETE respects the foreign keys.
TABLES = (
    "number_events",
    "relay_marks",
    "purged_numbers",
    "purge_runs",
    "pruned_totals",
    "purge_controls",
    "campaign_assignments",
    "api_keys",
    "number_orders",
    "phone_numbers",
    "accounts",
)
TRUNCATE_ALL = f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"


def service_missing(what: str, error: BaseException) -> None:
    """A missing service skips on a laptop and fails under CI=true."""
    message = f"{what} is unreachable: {error}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def delete_all_rows(engine: Engine) -> None:
    """Empty every table of the store (schema and migrations stay)."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(TRUNCATE_ALL)
        else:
            for table in TABLES:
                connection.execute(text(f"DELETE FROM {table}"))
            # The counters of an empty store are 0, and its minute floor goes (as the TRUNCATE
            # trigger drops both on PostgreSQL: shared/counts.py).
            connection.execute(text("DELETE FROM number_counts"))


def fail_upstream(
    session: Session,
    phone_number: str,
    *,
    permanent: bool,
    provider_code: str | None = None,
    now: datetime = NOW,
) -> None:
    """Leave the number claimed with a provider error, as a failed upstream release does:
    given up for good if `permanent`, else due for another attempt a day after `now`."""
    session.execute(
        update(PhoneNumber)
        .where(PhoneNumber.phone_number == phone_number)
        .values(
            purge_state="purging",
            provider_attempts=1,
            provider_error_code="provider_refused",
            provider_code=provider_code,
            provider_failed_permanently=permanent,
            provider_next_attempt_at=None if permanent else now + timedelta(days=1),
        )
    )


def clear_the_next_hour(db: Connection | Session, now: datetime) -> None:
    """Move the deadlines due within the hour after `now` two hours later.

    Worker and CLI processes decide with their own clock, a little after `now`: no deadline
    may fall inside the test.
    """
    cut = now - RETENTION
    db.execute(
        update(PhoneNumber)
        .where(PhoneNumber.released_at > cut, PhoneNumber.released_at <= cut + timedelta(hours=1))
        .values(released_at=cut + timedelta(hours=2))
    )


def numbers_by_phone(factory: sessionmaker[Session]) -> dict[str, PhoneNumber]:
    """The numbers in the store, by phone number."""
    with factory() as session:
        return {n.phone_number: n for n in session.scalars(select(PhoneNumber))}


def tombstones_by_phone(factory: sessionmaker[Session]) -> dict[str, PurgedNumber]:
    """The tombstones in the store, by phone number."""
    with factory() as session:
        return {t.phone_number: t for t in session.scalars(select(PurgedNumber))}
