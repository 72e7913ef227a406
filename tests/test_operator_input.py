"""What operators and callers hand in: two operators at once, the purge's bounds, and text
that would run on a terminal when `status` or `holds` prints it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from click.testing import Result
from jsonschema import Draft202012Validator
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared.controls import pause_purge, set_pace
from shared.db import make_session_factory
from shared.holds import hold_number
from shared.models import PhoneNumber, PurgeControl, PurgeRun
from tests.factories import NOW, make_number, snapshot
from tests.purging import purge_expired

Factory = sessionmaker[Session]
Invoke = Callable[..., Result]
ESCAPE = "\x1b[2J\x1b]0;pwned\x07"  # clear the screen, retitle the terminal


def _lock_waiters(engine: Engine) -> int:
    """Sessions of this database waiting on a lock."""
    with engine.connect() as connection:
        return int(
            connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        )


@pytest.mark.postgres
@pytest.mark.parametrize(
    "act",
    [
        lambda session, by: pause_purge(session, by=by, reason=f"audit by {by}"),
        lambda session, by: set_pace(session, rows_per_second=100, by=by),
    ],
    ids=["pause", "pace"],
)
def test_two_operators_storing_a_control_at_once_both_succeed(
    pg_store: Engine, act: Callable[[Session, str], dict[str, Any]]
) -> None:
    """The second finds no row to lock, inserts, and waits on the first's uncommitted one:
    once the first commits, it stores its own record over it instead of failing on the name."""
    factory = make_session_factory(pg_store)
    outcome: dict[str, Any] = {}
    with factory.begin() as first:
        act(first, "alice")

        def second() -> None:
            try:
                with factory.begin() as session:
                    outcome["answer"] = act(session, "bob")
            except Exception as error:  # noqa: BLE001 - the test reports it
                outcome["error"] = error

        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 30
        while _lock_waiters(pg_store) == 0 and thread.is_alive():
            assert time.monotonic() < deadline, "the second operator never waited"
            time.sleep(0.01)
    thread.join(timeout=30)
    assert "error" not in outcome, repr(outcome.get("error"))
    with factory() as session:
        control = session.scalars(select(PurgeControl)).one()
        assert control.set_by == "bob"  # the later act wins, as one after the other would


BAD_BOUNDS = [
    ({"batch_size": 0}, "invalid_batch_size"),
    ({"batch_size": -5}, "invalid_batch_size"),
    ({"batch_size": "10"}, "invalid_batch_size"),
    ({"batch_size": True}, "invalid_batch_size"),
    ({"batch_size": 2.5}, "invalid_batch_size"),
    ({"max_rows": 0}, "invalid_max_rows"),
    ({"max_seconds": 0}, "invalid_max_seconds"),
    ({"max_seconds": float("nan")}, "invalid_max_seconds"),
    ({"max_seconds": float("inf")}, "invalid_max_seconds"),
    ({"max_seconds": "60"}, "invalid_max_seconds"),
    ({"dry_run": "no"}, "invalid_dry_run"),
    ({"dry_run": 0}, "invalid_dry_run"),
    ({"paused": "yes"}, "invalid_paused"),
]


def test_purge_expired_refuses_bad_bounds_and_changes_nothing(
    session_factory: Factory, error_validator: Draft202012Validator
) -> None:
    with session_factory.begin() as session:
        make_number(
            session,
            account_id="acc_a",
            phone_number="+14155550301",
            released_at=NOW - timedelta(days=20),
        )
    with session_factory() as session:
        before = snapshot(session)
    for kwargs, code in BAD_BOUNDS:
        with pytest.raises(shared.ValidationError) as refused:
            purge_expired(session_factory, now=NOW, **kwargs)
        assert refused.value.code == code, kwargs
        assert refused.value.fix
        error_validator.validate(refused.value.body())
    with session_factory() as session:
        assert snapshot(session) == before  # no run recorded, nothing purged
    # The same bounds, well formed, are taken.
    report = purge_expired(session_factory, now=NOW, batch_size=10, max_rows=5, max_seconds=60)
    assert (report.status, report.purged) == ("completed", 1)


@pytest.mark.parametrize("reason", [ESCAPE, "line\nbreak", "tab\there", "\u202eoverride"])
def test_a_reason_must_be_one_printable_line(session: Session, reason: str) -> None:
    make_number(session, account_id="acc_a", phone_number="+14155550302")
    before = snapshot(session)
    acts = [
        lambda: pause_purge(session, by="alice", reason=reason),
        lambda: set_pace(session, rows_per_second=10, by="alice", reason=reason),
        lambda: hold_number(session, phone_number="+14155550302", by="alice", reason=reason),
    ]
    for act in acts:
        with pytest.raises(shared.ValidationError) as refused:
            act()
        assert refused.value.code == "invalid_reason"
        assert snapshot(session) == before


@pytest.fixture
def cli(engine: Engine, cli_on: Callable[..., Invoke]) -> Invoke:
    """`numbers-retention ARGS...` in this process, on the test store (no Redis)."""
    return cli_on(engine, REDIS_URL="")


def test_status_and_holds_escape_control_characters_in_stored_text(
    session_factory: Factory, cli: Invoke
) -> None:
    """Text stored before input was checked (or written by other means) prints escaped."""
    with session_factory.begin() as session:
        make_number(session, account_id="acc_a", phone_number="+14155550303")
        hold_number(session, phone_number="+14155550303", by="alice", reason="dispute")
        pause_purge(session, by="alice", reason="audit")
        session.execute(update(PhoneNumber).values(hold_reason=ESCAPE))
        session.execute(update(PurgeControl).values(reason=ESCAPE))
    purge_expired(session_factory, now=NOW)  # a paused run: its reason quotes the pause's
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(PurgeRun)) == 1
    for args in (["status", "--now", NOW.isoformat()], ["holds", "--now", NOW.isoformat()]):
        done = cli(*args)
        assert done.exit_code == 0, done.output
        assert "\x1b" not in done.output
        assert "\x07" not in done.output
        assert "\\x1b[2J\\x1b]0;pwned\\x07" in done.output
    # JSON escapes them by itself, and keeps the text as stored.
    assert "\x1b" not in cli("holds", "--json").output
