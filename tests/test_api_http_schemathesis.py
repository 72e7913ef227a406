"""Schemathesis over real HTTP: its command line (`st run`) against `numbers-retention serve`,
property-based over the document the server serves, every operation, every check.

The server runs on a database of its own, migrated and given a key by the commands an operator
runs (`migrate`, `api-key create`), so the run's releases and orders touch no other test's
store. The in-process run on the fixed `now` is tests/test_api_schema.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import psycopg.sql
import pytest
from sqlalchemy.engine import make_url

from shared.api.openapi import EXAMPLE_NUMBER
from shared.db import make_engine, make_session_factory
from tests.factories import make_number
from tests.processes import service_env
from tests.servers import serving_api

pytestmark = [pytest.mark.postgres, pytest.mark.processes(moved_clock=False)]

BIN = Path(sys.executable).parent
ACCOUNT = "acc_http"
# Fixed: the same cases on every run, as the suite's hypothesis profile (derandomize).
SEED = "20261205"


def _admin(url: str) -> str:
    return (
        make_url(url)
        .set(drivername="postgresql", database="postgres")
        .render_as_string(hide_password=False)
    )


@pytest.fixture
def own_database(pg_url: str) -> Iterator[str]:
    """An empty database beside the test database (named after it), dropped after."""
    name = f"{make_url(pg_url).database}_api_http"
    create = psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name))
    drop = psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
        psycopg.sql.Identifier(name)
    )
    with psycopg.connect(_admin(pg_url), autocommit=True) as connection:
        connection.execute(drop)
        connection.execute(create)
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_admin(pg_url), autocommit=True) as connection:
            connection.execute(drop)


def _command(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "numbers-retention"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_schemathesis_over_http_finds_no_failure(
    own_database: str, redis_url: str, tmp_path: Path, wall_now: datetime
) -> None:
    env = service_env(database_url=own_database, redis_url=redis_url, data_dir=tmp_path)
    _command(env, "migrate")
    # The account's numbers: the document's example number active (the examples phase releases
    # it, then orders it back) and one released yesterday.
    engine = make_engine(own_database)
    try:
        with make_session_factory(engine).begin() as session:
            instant = wall_now - timedelta(seconds=5)
            make_number(session, account_id=ACCOUNT, phone_number=EXAMPLE_NUMBER, now=instant)
            make_number(
                session,
                account_id=ACCOUNT,
                phone_number="+14155550124",
                released_at=instant - timedelta(days=1),
                now=instant,
            )
    finally:
        engine.dispose()
    key = json.loads(_command(env, "api-key", "create", "--account", ACCOUNT))["key"]

    with serving_api(env, tmp_path / "api.log") as (server, url):
        operations = sum(
            len(item) for item in httpx.get(f"{url}/openapi.json").json()["paths"].values()
        )
        done = subprocess.run(
            [
                str(BIN / "st"),
                "run",
                f"{url}/openapi.json",
                "--header",
                f"Authorization: Bearer {key}",
                "--checks",
                "all",
                "--max-examples",
                "40",
                "--workers",
                "1",
                "--seed",
                SEED,
                "--generation-database",
                "none",
                "--no-color",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-6000:]
        assert re.search(rf"Operations:\s+{operations} selected / {operations} total", output)
        assert re.search(rf"Tested: {operations}\b", output), output[-3000:]
        # Not one request reached the 500 boundary.
        assert [e for e in server.events() if e.get("event") == "api.failed"] == []
    # Stopped on the way out with SIGTERM, as docker and systemd stop it.
    assert server.popen.returncode == -signal.SIGTERM
