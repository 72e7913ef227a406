"""One tool: snake_case JSON of the CLI's own, JSON from every command, plain control messages,
`events`, progress bars only on a terminal (issue 19, point 6). In this process (click's
runner, the settings a console-script call gets) where output and exit codes are the point; the
console script where a terminal or a signal is."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import Result

from shared.clock import utcnow
from shared.releasable.keys import STREAM
from tests.processes import cli_env, wait_for

CLI = str(Path(sys.executable).parent / "numbers-retention")
NUMBER = "+14155550123"
CAMEL = ("phoneNumber", "resolvedBy", "runId", "disconnectReason", "wasHeld")


Invoke = Callable[..., Result]
Runner = Callable[..., Result]


@pytest.fixture
def run(cli_in: Callable[..., Invoke]) -> Runner:
    """`run(data, *args, **settings)`: the command line in this process on the embedded store
    in `data`, with `settings`."""
    return lambda data, *args, **env: cli_in(data, **env)(*args)


@pytest.fixture
def ok(run: Runner) -> Callable[..., Any]:
    """`ok(data, *args, **settings)`: the command's JSON, once it exited 0."""

    def succeeded(data: Path, *args: str, **env: str) -> Any:
        done = run(data, *args, **env)
        assert done.exit_code == 0, done.stderr
        return json.loads(done.stdout)

    return succeeded


def envelope(done: Result | subprocess.CompletedProcess[str]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(done.stderr.strip().splitlines()[-1])
    return body


@pytest.fixture
def demo(tmp_path: Path, ok: Callable[..., Any]) -> Path:
    """A migrated embedded store with a few demo numbers and one of ours, active."""
    ok(tmp_path, "seed-demo", "--numbers", "20", "--accounts", "2")
    from shared import open_account, register_number
    from shared.db import make_engine, make_session_factory

    engine = make_engine(f"sqlite:///{tmp_path / 'numbers.db'}")
    with make_session_factory(engine).begin() as session:
        open_account(session, account_id="acc_cli", plan="paid")
        register_number(
            session,
            account_id="acc_cli",
            phone_number=NUMBER,
            country_code="US",
            number_type="local",
            monthly_price="1.00",
            now=utcnow() - timedelta(days=20),
        )
    engine.dispose()
    return tmp_path


def test_migrate_prints_json(tmp_path: Path, ok: Callable[..., Any]) -> None:
    body = ok(tmp_path, "migrate")
    assert body["migrated"] is True
    assert body["store"].startswith("sqlite:///")


def test_seed_demo_if_empty_prints_json_when_it_adds_nothing(
    demo: Path, ok: Callable[..., Any]
) -> None:
    assert ok(demo, "seed-demo", "--if-empty") == {"seeded": False, "reason": "store_not_empty"}


def test_hold_and_unhold_print_snake_case_and_unhold_says_whether_it_was_held(
    demo: Path, ok: Callable[..., Any]
) -> None:
    held = ok(demo, "hold", NUMBER, "--by", "ops")
    assert (held["phone_number"], held["held"]) == (NUMBER, True)
    assert not set(CAMEL) & set(held)
    lifted = ok(demo, "unhold", NUMBER)
    assert lifted == {"phone_number": NUMBER, "held": False, "was_held": True}
    again = ok(demo, "unhold", NUMBER)
    assert again == {"phone_number": NUMBER, "held": False, "was_held": False}


@pytest.mark.parametrize("command", ["hold", "unhold"])
def test_an_unknown_number_is_spoken_of_as_a_number_not_an_account(
    tmp_path: Path, run: Runner, command: str
) -> None:
    assert run(tmp_path, "migrate").exit_code == 0
    done = run(tmp_path, command, "+14155550999")
    assert done.exit_code == 2
    error = envelope(done)["error"]
    assert error["code"] == "number_not_found"
    assert "account" not in (error["message"] + error["fix"]).lower()
    assert "+14155550999" in error["message"]


def test_resolve_upstream_and_retry_upstream_print_snake_case(
    demo: Path, ok: Callable[..., Any]
) -> None:
    from shared import release_number
    from shared.db import make_engine, make_session_factory
    from tests.stores import fail_upstream

    engine = make_engine(f"sqlite:///{demo / 'numbers.db'}")
    released = utcnow() - timedelta(days=15)
    with make_session_factory(engine).begin() as session:
        release_number(session, account_id="acc_cli", phone_number=NUMBER, now=released)
        fail_upstream(session, NUMBER, permanent=True)
    retried = ok(demo, "retry-upstream", NUMBER)
    assert retried == {"phone_number": NUMBER, "retry": "next purge run"}
    with make_session_factory(engine).begin() as session:
        fail_upstream(session, NUMBER, permanent=True)
    engine.dispose()
    resolved = ok(demo, "resolve-upstream", NUMBER, "--reason", "settled", "--by", "ops")
    assert not set(CAMEL) & set(resolved)
    assert (resolved["phone_number"], resolved["resolved_by"]) == (NUMBER, "ops")


def test_a_second_pause_without_reason_keeps_the_first_reason(
    tmp_path: Path, run: Runner, ok: Callable[..., Any]
) -> None:
    assert run(tmp_path, "migrate").exit_code == 0
    first = ok(tmp_path, "pause", "--reason", "carrier audit", "--by", "ops")
    second = ok(tmp_path, "pause", "--by", "bob")
    assert second["reason"] == "carrier audit"
    assert (second["by"], second["at"]) == ("ops", first["at"])
    assert second["was_paused"] is True
    status = ok(tmp_path, "status", "--json")
    assert status["pause"]["reason"] == "carrier audit"
    replaced = ok(tmp_path, "pause", "--reason", "new reason", "--by", "bob")
    assert (replaced["reason"], replaced["by"], replaced["was_paused"]) == (
        "new reason",
        "bob",
        True,
    )


def test_events_without_redis_says_where_events_are(tmp_path: Path, run: Runner) -> None:
    done = run(tmp_path, "events")
    assert done.exit_code == 2
    error = envelope(done)["error"]
    assert error["code"] == "no_event_stream"
    assert "REDIS_URL" in error["fix"]
    assert "Traceback" not in done.stderr


def test_a_piped_seed_demo_prints_no_progress_bar(tmp_path: Path, run: Runner) -> None:
    done = run(tmp_path, "seed-demo", "--numbers", "300", "--accounts", "3")
    assert done.exit_code == 0, done.stderr
    assert "%" not in done.stderr
    assert "\r" not in done.stderr
    assert json.loads(done.stdout)["numbers"] == 300


def on_a_terminal(
    data: Path, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """The console script with stderr on a terminal (a pty): its result, and what it drew."""
    main, child = pty.openpty()
    try:
        done = subprocess.run(
            [CLI, *args],
            env=cli_env(data, **env),
            stdout=subprocess.PIPE,
            stderr=child,
            text=True,
            timeout=60,
        )
        os.close(child)
        child = -1
        drawn = b""
        while select.select([main], [], [], 0.5)[0]:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the pty's other end is closed: all was read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(main)
        if child != -1:
            os.close(child)
    return done, drawn


@pytest.mark.processes(moved_clock=False)
def test_seed_demo_on_a_terminal_shows_a_progress_bar(tmp_path: Path) -> None:
    """The same command with stderr on a terminal (a pty) draws the bar there."""
    done, drawn = on_a_terminal(tmp_path, "seed-demo", "--numbers", "300", "--accounts", "3")
    assert done.returncode == 0
    assert json.loads(done.stdout)["numbers"] == 300
    assert b"seeding demo numbers" in drawn
    assert b"100%" in drawn


@pytest.mark.redis
@pytest.mark.processes(moved_clock=False)
@pytest.mark.parametrize(
    ("command", "label", "counted"),
    [("purge", b"purging", "purged"), ("publish", b"publishing", "published")],
)
def test_a_foreground_purge_or_publish_draws_a_bar_on_a_terminal_and_none_in_a_pipe(
    tmp_path: Path,
    redis_url: str,
    redis_client: Any,
    command: str,
    label: bytes,
    counted: str,
    run: Runner,
    ok: Callable[..., Any],
) -> None:
    ok(tmp_path, "seed-demo", "--numbers", "300", "--accounts", "3")
    done, drawn = on_a_terminal(tmp_path, command, REDIS_URL=redis_url)
    assert done.returncode == 0, drawn[-2000:]
    assert json.loads(done.stdout)[counted] > 0
    assert label in drawn
    assert b"100%" in drawn
    piped = run(tmp_path, command, REDIS_URL=redis_url)
    assert piped.exit_code == 0, piped.stderr
    assert label.decode() not in piped.stderr
    assert "\r" not in piped.stderr


@pytest.fixture
def stream(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url)
    client.delete(STREAM)
    yield client
    client.delete(STREAM)
    client.close()


def _entry(client: redis.Redis, event_id: int) -> str:
    fields = {
        "id": event_id,
        "kind": "released",
        "phone_number": NUMBER,
        "account_id": "acc_cli",
        "number_id": 7,
        "occurred_at": "2026-12-05T12:00:00Z",
    }
    return str(client.xadd(STREAM, fields).decode())  # type: ignore[union-attr]


def test_events_reads_the_stream_since_an_id(
    tmp_path: Path, stream: redis.Redis, redis_url: str, run: Runner
) -> None:
    first, second = _entry(stream, 1), _entry(stream, 2)
    every = run(tmp_path, "events", "--json", REDIS_URL=redis_url)
    assert every.exit_code == 0, every.stderr
    lines = [json.loads(line) for line in every.stdout.splitlines()]
    assert [line["stream_id"] for line in lines] == [first, second]
    assert lines[0]["kind"] == "released"
    assert lines[0]["phone_number"] == NUMBER
    later = run(tmp_path, "events", "--json", "--since", first, REDIS_URL=redis_url)
    assert [json.loads(line)["stream_id"] for line in later.stdout.splitlines()] == [second]
    bad = run(tmp_path, "events", "--since", "yesterday", REDIS_URL=redis_url)
    assert bad.exit_code == 2
    assert envelope(bad)["error"]["code"] == "invalid_since"
    table = run(tmp_path, "events", REDIS_URL=redis_url)
    assert table.exit_code == 0
    assert NUMBER in table.stdout
    assert "released" in table.stdout


@pytest.mark.processes(moved_clock=False)
def test_events_follow_prints_new_entries_until_sigterm(
    tmp_path: Path, stream: redis.Redis, redis_url: str
) -> None:
    _entry(stream, 1)  # older than the command: --follow without --since starts after it
    db = stream.connection_pool.connection_kwargs["db"]  # other suites' clients block too
    with subprocess.Popen(
        [CLI, "events", "--follow", "--json"],
        env=cli_env(tmp_path, REDIS_URL=redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            # Not a fixed sleep: on a busy machine the command read the stream's last id after
            # the entry was added (it then waits after it, as it should) and the test hung.
            wait_for(
                lambda: any(
                    c["cmd"] == "xread" and c["db"] == str(db) for c in stream.client_list()
                ),
                timeout=60,
                interval=0.05,
                what="the command to block on XREAD",
            )
            added = _entry(stream, 3)
            assert process.stdout is not None
            assert json.loads(process.stdout.readline())["stream_id"] == added
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=10)
            assert process.returncode == 0, err
            assert out == ""
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
