"""Beat's scheduler: RedBeat, made to ride out a Redis outage instead of exiting; every tick
writes beat's heartbeat (worker/health.py)."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Any

import redis
import structlog
from celery.beat import PersistentScheduler, Scheduler
from celery.signals import beat_init, worker_ready
from redbeat.schedulers import (
    LUA_EXTEND_TO_SCRIPT,
    RedBeatScheduler,
    acquire_distributed_beat_lock,
    get_redis,
)
from redis.exceptions import LockError

from worker import health

log = structlog.get_logger("worker.beat")

# RedBeat takes its lock at start-up by waiting for it, without ticking: a standby beat would
# never write its heartbeat. Our tick takes the lock instead, without waiting (below).
beat_init.disconnect(acquire_distributed_beat_lock)


def heartbeat_file(scheduler: Scheduler) -> Path:
    return health.heartbeat_file(scheduler.app.conf.numbers_retention_heartbeat_dir, "beat")


def check_eviction_policy(client: redis.Redis) -> str:
    """Redis's maxmemory-policy; an error in the log when it may evict what has no TTL.

    Under allkeys-* a Redis at maxmemory drops any key: a releasable set (readers then miss
    numbers), the stream (consumers miss events), RedBeat's entries (re-added at the next tick,
    `restore_lost_entries`). Alerted, not refused: refusing would stop the purge as well, and
    a policy changed later (CONFIG SET) is seen by the exporter's alert, not by a check at start.
    """
    policy = str(client.info("memory")["maxmemory_policy"])
    if policy.startswith("allkeys-"):
        log.error(
            "redis.may_evict",
            policy=policy,
            fix="Set maxmemory-policy noeviction (docs/runbook.md, Redis memory).",
        )
    return policy


@worker_ready.connect
def _check_worker_redis(sender: Any = None, **_kwargs: Any) -> None:
    """At a worker's start, the eviction policy of the Redis beat and the sets use."""
    app = getattr(sender, "app", None)
    if app is not None and app.conf.get("redbeat_redis_url"):
        with suppress(redis.RedisError):  # Redis away: the relay and the exporter will say
            check_eviction_policy(get_redis(app))


# While Redis is away, try again this often (capped by beat's own loop interval).
RETRY_SECONDS = 2.0


class ResilientRedBeatScheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeat whose tick survives Redis going away and re-arms itself when Redis returns.

    Stock RedBeat lets a connection error, or its lock vanishing with a Redis restarted empty,
    escape `tick()`, which ends the beat process; an embedded beat (`numbers-retention run`)
    then dies silently while its worker goes on. Here such a tick logs and waits. Once Redis
    answers again the lock is taken back, unless a standby beat holds it by then (this one
    then stands by), and the static schedule is installed again (it keeps `last_run_at`
    where Redis still has it, and is due at once where Redis lost it). Each tick of the beat
    holding the lock re-adds a static entry Redis lost meanwhile (`restore_lost_entries`).

    The lock is taken by a tick, without waiting, at start-up too: a standby beat ticks once
    per loop (`BEAT_MAX_LOOP_SECONDS`), trying the lock and writing its heartbeat.
    """

    lock: Any = None  # redis-py's Lock while this beat holds it

    def tick(self, *args: Any, **kwargs: Any) -> float:
        health.beat(heartbeat_file(self))
        retry = min(RETRY_SECONDS, float(self.max_interval))
        try:
            if self.lock_key and self.lock is None and not self._acquire_lock():
                return float(self.max_interval)
            self.restore_lost_entries()
            return float(super().tick(*args, **kwargs))
        except LockError:
            # Expired while Redis was away, or gone with a Redis restarted empty.
            log.warning("beat.lock_lost", lock=self.lock_key)
            self.lock = None
            return retry
        except (redis.ConnectionError, redis.TimeoutError) as error:
            log.warning("beat.redis_unavailable", error=str(error), retry_in=retry)
            return retry

    def restore_lost_entries(self) -> list[str]:
        """Re-add the static schedule's entries Redis lost; their names.

        RedBeat drops an entry whose key is gone (evicted at maxmemory, deleted by hand) for
        good: the task would not run again until beat restarts. One round trip per tick.
        """
        conf = self.app.redbeat_conf
        names = list(conf.schedule)
        keys = [self.Entry.generate_key(self.app, name) for name in names]
        with get_redis(self.app).pipeline() as pipe:
            for key in keys:
                pipe.exists(key)
                pipe.zscore(conf.schedule_key, key)
            found = pipe.execute()
        lost = [
            name
            for name, exists, score in zip(names, found[::2], found[1::2], strict=True)
            if not exists or score is None
        ]
        if lost:
            self.update_from_dict({name: conf.schedule[name] for name in lost})
            log.warning("beat.entries_restored", entries=lost)
        return lost

    def _acquire_lock(self) -> bool:
        """Take the beat lock without waiting; reinstall the schedule when we get it."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        # RedBeat's extend sets the timeout instead of adding to it (as at start-up).
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        if not lock.acquire(blocking=False):
            return False
        self.lock = lock
        self.setup_schedule()
        log.info("beat.lock_acquired", lock=self.lock_key)
        check_eviction_policy(client)
        return True

    def close(self) -> None:
        health.stopped(heartbeat_file(self))
        try:
            super().close()
        except (redis.ConnectionError, redis.TimeoutError, LockError):
            # Redis is away at shutdown: the lock expires by itself.
            self.lock = None
            Scheduler.close(self)


class HeartbeatPersistentScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's file-backed scheduler (the embedded default, no Redis), with the heartbeat."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        health.beat(heartbeat_file(self))
        return float(super().tick(*args, **kwargs))

    def close(self) -> None:
        health.stopped(heartbeat_file(self))
        super().close()
