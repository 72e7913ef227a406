"""Operator records: who put a number on hold, when and why.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HELD = sa.text("purge_hold")


def upgrade() -> None:
    # Plain ADD COLUMN: a batch (copy-and-move) on SQLite would drop AUTOINCREMENT.
    op.add_column("phone_numbers", sa.Column("hold_reason", sa.Text()))
    op.add_column("phone_numbers", sa.Column("hold_set_by", sa.String(64)))
    op.add_column("phone_numbers", sa.Column("hold_set_at", UTCDateTime()))
    # `numbers-retention holds` and status's count read only the held rows.
    op.create_index(
        "ix_phone_numbers_held",
        "phone_numbers",
        ["hold_set_at"],
        postgresql_where=HELD,
        sqlite_where=HELD,
    )
    if op.get_bind().dialect.name == "postgresql":
        # SQLite cannot add a CHECK to an existing table without the copy-and-move.
        op.create_check_constraint(
            "hold_record_only_when_held",
            "phone_numbers",
            "purge_hold OR (hold_reason IS NULL AND hold_set_by IS NULL AND hold_set_at IS NULL)",
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("hold_record_only_when_held", "phone_numbers", type_="check")
    op.drop_index("ix_phone_numbers_held", table_name="phone_numbers")
    with op.batch_alter_table(
        "phone_numbers", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_column("hold_set_at")
        batch.drop_column("hold_set_by")
        batch.drop_column("hold_reason")
