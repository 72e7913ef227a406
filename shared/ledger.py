"""The ledger of disconnections: what each tombstone records about how its number left.

Every tombstone carries the carrier that held the number, how the carrier proved the release
(`release_proof`), what was removed from the number there first (`detach_steps`, see
shared/detach.py), and the UTC date and the reason of its permanent disconnection.

`disconnections` reads a month of it in the shape a provider files with the FCC's Reassigned
Numbers Database (RND): each telephone number with the date of its most recent permanent
disconnection. Only the US and its territories' geographic numbers are reported there, and a
number ported out is not permanently disconnected.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, select, update
from sqlalchemy.orm import Session

from shared.errors import ValidationError
from shared.models import Base, PurgedNumber


def release_proof(resolution: str, provider_number_id: str | None) -> dict[str, Any]:
    """How the carrier proved a release, as the release checked it (shared/provider.py)."""
    if resolution == "provider":  # a 2xx answering the phone-number record of that very id
        return {
            "resolution": resolution,
            "call": f"DELETE /v2/phone_numbers/{provider_number_id}",
            "record": {"id": provider_number_id, "record_type": "phone_number"},
        }
    if resolution == "not_found":  # gone already, for a key proven to hold this store's numbers
        return {
            "resolution": resolution,
            "call": f"DELETE /v2/phone_numbers/{provider_number_id}",
            "error": "HTTP 404 in Telnyx's error shape",
        }
    return {"resolution": resolution}


def record_proofs(session: Session, proofs: dict[int, dict[str, Any]]) -> None:
    """Write each tombstoned number's release proof and detach steps, in the caller's
    transaction, after its tombstone (`proofs`: number id -> {"release", "detach"})."""
    if not proofs:
        return
    stones = Base.metadata.tables[PurgedNumber.__tablename__]
    session.execute(
        update(stones)
        .where(stones.c.number_id == bindparam("b_number_id"))
        .values(
            release_proof=bindparam("b_release", type_=stones.c.release_proof.type),
            detach_steps=bindparam("b_detach", type_=stones.c.detach_steps.type),
        ),
        [
            {"b_number_id": number_id, "b_release": proof["release"], "b_detach": proof["detach"]}
            for number_id, proof in proofs.items()
        ],
    )


# --- the monthly report of permanent disconnections (the FCC's Reassigned Numbers Database) ---

_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
# Geographic numbers of the United States and its territories: the numbers a provider reports
# to the RND (toll-free numbers are reported by the Toll Free Number Administrator).
RND_COUNTRIES = ("US", "PR", "VI", "GU", "AS", "MP")
TOLL_FREE_NPAS = ("800", "833", "844", "855", "866", "877", "888")
PERMANENT = ("released", "operator")  # a port-out is not a permanent disconnection


@dataclass(frozen=True)
class Month:
    """A calendar month: its first day, and the first day of the next (None after 9999-12)."""

    label: str
    first: date
    after: date | None


def parse_month(value: object) -> Month:
    """`YYYY-MM` as a Month; anything else (another format, month 13, year 0) is refused."""
    text = value.strip() if isinstance(value, str) else ""
    match = _MONTH.fullmatch(text)
    year = int(match[1]) if match else 0
    if match is None or year < 1:
        raise ValidationError(
            f"The month must be given as YYYY-MM (e.g. 2025-11), not {str(value)[:40]!r}.",
            code="invalid_month",
            fix="Pass the calendar month to report, e.g. --month 2025-11.",
        )
    month = int(match[2])
    after = None if (year, month) == (9999, 12) else date(year + month // 12, month % 12 + 1, 1)
    return Month(text, date(year, month, 1), after)


def _in_month(month: Month) -> ColumnElement[bool]:
    when = PurgedNumber.disconnect_date >= month.first
    return when if month.after is None else when & (PurgedNumber.disconnect_date < month.after)


def _reportable() -> ColumnElement[bool]:
    """A US (or US territory) geographic number's permanent disconnection."""
    return (
        PurgedNumber.disconnect_reason.in_(PERMANENT)
        & PurgedNumber.country_code.in_(RND_COUNTRIES)
        & PurgedNumber.phone_number.like("+1%")
        & (func.length(PurgedNumber.phone_number) == 12)
        & (PurgedNumber.number_type != "toll_free")
        & func.substr(PurgedNumber.phone_number, 3, 3).not_in(TOLL_FREE_NPAS)
    )


def disconnections(session: Session, month: Month) -> Iterator[tuple[str, date]]:
    """The month's permanent disconnections as the RND takes them: each 10-digit telephone
    number once, with the date of its most recent permanent disconnection in the month;
    by date, then number."""
    latest = func.max(PurgedNumber.disconnect_date).label("latest")
    rows = session.execute(
        select(PurgedNumber.phone_number, latest)
        .where(_in_month(month), _reportable())
        .group_by(PurgedNumber.phone_number)
        .order_by(latest, PurgedNumber.phone_number)
        .execution_options(yield_per=5000)
    )
    for phone_number, when in rows:
        # SQLite answers max() of a DATE column as text.
        yield phone_number[2:], when if isinstance(when, date) else date.fromisoformat(when)


def left_out(session: Session, month: Month) -> dict[str, int]:
    """The month's tombstones the report leaves out, counted by why."""
    not_us = (
        ~PurgedNumber.country_code.in_(RND_COUNTRIES)
        | ~PurgedNumber.phone_number.like("+1%")
        | (func.length(PurgedNumber.phone_number) != 12)
    )
    toll_free = (PurgedNumber.number_type == "toll_free") | func.substr(
        PurgedNumber.phone_number, 3, 3
    ).in_(TOLL_FREE_NPAS)
    ported_out = PurgedNumber.disconnect_reason == "ported_out"
    counts = {
        "ported_out": ported_out,
        "not_us": ~ported_out & not_us,
        "toll_free": ~ported_out & ~not_us & toll_free,
    }
    return {
        why: session.scalar(select(func.count()).where(_in_month(month), test)) or 0
        for why, test in counts.items()
    }


def disconnects_report(session: Session, month: Month) -> dict[str, Any]:
    """The report as one JSON body: the month, its disconnections, what was left out."""
    rows = [
        {"telephone_number": number, "disconnect_date": when.isoformat()}
        for number, when in disconnections(session, month)
    ]
    return {
        "month": month.label,
        "count": len(rows),
        "disconnections": rows,
        "left_out": left_out(session, month),
    }
