"""The batched purge: tombstone and delete released numbers past their deadline.

A thin orchestrator (`service.purge_expired`) over small parts, each one job:
`config` (one frozen configuration per run), `lock` (one run at a time), `statements` (the
overdue rows; a batch's pick, tombstone and delete), `budget` (rows, seconds and the adaptive
batch size), `pacing` (rests that leave the database to the API), `boundary` (the checks
before every batch: stop, pause, budget), `sweep` and `upstream_sweep` (the two ways through
the backlog), `upstream` (the two-phase sweep's claim, carrier calls and failures), `orders`
(asynchronous carriers' releases), `lanes` (one carrier's numbers), `records` (the run's row in
`purge_runs`), `report` (its summary); `operator` (what a person does about a number kept for
its upstream state: retry it, or settle it by hand).
"""

from shared.purge.config import PurgeConfig
from shared.purge.lock import PURGE_LOCK_KEY, run_lock
from shared.purge.report import PurgeReport
from shared.purge.service import SAMPLE_SIZE, purge_expired
from shared.purge.statements import BatchStatements, count_overdue, purge_batch
from shared.purge.stop import StopRequest
from shared.tombstones import TOMBSTONE_COLUMNS

__all__ = [
    "PURGE_LOCK_KEY",
    "SAMPLE_SIZE",
    "TOMBSTONE_COLUMNS",
    "BatchStatements",
    "PurgeConfig",
    "PurgeReport",
    "StopRequest",
    "count_overdue",
    "purge_batch",
    "purge_expired",
    "run_lock",
]
