"""Counts kept, not scanned: what `status` and the exporter report, kept up to date by triggers.

A counter is kept per counter name and, for the two counters a reading splits at the cutoff
(`HOURLY`: `unheld`, `unclaimed`), per hour of release (`hour`; 0 for the others): how many rows
of the store it covers. Those two also keep a row per minute of release (since migration
0019_count_minutes): counters of their own, named `unheld/min` and `unclaimed/min`, whose `hour`
holds the minute (minutes since the epoch). Triggers on `phone_numbers` and `number_events`
record each statement's changes in the statement's own transaction (PostgreSQL: one aggregate
per statement, from its transition tables, in one pass; SQLite: per row), so the counts commit
and roll back with the changes.

PostgreSQL (migration 0017_count_deltas): a writer only INSERTs its statement's sums into
`number_count_deltas`, never UPDATEs a shared counter row, so concurrent writers never wait on
each other for the counts and cannot deadlock on them (before, two writers that changed the
same counter rows in opposite orders over two statements did: one was aborted). A counter is
its base row in `number_counts` plus its deltas, summed in one statement (one snapshot). The
deltas are folded into the base rows (`number_counts_compact()`, `compact_counts`) by the
statement that finds `COMPACT_AT` or more visible deltas, in its own transaction, and by the
hourly reconciliation. One compaction at a time (a transaction-level advisory lock, tried,
never waited for): the base rows are updated by that compaction alone, so no writer waits for
them either. Bound: a statement that finds `COMPACT_AT` deltas folds every delta it sees, so
after each commit of writers taking turns fewer than `COMPACT_AT` deltas remain;
with concurrent writers, add the deltas of the transactions in flight at the last compaction
(the next statement that finds the lock free folds them). A transaction's triggers compact at
most once (`COMPACTED`): add the deltas a transaction wrote after its own compaction (a bulk
load calls `compact_counts` at its end). SQLite has one writer at a time: its
triggers add to the base rows directly and `number_count_deltas` stays empty.

A reading at a cutoff sums, through the primary key, the hour rows (whole hours before and
after the cutoff's hour) and the minute rows of the cutoff's hour only (whole minutes before
and after the cutoff's minute), and counts through the partial indexes on `released_at` only
the rows of the cutoff's own minute (its smaller side: up to the cutoff, or after it). Its cost
follows the hours the store spans, `COMPACT_AT` and the releases of one minute, not the size of
the store (at 10M numbers about 80 rows a minute against 4,700 an hour). If the minute rows of
the cutoff's hour do not add up to its hour row (dropped, below), the reading counts the
cutoff's hour by index instead, as before 0019: still exact, only slower.

Minute rows are needed only from the cutoff's hour on, and the cutoff only moves forward:
`reconcile_counts` (hourly, at `now`) records the hour of its cutoff as the floor (the row
`MINUTES_FROM`, n = the hour) and deletes the minute rows before it, under the compaction's
lock; from then on the triggers and the compaction add no minute row before the floor (a purge
of old numbers writes none). Bound: after a reconciliation, minute rows only of the hours from
its cutoff's to the latest release, at most 2 per minute: 2 x 60 x (the retention window in
hours + 2) rows (40,560 for 14 days), whatever the store's size. A floor is dropped with the
counters when the store is emptied (TRUNCATE); a reconciliation at an earlier `now` (a clock
moved back) lowers it and rebuilds the minute rows as drift. The migration builds the minute
rows of every hour (it reads no clock); the first reconciliation drops the old ones.

`reconcile_counts` compares the counters (the minute rows from the floor on) with a full scan
of one snapshot and repairs any drift.

The trigger SQL is installed by migrations 0010_counts (the first version, `deltas=False`,
`minutes=False`), 0017_count_deltas (`minutes=False`) and 0019_count_minutes: a change to
`COUNTERS` or `COMPACT_AT` needs a migration of its own that installs the triggers again
(`install_triggers`) and rebuilds. The `shard` column of `number_counts` is 0 since 0017
(before: the writing transaction's id modulo 8).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import structlog
from sqlalchemy import (
    Connection,
    CursorResult,
    Subquery,
    case,
    delete,
    false,
    func,
    insert,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.orm import Session

from shared.clock import resolve_now
from shared.models import NumberCount, NumberCountDelta, NumberEvent, PhoneNumber
from shared.provider import REFUSED_CODE
from shared.retention import cutoff, purgeable_numbers, repurchasable_numbers, waiting_numbers

log = structlog.get_logger("shared.counts")

HOUR_SECONDS = 3600
MINUTE_SECONDS = 60
PER_HOUR = HOUR_SECONDS // MINUTE_SECONDS  # minutes
OUTBOX = "outbox"
# The minute rows of an hourly counter are a counter of their own, `hour` holding the minute
# (minutes since the epoch): "unheld/min".
MINUTES = "/min"
# The hour before which no minute row is kept (n: hours since the epoch; absent: none is
# dropped), set by the reconciliation: the hour of its cutoff, which only moves forward.
MINUTES_FROM = "minutes_from"
# A statement that leaves this many visible deltas or more folds them into the base rows.
COMPACT_AT = 256
# The advisory lock one compaction at a time holds (until its transaction ends).
COMPACT_LOCK = 0x636F756E  # "coun"
# Set for the rest of a transaction whose trigger compacted: a trigger compacts once per
# transaction. A bulk load (seed_demo: one transaction, a statement per 10,000 numbers) would
# otherwise fold at every statement, each fold scanning the deltas it deleted before (dead
# only once it commits): quadratic. Its deltas are folded once at its end instead.
COMPACTED = "numbers_retention.counts_compacted"

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
# The counters kept per hour, and their minute rows.
HOURLY = tuple(name for name, (hourly, _covers) in COUNTERS.items() if hourly)
MINUTE_NAMES = tuple(name + MINUTES for name in HOURLY)
# The columns the counters read (SQLite's update trigger fires on these alone).
COLUMNS = (
    "billing_status", "released_at", "purge_hold", "purge_state", "provider_error_code",
    "provider_failed_permanently",
)  # fmt: skip


def _hour(dialect: str, column: str, seconds: int = HOUR_SECONDS) -> str:
    """The hour (seconds since the epoch // 3600) of a stored UTC datetime, or its minute
    (`seconds` 60)."""
    if dialect == "postgresql":
        return f"CAST(floor(extract(epoch FROM {column}) / {seconds}) AS bigint)"
    # SQLite keeps UTC datetimes as naive text.
    return f"CAST(strftime('%s', {column}) AS INTEGER) / {seconds}"


def _keys(
    dialect: str, row: str, *, minutes: bool, minute: str | None = None
) -> list[tuple[str, str, str]]:
    """(name, hour, covers) of every counter a number row `row` can count in: the hourly ones
    also in their minute rows (`minutes`, since migration 0019_count_minutes), their hour then
    the minute's (`minute`: the row's minute, computed once, else its expression)."""
    zero = "CAST(0 AS bigint)" if dialect == "postgresql" else "0"
    released = f"{row}.released_at"
    minute = minute or _hour(dialect, released, MINUTE_SECONDS)
    # Released at or after 1970 (`as_utc`): integer division is the floor.
    hour = f"{minute} / {PER_HOUR}" if minutes else _hour(dialect, released)
    keys = []
    for name, (hourly, covers) in COUNTERS.items():
        keys.append((name, hour if hourly else zero, covers.format(r=row)))
        if hourly and minutes:
            keys.append((name + MINUTES, minute, covers.format(r=row)))
    return keys


def _kept(*, minutes: bool) -> str:
    """The keys a trigger keeps: not the minute rows before the floor (`MINUTES_FROM`)."""
    if not minutes:
        return "true"
    floor = f"(SELECT f.n FROM number_counts f WHERE f.name = '{MINUTES_FROM}' AND f.hour = 0)"
    names = ", ".join(f"'{name}'" for name in MINUTE_NAMES)
    return f"NOT (k.name IN ({names}) AND k.hour < coalesce({floor}, 0) * {PER_HOUR})"


def _shard(dialect: str, *, deltas: bool) -> str:
    """The counter row's shard: the writing transaction's id modulo 8 in the first version of
    the PostgreSQL triggers (0010_counts; two writers of one shard that changed the same counter
    rows in opposite orders over two statements deadlocked), 0 since (deltas, and SQLite)."""
    if dialect == "postgresql" and not deltas:
        return "CAST(mod(txid_current(), 8) AS smallint)"
    return "0"


def _number_keys(dialect: str, row: str, sign: int, *, minutes: bool) -> str:
    """One (name, hour, shard, d) row per counter the row `row` counts in, d = sign."""
    return " UNION ALL ".join(
        f"SELECT '{name}' AS name, {hour} AS hour, 0 AS shard, {sign} AS d WHERE {covers}"
        for name, hour, covers in _keys(dialect, row, minutes=minutes)
    )


def _event_keys(shard: str, sign: int, source: str = "") -> str:
    return f"SELECT '{OUTBOX}' AS name, 0 AS hour, {shard} AS shard, {sign} AS d{source}"


def _add(keys: str, kept: str = "true") -> str:
    """Add the keys' sums to the base rows (SQLite, the first PostgreSQL triggers, a repair)."""
    return (
        "INSERT INTO number_counts (name, hour, shard, n) "
        f"SELECT name, hour, shard, sum(d) FROM ({keys}) AS k WHERE {kept} "
        "GROUP BY name, hour, shard HAVING sum(d) <> 0 ORDER BY name, hour, shard "
        "ON CONFLICT (name, hour, shard) DO UPDATE SET n = number_counts.n + excluded.n"
    )


def _values(row: str, sign: int, *, minutes: bool) -> str:
    """PostgreSQL: the (name, hour, hit, d) of every counter for the row `row`, as VALUES rows
    (with `minutes`, from the row's minute computed once by `_lateral`: `{row}_m.minute`)."""
    minute = f"{row}_m.minute" if minutes else None
    return ", ".join(
        f"('{name}', {hour}, {covers}, {sign})"
        for name, hour, covers in _keys("postgresql", row, minutes=minutes, minute=minute)
    )


def _record(keys: str, kept: str = "true") -> str:
    """Insert the keys' sums as deltas, then fold the deltas if `COMPACT_AT` are visible."""
    return (
        "INSERT INTO number_count_deltas (name, hour, n) "
        f"SELECT name, hour, sum(d) FROM ({keys}) AS k WHERE {kept} "
        "GROUP BY name, hour HAVING sum(d) <> 0; "
        f"IF (SELECT count(*) FROM (SELECT FROM number_count_deltas LIMIT {COMPACT_AT}) AS v) "
        f">= {COMPACT_AT} AND current_setting('{COMPACTED}', true) IS DISTINCT FROM 'on' THEN "
        f"PERFORM set_config('{COMPACTED}', 'on', true); PERFORM number_counts_compact(); END IF"
    )


# Fold the visible deltas into the base rows, if no other compaction is under way and the
# transaction reads committed (a REPEATABLE READ one could fail on deltas another compaction
# removed after its snapshot): the deltas it deletes, nobody else deletes or updates; the base
# rows it updates, no writer updates. Base rows left at 0 are removed.
_COMPACT = """CREATE FUNCTION number_counts_compact() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE folded bigint; names text[]; hours bigint[];
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed'
     OR NOT pg_try_advisory_xact_lock({lock}) THEN
    RETURN 0;
  END IF;
  WITH moved AS (DELETE FROM number_count_deltas RETURNING name, hour, n),
  merged AS (
    INSERT INTO number_counts (name, hour, shard, n)
    SELECT name, hour, 0, sum(n) FROM moved AS k WHERE {kept}
    GROUP BY name, hour ORDER BY name, hour
    ON CONFLICT (name, hour, shard) DO UPDATE SET n = number_counts.n + excluded.n
    RETURNING name, hour, n
  )
  SELECT (SELECT count(*) FROM moved), array_agg(name) FILTER (WHERE n = 0),
         array_agg(hour) FILTER (WHERE n = 0)
  INTO folded, names, hours FROM merged;
  IF names IS NOT NULL THEN
    DELETE FROM number_counts c USING unnest(names, hours) AS z(name, hour)
    WHERE c.name = z.name AND c.hour = z.hour AND c.shard = 0 AND c.n = 0;
  END IF;
  RETURN coalesce(folded, 0);
END $$"""


def _compact(*, minutes: bool) -> str:
    """The compaction's function: with `minutes`, the minute deltas below the floor are folded
    into no row (written before the floor was raised)."""
    return _COMPACT.format(lock=COMPACT_LOCK, kept=_kept(minutes=minutes))


def _lateral(
    values: str,
    source: str,
    where: str = "true",
    *,
    deltas: bool = True,
    rows: tuple[str, ...] = (),
) -> str:
    """One pass over `source`: each row's counters from a LATERAL VALUES list; the minute of
    release of each of the `rows` (aliases) computed once per row (OFFSET 0: not inlined into
    every key, extract(epoch) on a timestamptz is numeric arithmetic)."""
    minutes = "".join(
        f"CROSS JOIN LATERAL (SELECT {_hour('postgresql', f'{row}.released_at', MINUTE_SECONDS)}"
        f" AS minute OFFSET 0) AS {row}_m "
        for row in rows
    )
    return (
        f"SELECT k.name, k.hour, {_shard('postgresql', deltas=deltas)} AS shard, k.d "
        f"FROM {source} {minutes}"
        f"CROSS JOIN LATERAL (VALUES {values}) AS k(name, hour, hit, d) WHERE k.hit AND {where}"
    )


def _postgresql_ddl(*, deltas: bool, minutes: bool) -> list[str]:
    old, new = " FROM old_rows r", " FROM new_rows r"
    # An update counts only where a column the counters read changed (most of the purge's and
    # the carrier calls' updates change none of them).
    changed = (
        f"ROW({', '.join(f'o.{c}' for c in COLUMNS)}) IS DISTINCT FROM "
        f"ROW({', '.join(f'n.{c}' for c in COLUMNS)})"
    )
    keep = _record if deltas else _add
    keep_numbers = partial(keep, kept=_kept(minutes=minutes))
    lateral = partial(_lateral, deltas=deltas)
    values = partial(_values, minutes=minutes)
    shard = _shard("postgresql", deltas=deltas)

    def per_row(*rows: str) -> tuple[str, ...]:  # the rows whose minute `values` reads
        return rows if minutes else ()

    def emptied(which: str) -> str:  # a TRUNCATE: the counters of that table go
        tables = ("number_counts", "number_count_deltas") if deltas else ("number_counts",)
        return "; ".join(f"DELETE FROM {table} WHERE name {which} '{OUTBOX}'" for table in tables)

    numbers = {
        "INSERT": keep_numbers(lateral(values("r", 1), "new_rows r", rows=per_row("r"))),
        "UPDATE": keep_numbers(
            lateral(
                values("o", -1) + ", " + values("n", 1),
                "old_rows o JOIN new_rows n ON n.id = o.id",
                changed,
                rows=per_row("o", "n"),
            )
        ),
        "DELETE": keep_numbers(lateral(values("r", -1), "old_rows r", rows=per_row("r"))),
        "TRUNCATE": emptied("<>"),
    }
    events = {
        "INSERT": keep(_event_keys(shard, 1, new)),
        "DELETE": keep(_event_keys(shard, -1, old)),
        "TRUNCATE": emptied("="),
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
    return ([_compact(minutes=minutes)] if deltas else []) + statements


def _sqlite_ddl(*, minutes: bool) -> list[str]:
    keys = partial(_number_keys, "sqlite", minutes=minutes)
    add = partial(_add, kept=_kept(minutes=minutes))
    numbers = {
        "INSERT": add(keys("NEW", 1)),
        f"UPDATE OF {', '.join(COLUMNS)}": add(keys("OLD", -1) + " UNION ALL " + keys("NEW", 1)),
        "DELETE": add(keys("OLD", -1)),
    }
    events = {"INSERT": _add(_event_keys("0", 1)), "DELETE": _add(_event_keys("0", -1))}
    statements = []
    for table, bodies in (("phone_numbers", numbers), ("number_events", events)):
        for op, body in bodies.items():
            name = f"{table}_counts_{op.split()[0].lower()}"
            statements.append(f"CREATE TRIGGER {name} AFTER {op} ON {table} BEGIN {body}; END")
    return statements


def install_triggers(connection: Connection, *, deltas: bool = True, minutes: bool = True) -> None:
    """Create the triggers that keep the counts: on PostgreSQL, with `deltas` (migration
    0017_count_deltas) they record deltas, without (0010_counts) they add to the base rows; with
    `minutes` (0019_count_minutes) the hourly counters also count per minute."""
    postgresql = connection.dialect.name == "postgresql"
    ddl = (
        _postgresql_ddl(deltas=deltas, minutes=minutes)
        if postgresql
        else _sqlite_ddl(minutes=minutes)
    )
    for statement in ddl:
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
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("DROP FUNCTION IF EXISTS number_counts_compact()")


def compact_counts(session: Session) -> int:
    """Fold the deltas into the base rows now (PostgreSQL; SQLite keeps none): how many were
    folded (0 when another compaction is under way). The caller commits."""
    if session.get_bind().dialect.name != "postgresql":
        return 0
    return int(session.scalar(text("SELECT number_counts_compact()")) or 0)


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


def _counters(*, deltas: bool = True, hour: int | None = None) -> Subquery:
    """The base rows and the deltas, read by one statement (one snapshot): every row, or (`hour`)
    those a reading at a cutoff in that hour sums, the hour rows and that hour's minute rows
    (the base rows of each through the primary key: the other minute rows are never read)."""
    base = select(NumberCount.name, NumberCount.hour, NumberCount.n)
    added = select(NumberCountDelta.name, NumberCountDelta.hour, NumberCountDelta.n)
    if hour is None:
        parts = [base.where(NumberCount.name != MINUTES_FROM), added]
    else:
        first, last = hour * PER_HOUR, hour * PER_HOUR + PER_HOUR - 1
        parts = [
            base.where(NumberCount.name.in_([*COUNTERS, OUTBOX])),
            base.where(NumberCount.name.in_(MINUTE_NAMES), NumberCount.hour.between(first, last)),
            # Fewer than COMPACT_AT rows (plus those in flight): one pass.
            added.where(
                NumberCountDelta.name.not_in(MINUTE_NAMES)
                | NumberCountDelta.hour.between(first, last)
            ),
        ]
    if not deltas:
        parts.pop()
    return union_all(*parts).subquery("counters")


def _bucket(moment: datetime, seconds: int) -> tuple[int, datetime]:
    """The hour (`seconds` 3600) or minute (60) of `moment`: its number and its start."""
    bucket = int(moment.timestamp() // seconds)
    return bucket, datetime.fromtimestamp(bucket * seconds, UTC)


def kept_counts(session: Session, now: datetime) -> Counts:
    """The counts at `now` from the kept counters, and the cutoff's own minute from the indexes
    (its smaller side: the rows released in it up to the cutoff, or those after); the cutoff's
    own hour instead if its minute rows are not all kept (an hour before `MINUTES_FROM`)."""
    line = cutoff(now)
    hour, hour_start = _bucket(line, HOUR_SECONDS)
    minute, start = _bucket(line, MINUTE_SECONDS)
    # (name, -1/0/1): the buckets before the cutoff's, the cutoff's, after; the hour rows
    # split at the cutoff's hour, the minute rows (of that hour only) at its minute.
    sums: dict[tuple[str, int], int] = {}
    rows = _counters(hour=hour)
    at = case((rows.c.name.in_(MINUTE_NAMES), minute), else_=hour)
    for name, *parts in session.execute(
        select(
            rows.c.name,
            func.sum(rows.c.n).filter(rows.c.hour < at),
            func.sum(rows.c.n).filter(rows.c.hour == at),
            func.sum(rows.c.n).filter(rows.c.hour > at),
        ).group_by(rows.c.name)
    ):
        for where, total in zip((-1, 0, 1), parts, strict=True):
            sums[name, where] = int(total or 0)

    def kept(name: str, *sides: int) -> int:
        return sum(sums.get((name, where), 0) for where in sides or (-1, 0, 1))

    # The minute rows of the cutoff's hour are all kept when they add up to the hour's row
    # (rows dropped below the floor are missing whole: they add up to it only if all were 0).
    seconds = MINUTE_SECONDS
    if all(kept(name + MINUTES) == kept(name, 0) for name in HOURLY):
        for name in HOURLY:
            sums[name, -1] = kept(name, -1) + kept(name + MINUTES, -1)
            sums[name, 0] = kept(name + MINUTES, 0)
            sums[name, 1] = kept(name + MINUTES, 1) + kept(name, 1)
    else:
        seconds, start = HOUR_SECONDS, hour_start
    # The rows of the cutoff's minute (hour) on the side counted, not held / held / claimed.
    early = line - start < timedelta(seconds=seconds / 2)
    if early:
        side = (PhoneNumber.released_at >= start) & (PhoneNumber.released_at <= line)
    else:
        end = start + timedelta(seconds=seconds)
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


def _scanned_counters(
    session: Session, *, minutes: bool, floor: int | None
) -> Counter[tuple[str, int]]:
    """Every counter's true value, per (name, hour), from one pass over each table; with
    `minutes`, the hourly counters' minute rows too, of the hours from `floor` on (None: all)."""
    dialect = session.get_bind().dialect.name
    seconds = MINUTE_SECONDS if minutes else HOUR_SECONDS
    bucket = _hour(dialect, "r.released_at", seconds)
    filters = ", ".join(
        f"count(*) FILTER (WHERE {covers.format(r='r')})" for _hourly, covers in COUNTERS.values()
    )
    true: Counter[tuple[str, int]] = Counter()
    rows = session.execute(
        text(
            f"SELECT {bucket} AS bucket, {filters} FROM phone_numbers r "
            f"WHERE r.billing_status = 'released' GROUP BY {bucket}"
        )
    )
    per_hour = HOUR_SECONDS // seconds
    for released, *values in rows:
        hour = int(released) // per_hour
        for (name, (hourly, _covers)), value in zip(COUNTERS.items(), values, strict=True):
            true[name, hour if hourly else 0] += int(value)
            if hourly and minutes and (floor is None or hour >= floor):
                true[name + MINUTES, int(released)] += int(value)
    true[OUTBOX, 0] += int(session.scalar(select(func.count()).select_from(NumberEvent)) or 0)
    return +true  # the counters at 0 have no row


def _kept_counters(
    session: Session, *, deltas: bool, floor: int | None
) -> Counter[tuple[str, int]]:
    """The kept counters, per (name, hour); not the minute rows of the hours before `floor`."""
    kept: Counter[tuple[str, int]] = Counter()
    rows = _counters(deltas=deltas)
    for name, hour, total in session.execute(
        select(rows.c.name, rows.c.hour, func.sum(rows.c.n)).group_by(rows.c.name, rows.c.hour)
    ):
        if floor is None or name not in MINUTE_NAMES or hour // PER_HOUR >= floor:
            kept[name, int(hour)] += int(total)
    return kept


def minutes_from(session: Session) -> int | None:
    """The hour before which no minute row is kept (`MINUTES_FROM`; None: every hour's are)."""
    return session.scalar(
        select(NumberCount.n).where(NumberCount.name == MINUTES_FROM, NumberCount.hour == 0)
    )


def counts_drift(
    session: Session, *, deltas: bool = True, minutes: bool = True, floor: int | None = None
) -> dict[tuple[str, int], int]:
    """What to add to each counter to make it true, read in the session's one snapshot (on
    PostgreSQL the caller's transaction must be REPEATABLE READ for the two reads to agree);
    the minute rows from the hour `floor` on (default: the floor kept, `minutes_from`)."""
    if minutes and floor is None:
        floor = minutes_from(session)
    true = _scanned_counters(session, minutes=minutes, floor=floor)
    kept = _kept_counters(session, deltas=deltas, floor=floor)
    drift = {key: true[key] - kept[key] for key in true.keys() | kept.keys()}
    return {key: delta for key, delta in sorted(drift.items()) if delta}


def repair_counts(
    session: Session, drift: dict[tuple[str, int], int], *, deltas: bool = True
) -> None:
    """Add `drift` to the counters (commutes with the triggers' own additions, so concurrent
    writers need not stop; on PostgreSQL as deltas, which the caller folds with
    `compact_counts`) and drop the base rows left at 0 (SQLite); the caller commits."""
    postgresql = session.get_bind().dialect.name == "postgresql"
    if deltas and postgresql:
        if drift:
            session.execute(
                insert(NumberCountDelta),
                [{"name": name, "hour": hour, "n": delta} for (name, hour), delta in drift.items()],
            )
        return
    for (name, hour), delta in drift.items():
        session.execute(
            text(_add("SELECT :name AS name, :hour AS hour, 0 AS shard, :delta AS d")),
            {"name": name, "hour": hour, "delta": delta},
        )
    session.execute(text("DELETE FROM number_counts WHERE n = 0"))


def drop_minutes(session: Session, floor: int) -> int:
    """Keep no minute row of the hours before `floor` from now on: the floor recorded (the
    triggers add no minute row below it) and those rows deleted, under the compaction's lock
    (PostgreSQL; not taken: nothing done, 0); how many were deleted. The caller commits."""
    if session.get_bind().dialect.name == "postgresql" and not session.scalar(
        text(f"SELECT pg_try_advisory_xact_lock({COMPACT_LOCK})")
    ):
        return 0
    session.execute(
        text(
            "INSERT INTO number_counts (name, hour, shard, n) VALUES (:name, 0, 0, :floor) "
            "ON CONFLICT (name, hour, shard) DO UPDATE SET n = excluded.n"
        ),
        {"name": MINUTES_FROM, "floor": floor},
    )
    dropped = cast(
        CursorResult[Any],
        session.execute(
            delete(NumberCount).where(
                NumberCount.name.in_(MINUTE_NAMES),
                NumberCount.hour < floor * PER_HOUR,
            )
        ),
    )
    return int(dropped.rowcount or 0)


def rebuild_counts(connection: Connection, *, deltas: bool = True, minutes: bool = True) -> None:
    """Fill the counters from the store (a migration's backfill, under its locks): with
    `minutes`, the minute rows of every hour (the next reconciliation drops the old ones)."""
    with Session(bind=connection) as session:
        drift = counts_drift(session, deltas=deltas, minutes=minutes)
        repair_counts(session, drift, deltas=deltas)
        if deltas:
            compact_counts(session)
        session.flush()


def reconcile_counts(session: Session, now: datetime | None = None) -> dict[str, Any]:
    """Compare the kept counts with a full scan of one snapshot, repair and report any drift;
    then keep no minute row of the hours before the cutoff's at `now` (no reading needs them:
    the cutoff only moves forward).

    The session must be fresh (no transaction begun): on PostgreSQL the comparison reads one
    REPEATABLE READ snapshot, then the repair commits in a transaction of its own."""
    floor, _start = _bucket(cutoff(resolve_now(now)), HOUR_SECONDS)
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    drift = counts_drift(session, floor=floor)
    session.rollback()
    # Repaired as deltas, the minute rows below the floor dropped (under the compaction's lock)
    # and the floor set, then every delta folded (a quiet store ends the hour compacted): the
    # compaction keeps the minute deltas from the new floor on, the repair's among them.
    repair_counts(session, drift)
    drop_minutes(session, floor)
    compact_counts(session)
    session.commit()
    if drift:
        by_name: Counter[str] = Counter()
        for (name, _hour_of), delta in drift.items():
            by_name[name] += delta
        log.warning("counts.drift_repaired", drift=dict(by_name), rows=len(drift))
    return {"counts_drift": sum(abs(delta) for delta in drift.values())}
