"""Operators' live controls of the purge, kept in the store: every run reads them per batch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from shared import validation
from shared.clock import iso_timestamp, resolve_now
from shared.models import PurgeControl

PAUSE = "pause"
REASON_MAX = 500


@dataclass(frozen=True)
class Pause:
    """Who paused the purge, when and why."""

    reason: str | None
    by: str
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "by": self.by, "at": iso_timestamp(self.at)}


def read_pause(session: Session) -> Pause | None:
    """The stored pause, or None when the purge may run."""
    row = session.get(PurgeControl, PAUSE, populate_existing=True)
    if row is None:
        return None
    return Pause(reason=row.reason, by=row.set_by, at=row.set_at)


def pause_purge(
    session: Session, *, by: str, reason: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Pause every purge run at its next batch, until `resume_purge`; pausing again updates it."""
    pause = Pause(
        reason=validation.text(reason, name="reason", limit=REASON_MAX),
        by=validation.short_id(by, name="by"),
        at=resolve_now(now),
    )
    row = session.get(PurgeControl, PAUSE, with_for_update=True)
    if row is None:
        session.add(PurgeControl(name=PAUSE, reason=pause.reason, set_by=pause.by, set_at=pause.at))
    else:
        row.reason, row.set_by, row.set_at = pause.reason, pause.by, pause.at
    session.flush()
    return {"paused": True, **pause.as_dict()}


def resume_purge(session: Session) -> dict[str, Any]:
    """Lift the stored pause (PURGE_PAUSED, a deploy-time switch, is not touched)."""
    lifted = session.scalars(
        delete(PurgeControl).where(PurgeControl.name == PAUSE).returning(PurgeControl.name)
    ).all()
    return {"paused": False, "was_paused": bool(lifted)}


def pause_reason(session: Session, *, deploy_paused: bool) -> str | None:
    """Why runs must not purge now (the deploy switch or a stored pause), or None."""
    if deploy_paused:
        return "PURGE_PAUSED is set"
    pause = read_pause(session)
    if pause is None:
        return None
    return f"paused by {pause.by}" + (f": {pause.reason}" if pause.reason else "")
