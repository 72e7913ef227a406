"""The releasable set at scale: a full publication against relaying a thousand changes.

    python bench/releasable.py [--releasable 1000000] [--changes 1000] [--repeat 2]

A demo store whose numbers were all released within the last 13 days, so that all of them are
repurchasable at the benchmark's `now` (`--releasable` numbers over `--releasable / 100`
accounts). On a fresh copy of it:

1. the full publication (`publish_releasable`, the hourly reconciliation) is timed `--repeat`
   times in a row; the first fills an empty Redis, the others replace a current set, as the
   hourly run does (`full_s` is the median of those, or the first alone with `--repeat 1`);
2. `--changes` mixed changes are committed through the library, each in its own transaction as
   the API makes them (repurchases, releases of some of those numbers again, holds), and the
   relay (`relay_events`) is timed applying them all to the sets and the stream
   (`incremental_s`).

The published set is then checked against the store. Uses only the Redis database of
`--redis-url` (default db 14), emptied before and after.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import timedelta

import structlog
from common import (
    NOW,
    NUMBERS_PER_ACCOUNT,
    Stopwatch,
    add_database_arguments,
    add_redis_argument,
    emptied_redis,
    machine,
    median,
    scratch_store,
    template,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared.models import PhoneNumber
from shared.releasable.reconcile import reconcile_releasable
from shared.releasable.relay import relay_events
from shared.retention import repurchasable_numbers

# Released within the last 13 days: every number is inside its 14-day window at NOW.
WINDOW_DAYS = 13


def apply_changes(factory: sessionmaker[Session], count: int) -> int:
    """`count` changes through the library, one transaction each; how many were made."""
    with factory() as session:
        # One number per account keeps every account far below the plan's cap.
        picks = session.execute(
            select(PhoneNumber.account_id, func.min(PhoneNumber.phone_number))
            .where(repurchasable_numbers(NOW))
            .group_by(PhoneNumber.account_id)
            .order_by(PhoneNumber.account_id)
            .limit(count // 2 + 1)
        ).all()
    made = 0
    later = NOW + timedelta(seconds=1)
    for i, (account_id, number) in enumerate(picks):
        if made >= count:
            break
        with factory.begin() as session:
            shared.repurchase_number(session, account_id=account_id, phone_number=number, now=NOW)
        made += 1
        if made >= count:
            break
        with factory.begin() as session:
            if i % 2:
                shared.release_number(
                    session, account_id=account_id, phone_number=number, now=later
                )
            else:
                shared.set_purge_hold(session, phone_number=number, held=True, now=later)
        made += 1
    return made


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--releasable", type=int, default=1_000_000)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2, help="full publications in a row")
    add_redis_argument(parser)
    add_database_arguments(parser)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    accounts = max(1, args.releasable // NUMBERS_PER_ACCOUNT)
    print(machine(args.url, args.redis_url))
    source = template(
        args.url,
        numbers=args.releasable,
        accounts=accounts,
        rebuild=args.rebuild,
        released_share=1.0,
        window_days=WINDOW_DAYS,
    )
    with (
        scratch_store(args.url, source, "releasable_copy") as engine,
        emptied_redis(args.redis_url) as client,
    ):
        factory = sessionmaker(engine, expire_on_commit=False)
        fulls: list[float] = []
        for round_ in range(args.repeat):
            with Stopwatch() as watch, factory() as session:
                summary = reconcile_releasable(session, client, now=NOW)
            fulls.append(watch.seconds)
            print(
                f"# full {round_ + 1} numbers={summary['published']} "
                f"accounts={summary['accounts']} drift_added={summary['drift_added']} "
                f"seconds={watch.seconds:.3f}",
                flush=True,
            )
        numbers = summary["published"]
        with Stopwatch() as made_watch:
            changes = apply_changes(factory, args.changes)
        with Stopwatch() as watch:
            report = relay_events(factory, client, now=NOW, max_seconds=600)
        print(
            f"# changes={changes} committed in {made_watch.seconds:.3f}s; relay "
            f"events={report.applied} batches={report.batches} seconds={watch.seconds:.3f}",
            flush=True,
        )
        with factory() as session:
            offered_now = session.scalar(select(func.count()).where(repurchasable_numbers(NOW)))
        assert report.remaining == 0
        assert client.zcard("releasable:all") == offered_now, "the relay left the set behind"
    full_s = median(fulls[1:]) if len(fulls) > 1 else fulls[0]
    print(
        f"releasable: numbers={numbers} full_s={full_s:.3f} changes={changes} "
        f"incremental_s={watch.seconds:.3f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
