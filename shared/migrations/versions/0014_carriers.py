"""Each number records its carrier (shared/carriers/): the one its release is asked of.

Numbers stored before get the configured PROVIDER (read from the environment the migration
runs in). 'none' is recorded only for a number with nothing upstream: a number with a
provider id and no known carrier is left NULL, which a purge reads as the default carrier of
its run (never as "nothing to release").

Revision ID: 0014_carriers
Revises: 0008_disconnect_ledger
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.settings import StoreSettings

revision: str = "0014_carriers"
down_revision: str | None = "0008_disconnect_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("phone_numbers", sa.Column("carrier", sa.String(16)))
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
        batch.drop_column("carrier")
