"""The audit prune (shared/audit.py): batched deletes against monthly partitions dropped whole.

    python bench/prune.py --rows 1000000 [--url postgresql+psycopg://postgres@127.0.0.1/bench_prune]

Builds a store of `--rows` tombstones (generate_series, about 310 bytes each as in production,
label included) purged evenly over the last 800 days (ids growing with the purge time, as
the purge writes them), so that about half lie in months that
AUDIT_RETENTION_DAYS=400 lets go and most of the rest carry a label older than
TOMBSTONE_REDACT_DAYS=90. Then, each on a fresh `CREATE DATABASE ... TEMPLATE` copy:

  batched      `prune_audit` with the default settings (adaptive batches aimed at
               PURGE_BATCH_TARGET_MS=100, cap PURGE_BATCH_SIZE=5000, one transaction each):
               rows/s per step (rows over the summed batch time) and the run's wall time, the
               worst batch (its transaction: the longest any row lock was held);
  partitioned  the same tombstones in a table partitioned by month of `disconnect_date`
               (what the migration would have to build: its time is the copy), then the due
               months dropped (`DROP TABLE <partition>`), each drop timed: it holds an ACCESS
               EXCLUSIVE lock on the parent until it commits.

During both a probe writes one tombstone and reads one month's count every 20 ms on its own
connection (what the purge and `report disconnects` do meanwhile): its worst and p99 latency
show what the other sessions waited.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from structlog.testing import capture_logs

from shared import migrate
from shared.audit import AuditRetention, prune_audit
from shared.db import make_engine, make_session_factory
from shared.purge.config import PurgeConfig
from shared.settings import Settings

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SPAN_DAYS = 800
RETENTION = AuditRetention(audit_days=400, redact_days=90)
PROBE_EVERY = 0.02
# Number ids of the probe's tombstones: above every loaded one, never twice.
PROBE_NUMBERS = itertools.count(10_000_000_000)

LOAD = """
INSERT INTO purged_numbers (number_id, account_id, phone_number, label, created_at,
  country_code, number_type, next_billing_date, monthly_price, released_at, provider_number_id,
  campaign_id, a2p_status, purged_at, run_id, provider, upstream_released_at, resolution,
  carrier, release_proof, disconnect_date, disconnect_reason)
SELECT i, 'acc_' || (i %% 10000), '+1415' || lpad(i::text, 7, '0'),
  'Mobile of customer ' || i || ', front desk, second floor',
  p - interval '90 days', 'US', 'local', (p - interval '14 days')::date, 1.5,
  p - interval '14 days', 'pn-' || md5(i::text), 'C' || (i %% 500), 'approved', p,
  'run-' || (i / 5000), 'telnyx', p, 'provider', 'telnyx',
  '{"resolution": "provider"}'::json, (p AT TIME ZONE 'UTC')::date, 'released'
FROM (SELECT i, %(now)s::timestamptz
             - ((%(rows)s - i)::float / %(rows)s * %(span)s) * interval '1 day' AS p
      FROM generate_series(1, %(rows)s) AS i) AS s
"""


def admin(url: str) -> psycopg.Connection[Any]:
    base = url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    return psycopg.connect(f"{base}/postgres", autocommit=True)


def database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


def plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def build_template(url: str, name: str, rows: int) -> None:
    with admin(url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    engine = make_engine(database(url, name))
    migrate.upgrade(engine)
    engine.dispose()
    started = time.monotonic()
    with psycopg.connect(plain(database(url, name))) as conn:
        conn.execute(LOAD, {"now": NOW, "rows": rows, "span": SPAN_DAYS})
        conn.commit()
    with psycopg.connect(plain(database(url, name)), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE purged_numbers")
    print(f"loaded {rows:,} tombstones in {time.monotonic() - started:.1f} s", file=sys.stderr)


def copy_of(url: str, template: str, name: str) -> str:
    with admin(url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return database(url, name)


def drop(url: str, name: str) -> None:
    with admin(url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Probe(threading.Thread):
    """Every PROBE_EVERY s: one tombstone written, one month counted; latencies in ms."""

    def __init__(self, url: str, table: str) -> None:
        super().__init__(daemon=True)
        self.url, self.table = plain(url), table
        self.latencies: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.done.is_set():
                number = next(PROBE_NUMBERS)
                started = time.monotonic()
                conn.execute(
                    f"INSERT INTO {self.table} (number_id, account_id, phone_number, created_at,"
                    " country_code, number_type, next_billing_date, monthly_price, released_at,"
                    " purged_at, run_id, carrier, disconnect_date, disconnect_reason)"
                    " VALUES (%(n)s, 'acc_probe', '+14155550000', %(at)s, 'US', 'local',"
                    " %(day)s, 1, %(at)s, %(at)s, 'probe', 'none', %(day)s, 'released')",
                    {"n": number, "at": NOW, "day": NOW.date()},
                )
                conn.execute(
                    f"SELECT count(*) FROM {self.table} WHERE disconnect_date >= %(a)s"
                    " AND disconnect_date < %(b)s",
                    {"a": date(2026, 10, 1), "b": date(2026, 11, 1)},
                )
                self.latencies.append((time.monotonic() - started) * 1000)
                time.sleep(PROBE_EVERY)

    def figures(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        return {
            "probe_calls": len(ordered),
            "probe_p50_ms": round(statistics.median(ordered), 1),
            "probe_p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 1),
            "probe_max_ms": round(ordered[-1], 1),
        }


def batched(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    config = PurgeConfig.from_settings(Settings())
    probe = Probe(url, "purged_numbers")
    probe.start()
    time.sleep(0.5)
    with capture_logs() as logs:
        report = prune_audit(factory, retention=RETENTION, config=config, now=NOW)
    probe.done.set()
    probe.join()
    engine.dispose()
    steps: dict[str, dict[str, float]] = {}
    batch_ms: list[float] = []
    sizes: list[int] = []
    for entry in logs:
        if entry["event"] == "prune.batch":
            step = steps.setdefault(entry["step"], {"rows": 0, "ms": 0.0, "batches": 0, "worst": 0})
            step["rows"] += entry["rows"]
            step["ms"] += entry["ms"]
            step["batches"] += 1
            step["worst"] = max(step["worst"], entry["ms"])
            batch_ms.append(entry["ms"])
            sizes.append(entry["size"])
    batch_ms.sort()
    return {
        "status": report.status,
        "seconds": report.seconds,
        "worst_batch_ms": report.worst_batch_ms,
        "batch_ms_p50": batch_ms[len(batch_ms) // 2],
        "batch_ms_p99": batch_ms[int(len(batch_ms) * 0.99) - 1],
        "batches_over_250_ms": sum(1 for ms in batch_ms if ms > 250),
        "batch_sizes": [min(sizes), max(sizes)],
        "steps": {
            name: {
                "rows": int(s["rows"]),
                "batches": int(s["batches"]),
                "rows_per_s_in_batches": round(s["rows"] / (s["ms"] / 1000)),
                "worst_batch_ms": s["worst"],
            }
            for name, s in steps.items()
        },
        **probe.figures(),
    }


def months(first: date, last: date) -> list[date]:
    out, day = [], first.replace(day=1)
    while day <= last:
        out.append(day)
        day = (day + timedelta(days=32)).replace(day=1)
    return out


def partitioned(url: str) -> dict[str, Any]:
    """Build the monthly-partitioned copy (the migration's work), then drop the due months."""
    before = RETENTION.ledger_before(NOW)
    with psycopg.connect(plain(url), autocommit=True) as conn:
        first, last = conn.execute(
            "SELECT min(disconnect_date), max(disconnect_date) FROM purged_numbers"
        ).fetchone()  # type: ignore[misc]
        started = time.monotonic()
        # A unique constraint on a partitioned table must include the partition key: the
        # schema could no longer say "one tombstone per number" (number_id alone).
        conn.execute(
            "CREATE TABLE stones (LIKE purged_numbers INCLUDING DEFAULTS)"
            " PARTITION BY RANGE (disconnect_date)"
        )
        for month in months(first, last + timedelta(days=31)):
            after = (month + timedelta(days=32)).replace(day=1)
            conn.execute(
                f"CREATE TABLE stones_{month:%Y_%m} PARTITION OF stones"
                f" FOR VALUES FROM ('{month}') TO ('{after}')"
            )
        conn.execute("INSERT INTO stones SELECT * FROM purged_numbers")
        conn.execute("CREATE UNIQUE INDEX ON stones (number_id, disconnect_date)")
        conn.execute("CREATE INDEX ON stones (disconnect_date)")
        conn.execute("VACUUM ANALYZE stones")
        build = time.monotonic() - started
        due = conn.execute("SELECT count(*) FROM stones WHERE disconnect_date < %s", (before,))
        due_rows = due.fetchone()[0]  # type: ignore[index]
    probe = Probe(url, "stones")
    probe.start()
    time.sleep(0.5)
    drops: list[float] = []
    started = time.monotonic()
    with psycopg.connect(plain(url), autocommit=True) as conn:
        for month in months(first, before - timedelta(days=1)):
            began = time.monotonic()
            conn.execute(f"DROP TABLE stones_{month:%Y_%m}")
            drops.append((time.monotonic() - began) * 1000)
    total = time.monotonic() - started
    probe.done.set()
    probe.join()
    quiet = probe.figures()
    # The lock queue: a drop waits for every transaction reading the parent (a month's report
    # that takes a second), and every statement after it waits behind the drop.
    probe = Probe(url, "stones")
    probe.start()
    reader = threading.Thread(target=_read_for_a_second, args=(url,))
    reader.start()
    time.sleep(0.2)
    with psycopg.connect(plain(url), autocommit=True) as conn:
        began = time.monotonic()
        conn.execute(f"DROP TABLE stones_{before:%Y_%m}")
        behind_reader = (time.monotonic() - began) * 1000
    reader.join()
    time.sleep(0.3)
    probe.done.set()
    probe.join()
    return {
        "build_seconds": round(build, 1),
        "rows_dropped": due_rows,
        "partitions_dropped": len(drops),
        "drop_seconds": round(total, 3),
        "rows_per_s": round(due_rows / total),
        "worst_drop_ms": round(max(drops), 1),
        **quiet,
        "drop_behind_a_1s_reader_ms": round(behind_reader, 1),
        "probe_max_ms_behind_that_drop": probe.figures()["probe_max_ms"],
    }


def _read_for_a_second(url: str) -> None:
    with psycopg.connect(plain(url)) as conn:
        conn.execute("SELECT count(*) FROM stones")
        conn.execute("SELECT pg_sleep(1)")
        conn.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/bench_prune"
        ),
    )
    args = parser.parse_args()
    prefix = args.url.rsplit("/", 1)[1]
    template = f"{prefix}_template"
    build_template(args.url, template, args.rows)
    results: dict[str, Any] = {"rows": args.rows, "load_before": os.getloadavg()[0]}
    for name, measure in (("batched", batched), ("partitioned", partitioned)):
        url = copy_of(args.url, template, f"{prefix}_{name}")
        try:
            results[name] = measure(url)
        finally:
            drop(args.url, f"{prefix}_{name}")
        print(name, results[name], file=sys.stderr)
    drop(args.url, template)
    results["load_after"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
