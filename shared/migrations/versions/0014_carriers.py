"""Each number records its carrier (shared/carriers/): the one its release is asked of.

It also adds the `submitted` state of an asynchronous release (a Bandwidth disconnect order,
a Telnyx deletion job): a claimed number with the carrier's order id and when it was submitted.

Numbers stored before get the configured PROVIDER (read from the environment the migration
runs in). With PROVIDER `none` (no carrier configured) they are left NULL, which a purge reads
as the default carrier of its run (never as "nothing to release").

Revision ID: 0014_carriers
Revises: 0013_audit_retention
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime
from shared.settings import StoreSettings

revision: str = "0014_carriers"
down_revision: str | None = "0013_audit_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("phone_numbers", sa.Column("carrier", sa.String(16)))
    op.add_column("phone_numbers", sa.Column("provider_order_id", sa.String(64)))
    op.add_column("phone_numbers", sa.Column("provider_submitted_at", UTCDateTime()))
    # The submitted numbers, read by order at each run (few: a partial index).
    op.create_index(
        "ix_phone_numbers_submitted",
        "phone_numbers",
        ["provider_order_id"],
        postgresql_where=sa.text("provider_order_id IS NOT NULL"),
        sqlite_where=sa.text("provider_order_id IS NOT NULL"),
    )
    provider = StoreSettings().provider
    numbers = sa.table(
        "phone_numbers", sa.column("carrier", sa.String), sa.column("provider_number_id")
    )
    if provider != "none":
        op.execute(sa.update(numbers).values(carrier=provider))
    else:
        op.execute(
            sa.update(numbers).where(numbers.c.provider_number_id.is_(None)).values(carrier="none")
        )


def downgrade() -> None:
    with op.batch_alter_table(
        "phone_numbers", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_index("ix_phone_numbers_submitted")
        batch.drop_column("provider_submitted_at")
        batch.drop_column("provider_order_id")
        batch.drop_column("carrier")
