"""Who calls: `Authorization: Bearer <key>`, checked against the key store, or a platform's own.

`Authenticate` is any callable taking the request and returning the account id it acts for (or
raising `UnauthorizedError`). It runs in the worker thread of the request, so it may block (a
database or a cache lookup).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine
from starlette.requests import Request

from shared.api_keys import account_for_key
from shared.errors import UnauthorizedError

Authenticate = Callable[[Request], str]

_FIX = "Send `Authorization: Bearer <key>` with a live key (`numbers-retention api-key create`)."


def bearer_key(request: Request) -> str:
    """The key of an `Authorization: Bearer <key>` header; 401 when there is none."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise UnauthorizedError("Missing bearer API key.", code="missing_api_key", fix=_FIX)
    return key


def key_store(engine: Engine) -> Authenticate:
    """Authentication by the built-in key store: a live key's account; 401 otherwise."""

    def authenticate(request: Request) -> str:
        key = bearer_key(request)
        # One statement in autocommit: no BEGIN/ROLLBACK round trips on every request.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            account = account_for_key(connection, key)
        if account is None:
            # Unknown and revoked keys answer alike: the answer tells nothing about a key.
            raise UnauthorizedError("Invalid API key.", code="invalid_api_key", fix=_FIX)
        return account

    return authenticate
