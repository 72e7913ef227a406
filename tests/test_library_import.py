"""The library as the API service imports it: only the store's settings matter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each test imports the library in a process of its own, as the API service does.
pytestmark = pytest.mark.processes(moved_clock=False)

# Worker settings that the worker refuses: none of them is the library's business.
BAD_WORKER_SETTINGS = {
    "BEAT_LOCK_TIMEOUT_SECONDS": "1",
    "PURGE_BATCH_SIZE": "abc",
    "PROVIDER": "twilio",
    "LOG_FORMAT": "text",
    "PURGE_PARALLEL_BATCHES": "99",
    "TELNYX_BASE_URL": "not a url",
    "PURGE_MAX_SECONDS": "inf",
    "RELAY_MAX_SECONDS": "1e300",
    "LOG_LEVEL": "loudest",
    "BROKER_URL": "bogus://mq.example/0",
    "REDIS_URL": "http://cache.example/0",
}

SCRIPT = """
import json, sys, shared, structlog
from shared import migrate
from shared.db import engine_for, make_session_factory
from shared.provider import NoProvider
from shared.purge import PurgeConfig
from shared.settings import Settings, get_store_settings
structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
engine = engine_for(get_store_settings())
migrate.upgrade(engine)
factory = make_session_factory(engine)
with factory.begin() as session:
    shared.open_account(session, account_id="acc_api", plan="paid")
    body = shared.released_numbers_body(session, account_id="acc_api")
# The purge, given its configuration (the defaults) and provider, runs on the store settings
# alone (called, not only looked up).
config = PurgeConfig.from_settings(Settings.model_construct())
report = shared.purge_expired(factory, config=config, provider=NoProvider())
purge = [report.status, report.purged, report.remaining]
# The HTTP API is an optional extra: the library alone never imports it or its framework.
api = sorted(name for name in ("shared.api", "starlette", "uvicorn") if name in sys.modules)
print(json.dumps({"days": shared.RETENTION.days, "body": body, "purge": purge, "api": api}))
"""


def _python(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in BAD_WORKER_SETTINGS}
    return env | {"DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}"} | extra


def test_bad_worker_settings_never_break_the_librarys_import(tmp_path: Path) -> None:
    done = _python(_env(tmp_path, RETENTION_DAYS="7", **BAD_WORKER_SETTINGS), SCRIPT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {
        "days": 7,
        "body": {"numbers": []},
        "purge": ["completed", 0, 0],
        "api": [],
    }


def test_importing_the_library_reads_no_setting(tmp_path: Path) -> None:
    """Even a wrong store setting: the settings are read when first used, not at import."""
    done = _python(
        _env(tmp_path, RETENTION_DAYS="abc"),
        "import shared, shared.retention, shared.db, shared.purge\n"
        "from shared.settings import get_store_settings\n"
        "print(get_store_settings.cache_info().currsize)",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0"


@pytest.mark.parametrize("value", ["abc", "0", "-3"])
def test_a_bad_retention_window_fails_its_first_use_clearly(tmp_path: Path, value: str) -> None:
    done = _python(
        _env(tmp_path, RETENTION_DAYS=value),
        "import shared\nfrom datetime import datetime, timezone\n"
        "shared.is_repurchasable(datetime.now(timezone.utc), datetime.now(timezone.utc))",
    )
    assert done.returncode == 1
    assert "ValidationError" in done.stderr
    assert "retention_days" in done.stderr


def test_the_worker_still_refuses_its_own_bad_settings(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "status"],
        env=_env(tmp_path, PURGE_BATCH_SIZE="abc"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1  # the settings' exception: only the console script checks first
    assert "purge_batch_size" in done.stderr


def test_the_command_line_answers_bad_settings_with_the_envelope(tmp_path: Path) -> None:
    """Which variables are wrong and why, exit 2; never their values (one may be a secret)."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "numbers-retention"), "status"],
        env=_env(tmp_path, PURGE_BATCH_SIZE="hunter2-secret", PROVIDER="twilio"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    error = json.loads(done.stderr)["error"]
    assert error["code"] == "invalid_settings"
    assert "PURGE_BATCH_SIZE" in error["message"]
    assert "PROVIDER" in error["message"]
    assert "hunter2" not in done.stderr
    assert "Traceback" not in done.stderr
