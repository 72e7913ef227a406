"""This process's connections, one per URL: made on first use, dropped in a forked child."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis
from celery import signals
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, make_session_factory
from shared.errors import ValidationError
from shared.settings import Settings


@lru_cache(maxsize=4)
def engine(url: str) -> Engine:
    """The engine for the store at `url`."""
    return make_engine(url)


def session_factory(settings: Settings) -> sessionmaker[Session]:
    """Sessions on the engine of the store the settings name."""
    return make_session_factory(engine(settings.resolved_database_url()))


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
    engine.cache_clear()
    _redis.cache_clear()
