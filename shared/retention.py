"""The retention rule, written once: a released number is repurchasable until its deadline.

Every predicate of the rule lives here, in Python and in SQL, named alike: `is_repurchasable`
and `repurchasable_numbers` (the list, repurchase, the releasable set), `is_purgeable` and
`purgeable_numbers` (the purge and its re-check under the lock), `claimable_numbers` (the
two-phase purge's claims). Decisions take `now` from the caller, never the database's clock.

The window is the store settings' RETENTION_DAYS, read when a rule is first applied (never at
import: importing the library reads no setting; a wrong window fails its first use, naming
RETENTION_DAYS). `retention_window(settings)` is the window of the store settings given.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Float, SQLColumnExpression, and_, false, func, literal, or_

from shared.clock import as_utc
from shared.models import PhoneNumber
from shared.settings import StoreSettings, get_store_settings


def retention_window(settings: StoreSettings | None = None) -> timedelta:
    """How long a released number stays repurchasable: the RETENTION_DAYS of `settings`
    (default: the library's store settings, read from the environment on first use)."""
    return timedelta(days=(settings or get_store_settings()).retention_days)


def __getattr__(name: str) -> timedelta:
    # `RETENTION`, as it was once a constant read at import: now the window at first use.
    if name == "RETENTION":
        return retention_window()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def repurchase_deadline(released_at: datetime) -> datetime:
    """The first instant at which a number released at `released_at` is no longer repurchasable."""
    return as_utc(released_at, name="released_at") + retention_window()


def cutoff(now: datetime) -> datetime:
    """Numbers released at or before this instant are past their deadline at `now`."""
    return as_utc(now) - retention_window()


def is_repurchasable(released_at: datetime, now: datetime) -> bool:
    """True while `now < deadline`: the number can still be bought back."""
    return as_utc(released_at, name="released_at") > cutoff(now)


def is_purgeable(released_at: datetime, now: datetime, *, held: bool = False) -> bool:
    """True once `now >= deadline` and the number is not on hold."""
    return not held and not is_repurchasable(released_at, now)


def repurchasable_clause(
    released_at: SQLColumnExpression[Any], now: datetime
) -> ColumnElement[bool]:
    """SQL twin of `is_repurchasable`, for the list, repurchase and the releasable set."""
    return repurchasable_after(released_at, cutoff(now))


def repurchasable_after(
    released_at: SQLColumnExpression[Any], cutoff_value: Any
) -> ColumnElement[bool]:
    """The same, with the cutoff given: `cutoff(now)`, or a bound parameter that carries it
    (a statement built once, for the list's hot path)."""
    return cast(ColumnElement[bool], released_at > cutoff_value)


def purgeable_clause(
    released_at: SQLColumnExpression[Any], held: SQLColumnExpression[bool], now: datetime
) -> ColumnElement[bool]:
    """SQL twin of `is_purgeable`, for the purge (and its re-check under the lock)."""
    return and_(released_at <= cutoff(now), held == false())


def deadline_clause(released_at: SQLColumnExpression[datetime]) -> ColumnElement[datetime]:
    """SQL twin of `repurchase_deadline` (for statements that write the deadline).

    The window is added as seconds: an interval of days would be added in the session's time
    zone and land an hour off across a daylight-saving change.
    """
    seconds = literal(retention_window().total_seconds(), Float())
    return released_at + func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def repurchasable_numbers(now: datetime) -> ColumnElement[bool]:
    """Numbers their account can buy back at `now`: released, in their window, not claimed."""
    return repurchasable_where(repurchasable_clause(PhoneNumber.released_at, now))


def repurchasable_where(in_window: ColumnElement[bool]) -> ColumnElement[bool]:
    """The same with the window's test given (a statement built once binds its cutoff)."""
    return and_(
        PhoneNumber.billing_status == "released", PhoneNumber.purge_state.is_(None), in_window
    )


def purgeable_numbers(now: datetime) -> ColumnElement[bool]:
    """Released numbers past their deadline at `now` and not on hold: the purge's rows."""
    return purgeable_clause(PhoneNumber.released_at, PhoneNumber.purge_hold, now)


def waiting_numbers(now: datetime, provider: str) -> ColumnElement[bool]:
    """Purgeable numbers a run with `provider` cannot take now: they wait on the provider or a
    person. Without a provider (`none`), every row with upstream state (claimed, or carrying a
    provider error: the carrier may still hold it); with one, the rows given up on (until
    `retry-upstream`) and those backing off until their next attempt."""
    if provider == "none":
        upstream = PhoneNumber.purge_state.is_not(None) | PhoneNumber.provider_error_code.is_not(
            None
        )
    else:
        upstream = (
            PhoneNumber.provider_failed_permanently.is_(True)
            | (
                PhoneNumber.purge_state.is_not(None)
                & PhoneNumber.provider_next_attempt_at.is_not(None)
                & (PhoneNumber.provider_next_attempt_at > now)
            )
            # Submitted in an order the carrier has not settled yet.
            | PhoneNumber.provider_order_id.is_not(None)
        )
    return purgeable_numbers(now) & upstream


def claimable_numbers(now: datetime) -> ColumnElement[bool]:
    """Purgeable numbers not yet claimed, or claimed and due for another upstream attempt;
    never one submitted in an order (its order settles it)."""
    return (
        purgeable_numbers(now)
        & PhoneNumber.provider_failed_permanently.is_(False)
        & PhoneNumber.provider_order_id.is_(None)
        & or_(
            PhoneNumber.purge_state.is_(None),
            PhoneNumber.provider_next_attempt_at.is_(None),
            PhoneNumber.provider_next_attempt_at <= now,
        )
    )
