"""The publication's record in Redis: last success, failure marker, and `status` showing both."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
from click.testing import Result
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.orm import Session

from shared.releasable.keys import meta_key
from shared.releasable.reconcile import reconcile_releasable
from shared.releasable.record import reconciliation_status, recording_failures
from tests.factories import NOW, make_number
from tests.servers import free_port
from worker.tasks import RECONCILE_REQUESTED

pytestmark = pytest.mark.redis
Invoke = Callable[..., Result]
CliIn = Callable[..., Invoke]


class Broken(RuntimeError):
    """What a publication raises in these tests."""


def test_nothing_published_yet(redis_client: redis.Redis) -> None:
    assert reconciliation_status(redis_client, now=NOW) == {
        "last_success_at": None,
        "age_seconds": None,
        "published": None,
        "failing": False,
        "last_failure_at": None,
        "last_failure": None,
    }


def test_a_failure_is_marked_until_the_next_success(
    session: Session, redis_client: redis.Redis
) -> None:
    make_number(session, account_id="acc_1", phone_number="+14155550101", released_at=NOW)
    with pytest.raises(Broken), recording_failures(redis_client):
        raise Broken("the store went away")
    failed = reconciliation_status(redis_client)
    assert (failed["failing"], failed["last_failure"], failed["last_success_at"]) == (
        True,
        "Broken",
        None,
    )

    with recording_failures(redis_client):
        summary = reconcile_releasable(session, redis_client, now=NOW)
    later = datetime.fromisoformat(summary["generated_at"]) + timedelta(seconds=90)
    published = reconciliation_status(redis_client, now=later)
    assert published["failing"] is False
    assert published["last_success_at"] == summary["generated_at"]
    assert published["age_seconds"] == 90
    assert published["published"] == 1
    # The older failure stays on record; it no longer counts as failing.
    assert published["last_failure"] == "Broken"

    with pytest.raises(Broken), recording_failures(redis_client):
        raise Broken
    assert reconciliation_status(redis_client)["failing"] is True


def test_a_failure_while_redis_is_down_still_propagates_the_original_error() -> None:
    # No retries: a client that gives up on its first refused connection (the defaults retry
    # with backoff for seconds; what is tested is the same).
    client = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    with pytest.raises(Broken), recording_failures(client):
        raise Broken


def test_the_marker_keeps_the_error_type_only(redis_client: redis.Redis) -> None:
    secret = "postgresql://retention:hunter2@db/retention"
    with pytest.raises(Broken), recording_failures(redis_client):
        raise Broken(f"could not connect to {secret}")
    stored = redis_client.hgetall(meta_key())
    assert b"hunter2" not in b"".join([*stored.keys(), *stored.values()])


@pytest.mark.postgres
def test_status_shows_the_publication_and_a_failing_publish(
    pg_url: str,
    pg_factory: object,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    cli_in: CliIn,
) -> None:
    settings = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url}

    def cli(*args: str) -> Result:
        return cli_in(tmp_path, **settings)(*args)

    def status() -> dict[str, object]:
        done = cli("status", "--json")
        assert done.exit_code == 0, done.stderr
        report: dict[str, object] = json.loads(done.stdout)
        return report

    assert status()["publication"] == {"reachable": True, **reconciliation_status(redis_client)}

    published = cli("publish")
    assert published.exit_code == 0, published.stderr
    publication = status()["publication"]
    assert isinstance(publication, dict)
    assert publication["failing"] is False
    assert publication["last_success_at"] == json.loads(published.stdout)["generated_at"]
    table = cli("status").stdout
    assert "  Last published           " in table
    assert "FAILED" not in table

    # The store is unmigrated here: the publication fails and says so.
    (tmp_path / "empty.db").touch()
    broken = cli_in(tmp_path, **settings | {"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"})
    failed = broken("publish")
    assert failed.exit_code == 1
    assert json.loads(failed.stderr)["error"]["code"] == "store_not_migrated"
    publication = status()["publication"]
    assert isinstance(publication, dict)
    assert (publication["failing"], publication["last_failure"]) == (True, "OperationalError")
    table = cli("status").stdout
    assert "; the latest attempt FAILED at " in table
    assert "(OperationalError)" in table


@pytest.mark.redis
def test_publish_from_the_cli_settles_the_relays_pending_request(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, cli_in: CliIn
) -> None:
    cli = cli_in(tmp_path, REDIS_URL=redis_url)
    assert cli("migrate").exit_code == 0
    # The relay found no publication and asked for one: this reconciliation is it.
    redis_client.set(RECONCILE_REQUESTED, 1, ex=600)
    done = cli("publish")
    assert done.exit_code == 0, done.stderr
    assert not redis_client.exists(RECONCILE_REQUESTED)


def test_status_says_when_redis_is_unreachable(tmp_path: Path, cli_in: CliIn) -> None:
    cli = cli_in(tmp_path, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert cli("migrate").exit_code == 0
    done = cli("status", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["publication"] == {"reachable": False}


def test_status_without_redis_has_no_publication(tmp_path: Path, cli_in: CliIn) -> None:
    cli = cli_in(tmp_path)
    assert cli("migrate").exit_code == 0
    done = cli("status", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["publication"] is None


def test_publish_with_redis_unreachable_prints_the_envelope_without_the_password(
    tmp_path: Path, cli_in: CliIn
) -> None:
    port = free_port()
    cli = cli_in(tmp_path, REDIS_URL=f"redis://:s3cret-pw@127.0.0.1:{port}/0")
    assert cli("migrate").exit_code == 0
    done = cli("publish")
    assert done.exit_code == 1
    assert "Traceback" not in done.stderr
    error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "redis_unavailable"
    assert f"redis://:***@127.0.0.1:{port}/0" in error["message"]
    assert "REDIS_URL" in error["fix"]
    assert "s3cret-pw" not in done.stderr + done.stdout
