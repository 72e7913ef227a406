"""Purge throughput against its limit and against the naive loop, on identical stores.

    python bench/purge.py --rows 1000000 [--repeat 3]

Builds (once) a demo store of `--rows` numbers over `--rows / 100` accounts with the project's
loader: about 60% released, release times spread over the last 30 days, so about a third of
all rows overdue. Then, per round, on a fresh copy of that store each, in a child process each:

  project  `purge_expired` with its default settings (batches, bounds, run lock, run record);
  limit    one statement: `WITH gone AS (DELETE ... RETURNING ...) INSERT INTO purged_numbers
           SELECT ... FROM gone LEFT JOIN campaign_assignments ...`;
  naive    the loop a newcomer writes: load the overdue rows as ORM objects, `session.delete`
           each, commit. It writes no tombstones, so it does less work than the other two;
           `--naive-tombstones` also runs the same loop adding a tombstone per row, for reference.

`--parallel N` also times the project's purge with N batches in flight instead of
`PURGE_PARALLEL_BATCHES` (default 1), to show what parallel batches add (or cost) now that
each batch adapts its size to the target transaction time.

All of them delete the same rows. Only the purge is timed (wall clock around the call,
connection set-up included); the peak resident memory is the child's VmHWM, so the loader's
memory is not counted. Rates and paired ratios are medians over the rounds; the longest batch
and the peak memory are the worst over the rounds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from typing import Any

import structlog
from common import (
    NOW,
    Stopwatch,
    add_database_arguments,
    add_store_arguments,
    child_result,
    database_url,
    drop,
    fresh_copy,
    in_child,
    machine,
    median,
    peak_rss_mb,
    purge_settings,
    scratch_name,
    store_accounts,
    store_engine,
    store_template,
)
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from shared.db import make_session_factory
from shared.models import CampaignAssignment, PhoneNumber, PurgedNumber
from shared.purge import TOMBSTONE_COLUMNS, purge_expired
from shared.purge.config import PurgeConfig
from shared.retention import cutoff, purgeable_numbers
from shared.settings import get_settings

VARIANTS = ("project", "limit", "naive")

# The limit: every overdue row deleted and tombstoned by one statement, nothing else.
LIMIT_SQL = f"""
WITH gone AS (
    DELETE FROM phone_numbers
    WHERE released_at <= :cutoff AND NOT purge_hold
    RETURNING *
)
INSERT INTO purged_numbers ({", ".join(TOMBSTONE_COLUMNS)})
SELECT gone.id, gone.account_id, gone.phone_number, gone.label, gone.created_at,
       gone.country_code, gone.number_type, gone.next_billing_date, gone.monthly_price,
       gone.released_at, gone.provider_number_id, c.campaign_id, c.status, :now, :run_id,
       NULL, NULL, NULL, NULL, NULL,
       'none', (CAST(:now AS timestamptz) AT TIME ZONE 'UTC')::date, 'released'
FROM gone LEFT JOIN campaign_assignments c ON c.number_id = gone.id
"""


def run_project(url: str, *, parallel: int | None = None) -> dict[str, Any]:
    if parallel is not None:  # this runs in its own child process: the setting stays there
        os.environ["PURGE_PARALLEL_BATCHES"] = str(parallel)
        get_settings.cache_clear()
    engine = store_engine(url)
    factory = make_session_factory(engine)
    with Stopwatch() as watch:
        report = purge_expired(factory, config=PurgeConfig.from_settings(get_settings()), now=NOW)
    engine.dispose()
    return {
        "rows": report.purged,
        "seconds": watch.seconds,
        "worst_batch_ms": report.worst_batch_ms,
        "batches": report.batches,
        "batch_sizes": report.batch_sizes,
        "paced_seconds": report.paced_seconds,
        "status": report.status,
    }


def run_limit(url: str) -> dict[str, Any]:
    engine = store_engine(url)
    with Stopwatch() as watch, engine.begin() as connection:
        result = connection.execute(
            text(LIMIT_SQL),
            {"cutoff": cutoff(NOW), "now": NOW, "run_id": str(uuid.uuid4())},
            execution_options={"preserve_rowcount": True},
        )
        rows = result.rowcount
    engine.dispose()
    return {"rows": rows, "seconds": watch.seconds}


def run_naive(url: str) -> dict[str, Any]:
    engine = store_engine(url)
    with Stopwatch() as watch, Session(engine) as session:
        found = session.scalars(select(PhoneNumber).where(purgeable_numbers(NOW))).all()
        for number in found:
            session.delete(number)
        session.commit()
    engine.dispose()
    return {"rows": len(found), "seconds": watch.seconds}


def run_naive_tombstones(url: str) -> dict[str, Any]:
    engine = store_engine(url)
    run_id = str(uuid.uuid4())
    with Stopwatch() as watch, Session(engine) as session:
        found = session.execute(
            select(PhoneNumber, CampaignAssignment.campaign_id, CampaignAssignment.status)
            .outerjoin(CampaignAssignment, CampaignAssignment.number_id == PhoneNumber.id)
            .where(purgeable_numbers(NOW))
        ).all()
        for number, campaign_id, a2p_status in found:
            session.add(
                PurgedNumber(
                    number_id=number.id,
                    account_id=number.account_id,
                    phone_number=number.phone_number,
                    label=number.label,
                    created_at=number.created_at,
                    country_code=number.country_code,
                    number_type=number.number_type,
                    next_billing_date=number.next_billing_date,
                    monthly_price=number.monthly_price,
                    released_at=number.released_at,
                    provider_number_id=number.provider_number_id,
                    campaign_id=campaign_id,
                    a2p_status=a2p_status,
                    purged_at=NOW,
                    run_id=run_id,
                )
            )
            session.delete(number)
        session.commit()
    engine.dispose()
    return {"rows": len(found), "seconds": watch.seconds}


def child(variant: str, url: str) -> None:
    # The worker logs purge events as JSON; here they would only interleave with the result.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    runner = {
        "project": run_project,
        "project_parallel": lambda url: run_project(
            url, parallel=int(os.environ["BENCH_PARALLEL"])
        ),
        "limit": run_limit,
        "naive": run_naive,
        "naive_tombstones": run_naive_tombstones,
    }[variant]
    result = runner(url)
    result["peak_rss_mb"] = peak_rss_mb()
    # Not timed: every variant must leave the same store behind.
    engine = store_engine(url)
    with engine.connect() as connection:
        result["left"] = connection.scalar(select(func.count()).where(purgeable_numbers(NOW)))
        result["tombstones"] = connection.scalar(select(func.count()).select_from(PurgedNumber))
    engine.dispose()
    child_result(**result)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_store_arguments(parser, rows=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default %(default)s)")
    parser.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="also time the project's purge with N batches in flight (for reference)",
    )
    parser.add_argument(
        "--naive-tombstones",
        action="store_true",
        help="also time the naive loop that writes tombstones (slow; for reference)",
    )
    add_database_arguments(parser)
    args = parser.parse_args(argv)
    settings = get_settings()
    print(machine(args.url))
    print(
        f"# project defaults: {purge_settings()} max_rows={settings.purge_max_rows} "
        f"max_seconds={settings.purge_max_seconds}"
    )
    if args.parallel:
        os.environ["BENCH_PARALLEL"] = str(args.parallel)  # read by the child
    source = store_template(args)
    engine = store_engine(database_url(args.url, source))
    with engine.connect() as connection:
        overdue = connection.execute(
            select(func.count()).where(purgeable_numbers(NOW))
        ).scalar_one()
        numbers = connection.execute(select(func.count()).select_from(PhoneNumber)).scalar_one()
    engine.dispose()
    print(f"# store: numbers={numbers} accounts={store_accounts(args)} overdue={overdue}")
    copy = scratch_name(args.url, "purge_copy")
    variants = (
        VARIANTS
        + (("project_parallel",) if args.parallel else ())
        + (("naive_tombstones",) if args.naive_tombstones else ())
    )
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    try:
        for round_ in range(args.repeat):
            # Rotate the order, so no variant always runs first (or after the heaviest).
            shift = round_ % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                url = fresh_copy(args.url, source, copy)
                result = in_child(__file__, [variant, url])
                stones = 0 if variant == "naive" else overdue
                if (result["rows"], result["tombstones"], result["left"]) != (overdue, stones, 0):
                    raise SystemExit(f"{variant} did not purge exactly the overdue rows: {result}")
                result["rate"] = result["rows"] / result["seconds"]
                runs[variant].append(result)
                extra = (
                    f" batches={result['batches']} sizes={result['batch_sizes']} "
                    f"worst_batch_ms={result['worst_batch_ms']} "
                    f"paced_seconds={result['paced_seconds']} load1={os.getloadavg()[0]:.2f}"
                    if variant.startswith("project")
                    else f" load1={os.getloadavg()[0]:.2f}"
                )
                print(
                    f"# round {round_ + 1} {variant} rows={result['rows']} "
                    f"seconds={result['seconds']:.2f} rows_per_s={result['rate']:.0f} "
                    f"peak_rss_mb={result['peak_rss_mb']:.1f}{extra}",
                    flush=True,
                )
    finally:
        drop(args.url, copy)
    rate = {variant: median([r["rate"] for r in runs[variant]]) for variant in VARIANTS}
    pairs = list(zip(runs["project"], runs["limit"], runs["naive"], strict=True))
    vs_limit = median([p["rate"] / b["rate"] for p, b, _ in pairs])
    vs_naive = median([p["rate"] / c["rate"] for p, _, c in pairs])
    worst_batch = max(r["worst_batch_ms"] for r in runs["project"])
    peak = max(r["peak_rss_mb"] for r in runs["project"])
    for variant in variants[1:]:
        print(
            f"# {variant}: median_rows_per_s={median([r['rate'] for r in runs[variant]]):.0f} "
            f"peak_rss_mb={max(r['peak_rss_mb'] for r in runs[variant]):.1f}"
        )
    print(
        f"purge: rows={overdue} project={rate['project']:.0f} limit={rate['limit']:.0f} "
        f"naive={rate['naive']:.0f} vs_limit={vs_limit:.2f} vs_naive={vs_naive:.2f} "
        f"worst_batch_ms={worst_batch:.1f} peak_rss_mb={peak:.1f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
