"""Realistic demo data, bulk-loaded: accounts, numbers (some overdue), 10DLC assignments.

Seeding adds to whatever the store holds: new accounts get ids after the highest `acc_NNNNN`,
new numbers serials after the highest demo number of each block, new rows ids after every id
the store has used (tombstones included), so a second run never clashes with the first.
Plan caps are never exceeded: a number its account has no room for is seeded as released, so
the released share can come out above `released_share` when numbers per account are many.
About 1% of released numbers are on purge hold.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar, cast

from dateutil.relativedelta import relativedelta
from sqlalchemy import Connection, Engine, func, insert, select, text
from sqlalchemy.orm import Session

from shared.clock import resolve_now
from shared.counts import compact_counts
from shared.models import PLANS, Account, Base, PhoneNumber, PurgedNumber
from shared.retention import cutoff as retention_cutoff

if TYPE_CHECKING:
    import psycopg

Row = tuple[Any, ...]
T = TypeVar("T")
Writer = Callable[[str, tuple[str, ...], Iterable[Row]], None]

ACCOUNT_COLUMNS = ("id", "plan", "created_at")
NUMBER_COLUMNS = (
    "id",
    "account_id",
    "phone_number",
    "label",
    "created_at",
    "country_code",
    "number_type",
    "billing_status",
    "next_billing_date",
    "monthly_price",
    "released_at",
    "purge_hold",
    "provider_number_id",
)
CAMPAIGN_COLUMNS = ("number_id", "campaign_id", "status", "assigned_at")

FREE_EVERY = 10  # every tenth account is on the free plan
FREE_WEIGHT = 0.05  # free accounts hold few numbers; paid ones a skewed share
HOLD_SHARE = 0.01  # of released numbers
LABEL_SHARE = 0.4
PROVIDER_ID_SHARE = 0.95
CAMPAIGN_SHARE = 0.5  # of US local numbers
CAMPAIGN_STATUSES = ("approved", "pending", "testing")
CAMPAIGN_WEIGHTS = (0.7, 0.2, 0.1)
LABELS = ("Support line", "Sales", "Marketing SMS", "Front desk", "After hours", "Alerts", "2FA")
CHUNK = 10_000
DAY = 86_400.0


@dataclasses.dataclass(frozen=True)
class Block:
    """A range of numbers: `prefix` followed by a serial from `first` to `last` (same width)."""

    country_code: str
    number_type: str
    prefix: str
    first: int
    last: int
    price: Decimal
    weight: float
    ten_dlc: bool = False  # 10DLC campaigns apply to US local long codes only

    def number(self, serial: int) -> str:
        return f"{self.prefix}{serial}"


US_LOCAL = [
    Block("US", "local", f"+1{area}", 2_000_000, 9_999_999, Decimal("1.00"), 9.0, ten_dlc=True)
    for area in ("415", "212", "512", "303", "206", "617", "312", "305")
]
BLOCKS = (
    *US_LOCAL,
    Block("US", "toll_free", "+1800", 2_000_000, 9_999_999, Decimal("2.00"), 4.0),
    Block("US", "toll_free", "+1888", 2_000_000, 9_999_999, Decimal("2.00"), 2.0),
    Block("GB", "local", "+4420", 30_000_000, 89_999_999, Decimal("1.50"), 3.0),
    Block("GB", "mobile", "+447", 400_000_000, 999_999_999, Decimal("0.50"), 3.0),
    Block("DE", "local", "+4930", 10_000_000, 99_999_999, Decimal("1.50"), 2.0),
    Block("DE", "mobile", "+49151", 10_000_000, 99_999_999, Decimal("0.50"), 2.0),
)


@dataclasses.dataclass(frozen=True)
class DemoSummary:
    """What a seeding run added; `overdue` counts released, unheld numbers past the deadline."""

    accounts: int
    numbers: int
    released: int
    overdue: int
    held: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DemoStart:
    """Where new rows begin: next account number, next row id, next serial per block prefix."""

    account: int = 1
    number_id: int = 1
    serials: Mapping[str, int] = dataclasses.field(default_factory=dict)


def _next_billing_date(day: int, today: date) -> date:
    """The next monthly anniversary (day `day`, clamped to the month's end) after `today`."""
    this_month = today + relativedelta(day=day)
    return this_month if this_month > today else today + relativedelta(months=1, day=day)


class DemoGenerator:
    """Deterministic demo rows for a seed; the counters fill in as `numbers()` is consumed."""

    def __init__(
        self,
        *,
        numbers: int,
        accounts: int,
        now: datetime,
        released_share: float,
        window_days: int,
        seed: int,
        start: DemoStart | None = None,
    ) -> None:
        if numbers < 0 or accounts < 0 or (numbers and not accounts):
            raise ValueError("numbers and accounts must be >= 0, and numbers need accounts")
        if not 0.0 <= released_share <= 1.0:
            raise ValueError("released_share must be between 0 and 1")
        if window_days < 1:
            raise ValueError("window_days must be at least 1")
        self.count = numbers
        self.now = resolve_now(now)
        self.released_share = released_share
        self.window = window_days * DAY
        self.start = start or DemoStart()
        self.rng = random.Random(seed)
        self.released = self.overdue = self.held = 0
        rng = self.rng
        self.accounts: list[Row] = []
        self.caps: list[int] = []
        self.campaigns: list[str] = []
        weights: list[float] = []
        for k in range(self.start.account, self.start.account + accounts):
            plan = "free" if k % FREE_EVERY == 0 else "paid"
            created = self.now - timedelta(days=rng.uniform(400, 800))
            self.accounts.append((f"acc_{k:05d}", plan, created))
            self.caps.append(PLANS[plan])
            self.campaigns.append(
                "C" + "".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", k=6))
            )
            weights.append(FREE_WEIGHT if plan == "free" else rng.lognormvariate(0.0, 0.5))
        self.account_cum = _cumulative(weights)

    def numbers(self) -> Iterator[tuple[Row, Row | None]]:
        """(number row, campaign row or None) per number, in NUMBER/CAMPAIGN_COLUMNS order."""
        rng, uniform, now = self.rng, self.rng.random, self.now
        cutoff = retention_cutoff(now)
        today = now.date()
        billing = {day: _next_billing_date(day, today) for day in range(1, 32)}
        block_cum = _cumulative([block.weight for block in BLOCKS])
        serials = {b.prefix: self.start.serials.get(b.prefix, b.first) for b in BLOCKS}
        indexes = range(len(self.accounts))
        active = [0] * len(self.accounts)
        for number_id in range(self.start.number_id, self.start.number_id + self.count):
            block = rng.choices(BLOCKS, cum_weights=block_cum)[0]
            serial = serials[block.prefix]
            if serial > block.last:
                raise ValueError(f"demo number block {block.prefix} is exhausted")
            serials[block.prefix] = serial + 1
            account = rng.choices(indexes, cum_weights=self.account_cum)[0]
            age = rng.uniform(30, 400) * DAY
            created = now - timedelta(seconds=age)
            released_at: datetime | None = None
            held = False
            # Past the plan's cap a number can only be a released one.
            if uniform() < self.released_share or active[account] >= self.caps[account]:
                released_at = now - timedelta(seconds=uniform() * min(self.window, age))
                held = uniform() < HOLD_SHARE
                self.released += 1
                self.held += held
                self.overdue += released_at <= cutoff and not held
            else:
                active[account] += 1
            label = rng.choice(LABELS) if uniform() < LABEL_SHARE else None
            provider_id = (
                str(rng.randrange(10**18, 10**19)) if uniform() < PROVIDER_ID_SHARE else None
            )
            row = (
                number_id,
                self.accounts[account][0],
                block.number(serial),
                label,
                created,
                block.country_code,
                block.number_type,
                "active" if released_at is None else "released",
                billing[created.day],
                block.price,
                released_at,
                held,
                provider_id,
            )
            campaign = None
            if block.ten_dlc and uniform() < CAMPAIGN_SHARE:
                status = rng.choices(CAMPAIGN_STATUSES, CAMPAIGN_WEIGHTS)[0]
                assigned = created + timedelta(seconds=uniform() * 3 * DAY)
                campaign = (number_id, self.campaigns[account], status, assigned)
            yield row, campaign


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for weight in weights:
        total += weight
        out.append(total)
    return out


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _copy_writer(connection: Connection) -> Writer:
    raw = cast("psycopg.Connection[Any]", connection.connection.driver_connection)

    def write(table: str, columns: tuple[str, ...], rows: Iterable[Row]) -> None:
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    return write


def _insert_writer(connection: Connection) -> Writer:
    def write(table: str, columns: tuple[str, ...], rows: Iterable[Row]) -> None:
        statement = insert(Base.metadata.tables[table])
        for chunk in _chunks(rows, CHUNK):
            connection.execute(statement, [dict(zip(columns, row, strict=True)) for row in chunk])

    return write


def _start(connection: Connection) -> DemoStart:
    """Past everything the store holds: account numbers, row ids, serials per block."""
    account_ids = connection.scalars(select(Account.id).where(Account.id.like("acc\\_%", "\\")))
    account = max((int(i[4:]) for i in account_ids if i[4:].isdigit()), default=0) + 1
    # Tombstones keep their number_id unique, so an id is never reused, even after a purge.
    used = connection.execute(
        select(
            select(func.max(PhoneNumber.id)).scalar_subquery(),
            select(func.max(PurgedNumber.number_id)).scalar_subquery(),
        )
    ).one()
    number_id = max(used[0] or 0, used[1] or 0) + 1
    if connection.dialect.name == "postgresql":
        sequence = "SELECT nextval(pg_get_serial_sequence('phone_numbers', 'id'))"
        number_id = max(number_id, connection.execute(text(sequence)).scalar_one())
    serials = {}
    for block in BLOCKS:
        low, high = block.number(block.first), block.number(block.last)
        top = connection.scalar(
            select(func.max(PhoneNumber.phone_number)).where(
                PhoneNumber.phone_number.between(low, high),
                func.length(PhoneNumber.phone_number) == len(low),
            )
        )
        if top is not None:
            serials[block.prefix] = int(top[len(block.prefix) :]) + 1
    return DemoStart(account=account, number_id=number_id, serials=serials)


def store_has_numbers(engine: Engine) -> bool:
    """True when the store holds at least one number (`seed-demo --if-empty` then does
    nothing)."""
    with engine.connect() as connection:
        return connection.scalar(select(PhoneNumber.id).limit(1)) is not None


def seed_demo(
    engine: Engine,
    *,
    numbers: int = 1000,
    accounts: int = 10,
    now: datetime | None = None,
    released_share: float = 0.6,
    window_days: int = 30,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> DemoSummary:
    """Add demo accounts and numbers to a migrated store, COPY on PostgreSQL; one transaction.

    `progress`: called with the count of numbers of each chunk written (a progress bar's).
    """
    began = time.perf_counter()
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as connection:
        if postgres:
            # Writers wait until the load commits: ids and serials were chosen past theirs.
            connection.execute(
                text("LOCK TABLE accounts, phone_numbers IN SHARE ROW EXCLUSIVE MODE")
            )
        generator = DemoGenerator(
            numbers=numbers,
            accounts=accounts,
            now=resolve_now(now),
            released_share=released_share,
            window_days=window_days,
            seed=seed,
            start=_start(connection),
        )
        write = _copy_writer(connection) if postgres else _insert_writer(connection)
        write("accounts", ACCOUNT_COLUMNS, generator.accounts)
        for chunk in _chunks(generator.numbers(), CHUNK):
            write("phone_numbers", NUMBER_COLUMNS, (number for number, _ in chunk))
            write("campaign_assignments", CAMPAIGN_COLUMNS, (c for _, c in chunk if c))
            if progress is not None:
                progress(len(chunk))
        if postgres and numbers:
            last = generator.start.number_id + numbers - 1
            connection.execute(
                text("SELECT setval(pg_get_serial_sequence('phone_numbers', 'id'), :last)"),
                {"last": last},
            )
            # The load's counts folded at once (its triggers fold at most once: shared/counts.py).
            with Session(bind=connection) as session:
                compact_counts(session)
            # Fresh planner statistics, so the purge's first queries use the partial indexes.
            connection.execute(text("ANALYZE accounts, phone_numbers, campaign_assignments"))
    return DemoSummary(
        accounts=accounts,
        numbers=numbers,
        released=generator.released,
        overdue=generator.overdue,
        held=generator.held,
        seconds=round(time.perf_counter() - began, 3),
    )
