"""The exporter's metric names as the contract promises them (DESIGN.md, docs/runbook.md)."""

from __future__ import annotations

from typing import Any

# Families; the counter `purged` is sampled as numbers_retention_purged_total.
CONTRACT = (
    "up",
    "overdue",
    "oldest_overdue_seconds",
    "held",
    "releasable",
    "upstream_failed",
    "paused",
    "purge_last_success_timestamp_seconds",
    "publish_last_success_timestamp_seconds",
    "purge_last_run_seconds",
    "purged",
    # Added in the third plan (DESIGN.md).
    "outbox_events",
    "outbox_oldest_event_age_seconds",
    "purge_last_run_status",
    "build_info",
    "relay_last_success_timestamp_seconds",
)
# Beyond the contract: what the dashboard uses.
EXTRAS = (
    "purge_last_run_purged",
    "purge_last_run_worst_batch_seconds",
    "publish_failing",
    "schedule_seconds",
    "redis_maxmemory_policy",
    "scrape_source_up",
    "submitted_numbers",
    "submitted_oldest_age_seconds",
)


def status_read(**changes: Any) -> dict[str, Any]:
    """A store status with every key the exporter reads (`store_status`'s): nothing counted,
    no run finished yet; `changes` replace keys."""
    return {
        "overdue": 0,
        "oldest_overdue_seconds": 0.0,
        "held": 0,
        "releasable": 0,
        "upstream_failed": 0,
        "upstream_permanent": 0,
        "upstream_refused_person": 0,
        "upstream_refused_carrier": 0,
        "paused": False,
        "purge_last_success_at": None,
        "last_finished_run": None,
        "purged_total": 0,
        "outbox": {"events": 0, "oldest_age_seconds": 0.0},
        "submitted": {"numbers": 0, "orders": 0, "oldest_age_seconds": 0.0},
        **changes,
    }


def finished_run(
    status: str, seconds: float, purged: int, worst_batch_ms: float | None
) -> dict[str, Any]:
    """The last finished run as the store status gives it."""
    return {
        "status": status,
        "seconds": seconds,
        "purged": purged,
        "worst_batch_ms": worst_batch_ms,
    }
