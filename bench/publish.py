"""Time to publish 100,000 repurchasable numbers to Redis (`publish_releasable`).

    python bench/publish.py [--rows 321000] [--repeat 5]

A demo store of the purge benchmark's shape, sized so that about 100,000 of its numbers are
repurchasable at the benchmark's `now` (321,000 numbers over 3,210 accounts: 100,025). Each
round publishes them all (the store read, the sorted sets built under staging keys, the
atomic swap); every round after the first replaces the previous publication, as the beat task
does every minute. Uses only the Redis database of `--redis-url` (default db 14), emptied
before and after.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import redis
import structlog
from common import (
    DEFAULT_REDIS_URL,
    NOW,
    NUMBERS_PER_ACCOUNT,
    Stopwatch,
    add_database_arguments,
    drop,
    fresh_copy,
    machine,
    median,
    scratch_name,
    store_engine,
    template,
)
from sqlalchemy.orm import Session

from shared.reconcile import publish_releasable


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=321_000)
    parser.add_argument("--accounts", type=int, help="default: rows / 100")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="a Redis database of the benchmark's own; it is emptied (default: %(default)s)",
    )
    add_database_arguments(parser)
    args = parser.parse_args(argv)
    # The summary event of each publication would only interleave with the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    accounts = args.accounts or max(1, args.rows // NUMBERS_PER_ACCOUNT)
    print(machine(args.url, args.redis_url))
    source = template(args.url, numbers=args.rows, accounts=accounts, rebuild=args.rebuild)
    copy = scratch_name(args.url, "publish_copy")
    engine = store_engine(fresh_copy(args.url, source, copy))
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    seconds: list[float] = []
    try:
        for round_ in range(args.repeat):
            with Stopwatch() as watch, Session(engine) as session:
                summary = publish_releasable(session, client, now=NOW)
            seconds.append(watch.seconds)
            print(
                f"# round {round_ + 1} numbers={summary['published']} "
                f"accounts={summary['accounts']} seconds={watch.seconds:.3f}",
                flush=True,
            )
    finally:
        client.flushdb()
        client.close()
        engine.dispose()
        drop(args.url, copy)
    print(f"publish: numbers={summary['published']} seconds={median(seconds):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
