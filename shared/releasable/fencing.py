"""The writers' lock and the fence every write to the sets goes through.

The relay and the reconciliation's swap take turns under one Redis lock; a writer that lost
it (stalled past its expiry) must not write any more, which `fenced` makes sure of.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import redis
from redis.client import Pipeline
from redis.lock import Lock

from shared.releasable.keys import PREFIX, lock_key


class LockLost(Exception):
    """The writers' lock expired or was taken over; this writer's changes were not applied."""


def writer_lock(client: redis.Redis, *, seconds: float, prefix: str = PREFIX) -> Lock:
    """The writers' lock (redis-py's token lock), expiring `seconds` after its last use."""
    lock: Lock = client.lock(lock_key(prefix), timeout=seconds, thread_local=False)
    return lock


def fenced(client: redis.Redis, lock: Lock, queue: Callable[[Pipeline], None]) -> list[Any]:
    """Run the commands `queue` adds in one MULTI/EXEC, only while `lock` is still ours.

    A writer that stalled past its lock's expiry (a long pause, a lost connection) must not
    write after another one took over: WATCH on the lock key makes EXEC fail if the lock
    changed hands between the check and the write. The lock's lifetime is renewed with it.
    """
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(lock.name)  # type: ignore[no-untyped-call]
            if pipe.get(lock.name) != lock.local.token:
                raise LockLost(lock.name)
            pipe.multi()
            queue(pipe)
            pipe.pexpire(lock.name, int(cast(float, lock.timeout) * 1000))
            return pipe.execute()
        except redis.WatchError:
            raise LockLost(lock.name) from None
