"""Upstream release state: claimed rows, provider errors, retries; tombstones record the release.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN: a batch (copy-and-move) on SQLite would drop AUTOINCREMENT.
    op.add_column("phone_numbers", sa.Column("claimed_at", UTCDateTime()))
    op.add_column(
        "phone_numbers",
        sa.Column("provider_attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("phone_numbers", sa.Column("provider_next_attempt_at", UTCDateTime()))
    op.add_column("phone_numbers", sa.Column("provider_error_code", sa.String(64)))
    op.add_column("phone_numbers", sa.Column("provider_error_message", sa.Text()))
    op.add_column("phone_numbers", sa.Column("provider_code", sa.String(32)))
    op.add_column(
        "phone_numbers",
        sa.Column(
            "provider_failed_permanently",
            sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
        ),
    )
    claimed = sa.text("purge_state = 'purging'")
    op.create_index(
        "ix_phone_numbers_claimed",
        "phone_numbers",
        ["provider_next_attempt_at"],
        postgresql_where=claimed,
        sqlite_where=claimed,
    )
    op.add_column("purged_numbers", sa.Column("provider", sa.String(16)))
    op.add_column("purged_numbers", sa.Column("upstream_released_at", UTCDateTime()))


def downgrade() -> None:
    with op.batch_alter_table("purged_numbers") as batch:
        batch.drop_column("upstream_released_at")
        batch.drop_column("provider")
    op.drop_index("ix_phone_numbers_claimed", table_name="phone_numbers")
    with op.batch_alter_table(
        "phone_numbers", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        for column in (
            "provider_failed_permanently",
            "provider_code",
            "provider_error_message",
            "provider_error_code",
            "provider_next_attempt_at",
            "provider_attempts",
            "claimed_at",
        ):
            batch.drop_column(column)
