"""The purge against a carrier enforcing R requests/s: how close to R it releases, and how many
of its calls are answered 429.

    python bench/ratelimit.py [--rates 5,20,100] [--seconds 30] [--kind window|bucket]
                              [--fractional] [--repeat 1]

Per rate R, on a fresh PostgreSQL database: R x --seconds overdue numbers with Telnyx ids (and
one active number, which proves the key's account), and the fake Telnyx server of the tests
(`tests/fake_telnyx.py`) on loopback enforcing R requests/s over every request: fixed windows
of one second (`--kind bucket`: a token bucket of R tokens), `x-ratelimit-limit`,
`-remaining` and `-reset` on every answer (the reset in whole seconds, rounded up, unless
`--fractional`), 429 with code 10011 and `Retry-After` past the limit. Then one
`purge_expired` run with the project's settings (PROVIDER_CONCURRENCY 8, ...) and a fresh
Telnyx adapter, as a worker process starts it, timed around the call.

Figures per R: releases per second (the numbers Telnyx released, over the run's wall time:
the pre-flight calls and every batch's transactions included) against R, and the share of all
requests answered 429. Targets (issue 20): >= 0.9 R, <= 1 % answered 429.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from common import (
    NOW,
    Stopwatch,
    add_database_arguments,
    admin,
    drop,
    insert_numbers,
    machine,
    median,
    scratch_name,
    store_engine,
)
from common import database_url as url_of

from shared import migrate
from shared.db import make_session_factory
from shared.provider import TelnyxProvider
from shared.purge import purge_expired
from shared.purge.config import PurgeConfig
from shared.settings import get_settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' fake server
from tests.fake_telnyx import API_KEY, FakeTelnyx, RateLimit

ACCOUNT = "acc_ratelimit"


def seed(engine: Any, overdue: int) -> None:
    """`overdue` numbers released 15 days before NOW, ids 1e9 + i, and one active number."""
    rows = [
        {
            "phone_number": f"+1415{i:07d}",
            "billing_status": "released",
            "released_at": NOW - timedelta(days=15),
            "provider_number_id": str(1_000_000_000 + i),
        }
        for i in range(overdue)
    ]
    active = {
        "phone_number": "+14159999999",
        "billing_status": "active",
        "released_at": None,
        "provider_number_id": "999999999",
    }
    insert_numbers(engine, ACCOUNT, [*rows, active])


def fresh_store(url: str) -> Any:
    """An engine on an empty, migrated scratch database of this benchmark."""
    name = scratch_name(url, "ratelimit")
    with admin(url) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    engine = store_engine(url_of(url, name))
    migrate.upgrade(engine)
    return engine


def measure(url: str, rate: int, args: argparse.Namespace) -> dict[str, Any]:
    """One purge run against a fake Telnyx enforcing `rate` requests/s."""
    overdue = max(1, round(rate * args.seconds))
    engine = fresh_store(url)
    try:
        seed(engine, overdue)
        factory = make_session_factory(engine)
        fake = FakeTelnyx()
        fake.rate_limit = RateLimit(rate, kind=args.kind, fractional=args.fractional)
        with fake.running():
            provider = TelnyxProvider(base_url=fake.url, api_key=API_KEY, timeout=10)
            try:
                with Stopwatch() as watch:
                    report = purge_expired(
                        factory,
                        config=PurgeConfig.from_settings(get_settings()),
                        now=NOW,
                        provider=provider,
                    )
            finally:
                provider.close()
        limit = fake.rate_limit
    finally:
        engine.dispose()
        drop(url, scratch_name(url, "ratelimit"))
    if (report.status, report.purged, report.provider_failed) != ("completed", overdue, 0):
        raise SystemExit(f"R={rate}: the run did not purge every number: {report.as_dict()}")
    requests = limit.allowed + limit.limited
    return {
        "rate": rate,
        "numbers": overdue,
        "seconds": watch.seconds,
        "released_per_s": report.provider_released / watch.seconds,
        "requests": requests,
        "limited": limit.limited,
        "limited_pct": 100 * limit.limited / requests,
        "batches": report.batches,
        "batch_sizes": report.batch_sizes,
        "summary_rate_limited": report.provider_rate_limited,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="5,20,100", help="R values (default %(default)s)")
    parser.add_argument(
        "--seconds", type=float, default=30, help="numbers per R: R x this (default %(default)s)"
    )
    parser.add_argument("--kind", choices=("window", "bucket"), default="window")
    parser.add_argument("--fractional", action="store_true", help="resets in milliseconds")
    parser.add_argument("--repeat", type=int, default=1, help="runs per R (default 1)")
    add_database_arguments(parser)
    args = parser.parse_args(argv)
    # The purge logs JSON events per batch; here they would only interleave with the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    settings = get_settings()
    print(machine(args.url))
    print(
        f"# server: {args.kind} of 1 s, reset in "
        f"{'milliseconds' if args.fractional else 'whole seconds'}; "
        f"purge: PROVIDER_CONCURRENCY={settings.provider_concurrency} "
        f"PROVIDER_BATCH_SIZE={settings.provider_batch_size}"
    )
    worst_ratio, worst_pct = float("inf"), 0.0
    for rate in [int(r) for r in args.rates.split(",")]:
        runs = [measure(args.url, rate, args) for _ in range(args.repeat)]
        for run in runs:
            print(
                f"# R={rate} numbers={run['numbers']} seconds={run['seconds']:.2f} "
                f"released_per_s={run['released_per_s']:.2f} "
                f"ratio={run['released_per_s'] / rate:.3f} requests={run['requests']} "
                f"answered_429={run['limited']} ({run['limited_pct']:.2f} %) "
                f"batches={run['batches']} sizes={run['batch_sizes']} "
                f"load1={os.getloadavg()[0]:.2f}",
                flush=True,
            )
        ratio = median([r["released_per_s"] / rate for r in runs])
        pct = max(r["limited_pct"] for r in runs)
        worst_ratio, worst_pct = min(worst_ratio, ratio), max(worst_pct, pct)
    print(
        f"ratelimit: rates={args.rates} worst_ratio={worst_ratio:.3f} worst_429_pct={worst_pct:.2f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
