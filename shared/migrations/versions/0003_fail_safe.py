"""Fail safe: run statuses provider_misconfigured and interrupted; tombstones say who settled
the number upstream (the provider's answer, or a person with a reason).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = (
    "'running', 'completed', 'limit_reached', 'skipped', 'paused', 'dry_run', 'failed', "
    "'provider_unavailable'"
)
NEW_STATUSES = OLD_STATUSES + ", 'provider_misconfigured', 'interrupted'"


def _run_statuses(statuses: str) -> None:
    with op.batch_alter_table("purge_runs") as batch:
        batch.drop_constraint("run_status_known", type_="check")
        batch.create_check_constraint("run_status_known", f"status IN ({statuses})")


def upgrade() -> None:
    _run_statuses(NEW_STATUSES)
    # 'provider' (its record of the id), 'not_found' (its 404), 'no_provider_id' (nothing
    # was held upstream), 'operator' (a person settled it: resolved_by, resolution_note).
    op.add_column("purged_numbers", sa.Column("resolution", sa.String(16)))
    op.add_column("purged_numbers", sa.Column("resolved_by", sa.String(64)))
    op.add_column("purged_numbers", sa.Column("resolution_note", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("purged_numbers") as batch:
        batch.drop_column("resolution_note")
        batch.drop_column("resolved_by")
        batch.drop_column("resolution")
    op.execute(
        "UPDATE purge_runs SET status = 'failed' "
        "WHERE status IN ('provider_misconfigured', 'interrupted')"
    )
    _run_statuses(OLD_STATUSES)
