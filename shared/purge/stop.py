"""An operator's stop (SIGTERM, SIGINT, a worker's warm shutdown), honoured at a batch boundary."""

from __future__ import annotations

import time

# Rests between batches sleep in slices this long, so a stop ends them quickly.
SLICE_SECONDS = 0.05


class StopRequest:
    """Set from a signal handler; read by the purge before every batch.

    A plain attribute, not a threading.Event: a signal handler runs between two bytecodes of
    the main thread, which may hold the Event's lock at that moment.
    """

    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        """Ask every run using this request to stop at its next batch boundary."""
        if self.reason is None:
            self.reason = reason

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def clear(self) -> None:
        self.reason = None

    def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, ending early once a stop is requested."""
        deadline = time.monotonic() + seconds
        while not self.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, SLICE_SECONDS))
