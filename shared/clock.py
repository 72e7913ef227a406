"""Time as the rule sees it: aware UTC instants from Python's clock, and their ISO text."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.errors import ValidationError

# Instants the rule accepts: far enough from datetime's limits that a deadline or cutoff
# computed from them still exists (outside, Python raises a bare OverflowError).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    """The current time, aware, in UTC, from Python (never the database server's clock)."""
    return datetime.now(UTC)


def as_utc(value: datetime, *, name: str = "now") -> datetime:
    """`value` converted to UTC; a naive datetime is refused, never guessed."""
    if not isinstance(value, datetime):
        raise ValidationError(
            f"{name} must be a datetime, got {type(value).__name__}.",
            code="invalid_datetime",
            fix=f"Pass {name} as a timezone-aware datetime, e.g. 2026-01-31T12:00:00Z.",
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            f"{name} is a naive datetime ({value.isoformat()}); its timezone is unknown.",
            code="naive_datetime",
            fix=f"Pass {name} with a timezone, e.g. datetime.now(UTC) or '...T12:00:00Z'.",
        )
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValidationError(
            f"{name} ({value.isoformat()}) is out of range.",
            code="datetime_out_of_range",
            fix=f"Pass {name} between 1970-01-01T00:00:00Z and 9000-01-01T00:00:00Z.",
        )
    return utc


def resolve_now(now: datetime | None) -> datetime:
    """The decision instant: `now` in UTC, or the current time when none is given."""
    return utcnow() if now is None else as_utc(now)


def not_ahead(now: datetime | None) -> datetime:
    """The instant a run that changes data decides at: `now`, refused when ahead of this
    host's clock (a purge decided later would delete numbers still repurchasable, and a
    publication would hide them: neither is undone by the next run)."""
    current = utcnow()
    if now is None:
        return current
    now = as_utc(now)
    if now > current:
        raise ValidationError(
            f"now {now.isoformat()} is ahead of this host's clock ({current.isoformat()}).",
            code="now_in_future",
            fix="Leave now out (the host's clock decides), or pass a past instant; "
            "a dry run may look ahead.",
        )
    return now


def not_far_ahead(now: datetime | None, *, tolerance: float) -> datetime:
    """The instant a write path (a registration, a release, a repurchase) records: `now`,
    refused when more than `tolerance` seconds ahead of this host's clock (a caller on
    another host may run slightly ahead; a number released in the future could never be
    repurchased nor purged)."""
    current = utcnow()
    if now is None:
        return current
    now = as_utc(now)
    if (now - current).total_seconds() > tolerance:
        raise ValidationError(
            f"now {now.isoformat()} is ahead of this host's clock ({current.isoformat()}) by "
            f"more than CLOCK_SKEW_MAX_SECONDS ({tolerance:g} s).",
            code="now_in_future",
            fix="Leave now out (the host's clock decides), or pass the current time; check "
            "the caller's clock synchronisation (NTP).",
        )
    return now


def iso_timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with a Z, e.g. 2026-11-27T09:30:00.123456Z."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
