"""The Celery app, configured from the one settings object."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import structlog
from celery import Celery, signals
from celery.schedules import crontab

from shared.carriers import scheduled_lanes
from shared.settings import Settings, get_settings
from worker import (
    beat,  # noqa: F401 - connects the worker's check of Redis's eviction policy
    stopping,  # noqa: F401 - connects the warm-shutdown stop of a purge
)
from worker.health import WorkerHeartbeat
from worker.logs import configure_logging
from worker.tasks import (
    EXPIRES,
    PRUNE,
    PURGE,
    RECONCILE,
    RELAY,
    discards_events,
    longest_hold,
    register_tasks,
)


def broker_options(settings: Settings) -> dict[str, Any]:
    """Broker, result backend and beat scheduler: Redis when configured, else the filesystem."""
    if settings.broker_url:
        redis = settings.resolved_redis_url()
        result = settings.result_backend or redis or settings.broker_url
        options: dict[str, Any] = {"broker_url": settings.broker_url, "result_backend": result}
        if settings.broker_url.startswith(("redis", "unix", "sentinel")):
            # A task taken by a worker that dies comes back after the visibility timeout
            # (Celery's default: an hour). Set it just above the longest a task can hold its
            # message: the largest hard time limit of the tasks, or the longest retry countdown.
            options["broker_transport_options"] = {
                "visibility_timeout": visibility_timeout(settings)
            }
        if redis:
            # RedBeat's Redis lock makes a second beat process safe: only one schedules.
            url, password = split_password(redis)
            options |= {
                # RedBeat, riding out Redis outages instead of exiting (worker/beat.py).
                "beat_scheduler": "worker.beat:ResilientRedBeatScheduler",
                # Celery masks broker and backend URLs in `inspect conf` and Flower, not this
                # one: the password travels apart, under a key Celery does mask.
                "redbeat_redis_url": url,
                "redbeat_redis_options": {"password": password} if password else {},
                "redbeat_lock_timeout": settings.beat_lock_timeout_seconds,
            }
        return options
    queue, processed, control, results = embedded_folders(settings)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "processed_folder": str(processed),
            "store_processed": False,
            # Broadcasts (remote control, events); the default is ./control in the cwd.
            "control_folder": str(control),
        },
        "result_backend": f"file://{results}",
        # Celery's own file-backed beat, with our heartbeat (worker/health.py).
        "beat_scheduler": "worker.beat:HeartbeatPersistentScheduler",
        "beat_schedule_filename": str(settings.data_dir / "celerybeat-schedule"),
    }


def embedded_folders(settings: Settings) -> tuple[Path, Path, Path, Path]:
    """The embedded broker's queue, processed and control folders, and the results folder."""
    broker = settings.data_dir / "broker"
    return broker / "queue", broker / "processed", broker / "control", settings.data_dir / "results"


def make_embedded_folders(settings: Settings) -> None:
    """Make the embedded broker's folders (nothing to do with a configured broker)."""
    if not settings.broker_url:
        for folder in embedded_folders(settings):
            folder.mkdir(parents=True, exist_ok=True)


def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password, and the password (percent-decoded) or None."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    user = f"{parts.username}@" if parts.username else ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}{host}")), unquote(parts.password)


VISIBILITY_MARGIN = 60


def visibility_timeout(settings: Settings) -> int:
    """The Redis broker's visibility timeout: above every task's hard time limit and the
    longest retry countdown, so that no message comes back while a worker still holds it."""
    return int(longest_hold(settings)) + VISIBILITY_MARGIN


def _every(seconds: int, task: str) -> dict[str, Any]:
    minutes, rest = divmod(seconds, 60)
    on_clock = minutes > 0 and rest == 0 and 60 % minutes == 0
    return {
        "task": task,
        "schedule": crontab(minute=f"*/{minutes}") if on_clock else timedelta(seconds=seconds),
        # A run that waited past its slot is dropped instead of piling up behind the next.
        "options": {"expires": seconds * EXPIRES},
    }


def purge_entries(settings: Settings) -> dict[str, Any]:
    """One purge task per carrier lane (shared.carriers.scheduled_lanes), its carrier the
    task's third positional argument: runs of different carriers proceed in parallel on
    different workers, each under its lane's lock. The default carrier's entry keeps the name
    `purge-expired`; every other is `purge-expired-<carrier>`."""
    entries: dict[str, Any] = {}
    for index, carrier in enumerate(scheduled_lanes(settings)):
        name = "purge-expired" if index == 0 else f"purge-expired-{carrier}"
        entries[name] = _every(settings.purge_every_seconds, PURGE) | {
            "args": (None, False, carrier)
        }
    return entries


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """Purge, prune, reconcile and relay in UTC: the reconciliation only where a Redis is
    configured, the relay there and on the embedded store (where it empties the outbox)."""
    schedule = purge_entries(settings) | {
        # The worker's own records (shared/audit.py), once a day at a quiet hour.
        "prune-audit": {
            "task": PRUNE,
            "schedule": crontab(minute=17, hour=3),
            "options": {"expires": 23 * 3600},
        },
    }
    if settings.resolved_redis_url():
        schedule["publish-releasable"] = _every(settings.publish_every_seconds, RECONCILE)
    if settings.resolved_redis_url() or discards_events(settings):
        schedule["relay-events"] = _every(settings.relay_every_seconds, RELAY)
    return schedule


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app for `settings` (default: from the environment), its tasks registered."""
    settings = settings or get_settings()
    celery = Celery("numbers_retention")
    celery.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        enable_utc=True,
        timezone="UTC",
        result_expires=timedelta(days=1),
        result_extended=True,
        broker_connection_retry_on_startup=True,
        worker_redirect_stdouts=False,
        worker_hijack_root_logger=False,
        beat_schedule=beat_schedule(settings),
        beat_max_loop_interval=settings.beat_max_loop_seconds,
        # Where the worker and beat keep their heartbeat files (worker/health.py).
        numbers_retention_heartbeat_dir=str(settings.data_dir.resolve()),
        **broker_options(settings),
    )
    celery.steps["worker"].add(WorkerHeartbeat)
    register_tasks(celery, settings)

    def make_folders(**_kwargs: Any) -> None:
        # The app is finalized when a worker or beat starts and when its tasks are first used
        # (called, applied): the embedded broker's folders and the results folder must exist
        # from then on, and not before: `numbers-retention status` against PostgreSQL leaves
        # no ./data behind.
        make_embedded_folders(settings)

    celery.on_after_finalize.connect(make_folders, weak=False)
    return celery


# The settings the app is built from; its worker's and beat's logging is configured from them.
settings = get_settings()
app = create_app(settings)


@signals.setup_logging.connect
def _setup_logging(**_kwargs: Any) -> None:
    configure_logging(settings)


@signals.task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, **_kwargs: Any) -> None:
    structlog.contextvars.bind_contextvars(task_id=task_id, task_name=getattr(task, "name", None))


@signals.task_postrun.connect
def _clear_task(**_kwargs: Any) -> None:
    structlog.contextvars.clear_contextvars()
