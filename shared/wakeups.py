"""Wake-ups for the relay: PostgreSQL's LISTEN on the channel the outbox's trigger notifies.

Every statement that adds lifecycle events to the outbox (`number_events`) sends a NOTIFY on
`numbers_outbox` (migration 0015), delivered when its transaction commits. `listening` runs a
piece of work once, then again at each notification until a deadline: the relay applies a
release within milliseconds of its commit instead of at its next scheduled run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from sqlalchemy.engine import make_url

from shared.db import normalize_url

CHANNEL = "numbers_outbox"

# How often a wait looks at `stop` (seconds): a worker's warm shutdown ends it this quickly.
STOP_POLL = 0.5

T = TypeVar("T")


def listen_url(database_url: str) -> str | None:
    """The libpq URL to LISTEN on for the store at `database_url`; None where the store has no
    notifications (SQLite)."""
    url = make_url(normalize_url(database_url))
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def listening(url: str, work: Callable[[], T], *, until: float, stop: Callable[[], bool]) -> T:
    """Run `work` once, then again after each notification on CHANNEL, until the monotonic
    instant `until` or `stop()`; returns the last run's result.

    The first run comes after LISTEN, so that an event committed while it runs still wakes
    the next one. Notifications that arrive together (one batch's, or several commits')
    wake one run: `work` takes whatever is there.
    """
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f"LISTEN {CHANNEL}")
        result = work()
        while not stop() and (left := until - time.monotonic()) > 0:
            woken = list(connection.notifies(timeout=min(left, STOP_POLL), stop_after=1))
            if woken:
                result = work()
    return result
