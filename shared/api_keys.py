"""The HTTP API's built-in key store: keys made here, shown once, stored as SHA-256 hashes.

A key is 32 random bytes, so a plain SHA-256 of it cannot be reversed or guessed; a slow
password hash (bcrypt, argon2) would only add its cost to every request.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from shared import validation
from shared.accounts import require_account
from shared.clock import iso_timestamp, resolve_now
from shared.errors import ValidationError
from shared.models import ApiKey

PREFIX = "nrk_"
ID_LENGTH = 12  # the key's public id: PREFIX and the first characters of its random part


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def create_api_key(
    session: Session, *, account_id: str, now: datetime | None = None
) -> dict[str, str]:
    """A new key for the account: `{"account_id", "key"}`; the key itself is never stored."""
    account = require_account(session, account_id)
    key = PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            id=key[:ID_LENGTH],
            account_id=account.id,
            key_hash=hash_key(key),
            created_at=resolve_now(now),
        )
    )
    session.flush()
    return {"account_id": account.id, "key": key}


# Built once: every request of the API runs it, and building a statement costs more than
# running this one (bench/RESULTS.md, the API).
_LIVE_KEY = select(ApiKey.account_id).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
)


def account_for_key(connection: Session | Connection, key: str) -> str | None:
    """The account a live (not revoked) key belongs to, else None."""
    return connection.scalar(_LIVE_KEY, {"key_hash": hash_key(key)})


def revoke_api_key(session: Session, *, key: str, now: datetime | None = None) -> dict[str, Any]:
    """Revoke a key, given whole or by its id (as `api-key list` shows it); idempotent."""
    if not isinstance(key, str) or not key.startswith(PREFIX):
        raise _unknown_key()
    query = select(ApiKey).where(
        ApiKey.id == key if len(key) == ID_LENGTH else ApiKey.key_hash == hash_key(key)
    )
    row = session.scalars(query.with_for_update()).one_or_none()
    if row is None:
        raise _unknown_key()
    if row.revoked_at is None:
        row.revoked_at = resolve_now(now)
        session.flush()
    return _listed(row)


def list_api_keys(session: Session, *, account_id: str | None = None) -> list[dict[str, Any]]:
    """The keys (ids only, never a key), oldest first; of one account if given."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if account_id is not None:
        query = query.where(ApiKey.account_id == validation.account_id(account_id))
    return [_listed(row) for row in session.scalars(query)]


def _listed(row: ApiKey) -> dict[str, Any]:
    return {
        "key_id": row.id,
        "account_id": row.account_id,
        "created_at": iso_timestamp(row.created_at),
        "revoked_at": None if row.revoked_at is None else iso_timestamp(row.revoked_at),
    }


def _unknown_key() -> ValidationError:
    return ValidationError(
        "No such API key.",
        code="api_key_not_found",
        fix=f"Pass the key, or its id as `api-key list` shows it ({PREFIX}...).",
    )
