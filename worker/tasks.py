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
from shared.clock import as_utc
from shared.db import make_engine, make_session_factory
from shared.errors import ValidationError
from shared.publication import recording_failures
from shared.purge import purge_expired
from shared.reconcile import publish_releasable
from shared.relay import relay_events
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


# Set while a reconciliation asked for by the relay is pending, so it is asked for once.
RECONCILE_REQUESTED = "releasable:reconcile-requested"


# A reconciliation of a million numbers takes tens of seconds on a busy host; it runs hourly.
@app.task(name="numbers.publish_releasable", soft_time_limit=600, time_limit=660, **RETRY)
def publish_releasable_task(now: object = None) -> dict[str, Any]:
    """Reconcile the repurchasable set in Redis with the store; returns the drift repaired."""
    when = parse_now(now)
    client = redis_client()
    # A failure leaves its marker in Redis for `status` and the exporter, then retries as before.
    with recording_failures(client), session_factory()() as session:
        summary = publish_releasable(session, client, now=when)
    client.delete(RECONCILE_REQUESTED)
    return summary


# No retries: beat sends the next run within seconds, and a retry would only queue behind it.
# No stored result: one run every few seconds; Flower still shows each summary.
@app.task(
    name="numbers.relay_events",
    soft_time_limit=settings.relay_max_seconds + 30,
    time_limit=settings.relay_max_seconds + 60,
    ignore_result=True,
)
def relay_events_task(now: object = None) -> dict[str, Any]:
    """Apply committed lifecycle events to the releasable set and the event stream."""
    when = parse_now(now)
    client = redis_client()
    report = relay_events(
        session_factory(),
        client,
        now=when,
        batch_size=settings.relay_batch_size,
        max_seconds=settings.relay_max_seconds,
        stream_maxlen=settings.events_stream_maxlen,
    )
    # A new or emptied Redis holds only what was relayed since: rebuild it now, not in an hour.
    if report.unpublished and client.set(RECONCILE_REQUESTED, 1, nx=True, ex=600):
        publish_releasable_task.apply_async(expires=600)
    return report.as_dict()
