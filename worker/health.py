"""Liveness of the worker and of beat: a heartbeat file each keeps fresh, and its check.

`celery inspect ping` asks a worker over the broker and waits for an answer that a busy
worker may not give in time. Instead, the worker's main loop rewrites `worker.heartbeat` in
NUMBERS_RETENTION_DATA every HEARTBEAT_SECONDS (a bootstep on the worker's timer: the pool's
processes may all be busy with a purge, the loop that consumes and dispatches is not), and
beat rewrites `beat.heartbeat` on every tick (at least once per BEAT_MAX_LOOP_SECONDS, holding
RedBeat's lock or standing by). Each file holds its process's PID and goes when the process
stops cleanly. `numbers-retention healthcheck worker|beat` reads it.

Under systemd (NOTIFY_SOCKET set) each heartbeat also says READY=1 and WATCHDOG=1: a
`Type=notify` unit with `WatchdogSec=` is started once the loop runs and restarted when it stops.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import structlog
from celery import bootsteps

from shared.settings import Settings

log = structlog.get_logger("worker.health")

ROLES = ("worker", "beat")
HEARTBEAT_SECONDS = 2.0
# A worker whose loop has not run for this long is unhealthy (the default of --max-age).
WORKER_MAX_AGE = 60.0
# Beat ticks at least once per BEAT_MAX_LOOP_SECONDS; this much more before it is unhealthy.
BEAT_MAX_AGE_MARGIN = 60.0
_unwritable: set[Path] = set()  # heartbeat files this process could not write (logged once)


def heartbeat_file(folder: Path | str, role: str) -> Path:
    return Path(folder) / f"{role}.heartbeat"


def default_max_age(settings: Settings, role: str) -> float:
    if role == "worker":
        return WORKER_MAX_AGE
    return settings.beat_max_loop_seconds + BEAT_MAX_AGE_MARGIN


def notify_systemd(message: str) -> None:
    """Send `message` to systemd's notification socket, when there is one."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return  # no one listens any more: nothing to tell


def beat(path: Path) -> None:
    """Rewrite the heartbeat file with this process's PID (atomically), and tell systemd.

    A folder it cannot write is logged (once) and leaves the process running: its health
    check then fails and says why, rather than a scheduler or a worker dying of it.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}")
        part.write_text(f"{os.getpid()} {time.time()}\n")
        os.replace(part, path)
    except OSError as error:
        if path not in _unwritable:
            _unwritable.add(path)
            log.warning("health.heartbeat_not_written", path=str(path), error=str(error))
        return
    notify_systemd("READY=1\nWATCHDOG=1")


def _read(path: Path) -> tuple[int, float] | None:
    """The PID and the instant (the writer's clock, not the file system's) a heartbeat holds;
    None when the file is not one. OSError when it cannot be read."""
    try:
        pid, at = path.read_text().split()
        return int(pid), float(at)
    except ValueError:
        return None


def stopped(path: Path) -> None:
    """Remove the heartbeat file if this process wrote it, and tell systemd it is stopping."""
    heartbeat = None
    with suppress(OSError):
        heartbeat = _read(path)
    if heartbeat is not None and heartbeat[0] == os.getpid():
        with suppress(OSError):
            path.unlink(missing_ok=True)
    notify_systemd("STOPPING=1")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True


def check(path: Path, *, max_age: float) -> tuple[bool, str]:
    """Whether the process behind the heartbeat file is healthy, and why (or why not)."""
    try:
        heartbeat = _read(path)
    except FileNotFoundError:
        return False, f"no heartbeat at {path}: not started yet, or stopped"
    except OSError as error:  # not a folder, not ours to read
        return False, f"cannot read {path}: {error.strerror}"
    if heartbeat is None:
        return False, f"cannot read {path} as a heartbeat (PID and time)"
    pid, at = heartbeat
    # Read against the time the writer put in, not the file's mtime: the file system's clock
    # (a network mount's, say) need not be this host's.
    age = time.time() - at
    if age > max_age:
        return False, f"last heartbeat {age:.0f} s ago, over {max_age:g} s (pid {pid}, {path})"
    if pid is None or not _alive(pid):
        return False, f"the process that wrote {path} (pid {pid}) is gone"
    return True, f"heartbeat {age:.1f} s ago (pid {pid})"


class WorkerHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Rewrites worker.heartbeat from the worker's own loop (its timer) while it runs."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.path = heartbeat_file(worker.app.conf.numbers_retention_heartbeat_dir, "worker")
        self.timer: Any = None

    def start(self, worker: Any) -> None:
        self.timer = worker.timer.call_repeatedly(HEARTBEAT_SECONDS, beat, (self.path,))

    def stop(self, worker: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
        stopped(self.path)

    terminate = stop
