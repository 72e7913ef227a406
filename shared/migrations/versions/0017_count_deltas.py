"""The kept counts as insert-only deltas (shared/counts.py): on PostgreSQL the triggers insert
each statement's sums into `number_count_deltas` instead of updating a counter row of the
writing transaction's shard (two writers of one shard that changed the same counters in
opposite orders deadlocked), and `number_counts_compact()` folds the deltas into the base rows.
The base rows of the eight shards are folded into shard 0. SQLite: the table only (its triggers
keep adding to the base rows; one writer at a time).

Revision ID: 0017_count_deltas
Revises: 0016_order_ids
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.counts import drop_triggers, install_triggers
from shared.models import BigId

revision: str = "0017_count_deltas"
down_revision: str | None = "0016_order_ids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The shards' rows of each counter, folded into one row (shard 0).
FOLD_SHARDS = """
WITH moved AS (DELETE FROM number_counts WHERE shard <> 0 RETURNING name, hour, n)
INSERT INTO number_counts (name, hour, shard, n)
SELECT name, hour, 0, sum(n) FROM moved GROUP BY name, hour
ON CONFLICT (name, hour, shard) DO UPDATE SET n = number_counts.n + excluded.n
"""
FOLD_DELTAS = """
WITH moved AS (DELETE FROM number_count_deltas RETURNING name, hour, n)
INSERT INTO number_counts (name, hour, shard, n)
SELECT name, hour, 0, sum(n) FROM moved GROUP BY name, hour
ON CONFLICT (name, hour, shard) DO UPDATE SET n = number_counts.n + excluded.n
"""


def upgrade() -> None:
    op.create_table(
        "number_count_deltas",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(16), nullable=False),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    connection = op.get_bind()
    if connection.dialect.name != "postgresql":
        return
    # Writers wait while the triggers change: none of their changes is counted twice or missed.
    op.execute("LOCK TABLE phone_numbers, number_events IN SHARE ROW EXCLUSIVE MODE")
    drop_triggers(connection)
    install_triggers(connection, deltas=True, minutes=False)
    op.execute(FOLD_SHARDS)
    # Written afresh: a store loaded in one transaction (seed_demo, a restore) left the table
    # many times its rows' size (every statement's upsert a new row version, none reclaimable
    # before the commit), and every reading scanned the dead space: 9 MB for 1,441 rows at
    # 1M numbers, ten times that at 10M.
    op.execute(
        "CREATE TEMPORARY TABLE number_counts_kept ON COMMIT DROP AS "
        "SELECT name, hour, shard, n FROM number_counts WHERE n <> 0"
    )
    op.execute("TRUNCATE number_counts")
    op.execute("INSERT INTO number_counts SELECT * FROM number_counts_kept")


def downgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "postgresql":
        op.execute("LOCK TABLE phone_numbers, number_events IN SHARE ROW EXCLUSIVE MODE")
        # Every delta into the base rows, which the first triggers keep adding to.
        op.execute(FOLD_DELTAS)
        drop_triggers(connection)
        install_triggers(connection, deltas=False, minutes=False)
    op.drop_table("number_count_deltas")
