"""`numbers-retention api-key create|revoke|list` in this process, on the PostgreSQL store."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from click.testing import Result
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from shared.api_keys import account_for_key, hash_key
from shared.models import ApiKey
from tests.factories import ensure_account

pytestmark = pytest.mark.postgres

Invoke = Callable[..., Result]


@pytest.fixture
def cli(pg_factory: sessionmaker[Session], cli_on: Callable[..., Invoke]) -> Invoke:
    """`numbers-retention ARGS...` in this process on the store, with accounts acc_a, acc_b."""
    with pg_factory.begin() as session:
        ensure_account(session, "acc_a")
        ensure_account(session, "acc_b")
    engine = pg_factory.kw["bind"]
    assert isinstance(engine, Engine)
    return cli_on(engine)


def test_create_prints_the_key_once_and_stores_its_hash(
    cli: Invoke, pg_factory: sessionmaker[Session]
) -> None:
    done = cli("api-key", "create", "--account", "acc_a")
    assert done.exit_code == 0, done.stderr
    created = json.loads(done.stdout)
    assert set(created) == {"account_id", "key"}
    assert created["account_id"] == "acc_a"
    key = created["key"]
    with pg_factory() as session:
        row = session.scalars(select(ApiKey)).one()
        assert account_for_key(session, key) == "acc_a"
    assert row.key_hash == hash_key(key)
    assert key not in (row.id, row.key_hash)
    listed = cli("api-key", "list")
    assert key not in listed.stdout
    assert [entry["key_id"] for entry in json.loads(listed.stdout)] == [row.id]


def test_list_by_account_and_revoke_by_key_or_id(
    cli: Invoke, pg_factory: sessionmaker[Session]
) -> None:
    first = json.loads(cli("api-key", "create", "--account", "acc_a").stdout)["key"]
    second = json.loads(cli("api-key", "create", "--account", "acc_a").stdout)["key"]
    json.loads(cli("api-key", "create", "--account", "acc_b").stdout)
    listed = json.loads(cli("api-key", "list", "--account", "acc_a").stdout)
    assert {entry["account_id"] for entry in listed} == {"acc_a"}
    assert len(listed) == 2

    revoked = cli("api-key", "revoke", first)
    assert revoked.exit_code == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked_at"] is not None
    by_id = next(entry["key_id"] for entry in listed if second.startswith(entry["key_id"]))
    assert cli("api-key", "revoke", by_id).exit_code == 0
    with pg_factory() as session:
        assert account_for_key(session, first) is None
        assert account_for_key(session, second) is None
    # Revoking again changes nothing; the list shows when.
    assert cli("api-key", "revoke", first).exit_code == 0
    assert all(
        entry["revoked_at"]
        for entry in json.loads(cli("api-key", "list", "--account", "acc_a").stdout)
    )


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["api-key", "create", "--account", "acc_nobody"], "account_not_found"),
        (["api-key", "revoke", "nrk_unknown-key-value"], "api_key_not_found"),
        (["api-key", "revoke", "not-a-key"], "api_key_not_found"),
    ],
)
def test_bad_input_is_the_envelope_and_changes_nothing(
    cli: Invoke, pg_factory: sessionmaker[Session], args: list[str], code: str
) -> None:
    done = cli(*args)
    assert done.exit_code == 2
    assert json.loads(done.stderr)["error"]["code"] == code
    with pg_factory() as session:
        assert session.scalars(select(ApiKey)).all() == []
