"""The exporter's metric names as the contract promises them (DESIGN.md, docs/runbook.md)."""

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
