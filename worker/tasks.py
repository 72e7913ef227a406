"""Thin Celery tasks: open a session, call one function of `shared`, return its JSON summary."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

import redis
from celery import signals
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared import validation
from shared.db import make_engine, make_session_factory
from shared.errors import ValidationError
from shared.purge import purge_expired
from shared.releasable import publish_releasable
from shared.retention import as_utc
from shared.settings import get_settings
from worker.app import PURGE_HARD_MARGIN, PURGE_SOFT_MARGIN, app, redis_url
from worker.stopping import STOP

settings = get_settings()

# Retried with backoff and jitter: a database or Redis that is briefly away. Anything else
# (bad input, a bug) fails the task at once.
TRANSIENT = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)
RETRY: dict[str, Any] = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": settings.task_retry_backoff,
    "retry_backoff_max": settings.task_retry_backoff_max,
    "retry_jitter": True,
    "max_retries": 8,
}


@lru_cache(maxsize=1)
def engine() -> Engine:
    """This process's engine, made on first use (after the pool has forked)."""
    return make_engine()


def session_factory() -> sessionmaker[Session]:
    """Sessions on this process's engine."""
    return make_session_factory(engine())


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    """This process's Redis client for the releasable set."""
    url = redis_url(get_settings())
    if not url:
        raise ValidationError(
            "No Redis is configured for the releasable set.",
            code="redis_not_configured",
            fix="Set REDIS_URL, e.g. redis://localhost:6379/0.",
        )
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


@signals.worker_process_init.connect
def _fresh_connections(**_kwargs: Any) -> None:
    # A forked child must not reuse the parent's sockets.
    engine.cache_clear()
    redis_client.cache_clear()


def parse_now(now: object) -> datetime | None:
    """A task's `now` argument: None, or an ISO 8601 string with a timezone."""
    if now is None:
        return None
    if not isinstance(now, str):
        raise ValidationError(
            f"now must be an ISO 8601 string, got {type(now).__name__}.",
            code="invalid_now",
            fix="Pass now like '2026-11-27T12:00:00Z', or leave it out.",
        )
    try:
        parsed = datetime.fromisoformat(now)
    except ValueError:
        raise ValidationError(
            f"now {now[:40]!r} is not an ISO 8601 timestamp.",
            code="invalid_now",
            fix="Pass now like '2026-11-27T12:00:00Z', or leave it out.",
        ) from None
    return as_utc(parsed)


@app.task(
    name="numbers.purge_expired",
    soft_time_limit=settings.purge_max_seconds + PURGE_SOFT_MARGIN,
    time_limit=settings.purge_max_seconds + PURGE_HARD_MARGIN,
    **RETRY,
)
def purge_expired_task(now: object = None, dry_run: object = False) -> dict[str, Any]:
    """Purge released numbers past their deadline; returns the run's summary.

    A warm shutdown of this worker ends the run at its next batch boundary (`interrupted`).
    """
    when, dry = parse_now(now), validation.flag(dry_run, name="dry_run")
    report = purge_expired(session_factory(), now=when, dry_run=dry, stop=STOP)
    return report.as_dict()


@app.task(name="numbers.publish_releasable", soft_time_limit=50, time_limit=60, **RETRY)
def publish_releasable_task(now: object = None) -> dict[str, Any]:
    """Publish the repurchasable set to Redis; returns what was published."""
    when = parse_now(now)
    with session_factory()() as session:
        return publish_releasable(session, redis_client(), now=when)
