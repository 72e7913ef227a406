"""Plain helpers on the test stores (not fixtures): the tables, emptying them, a missing service.

Imported by tests/conftest.py, tests/servers.py and tests that reset a store between examples;
fixtures are reached by name only.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import Engine, text

# Child tables first, so a plain DELETE respects the foreign keys.
TABLES = (
    "number_events",
    "purged_numbers",
    "purge_runs",
    "purge_controls",
    "campaign_assignments",
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
