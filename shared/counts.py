"""Counts kept, not scanned: what `status` and the exporter report, kept up to date by triggers.

A counter is kept per counter name and, for the two counters a reading splits at the cutoff,
per hour of release (`hour`; 0 for the others): how many rows of the store it covers. Triggers
on `phone_numbers` and `number_events` record each statement's changes in the statement's own
transaction (PostgreSQL: one aggregate per statement, from its transition tables, in one pass;
SQLite: per row), so the counts commit and roll back with the changes.

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

A reading sums whole hours on either side of the cutoff and counts, through the partial indexes
on `released_at`, only the rows of the cutoff's own hour: its cost follows the hours the store
spans, `COMPACT_AT` and the rows of one hour, not the size of the store. `reconcile_counts` (the
hourly publication) compares the counters with a full scan of one snapshot and repairs any drift.

The trigger SQL is installed by migrations 0010_counts (the first version, `deltas=False`) and
0017_count_deltas: a change to `COUNTERS` or `COMPACT_AT` needs a migration of its own that
installs the triggers again (`install_triggers`) and rebuilds. The `shard` column of
`number_counts` is 0 since 0017 (before: the writing transaction's id modulo 8).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from sqlalchemy import Connection, Subquery, false, func, insert, select, text, true, union_all
from sqlalchemy.orm import Session

from shared.models import NumberCount, NumberCountDelta, NumberEvent, PhoneNumber
from shared.provider import REFUSED_CODE
from shared.retention import cutoff, purgeable_numbers, repurchasable_numbers, waiting_numbers

log = structlog.get_logger("shared.counts")

HOUR_SECONDS = 3600
OUTBOX = "outbox"
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


def _shard(dialect: str, *, deltas: bool) -> str:
    """The counter row's shard: the writing transaction's id modulo 8 in the first version of
    the PostgreSQL triggers (0010_counts; two writers of one shard that changed the same counter
    rows in opposite orders over two statements deadlocked), 0 since (deltas, and SQLite)."""
    if dialect == "postgresql" and not deltas:
        return "CAST(mod(txid_current(), 8) AS smallint)"
    return "0"


def _number_keys(dialect: str, row: str, sign: int, source: str = "") -> str:
    """One (name, hour, shard, d) row per counter the row(s) `row` count in, d = sign."""
    parts = []
    for name, (hourly, covers) in COUNTERS.items():
        hour = _hour(dialect, f"{row}.released_at") if hourly else "0"
        parts.append(
            f"SELECT '{name}' AS name, {hour} AS hour, 0 AS shard, {sign} AS d"
            f"{source} WHERE {covers.format(r=row)}"
        )
    return " UNION ALL ".join(parts)


def _event_keys(shard: str, sign: int, source: str = "") -> str:
    return f"SELECT '{OUTBOX}' AS name, 0 AS hour, {shard} AS shard, {sign} AS d{source}"


def _add(keys: str) -> str:
    """Add the keys' sums to the base rows (SQLite, the first PostgreSQL triggers, a repair)."""
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


def _record(keys: str) -> str:
    """Insert the keys' sums as deltas, then fold the deltas if `COMPACT_AT` are visible."""
    return (
        "INSERT INTO number_count_deltas (name, hour, n) "
        f"SELECT name, hour, sum(d) FROM ({keys}) AS k WHERE true "
        "GROUP BY name, hour HAVING sum(d) <> 0; "
        f"IF (SELECT count(*) FROM (SELECT FROM number_count_deltas LIMIT {COMPACT_AT}) AS v) "
        f">= {COMPACT_AT} AND current_setting('{COMPACTED}', true) IS DISTINCT FROM 'on' THEN "
        f"PERFORM set_config('{COMPACTED}', 'on', true); PERFORM number_counts_compact(); END IF"
    )


# Fold the visible deltas into the base rows, if no other compaction is under way and the
# transaction reads committed (a REPEATABLE READ one could fail on deltas another compaction
# removed after its snapshot): the deltas it deletes, nobody else deletes or updates; the base
# rows it updates, no writer updates. Base rows left at 0 are removed.
_COMPACT = f"""CREATE FUNCTION number_counts_compact() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE folded bigint; names text[]; hours bigint[];
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed'
     OR NOT pg_try_advisory_xact_lock({COMPACT_LOCK}) THEN
    RETURN 0;
  END IF;
  WITH moved AS (DELETE FROM number_count_deltas RETURNING name, hour, n),
  merged AS (
    INSERT INTO number_counts (name, hour, shard, n)
    SELECT name, hour, 0, sum(n) FROM moved GROUP BY name, hour ORDER BY name, hour
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


def _lateral(values: str, source: str, where: str = "true", *, deltas: bool = True) -> str:
    """One pass over `source`: each row's counters from a LATERAL VALUES list."""
    return (
        f"SELECT k.name, k.hour, {_shard('postgresql', deltas=deltas)} AS shard, k.d "
        f"FROM {source} "
        f"CROSS JOIN LATERAL (VALUES {values}) AS k(name, hour, hit, d) WHERE k.hit AND {where}"
    )


def _postgresql_ddl(*, deltas: bool) -> list[str]:
    old, new = " FROM old_rows r", " FROM new_rows r"
    # An update counts only where a column the counters read changed (most of the purge's and
    # the carrier calls' updates change none of them).
    changed = (
        f"ROW({', '.join(f'o.{c}' for c in COLUMNS)}) IS DISTINCT FROM "
        f"ROW({', '.join(f'n.{c}' for c in COLUMNS)})"
    )
    keep = _record if deltas else _add
    lateral = partial(_lateral, deltas=deltas)
    shard = _shard("postgresql", deltas=deltas)

    def emptied(which: str) -> str:  # a TRUNCATE: the counters of that table go
        tables = ("number_counts", "number_count_deltas") if deltas else ("number_counts",)
        return "; ".join(f"DELETE FROM {table} WHERE name {which} '{OUTBOX}'" for table in tables)

    numbers = {
        "INSERT": keep(lateral(_values("r", 1), "new_rows r")),
        "UPDATE": keep(
            lateral(
                _values("o", -1) + ", " + _values("n", 1),
                "old_rows o JOIN new_rows n ON n.id = o.id",
                changed,
            )
        ),
        "DELETE": keep(lateral(_values("r", -1), "old_rows r")),
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
    return ([_COMPACT] if deltas else []) + statements


def _sqlite_ddl() -> list[str]:
    numbers = {
        "INSERT": _add(_number_keys("sqlite", "NEW", 1)),
        f"UPDATE OF {', '.join(COLUMNS)}": _add(
            _number_keys("sqlite", "OLD", -1) + " UNION ALL " + _number_keys("sqlite", "NEW", 1)
        ),
        "DELETE": _add(_number_keys("sqlite", "OLD", -1)),
    }
    events = {"INSERT": _add(_event_keys("0", 1)), "DELETE": _add(_event_keys("0", -1))}
    statements = []
    for table, bodies in (("phone_numbers", numbers), ("number_events", events)):
        for op, body in bodies.items():
            name = f"{table}_counts_{op.split()[0].lower()}"
            statements.append(f"CREATE TRIGGER {name} AFTER {op} ON {table} BEGIN {body}; END")
    return statements


def install_triggers(connection: Connection, *, deltas: bool = True) -> None:
    """Create the triggers that keep the counts: on PostgreSQL, with `deltas` (migration
    0017_count_deltas) they record deltas, without (0010_counts) they add to the base rows."""
    postgresql = connection.dialect.name == "postgresql"
    for statement in _postgresql_ddl(deltas=deltas) if postgresql else _sqlite_ddl():
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


def _counters(*, deltas: bool = True) -> Subquery:
    """The base rows and the deltas, read by one statement (one snapshot)."""
    base = select(NumberCount.name, NumberCount.hour, NumberCount.n)
    if not deltas:
        return base.subquery("counters")
    added = select(NumberCountDelta.name, NumberCountDelta.hour, NumberCountDelta.n)
    return union_all(base, added).subquery("counters")


def _hour_start(moment: datetime) -> tuple[int, datetime]:
    hour = int(moment.timestamp() // HOUR_SECONDS)
    return hour, datetime.fromtimestamp(hour * HOUR_SECONDS, UTC)


def kept_counts(session: Session, now: datetime) -> Counts:
    """The counts at `now` from the kept counters, and the cutoff's own hour from the indexes
    (its smaller side: the rows released in it up to the cutoff, or those after)."""
    line = cutoff(now)
    hour, start = _hour_start(line)
    sums: dict[tuple[str, int], int] = {}  # (name, -1/0/1: hours before, the cutoff's, after)
    rows = _counters()
    for name, *parts in session.execute(
        select(
            rows.c.name,
            func.sum(rows.c.n).filter(rows.c.hour < hour),
            func.sum(rows.c.n).filter(rows.c.hour == hour),
            func.sum(rows.c.n).filter(rows.c.hour > hour),
        ).group_by(rows.c.name)
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


def _kept_counters(session: Session, *, deltas: bool) -> Counter[tuple[str, int]]:
    kept: Counter[tuple[str, int]] = Counter()
    rows = _counters(deltas=deltas)
    for name, hour, total in session.execute(
        select(rows.c.name, rows.c.hour, func.sum(rows.c.n)).group_by(rows.c.name, rows.c.hour)
    ):
        kept[name, int(hour)] += int(total)
    return kept


def counts_drift(session: Session, *, deltas: bool = True) -> dict[tuple[str, int], int]:
    """What to add to each counter to make it true, read in the session's one snapshot (on
    PostgreSQL the caller's transaction must be REPEATABLE READ for the two reads to agree)."""
    true, kept = _scanned_counters(session), _kept_counters(session, deltas=deltas)
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


def rebuild_counts(connection: Connection, *, deltas: bool = True) -> None:
    """Fill the counters from the store (a migration's backfill, under its locks)."""
    with Session(bind=connection) as session:
        repair_counts(session, counts_drift(session, deltas=deltas), deltas=deltas)
        if deltas:
            compact_counts(session)
        session.flush()


def reconcile_counts(session: Session) -> dict[str, Any]:
    """Compare the kept counts with a full scan of one snapshot, repair and report any drift.

    The session must be fresh (no transaction begun): on PostgreSQL the comparison reads one
    REPEATABLE READ snapshot, then the repair commits in a transaction of its own."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    drift = counts_drift(session)
    session.rollback()
    # Repaired as deltas, then every delta folded (a quiet store ends the hour compacted).
    repair_counts(session, drift)
    compact_counts(session)
    session.commit()
    if drift:
        by_name: Counter[str] = Counter()
        for (name, _hour_of), delta in drift.items():
            by_name[name] += delta
        log.warning("counts.drift_repaired", drift=dict(by_name), rows=len(drift))
    return {"counts_drift": sum(abs(delta) for delta in drift.values())}
