"""A carrier call in flight: the run calling the carrier for a claimed number, so that a hold,
a settlement by hand or a retry never races that call (issue 20).

Revision ID: 0007_call_in_flight
Revises: 0006
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_call_in_flight"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN: a batch (copy-and-move) on SQLite would drop AUTOINCREMENT.
    op.add_column("phone_numbers", sa.Column("provider_call_run_id", sa.String(36)))


def downgrade() -> None:
    with op.batch_alter_table(
        "phone_numbers", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_column("provider_call_run_id")
