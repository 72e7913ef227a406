"""A second clock: the database server's, asked before anything that cannot be undone.

Decisions use this host's clock (or a `now` passed in), never the database server's. But a host
whose clock runs ahead would purge numbers still repurchasable, and a publication or a relay on
it would hide them; nothing the next run does undoes either. So before a purge run, a
publication and a relay run, this host's clock is compared with the database server's (one
query, corrected for its round trip): beyond CLOCK_SKEW_MAX_SECONDS the run is refused
(`clock_skew`), saying by how much and which way. The run is then recorded, if at all, at the
earlier of the two clocks: an instant in the future by neither.

SQLite has no second clock: the store is a file on this host and its clock is this host's.
There the guard is only the refusal of a `now` ahead of this host's clock (`not_ahead`, and
`not_far_ahead` for the write paths); a clock that is wrong as a whole is not detected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection, Engine, text

from shared.clock import as_utc, iso_timestamp, utcnow
from shared.errors import InternalError
from shared.settings import get_store_settings

log = structlog.get_logger("shared.clock_skew")


@dataclass(frozen=True)
class ClockReading:
    """This host's clock and the database server's at one instant, and the query's round trip."""

    host: datetime
    database: datetime
    round_trip: float  # seconds

    @property
    def skew_seconds(self) -> float:
        """How far this host's clock is ahead of the database server's (negative: behind)."""
        return round((self.host - self.database).total_seconds(), 3)

    @property
    def trusted(self) -> datetime:
        """The earlier of the two clocks: an instant in the future by neither."""
        return min(self.host, self.database)

    def beyond(self, tolerance: float) -> bool:
        """Whether the clocks differ by more than `tolerance` seconds, whatever the round
        trip hid (the server read its clock somewhere within it)."""
        return abs(self.skew_seconds) - self.round_trip / 2 > tolerance


def describe(skew_seconds: float, tolerance: float) -> str:
    """How far and which way, e.g. `this host's clock is 86,400.0 s ahead of the database
    server's (CLOCK_SKEW_MAX_SECONDS is 5)`."""
    way = "ahead of" if skew_seconds > 0 else "behind"
    return (
        f"this host's clock is {abs(skew_seconds):,.1f} s {way} the database server's "
        f"(CLOCK_SKEW_MAX_SECONDS is {tolerance:g})"
    )


class ClockSkewError(InternalError):
    """500 `clock_skew`: this host's clock and the database server's disagree; nothing done.

    Built by `refusal` (with the reading); the plain constructor stays ApiError's, so that
    Celery can rebuild the error from its message in a task's result.
    """

    default_code = "clock_skew"
    reading: ClockReading | None = None


FIX = (
    "Check time synchronisation (NTP, chrony: `timedatectl`, `chronyc tracking`) on this host "
    "and on the database server, then run again (docs/runbook.md, Clock skew)."
)


def log_refusal(reading: ClockReading, tolerance: float) -> None:
    """Log a run refused for `reading` (`clock_skew.refused`, a warning)."""
    log.warning(
        "clock_skew.refused",
        skew_seconds=reading.skew_seconds,
        tolerance_seconds=tolerance,
        database_clock=iso_timestamp(reading.database),
    )


def refusal(reading: ClockReading, tolerance: float) -> ClockSkewError:
    """The error that refuses a run for `reading`, logged."""
    log_refusal(reading, tolerance)
    error = ClockSkewError(
        f"Refused: {describe(reading.skew_seconds, tolerance)}; nothing was changed.", fix=FIX
    )
    error.reading = reading
    return error


def read_clocks(bind: Engine | Connection) -> ClockReading | None:
    """This host's clock against the database server's; None on SQLite (one host, one clock)."""
    if bind.dialect.name != "postgresql":
        return None
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return read_clocks(connection)
    started, clock = utcnow(), time.monotonic()
    database = bind.execute(text("SELECT clock_timestamp()")).scalar_one()
    round_trip = time.monotonic() - clock
    # The server read its clock within the round trip: compared with its middle.
    host = started + timedelta(seconds=round_trip / 2)
    return ClockReading(host=host, database=as_utc(database), round_trip=round(round_trip, 6))


def check_clocks(
    bind: Engine | Connection, *, tolerance: float | None = None
) -> ClockReading | None:
    """The reading, or ClockSkewError when the clocks differ by more than `tolerance` seconds
    (default CLOCK_SKEW_MAX_SECONDS)."""
    if tolerance is None:
        tolerance = get_store_settings().clock_skew_max_seconds
    reading = read_clocks(bind)
    if reading is not None and reading.beyond(tolerance):
        raise refusal(reading, tolerance)
    return reading
