"""One purge run at a time, on any number of workers."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, func, select

# Any constant works; it only has to be the same for every purge process on the database.
PURGE_LOCK_KEY = 0x6E756D62  # "numb"
# The audit prune's own lock (shared/audit.py): it never waits for a purge, nor a purge for it.
PRUNE_LOCK_KEY = 0x6E756D70  # "nump"


def deleter_keys() -> tuple[int, ...]:
    """The run locks of every run that deletes in batches: the whole store's purge (first),
    the audit prune, each carrier's lane. Each run's pacer counts those held
    (shared/purge/pacing.py): the runs at work share the room they leave the API."""
    # Imported here: the carriers import the purge's modules, which import this one.
    from shared.carriers import CARRIERS
    from shared.purge.lanes import lane_lock_key

    return (PURGE_LOCK_KEY, PRUNE_LOCK_KEY, *(lane_lock_key(name) for name in CARRIERS))


@contextmanager
def run_lock(engine: Engine, key: int = PURGE_LOCK_KEY, name: str = "purge") -> Iterator[bool]:
    """Yield whether this process holds the one-run-at-a-time lock `key` (`name` on SQLite):
    the whole store's purge (the default), one lane's (shared/purge/lanes.py), the prune's.

    PostgreSQL: a session advisory lock on its own connection, released when the connection
    closes, so a killed worker never leaves it behind. SQLite: flock on a file beside the
    database, released by the kernel when the process dies.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            got = bool(conn.scalar(select(func.pg_try_advisory_lock(key))))
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.scalar(select(func.pg_advisory_unlock(key)))
                    conn.commit()
        return
    database = engine.url.database or ""
    lock_path = Path(f"{database}.{name}.lock")
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
