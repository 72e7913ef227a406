"""The worker's own retention: an index of the tombstones whose label is not erased yet (the
redaction reads only those), and the sums kept when pruned records are deleted.

Nothing is rewritten: an existing store keeps every row; the first prune run (shared/audit.py)
erases and deletes what is due, in batches.

Revision ID: 0013_audit_retention
Revises: 0012_stream
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_audit_retention"
down_revision: str | None = "0012_stream"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNREDACTED = sa.text("label IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_purged_numbers_unredacted",
        "purged_numbers",
        ["purged_at"],
        postgresql_where=UNREDACTED,
        sqlite_where=UNREDACTED,
    )
    op.create_table(
        "pruned_totals",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pruned_totals")
    op.drop_index("ix_purged_numbers_unredacted", table_name="purged_numbers")
