"""Run status clock_skew: a run refused because this host's clock and the database server's
disagree beyond CLOCK_SKEW_MAX_SECONDS.

Revision ID: 0011_clock_skew
Revises: 0010_counts
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011_clock_skew"
down_revision: str | None = "0010_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here, not read from shared.models: a status added later comes with its own migration.
OLD_STATUSES = (
    "'running', 'completed', 'limit_reached', 'skipped', 'paused', 'dry_run', 'failed', "
    "'provider_unavailable', 'provider_misconfigured', 'interrupted'"
)
NEW_STATUSES = OLD_STATUSES + ", 'clock_skew'"


def _run_statuses(statuses: str) -> None:
    with op.batch_alter_table("purge_runs") as batch:
        batch.drop_constraint("run_status_known", type_="check")
        batch.create_check_constraint("run_status_known", f"status IN ({statuses})")


def upgrade() -> None:
    _run_statuses(NEW_STATUSES)


def downgrade() -> None:
    # A refused run did nothing: it reads as a failed one under the older schema.
    op.execute("UPDATE purge_runs SET status = 'failed' WHERE status = 'clock_skew'")
    _run_statuses(OLD_STATUSES)
