"""The due numbers by carrier: a purge run finds the carriers' lanes holding due numbers with
one index probe per carrier instead of a pass over every due number (at 10M numbers, 700 ms
at each run's start).

Revision ID: 0018_lane_index
Revises: 0017_count_deltas
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_lane_index"
down_revision: str | None = "0017_count_deltas"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = "released_at IS NOT NULL AND NOT purge_hold"


def upgrade() -> None:
    op.create_index(
        "ix_phone_numbers_lane_due",
        "phone_numbers",
        ["carrier", "released_at"],
        postgresql_where=sa.text(WHERE),
        sqlite_where=sa.text(WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_phone_numbers_lane_due", table_name="phone_numbers")
