"""A worker's warm (or cold) shutdown ends a running purge at its next batch boundary.

Celery's `worker_shutting_down` fires in the worker's main process, while with the prefork
pool the purge runs in a pool child, which Celery leaves to finish its task (a warm shutdown
waits for it, up to the whole run). So the main process passes the stop on to its pool
children with STOP_SIGNAL; each child turns it into a stop request that the purge reads
before every batch. The solo and thread pools run tasks in the main process: they see the
request directly.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import structlog
from celery import signals

from shared.purge import StopRequest

# A signal of our own, handled only in pool children that installed the handler. Not one of
# billiard's: with a thread-backed pool (the embedded broker's) it re-installs its exit
# handler for SIGTERM, SIGUSR1, SIGUSR2 and the rest of its full list after the children's
# initialiser, so a stop sent with one of them killed the running purge. SIGURG is on no such
# list, no terminal sends it, and a process without the handler ignores it by default.
STOP_SIGNAL = signal.SIGURG
STOP = StopRequest()

log = structlog.get_logger("worker.stopping")
_worker: list[Any] = []  # the WorkController of this process, once it exists


@signals.worker_init.connect
def _remember_worker(sender: Any = None, **_kwargs: Any) -> None:
    _worker[:] = [sender]


@signals.worker_process_init.connect
def _listen_for_stop(**_kwargs: Any) -> None:
    # A fresh pool child: no stop inherited from the parent, and its own handler.
    STOP.clear()
    signal.signal(STOP_SIGNAL, _stop_here)


def _stop_here(_signum: int, _frame: Any) -> None:
    STOP.request("worker shutdown")


@signals.worker_shutting_down.connect
def _stop_purges(sig: str = "", how: str = "", **_kwargs: Any) -> None:
    """Ask every running purge on this worker to end at its next batch boundary."""
    STOP.request(f"worker {how.lower() or 'warm'} shutdown ({sig or 'signal'})")
    pool = getattr(_worker[0], "pool", None) if _worker else None
    info = pool.info if pool is not None else {}
    for pid in info.get("processes", []):
        if pid != os.getpid():
            try:
                os.kill(pid, STOP_SIGNAL)
            except ProcessLookupError:  # the child exited meanwhile
                continue
