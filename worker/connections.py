"""This process's connections, one per URL: made on first use, dropped in a forked child."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import redis
from celery import signals
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory, normalize_url
from shared.errors import InternalError, ValidationError
from shared.purge.pacing import WORKER_APPLICATION_NAME
from shared.settings import DB_PING_AFTER_IDLE_SECONDS, Settings


def existing_store(url: str) -> str:
    """`url`, unless it names a SQLite file that does not exist.

    Only `run`, `migrate` and `seed-demo` create a store (shared.db.make_engine would, on
    first connect): anything else that finds none was pointed at the wrong place, and says so
    instead of opening a second, empty store there.
    """
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).absolute()
        if not path.exists():
            raise InternalError(
                f"There is no store at {path}.",
                code="store_not_found",
                fix=(
                    "Point NUMBERS_RETENTION_DATA (the folder of numbers.db) or DATABASE_URL at"
                    " the store you mean, or create this one with `numbers-retention migrate`"
                    " (or `seed-demo`, `run`)."
                ),
            )
    return url


# This process's engines, by URL and idle ping (`engine`); emptied in a forked child.
_engines: dict[tuple[str, float], Engine] = {}


def engine(url: str, ping_after_idle_seconds: float = DB_PING_AFTER_IDLE_SECONDS) -> Engine:
    """The engine for the store at `url`, which must exist (`existing_store`).

    On PostgreSQL its sessions carry the worker's application name: the purge does not take
    them for the API's (shared/purge/pacing.py), and operators see them in pg_stat_activity.
    """
    key = (url, ping_after_idle_seconds)
    if key not in _engines:
        url = existing_store(url)
        named = make_url(normalize_url(url)).get_backend_name() == "postgresql"
        _engines[key] = make_engine(
            url,
            ping_after_idle_seconds=ping_after_idle_seconds,
            **({"connect_args": {"application_name": WORKER_APPLICATION_NAME}} if named else {}),
        )
    return _engines[key]


def settings_engine(settings: Settings) -> Engine:
    """The engine of the store the settings name."""
    return engine(settings.resolved_database_url(), settings.db_ping_after_idle_seconds)


def dispose_engines() -> None:
    """Close this process's engines' pooled connections and forget them."""
    for made in _engines.values():
        made.dispose()
    _engines.clear()


def session_factory(settings: Settings) -> sessionmaker[Session]:
    """Sessions on the engine of the store the settings name."""
    return make_session_factory(settings_engine(settings))


def make_redis(url: str, *, timeout: float = 10, connect_timeout: float = 5) -> redis.Redis:
    """A new client for the Redis at `url`: a connection gives up after `connect_timeout`
    seconds, a reply after `timeout`, so that a dead Redis fails a call instead of hanging it."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=connect_timeout)


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return make_redis(url)


def redis_client(settings: Settings) -> redis.Redis:
    """The Redis that holds the releasable set; a clear error where none is configured."""
    url = settings.resolved_redis_url()
    if not url:
        raise ValidationError(
            "No Redis is configured for the releasable set.",
            code="redis_not_configured",
            fix="Set REDIS_URL, e.g. redis://localhost:6379/0.",
        )
    return _redis(url)


@signals.worker_process_init.connect
def _fresh_connections(**_kwargs: Any) -> None:
    # A forked child must not reuse the parent's sockets.
    _engines.clear()
    _redis.cache_clear()
