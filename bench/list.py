"""Latency of the released-numbers list (`released_numbers_body`) on the 1,000,000-number store.

    python bench/list.py [--rows 1000000] [--calls 1000] [--repeat 3]

On a copy of the purge benchmark's store (same loader, same shape), for an account whose list
holds 50 numbers: 1,000 calls, each as the API service makes it (a session from the pool, the
account check, the query, the body), after a short warm-up. Prints the median and p99 of each
series of calls, then the medians of those over `--repeat` series.
"""

from __future__ import annotations

import argparse
import sys
import time

from common import (
    NOW,
    NUMBERS_PER_ACCOUNT,
    add_database_arguments,
    drop,
    fresh_copy,
    machine,
    median,
    percentile,
    scratch_name,
    store_engine,
    template,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import released_numbers_body
from shared.listing import offered
from shared.models import PhoneNumber

LISTED = 50
WARM_UP = 50


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, help="default: rows / 100")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="series of calls")
    add_database_arguments(parser)
    args = parser.parse_args(argv)
    accounts = args.accounts or max(1, args.rows // NUMBERS_PER_ACCOUNT)
    print(machine(args.url))
    source = template(args.url, numbers=args.rows, accounts=accounts, rebuild=args.rebuild)
    copy = scratch_name(args.url, "list_copy")
    engine = store_engine(fresh_copy(args.url, source, copy))
    try:
        with Session(engine) as session:
            listed = func.count().label("listed")
            # The account whose list is closest to 50 numbers (the demo store has several at 50).
            account_id, count = session.execute(
                select(PhoneNumber.account_id, listed)
                .where(offered(NOW))
                .group_by(PhoneNumber.account_id)
                .order_by(func.abs(listed - LISTED), PhoneNumber.account_id)
                .limit(1)
            ).one()
            released = session.scalar(
                select(func.count()).where(
                    PhoneNumber.account_id == account_id, PhoneNumber.released_at.is_not(None)
                )
            )
        print(
            f"# account={account_id} listed={count} released={released} "
            f"(released includes the ones past their deadline)"
        )
        medians, p99s = [], []
        for series in range(args.repeat):
            timings: list[float] = []
            for call in range(WARM_UP + args.calls):
                started = time.perf_counter()
                with Session(engine) as session:
                    body = released_numbers_body(session, account_id=account_id, now=NOW)
                elapsed = (time.perf_counter() - started) * 1000
                if call >= WARM_UP:
                    timings.append(elapsed)
            assert len(body["numbers"]) == count
            medians.append(median(timings))
            p99s.append(percentile(timings, 0.99))
            print(
                f"# series {series + 1} calls={len(timings)} min_ms={min(timings):.3f} "
                f"median_ms={medians[-1]:.3f} p90_ms={percentile(timings, 0.90):.3f} "
                f"p99_ms={p99s[-1]:.3f} max_ms={max(timings):.3f}",
                flush=True,
            )
    finally:
        engine.dispose()
        drop(args.url, copy)
    print(f"list: median_ms={median(medians):.3f} p99_ms={median(p99s):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
