"""Operators' live controls of the purge, kept in the store: every run reads them per batch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import validation
from shared.clock import iso_timestamp, resolve_now
from shared.errors import InternalError, ValidationError
from shared.models import PurgeControl

PAUSE = "pause"
PACE = "pace"
REASON_MAX = 500


@dataclass(frozen=True)
class OperatorRecord:
    """An operator's act as recorded (a pause, a pace, a hold, a settlement by hand): why,
    who, and when."""

    reason: str | None
    by: str
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "by": self.by, "at": iso_timestamp(self.at)}


# Who paused the purge, when and why.
Pause = OperatorRecord


def operator_record(*, by: object, reason: object, now: datetime | None) -> OperatorRecord:
    """An operator's act as recorded, checked.

    A 400 for a reason over REASON_MAX characters or not one printable line, or a bad `by`;
    `now` defaults to the clock.
    """
    return OperatorRecord(
        reason=validation.text(reason, name="reason", limit=REASON_MAX, printable=True),
        by=validation.short_id(
            by,
            name="by",
            fix="Pass who acts, e.g. --by alice or an operator id of at most 64 printable "
            "characters.",
        ),
        at=resolve_now(now),
    )


@dataclass(frozen=True)
class Pace:
    """An operator's ceiling on purged rows per second: who set it, when and why."""

    rows_per_second: float
    reason: str | None
    by: str
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_per_second": self.rows_per_second,
            "reason": self.reason,
            "by": self.by,
            "at": iso_timestamp(self.at),
        }


@dataclass(frozen=True)
class Controls:
    """Every live control at once: what a run reads before each batch (one query)."""

    pause: Pause | None
    pace: Pace | None


def read_controls(session: Session) -> Controls:
    """The stored pause and pace, read fresh (a run calls this before every batch)."""
    rows = {
        row.name: row
        for row in session.scalars(select(PurgeControl).execution_options(populate_existing=True))
    }
    pause, pace = rows.get(PAUSE), rows.get(PACE)
    return Controls(
        pause=Pause(reason=pause.reason, by=pause.set_by, at=pause.set_at) if pause else None,
        pace=Pace(
            rows_per_second=pace.rows_per_second,
            reason=pace.reason,
            by=pace.set_by,
            at=pace.set_at,
        )
        if pace is not None and pace.rows_per_second is not None
        else None,
    )


def _locked(
    session: Session,
    name: str,
    record: OperatorRecord,
    rows_per_second: float | None = None,
) -> tuple[PurgeControl, bool]:
    """The control `name`, locked: the one stored (True), else one stored now with `record`.

    Two operators acting at once both find no row to lock: the second insert then fails on
    the name. It is made in a savepoint, so that only it is undone, and the row the first
    committed is locked and returned instead (never a raw IntegrityError).
    """
    for _attempt in range(3):
        row = session.get(PurgeControl, name, with_for_update=True, populate_existing=True)
        if row is not None:
            return row, True
        row = PurgeControl(
            name=name,
            reason=record.reason,
            set_by=record.by,
            set_at=record.at,
            rows_per_second=rows_per_second,
        )
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            continue  # stored meanwhile: lock that one
        return row, False
    raise InternalError(
        f"The {name} control changed under three attempts to store it.",
        code="control_contended",
        fix="Run the command again.",
    )


def _store(
    session: Session,
    name: str,
    record: OperatorRecord,
    *,
    rows_per_second: float | None = None,
) -> None:
    """Insert or replace the control `name` with an operator's record (and a pace's rate)."""
    row, _stored = _locked(session, name, record, rows_per_second)
    row.reason, row.set_by, row.set_at = record.reason, record.by, record.at
    row.rows_per_second = rows_per_second
    session.flush()


def _lift(session: Session, name: str) -> bool:
    """Delete the control `name`; whether there was one."""
    lifted = session.scalars(
        delete(PurgeControl).where(PurgeControl.name == name).returning(PurgeControl.name)
    ).all()
    return bool(lifted)


def pause_purge(
    session: Session, *, by: str, reason: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Pause every purge run at its next batch, until `resume_purge`.

    Pausing again with a reason replaces the pause's record (who, when, why); pausing again
    without one keeps the first pause as it was, its reason included. `was_paused`: whether
    a pause was stored already.
    """
    record = operator_record(by=by, reason=reason, now=now)
    row, was_paused = _locked(session, PAUSE, record)
    if was_paused and record.reason is None:
        kept = Pause(reason=row.reason, by=row.set_by, at=row.set_at)
        return {"paused": True, **kept.as_dict(), "was_paused": True}
    _store(session, PAUSE, record)
    return {"paused": True, **record.as_dict(), "was_paused": was_paused}


def resume_purge(session: Session) -> dict[str, Any]:
    """Lift the stored pause (PURGE_PAUSED, a deploy-time switch, is not touched)."""
    return {"paused": False, "was_paused": _lift(session, PAUSE)}


def set_pace(
    session: Session,
    *,
    rows_per_second: float,
    by: str,
    reason: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Cap every purge run at `rows_per_second` from its next batch on, until `clear_pace`."""
    if (
        not isinstance(rows_per_second, int | float)
        or isinstance(rows_per_second, bool)
        or not 0 < rows_per_second < float("inf")
    ):
        raise ValidationError(
            f"rows_per_second must be a positive number, got {rows_per_second!r}.",
            code="invalid_pace",
            fix="Pass a ceiling such as 2000, or clear the pace with `pace --off`.",
        )
    record = operator_record(by=by, reason=reason, now=now)
    pace = Pace(float(rows_per_second), reason=record.reason, by=record.by, at=record.at)
    _store(session, PACE, record, rows_per_second=pace.rows_per_second)
    return {"pace": pace.as_dict()}


def clear_pace(session: Session) -> dict[str, Any]:
    """Lift the stored pace (PURGE_MAX_ROWS_PER_SECOND, a deploy-time ceiling, stays)."""
    return {"pace": None, "was_paced": _lift(session, PACE)}


def pause_reason(pause: Pause | None, *, deploy_paused: bool) -> str | None:
    """Why runs must not purge now (the deploy switch or a stored pause), or None."""
    if deploy_paused:
        return "PURGE_PAUSED is set"
    if pause is None:
        return None
    return f"paused by {pause.by}" + (f": {pause.reason}" if pause.reason else "")
