"""The number store: accounts, phone numbers, campaign assignments, tombstones, purge runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.models import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _pattern_checks(dialect: str) -> list[sa.CheckConstraint]:
    """E.164 and ISO country checks: regex on PostgreSQL, GLOB on SQLite."""
    if dialect == "postgresql":
        return [
            sa.CheckConstraint(r"phone_number ~ '^\+[1-9][0-9]{1,14}$'", name="e164"),
            sa.CheckConstraint("country_code ~ '^[A-Z]{2}$'", name="country_alpha2"),
        ]
    return [
        sa.CheckConstraint(
            "phone_number GLOB '+[1-9][0-9]*' AND length(phone_number) BETWEEN 3 AND 16 "
            "AND substr(phone_number, 2) NOT GLOB '*[^0-9]*'",
            name="e164",
        ),
        sa.CheckConstraint("country_code GLOB '[A-Z][A-Z]'", name="country_alpha2"),
    ]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("plan", sa.String(8), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("plan IN ('free', 'paid')", name="plan_known"),
    )
    op.create_table(
        "phone_numbers",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("phone_number", sa.String(16), nullable=False, unique=True),
        sa.Column("label", sa.Text()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("country_code", sa.String(2), nullable=False),
        sa.Column("number_type", sa.String(32), nullable=False),
        sa.Column("billing_status", sa.String(8), nullable=False),
        sa.Column("next_billing_date", sa.Date(), nullable=False),
        sa.Column("monthly_price", sa.Numeric(12, 4), nullable=False),
        sa.Column("released_at", UTCDateTime()),
        sa.Column("purge_hold", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("provider_number_id", sa.String(128)),
        sa.Column("purge_state", sa.String(8)),
        sa.CheckConstraint("billing_status IN ('active', 'released')", name="billing_status_known"),
        sa.CheckConstraint(
            "(billing_status = 'released') = (released_at IS NOT NULL)",
            name="released_at_iff_released",
        ),
        sa.CheckConstraint("monthly_price >= 0", name="price_not_negative"),
        sa.CheckConstraint("length(label) <= 255", name="label_length"),
        sa.CheckConstraint(
            "purge_state IS NULL OR purge_state = 'purging'", name="purge_state_known"
        ),
        sa.CheckConstraint(
            "purge_state IS NULL OR billing_status = 'released'", name="purging_only_released"
        ),
        *_pattern_checks(dialect),
        # Never reuse an id on SQLite: tombstones are unique per number id.
        sqlite_autoincrement=True,
    )
    released = sa.text("released_at IS NOT NULL")
    purgeable = sa.text("released_at IS NOT NULL AND NOT purge_hold")
    active = sa.text("billing_status = 'active'")
    op.create_index(
        "ix_phone_numbers_account_released",
        "phone_numbers",
        ["account_id", "released_at"],
        postgresql_where=released,
        sqlite_where=released,
    )
    op.create_index(
        "ix_phone_numbers_released_at",
        "phone_numbers",
        ["released_at", "id"],
        postgresql_where=purgeable,
        sqlite_where=purgeable,
    )
    op.create_index(
        "ix_phone_numbers_account_active",
        "phone_numbers",
        ["account_id"],
        postgresql_where=active,
        sqlite_where=active,
    )
    op.create_table(
        "campaign_assignments",
        sa.Column(
            "number_id",
            BigId,
            sa.ForeignKey("phone_numbers.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("assigned_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'testing', 'approved')", name="a2p_status_known"),
    )
    op.create_table(
        "purged_numbers",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("number_id", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("account_id", sa.String(64), nullable=False, index=True),
        sa.Column("phone_number", sa.String(16), nullable=False, index=True),
        sa.Column("label", sa.Text()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("country_code", sa.String(2), nullable=False),
        sa.Column("number_type", sa.String(32), nullable=False),
        sa.Column("next_billing_date", sa.Date(), nullable=False),
        sa.Column("monthly_price", sa.Numeric(12, 4), nullable=False),
        sa.Column("released_at", UTCDateTime(), nullable=False),
        sa.Column("provider_number_id", sa.String(128)),
        sa.Column("campaign_id", sa.String(64)),
        sa.Column("a2p_status", sa.String(8)),
        sa.Column("purged_at", UTCDateTime(), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False, index=True),
    )
    op.create_table(
        "purge_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("started_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("finished_at", UTCDateTime()),
        sa.Column("cutoff", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("purged", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("batches", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("remaining", sa.Integer()),
        sa.Column("summary", sa.JSON()),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'limit_reached', 'skipped', 'paused', "
            "'dry_run', 'failed', 'provider_unavailable')",
            name="run_status_known",
        ),
    )


def downgrade() -> None:
    op.drop_table("purge_runs")
    op.drop_table("purged_numbers")
    op.drop_table("campaign_assignments")
    op.drop_table("phone_numbers")
    op.drop_table("accounts")
