"""Purge controls: an operator's pause and pace (a rows-per-second ceiling), in the store.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "purge_controls",
        sa.Column("name", sa.String(16), primary_key=True),
        sa.Column("reason", sa.Text()),
        sa.Column("set_by", sa.String(64), nullable=False),
        sa.Column("set_at", UTCDateTime(), nullable=False),
        # The pace's ceiling; NULL for the pause.
        sa.Column("rows_per_second", sa.Float()),
        sa.CheckConstraint("rows_per_second IS NULL OR rows_per_second > 0", name="pace_positive"),
    )


def downgrade() -> None:
    op.drop_table("purge_controls")
