"""Accounts and numbers through their life: open, register, assign, release, repurchase, hold."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from dateutil.relativedelta import relativedelta
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import carriers, events, validation
from shared.accounts import require_account
from shared.clock import iso_timestamp, not_far_ahead, resolve_now
from shared.controls import OperatorRecord, operator_record
from shared.errors import UsageLimitError, ValidationError
from shared.listing import number_body
from shared.models import PLANS, Account, CampaignAssignment, PhoneNumber, PurgeRun
from shared.retention import is_repurchasable, repurchase_deadline, retention_window
from shared.run_status import RunStatus
from shared.settings import get_store_settings


def _not_found(phone_number: str, *, of_account: bool = True) -> ValidationError:
    """number_not_found. For an account's act, one error for "unknown" and "another
    account's": the answer must not leak existence. An operator's act (a hold, a campaign)
    names no account, so its error speaks of the number and the store only."""
    if not of_account:
        return ValidationError(
            f"Number {phone_number} is not in the store.",
            code="number_not_found",
            fix="Check the number (E.164, e.g. +14155550101); a purged number is gone for good "
            "(its tombstone keeps the record).",
        )
    return ValidationError(
        f"Number {phone_number} was not found on this account.",
        code="number_not_found",
        fix="Check the number (E.164) and that it belongs to the account you act for.",
    )


def _next_billing(now: datetime) -> date:
    return (now + relativedelta(months=1)).date()


def lock_number(session: Session, phone_number: object) -> PhoneNumber | None:
    """The number (validated E.164), locked for the rest of the transaction, if it exists."""
    return session.scalars(
        select(PhoneNumber)
        .where(PhoneNumber.phone_number == validation.phone_number(phone_number))
        .with_for_update()
    ).one_or_none()


def _require_number(session: Session, account_id: str | None, phone_number: object) -> PhoneNumber:
    """The number, locked, or number_not_found; with `account_id`, only that account's."""
    row = lock_number(session, phone_number)
    if row is None or (account_id is not None and row.account_id != account_id):
        raise _not_found(validation.phone_number(phone_number), of_account=account_id is not None)
    return row


def refuse_while_called(session: Session, number: PhoneNumber, *, doing: str) -> None:
    """Refuse a person's act (`doing`) on a number, locked by the caller, while a purge run is
    asking the carrier to release it: the call's answer decides, and the act would be
    acknowledged and then overtaken by it. A mark left by a run that died no longer counts
    once its record is closed (the next run of any kind closes it)."""
    run_id = number.provider_call_run_id
    if run_id is None:
        return
    running = session.scalar(
        select(PurgeRun.id).where(PurgeRun.id == run_id, PurgeRun.status == RunStatus.RUNNING)
    )
    if running is None:
        return
    raise ValidationError(
        f"Number {number.phone_number} is being purged: a purge run is asking the carrier to "
        f"release it right now, so it cannot be {doing}.",
        code="number_being_purged",
        fix="Try again in a minute, once the carrier has answered: if it did not release the "
        "number, the number stays in the store and this can be done then.",
    )


def refuse_while_submitted(number: PhoneNumber) -> None:
    """Refuse a hold on a number submitted in a carrier's order (a Bandwidth disconnect
    order, a Telnyx deletion job): its release is in the carrier's hands, and the order settles
    it whatever the store says; a hold would be acknowledged, then overtaken."""
    if number.provider_order_id is None:
        return
    raise ValidationError(
        f"Number {number.phone_number} is being purged: its release was submitted to the "
        f"carrier in order {number.provider_order_id}, so it cannot be put on hold.",
        code="number_being_purged",
        fix="The carrier settles the order by itself; if it keeps the number, the number "
        "stays in the store (with the carrier's code) and can be held then. To stop the "
        "release itself, cancel the order at the carrier first.",
    )


def _write_instant(now: datetime | None) -> datetime:
    """A write path's instant: `now`, refused (before any row is touched) when ahead of this
    host's clock by more than CLOCK_SKEW_MAX_SECONDS."""
    return not_far_ahead(now, tolerance=get_store_settings().clock_skew_max_seconds)


def _campaign_status(session: Session, number: PhoneNumber) -> str | None:
    return session.scalar(
        select(CampaignAssignment.status).where(CampaignAssignment.number_id == number.id)
    )


def _check_cap(session: Session, account: Account) -> None:
    active = session.execute(
        select(func.count())
        .select_from(PhoneNumber)
        .where(PhoneNumber.account_id == account.id, PhoneNumber.billing_status == "active")
    ).scalar_one()
    cap = PLANS[account.plan]
    if active >= cap:
        raise UsageLimitError(
            f"The {account.plan} plan allows {cap} active number{'s' if cap > 1 else ''}; "
            f"this account has {active}.",
            code="plan_limit_reached",
            fix="Release a number first, or upgrade the account to the paid plan (49 numbers).",
        )


def open_account(session: Session, *, account_id: str, plan: str) -> dict[str, Any]:
    """Create an account on the free (1 active number) or paid (49) plan."""
    account = Account(
        id=validation.account_id(account_id),
        plan=validation.plan(plan),
        created_at=resolve_now(None),
    )
    if session.get(Account, account.id) is not None:
        raise ValidationError(
            f"Account {account.id} already exists.",
            code="account_exists",
            fix="Use the existing account, or choose another id.",
        )
    session.add(account)
    session.flush()
    return {"accountId": account.id, "plan": account.plan}


def register_number(
    session: Session,
    *,
    account_id: str,
    phone_number: str,
    country_code: str,
    number_type: str,
    monthly_price: object,
    label: str | None = None,
    provider_number_id: str | None = None,
    now: datetime | None = None,
    carrier: str | None = None,
) -> dict[str, Any]:
    """Record a purchase: active, created now, billed a month on; 402 past the plan's cap.

    `carrier` records where the number is held (default: PROVIDER); its release is asked of
    that carrier, and `provider_number_id` must be an id of that carrier's.

    Ordering a number the account itself released, within its window, reactivates it and
    keeps its original createdAt (the platform's documented behaviour).
    """
    now = _write_instant(now)
    fields = {
        "phone_number": validation.phone_number(phone_number),
        "country_code": validation.country_code(country_code),
        "number_type": validation.number_type(number_type),
        "monthly_price": validation.monthly_price(monthly_price),
        "label": validation.label(label),
    }
    fields.update(carriers.number_carrier(carrier, provider_number_id))
    account = require_account(session, account_id, lock=True)
    existing = session.scalars(
        select(PhoneNumber).where(PhoneNumber.phone_number == fields["phone_number"])
    ).one_or_none()
    if existing is not None:
        if (
            existing.account_id == account.id
            and existing.released_at is not None
            and is_repurchasable(existing.released_at, now)
        ):
            return repurchase_number(
                session, account_id=account.id, phone_number=existing.phone_number, now=now
            )
        raise ValidationError(
            f"Number {fields['phone_number']} is not available.",
            code="number_unavailable",
            fix="Search for another available number.",
        )
    _check_cap(session, account)
    number = PhoneNumber(
        account_id=account.id,
        created_at=now,
        billing_status="active",
        next_billing_date=_next_billing(now),
        purge_hold=False,
        **fields,
    )
    try:
        # A savepoint: a concurrent order of the same number must not break the caller's
        # transaction, only this call.
        with session.begin_nested():
            session.add(number)
    except IntegrityError:
        raise ValidationError(
            f"Number {fields['phone_number']} is not available.",
            code="number_unavailable",
            fix="Search for another available number.",
        ) from None
    events.record(session, kind="registered", number=number, now=now)
    return number_body(number, None)


def assign_campaign(
    session: Session, *, phone_number: str, campaign_id: str, status: str
) -> dict[str, Any]:
    """Store the number's 10DLC campaign assignment (US numbers only); returns the number."""
    validation.phone_number(phone_number)
    campaign = validation.short_id(campaign_id, name="campaign_id")
    a2p = validation.a2p_status(status)
    number = _require_number(session, None, phone_number)
    if number.country_code != "US":
        raise ValidationError(
            "10DLC campaigns apply to US numbers only.",
            code="a2p_us_only",
            fix="Assign campaigns to US (+1) numbers; other countries have no 10DLC status.",
        )
    assignment = session.get(CampaignAssignment, number.id)
    if assignment is None:
        session.add(
            CampaignAssignment(
                number_id=number.id, campaign_id=campaign, status=a2p, assigned_at=resolve_now(None)
            )
        )
    else:
        assignment.campaign_id, assignment.status = campaign, a2p
    session.flush()
    return number_body(number, a2p)


def _not_before(now: datetime, since: datetime, action: str, state: str, *, code: str) -> None:
    """Refuses to date `action` at `now`, before the number was `state` (at `since`)."""
    if now < since:
        raise ValidationError(
            f"The {action} time is before the number was {state}.",
            code=code,
            fix=f"{action.capitalize()} with the current time (leave now unset).",
        )


def release_number(
    session: Session, *, account_id: str, phone_number: str, now: datetime | None = None
) -> dict[str, Any]:
    """DELETE /numbers/{phoneNumber}: the number joins the released list for the window."""
    now = _write_instant(now)
    account = require_account(session, account_id)
    number = _require_number(session, account.id, phone_number)
    if number.billing_status != "active":
        raise ValidationError(
            f"Number {number.phone_number} is already released.",
            code="number_already_released",
            fix="Nothing to do: it stays in the released list until its repurchase deadline.",
        )
    _not_before(now, number.created_at, "release", "registered", code="release_before_created")
    number.billing_status, number.released_at = "released", now
    events.record(session, kind="released", number=number, now=now)
    return {"phoneNumber": number.phone_number, "released": True, "releasedAt": iso_timestamp(now)}


def repurchase_number(
    session: Session, *, account_id: str, phone_number: str, now: datetime | None = None
) -> dict[str, Any]:
    """Buy a released number back within its window; keeps createdAt, bills a month on."""
    now = _write_instant(now)
    account = require_account(session, account_id, lock=True)
    number = _require_number(session, account.id, phone_number)
    if number.billing_status != "released" or number.released_at is None:
        raise ValidationError(
            f"Number {number.phone_number} is active, not released.",
            code="number_not_released",
            fix="Only numbers in the released list can be repurchased.",
        )
    _not_before(now, number.released_at, "repurchase", "released", code="repurchase_before_release")
    if number.purge_state is not None:
        raise ValidationError(
            f"Number {number.phone_number} is being purged and can no longer be repurchased.",
            code="number_being_purged",
            fix="Its repurchase window has closed; order a new number instead.",
        )
    if not is_repurchasable(number.released_at, now):
        raise ValidationError(
            f"The repurchase window for {number.phone_number} closed at "
            f"{iso_timestamp(repurchase_deadline(number.released_at))}.",
            code="repurchase_window_closed",
            fix=f"Released numbers can be bought back for {retention_window().days} days; "
            "order a new number instead.",
        )
    _check_cap(session, account)
    number.billing_status, number.released_at = "active", None
    number.next_billing_date = _next_billing(now)
    events.record(session, kind="repurchased", number=number, now=now)
    return number_body(number, _campaign_status(session, number))


def set_purge_hold(
    session: Session,
    *,
    phone_number: str,
    held: bool,
    now: datetime | None = None,
    record: OperatorRecord | None = None,
) -> dict[str, Any]:
    """Put a number on hold (never purged while held) or lift the hold.

    `record`: who holds it, why and since when (`controls.operator_record` checks one), stored
    with the hold (replacing an earlier one); only with `held=True`. Lifting a hold forgets
    its record (the schema allows one only on a held number).
    """
    now = resolve_now(now)
    validation.phone_number(phone_number)
    hold = validation.flag(held, name="held")
    if record is not None:
        if not hold:
            raise ValidationError(
                "A hold record goes with a hold, not with lifting one.",
                code="invalid_hold_record",
                fix="Pass record only with held=True.",
            )
        record = operator_record(by=record.by, reason=record.reason, now=record.at)
    number = _require_number(session, None, phone_number)
    if hold and not number.purge_hold:
        # A run may be asking the carrier to release it: the hold is refused rather than
        # acknowledged and overtaken; one placed before that call is honoured by it.
        refuse_while_called(session, number, doing="put on hold")
        refuse_while_submitted(number)
    if not hold:
        # The record goes first: the schema allows one only on a held number.
        number.hold_reason = number.hold_set_by = number.hold_set_at = None
    elif record is not None:
        number.hold_reason, number.hold_set_by = record.reason, record.by
        number.hold_set_at = record.at
    if number.purge_hold != hold:
        number.purge_hold = hold
        events.record(session, kind="held" if hold else "unheld", number=number, now=now)
    session.flush()
    return {"phoneNumber": number.phone_number, "held": number.purge_hold}
