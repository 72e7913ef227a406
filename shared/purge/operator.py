"""What a person does about a number the purge keeps for its upstream state: let the purge
retry it (`reset_upstream`), or settle it by hand (`resolve_by_operator`).

Both act on one number under its row lock, in the caller's transaction, and are refused while
a purge run's call to the carrier for that number is in flight.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import events
from shared.clock import not_ahead, resolve_now
from shared.controls import operator_record
from shared.errors import ValidationError
from shared.lifecycle import lock_number, refuse_while_called
from shared.models import PhoneNumber
from shared.purge.statements import TombstoneAndDelete
from shared.retention import is_purgeable, purgeable_numbers
from shared.tombstones import tombstone_values


def reset_upstream(session: Session, *, phone_number: str) -> dict[str, object]:
    """Clear a claimed number's upstream failure (after a person fixed its cause)."""
    number = lock_number(session, phone_number)
    if number is None or number.provider_error_code is None:
        raise ValidationError(
            f"Number {phone_number} has no upstream failure to retry.",
            code="no_upstream_failure",
            fix="`numbers-retention status` lists the numbers kept by upstream failures.",
        )
    refuse_while_called(session, number, doing="retried")
    number.provider_failed_permanently = False
    number.provider_next_attempt_at = None
    events.record(session, kind="upstream_reset", number=number, now=resolve_now(None))
    return {"phoneNumber": number.phone_number, "retry": "next purge run"}


def resolve_by_operator(
    session: Session,
    *,
    phone_number: str,
    reason: object,
    by: str,
    now: datetime | None = None,
    carrier: str | None = None,
    ported_out: bool = False,
) -> dict[str, object]:
    """A person settled a number upstream by hand: tombstone and delete it now, recording
    who and why. Only for a number that is due and carries upstream state (claimed, or kept
    by a provider error), which the purge itself would never delete without the provider.
    Like a purge run, it refuses an instant ahead of this host's clock.

    The ledger records `carrier` (the carrier that held it; 'unknown' when not given) and the
    disconnect reason 'operator', or 'ported_out' when the number left by a port-out (not a
    permanent disconnection: never in the disconnections report)."""
    record = operator_record(by=by, reason=reason, now=not_ahead(now))
    note, who, now = record.reason, record.by, record.at
    if note is None:
        raise ValidationError(
            "A reason is required to settle a number upstream by hand.",
            code="invalid_reason",
            fix="Say what was done, e.g. --reason 'released in the Telnyx portal, ticket 123'.",
        )
    number = lock_number(session, phone_number)
    if number is None or (number.purge_state is None and number.provider_error_code is None):
        raise ValidationError(
            f"Number {phone_number} has no upstream state to settle.",
            code="no_upstream_state",
            fix="Only numbers `status` lists as kept upstream can be settled by hand; "
            "the purge removes the others by itself.",
        )
    assert number.released_at is not None  # claimed rows are released (a CHECK says so)
    refuse_while_called(session, number, doing="settled by hand")
    if not is_purgeable(number.released_at, now, held=number.purge_hold):
        raise ValidationError(
            f"Number {number.phone_number} is not due for purging.",
            code="number_not_due",
            fix="Lift its hold, or wait for its repurchase deadline.",
        )
    run_id = str(uuid.uuid4())
    disconnect = "ported_out" if ported_out else "operator"
    stone = partial(
        tombstone_values,
        now=now,
        run_id=run_id,
        resolution="operator",
        resolved_by=who,
        note=note,
        carrier=(carrier or "unknown")[:16],
        reason=disconnect,
    )
    # Its upstream state and the rule, checked again by the statement under the row's lock.
    upstream = PhoneNumber.purge_state.is_not(None) | PhoneNumber.provider_error_code.is_not(None)
    dialect = session.get_bind().dialect.name
    TombstoneAndDelete.build(dialect, purgeable_numbers(now) & upstream, stone).run(
        session, [number.id]
    )
    session.expunge(number)
    return {
        "phoneNumber": number.phone_number,
        "purged": True,
        "resolution": "operator",
        "resolvedBy": who,
        "disconnectReason": disconnect,
        "runId": run_id,
    }


def permanent_failures(session: Session, *, provider_code: str | None = None) -> list[str]:
    """The numbers the provider refused for good (`retry-upstream --all-permanent`), by id;
    with `provider_code`, only those it refused with that code."""
    query = select(PhoneNumber.phone_number).where(
        PhoneNumber.provider_failed_permanently.is_(True)
    )
    if provider_code is not None:
        query = query.where(PhoneNumber.provider_code == provider_code)
    return list(session.scalars(query.order_by(PhoneNumber.id)))
