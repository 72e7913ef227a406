"""What grows with the store: the list, `status --json`'s own work, one scrape, the purge's rate.

    python bench/scale.py [--sizes 200000,1000000,10000000] [--calls 200] [--purge-rows 20000]

For each size, a store of that many numbers (about 100 per account) loaded once with the
project's loader (`seed_demo`, COPY) into a database of its own, `<url's database>_<size>`, kept
between runs and brought to the migration head (`migrate.upgrade`: a new migration's backfill
runs there, timed). Then, at the fixed instant NOW (status and the scrape at NOW + `--minute`
min + `--second` s, 29 and 29 by default: the worst case of the cutoff's minute, half a minute of
rows counted by index, and of its hour, whose rows were counted so before migration 0019):
- list: `released_numbers_body` for `--calls` accounts taken in turn (median and p99, ms);
- status: `store_status` in this process (the work of `status --json` without the process's
  start and imports; median and p99, ms);
- scrape: the exporter's collector on that store (cache off), rendered as Prometheus reads it
  (median and p99, ms);
- full scan: the counts as status and every scrape computed them before they were kept (one
  pass over the released numbers, `scanned_counts`), for comparison (median and p99, ms);
- purge: one `purge_expired` run bounded at `--purge-rows` rows (provider none), rows/s. It
  deletes those rows: run it last, and rebuild (`--rebuild`) for identical stores.
Prints one line per size and the ratios of the largest size to the smallest.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from typing import Any

import psycopg
from common import (
    NOW,
    NUMBERS_PER_ACCOUNT,
    SEED,
    admin,
    database_url,
    machine,
    median,
    percentile,
    scratch_name,
)
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from shared import migrate, released_numbers_body
from shared.counts import compact_counts, scanned_counts
from shared.db import make_engine, make_session_factory
from shared.demo import seed_demo
from shared.models import Account
from shared.purge import purge_expired
from shared.purge.config import PurgeConfig
from shared.purge.pacing import RECENTLY_AT_WORK_SECONDS
from shared.settings import get_settings
from shared.status import store_status
from worker.connections import engine as worker_engine
from worker.metrics import Reader, RetentionCollector

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/bench_scale"


def store(url: str, rows: int, *, rebuild: bool) -> tuple[Engine, float]:
    """The store of `rows` numbers (built if missing), migrated; and the migration's seconds."""
    name = scratch_name(url, str(rows))
    with admin(url) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if rebuild or not exists:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{name}"')
            exists = None
    engine = make_engine(database_url(url, name))
    started = time.perf_counter()
    migrate.upgrade(engine)
    migrated = time.perf_counter() - started
    if not exists:
        summary = seed_demo(
            engine, numbers=rows, accounts=max(1, rows // NUMBERS_PER_ACCOUNT), now=NOW, seed=SEED
        )
        print(f"# loaded {name}: {summary.as_dict()}", file=sys.stderr)
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={name}", autocommit=True) as c:
            c.execute("VACUUM (ANALYZE)")
    return engine, migrated


def timed(call: Any, times: int) -> list[float]:
    call()  # warm: the pool's connection, the statements' plans
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def figures(samples: list[float]) -> tuple[float, float]:
    return round(median(samples), 3), round(percentile(samples, 0.99), 3)


def measure(engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    factory = make_session_factory(engine)
    # The counts as the hourly reconciliation leaves them (deltas folded), at every size alike:
    # between two reconciliations a reading also sums up to COMPACT_AT deltas, as many at any
    # size (the last run's purge left some here).
    with factory.begin() as session:
        result_deltas = compact_counts(session)
    with factory() as session:
        accounts = list(session.scalars(select(Account.id).order_by(Account.id).limit(args.calls)))
    turn = iter(range(10**9))

    def listing() -> None:
        with factory() as session:
            released_numbers_body(session, account_id=accounts[next(turn) % len(accounts)], now=NOW)

    # Status and the scrape read at NOW + --minute + --second: the rows of the cutoff's minute on
    # the side counted (at most half a minute of them) are the part of a reading that grows with
    # the store (before migration 0019: of its hour).
    at = NOW + timedelta(minutes=args.minute, seconds=args.second)

    def status() -> None:
        with factory() as session:
            store_status(session, now=at)

    registry = CollectorRegistry()
    registry.register(
        RetentionCollector(Reader(factory, None, clock=lambda: at, budget=30), cache_seconds=0)
    )

    def scan() -> None:
        with factory() as session:
            scanned_counts(session, at)

    result: dict[str, Any] = {
        "list": figures(timed(listing, args.calls)),
        "status": figures(timed(status, args.repeat)),
        "scrape": figures(timed(lambda: generate_latest(registry), args.repeat)),
    }
    if args.scans:
        # What status and every scrape did before the counts were kept: one pass over the store.
        result["scan"] = figures(timed(scan, args.scans))
    if args.purge_rows:
        # The purge's own rate, nothing else at work: the measurements' sessions above count
        # as the API's for a second after their last call (shared/purge/pacing.py), and the
        # run would rest for them; it purges on the worker's engine, as the task does.
        time.sleep(RECENTLY_AT_WORK_SECONDS + 0.5)
        report = purge_expired(
            make_session_factory(worker_engine(engine.url.render_as_string(hide_password=False))),
            config=PurgeConfig.from_settings(get_settings()),
            now=NOW,
            max_rows=args.purge_rows,
            max_seconds=600,
        )
        seconds = report.as_dict()["seconds"]
        result["purge"] = (report.purged, round(report.purged / seconds) if seconds else None)
        result["purge_paced_s"] = report.paced_seconds
    result["deltas_folded"] = result_deltas
    with engine.connect() as connection:
        result["numbers"] = connection.scalar(text("SELECT count(*) FROM phone_numbers"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--sizes", default="200000,1000000,10000000")
    parser.add_argument("--calls", type=int, default=200, help="list calls per size")
    parser.add_argument("--repeat", type=int, default=30, help="status and scrape calls")
    parser.add_argument("--purge-rows", type=int, default=20000, help="0: no purge")
    parser.add_argument("--minute", type=int, default=29, help="status and scrape at NOW + this")
    parser.add_argument("--second", type=int, default=29, help="... and these seconds")
    parser.add_argument("--scans", type=int, default=5, help="full-scan counts timed (0: none)")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    print(machine(args.url))
    results = {}
    for rows in (int(size) for size in args.sizes.split(",")):
        engine, migrated = store(args.url, rows, rebuild=args.rebuild)
        try:
            results[rows] = result = measure(engine, args)
        finally:
            engine.dispose()
        purge = result.get("purge")
        print(
            f"size={rows} numbers={result['numbers']} migrate_s={migrated:.1f} "
            f"list_ms(median,p99)={result['list']} status_ms={result['status']} "
            f"scrape_ms={result['scrape']} "
            + (f"full_scan_ms={result['scan']} " if "scan" in result else "")
            + (f"purge(rows,rows/s)={purge}" if purge else ""),
            flush=True,
        )
    smallest, largest = min(results), max(results)
    if smallest != largest:
        low, high = results[smallest], results[largest]
        print(
            f"ratio {largest}/{smallest}: list_p99={high['list'][1] / low['list'][1]:.2f}x "
            f"status_median={high['status'][0] / low['status'][0]:.2f}x "
            f"scrape_median={high['scrape'][0] / low['scrape'][0]:.2f}x"
        )


if __name__ == "__main__":
    main()
