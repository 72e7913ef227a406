"""Counts kept, not scanned: what `status` and the exporter report, kept up to date by triggers.

`number_counts` holds, per counter name, per hour of release (`hour`, for the two counters a
reading splits at the cutoff; 0 for the others) and per shard (the writing transaction's id
modulo `SHARDS`, so that concurrent writers rarely wait on the same counter row; a counter is
the sum of its shards), how many rows of the store the counter covers. Triggers on
`phone_numbers` and `number_events` add each statement's changes in the statement's own
transaction (PostgreSQL: one aggregate per statement, from its transition tables, in one pass;
SQLite: per row), so the counts commit and roll back with the changes.

A reading sums whole hours on either side of the cutoff and counts, through the partial indexes
on `released_at`, only the rows of the cutoff's own hour: its cost follows the hours the store
spans and the rows of one hour, not the size of the store. `reconcile_counts` (the hourly
publication) compares the counters with a full scan of one snapshot and repairs any drift.

The trigger SQL is installed by migration 0010_counts: a change to `COUNTERS` or `SHARDS` needs a
migration of its own that installs the triggers again (`install_triggers`) and rebuilds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, false, func, select, text, true
from sqlalchemy.orm import Session

from shared.models import NumberCount, NumberEvent, PhoneNumber
from shared.provider import REFUSED_CODE
from shared.retention import cutoff, purgeable_numbers, repurchasable_numbers, waiting_numbers

log = structlog.get_logger("shared.counts")

SHARDS = 8
HOUR_SECONDS = 3600
OUTBOX = "outbox"

_RELEASED = "{r}.billing_status = 'released'"
_FAILED = _RELEASED + " AND {r}.provider_error_code IS NOT NULL"
_REFUSED = _RELEASED + f" AND {{r}}.provider_error_code = '{REFUSED_CODE}'"
# Each counter: whether it is kept per hour of release, and the rows it covers ({r}: the row).
COUNTERS: dict[str, tuple[bool, str]] = {
    # Released, not held: the overdue ones are those released at or before the cutoff.
    "unheld": (True, _RELEASED + " AND NOT {r}.purge_hold"),
    # Released, not claimed by a purge: the releasable ones are those released after it.
    "unclaimed": (True, _RELEASED + " AND {r}.purge_state IS NULL"),
    "held": (False, _RELEASED + " AND {r}.purge_hold"),
    "failed": (False, _FAILED),
    "permanent": (False, _FAILED + " AND {r}.provider_failed_permanently"),
    "claimed": (
        False,
        _RELEASED + " AND {r}.purge_state = 'purging' AND {r}.provider_error_code IS NULL",
    ),
    "refused_person": (False, _REFUSED + " AND {r}.provider_failed_permanently"),
    "refused_carrier": (False, _REFUSED + " AND NOT {r}.provider_failed_permanently"),
}
# The columns the counters read (SQLite's update trigger fires on these alone).
COLUMNS = (
    "billing_status", "released_at", "purge_hold", "purge_state", "provider_error_code",
    "provider_failed_permanently",
)  # fmt: skip


def _hour(dialect: str, column: str) -> str:
    """The hour (seconds since the epoch // 3600) of a stored UTC datetime."""
    if dialect == "postgresql":
        return f"CAST(floor(extract(epoch FROM {column}) / {HOUR_SECONDS}) AS bigint)"
    # SQLite keeps UTC datetimes as naive text.
    return f"CAST(strftime('%s', {column}) AS INTEGER) / {HOUR_SECONDS}"


def _shard(dialect: str) -> str:
    """The writing transaction's shard: every counter row a transaction changes is in one shard,
    so concurrent writers meet on a row one time in SHARDS, and each statement locks its rows in
    order. The relay (outbox rows only) cannot deadlock with a writer; two writers of the same
    shard that change the same counters in opposite orders over two statements can (a hold of
    an overdue number while a purge batch takes its hour): PostgreSQL then aborts one after
    deadlock_timeout. SQLite has one writer at a time: shard 0."""
    if dialect == "postgresql":
        return f"CAST(mod(txid_current(), {SHARDS}) AS smallint)"
    return "0"


def _number_keys(dialect: str, row: str, sign: int, source: str = "") -> str:
    """One (name, hour, shard, d) row per counter the row(s) `row` count in, d = sign."""
    parts = []
    for name, (hourly, covers) in COUNTERS.items():
        hour = _hour(dialect, f"{row}.released_at") if hourly else "0"
        parts.append(
            f"SELECT '{name}' AS name, {hour} AS hour, {_shard(dialect)} AS shard, {sign} AS d"
            f"{source} WHERE {covers.format(r=row)}"
        )
    return " UNION ALL ".join(parts)


def _event_keys(dialect: str, sign: int, source: str = "") -> str:
    return f"SELECT '{OUTBOX}' AS name, 0 AS hour, {_shard(dialect)} AS shard, {sign} AS d{source}"


def _add(keys: str) -> str:
    """Add the keys' sums to the counters (locked in one order: writers never deadlock)."""
    return (
        "INSERT INTO number_counts (name, hour, shard, n) "
        f"SELECT name, hour, shard, sum(d) FROM ({keys}) AS k WHERE true "
        "GROUP BY name, hour, shard HAVING sum(d) <> 0 ORDER BY name, hour, shard "
        "ON CONFLICT (name, hour, shard) DO UPDATE SET n = number_counts.n + excluded.n"
    )


def _values(row: str, sign: int) -> str:
    """PostgreSQL: the (name, hour, hit, d) of every counter for the row `row`, as VALUES rows."""
    rows = []
    for name, (hourly, covers) in COUNTERS.items():
        hour = _hour("postgresql", f"{row}.released_at") if hourly else "CAST(0 AS bigint)"
        rows.append(f"('{name}', {hour}, {covers.format(r=row)}, {sign})")
    return ", ".join(rows)


def _lateral(values: str, source: str, where: str = "true") -> str:
    """One pass over `source`: each row's counters from a LATERAL VALUES list."""
    return (
        f"SELECT k.name, k.hour, {_shard('postgresql')} AS shard, k.d FROM {source} "
        f"CROSS JOIN LATERAL (VALUES {values}) AS k(name, hour, hit, d) WHERE k.hit AND {where}"
    )


def _postgresql_ddl() -> list[str]:
    old, new = " FROM old_rows r", " FROM new_rows r"
    # An update counts only where a column the counters read changed (most of the purge's and
    # the carrier calls' updates change none of them).
    changed = (
        f"ROW({', '.join(f'o.{c}' for c in COLUMNS)}) IS DISTINCT FROM "
        f"ROW({', '.join(f'n.{c}' for c in COLUMNS)})"
    )
    numbers = {
        "INSERT": _add(_lateral(_values("r", 1), "new_rows r")),
        "UPDATE": _add(
            _lateral(
                _values("o", -1) + ", " + _values("n", 1),
                "old_rows o JOIN new_rows n ON n.id = o.id",
                changed,
            )
        ),
        "DELETE": _add(_lateral(_values("r", -1), "old_rows r")),
        "TRUNCATE": f"DELETE FROM number_counts WHERE name <> '{OUTBOX}'",
    }
    events = {
        "INSERT": _add(_event_keys("postgresql", 1, new)),
        "DELETE": _add(_event_keys("postgresql", -1, old)),
        "TRUNCATE": f"DELETE FROM number_counts WHERE name = '{OUTBOX}'",
    }
    statements = []
    for table, bodies in (("phone_numbers", numbers), ("number_events", events)):
        function = f"number_counts_{table}"
        branches = " ELS".join(f"IF TG_OP = '{op}' THEN {body};" for op, body in bodies.items())
        statements.append(
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {branches} END IF; RETURN NULL; END $$"
        )
        for op in bodies:
            referencing = {
                "INSERT": " REFERENCING NEW TABLE AS new_rows",
                "UPDATE": " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
                "DELETE": " REFERENCING OLD TABLE AS old_rows",
                "TRUNCATE": "",
            }[op]
            statements.append(
                f"CREATE TRIGGER {table}_counts_{op.lower()} AFTER {op} ON {table}"
                f"{referencing} FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
            )
    return statements


def _sqlite_ddl() -> list[str]:
    numbers = {
        "INSERT": _add(_number_keys("sqlite", "NEW", 1)),
        f"UPDATE OF {', '.join(COLUMNS)}": _add(
            _number_keys("sqlite", "OLD", -1) + " UNION ALL " + _number_keys("sqlite", "NEW", 1)
        ),
        "DELETE": _add(_number_keys("sqlite", "OLD", -1)),
    }
    events = {"INSERT": _add(_event_keys("sqlite", 1)), "DELETE": _add(_event_keys("sqlite", -1))}
    statements = []
    for table, bodies in (("phone_numbers", numbers), ("number_events", events)):
        for op, body in bodies.items():
            name = f"{table}_counts_{op.split()[0].lower()}"
            statements.append(f"CREATE TRIGGER {name} AFTER {op} ON {table} BEGIN {body}; END")
    return statements


def install_triggers(connection: Connection) -> None:
    """Create the triggers that keep `number_counts` (migration 0010_counts)."""
    postgresql = connection.dialect.name == "postgresql"
    for statement in _postgresql_ddl() if postgresql else _sqlite_ddl():
        connection.exec_driver_sql(statement)


def drop_triggers(connection: Connection) -> None:
    """Remove them (the migration's downgrade)."""
    for table, ops in (
        ("phone_numbers", ("insert", "update", "delete", "truncate")),
        ("number_events", ("insert", "delete", "truncate")),
    ):
        for op in ops:
            connection.exec_driver_sql(
                f"DROP TRIGGER IF EXISTS {table}_counts_{op}"
                + (f" ON {table}" if connection.dialect.name == "postgresql" else "")
            )
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"DROP FUNCTION IF EXISTS number_counts_{table}()")


# Reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """What status reports, at `now`."""

    overdue: int
    oldest_overdue: datetime | None
    held: int
    releasable: int
    upstream_failed: int
    upstream_permanent: int
    upstream_claimed: int
    upstream_refused_person: int
    upstream_refused_carrier: int
    outbox_events: int
    outbox_oldest: datetime | None


def _hour_start(moment: datetime) -> tuple[int, datetime]:
    hour = int(moment.timestamp() // HOUR_SECONDS)
    return hour, datetime.fromtimestamp(hour * HOUR_SECONDS, UTC)


def kept_counts(session: Session, now: datetime) -> Counts:
    """The counts at `now` from the kept counters, and the cutoff's own hour from the indexes
    (its smaller side: the rows released in it up to the cutoff, or those after)."""
    line = cutoff(now)
    hour, start = _hour_start(line)
    sums: dict[tuple[str, int], int] = {}  # (name, -1/0/1: hours before, the cutoff's, after)
    for name, *parts in session.execute(
        select(
            NumberCount.name,
            func.sum(NumberCount.n).filter(NumberCount.hour < hour),
            func.sum(NumberCount.n).filter(NumberCount.hour == hour),
            func.sum(NumberCount.n).filter(NumberCount.hour > hour),
        ).group_by(NumberCount.name)
    ):
        for where, total in zip((-1, 0, 1), parts, strict=True):
            sums[name, where] = int(total or 0)

    def kept(name: str, *sides: int) -> int:
        return sum(sums.get((name, where), 0) for where in sides or (-1, 0, 1))

    # The rows of the cutoff's hour on the side counted, not held / held / claimed.
    early = line - start < timedelta(seconds=HOUR_SECONDS / 2)
    if early:
        side = (PhoneNumber.released_at >= start) & (PhoneNumber.released_at <= line)
    else:
        end = start + timedelta(seconds=HOUR_SECONDS)
        side = (PhoneNumber.released_at > line) & (PhoneNumber.released_at < end)
    # `= false` / `= true`, not IS: PostgreSQL proves the partial indexes' predicates from these.
    unheld = _count(session, side & (PhoneNumber.purge_hold == false()))
    held = _count(session, side & (PhoneNumber.purge_hold == true()))
    unclaimed = unheld + held - _count(session, side & (PhoneNumber.purge_state == "purging"))
    if early:  # overdue: released up to the cutoff; releasable: after it
        overdue = kept("unheld", -1) + unheld
        releasable = kept("unclaimed", 0, 1) - unclaimed
    else:
        overdue = kept("unheld", -1, 0) - unheld
        releasable = kept("unclaimed", 1) + unclaimed
    oldest = session.scalar(select(func.min(PhoneNumber.released_at)).where(purgeable_numbers(now)))
    outbox_oldest = session.scalar(select(func.min(NumberEvent.occurred_at)))
    return Counts(
        overdue=overdue,
        oldest_overdue=oldest,
        held=kept("held"),
        releasable=releasable,
        upstream_failed=kept("failed"),
        upstream_permanent=kept("permanent"),
        upstream_claimed=kept("claimed"),
        upstream_refused_person=kept("refused_person"),
        upstream_refused_carrier=kept("refused_carrier"),
        outbox_events=kept(OUTBOX),
        outbox_oldest=outbox_oldest,
    )


def _count(session: Session, where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(PhoneNumber).where(where)) or 0)


def repurchasable_count(session: Session, now: datetime) -> int:
    """The numbers their accounts can buy back at `now` (the releasable set's size)."""
    return _count(session, repurchasable_numbers(now))


def waiting_count(session: Session, now: datetime, provider: str) -> int:
    """Overdue numbers a run with `provider` cannot take now: among the rows with upstream
    state only (claimed, or carrying a provider error), each subset through its index."""
    waiting = waiting_numbers(now, provider)
    claimed = _count(session, waiting & (PhoneNumber.purge_state == "purging"))
    failed = _count(
        session,
        waiting & PhoneNumber.purge_state.is_(None) & PhoneNumber.provider_error_code.is_not(None),
    )
    return claimed + failed


def scanned_counts(session: Session, now: datetime) -> Counts:
    """The same counts from one pass over the store: the reference the kept ones must equal."""
    overdue = purgeable_numbers(now)
    failed = PhoneNumber.provider_error_code.is_not(None)
    permanent = PhoneNumber.provider_failed_permanently.is_(True)
    refused = PhoneNumber.provider_error_code == REFUSED_CODE
    row = session.execute(
        select(
            func.count().filter(overdue),
            func.min(PhoneNumber.released_at).filter(overdue),
            func.count().filter(PhoneNumber.purge_hold.is_(True)),
            func.count().filter(repurchasable_numbers(now)),
            func.count().filter(failed),
            func.count().filter(failed & permanent),
            func.count().filter(
                (PhoneNumber.purge_state == "purging") & PhoneNumber.provider_error_code.is_(None)
            ),
            func.count().filter(refused & permanent),
            func.count().filter(refused & ~permanent),
        ).where(PhoneNumber.billing_status == "released")
    ).one()
    events, oldest = session.execute(select(func.count(), func.min(NumberEvent.occurred_at))).one()
    return Counts(*row, outbox_events=events, outbox_oldest=oldest)


# Reconciling --------------------------------------------------------------------------------


def _scanned_counters(session: Session) -> Counter[tuple[str, int]]:
    """Every counter's true value, per (name, hour), from one pass over each table."""
    dialect = session.get_bind().dialect.name
    hour = _hour(dialect, "r.released_at")
    filters = ", ".join(
        f"count(*) FILTER (WHERE {covers.format(r='r')})" for _hourly, covers in COUNTERS.values()
    )
    true: Counter[tuple[str, int]] = Counter()
    rows = session.execute(
        text(
            f"SELECT {hour} AS hour, {filters} FROM phone_numbers r "
            f"WHERE r.billing_status = 'released' GROUP BY {hour}"
        )
    )
    for released_hour, *values in rows:
        for (name, (hourly, _covers)), value in zip(COUNTERS.items(), values, strict=True):
            true[name, int(released_hour) if hourly else 0] += int(value)
    true[OUTBOX, 0] += int(session.scalar(select(func.count()).select_from(NumberEvent)) or 0)
    return true


def _kept_counters(session: Session) -> Counter[tuple[str, int]]:
    kept: Counter[tuple[str, int]] = Counter()
    for name, hour, total in session.execute(
        select(NumberCount.name, NumberCount.hour, func.sum(NumberCount.n)).group_by(
            NumberCount.name, NumberCount.hour
        )
    ):
        kept[name, int(hour)] += int(total)
    return kept


def counts_drift(session: Session) -> dict[tuple[str, int], int]:
    """What to add to each counter to make it true, read in the session's one snapshot (on
    PostgreSQL the caller's transaction must be REPEATABLE READ for the two reads to agree)."""
    true, kept = _scanned_counters(session), _kept_counters(session)
    drift = {key: true[key] - kept[key] for key in true.keys() | kept.keys()}
    return {key: delta for key, delta in sorted(drift.items()) if delta}


def repair_counts(session: Session, drift: dict[tuple[str, int], int]) -> None:
    """Add `drift` to the counters (commutes with the triggers' own additions, so concurrent
    writers need not stop) and drop the counter rows left at 0; the caller commits."""
    for (name, hour), delta in drift.items():
        session.execute(
            text(_add("SELECT :name AS name, :hour AS hour, 0 AS shard, :delta AS d")),
            {"name": name, "hour": hour, "delta": delta},
        )
    session.execute(text("DELETE FROM number_counts WHERE n = 0"))


def rebuild_counts(connection: Connection) -> None:
    """Fill the counters from the store (the migration's backfill, under its locks)."""
    with Session(bind=connection) as session:
        repair_counts(session, counts_drift(session))
        session.flush()


def reconcile_counts(session: Session) -> dict[str, Any]:
    """Compare the kept counts with a full scan of one snapshot, repair and report any drift.

    The session must be fresh (no transaction begun): on PostgreSQL the comparison reads one
    REPEATABLE READ snapshot, then the repair commits in a transaction of its own."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    drift = counts_drift(session)
    session.rollback()
    if drift:
        repair_counts(session, drift)
        session.commit()
        by_name: Counter[str] = Counter()
        for (name, _hour_of), delta in drift.items():
            by_name[name] += delta
        log.warning("counts.drift_repaired", drift=dict(by_name), rows=len(drift))
    return {"counts_drift": sum(abs(delta) for delta in drift.values())}
