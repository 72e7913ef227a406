"""Orders back through the API: `number_orders`, one row per `POST /numbers/order` that
reactivated a number, under the orderId it answered, so the order can be found again.

Revision ID: 0016_order_ids
Revises: 0015_outbox_notify
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision: str = "0016_order_ids"
down_revision: str | None = "0015_outbox_notify"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "number_orders",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("phone_number", sa.String(16), nullable=False),
        sa.Column("number_id", sa.BigInteger(), nullable=False),
        sa.Column("released_at", UTCDateTime(), nullable=False),
        sa.Column("ordered_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("substr(id, 1, 4) = 'ord_'", name="order_id_prefixed"),
    )
    op.create_index("ix_number_orders_account_id", "number_orders", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_number_orders_account_id", table_name="number_orders")
    op.drop_table("number_orders")
