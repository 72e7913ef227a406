"""`numbers-retention status`, `hold` and `unhold`, as an operator or a cron job runs them (in
this process: click's runner, with the settings a console-script call gets)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import Engine, func, select, update

from shared import migrate
from shared.db import make_engine, make_session_factory
from shared.models import PhoneNumber
from shared.purge import PURGE_LOCK_KEY
from tests.factories import NOW, make_number
from tests.stores import fail_upstream
from worker.cli.errors import LAG_EXIT_CODE, LOCKED_EXIT_CODE, PAUSED_LAG_EXIT_CODE
from worker.cli.render import format_duration, parse_duration, status_table

Invoke = Callable[..., Result]
DAY = timedelta(days=1)
OVERDUE = ["+14155550101", "+14155550102", "+14155550103"]
FRESH = "+14155550201"


@dataclass
class Store:
    """The settings under which the CLI uses a migrated store (`cli_in`'s)."""

    cli_in: Callable[..., Invoke]
    data: Path
    settings: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str) -> Result:
        return self.cli_in(self.data, **self.settings)(*args)

    def status(self, *args: str, exit_code: int = 0) -> dict[str, Any]:
        done = self.cli("status", "--json", "--now", NOW.isoformat(), *args)
        assert done.exit_code == exit_code, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report


@pytest.fixture
def sqlite_default(tmp_path: Path) -> Iterator[Engine]:
    """The SQLite file the CLI falls back to under NUMBERS_RETENTION_DATA, migrated."""
    engine = make_engine(f"sqlite:///{tmp_path / 'numbers.db'}")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def _store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The CLI's settings on an empty store of `backend`, three numbers overdue, one fresh."""
    engine: Engine
    cli_in = request.getfixturevalue("cli_in")
    if backend == "postgresql":
        engine = request.getfixturevalue("pg_store")
        store = Store(cli_in, tmp_path, {"DATABASE_URL": request.getfixturevalue("pg_url")})
    else:
        # No DATABASE_URL: the CLI falls back to the SQLite file under NUMBERS_RETENTION_DATA.
        engine = request.getfixturevalue("sqlite_default")
        store = Store(cli_in, tmp_path)
    with make_session_factory(engine).begin() as session:
        for number in OVERDUE:
            # Released 15 days before NOW: one day past the deadline.
            make_number(
                session, account_id="acc_1", phone_number=number, released_at=NOW - 15 * DAY
            )
        make_number(session, account_id="acc_1", phone_number=FRESH, released_at=NOW - 2 * DAY)
    return store


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("sqlite-default"),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """PostgreSQL through DATABASE_URL, or the embedded default with no configuration at all."""
    return _store(request.param, request, tmp_path)


@pytest.fixture
def pg_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return _store("postgresql", request, tmp_path)


@pytest.fixture
def sqlite_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return _store("sqlite-default", request, tmp_path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("0", 0),
        ("2.5", 2.5),
        ("90s", 90),
        ("30m", 30 * 60),
        ("2h", 2 * 3600),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1d12h", 129600),
        ("1.5h", 5400),
        (" 2H ", 7200),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    ["", "h", "abc", "-5m", "5x", "1h-", "1 h", "inf", "nan", "1e3", "5m 3s", "9" * 20 + "d"],
)
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.4, "0s"), (40, "40s"), (725, "12m 5s"), (3600, "1h"), (93784, "1d 2h")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_max_lag_exits_non_zero_on_a_lagging_backlog_and_zero_after_a_purge(store: Store) -> None:
    # The oldest overdue number is exactly one day past its deadline.
    lagging = store.status("--max-lag", "86399", exit_code=LAG_EXIT_CODE)
    assert {key: lagging[key] for key in ("overdue", "held", "releasable", "upstream_failed")} == {
        "overdue": 3,
        "held": 0,
        "releasable": 1,
        "upstream_failed": 0,
    }
    assert lagging["oldest_overdue_seconds"] == 86400
    assert (lagging["max_lag_seconds"], lagging["lagging"]) == (86399, True)
    assert lagging["last_runs"] == []

    # At the limit is not over it; the table is what a person on a terminal reads.
    table = store.cli("status", "--now", NOW.isoformat(), "--max-lag", "1d")
    assert table.exit_code == 0, table.stderr
    assert "Overdue (purgeable now)  3\n" in table.stdout
    assert "1d past its deadline (released 2025-11-12 12:00:00Z)" in table.stdout
    assert "Lag limit                1d: ok" in table.stdout

    purged = store.cli("purge", "--now", NOW.isoformat())
    assert purged.exit_code == 0, purged.stderr
    run_id = json.loads(purged.stdout)["run_id"]

    caught_up = store.status("--max-lag", "2h")
    assert (caught_up["overdue"], caught_up["oldest_overdue_seconds"]) == (0, 0)
    assert (caught_up["lagging"], caught_up["releasable"]) == (False, 1)
    [run] = caught_up["last_runs"]
    assert (run["run_id"], run["status"], run["purged"], run["remaining"]) == (
        run_id,
        "completed",
        3,
        0,
    )


def test_lagging_status_tells_why_on_stderr(sqlite_cli: Store) -> None:
    over = sqlite_cli.cli("status", "--now", NOW.isoformat(), "--max-lag", "2h")
    assert over.exit_code == LAG_EXIT_CODE
    assert "Lag limit                2h: LAGGING" in over.stdout
    assert over.stderr.strip() == (
        "purging lags: the oldest overdue number is 1d past its deadline,"
        " over the 2h limit (--max-lag)."
    )


@pytest.mark.postgres
def test_hold_keeps_a_number_from_the_purge_until_unhold(pg_cli: Store) -> None:
    held = pg_cli.cli("hold", OVERDUE[0], "--reason", "billing dispute #42", "--by", "ops")
    assert held.exit_code == 0, held.stderr
    body = json.loads(held.stdout)
    assert body | {"at": None} == {
        "phone_number": OVERDUE[0],
        "held": True,
        "reason": "billing dispute #42",
        "by": "ops",
        "at": None,
    }
    [listed] = json.loads(pg_cli.cli("holds", "--json", "--now", NOW.isoformat()).stdout)
    assert listed == {
        "phone_number": OVERDUE[0],
        "account_id": "acc_1",
        "billing_status": "released",
        "released_at": "2025-11-12T12:00:00Z",
        "deadline": "2025-11-26T12:00:00Z",
        "overdue": True,
        "reason": "billing dispute #42",
        "by": "ops",
        "at": body["at"],
    }
    table = pg_cli.cli("holds", "--now", NOW.isoformat())
    assert table.stdout.splitlines()[1].split()[:4] == [
        OVERDUE[0],
        "acc_1",
        "released",
        "(overdue)",
    ]
    assert table.stdout.rstrip().endswith("ops  billing dispute #42")

    purged = pg_cli.cli("purge", "--now", NOW.isoformat())
    assert purged.exit_code == 0, purged.stderr
    assert json.loads(purged.stdout)["purged"] == 2
    report = pg_cli.status()
    assert (report["overdue"], report["held"]) == (0, 1)

    lifted = pg_cli.cli("unhold", OVERDUE[0])
    assert lifted.exit_code == 0, lifted.stderr
    assert json.loads(lifted.stdout) == {
        "phone_number": OVERDUE[0],
        "held": False,
        "was_held": True,
    }
    assert pg_cli.cli("holds").stdout == "No number is on hold.\n"
    report = pg_cli.status("--max-lag", "1h", exit_code=LAG_EXIT_CODE)
    assert (report["overdue"], report["held"], report["oldest_overdue_seconds"]) == (1, 0, 86400)


def test_max_lag_while_paused_says_so_and_exits_with_its_own_code(sqlite_cli: Store) -> None:
    assert sqlite_cli.cli("pause", "--reason", "carrier audit", "--by", "ops").exit_code == 0
    over = sqlite_cli.cli("status", "--now", NOW.isoformat(), "--max-lag", "2h")
    assert over.exit_code == PAUSED_LAG_EXIT_CODE
    assert "Lag limit                2h: LAGGING (paused)" in over.stdout
    assert over.stderr.strip() == (
        "purging is paused (by ops: carrier audit): the oldest overdue number is 1d past its"
        " deadline, over the 2h limit (--max-lag)."
    )
    # Within the limit, a pause alone is no alert.
    assert sqlite_cli.cli("status", "--now", NOW.isoformat(), "--max-lag", "2d").exit_code == 0
    assert sqlite_cli.cli("resume").exit_code == 0
    assert sqlite_cli.status("--max-lag", "2h", exit_code=LAG_EXIT_CODE)["lagging"] is True


def test_pause_stops_every_run_until_resume_and_status_says_who_and_why(store: Store) -> None:
    paused = store.cli("pause", "--reason", "carrier audit", "--by", "ops")
    assert paused.exit_code == 0, paused.stderr
    assert json.loads(paused.stdout) | {"at": None} == {
        "paused": True,
        "reason": "carrier audit",
        "by": "ops",
        "at": None,
        "was_paused": False,
    }
    report = store.status()
    assert report["paused"] is True
    assert (report["pause"]["by"], report["pause"]["reason"]) == ("ops", "carrier audit")

    run = store.cli("purge", "--now", NOW.isoformat())
    assert run.exit_code == 0, run.stderr
    summary = json.loads(run.stdout)
    assert (summary["status"], summary["purged"], summary["remaining"]) == ("paused", 0, 3)
    assert summary["reason"] == "paused by ops: carrier audit"
    assert store.status()["overdue"] == 3

    resumed = store.cli("resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {"paused": False, "was_paused": True}
    assert store.status()["paused"] is False
    run = store.cli("purge", "--now", NOW.isoformat())
    assert json.loads(run.stdout)["purged"] == 3
    again = store.cli("resume")
    assert json.loads(again.stdout) == {"paused": False, "was_paused": False}


def test_a_bad_pause_reason_is_refused_with_the_envelope(sqlite_cli: Store) -> None:
    done = sqlite_cli.cli("pause", "--reason", "x" * 501)
    assert done.exit_code == 2
    assert json.loads(done.stderr)["error"]["code"] == "invalid_reason"
    assert sqlite_cli.status()["paused"] is False


def test_hold_of_an_unknown_or_malformed_number_prints_the_error_envelope(
    sqlite_cli: Store,
) -> None:
    for number, code in [
        ("+14155559999", "number_not_found"),
        ("4155550101", "invalid_phone_number"),
    ]:
        done = sqlite_cli.cli("hold", number)
        assert done.exit_code == 2
        assert json.loads(done.stderr.strip().splitlines()[-1])["error"]["code"] == code


def test_a_bad_max_lag_is_a_usage_error(tmp_path: Path, cli_in: Callable[..., Invoke]) -> None:
    done = cli_in(tmp_path)("status", "--max-lag", "soon")
    assert done.exit_code == 2
    error = json.loads(done.stderr)["error"]
    assert error["code"] == "invalid_usage"
    assert "'soon' is not a duration" in error["message"]


def test_status_table_lists_runs_with_their_notes() -> None:
    report = {
        "now": "2026-11-27T12:00:00.5Z",
        "overdue": 0,
        "oldest_overdue_seconds": 0.0,
        "oldest_overdue_released_at": None,
        "held": 2,
        "releasable": 12345,
        "upstream_failed": 0,
        "upstream_permanent": 0,
        "upstream_claimed": 0,
        "upstream_refused_person": 0,
        "upstream_refused_carrier": 0,
        "upstream_stuck": [],
        "paused": True,
        "pause": {"reason": "carrier audit", "by": "ops", "at": "2026-11-27T11:40:00Z"},
        "last_runs": [
            {
                "started_at": "2026-11-27T11:45:00.123Z",
                "status": "paused",
                "purged": 0,
                "batches": 0,
                "remaining": 7,
                "seconds": 0.01,
                "reason": "PURGE_PAUSED is set",
            },
            {
                "started_at": "2026-11-27T11:30:00Z",
                "status": "running",
                "purged": 5000,
                "batches": 1,
                "remaining": None,
                "seconds": None,
                "reason": None,
            },
        ],
    }
    assert status_table(report).splitlines() == [
        "Retention status at 2026-11-27 12:00:00Z",
        "",
        "  Paused                   yes, by ops since 2026-11-27 11:40:00Z: carrier audit",
        "  Overdue (purgeable now)  0",
        "  Oldest overdue           -",
        "  On hold                  2",
        "  Releasable               12,345",
        "  Upstream failed          0 (0 need a person)",
        "  Refused by the carrier   0 (0 waiting on a person, 0 on the carrier)",
        "  Claimed, not yet called  0",
        "",
        "Last purge runs",
        "  STARTED               STATUS   PURGED  BATCHES  REMAINING  TOOK  NOTE",
        "  2026-11-27 11:45:00Z  paused        0        0          7  0.0s  PURGE_PAUSED is set",
        "  2026-11-27 11:30:00Z  running   5,000        1          -     -",
    ]


def test_dry_runs_never_push_real_runs_out_of_the_list(store: Store) -> None:
    purged = store.cli("purge", "--now", NOW.isoformat())
    assert purged.exit_code == 0, purged.stderr
    real = json.loads(purged.stdout)
    for _ in range(3):
        dry = store.cli("purge", "--dry-run", "--now", (NOW + 30 * DAY).isoformat())
        assert dry.exit_code == 0, dry.stderr
    last_dry = json.loads(dry.stdout)

    report = store.status("--runs", "2")
    assert [run["run_id"] for run in report["last_runs"]] == [real["run_id"]]
    assert report["last_dry_run"]["run_id"] == last_dry["run_id"]
    assert report["last_dry_run"]["status"] == "dry_run"
    # The fresh number is overdue 30 days on: the dry run looked ahead and left it.
    assert report["last_dry_run"]["remaining"] == 1
    # The last success and the totals are the real runs' only.
    assert report["purge_last_success_at"] == report["last_runs"][0]["finished_at"]
    assert report["purged_total"] == 3
    finished = report["last_finished_run"]
    assert (finished["run_id"], finished["purged"]) == (real["run_id"], 3)
    assert finished["seconds"] == real["seconds"]
    assert finished["worst_batch_ms"] == real["worst_batch_ms"]

    table = store.cli("status", "--now", NOW.isoformat()).stdout
    assert "  Last dry run " in table
    assert ": 1 would be purged" in table


@pytest.mark.postgres
def test_a_purge_that_finds_the_lock_taken_exits_with_its_own_code(
    pg_cli: Store, pg_engine: Engine
) -> None:
    with pg_engine.connect() as other_run:
        assert other_run.scalar(select(func.pg_try_advisory_lock(PURGE_LOCK_KEY)))
        try:
            done = pg_cli.cli("purge", "--now", NOW.isoformat())
        finally:
            other_run.scalar(select(func.pg_advisory_unlock(PURGE_LOCK_KEY)))
    assert done.exit_code == LOCKED_EXIT_CODE == 4
    summary = json.loads(done.stdout)
    assert (summary["status"], summary["reason"], summary["purged"]) == ("skipped", "locked", 0)
    assert "another run holds the lock" in done.stderr
    assert pg_cli.status()["overdue"] == 3
    assert pg_cli.cli("purge", "--now", NOW.isoformat()).exit_code == 0


def _fail_upstream(engine: Engine, failures: dict[str, tuple[str, bool]]) -> None:
    """Leave numbers claimed with a provider error, as a failed upstream release does."""
    with make_session_factory(engine).begin() as session:
        for phone_number, (provider_code, permanent) in failures.items():
            fail_upstream(session, phone_number, permanent=permanent, provider_code=provider_code)


@pytest.mark.postgres
def test_retry_upstream_clears_many_numbers_at_once(pg_cli: Store, pg_engine: Engine) -> None:
    _fail_upstream(
        pg_engine,
        {
            OVERDUE[0]: ("10009", True),
            OVERDUE[1]: ("10009", True),
            OVERDUE[2]: ("10007", True),
        },
    )
    assert pg_cli.status()["upstream_permanent"] == 3

    bad_key = pg_cli.cli("retry-upstream", "--all-permanent", "--provider-code", "10009")
    assert bad_key.exit_code == 0, bad_key.stderr
    assert json.loads(bad_key.stdout) == {
        "retry": "next purge run",
        "count": 2,
        "numbers": OVERDUE[:2],
    }
    report = pg_cli.status()
    assert (report["upstream_failed"], report["upstream_permanent"]) == (3, 1)

    # One transaction: a number without a failure leaves the others as they were.
    mixed = pg_cli.cli("retry-upstream", OVERDUE[2], FRESH)
    assert mixed.exit_code == 2
    assert json.loads(mixed.stderr)["error"]["code"] == "no_upstream_failure"
    assert pg_cli.status()["upstream_permanent"] == 1

    rest = pg_cli.cli("retry-upstream", "--all-permanent")
    assert json.loads(rest.stdout)["numbers"] == [OVERDUE[2]]
    assert pg_cli.status()["upstream_permanent"] == 0
    one = pg_cli.cli("retry-upstream", OVERDUE[0])
    assert json.loads(one.stdout) == {"phone_number": OVERDUE[0], "retry": "next purge run"}


@pytest.mark.parametrize(
    "args",
    [(), (OVERDUE[0], "--all-permanent"), (OVERDUE[0], "--provider-code", "10009")],
)
def test_retry_upstream_needs_numbers_or_the_filter(sqlite_cli: Store, args: tuple[str]) -> None:
    done = sqlite_cli.cli("retry-upstream", *args)
    assert done.exit_code == 2
    assert json.loads(done.stderr)["error"]["code"] == "invalid_usage"


def test_purge_paused_by_the_setting_shows_in_status(sqlite_cli: Store) -> None:
    sqlite_cli.settings["PURGE_PAUSED"] = "true"
    report = sqlite_cli.status()
    assert (report["paused"], report["paused_by_setting"], report["pause"]) == (True, True, None)
    table = sqlite_cli.cli("status", "--now", NOW.isoformat()).stdout
    assert "  Paused                   yes, PURGE_PAUSED is set\n" in table


def test_read_only_commands_never_wait_for_a_writer_on_the_embedded_store(
    sqlite_cli: Store, sqlite_default: Engine
) -> None:
    # A purge batch under way: its transaction holds the file's write lock until it ends.
    with sqlite_default.begin() as batch:
        batch.execute(update(PhoneNumber).values(purge_hold=False))
        for args in (("status", "--json"), ("list", "--account", "acc_1"), ("holds", "--json")):
            done = sqlite_cli.cli(*args, "--now", NOW.isoformat())
            # A command that asked for the write lock would wait busy_timeout (30 s), then fail
            # (exit 1, store_unavailable).
            assert done.exit_code == 0, done.stderr
