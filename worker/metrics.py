"""`numbers-retention metrics`: the store's retention health for Prometheus, read at scrape time.

The values are `store_status` (what `status --json` prints) and the publication's record in
Redis, taken at one instant and cached for a few seconds so that scrapes cannot load the store.
"""

from __future__ import annotations

import errno
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version as package_version
from types import FrameType
from typing import Any

import redis
import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared import models
from shared.clock import iso_timestamp, utcnow
from shared.db import make_engine, make_session_factory, normalize_url
from shared.errors import ValidationError
from shared.publication import publication_status
from shared.relay import relay_last_success
from shared.settings import Settings
from shared.status import store_status
from worker.app import beat_schedule
from worker.connections import existing_store, make_redis

log = structlog.get_logger("worker.metrics")

PREFIX = "numbers_retention"
VERSION = package_version("numbers-retention")
# The statuses a finished real run can end with (the store's, less `running`, and `skipped` and
# `dry_run`, which never count as the last finished run): each is exported, 1 for the last
# run's, so that a query or an alert need not know which exist.
RUN_STATUSES = tuple(
    status for status in models.RUN_STATUSES if status not in {"running", "skipped", "dry_run"}
)


@dataclass(frozen=True)
class Reading:
    """One look at the store and Redis; None where it could not be read (or is not configured)."""

    status: dict[str, Any] | None
    publication: dict[str, Any] | None
    # The configured interval of each scheduled task (purge, publish, relay), in seconds: what
    # the alert rules measure ages against (deploy/prometheus/alerts.yml).
    schedule: dict[str, int] = field(default_factory=dict)
    # Redis's own state: `relay_last_success_at` (ISO or None) and `maxmemory_policy`.
    redis: dict[str, Any] | None = None


def _timestamp(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _gauge(name: str, documentation: str, value: float | None) -> list[Metric]:
    """A gauge, or nothing when there is no value (an absent series, not a made-up 0)."""
    if value is None:
        return []
    return [GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)]


def families(reading: Reading) -> list[Metric]:
    """The metric families for one reading; the names are a contract (docs/runbook.md)."""
    status = reading.status
    metrics: list[Metric] = _gauge(
        "up", "1 when the store could be read at this scrape, else 0.", 1 if status else 0
    )
    build = GaugeMetricFamily(
        f"{PREFIX}_build_info", "Always 1; the exporter's version in a label.", labels=["version"]
    )
    build.add_metric([VERSION], 1)
    metrics.append(build)
    if status is not None:
        metrics += _gauge(
            "overdue", "Released numbers past their deadline, not held.", status["overdue"]
        )
        metrics += _gauge(
            "oldest_overdue_seconds",
            "How long the oldest overdue number has been past its deadline (0: none).",
            status["oldest_overdue_seconds"],
        )
        metrics += _gauge("held", "Released numbers on hold.", status["held"])
        metrics += _gauge(
            "releasable", "Released numbers still repurchasable.", status["releasable"]
        )
        upstream = GaugeMetricFamily(
            f"{PREFIX}_upstream_failed",
            "Numbers kept because the provider did not release them, by kind: transient "
            "(retried), permanent (need a person), refused_person and refused_carrier (the "
            "carrier refused that number alone; waiting on a person, or on the carrier).",
            labels=["kind"],
        )
        person, carrier = status["upstream_refused_person"], status["upstream_refused_carrier"]
        permanent = status["upstream_permanent"]
        upstream.add_metric(["transient"], status["upstream_failed"] - permanent - carrier)
        upstream.add_metric(["permanent"], permanent - person)
        upstream.add_metric(["refused_person"], person)
        upstream.add_metric(["refused_carrier"], carrier)
        metrics.append(upstream)
        metrics += _gauge(
            "paused", "1 while purging is paused (stored pause or PURGE_PAUSED).", status["paused"]
        )
        metrics += _gauge(
            "purge_last_success_timestamp_seconds",
            "When the last purge run that completed (or reached its limit) ended.",
            _timestamp(status["purge_last_success_at"]),
        )
        last = status["last_finished_run"] or {}
        metrics += _gauge(
            "purge_last_run_seconds",
            "How long the last finished purge run took.",
            last.get("seconds"),
        )
        metrics += _gauge(
            "purge_last_run_purged",
            "Numbers the last finished purge run purged.",
            last.get("purged"),
        )
        worst_ms = last.get("worst_batch_ms")
        metrics += _gauge(
            "purge_last_run_worst_batch_seconds",
            "The slowest batch (one transaction) of the last finished purge run.",
            worst_ms / 1000 if worst_ms is not None else None,
        )
        run_status = GaugeMetricFamily(
            f"{PREFIX}_purge_last_run_status",
            "1 for the status of the last finished purge run, 0 for the other statuses.",
            labels=["status"],
        )
        if last:
            for name in sorted({*RUN_STATUSES, last["status"]}):
                run_status.add_metric([name], 1 if name == last["status"] else 0)
            metrics.append(run_status)
        submitted = status.get("submitted") or {}
        metrics += _gauge(
            "submitted_numbers",
            "Numbers submitted in carrier orders (Bandwidth disconnects) not settled yet.",
            submitted.get("numbers"),
        )
        metrics += _gauge(
            "submitted_oldest_age_seconds",
            "How long the oldest number submitted in a carrier order has waited (0: none).",
            submitted.get("oldest_age_seconds"),
        )
        outbox = status["outbox"]
        metrics += _gauge(
            "outbox_events",
            "Lifecycle events in the outbox (number_events) not relayed (or discarded) yet.",
            outbox["events"],
        )
        metrics += _gauge(
            "outbox_oldest_event_age_seconds",
            "How long ago the oldest event still in the outbox happened (0: none).",
            outbox["oldest_age_seconds"],
        )
        metrics.append(
            CounterMetricFamily(
                f"{PREFIX}_purged",  # exposed as numbers_retention_purged_total
                "Numbers purged by every recorded run.",
                value=status["purged_total"],
            )
        )
    if reading.schedule:
        schedule = GaugeMetricFamily(
            f"{PREFIX}_schedule_seconds",
            "How often beat runs each task (PURGE_EVERY_SECONDS, PUBLISH_EVERY_SECONDS, "
            "RELAY_EVERY_SECONDS), in the exporter's settings; only the tasks beat schedules.",
            labels=["task"],
        )
        for task, seconds in sorted(reading.schedule.items()):
            schedule.add_metric([task], seconds)
        metrics.append(schedule)
    if reading.redis is not None:
        metrics += _gauge(
            "relay_last_success_timestamp_seconds",
            "When a relay run last applied the outbox to Redis and succeeded (completed or "
            "reached its limit); absent before the first (and without Redis).",
            _timestamp(reading.redis["relay_last_success_at"]),
        )
        policy = GaugeMetricFamily(
            f"{PREFIX}_redis_maxmemory_policy",
            "Always 1; Redis's maxmemory-policy in a label (allkeys-*: Redis may evict the "
            "releasable sets, the stream and RedBeat's schedule, none of which has a TTL).",
            labels=["policy"],
        )
        policy.add_metric([reading.redis["maxmemory_policy"]], 1)
        metrics.append(policy)
    publication = reading.publication
    if publication is not None:
        metrics += _gauge(
            "publish_last_success_timestamp_seconds",
            "When the releasable set was last published successfully.",
            _timestamp(publication["last_success_at"]),
        )
        metrics += _gauge(
            "publish_failing",
            "1 when the latest publication attempt failed.",
            publication["failing"],
        )
    return metrics


class Reader:
    """Reads the store (and Redis) at one instant; what cannot be read is left out."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        client: redis.Redis | None,
        *,
        deploy_paused: bool = False,
        schedule: dict[str, int] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.factory, self.client = factory, client
        self.deploy_paused, self.clock = deploy_paused, clock
        self.schedule = dict(schedule or {})

    def __call__(self) -> Reading:
        now = self.clock()
        status: dict[str, Any] | None
        try:
            with self.factory() as session:
                status = store_status(session, now=now, runs=0, deploy_paused=self.deploy_paused)
        except SQLAlchemyError as error:
            # The exporter's answer to a store it cannot read is numbers_retention_up 0.
            log.warning("metrics.store_unreadable", error=type(error).__name__)
            status = None
        publication = redis_state = None
        if self.client is not None:
            try:
                publication = publication_status(self.client, now=now)
                success = relay_last_success(self.client)
                redis_state = {
                    "relay_last_success_at": iso_timestamp(success) if success else None,
                    "maxmemory_policy": str(self.client.info("memory")["maxmemory_policy"]),
                }
            except redis.RedisError as error:
                log.warning("metrics.redis_unreadable", error=type(error).__name__)
        return Reading(status, publication, self.schedule, redis_state)


class RetentionCollector:
    """A prometheus_client collector: one reading per `cache_seconds`, however many scrapes."""

    def __init__(
        self,
        read: Callable[[], Reading],
        *,
        cache_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read, self.cache_seconds, self.monotonic = read, cache_seconds, monotonic
        self._lock = threading.Lock()
        self._reading: Reading | None = None
        self._read_at = 0.0

    def collect(self) -> Iterable[Metric]:
        # The HTTP server answers scrapes on threads: one reads, the others wait for it.
        with self._lock:
            if self._reading is None or self.monotonic() - self._read_at >= self.cache_seconds:
                self._reading = self.read()
                self._read_at = self.monotonic()
            reading = self._reading
        return families(reading)


def exporter_engine(settings: Settings) -> Engine:
    """The store, with a statement timeout so that a slow query cannot pile up scrapes."""
    url = normalize_url(existing_store(settings.resolved_database_url()))
    if make_url(url).get_backend_name() != "postgresql":
        # SQLite: a transaction that begins DEFERRED only reads, and under WAL such a reader
        # never waits for the purge's writes (BEGIN IMMEDIATE, the default, would: shared/db.py).
        return make_engine(url, execution_options={"sqlite_begin": "DEFERRED"})
    timeout = settings.metrics_statement_timeout_seconds
    return make_engine(
        url,
        connect_args={
            "connect_timeout": max(1, round(timeout)),
            "options": f"-c statement_timeout={round(timeout * 1000)}",
        },
    )


def schedule_seconds(settings: Settings) -> dict[str, int]:
    """The intervals of the tasks beat schedules with these settings (worker/app.py)."""
    scheduled = beat_schedule(settings)
    every = {
        "purge": ("purge-expired", settings.purge_every_seconds),
        "publish": ("publish-releasable", settings.publish_every_seconds),
        "relay": ("relay-events", settings.relay_every_seconds),
    }
    return {task: seconds for task, (entry, seconds) in every.items() if entry in scheduled}


def make_collector(settings: Settings) -> RetentionCollector:
    """The collector on the configured store and Redis (no Redis: no publication metrics)."""
    url = settings.resolved_redis_url()
    timeout = settings.metrics_statement_timeout_seconds
    client = make_redis(url, timeout=timeout, connect_timeout=timeout) if url else None
    reader = Reader(
        make_session_factory(exporter_engine(settings)),
        client,
        deploy_paused=settings.purge_paused,
        schedule=schedule_seconds(settings),
    )
    return RetentionCollector(reader, cache_seconds=settings.metrics_cache_seconds)


def address_error(error: OSError, *, host: str, port: int) -> ValidationError:
    """Why the exporter cannot listen on host:port, as the 400 envelope (bad input: exit 2)."""
    where = f"{host}:{port}"
    fix = "Pick a free --port, and a --host of this machine (127.0.0.1, or 0.0.0.0 for all)."
    if error.errno == errno.EADDRINUSE:
        return ValidationError(
            f"Cannot listen on {where}: the port is in use.", code="address_in_use", fix=fix
        )
    if isinstance(error, socket.gaierror):
        reason = "the host is neither an address nor a name that resolves"
    elif error.errno == errno.EADDRNOTAVAIL:
        reason = "the address is not one of this machine's"
    elif error.errno == errno.EACCES:
        reason = "this user may not listen on that port"
    else:
        reason = error.strerror or type(error).__name__
    return ValidationError(
        f"Cannot listen on {where}: {reason}.", code="address_unavailable", fix=fix
    )


def serve(collector: RetentionCollector, *, host: str, port: int) -> None:
    """Answer Prometheus on http://host:port/metrics until SIGTERM or SIGINT."""
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise address_error(error, host=host, port=port) from None
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("metrics.started", host=host, port=port)
    while not stop.wait(1):
        pass
    server.shutdown()
    server.server_close()
    thread.join(5)
    log.info("metrics.stopped")
