"""The relay's mark in the store: the highest outbox id applied to Redis, so that a Redis that
comes back older (a restored snapshot) or empty is noticed (issue 22).

Revision ID: 0012_stream
Revises: 0011_clock_skew
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision: str = "0012_stream"
down_revision: str | None = "0011_clock_skew"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "relay_marks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("relayed_through", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("relay_marks")
