"""Accounts as the API knows them: the one it acts for, or a 401."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import validation
from shared.errors import UnauthorizedError
from shared.models import Account


def require_account(session: Session, account_id: object, *, lock: bool = False) -> Account:
    """The account, or a 401: the API only acts for an account it knows."""
    query = select(Account).where(Account.id == validation.account_id(account_id))
    account = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if account is None:
        raise UnauthorizedError(
            "No such account.",
            code="account_not_found",
            fix="Open the account first, or check the account id your credentials belong to.",
        )
    return account
