"""What the benchmarks share: the store they build, identical copies of it, child processes.

A store is loaded once into a template database with the project's own loader (`seed_demo`,
COPY on PostgreSQL) and reused while its description (rows, accounts, seed, `now`, migration
head) matches; every measurement then runs on a fresh `CREATE DATABASE ... TEMPLATE` copy, so
each variant meets byte-identical data. Measurements that need their own memory figure run in
a child process (`python bench/<name>.py --child ...`), which prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import redis
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, insert
from sqlalchemy.engine import make_url

from shared import migrate
from shared.db import make_engine
from shared.demo import seed_demo
from shared.models import Account, PhoneNumber
from shared.settings import get_settings

# The instant every benchmark decides at: the demo data is laid out around it.
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
NUMBERS_PER_ACCOUNT = 100  # 1,000,000 numbers over 10,000 accounts
RELEASED_SHARE = 0.6
WINDOW_DAYS = 30
SEED = 0


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    """--url (the scratch database's name prefixes every database we create) and --rebuild."""
    parser.add_argument(
        "--url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL),
        help="PostgreSQL URL; its database name prefixes the template and copies "
        "(default: %(default)s, or BENCH_DATABASE_URL)",
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="reload the template even if it matches"
    )


def add_store_arguments(parser: argparse.ArgumentParser, *, rows: int) -> None:
    """--rows and --accounts: the shape of the demo store (see `store_template`)."""
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--accounts", type=int, help="default: rows / 100")


def add_redis_argument(parser: argparse.ArgumentParser) -> None:
    """--redis-url: the benchmark's own Redis database (see `emptied_redis`)."""
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="a Redis database of the benchmark's own; it is emptied (default: %(default)s)",
    )


def store_accounts(args: argparse.Namespace) -> int:
    """The store's accounts: --accounts, or one per NUMBERS_PER_ACCOUNT of --rows."""
    accounts: int = args.accounts or max(1, args.rows // NUMBERS_PER_ACCOUNT)
    return accounts


def store_template(args: argparse.Namespace) -> str:
    """The template of the store --rows and --accounts describe, on --url (see `template`)."""
    return template(
        args.url, numbers=args.rows, accounts=store_accounts(args), rebuild=args.rebuild
    )


def purge_settings() -> str:
    """The purge's batch and pacing settings in effect, as the benchmarks print them."""
    settings = get_settings()
    return (
        f"batch_size(cap)={settings.purge_batch_size} floor={settings.purge_batch_floor} "
        f"target_ms={settings.purge_batch_target_ms} "
        f"parallel_batches={settings.purge_parallel_batches} "
        f"pressure_rest={settings.purge_pressure_rest}"
    )


def database_url(url: str, database: str) -> str:
    """`url` pointing at another database on the same server."""
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _conninfo(url: str, database: str) -> str:
    parsed = make_url(url).set(drivername="postgresql", database=database)
    return parsed.render_as_string(hide_password=False)


def admin(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection to the server's maintenance database, for CREATE/DROP."""
    return psycopg.connect(_conninfo(url, "postgres"), autocommit=True)


def scratch_name(url: str, suffix: str) -> str:
    """A database name of ours: the URL's database name, an underscore, `suffix`."""
    return f"{make_url(url).database or 'bench'}_{suffix}"


def _head() -> str:
    """The migration head and a digest of the migrations: a template built by an earlier
    version of a revision (a reserved placeholder filled in later) is rebuilt too."""
    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    digest = hashlib.sha256()
    for path in sorted(Path(migrate.MIGRATIONS, "versions").glob("*.py")):
        digest.update(path.read_bytes())
    return f"{head}:{digest.hexdigest()[:12]}"


def template(
    url: str,
    *,
    numbers: int,
    accounts: int,
    rebuild: bool = False,
    released_share: float = RELEASED_SHARE,
    window_days: int = WINDOW_DAYS,
) -> str:
    """The template database holding the demo store of that shape; built if missing or stale."""
    shape = "" if (released_share, window_days) == (RELEASED_SHARE, WINDOW_DAYS) else "_r"
    name = scratch_name(url, f"tpl_{numbers}_{accounts}{shape}")
    wanted = json.dumps(
        {
            "numbers": numbers,
            "accounts": accounts,
            "released_share": released_share,
            "window_days": window_days,
            "seed": SEED,
            "now": NOW.isoformat(),
            "head": _head(),
        },
        sort_keys=True,
    )
    with admin(url) as connection:
        row = connection.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
        if row is not None and row[0] == wanted and not rebuild:
            return name
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(database_url(url, name))
    try:
        migrate.upgrade(engine)
        summary = seed_demo(
            engine,
            numbers=numbers,
            accounts=accounts,
            now=NOW,
            released_share=released_share,
            window_days=window_days,
            seed=SEED,
        )
    finally:
        engine.dispose()
    print(f"# loaded {name}: {summary.as_dict()}", file=sys.stderr)
    with psycopg.connect(_conninfo(url, name), autocommit=True) as connection:
        # A settled table, as a long-lived store has: hint bits set, visibility map built.
        connection.execute("VACUUM (ANALYZE)")
    with admin(url) as connection:
        connection.execute(f"COMMENT ON DATABASE \"{name}\" IS '{wanted}'")
    return name


def fresh_copy(url: str, source: str, name: str) -> str:
    """A new database `name` identical to `source`; its URL."""
    with admin(url) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        # FILE_COPY: copies the files instead of writing the whole store to the WAL.
        connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}" STRATEGY = FILE_COPY')
        # Start every measurement from the same point: no checkpoint debt left behind.
        connection.execute("CHECKPOINT")
    return database_url(url, name)


def drop(url: str, name: str) -> None:
    with admin(url) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def store_engine(url: str) -> Engine:
    """An engine as the worker builds one (make_engine), for a benchmark database."""
    return make_engine(url)


@contextmanager
def scratch_store(url: str, source: str, suffix: str) -> Iterator[Engine]:
    """An engine on a fresh copy of `source` (`scratch_name(url, suffix)`); on the way out the
    engine is disposed of and the copy dropped."""
    name = scratch_name(url, suffix)
    engine = store_engine(fresh_copy(url, source, name))
    try:
        yield engine
    finally:
        engine.dispose()
        drop(url, name)


@contextmanager
def emptied_redis(url: str) -> Iterator[redis.Redis]:
    """A client of the benchmark's own Redis database, emptied before and after."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def in_child(script: str, args: Sequence[str]) -> dict[str, Any]:
    """Run `python <script> --child <args>` and return the JSON object it prints last."""
    done = subprocess.run(
        [sys.executable, script, "--child", *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def child_result(**values: Any) -> None:
    """Print a child's result: one JSON line, the last on stdout."""
    print(json.dumps(values), flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile: the smallest value with `share` of all at or below it."""
    ordered = sorted(values)
    rank = max(1, int(-(-share * len(ordered) // 1)))
    return ordered[rank - 1]


def machine(url: str, redis_url: str | None = None) -> str:
    """Date, cores and server versions: the line each benchmark prints first."""
    with admin(url) as connection:
        row = connection.execute("SHOW server_version").fetchone()
        postgres = row[0] if row else "?"
    parts = [
        f"date={datetime.now(UTC).date().isoformat()}",
        f"cores={os.cpu_count()}",
        f"python={platform.python_version()}",
        f"postgresql={postgres.split()[0]}",
    ]
    if redis_url:
        with redis.Redis.from_url(redis_url) as client:
            parts.append(f"redis={client.info('server')['redis_version']}")
    load = os.getloadavg()[0]
    parts.append(f"load1={load:.2f}")
    return "# " + " ".join(parts)


class Stopwatch:
    """Wall-clock seconds of a `with` block (perf_counter)."""

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def insert_numbers(engine: Engine, account_id: str, numbers: Sequence[dict[str, Any]]) -> None:
    """One paid account holding `numbers`: each a local US number at 1.00 registered 60 days
    before NOW, with its own fields (phone number, billing status, release...) over those."""
    registered = {
        "account_id": account_id,
        "created_at": NOW - timedelta(days=60),
        "country_code": "US",
        "number_type": "local",
        "next_billing_date": (NOW + timedelta(days=20)).date(),
        "monthly_price": Decimal("1.00"),
    }
    with engine.begin() as connection:
        opened = NOW - timedelta(days=90)
        connection.execute(
            insert(Account), [{"id": account_id, "plan": "paid", "created_at": opened}]
        )
        connection.execute(insert(PhoneNumber), [registered | number for number in numbers])
