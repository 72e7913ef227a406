"""Fixtures on real services: PostgreSQL and SQLite stores, Redis, a fixed `now`, the contract."""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import hypothesis
import psycopg
import psycopg.sql
import pytest
import redis
import structlog
from click.testing import CliRunner, Result
from jsonschema import Draft202012Validator
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

import shared
import worker.cli
from shared import migrate
from shared.clock import utcnow
from shared.db import make_engine, make_session_factory
from shared.provider import TelnyxProvider
from shared.settings import get_settings, get_store_settings
from tests.factories import NOW
from tests.fake_telnyx import API_KEY, FakeTelnyx
from tests.processes import CLI_UNSET, cli_settings, service_env
from tests.stores import delete_all_rows, service_missing
from worker import connections

# The private PostgreSQL and Redis servers' fixtures (fault_pg_server, fault_pg, fault_redis).
pytest_plugins = ["tests.servers"]

# Fixed seed and no example database: the same examples on every run, nothing written to disk.
hypothesis.settings.register_profile(
    "numbers-retention", database=None, derandomize=True, deadline=None
)
hypothesis.settings.load_profile("numbers-retention")


# The embedded default lives in the user's data folder (shared/settings.py): a test (or a
# process it starts) that leaves NUMBERS_RETENTION_DATA unset gets a folder of this run's,
# never the real one. Set here, before anything builds an app (tests.servers, the modules).
USER_DATA = Path(tempfile.mkdtemp(prefix="numbers-retention-xdg-"))
os.environ["XDG_DATA_HOME"] = str(USER_DATA)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(USER_DATA, ignore_errors=True)


SCHEMA_PATH = Path(shared.__file__).parent / "contract" / "released-numbers.schema.json"
BACKENDS = [
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("sqlite", id="sqlite"),
]


@pytest.fixture(scope="session")
def now() -> datetime:
    """The fixed instant of the tests: the one `tests.factories` registers numbers against."""
    return NOW


@pytest.fixture
def wall_now() -> datetime:
    """The host's clock at the test's start: the instant of a test whose processes or library
    defaults read the real clock (the fixed `now` lies more than a year behind it)."""
    return utcnow()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """After a test of processes, before its fixtures stop their servers: collect what it let
    go of. Celery's results sit in reference cycles, so the collector frees them at some later
    moment, and each then unsubscribes from its Redis: a test's own Redis stopped by then made
    that an unraisable error in whichever test ran next."""
    yield
    if item.get_closest_marker("processes"):
        gc.collect()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the host's clock (worker processes, `wall_now`) are marked `real_clock`: none of
    them may take the fixed `now`, which a process on the real clock would contradict. Those
    whose processes decide by the date (a cutoff, a lease, a heartbeat, a published age) are
    also marked `moved_clock`, the set CI runs again with the clock moved a year either way.

    A test of processes is on the host's clock, and moved with it, unless it says
    `processes(moved_clock=False)`: a process whose work no date changes (a tool such as
    compose or promtool, `--version`, a refused setting or message, a signal's or a restart's
    handling, a lock's takeover): run once, with the fixed-instant tests, or on the host's clock
    alone when it takes `wall_now`."""
    mixed = []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        processes = item.get_closest_marker("processes")
        moved = processes.kwargs.get("moved_clock", True) if processes else True
        if (processes and moved) or "wall_now" in fixtures:
            item.add_marker(pytest.mark.real_clock)
            if moved:
                item.add_marker(pytest.mark.moved_clock)
        if item.get_closest_marker("real_clock") and "now" in fixtures:
            mixed.append(item.nodeid)
    if mixed:
        raise pytest.UsageError(
            "Tests on the host's clock take `wall_now`, not the fixed `now`: " + ", ".join(mixed)
        )


@pytest.fixture(autouse=True)
def processes_are_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that starts a process (a command, a worker, a server) is marked `processes`:
    `-m "not processes"` is the suite without any, and the processes' tests run on the host's
    clock too (`real_clock`). An unmarked test that starts one fails, naming it."""
    if request.node.get_closest_marker("processes"):
        return

    def refuse(_popen: subprocess.Popen[Any], args: Any, *_args: Any, **_kwargs: Any) -> None:
        pytest.fail(
            f"{request.node.nodeid} starts a process ({args!r}) but is not marked `processes`",
            pytrace=False,
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def xdist_worker() -> int:
    """This process's number among pytest-xdist's workers (`-n N`): 0 without xdist."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


@pytest.fixture(scope="session")
def pg_url() -> str:
    # Each xdist worker on a database of its own: one URL per worker, comma-separated, as
    # TEST_REDIS_URL; or one URL, and each worker past the first on its database with a suffix:
    # test_gw1, test_gw2, ...
    urls = os.environ.get(
        "TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ).split(",")
    if len(urls) > 1 and xdist_worker() >= len(urls):
        pytest.fail(
            f"xdist worker {xdist_worker()} has no database of its own in TEST_DATABASE_URL"
        )
    url = urls[xdist_worker() if len(urls) > 1 else 0]
    if len(urls) == 1 and (worker := xdist_worker()):
        parsed = make_url(url)
        url = parsed.set(database=f"{parsed.database}_gw{worker}").render_as_string(
            hide_password=False
        )
    target = make_url(url).set(drivername="postgresql")
    # The server's maintenance database: the test database is created there when missing, so
    # suites side by side (make test-clock) each take a database of their own.
    admin = target.set(database="postgres").render_as_string(hide_password=False)
    try:
        with psycopg.connect(admin, connect_timeout=3, autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (target.database,)
            ).fetchone()
            if exists is None:
                connection.execute(
                    psycopg.sql.SQL("CREATE DATABASE {}").format(
                        psycopg.sql.Identifier(target.database)
                    )
                )
    except psycopg.OperationalError as error:
        service_missing("PostgreSQL", error)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    # One Redis database per xdist worker, comma-separated: the tests flush theirs.
    urls = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15").split(",")
    if xdist_worker() >= len(urls):
        pytest.fail(
            f"xdist worker {xdist_worker()} has no Redis database of its own: give"
            " TEST_REDIS_URL one URL per worker, comma-separated"
        )
    url = urls[xdist_worker()]
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3) as client:
            client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as error:
        service_missing("Redis", error)
    return url


@pytest.fixture
def process_env(pg_url: str, redis_url: str, tmp_path: Path) -> Callable[..., dict[str, str]]:
    """`service_env` on the test PostgreSQL and Redis with its data in `tmp_path`: call it with
    the settings of the test's processes, `process_env(PURGE_BATCH_SIZE="7")`."""
    return functools.partial(
        service_env, database_url=pg_url, redis_url=redis_url, data_dir=tmp_path
    )


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('db')}/store.db")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest) -> Engine:
    """The migrated store on each backend; tests using it run on PostgreSQL and SQLite."""
    name = "pg_engine" if request.param == "postgresql" else "sqlite_engine"
    result: Engine = request.getfixturevalue(name)
    return result


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session inside an outer transaction that is rolled back after the test.

    The library's own savepoints and flushes happen inside it; nothing reaches the store.
    On SQLite do not mix it with `session_factory` in one test: this transaction holds the
    file's write lock from its first write until the test ends (it begins DEFERRED, so other
    connections can still read).
    """
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as connection:
        outer = connection.begin()
        db = Session(bind=connection, join_transaction_mode="create_savepoint")
        try:
            yield db
        finally:
            db.close()
            outer.rollback()


@pytest.fixture
def session_factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions that really commit (the purge commits per batch); every table emptied after."""
    try:
        yield make_session_factory(engine)
    finally:
        delete_all_rows(engine)


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set environment variables and re-read the settings; both undone after the test."""

    def set_env(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        get_store_settings.cache_clear()

    yield set_env
    monkeypatch.undo()
    get_settings.cache_clear()
    get_store_settings.cache_clear()


Invoke = Callable[..., Result]


# Every engine that connected in this process (the tests', the commands', the cached ones).
CONNECTED: weakref.WeakSet[Engine] = weakref.WeakSet()
event.listen(Engine, "engine_connect", lambda connection: CONNECTED.add(connection.engine))


class CommandEngines:
    """Runs commands with click's runner; after the test, closes every engine's idle
    connections and clears the process's engine cache, as a command's exit would. Closing all
    (an engine opens new connections when used again) keeps an engine the cache forgets, or
    another test cached, from closing its connections only when collected (ResourceWarning)."""

    def invoke(self, runner: CliRunner, args: tuple[str, ...]) -> Result:
        return runner.invoke(worker.cli.main, list(args), catch_exceptions=False)

    def close(self) -> None:
        for engine in list(CONNECTED):
            engine.dispose()
        connections.dispose_engines()


@pytest.fixture
def cli_on(
    settings_env: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Invoke]]:
    """`numbers-retention ARGS...` in this process (click's runner) on a given store:
    `cli_on(engine, REDIS_URL="")` sets DATABASE_URL (and the settings given) and returns the
    invoker; the engines the commands opened are closed after the test."""
    opened = CommandEngines()

    def on(engine: Engine, **settings: str) -> Invoke:
        url = engine.url.render_as_string(hide_password=False)
        settings_env(**({"DATABASE_URL": url, "PROVIDER": "none"} | settings))
        # The command line configures this process's logging for good: not the test's.
        monkeypatch.setattr(worker.cli, "configure_logging", lambda _settings: None)
        runner = CliRunner()
        return lambda *args: opened.invoke(runner, args)

    yield on
    opened.close()


@pytest.fixture
def cli_in(
    settings_env: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Invoke]]:
    """`numbers-retention ARGS...` in this process (click's runner) with the settings a
    console-script call of `tests.processes.cli_env(data, **settings)` gets: the embedded
    store in `data` unless `settings` name another, JSON logs. `cli_in(tmp_path, REDIS_URL=url)`
    returns the invoker; call it again to change the settings.

    The command configures its logging as the console script does, onto the result's stderr
    (`result.stderr` holds its JSON events, as a child's stderr would); the test's logging is
    put back, and the engines the commands opened are closed, after the test."""
    logs = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    opened = CommandEngines()

    def on(data: Path, **settings: str) -> Invoke:
        for key in list(os.environ):
            if key.startswith(CLI_UNSET):
                monkeypatch.delenv(key)
        settings_env(**cli_settings(data, **settings))
        runner = CliRunner()

        return lambda *args: opened.invoke(runner, args)

    yield on
    structlog.configure(**logs)
    root.handlers[:], root.level = handlers, level
    opened.close()


@pytest.fixture
def pg_store(pg_engine: Engine) -> Iterator[Engine]:
    """The migrated PostgreSQL store, empty; every table emptied again after the test."""
    delete_all_rows(pg_engine)
    yield pg_engine
    delete_all_rows(pg_engine)


@pytest.fixture
def pg_factory(pg_store: Engine) -> sessionmaker[Session]:
    """Committing sessions on the empty PostgreSQL store (for real worker processes)."""
    return make_session_factory(pg_store)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """The test Redis database, flushed before and after (RedBeat locks, queues, sets)."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def fake_telnyx() -> Iterator[FakeTelnyx]:
    """A Telnyx-like HTTP server on loopback."""
    with FakeTelnyx().running() as server:
        yield server


@pytest.fixture
def telnyx(fake_telnyx: FakeTelnyx) -> Iterator[TelnyxProvider]:
    """The Telnyx adapter pointed at `fake_telnyx`, with a short timeout."""
    provider = TelnyxProvider(base_url=fake_telnyx.url, api_key=API_KEY, timeout=0.5)
    yield provider
    provider.close()


# --- the contract: the project's copy of the API's JSON Schema --------------------------------

# The date-time format is checked by rfc3339-validator (jsonschema's "format-nongpl" extra).
contract_formats = Draft202012Validator.FORMAT_CHECKER


@pytest.fixture(scope="session")
def contract_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


def _validator(schema: dict[str, Any], definition: str) -> Draft202012Validator:
    return Draft202012Validator(
        {**schema, "$ref": f"#/$defs/{definition}"}, format_checker=contract_formats
    )


@pytest.fixture(scope="session")
def released_numbers_validator(contract_schema: dict[str, Any]) -> Draft202012Validator:
    """Validates a 200 body of GET /numbers/released."""
    return _validator(contract_schema, "ReleasedNumbersResponse")


@pytest.fixture(scope="session")
def phone_number_validator(contract_schema: dict[str, Any]) -> Draft202012Validator:
    """Validates one PhoneNumber object (register, repurchase, assign answers)."""
    return _validator(contract_schema, "PhoneNumber")


@pytest.fixture(scope="session")
def error_validator(contract_schema: dict[str, Any]) -> Draft202012Validator:
    """Validates an error envelope (ApiError.body())."""
    return _validator(contract_schema, "ErrorResponse")
