"""Where a purge run's work goes on a store `scale.py` built: EXPLAIN (ANALYZE, BUFFERS).

    python bench/explain_purge.py [--url URL] [--size 1000000] [--batches 3] [--batch-size 5000]

The statements of `--batches` batches at NOW (pick, tombstone-and-delete, the outbox's events)
are captured as `purge_batch` sends them, rolled back, then each explained (executed) in one
transaction that is rolled back too; then the counts a run's end reads. Prints, per statement,
the buffers touched per row (shared hit + read), the time, and the triggers' times. Compare two
sizes: a cost per row that grows with the store shows here, the machine's load does not (the
buffers). Reads the store `<url's database>_<size>`; changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

from common import NOW, database_url, scratch_name
from sqlalchemy import Connection, event
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine
from shared.purge.boundary import Halt
from shared.purge.report import PurgeReport
from shared.purge.service import _finish
from shared.purge.statements import BatchStatements

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/bench_scale"


def capture(connection: Connection) -> list[tuple[str, Any]]:
    statements: list[tuple[str, Any]] = []

    @event.listens_for(connection, "before_cursor_execute")
    def _capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    return statements


def explain(connection: Connection, statement: str, parameters: Any) -> dict[str, Any]:
    answer = connection.exec_driver_sql(
        f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", parameters
    ).scalar()
    result: dict[str, Any] = (answer if isinstance(answer, list) else json.loads(answer))[0]
    return result


def line(kind: str, result: dict[str, Any], rows: int) -> str:
    plan = result["Plan"]
    buffers = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
    triggers = ", ".join(
        f"{t['Trigger Name']} {t['Time']:.1f} ms" for t in result.get("Triggers", [])
    )
    return (
        f"{kind}: rows={rows} buffers={buffers} (read {plan['Shared Read Blocks']}) "
        f"per_row={buffers / max(rows, 1):.1f} ms={result['Execution Time']:.1f}"
        + (f" triggers: {triggers}" if triggers else "")
    )


def batches(connection: Connection, now: datetime, count: int, size: int) -> None:
    statements = BatchStatements.build("postgresql", now, "explain")
    sent: list[tuple[str, Any, int]] = []
    with Session(bind=connection) as session:
        after = statements.start(session)
        seen = capture(connection)
        for _ in range(count):
            first = len(seen)
            ids = statements.pick(session, after=after, limit=size)
            if not ids:
                break
            statements.purge(session, ids)
            after = ids[-1]
            sent += [(statement, parameters, len(ids)) for statement, parameters in seen[first:]]
        session.rollback()
    with connection.begin() as outer:
        for statement, parameters, rows in sent:
            kind = statement.split()[0].lower()
            kind += " (pick)" if "FOR UPDATE" in statement else ""
            kind += " (tombstone and delete)" if "DELETE FROM phone_numbers" in statement else ""
            print(line(kind, explain(connection, statement, parameters), rows))
        outer.rollback()


def run_end(connection: Connection, now: datetime) -> None:
    """The counts a run's end reads (what it leaves overdue, and of it what waits)."""
    sent = capture(connection)
    report = PurgeReport(run_id="explain", status="running", cutoff="", now="")
    with connection.begin() as outer:
        factory = sessionmaker(bind=connection, join_transaction_mode="create_savepoint")
        _finish(factory, report, Halt("limit_reached"), now)
        reads = [(text, parameters) for text, parameters in sent if "SAVEPOINT" not in text]
        for statement, parameters in reads:
            print(line("run end", explain(connection, statement, parameters), 1))
        outer.rollback()
    print(f"run end: remaining={report.remaining} remaining_waiting={report.remaining_waiting}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()
    name = scratch_name(args.url, str(args.size))
    engine = make_engine(database_url(args.url, name))
    print(f"# store {name}", file=sys.stderr)
    with engine.connect() as connection:
        batches(connection, NOW, args.batches, args.batch_size)
    with engine.connect() as connection:
        run_end(connection, NOW)
    engine.dispose()


if __name__ == "__main__":
    main()
