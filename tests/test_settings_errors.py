"""A wrong setting is the `invalid_settings` envelope and exit 2: through the console script,
naming the variable and why, never its value, never a traceback.

The console script's `main` (worker/entry.py) runs in this process for every case; a few run it
as its own process too, where a wrong store setting fails the import of `shared` itself."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from pydantic import ValidationError

import worker.entry
from shared.settings import Settings
from worker.app import create_app, visibility_timeout

CLI = str(Path(sys.executable).parent / "numbers-retention")
# A value that must never be printed: a password in a URL, an API key.
SECRET = "hunter2-s3cret-pw"
VARIABLES = {(field.alias or name).upper() for name, field in Settings.model_fields.items()}


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This environment without any setting of ours, on an embedded store in `tmp_path`."""
    env = {key: value for key, value in os.environ.items() if key.upper() not in VARIABLES}
    return env | {"NUMBERS_RETENTION_DATA": str(tmp_path), "LOG_FORMAT": "json"} | settings


def numbers_retention(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the installed console script."""
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


Done = subprocess.CompletedProcess[str]
Entry = Callable[..., Done]


@pytest.fixture
def entry(
    tmp_path: Path,
    cli_in: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Entry:
    """`entry(*args, **settings)`: the console script's `main` in this process, with no setting
    of ours but `settings`, on an embedded store in `tmp_path`; its exit code and output as a
    child's would be."""

    def run(*args: str, **settings: str) -> Done:
        for key in list(os.environ):
            if key.upper() in VARIABLES:
                monkeypatch.delenv(key)
        cli_in(tmp_path, **settings)  # the settings, and the test's logging put back after
        monkeypatch.setattr(sys, "argv", [CLI, *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            worker.entry.main()
        out, err = capsys.readouterr()
        code = exited.value.code
        return subprocess.CompletedProcess(
            [CLI, *args], code if isinstance(code, int) else 1, out, err
        )

    return run


def refusal(done: Done, code: str) -> dict[str, Any]:
    """The one envelope on stderr (exit 2, nothing on stdout, no traceback); its `error`."""
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    envelope = json.loads(done.stderr)
    assert set(envelope) == {"trackingId", "error"}
    assert envelope["trackingId"].startswith("trk_")
    error: dict[str, Any] = envelope["error"]
    assert set(error) == {"code", "message", "fix"}
    assert error["code"] == code
    assert error["fix"]
    return error


# (variable named, its wrong value, more settings); each is refused before anything runs.
SETTINGS_CASES = [
    pytest.param("RETENTION_DAYS", "-1", {}, id="retention-negative"),
    pytest.param("RETENTION_DAYS", "abc", {}, id="retention-not-a-number"),
    pytest.param("RETENTION_DAYS", "99999999999", {}, id="retention-overflows-timedelta"),
    pytest.param("DB_PING_AFTER_IDLE_SECONDS", "x", {}, id="ping-not-a-number"),
    pytest.param("DB_PING_AFTER_IDLE_SECONDS", "inf", {}, id="ping-inf"),
    pytest.param(
        "DATABASE_URL", f"mysql://retention:{SECRET}@db.example/retention", {}, id="db-mysql"
    ),
    pytest.param(
        "DATABASE_URL",
        f"postgresql+psycopg2://retention:{SECRET}@db.example/retention",
        {},
        id="db-unsupported-driver",
    ),
    pytest.param(
        "DATABASE_URL",
        f"postgresql://retention:{SECRET}@db.example:port/retention",
        {},
        id="db-bad-port",
    ),
    pytest.param("DATABASE_URL", f"{SECRET} not a url", {}, id="db-unparsable"),
    pytest.param("PURGE_MAX_SECONDS", "inf", {}, id="purge-unbounded"),
    pytest.param("PURGE_MAX_SECONDS", "nan", {}, id="purge-nan"),
    pytest.param("PURGE_MAX_SECONDS", "1e300", {}, id="purge-absurd"),
    pytest.param(
        "PURGE_MAX_SECONDS", "inf", {"BROKER_URL": "redis://127.0.0.1:1/0"}, id="purge-inf-redis"
    ),
    pytest.param("RELAY_MAX_SECONDS", "inf", {}, id="relay-unbounded"),
    pytest.param("PURGE_EVERY_SECONDS", "99999999999999", {}, id="schedule-overflows"),
    pytest.param("TELNYX_API_KEY", "", {"PROVIDER": "telnyx"}, id="telnyx-empty-key"),
    pytest.param("TELNYX_API_KEY", "   ", {"PROVIDER": "telnyx"}, id="telnyx-blank-key"),
    pytest.param(
        "TELNYX_BASE_URL",
        f"api.telnyx.com/{SECRET}",
        {"PROVIDER": "telnyx", "TELNYX_API_KEY": "KEY0123"},
        id="telnyx-base-url",
    ),
    pytest.param("PROVIDER", "vonage", {}, id="provider-unknown"),
    pytest.param("TWILIO_ACCOUNT_SID", "AC123", {}, id="twilio-sid"),
    pytest.param(
        "BANDWIDTH_PASSWORD",
        SECRET,
        {"PROVIDER": "bandwidth", "BANDWIDTH_ACCOUNT_ID": "9900001"},
        id="bandwidth-without-user",
    ),
    pytest.param("REDIS_URL", f"http://:{SECRET}@cache.example:6379/0", {}, id="redis-url"),
    pytest.param("BROKER_URL", f"bogus://:{SECRET}@mq.example/0", {}, id="broker-url"),
    pytest.param("LOG_LEVEL", "loudest", {}, id="log-level"),
    pytest.param("PURGE_PAUSED", "perhaps", {}, id="bool"),
]


@pytest.mark.parametrize(("variable", "value", "more"), SETTINGS_CASES)
def test_a_wrong_setting_is_the_envelope(
    tmp_path: Path, entry: Entry, variable: str, value: str, more: dict[str, str]
) -> None:
    done = entry("status", **more, **{variable: value})
    error = refusal(done, "invalid_settings")
    assert f"{variable}:" in error["message"]
    if len(value.strip()) > 3:
        assert value not in done.stderr
    assert SECRET not in done.stderr
    assert not (tmp_path / "numbers.db").exists()  # refused before any engine was built


@pytest.mark.processes(moved_clock=False)
@pytest.mark.parametrize(
    ("variable", "value", "more"),
    [
        # A wrong store setting fails the import of `shared` (shared/retention.py) in the
        # console script's own process: still the envelope.
        pytest.param("RETENTION_DAYS", "abc", {}, id="retention-not-a-number"),
        pytest.param(
            "DATABASE_URL", f"mysql://retention:{SECRET}@db.example/retention", {}, id="db-mysql"
        ),
        pytest.param("TELNYX_API_KEY", "", {"PROVIDER": "telnyx"}, id="telnyx-empty-key"),
    ],
)
def test_the_console_script_refuses_a_wrong_setting_with_the_envelope(
    tmp_path: Path, variable: str, value: str, more: dict[str, str]
) -> None:
    done = numbers_retention(_env(tmp_path, **more, **{variable: value}), "status")
    error = refusal(done, "invalid_settings")
    assert f"{variable}:" in error["message"]
    if len(value.strip()) > 3:
        assert value not in done.stderr
    assert SECRET not in done.stderr
    assert not (tmp_path / "numbers.db").exists()  # refused before any engine was built


def test_a_provider_left_without_its_key_is_refused(entry: Entry) -> None:
    done = entry("purge", PROVIDER="telnyx")
    assert "TELNYX_API_KEY" not in os.environ
    error = refusal(done, "invalid_settings")
    assert "TELNYX_API_KEY: must be set when PROVIDER is telnyx" in error["message"]


def test_every_wrong_worker_setting_is_named_at_once(entry: Entry) -> None:
    done = entry(
        "purge", "--dry-run", PURGE_MAX_SECONDS="inf", RELAY_BATCH_SIZE="-5", LOG_LEVEL="x"
    )
    error = refusal(done, "invalid_settings")
    for variable in ("PURGE_MAX_SECONDS", "RELAY_BATCH_SIZE", "LOG_LEVEL"):
        assert f"{variable}:" in error["message"]


def test_the_beat_lock_rule_names_both_variables_not_their_values(entry: Entry) -> None:
    done = entry("status", BEAT_MAX_LOOP_SECONDS="1234", BEAT_LOCK_TIMEOUT_SECONDS="2345")
    error = refusal(done, "invalid_settings")
    assert (
        "BEAT_LOCK_TIMEOUT_SECONDS must be at least twice BEAT_MAX_LOOP_SECONDS"
        in (error["message"])
    )
    assert "1234" not in error["message"]
    assert "2345" not in error["message"]


# --- every number, not only the listed ones -----------------------------------------------------


def _numeric_fields(kind: type) -> list[str]:
    return [name for name, field in Settings.model_fields.items() if field.annotation is kind]


def _upper_bound(name: str) -> float:
    [bound] = [
        m.le for m in Settings.model_fields[name].metadata if isinstance(m, annotated_types.Le)
    ]
    return float(bound)


@pytest.mark.parametrize("name", _numeric_fields(float) + _numeric_fields(int))
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300", "99999999999999999999"])
def test_no_number_is_infinite_nan_or_absurd(name: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**{name: value})
    assert [problem["loc"] for problem in caught.value.errors()] == [(name,)]


@pytest.mark.parametrize("name", _numeric_fields(float) + _numeric_fields(int))
def test_every_number_has_an_upper_bound(name: str) -> None:
    assert math.isfinite(_upper_bound(name))


def test_at_their_upper_bounds_the_settings_still_build_the_worker(tmp_path: Path) -> None:
    """Nothing overflows a timedelta, a time limit or the visibility timeout at the bounds."""
    highest: dict[str, Any] = {name: _upper_bound(name) for name in _numeric_fields(float)}
    highest |= {name: int(_upper_bound(name)) for name in _numeric_fields(int)}
    settings = Settings(
        broker_url="redis://127.0.0.1:1/0",
        NUMBERS_RETENTION_DATA=tmp_path,
        **highest,
    )
    app = create_app(settings)
    assert visibility_timeout(settings) > settings.purge_max_seconds
    assert app.conf.beat_schedule


@pytest.mark.processes(moved_clock=False)
def test_a_retention_window_at_its_bound_still_gives_valid_deadlines(tmp_path: Path) -> None:
    code = (
        "from datetime import datetime, UTC\n"
        "from shared.retention import cutoff, repurchase_deadline\n"
        "now = datetime.now(UTC)\n"
        "print(cutoff(now).year, repurchase_deadline(now).year)\n"
    )
    env = _env(tmp_path, RETENTION_DAYS=str(int(_upper_bound("retention_days"))))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]


# --- the exporter's address ---------------------------------------------------------------------


@pytest.fixture
def store(entry: Entry) -> Entry:
    """`entry` on a migrated embedded store (the exporter refuses a store that is not there)."""
    assert entry("migrate").returncode == 0
    return entry


def test_metrics_on_a_host_that_is_no_address_is_the_envelope(store: Entry) -> None:
    done = store("metrics", "--host", "999.1.1.1", "--port", "9808")
    error = refusal(done, "address_unavailable")
    assert "999.1.1.1:9808" in error["message"]
    assert "--host" in error["fix"]


def test_metrics_on_a_port_in_use_is_the_envelope(store: Entry) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = store("metrics", "--host", "127.0.0.1", "--port", port)
    error = refusal(done, "address_in_use")
    assert f"127.0.0.1:{port}" in error["message"]
    assert "--port" in error["fix"]


# --- usage errors -------------------------------------------------------------------------------

USAGE_CASES = [
    pytest.param(["--bogus"], "numbers-retention", "No such option '--bogus'", id="unknown-option"),
    pytest.param(["nosuch"], "numbers-retention", "No such command 'nosuch'", id="unknown-command"),
    pytest.param(["purge", "--bogus"], "numbers-retention purge", "--bogus", id="command-option"),
    pytest.param(["hold"], "numbers-retention hold", "Missing argument 'PHONE'", id="missing-arg"),
    pytest.param(
        ["list"], "numbers-retention list", "Missing option '--account'", id="missing-opt"
    ),
    pytest.param(
        ["purge", "--batch-size", "x"], "numbers-retention purge", "--batch-size", id="bad-value"
    ),
    pytest.param(
        ["status", "--max-lag", "soon"], "numbers-retention status", "not a duration", id="lag"
    ),
    pytest.param(
        ["metrics", "--port", "70000"], "numbers-retention metrics", "--port", id="bad-port"
    ),
    pytest.param(["pace"], "numbers-retention pace", "--rows-per-second N or --off", id="either"),
    # A run is always bounded: a time limit that is infinite, nan or absurd is refused.
    pytest.param(
        ["purge", "--max-seconds", "inf"], "numbers-retention purge", "--max-seconds", id="inf"
    ),
    pytest.param(
        ["purge", "--max-seconds", "nan"], "numbers-retention purge", "not a finite", id="nan"
    ),
    pytest.param(
        ["purge", "--max-seconds", "1e300"], "numbers-retention purge", "range", id="absurd"
    ),
    pytest.param(
        ["pace", "--rows-per-second", "nan"], "numbers-retention pace", "not a finite", id="pace"
    ),
    pytest.param(
        ["purge", "--batch-size", "99999999999999999999"],
        "numbers-retention purge",
        "range",
        id="batch-overflow",
    ),
]


@pytest.mark.parametrize(("args", "command", "says"), USAGE_CASES)
def test_a_usage_error_is_the_envelope(
    tmp_path: Path, entry: Entry, args: list[str], command: str, says: str
) -> None:
    error = refusal(entry(*args), "invalid_usage")
    assert error["message"].startswith(f"{command}: ")
    assert says in error["message"]
    assert error["fix"] == f"See `{command} --help`."
    assert not (tmp_path / "numbers.db").exists()


@pytest.mark.processes(moved_clock=False)
def test_the_console_script_refuses_a_usage_error_with_the_envelope(tmp_path: Path) -> None:
    error = refusal(numbers_retention(_env(tmp_path), "purge", "--bogus"), "invalid_usage")
    assert error["message"].startswith("numbers-retention purge: ")
    assert not (tmp_path / "numbers.db").exists()


def test_without_a_command_it_still_shows_its_help(entry: Entry) -> None:
    done = entry()
    assert done.returncode == 2
    assert "Usage: numbers-retention" in done.stderr
    assert "Traceback" not in done.stderr
