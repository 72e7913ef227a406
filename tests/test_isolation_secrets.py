"""Isolation and secrets.

An account never lists, repurchases or releases another account's number, and the refusal
for someone else's number is the very refusal for a number that does not exist. Passwords in
DATABASE_URL and REDIS_URL never show in logs, task results, stored summaries, `status`
output or error messages, with real worker, beat and CLI processes. Celery takes JSON only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import Result
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared.db import make_session_factory
from shared.models import E164_PATTERN
from shared.releasable.read import read_releasable
from shared.releasable.reconcile import reconcile_releasable
from tests.factories import NOW, make_number, make_numbers, snapshot
from tests.processes import service_env, start_worker_and_beat, wait_for
from tests.servers import RedisServer, celery_client, free_port, wait_task
from worker.app import app

# Figures quoted in docs/guarantees.md; change them together.
EXAMPLES = 60  # generated (actor, someone else's or unknown number) pairs per backend

ACCOUNTS = ("acc_a", "acc_b", "acc_c")
YESTERDAY = NOW - timedelta(days=1)
# account -> {number: released_at or None}; each account has active, released and expired.
HOLDINGS: dict[str, dict[str, datetime | None]] = {
    account: {
        f"+1415555{k}{i:03d}": released
        for i, released in enumerate(
            [None, YESTERDAY, NOW - timedelta(days=3), NOW - timedelta(20)]
        )
    }
    for k, account in enumerate(ACCOUNTS, start=1)
}
OWNER = {number: account for account, numbers in HOLDINGS.items() for number in numbers}


@pytest.fixture
def world(session: Session) -> Session:
    for account, numbers in HOLDINGS.items():
        for number, released_at in numbers.items():
            make_number(session, account_id=account, phone_number=number, released_at=released_at)
    return session


def refusal(session: Session, act: str, actor: str, number: str) -> shared.ApiError:
    """The error `actor` gets for `act` on `number`; the store must be left as it was."""
    before = snapshot(session)
    savepoint = session.begin_nested()
    try:
        call = shared.release_number if act == "release" else shared.repurchase_number
        with pytest.raises(shared.ApiError) as caught:
            call(session, account_id=actor, phone_number=number, now=NOW)
        assert snapshot(session) == before
    finally:
        savepoint.rollback()
    return caught.value


def shape(error: shared.ApiError, number: str) -> tuple[Any, ...]:
    """Everything the caller sees, with the number they asked about blanked out."""
    body = error.body("trk_same")
    body["error"]["message"] = body["error"]["message"].replace(number, "<number>")
    return (type(error), error.status, json.dumps(body, sort_keys=True))


unknown_numbers = st.from_regex(E164_PATTERN.strip("^$"), fullmatch=True).filter(
    lambda n: n not in OWNER
)


def test_someone_elses_number_is_refused_exactly_like_a_missing_one(world: Session) -> None:
    @settings(max_examples=EXAMPLES)
    @given(
        actor=st.sampled_from(ACCOUNTS),
        other=st.sampled_from(sorted(OWNER)),
        missing=unknown_numbers,
        act=st.sampled_from(["release", "repurchase"]),
    )
    @example(actor="acc_a", other="+14155552001", missing="+14155550999", act="repurchase")
    @example(actor="acc_a", other="+14155552000", missing="+10", act="release")
    def check(actor: str, other: str, missing: str, act: str) -> None:
        if OWNER[other] == actor:
            return
        theirs = refusal(world, act, actor, other)
        nowhere = refusal(world, act, actor, missing)
        assert theirs.code == "number_not_found"
        assert shape(theirs, other) == shape(nowhere, missing)

    check()


def test_an_account_lists_only_its_own_numbers(world: Session) -> None:
    for account, numbers in HOLDINGS.items():
        body = shared.released_numbers_body(world, account_id=account, now=NOW)
        listed = [n["phoneNumber"] for n in body["numbers"]]
        # Its repurchasable numbers, newest release first; nobody else's.
        assert listed == [n for n, at in numbers.items() if at and at > NOW - timedelta(days=14)]


@pytest.mark.redis
@pytest.mark.postgres
def test_the_published_per_account_sets_hold_only_that_accounts_numbers(
    pg_factory: sessionmaker[Session], redis_client: redis.Redis
) -> None:
    with pg_factory.begin() as session:
        for account, numbers in HOLDINGS.items():
            for number, released_at in numbers.items():
                make_number(
                    session, account_id=account, phone_number=number, released_at=released_at
                )
    with pg_factory() as session:
        reconcile_releasable(session, redis_client, now=NOW)
    for account in ACCOUNTS:
        published = {n for n, _ in read_releasable(redis_client, account_id=account, now=NOW)}
        assert published
        assert {OWNER[n] for n in published} == {account}


# --- secrets -----------------------------------------------------------------------------------

PG_PASSWORD = "pg-S3cret-0f7a1d"  # the shared PostgreSQL trusts loopback: a password is ignored


def secret_url(pg_url: str) -> str:
    return pg_url.replace("postgres@", f"postgres:{PG_PASSWORD}@", 1)


def redis_dump(client: redis.Redis) -> str:
    """Every key and value in the Redis (results, events, schedule, the set) as text."""
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.postgres
@pytest.mark.processes(moved_clock=False)  # what is logged and shown, whatever the date
def test_url_passwords_never_leave_the_process(
    pg_store: Engine,
    pg_url: str,
    fault_redis: RedisServer,
    tmp_path: Path,
    cli_in: Callable[..., Callable[..., Result]],
) -> None:
    secrets = (PG_PASSWORD, fault_redis.password)
    now = datetime.now(UTC)
    with make_session_factory(pg_store).begin() as session:
        make_numbers(
            session,
            account_id="acc_s",
            ages={"+14155558000": timedelta(days=20), "+14155558001": timedelta(days=1)},
            now=now,
        )
    env = service_env(
        database_url=secret_url(pg_url),
        redis_url=fault_redis.url(),
        data_dir=tmp_path,
        PURGE_EVERY_SECONDS="1",
        PUBLISH_EVERY_SECONDS="1",
        LOG_LEVEL="DEBUG",
    )
    worker, beat = start_worker_and_beat(env, tmp_path)

    ours = dict(os.environ)  # before any command sets its settings in it

    def command(env: dict[str, str], *args: str) -> Result:
        """The command line in this process under `env`: what it prints and logs (its JSON
        events on stderr) is what a child would."""
        settings = {k: v for k, v in env.items() if ours.get(k) != v}
        return cli_in(tmp_path, **settings)(*args)

    outputs: list[str] = []
    try:
        results = fault_redis.client()
        with celery_client(fault_redis.url()) as client:
            purge = client.send_task("numbers.purge_expired")
            failing = client.send_task("numbers.purge_expired", kwargs={"now": "not a time"})
            outputs.append(json.dumps(wait_task(results, purge.id, timeout=60)))
            outputs.append(
                json.dumps(wait_task(results, failing.id, timeout=60, states=("FAILURE",)))
            )
        wait_for(
            lambda: "releasable.published" in worker.output(), timeout=30, what="a publication"
        )
        for args, code in (
            (("migrate",), 0),
            (("status",), 0),
            (("status", "--json"), 0),
            (("purge", "--dry-run"), 0),
            (("publish",), 0),
            (("list", "--account", "acc_s"), 0),
            (("list", "--account", "acc_nobody"), 2),  # account_not_found
        ):
            done = command(env, *args)
            assert done.exit_code == code, (args, done.stderr[-2000:])
            outputs += [done.stdout, done.stderr]
        # What `celery inspect conf` and Flower's Config tab show: every setting of ours.
        conf = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "worker", "inspect", "conf", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "redbeat_redis_url" in conf.stdout, conf.stderr[-2000:]
        outputs += [conf.stdout, conf.stderr]
        status = command(env, "status", "--json")
        outputs += [status.stdout, status.stderr]
        assert json.loads(status.stdout)["last_runs"]
        # Failures that carry the URLs: database down, Redis refusing the password ...
        closed = free_port()
        broken = [
            env | {"DATABASE_URL": f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{closed}/x"},
            env | {"REDIS_URL": f"redis://:{PG_PASSWORD}@127.0.0.1:{fault_redis.port}/0"},
        ]
        for broken_env, args in zip(broken, (("status",), ("publish",)), strict=True):
            failed = command(broken_env, *args)
            # The store or Redis unavailable: the 500 envelope, exit 1.
            assert failed.exit_code == 1, (args, failed.stdout, failed.stderr[-2000:])
            outputs += [failed.stdout, failed.stderr]
        # ... and a URL the settings refuse, in a process of the command's own (the exception
        # and its traceback as `python -m worker.cli` prints them).
        bad_url = f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:nope/x"
        done = cli(env | {"DATABASE_URL": bad_url}, "status")
        assert done.returncode == 1, (done.stdout, done.stderr[-2000:])
        outputs += [done.stdout, done.stderr]
        stored = redis_dump(results)
        results.close()
    finally:
        beat.stop()
        worker.stop()
    with pg_store.connect() as connection:
        summaries = [str(s) for s in connection.scalars(text("SELECT summary FROM purge_runs"))]
    places = {
        "worker log": worker.output(),
        "beat log": beat.output(),
        "task results and everything else in Redis": stored,
        "stored run summaries": "\n".join(summaries),
        "task results, CLI output and errors": "\n".join(outputs),
    }
    assert "purge.finished" in places["worker log"]
    assert stored
    assert summaries
    for where, content in places.items():
        for secret in secrets:
            assert secret not in content, f"a URL password leaked into the {where}"


@pytest.mark.processes(moved_clock=False)
def test_logged_exceptions_and_fields_are_redacted(tmp_path: Path) -> None:
    """A library's error record (exc_info, as Celery logs it) and a structlog field that
    carry a URL with a password: both rendered without it, the traceback kept."""
    script = """
import logging, structlog
from shared.settings import Settings
from worker.logs import configure_logging
configure_logging(Settings(log_format="json"))
url = "redis://:hunter2-secret@10.0.0.1:6379/0"
try:
    raise ConnectionError(f"cannot reach {url}")
except ConnectionError:
    logging.getLogger("celery.worker").exception("consumer failed for %s", url)
structlog.get_logger().info("connecting", url=url, nested={"urls": [url]})
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 2, done.stderr
    assert "hunter2-secret" not in done.stderr
    assert "Traceback" in lines[0]["exception"]
    assert "***" in lines[0]["exception"]
    assert lines[1]["nested"] == {"urls": ["redis://:***@10.0.0.1:6379/0"]}


def test_celery_takes_json_only() -> None:
    conf = app.conf
    assert list(conf.accept_content) == ["json"]
    assert list(conf.result_accept_content) == ["json"]
    assert (conf.task_serializer, conf.result_serializer, conf.event_serializer) == (
        "json",
        "json",
        "json",
    )
