"""The live pace as a ceiling: rows purged over every 10-second window of a paced run.

    python bench/pace.py [--paces 10,100,1000] [--seconds 30] [--parallel 2]

Per pace P, on a fresh PostgreSQL database: P x --seconds x 2 overdue numbers (more than the
run can take, so it is paced from its first batch to its time bound), no provider
(PROVIDER=none), `pace --rows-per-second P` stored as an operator sets it, then one
`purge_expired` run bounded by --seconds with the project's settings and `--parallel` batches
in flight (PURGE_PARALLEL_BATCHES).

Each batch's pick is timed as it happens (the instant and the rows the pacer counts). Figures
per P: the rows of the busiest 10-second window (every window starting at a pick and ending
within the run), over 10 P; the run's mean rate; the largest batch against what the pace
allows (P x BURST_SECONDS); `paced_seconds` against `seconds`. Targets (issue 19): every
window within 10 % of P; no batch above P x BURST_SECONDS; paced_seconds <= seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import timedelta
from typing import Any

import structlog
from common import (
    NOW,
    add_database_arguments,
    admin,
    drop,
    insert_numbers,
    machine,
    scratch_name,
    store_engine,
)
from common import database_url as url_of

from shared import migrate
from shared.controls import set_pace
from shared.db import make_session_factory
from shared.purge import pacing, purge_expired
from shared.purge.config import PurgeConfig
from shared.settings import get_settings

ACCOUNT = "acc_pace"
WINDOW = 10.0


def seed(engine: Any, overdue: int) -> None:
    """`overdue` numbers released 15 days before NOW, with no upstream state."""
    released = {"billing_status": "released", "released_at": NOW - timedelta(days=15)}
    insert_numbers(
        engine, ACCOUNT, [released | {"phone_number": f"+1415{i:07d}"} for i in range(overdue)]
    )


def measure(url: str, pace: int, args: argparse.Namespace) -> dict[str, Any]:
    name = scratch_name(url, "pace")
    with admin(url) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    engine = store_engine(url_of(url, name))
    picks: list[tuple[float, int]] = []
    count = pacing.Pacer.count

    def timed_count(self: pacing.Pacer, rows: int) -> None:
        picks.append((time.monotonic(), rows))
        count(self, rows)

    try:
        migrate.upgrade(engine)
        seed(engine, pace * args.seconds * 2)
        factory = make_session_factory(engine)
        with factory.begin() as session:
            set_pace(session, rows_per_second=pace, by="bench", reason="bench/pace.py")
        pacing.Pacer.count = timed_count  # type: ignore[method-assign]
        try:
            report = purge_expired(
                factory,
                config=PurgeConfig.from_settings(get_settings()),
                now=NOW,
                max_seconds=args.seconds,
            )
        finally:
            pacing.Pacer.count = count  # type: ignore[method-assign]
    finally:
        engine.dispose()
        drop(url, name)
    first, last = picks[0][0], picks[-1][0]
    windows = [
        sum(rows for when, rows in picks if at <= when < at + WINDOW)
        for at, _ in picks
        if at + WINDOW <= last + 1 / pace or at == first
    ]
    busiest = max(windows)
    return {
        "pace": pace,
        "status": report.status,
        "purged": report.purged,
        "batches": report.batches,
        "largest_batch": max(rows for _, rows in picks),
        "allowed_batch": max(1, int(pace * pacing.BURST_SECONDS)),
        "busiest_window_rows": busiest,
        "busiest_window_pct": 100 * busiest / (pace * WINDOW),
        "mean_rate": report.purged / report.seconds,
        "seconds": report.seconds,
        "paced_seconds": report.paced_seconds,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_arguments(parser)
    parser.add_argument("--paces", default="10,100,1000")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ["PROVIDER"] = "none"
    os.environ["PURGE_PARALLEL_BATCHES"] = str(args.parallel)
    get_settings.cache_clear()
    logging.disable(logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    print(machine(args.url))
    print(
        "pace  status         purged  batches  largest/allowed  busiest-10s  of-pace  "
        "mean-rate  seconds  paced"
    )
    for pace in (int(p) for p in args.paces.split(",")):
        r = measure(args.url, pace, args)
        print(
            f"{r['pace']:>4}  {r['status']:<13} {r['purged']:>7}  {r['batches']:>7}  "
            f"{r['largest_batch']:>7}/{r['allowed_batch']:<7}  {r['busiest_window_rows']:>11}"
            f"  {r['busiest_window_pct']:>6.1f}%  {r['mean_rate']:>9.1f}  {r['seconds']:>7.2f}"
            f"  {r['paced_seconds']:>5.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
