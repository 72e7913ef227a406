"""The ledger of disconnections: each tombstone records its carrier, how the release was
proven there, what was detached from the number first, and its disconnect date and reason.

Tombstones written before: carrier = their provider (else 'none'), reason 'operator' for those
a person settled (else 'released'), disconnect date = the UTC date of purged_at; their proofs
were not kept (NULL).

Revision ID: 0008_disconnect_ledger
Revises: 0007_call_in_flight
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_disconnect_ledger"
down_revision: str | None = "0007_call_in_flight"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here, not read from shared.models: a reason added later comes with its own migration.
REASONS = ("released", "operator", "ported_out")


def upgrade() -> None:
    op.add_column("purged_numbers", sa.Column("carrier", sa.String(16)))
    op.add_column("purged_numbers", sa.Column("release_proof", sa.JSON()))
    op.add_column("purged_numbers", sa.Column("detach_steps", sa.JSON()))
    op.add_column("purged_numbers", sa.Column("disconnect_date", sa.Date()))
    op.add_column("purged_numbers", sa.Column("disconnect_reason", sa.String(16)))
    postgresql = op.get_bind().dialect.name == "postgresql"
    # SQLite keeps UTC datetimes as naive text ('YYYY-MM-DD HH:MM:SS...').
    purged_on = "(purged_at AT TIME ZONE 'UTC')::date" if postgresql else "date(purged_at)"
    op.execute(
        "UPDATE purged_numbers SET carrier = COALESCE(provider, 'none'), "
        "disconnect_reason = CASE WHEN resolution = 'operator' THEN 'operator' "
        f"ELSE 'released' END, disconnect_date = {purged_on}"
    )
    reasons = ", ".join(f"'{reason}'" for reason in REASONS)
    # purged_numbers has no AUTOINCREMENT to lose: SQLite's copy-and-move is safe here.
    with op.batch_alter_table("purged_numbers") as batch:
        batch.alter_column("carrier", existing_type=sa.String(16), nullable=False)
        batch.alter_column("disconnect_date", existing_type=sa.Date(), nullable=False)
        batch.alter_column("disconnect_reason", existing_type=sa.String(16), nullable=False)
        batch.create_check_constraint(
            "disconnect_reason_known", f"disconnect_reason IN ({reasons})"
        )
    # The monthly report reads one month of disconnections.
    op.create_index("ix_purged_numbers_disconnect_date", "purged_numbers", ["disconnect_date"])


def downgrade() -> None:
    op.drop_index("ix_purged_numbers_disconnect_date", table_name="purged_numbers")
    with op.batch_alter_table("purged_numbers") as batch:
        batch.drop_constraint("disconnect_reason_known", type_="check")
        batch.drop_column("disconnect_reason")
        batch.drop_column("disconnect_date")
        batch.drop_column("detach_steps")
        batch.drop_column("release_proof")
        batch.drop_column("carrier")
