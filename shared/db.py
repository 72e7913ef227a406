"""Engines and sessions for the store; URLs are normalised to psycopg 3 and never logged raw."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import DB_PING_AFTER_IDLE_SECONDS, StoreSettings


def normalize_url(url: str) -> str:
    """Make `postgresql://` and `postgres://` URLs use the psycopg 3 driver."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, safe for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # an unparsable URL is simply not shown
        return "<unparsable url>"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling emits BEGIN late (and none before a SAVEPOINT);
    # turn it off and let `_begin_immediate` open every transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets the worker's readers and the purge's writer overlap; busy_timeout waits for
    # the other process's write lock instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_immediate(connection: Connection) -> None:
    # SQLite has no row locks: a plain BEGIN lets two transactions read the same rows and
    # both act on them (two repurchases past a plan's cap, a repurchase between a purge's
    # pick and its update). BEGIN IMMEDIATE takes the write lock first, so writers are
    # serialised and every rule PostgreSQL's row locks enforce holds here too. A connection
    # that only reads may ask for `execution_options(sqlite_begin="DEFERRED")`.
    mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
    connection.exec_driver_sql(f"BEGIN {'DEFERRED' if mode == 'DEFERRED' else 'IMMEDIATE'}")


def engine_for(settings: StoreSettings, **kwargs: Any) -> Engine:
    """An engine for the store the settings name (DATABASE_URL, else the embedded default),
    pinging idle connections as DB_PING_AFTER_IDLE_SECONDS says."""
    return make_engine(
        settings.resolved_database_url(),
        ping_after_idle_seconds=settings.db_ping_after_idle_seconds,
        **kwargs,
    )


def make_engine(
    url: str, *, ping_after_idle_seconds: float = DB_PING_AFTER_IDLE_SECONDS, **kwargs: Any
) -> Engine:
    """An engine for `url`; SQLite folders are created. Reads no setting:
    `engine_for` builds one from the settings given."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)
        return engine
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_after_idle(engine, ping_after_idle_seconds)
    return engine


def _ping_after_idle(engine: Engine, idle_seconds: float) -> None:
    """Check a pooled connection before use only when it sat idle longer than `idle_seconds`.

    Pinging every checkout (pool_pre_ping) costs the API's list a round trip per call. A busy
    pool's connections are seconds old; the ones that outlived a database restart are mostly
    those that sat idle meanwhile, and those are checked. A connection that still fails makes
    SQLAlchemy drop the whole pool at once (disconnect detection), and the tasks retry on
    OperationalError: at most one call per process fails after a restart.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("checked_in")
        if since is None or time.monotonic() - since <= idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
            dbapi_connection.rollback()  # the ping's SELECT opened a transaction
        except engine.dialect.loaded_dbapi.Error as error:
            # SQLAlchemy's documented signal: discard this connection, check out another.
            raise DisconnectionError(str(error)) from error


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit (bodies are built from them)."""
    return sessionmaker(engine, expire_on_commit=False)
