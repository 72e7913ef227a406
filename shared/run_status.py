"""How a run stands: one vocabulary for the purge, the audit prune and the relay.

Purge runs and audit prunes record theirs in `purge_runs.status`, whose CHECK lists exactly
`RECORDED` (shared/models.py builds it from here; the migrations keep a frozen copy, and a test
holds the two together).
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """A run's status: `running` while it runs, then how it ended."""

    RUNNING = "running"
    COMPLETED = "completed"  # nothing left that it may take
    LIMIT_REACHED = "limit_reached"  # its rows or seconds ran out; the next run resumes
    SKIPPED = "skipped"  # another run holds the lock
    PAUSED = "paused"  # paused by an operator (or PURGE_PAUSED)
    DRY_RUN = "dry_run"  # counted and sampled, deleted nothing
    FAILED = "failed"
    PROVIDER_UNAVAILABLE = "provider_unavailable"  # the carrier is down: backing off
    PROVIDER_MISCONFIGURED = "provider_misconfigured"  # the key or the base URL is wrong
    INTERRUPTED = "interrupted"  # an operator's stop (SIGTERM) at a batch boundary
    CLOCK_SKEW = "clock_skew"  # refused: this host's clock and the database's disagree
    LOST_LOCK = "lost_lock"  # the relay's writers' lock was taken over (never recorded)


# The statuses a run's record may hold (the CHECK on `purge_runs.status`).
RECORDED = tuple(status for status in RunStatus if status is not RunStatus.LOST_LOCK)
# A run that did its work: it emptied what it works through, or its share of a larger backlog.
SUCCEEDED = (RunStatus.COMPLETED, RunStatus.LIMIT_REACHED)
# A purge run the carrier stopped: the Celery task ends in FAILURE, its summary in the error.
PROVIDER_STOPPED = (RunStatus.PROVIDER_MISCONFIGURED, RunStatus.PROVIDER_UNAVAILABLE)
