"""The number store: accounts, phone numbers, 10DLC campaign assignments, tombstones, purge runs."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.types import JSON, TypeDecorator

from shared.run_status import RECORDED

PLANS = {"free": 1, "paid": 49}
A2P_STATUSES = ("pending", "testing", "approved")
E164_PATTERN = r"^\+[1-9][0-9]{1,14}$"
LABEL_MAX = 255

BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores them naive; we re-attach UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the store; pass aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint("plan IN ('free', 'paid')", name="plan_known"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    plan: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"Account(id={self.id!r}, plan={self.plan!r})"


def _partial_index(name: str, *columns: str | TextClause, where: str) -> Index:
    """An index of the rows `where` holds for, the same on PostgreSQL and SQLite."""
    return Index(name, *columns, postgresql_where=text(where), sqlite_where=text(where))


class PhoneNumber(Base):
    __tablename__ = "phone_numbers"
    __table_args__ = (
        CheckConstraint("billing_status IN ('active', 'released')", name="billing_status_known"),
        CheckConstraint(
            "(billing_status = 'released') = (released_at IS NOT NULL)",
            name="released_at_iff_released",
        ),
        CheckConstraint("monthly_price >= 0", name="price_not_negative"),
        CheckConstraint(f"length(label) <= {LABEL_MAX}", name="label_length"),
        CheckConstraint("purge_state IS NULL OR purge_state = 'purging'", name="purge_state_known"),
        CheckConstraint(
            "purge_state IS NULL OR billing_status = 'released'", name="purging_only_released"
        ),
        # Pattern checks differ per dialect; the migration creates them (regex or GLOB).
        # The list query: one account's released numbers, newest release first.
        _partial_index(
            "ix_phone_numbers_account_released",
            "account_id",
            "released_at",
            where="released_at IS NOT NULL",
        ),
        # The purge and the releasable set: released numbers by release time.
        _partial_index(
            "ix_phone_numbers_released_at",
            "released_at",
            "id",
            where="released_at IS NOT NULL AND NOT purge_hold",
        ),
        # Claimed rows waiting for their upstream release, by next attempt.
        _partial_index(
            "ix_phone_numbers_claimed", "provider_next_attempt_at", where="purge_state = 'purging'"
        ),
        # The due numbers by carrier: which lanes hold due numbers, an index probe per carrier
        # (shared/purge/lanes.py).
        _partial_index(
            "ix_phone_numbers_lane_due",
            "carrier",
            "released_at",
            where="released_at IS NOT NULL AND NOT purge_hold",
        ),
        # Submitted numbers (an order at the carrier), read by order at each run.
        _partial_index(
            "ix_phone_numbers_submitted",
            "provider_order_id",
            where="provider_order_id IS NOT NULL",
        ),
        # `numbers-retention holds` and status's count: the held numbers only.
        _partial_index("ix_phone_numbers_held", "hold_set_at", where="purge_hold"),
        # Status's counts in the cutoff's hour (shared/counts.py): the held released numbers.
        _partial_index(
            "ix_phone_numbers_held_released",
            "released_at",
            where="released_at IS NOT NULL AND purge_hold",
        ),
        # Status's numbers kept upstream (its list and its waiting count): that subset only.
        _partial_index(
            "ix_phone_numbers_upstream",
            "released_at",
            where="provider_error_code IS NOT NULL",
        ),
        # The plan cap: active numbers per account.
        _partial_index(
            "ix_phone_numbers_account_active", "account_id", where="billing_status = 'active'"
        ),
        # Never reuse an id on SQLite: tombstones are unique per number id.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    phone_number: Mapped[str] = mapped_column(String(16), unique=True)
    label: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    country_code: Mapped[str] = mapped_column(String(2))
    number_type: Mapped[str] = mapped_column(String(32))
    billing_status: Mapped[str] = mapped_column(String(8))
    next_billing_date: Mapped[date] = mapped_column(Date)
    monthly_price: Mapped[Decimal] = mapped_column(Numeric(12, 4))
    released_at: Mapped[datetime | None]
    purge_hold: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # Who put the number on hold, when and why (empty for holds set before they were recorded).
    hold_reason: Mapped[str | None] = mapped_column(Text)
    hold_set_by: Mapped[str | None] = mapped_column(String(64))
    hold_set_at: Mapped[datetime | None]
    provider_number_id: Mapped[str | None] = mapped_column(String(128))
    # The carrier holding the number (shared/carriers/), where its release is asked; NULL: the
    # default carrier of the purge run (PROVIDER), for numbers stored without one.
    carrier: Mapped[str | None] = mapped_column(String(16))
    # An asynchronous release (a Bandwidth disconnect order, a Telnyx deletion job): the state
    # `submitted` is a claimed row with the carrier's order id, read by later runs until the
    # order settles this number.
    provider_order_id: Mapped[str | None] = mapped_column(String(64))
    provider_submitted_at: Mapped[datetime | None]
    # 'purging' once a purge batch has claimed the row (two-phase purge); repurchase is refused.
    purge_state: Mapped[str | None] = mapped_column(String(8))
    claimed_at: Mapped[datetime | None]
    # The upstream release of a claimed number: attempts, the last error, when to try again.
    provider_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    provider_next_attempt_at: Mapped[datetime | None]
    provider_error_code: Mapped[str | None] = mapped_column(String(64))
    provider_error_message: Mapped[str | None] = mapped_column(Text)
    provider_code: Mapped[str | None] = mapped_column(String(32))
    provider_failed_permanently: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    # The run whose call to the carrier for this number is in flight: set under the row's
    # lock just before the call, cleared with its answer. While that run is recorded running,
    # a hold, a settlement by hand or a retry is refused (`number_being_purged`).
    provider_call_run_id: Mapped[str | None] = mapped_column(String(36))

    campaign: Mapped[CampaignAssignment | None] = relationship(
        back_populates="number", passive_deletes=True, lazy="raise"
    )

    def __repr__(self) -> str:
        return (
            f"PhoneNumber(id={self.id!r}, phone_number={self.phone_number!r}, "
            f"account_id={self.account_id!r}, billing_status={self.billing_status!r})"
        )


class CampaignAssignment(Base):
    """The stored 10DLC campaign assignment of a US number; a2pStatus is derived from it."""

    __tablename__ = "campaign_assignments"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'testing', 'approved')", name="a2p_status_known"),
    )

    number_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("phone_numbers.id", ondelete="CASCADE"), primary_key=True
    )
    campaign_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(8))
    assigned_at: Mapped[datetime]

    number: Mapped[PhoneNumber] = relationship(back_populates="campaign", lazy="raise")

    def __repr__(self) -> str:
        return f"CampaignAssignment(number_id={self.number_id!r}, status={self.status!r})"


DISCONNECT_REASONS = ("released", "operator", "ported_out")


class PurgedNumber(Base):
    """Tombstone of a purged number: its fields as they were, when, and by which run; and its
    entry in the ledger of disconnections (carrier, proofs, disconnect date and reason)."""

    __tablename__ = "purged_numbers"
    __table_args__ = (
        CheckConstraint(
            "disconnect_reason IN ("
            + ", ".join(f"'{reason}'" for reason in DISCONNECT_REASONS)
            + ")",
            name="disconnect_reason_known",
        ),
        # The audit prune's redaction: tombstones whose label is not erased yet, by purge time.
        _partial_index("ix_purged_numbers_unredacted", "purged_at", where="label IS NOT NULL"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # Unique: a number is tombstoned exactly once, whatever retries or concurrent runs do.
    number_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    phone_number: Mapped[str] = mapped_column(String(16), index=True)
    label: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    country_code: Mapped[str] = mapped_column(String(2))
    number_type: Mapped[str] = mapped_column(String(32))
    next_billing_date: Mapped[date] = mapped_column(Date)
    monthly_price: Mapped[Decimal] = mapped_column(Numeric(12, 4))
    released_at: Mapped[datetime]
    provider_number_id: Mapped[str | None] = mapped_column(String(128))
    campaign_id: Mapped[str | None] = mapped_column(String(64))
    a2p_status: Mapped[str | None] = mapped_column(String(8))
    purged_at: Mapped[datetime]
    run_id: Mapped[str] = mapped_column(String(36), index=True)
    provider: Mapped[str | None] = mapped_column(String(16))
    upstream_released_at: Mapped[datetime | None]
    # How the number was settled upstream: 'provider' (its record of the id), 'not_found'
    # (its 404), 'no_provider_id' (nothing held there), 'operator' (a person, with a note).
    resolution: Mapped[str | None] = mapped_column(String(16))
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    resolution_note: Mapped[str | None] = mapped_column(Text)
    # The ledger of disconnections. `carrier`: the carrier that held the number ('none': the
    # purge ran without one; 'unknown': settled by hand without saying). `release_proof`: how
    # the carrier proved the release (its record of the id, its 404, no id to release).
    # `detach_steps`: what was removed from the number there first, each with its proof.
    # `disconnect_date`: the UTC date the number was permanently disconnected (purged);
    # `disconnect_reason`: 'released' (by its account, purged after the window), 'operator'
    # (settled at the carrier by a person), 'ported_out' (left by a port-out: not a permanent
    # disconnection, never reported).
    carrier: Mapped[str] = mapped_column(String(16))
    release_proof: Mapped[dict[str, Any] | None]
    detach_steps: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    disconnect_date: Mapped[date] = mapped_column(Date, index=True)
    disconnect_reason: Mapped[str] = mapped_column(String(16))

    def __repr__(self) -> str:
        return f"PurgedNumber(number_id={self.number_id!r}, phone_number={self.phone_number!r})"


class PurgeRun(Base):
    """One purge run, recorded for `status` and dashboards."""

    __tablename__ = "purge_runs"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{status}'" for status in RECORDED) + ")",
            name="run_status_known",
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(index=True)
    finished_at: Mapped[datetime | None]
    cutoff: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(24))
    purged: Mapped[int] = mapped_column(Integer, default=0)
    batches: Mapped[int] = mapped_column(Integer, default=0)
    remaining: Mapped[int | None] = mapped_column(Integer)
    summary: Mapped[dict[str, Any] | None]

    def __repr__(self) -> str:
        return f"PurgeRun(id={self.id!r}, status={self.status!r}, purged={self.purged!r})"


# The sum of `purged` over the deleted run records (`purged_total` adds it).
PURGED_BY_PRUNED_RUNS = "purged_by_pruned_runs"


class PrunedTotal(Base):
    """A sum kept when the records it adds up are pruned (shared/audit.py): e.g. the numbers
    purged by pruned runs, so `purged_total` (a Prometheus counter) never goes down."""

    __tablename__ = "pruned_totals"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)

    def __repr__(self) -> str:
        return f"PrunedTotal(name={self.name!r}, value={self.value!r})"


class PurgeControl(Base):
    """An operator's live control of the purge (e.g. 'pause'), read by every run per batch."""

    __tablename__ = "purge_controls"
    __table_args__ = (
        CheckConstraint("rows_per_second IS NULL OR rows_per_second > 0", name="pace_positive"),
    )

    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    reason: Mapped[str | None] = mapped_column(Text)
    set_by: Mapped[str] = mapped_column(String(64))
    set_at: Mapped[datetime]
    # The pace's rows-per-second ceiling (None for the pause).
    rows_per_second: Mapped[float | None] = mapped_column(Float)

    def __repr__(self) -> str:
        return f"PurgeControl(name={self.name!r}, set_by={self.set_by!r})"


EVENT_KINDS = (
    "registered", "released", "repurchased", "held", "unheld", "claimed", "upstream_failed",
    "upstream_reset", "purged",
)  # fmt: skip


class NumberEvent(Base):
    """A lifecycle event in the outbox: written with the change, deleted once relayed."""

    __tablename__ = "number_events"
    __table_args__ = (
        CheckConstraint(
            "kind IN (" + ", ".join(f"'{kind}'" for kind in EVENT_KINDS) + ")", name="kind_known"
        ),
        # The outbox's oldest event, for status and the exporter.
        Index("ix_number_events_occurred_at", "occurred_at"),
        # Never reuse an id on SQLite: applied events are deleted, and consumers of the stream
        # tell events apart by id.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    phone_number: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[str] = mapped_column(String(64))
    number_id: Mapped[int] = mapped_column(BigInteger)
    # The number's repurchase deadline when it is released (None while it is active).
    deadline: Mapped[datetime | None]
    occurred_at: Mapped[datetime]

    def __repr__(self) -> str:
        return (
            f"NumberEvent(id={self.id!r}, kind={self.kind!r}, phone_number={self.phone_number!r})"
        )


class ApiKey(Base):
    """A key of the HTTP API: only its hash is stored; the key itself is shown once."""

    __tablename__ = "api_keys"

    # The key's public id (its first characters), shown by `api-key list` and accepted by
    # `api-key revoke`; never enough to authenticate.
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r}, account_id={self.account_id!r})"


class NumberOrder(Base):
    """An order back through the API (`POST /numbers/order`): the id it was answered with and
    the number it reactivated, kept so that the order can be found again with the same answer
    (shared/number_orders.py)."""

    __tablename__ = "number_orders"
    __table_args__ = (CheckConstraint("substr(id, 1, 4) = 'ord_'", name="order_id_prefixed"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    phone_number: Mapped[str] = mapped_column(String(16))
    # No foreign key: the number may be released and purged later; the order stays.
    number_id: Mapped[int] = mapped_column(BigInteger)
    # The release it reversed, and when it was placed (the repurchase's instant).
    released_at: Mapped[datetime]
    ordered_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"NumberOrder(id={self.id!r}, phone_number={self.phone_number!r})"


class RelayMark(Base):
    """The highest outbox id the relay has applied to Redis, kept in the store as in Redis:
    a Redis that comes back with a lower one (restored from an older snapshot, or emptied)
    lost acknowledged state (shared.releasable.relay)."""

    __tablename__ = "relay_marks"

    # The releasable set's Redis prefix: one mark per relayed Redis.
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    relayed_through: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]

    def __repr__(self) -> str:
        return f"RelayMark(name={self.name!r}, relayed_through={self.relayed_through!r})"


class NumberCount(Base):
    """A kept count (shared/counts.py): how many rows counter `name` covers among the numbers
    released in `hour` (hours since the epoch; 0 for the counters not kept per hour; minutes
    since the epoch for the minute rows, `unheld/min` and `unclaimed/min`), before the deltas
    not yet folded (`NumberCountDelta`). Written by triggers and the compaction only (migrations
    0010_counts, 0017_count_deltas, 0019_count_minutes), and the reconciliation's floor of the
    minute rows (`minutes_from`); `shard` is 0 since 0017."""

    __tablename__ = "number_counts"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"NumberCount(name={self.name!r}, hour={self.hour!r}, n={self.n!r})"


class NumberCountDelta(Base):
    """A change to a kept count not yet folded into its `NumberCount` (shared/counts.py): each
    statement's sum per counter and hour, inserted by the PostgreSQL triggers (migration
    0017_count_deltas) so that writers never update a shared row; folded and deleted by the
    compaction. Empty on SQLite."""

    __tablename__ = "number_count_deltas"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(16))
    hour: Mapped[int] = mapped_column(BigInteger)
    n: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return f"NumberCountDelta(name={self.name!r}, hour={self.hour!r}, n={self.n!r})"
