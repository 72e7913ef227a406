"""Lifecycle events: the transactional outbox the relay applies to Redis and streams.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# The kinds as this revision created them: frozen here, not read from shared.models, so that a
# kind added later comes with a migration of its own and this one never changes.
EVENT_KINDS = (
    "registered", "released", "repurchased", "held", "unheld", "claimed", "upstream_failed",
    "upstream_reset", "purged",
)  # fmt: skip


def upgrade() -> None:
    kinds = ", ".join(f"'{kind}'" for kind in EVENT_KINDS)
    op.create_table(
        "number_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("phone_number", sa.String(16), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("number_id", sa.BigInteger(), nullable=False),
        sa.Column("deadline", UTCDateTime()),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(f"kind IN ({kinds})", name="kind_known"),
        # Never reuse an id on SQLite: applied events are deleted.
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("number_events")
