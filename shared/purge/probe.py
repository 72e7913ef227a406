"""How much a batch in flight slows the API: a probe shaped like one of its reads, timed while a
batch is in flight and between batches, and the share of time batches may then take.

`bench/impact.py` showed where the API's p99 goes during a purge: the calls that start while a
batch is in flight are slower (their p99 2.8 times the idle one on this 2-core machine), the
calls between batches are not (their p99 the idle one). The API's p99 stays within 1.5 times
its idle p99 when fewer than 1 % of its calls are pushed past that: so the share of its calls
that meet a batch, which is the share of the time a batch is in flight, must be at most
`SLOWED_SHARE` divided by the share of those calls that a batch pushes past it. That share
differs from machine to machine and from moment to moment, so it is measured, not set.

While other sessions are at work on the store (the pacer's `busy`), a thread of the run
(`Pacer.probing`, shared/purge/pacing.py) times `PROBE` (the 20 newest numbers through the
primary key: an index read the size of one of the API's, a tenth of a millisecond) every
`PROBE_EVERY_SECONDS` on a connection of its own, named as the purge's sessions are (so it is
not counted as the API), and files each time by whether a batch was in flight when it started.
What the probes found is kept for the engine (the process's store) from run to run: a
scheduled run is short, and what a batch does to the API on this machine does not start again
with each run.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from dataclasses import dataclass, field

from sqlalchemy import Engine, text

# Of the API's calls, at most this share may be pushed past `SLOWER` times what the calls
# between batches take by a batch in flight: half of the 1 % a p99 allows (the calls between
# batches have their own slow 1 %).
SLOWED_SHARE = 0.005
SLOWER = 1.5
# What the calls between batches take: the probes' p90 there, not their p99: the p99 of a few
# hundred probes is two or three of them, and the purge's after-effects (autovacuum behind its
# deletes, its own process between batches) land there; measured against that, at 1M numbers
# the probe found a batch slowed 3 % of the reads that met it while it slowed the API's p99
# 1.7 times (bench/RESULTS.md).
BETWEEN_QUANTILE = 0.9
PROBE_EVERY_SECONDS = 0.05
# Probes kept of each kind (in a batch, between batches), and needed before they decide.
PROBE_SAMPLES = 400
PROBE_MIN_SAMPLES = 40
PROBE = text("SELECT count(*) FROM (SELECT 1 FROM phone_numbers ORDER BY id DESC LIMIT 20) AS n")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Interference:
    """The probes' times (ms), in a batch and between batches; thread-safe."""

    inside: deque[float] = field(default_factory=lambda: deque(maxlen=PROBE_SAMPLES))
    outside: deque[float] = field(default_factory=lambda: deque(maxlen=PROBE_SAMPLES))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ms: float, *, in_batch: bool) -> None:
        with self.lock:
            (self.inside if in_batch else self.outside).append(ms)

    def slowed(self) -> float | None:
        """The share of the probes in a batch slower than `SLOWER` times the p90 of those
        between batches (None: too few of either yet)."""
        with self.lock:
            inside, outside = list(self.inside), list(self.outside)
        if min(len(inside), len(outside)) < PROBE_MIN_SAMPLES:
            return None
        slow = SLOWER * _quantile(outside, BETWEEN_QUANTILE)
        return sum(1 for ms in inside if ms > slow) / len(inside)

    def duty(self) -> float:
        """The share of the time batches may be in flight while the API is at work (1: as
        much as the other rests leave)."""
        slowed = self.slowed()
        if not slowed:
            return 1.0
        return min(1.0, SLOWED_SHARE / slowed)


_KEPT: weakref.WeakKeyDictionary[Engine, Interference] = weakref.WeakKeyDictionary()
_KEPT_LOCK = threading.Lock()


def interference_on(engine: Engine) -> Interference:
    """The probes' findings on `engine`, kept from run to run while the engine lives."""
    with _KEPT_LOCK:
        return _KEPT.setdefault(engine, Interference())
