"""The outbox wakes the relay: every statement that adds lifecycle events to number_events
sends a NOTIFY on `numbers_outbox`, delivered when its transaction commits (PostgreSQL folds
the same notification within one transaction into one). A relay waiting with LISTEN applies
the events at once instead of at its next scheduled run. SQLite has no notifications: there
the relay keeps to its schedule.

Revision ID: 0015_outbox_notify
Revises: 0014_carriers
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015_outbox_notify"
down_revision: str | None = "0014_carriers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here, not read from shared.relay: a renamed channel comes with its own migration.
CHANNEL = "numbers_outbox"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE FUNCTION numbers_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN PERFORM pg_notify('{CHANNEL}', ''); RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER number_events_notify AFTER INSERT ON number_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION numbers_outbox_notify()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER number_events_notify ON number_events")
    op.execute("DROP FUNCTION numbers_outbox_notify()")
