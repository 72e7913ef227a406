"""Counts kept, not scanned: `number_counts`, the triggers that keep it, and its backfill;
the indexes status reads instead of scanning (held numbers by release, numbers kept upstream,
the outbox by age).

Revision ID: 0010_counts
Revises: 0009_api_keys
Create Date: 2026-12-05
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from shared.counts import drop_triggers, install_triggers, rebuild_counts

revision: str = "0010_counts"
down_revision: str | None = "0009_api_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def upgrade() -> None:
    op.create_table(
        "number_counts",
        sa.Column("name", sa.String(16), primary_key=True),
        sa.Column("hour", sa.BigInteger(), primary_key=True),
        sa.Column("shard", sa.SmallInteger(), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_phone_numbers_held_released",
        "phone_numbers",
        ["released_at"],
        **_partial("released_at IS NOT NULL AND purge_hold"),
    )
    op.create_index(
        "ix_phone_numbers_upstream",
        "phone_numbers",
        ["released_at"],
        **_partial("provider_error_code IS NOT NULL"),
    )
    op.create_index("ix_number_events_occurred_at", "number_events", ["occurred_at"])
    connection = op.get_bind()
    if connection.dialect.name == "postgresql":
        # Writers wait while the counters are filled: none of their changes is counted twice
        # or missed.
        op.execute("LOCK TABLE phone_numbers, number_events IN SHARE ROW EXCLUSIVE MODE")
    # The first version of the triggers (0017_count_deltas installs the next).
    install_triggers(connection, deltas=False, minutes=False)
    rebuild_counts(connection, deltas=False, minutes=False)


def downgrade() -> None:
    drop_triggers(op.get_bind())
    op.drop_index("ix_number_events_occurred_at", table_name="number_events")
    op.drop_index("ix_phone_numbers_upstream", table_name="phone_numbers")
    op.drop_index("ix_phone_numbers_held_released", table_name="phone_numbers")
    op.drop_table("number_counts")
