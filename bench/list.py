"""Latency of the released-numbers list against the driver's floor, on the 1,000,000-number store.

    python bench/list.py [--rows 1000000] [--calls 1000] [--repeat 3]

On a copy of the purge benchmark's store (same loader, same shape), for an account whose list
holds 50 numbers. Two ways to get the same body, interleaved call by call so that both meet the
same machine load:

- project: `released_numbers_body` as the API service calls it (a session from the engine's
  pool, the query, the body, the session closed);
- floor: one hand-written SQL query on a plain psycopg connection kept open (autocommit, one
  round trip), the body built by hand from its rows.

The bodies are checked to be identical. After a short warm-up, `--calls` calls of each per
series; prints the median and p99 of each series, then the medians over `--repeat` series and
the ratio project/floor of the medians.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from common import (
    NOW,
    add_database_arguments,
    add_store_arguments,
    machine,
    median,
    percentile,
    scratch_store,
    store_template,
)
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from shared import RETENTION, released_numbers_body
from shared.models import PhoneNumber
from shared.retention import repurchasable_numbers

LISTED = 50
WARM_UP = 50
FLOOR_SQL = """
SELECT p.phone_number, p.label, p.created_at, p.country_code, p.number_type, p.billing_status,
       p.next_billing_date, p.monthly_price, p.released_at, c.status
FROM phone_numbers p LEFT JOIN campaign_assignments c ON c.number_id = p.id
WHERE p.account_id = %s AND p.billing_status = 'released' AND p.purge_state IS NULL
  AND p.released_at > %s
ORDER BY p.released_at DESC, p.id DESC
"""


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def floor_body(connection: psycopg.Connection[Any], account_id: str) -> dict[str, Any]:
    """The same body from one hand-written query, built by hand."""
    numbers = []
    for (
        number,
        label,
        created,
        country,
        kind,
        billing,
        next_bill,
        price,
        released,
        a2p,
    ) in connection.execute(FLOOR_SQL, (account_id, NOW - RETENTION)):
        body: dict[str, Any] = {"phoneNumber": number}
        if label:
            body["label"] = label
        body["createdAt"] = _iso(created)
        body["countryCode"] = country
        body["numberType"] = kind
        body["billingStatus"] = billing
        body["nextBillingDate"] = next_bill.isoformat()
        body["monthlyPrice"] = float(price)
        if a2p and country == "US":
            body["a2pStatus"] = a2p
        body["releasedAt"] = _iso(released)
        numbers.append(body)
    return {"numbers": numbers}


def pick_account(engine: Engine) -> tuple[str, int]:
    """The account whose list is closest to 50 numbers (the demo store has several at 50)."""
    with Session(engine) as session:
        listed = func.count().label("listed")
        account_id, count = session.execute(
            select(PhoneNumber.account_id, listed)
            .where(repurchasable_numbers(NOW))
            .group_by(PhoneNumber.account_id)
            .order_by(func.abs(listed - LISTED), PhoneNumber.account_id)
            .limit(1)
        ).one()
    return account_id, count


def measure(
    engine: Engine, floor: psycopg.Connection[Any], *, calls: int, repeat: int
) -> dict[str, list[tuple[float, float]]]:
    """`repeat` series of `calls` calls of each way, interleaved; (median, p99) per series."""
    account_id, count = pick_account(engine)
    print(f"# account={account_id} listed={count}")
    with Session(engine) as session:
        assert released_numbers_body(session, account_id=account_id, now=NOW) == floor_body(
            floor, account_id
        ), "the floor's body differs from the project's"
    results: dict[str, list[tuple[float, float]]] = {"project": [], "floor": []}
    for series in range(repeat):
        timings: dict[str, list[float]] = {"project": [], "floor": []}
        for call in range(WARM_UP + calls):
            # Alternate which goes first, so neither always meets a warmer cache.
            order = ("project", "floor") if call % 2 else ("floor", "project")
            for variant in order:
                started = time.perf_counter()
                if variant == "project":
                    with Session(engine) as session:
                        body = released_numbers_body(session, account_id=account_id, now=NOW)
                else:
                    body = floor_body(floor, account_id)
                elapsed = (time.perf_counter() - started) * 1000
                if call >= WARM_UP:
                    timings[variant].append(elapsed)
                assert len(body["numbers"]) == count
        for variant, values in timings.items():
            results[variant].append((median(values), percentile(values, 0.99)))
        project, floor_ms = results["project"][-1], results["floor"][-1]
        print(
            f"# series {series + 1} calls={calls} project median_ms={project[0]:.3f} "
            f"p99_ms={project[1]:.3f} floor median_ms={floor_ms[0]:.3f} "
            f"p99_ms={floor_ms[1]:.3f} ratio={project[0] / floor_ms[0]:.2f}",
            flush=True,
        )
    return results


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_store_arguments(parser, rows=1_000_000)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="series of calls")
    add_database_arguments(parser)
    args = parser.parse_args(argv)
    print(machine(args.url))
    source = store_template(args)
    with scratch_store(args.url, source, "list_copy") as engine:
        conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as floor:
            results = measure(engine, floor, calls=args.calls, repeat=args.repeat)
    project_ms = median([m for m, _ in results["project"]])
    floor_ms = median([m for m, _ in results["floor"]])
    print(
        f"list: median_ms={project_ms:.3f} p99_ms={median([p for _, p in results['project']]):.3f} "
        f"floor_median_ms={floor_ms:.3f} ratio={project_ms / floor_ms:.2f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
