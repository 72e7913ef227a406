"""How long a release (and a repurchase) takes to reach the published set in Redis.

`numbers-retention run` (worker and beat in one process, the relay every RELAY_EVERY_SECONDS)
on a fresh, empty PostgreSQL database and the benchmark's own Redis database. One number is
released and repurchased `--cycles` times, each after a random pause (so that the writes fall
anywhere in the relay's period); each lag is from the write's commit to the moment the number
is (or is no longer) in the account's published set, polled every 10 ms.

    python bench/freshness.py --cycles 50 [--relay-every 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.orm import sessionmaker

import shared
from bench.common import (
    add_database_arguments,
    add_redis_argument,
    admin,
    database_url,
    drop,
    emptied_redis,
    machine,
    median,
    percentile,
    scratch_name,
    store_engine,
)
from shared import migrate
from shared.releasable.read import read_releasable
from shared.releasable.record import last_reconciliation

ACCOUNT, NUMBER = "acc_bench", "+14155550901"


def wait_until(check: object, timeout: float = 30.0) -> float:
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise TimeoutError("the published set did not follow within 30 s")
        time.sleep(0.01)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_arguments(parser)
    add_redis_argument(parser)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--relay-every", type=int, default=2, help="RELAY_EVERY_SECONDS")
    args = parser.parse_args()
    print(machine(args.url, args.redis_url))
    name = scratch_name(args.url, "freshness")
    drop(args.url, name)
    with admin(args.url) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = database_url(args.url, name)
    engine = store_engine(url)
    migrate.upgrade(engine)
    factory = sessionmaker(engine)
    with factory.begin() as session:
        shared.open_account(session, account_id=ACCOUNT, plan="paid")
        shared.register_number(
            session,
            account_id=ACCOUNT,
            phone_number=NUMBER,
            country_code="US",
            number_type="local",
            monthly_price="1.00",
        )
    lags: dict[str, list[float]] = {"release": [], "repurchase": []}
    with emptied_redis(args.redis_url) as client, tempfile.TemporaryDirectory() as data:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DATABASE_", "BROKER_", "REDIS_", "RELAY_"))
        } | {
            "DATABASE_URL": url,
            "BROKER_URL": args.redis_url,
            "REDIS_URL": args.redis_url,
            "NUMBERS_RETENTION_DATA": data,
            "RELAY_EVERY_SECONDS": str(args.relay_every),
            "LOG_FORMAT": "json",
        }
        log = Path(data) / "run.log"
        with log.open("wb") as out:
            run = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(lambda: last_reconciliation(client), timeout=60)

            def offered() -> bool:
                return NUMBER in {n for n, _ in read_releasable(client, account_id=ACCOUNT)}

            for _ in range(args.cycles):
                for kind, write, want in (
                    ("release", shared.release_number, True),
                    ("repurchase", shared.repurchase_number, False),
                ):
                    time.sleep(random.uniform(0, args.relay_every))
                    with factory.begin() as session:
                        write(session, account_id=ACCOUNT, phone_number=NUMBER)
                    lags[kind].append(wait_until(lambda want=want: offered() is want))
        finally:
            run.terminate()
            run.wait(30)
            engine.dispose()
            drop(args.url, name)
    every = lags["release"] + lags["repurchase"]
    print(
        json.dumps(
            {
                "relay_every_seconds": args.relay_every,
                "samples": len(every),
                "p50": round(median(every), 3),
                "p99": round(percentile(every, 0.99), 3),
                "max": round(max(every), 3),
                "release_p99": round(percentile(lags["release"], 0.99), 3),
                "repurchase_p99": round(percentile(lags["repurchase"], 0.99), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
