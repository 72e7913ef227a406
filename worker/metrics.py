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
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version as package_version
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

import redis
import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# Not exported by prometheus_client, but what its start_http_server is made of.
from prometheus_client.exposition import (
    ThreadingWSGIServer,
    _get_best_family,
    _SilentHandler,
)
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import iso_timestamp, utcnow
from shared.db import make_engine, make_session_factory, normalize_url
from shared.errors import ValidationError
from shared.purge.pacing import WORKER_APPLICATION_NAME
from shared.releasable.record import reconciliation_status
from shared.releasable.relay import relay_last_success
from shared.run_status import RECORDED, RunStatus
from shared.settings import Settings
from shared.status import counts_status, runs_status
from shared.stream import stream_state
from worker.app import beat_schedule
from worker.connections import existing_store, make_redis

log = structlog.get_logger("worker.metrics")

PREFIX = "numbers_retention"
# The listen backlog: scrapes that arrive together wait in the kernel, not refused or dropped.
BACKLOG = 1024
VERSION = package_version("numbers-retention")
# The statuses a finished real run can end with (the store's, less `running`, and `skipped` and
# `dry_run`, which never count as the last finished run): each is exported, 1 for the last
# run's, so that a query or an alert need not know which exist.
RUN_STATUSES = tuple(
    status
    for status in RECORDED
    if status not in {RunStatus.RUNNING, RunStatus.SKIPPED, RunStatus.DRY_RUN}
)


@dataclass(frozen=True)
class Reading:
    """One look at the store and Redis; None where it could not be read (or is not configured)."""

    status: dict[str, Any] | None
    publication: dict[str, Any] | None
    # The configured interval of each scheduled task (purge, publish, relay), in seconds: what
    # the alert rules measure ages against (deploy/prometheus/alerts.yml).
    schedule: dict[str, int] = field(default_factory=dict)
    # Redis's own state: `relay_last_success_at` (ISO or None), `maxmemory_policy` and
    # `stream` (shared.stream.stream_state, and the ceiling as `maxlen`).
    redis: dict[str, Any] | None = None
    # Each source read for this scrape (store: the counts; runs: purge runs and controls;
    # redis): True when it answered within the scrape's budget, else False.
    sources: dict[str, bool] = field(default_factory=dict)


def _timestamp(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


# What each plain gauge measures, by its name (less the prefix): its HELP line.
GAUGES = {
    "up": "1 when the store could be read at this scrape, else 0.",
    "stream_entries": "Entries in the numbers:events stream.",
    "stream_maxlen": (
        "The stream's ceiling (EVENTS_STREAM_MAXLEN, the exporter's setting): beyond it the oldest"
        " entries go, read or not."
    ),
    "overdue": "Released numbers past their deadline, not held.",
    "oldest_overdue_seconds": (
        "How long the oldest overdue number has been past its deadline (0: none)."
    ),
    "held": "Released numbers on hold.",
    "releasable": "Released numbers still repurchasable.",
    "submitted_numbers": (
        "Numbers submitted in carrier orders (Bandwidth disconnects) not settled yet."
    ),
    "submitted_oldest_age_seconds": (
        "How long the oldest number submitted in a carrier order has waited (0: none)."
    ),
    "outbox_events": (
        "Lifecycle events in the outbox (number_events) not relayed (or discarded) yet."
    ),
    "outbox_oldest_event_age_seconds": (
        "How long ago the oldest event still in the outbox happened (0: none)."
    ),
    "paused": "1 while purging is paused (stored pause or PURGE_PAUSED).",
    "purge_last_success_timestamp_seconds": (
        "When the last purge run that completed (or reached its limit) ended."
    ),
    "purge_last_run_seconds": "How long the last finished purge run took.",
    "purge_last_run_purged": "Numbers the last finished purge run purged.",
    "purge_last_run_worst_batch_seconds": (
        "The slowest batch (one transaction) of the last finished purge run."
    ),
    "relay_last_success_timestamp_seconds": (
        "When a relay run last applied the outbox to Redis and succeeded (completed or reached its"
        " limit); absent before the first (and without Redis)."
    ),
    "publish_last_success_timestamp_seconds": (
        "When the releasable set was last published successfully."
    ),
    "publish_failing": "1 when the latest publication attempt failed.",
}


def _gauge(name: str, value: float | None) -> list[Metric]:
    """The gauge `name` (its HELP from GAUGES), or nothing when there is no value (an absent
    series, not a made-up 0)."""
    if value is None:
        return []
    return [GaugeMetricFamily(f"{PREFIX}_{name}", GAUGES[name], value=value)]


def families(reading: Reading) -> list[Metric]:
    """The metric families for one reading; the names are a contract (docs/runbook.md)."""
    status = reading.status or {}
    metrics: list[Metric] = _gauge("up", 1 if "overdue" in status else 0)
    build = GaugeMetricFamily(
        f"{PREFIX}_build_info", "Always 1; the exporter's version in a label.", labels=["version"]
    )
    build.add_metric([VERSION], 1)
    metrics.append(build)
    if reading.sources:
        sources = GaugeMetricFamily(
            f"{PREFIX}_scrape_source_up",
            "1 when the source (store: the counts; runs: the purge runs and controls; redis) "
            "answered within the scrape's budget (METRICS_SCRAPE_BUDGET_SECONDS), else 0: its "
            "metrics are then absent from this scrape.",
            labels=["source"],
        )
        for name, up in sorted(reading.sources.items()):
            sources.add_metric([name], 1 if up else 0)
        metrics.append(sources)
    if "overdue" in status:
        metrics += _count_families(status)
    if "paused" in status:
        metrics += _run_families(status)
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
        if "stream" in reading.redis:
            metrics += stream_families(reading.redis["stream"])
    publication = reading.publication
    if publication is not None:
        metrics += _gauge(
            "publish_last_success_timestamp_seconds", _timestamp(publication["last_success_at"])
        )
        metrics += _gauge("publish_failing", publication["failing"])
    return metrics


def stream_families(stream: dict[str, Any]) -> list[Metric]:
    """The event stream: its length and ceiling, each consumer group's lag and pending
    entries, and the entries ever dropped at the ceiling before a group read them."""
    metrics = _gauge("stream_entries", stream["entries"])
    metrics += _gauge("stream_maxlen", stream.get("maxlen"))
    lag = GaugeMetricFamily(
        f"{PREFIX}_stream_group_lag",
        "Entries of the stream not yet delivered to each consumer group (absent where Redis "
        "cannot tell).",
        labels=["group"],
    )
    pending = GaugeMetricFamily(
        f"{PREFIX}_stream_group_pending",
        "Entries delivered to each consumer group and not acknowledged yet.",
        labels=["group"],
    )
    for group in stream["groups"]:
        if group["lag"] is not None:
            lag.add_metric([group["name"]], group["lag"])
        pending.add_metric([group["name"]], group["pending"])
    metrics += [lag, pending]
    metrics.append(
        CounterMetricFamily(
            f"{PREFIX}_stream_dropped_unread",  # exposed as ..._stream_dropped_unread_total
            "Stream entries dropped at the ceiling before every consumer group had read them "
            "(kept in Redis: a Redis that lost its data starts again from 0).",
            value=stream["dropped_unread"],
        )
    )
    return metrics


def _count_families(status: dict[str, Any]) -> list[Metric]:
    """The store's counts (`counts_status`)."""
    metrics: list[Metric] = []
    metrics += _gauge("overdue", status["overdue"])
    metrics += _gauge("oldest_overdue_seconds", status["oldest_overdue_seconds"])
    metrics += _gauge("held", status["held"])
    metrics += _gauge("releasable", status["releasable"])
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
    submitted = status.get("submitted") or {}
    metrics += _gauge("submitted_numbers", submitted.get("numbers"))
    metrics += _gauge("submitted_oldest_age_seconds", submitted.get("oldest_age_seconds"))
    outbox = status["outbox"]
    metrics += _gauge("outbox_events", outbox["events"])
    metrics += _gauge("outbox_oldest_event_age_seconds", outbox["oldest_age_seconds"])
    return metrics


def _run_families(status: dict[str, Any]) -> list[Metric]:
    """The pause, the last runs and what they purged (`runs_status`)."""
    metrics: list[Metric] = []
    metrics += _gauge("paused", status["paused"])
    metrics += _gauge(
        "purge_last_success_timestamp_seconds", _timestamp(status["purge_last_success_at"])
    )
    last = status["last_finished_run"] or {}
    metrics += _gauge("purge_last_run_seconds", last.get("seconds"))
    metrics += _gauge("purge_last_run_purged", last.get("purged"))
    worst_ms = last.get("worst_batch_ms")
    metrics += _gauge(
        "purge_last_run_worst_batch_seconds", worst_ms / 1000 if worst_ms is not None else None
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
    metrics.append(
        CounterMetricFamily(
            f"{PREFIX}_purged",  # exposed as numbers_retention_purged_total
            "Numbers purged by every recorded run.",
            value=status["purged_total"],
        )
    )
    return metrics


class Source:
    """One source of a reading, read on a thread of its own so that a scrape can stop waiting
    for it: a read still in flight (a stalled server, a lock) is shared by the scrapes that
    come meanwhile, never started again behind itself, and abandoned by each at its deadline."""

    def __init__(self, name: str, read: Callable[[datetime], Any]) -> None:
        self.name, self.read = name, read
        self._lock = threading.Lock()
        self._pending: Future[Any] | None = None

    def start(self, now: datetime) -> Future[Any]:
        """The read in flight, or a new one at `now`."""
        with self._lock:
            if self._pending is None or self._pending.done():
                future: Future[Any] = Future()
                self._pending = future
                thread = threading.Thread(
                    target=self._run, args=(future, now), name=f"metrics-{self.name}", daemon=True
                )
                thread.start()
            return self._pending

    def _run(self, future: Future[Any], now: datetime) -> None:
        try:
            future.set_result(self.read(now))
        except BaseException as error:  # noqa: BLE001 - handed to the scrape that waits for it
            future.set_exception(error)


def _wait(future: Future[Any], name: str, deadline: float) -> tuple[Any, bool]:
    """The source's value and True, or (None, False) when it failed or missed `deadline`."""
    try:
        return future.result(timeout=max(deadline - time.monotonic(), 0.0)), True
    except FutureTimeout:
        # The read goes on in its thread; the next scrape waits for it again (not a new one).
        log.warning("metrics.source_slow", source=name)
    except (SQLAlchemyError, redis.RedisError) as error:
        log.warning("metrics.source_unreadable", source=name, error=type(error).__name__)
    return None, False


class Reader:
    """Reads the store's counts, its runs and Redis at one instant, each on its own thread,
    and answers within `budget` seconds with what could be read (and which sources could not)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        client: redis.Redis | None,
        *,
        deploy_paused: bool = False,
        schedule: dict[str, int] | None = None,
        clock: Callable[[], datetime] = utcnow,
        budget: float = 4.0,
        stream_maxlen: int | None = None,
    ) -> None:
        self.factory, self.client = factory, client
        self.stream_maxlen = stream_maxlen
        self.deploy_paused, self.clock, self.budget = deploy_paused, clock, budget
        self.schedule = dict(schedule or {})
        self.sources = [Source("store", self._counts), Source("runs", self._runs)]
        if client is not None:
            self.sources.append(Source("redis", self._redis))

    def _counts(self, now: datetime) -> dict[str, Any]:
        with self.factory() as session:
            return counts_status(session, now=now, stuck=False)

    def _runs(self, now: datetime) -> dict[str, Any]:
        with self.factory() as session:
            return runs_status(session, now=now, runs=0, deploy_paused=self.deploy_paused)

    def _redis(self, now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
        assert self.client is not None
        publication = reconciliation_status(self.client, now=now)
        success = relay_last_success(self.client)
        state = {
            "relay_last_success_at": iso_timestamp(success) if success else None,
            "maxmemory_policy": str(self.client.info("memory")["maxmemory_policy"]),
            "stream": stream_state(self.client) | {"maxlen": self.stream_maxlen},
        }
        return publication, state

    def __call__(self) -> Reading:
        now = self.clock()
        deadline = time.monotonic() + self.budget
        pending = {source.name: source.start(now) for source in self.sources}
        values = {name: _wait(future, name, deadline) for name, future in pending.items()}
        status: dict[str, Any] = {}
        for name in ("runs", "store"):
            status |= values[name][0] or {}
        publication = redis_state = None
        if "redis" in values and values["redis"][1]:
            publication, redis_state = values["redis"][0]
        return Reading(
            status or None,
            publication,
            self.schedule,
            redis_state,
            sources={name: ok for name, (_value, ok) in values.items()},
        )


class RetentionCollector:
    """A prometheus_client collector: one reading per `cache_seconds`, however many scrapes.

    Scrapes that arrive while a reading is under way wait for that reading (each bounded by the
    reader's budget) instead of queueing a reading each behind it."""

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
        self._pending: Future[Reading] | None = None

    def collect(self) -> Iterable[Metric]:
        # The HTTP server answers scrapes on threads: one reads, the others wait for it.
        with self._lock:
            fresh = self.monotonic() - self._read_at < self.cache_seconds
            if self._reading is not None and fresh:
                return families(self._reading)
            owner = self._pending is None
            if owner:
                self._pending = Future()
            pending = self._pending
        assert pending is not None
        if not owner:
            return families(pending.result())
        try:
            reading = self.read()
        except BaseException as error:
            with self._lock:
                self._pending = None
            pending.set_exception(error)
            raise
        with self._lock:
            self._reading, self._read_at, self._pending = reading, self.monotonic(), None
        pending.set_result(reading)
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
        ping_after_idle_seconds=settings.db_ping_after_idle_seconds,
        connect_args={
            "connect_timeout": max(1, round(timeout)),
            "application_name": WORKER_APPLICATION_NAME,
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
        budget=settings.metrics_scrape_budget_seconds,
        stream_maxlen=settings.events_stream_maxlen,
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


class ExporterServer(ThreadingWSGIServer):
    """prometheus_client's server (a thread per scrape) with a listen backlog for hundreds of
    concurrent scrapes: socketserver's default of 5 made them queue and time out."""

    request_queue_size = BACKLOG


def start_server(
    port: int, host: str, registry: CollectorRegistry
) -> tuple[WSGIServer, threading.Thread]:
    """Serve `registry` on host:port from a daemon thread (as `start_http_server` does)."""

    class Server(ExporterServer):
        pass

    Server.address_family, addr = _get_best_family(host, port)  # type: ignore[no-untyped-call]
    server = make_server(addr, port, make_wsgi_app(registry), Server, handler_class=_SilentHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def serve(collector: RetentionCollector, *, host: str, port: int) -> None:
    """Answer Prometheus on http://host:port/metrics until SIGTERM or SIGINT."""
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server, thread = start_server(port, host, registry)
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
