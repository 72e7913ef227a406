"""The pool without pre-ping: a connection left idle is checked before use, a busy one is not."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from shared.db import engine_for, make_engine
from shared.settings import get_store_settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def pool_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url, ping_after_idle_seconds=0.5, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _terminate_pooled_backend(engine: Engine, admin: Engine) -> None:
    """What a database restart does to a pooled connection: its backend goes away."""
    with engine.connect() as connection:
        pid = connection.scalar(text("SELECT pg_backend_pid()"))
    with admin.connect() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_an_idle_connection_is_pinged_and_replaced(pool_engine: Engine, pg_engine: Engine) -> None:
    _terminate_pooled_backend(pool_engine, pg_engine)
    time.sleep(0.6)  # idle past the threshold: checked at checkout, replaced, no error
    with pool_engine.connect() as connection:
        assert connection.scalar(text("SELECT 1")) == 1


def test_a_busy_connection_is_not_pinged_and_one_call_fails(
    pool_engine: Engine, pg_engine: Engine
) -> None:
    _terminate_pooled_backend(pool_engine, pg_engine)
    # Within the threshold no ping: the first use meets the dead connection (the price of not
    # pinging every checkout), SQLAlchemy drops the pool, and the next call works.
    with pytest.raises(OperationalError), pool_engine.connect() as connection:
        connection.scalar(text("SELECT 1"))
    with pool_engine.connect() as connection:
        assert connection.scalar(text("SELECT 1")) == 1


def test_the_settings_idle_ping_reaches_the_engine(
    settings_env: Callable[..., None], pg_url: str, pg_engine: Engine
) -> None:
    """engine_for(settings): DB_PING_AFTER_IDLE_SECONDS of the settings given, not of the
    environment read by make_engine (which reads none)."""
    settings_env(DATABASE_URL=pg_url, DB_PING_AFTER_IDLE_SECONDS="0.5")
    engine = engine_for(get_store_settings(), pool_size=1, max_overflow=0)
    try:
        _terminate_pooled_backend(engine, pg_engine)
        time.sleep(0.6)  # idle past the settings' threshold: pinged and replaced, no error
        with engine.connect() as connection:
            assert connection.scalar(text("SELECT 1")) == 1
    finally:
        engine.dispose()
