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
import sys

import structlog
from common import (
    NOW,
    Stopwatch,
    add_database_arguments,
    add_redis_argument,
    add_store_arguments,
    emptied_redis,
    machine,
    median,
    scratch_store,
    store_template,
)
from sqlalchemy.orm import Session

from shared.releasable.reconcile import reconcile_releasable


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_store_arguments(parser, rows=321_000)
    parser.add_argument("--repeat", type=int, default=5)
    add_redis_argument(parser)
    add_database_arguments(parser)
    args = parser.parse_args(argv)
    # The summary event of each publication would only interleave with the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(machine(args.url, args.redis_url))
    source = store_template(args)
    seconds: list[float] = []
    with (
        scratch_store(args.url, source, "publish_copy") as engine,
        emptied_redis(args.redis_url) as client,
    ):
        for round_ in range(args.repeat):
            with Stopwatch() as watch, Session(engine) as session:
                summary = reconcile_releasable(session, client, now=NOW)
            seconds.append(watch.seconds)
            print(
                f"# round {round_ + 1} numbers={summary['published']} "
                f"accounts={summary['accounts']} seconds={watch.seconds:.3f}",
                flush=True,
            )
    print(f"publish: numbers={summary['published']} seconds={median(seconds):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
