"""The kept counts per minute as well (shared/counts.py): the two counters a reading splits at
the cutoff (`unheld`, `unclaimed`) also keep a row per minute of release, so that a reading
counts by index only the rows of the cutoff's own minute, not of its hour (about 4,700 rows at
10M numbers, and growing with the store). The triggers are installed again and the minute rows
built from the store, of every hour (the first reconciliation drops those before its cutoff's
hour).

Revision ID: 0019_count_minutes
Revises: 0018_lane_index
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

from shared.counts import (
    MINUTE_NAMES,
    MINUTES_FROM,
    drop_triggers,
    install_triggers,
    rebuild_counts,
)

revision: str = "0019_count_minutes"
down_revision: str | None = "0018_lane_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _reinstall(*, minutes: bool) -> None:
    connection = op.get_bind()
    if connection.dialect.name == "postgresql":
        # Writers wait while the triggers change: none of their changes is counted twice or
        # missed.
        op.execute("LOCK TABLE phone_numbers, number_events IN SHARE ROW EXCLUSIVE MODE")
    drop_triggers(connection)
    install_triggers(connection, deltas=True, minutes=minutes)


def upgrade() -> None:
    _reinstall(minutes=True)
    connection = op.get_bind()
    rebuild_counts(connection)
    if connection.dialect.name == "postgresql":
        # The rebuild's deltas (a row per minute of release in the store) are folded: the table
        # written afresh keeps none of their dead space, which every reading would scan until
        # the next vacuum (720 pages at 10M numbers, read twice as long as the rest).
        op.execute("LOCK TABLE number_count_deltas IN ACCESS EXCLUSIVE MODE")
        if not connection.scalar(text("SELECT EXISTS (SELECT FROM number_count_deltas)")):
            op.execute("TRUNCATE number_count_deltas")
        op.execute("ANALYZE number_counts")


def downgrade() -> None:
    _reinstall(minutes=False)
    names = ", ".join(f"'{name}'" for name in (*MINUTE_NAMES, MINUTES_FROM))
    for table in ("number_counts", "number_count_deltas"):
        op.execute(f"DELETE FROM {table} WHERE name IN ({names})")
