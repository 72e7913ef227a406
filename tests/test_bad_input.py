"""Bad input: a clear refusal that changes no row.

The library answers every bad argument with an `ApiError` whose body is the API's error
envelope; inputs are generated with hypothesis, SQL-injection-shaped strings included, on
PostgreSQL and SQLite. The worker answers a task message with wrong argument types with a
failed task (never a retry), and refuses a pickled message without running anything.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

import shared
from shared.db import make_session_factory
from shared.models import E164_PATTERN, Account, PhoneNumber, PurgeRun
from tests.factories import NOW, REGISTERED_BEFORE, make_number, snapshot, valid_order
from tests.processes import Process, service_env, start_worker, wait_for
from tests.servers import celery_client, task_meta, wait_task

# Figures quoted in docs/guarantees.md; change them together.
EXAMPLES = 40  # generated examples per property and backend

A, B = "acc_a", "acc_b"
A_ACTIVE, A_RELEASED, B_RELEASED = "+14155550100", "+14155550101", "+14155550201"
RELEASED_AT = NOW - timedelta(days=2)
CREATED_AT = NOW - REGISTERED_BEFORE
E164 = re.compile(E164_PATTERN)

# Strings shaped like SQL injection (and LIKE wildcards, driver placeholders, comments).
SQL_SHAPED = [
    "' OR '1'='1",
    "'; DROP TABLE phone_numbers; --",
    "+14155550100'; DELETE FROM accounts; --",
    "+14155550100' OR 1=1 --",
    '" OR ""="',
    "'); TRUNCATE purged_numbers; --",
    "' UNION SELECT id, plan, created_at FROM accounts --",
    "acc_a' --",
    "acc_a'/*",
    "1; SELECT pg_sleep(5)",
    "%",
    "_",
    "+1415555%",
    "+1415555____",
    "\\",
    "$1",
    "%(phone_number)s",
    ":phone_number",
    "?",
]
NON_STRINGS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=16),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
not_e164 = st.one_of(
    st.sampled_from(SQL_SHAPED),
    st.text(max_size=24),
    st.from_regex(r"\+?[0-9 ()\-.]{0,20}", fullmatch=True),
    st.from_regex(r"\+0[0-9]{1,14}|\+[1-9][0-9]{15,20}|\+[1-9]", fullmatch=True),
    NON_STRINGS,
).filter(lambda value: not (isinstance(value, str) and E164.fullmatch(value)))
offsets = st.builds(
    timezone, st.integers(min_value=-23 * 60, max_value=23 * 60).map(lambda m: timedelta(minutes=m))
)
naive_datetimes = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(8999, 1, 1))
out_of_range = st.one_of(
    st.datetimes(max_value=datetime(1969, 12, 30), timezones=offsets),
    st.datetimes(min_value=datetime(9000, 1, 2), timezones=offsets),
)
not_datetimes = st.one_of(
    st.sampled_from(["2026-11-27T12:00:00Z", "now", *SQL_SHAPED]),
    st.integers(),
    st.floats(),
    st.dates(),
)
before_by = st.one_of(
    st.integers(min_value=1, max_value=10).map(lambda n: timedelta(microseconds=n)),
    st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=3000)),
)
bad_country = st.one_of(
    st.sampled_from(["UK", "XX", "ZZ", "EU", "us", "Us", "USA", "U", "", "U$", "1A", *SQL_SHAPED]),
    st.text(max_size=4).filter(lambda s: not re.fullmatch(r"[A-Z]{2}", s)),
    st.from_regex(r"[A-Z]{2}", fullmatch=True).filter(lambda s: s in {"XX", "ZZ", "AA", "QQ"}),
    NON_STRINGS,
)
letters = st.text(alphabet=st.characters(categories=["Lu", "Ll"]), min_size=1, max_size=12)
bad_price = st.one_of(
    st.integers(max_value=-1),
    st.decimals(max_value=Decimal("-0.0001"), allow_nan=False, allow_infinity=False, places=4),
    st.floats(max_value=-1e-6, allow_infinity=True),
    st.sampled_from(
        [float("nan"), float("inf"), Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), "NaN"]
    ),
    st.sampled_from(
        ["-0.01", "1.00001", "100000000", "1_000", " 1.00", "1e2", "0x10", *SQL_SHAPED]
    ),
    letters,
    st.integers(min_value=100_000_000, max_value=10**30),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=1),
)
bad_label = st.one_of(
    st.text(min_size=256, max_size=600),
    st.text(max_size=20).map(lambda s: s + "\x00"),
    # A lone surrogate, as json.loads gives for "\ud800": no UTF-8 store can hold it.
    st.tuples(st.text(max_size=10), st.characters(categories=["Cs"])).map("".join),
    st.integers(),
    st.lists(st.text(max_size=3), max_size=2),
)
bad_account_id = st.one_of(
    st.just(""),
    st.text(min_size=65, max_size=120),
    st.text(min_size=1, max_size=20).map(lambda s: s + "\n"),
    st.text(min_size=1, max_size=20).map(lambda s: "\x00" + s),
    NON_STRINGS,
)
# Well-formed account ids nobody opened: a 401, whatever they look like.
unknown_account_id = st.one_of(
    st.sampled_from(SQL_SHAPED),
    st.text(alphabet=string.printable.strip(), min_size=1, max_size=64),
).filter(lambda s: s not in (A, B) and s.isprintable())


@pytest.fixture
def world(session: Session) -> Session:
    make_number(session, account_id=A, phone_number=A_ACTIVE)
    make_number(session, account_id=A, phone_number=A_RELEASED, released_at=RELEASED_AT)
    make_number(session, account_id=B, phone_number=B_RELEASED, released_at=RELEASED_AT)
    return session


Call = Callable[[Session], object]


def refused(
    session: Session,
    calls: list[Call],
    codes: set[str],
    validator: Draft202012Validator,
) -> None:
    """Each call raises an ApiError with one of `codes`, as a valid envelope; no row changes."""
    before = snapshot(session)
    for call in calls:
        savepoint = session.begin_nested()
        try:
            with pytest.raises(shared.ApiError) as caught:
                call(session)
            error = caught.value
            assert error.code in codes, (error.code, error.message)
            assert error.message
            assert error.fix
            assert error.status in (400, 401)
            validator.validate(error.body())
            assert snapshot(session) == before
        finally:
            savepoint.rollback()


def register(**overrides: Any) -> Call:
    order = valid_order(account_id=A) | overrides
    return lambda s: shared.register_number(s, **order)


def release(phone_number: object = A_ACTIVE, account_id: object = A, now: object = NOW) -> Call:
    return lambda s: shared.release_number(
        s,
        account_id=account_id,  # type: ignore[arg-type]
        phone_number=phone_number,  # type: ignore[arg-type]
        now=now,  # type: ignore[arg-type]
    )


def repurchase(
    phone_number: object = A_RELEASED, account_id: object = A, now: object = NOW
) -> Call:
    return lambda s: shared.repurchase_number(
        s,
        account_id=account_id,  # type: ignore[arg-type]
        phone_number=phone_number,  # type: ignore[arg-type]
        now=now,  # type: ignore[arg-type]
    )


def listing(account_id: object = A, now: object = NOW) -> Call:
    return lambda s: shared.released_numbers_body(
        s,
        account_id=account_id,  # type: ignore[arg-type]
        now=now,  # type: ignore[arg-type]
    )


def every_number_call(value: object) -> list[Call]:
    return [
        register(phone_number=value),
        release(value),
        repurchase(value),
        lambda s: shared.assign_campaign(
            s, phone_number=value, campaign_id="c1", status="approved"
        ),  # type: ignore[arg-type]
        lambda s: shared.set_purge_hold(s, phone_number=value, held=True),  # type: ignore[arg-type]
    ]


def every_call(**argument: object) -> list[Call]:
    """A register, a release, a repurchase and a listing, each with `argument` (`now` or
    `account_id`) and valid otherwise."""
    return [
        register(**argument),
        release(**argument),
        repurchase(**argument),
        listing(**argument),
    ]


def test_malformed_phone_numbers(world: Session, error_validator: Draft202012Validator) -> None:
    @settings(max_examples=EXAMPLES)
    @given(value=not_e164)
    @example(value="4155550100")
    @example(value="+04155550100")
    @example(value="+1 415 555 0100")
    @example(value="+14155550100\n")
    @example(value="\uff0b14155550100")  # fullwidth plus
    @example(value="+\u0661\u0664\u0661\u0665")  # Arabic-Indic digits
    @example(value="+1234567890123456")
    def check(value: object) -> None:
        refused(world, every_number_call(value), {"invalid_phone_number"}, error_validator)

    check()


def test_naive_out_of_range_and_non_datetimes(
    world: Session, error_validator: Draft202012Validator
) -> None:
    @settings(max_examples=EXAMPLES)
    @given(value=st.one_of(naive_datetimes, out_of_range, not_datetimes))
    @example(value=datetime(2026, 11, 27, 12, 0))
    @example(value=datetime.min.replace(tzinfo=UTC))
    @example(value=datetime.max.replace(tzinfo=UTC))
    @example(value=datetime.min.replace(tzinfo=timezone(timedelta(hours=5))))
    def check(value: object) -> None:
        codes = {"naive_datetime", "datetime_out_of_range", "invalid_datetime"}
        refused(world, every_call(now=value), codes, error_validator)

    check()
    for call, code in [
        (release(now=datetime(2026, 11, 27, 12)), "naive_datetime"),
        (listing(now=datetime(1, 1, 1, tzinfo=UTC)), "datetime_out_of_range"),
        (repurchase(now="2026-11-27T12:00:00Z"), "invalid_datetime"),
    ]:
        refused(world, [call], {code}, error_validator)


def test_instants_before_the_rows_own_history(
    world: Session, error_validator: Draft202012Validator
) -> None:
    """A release dated before the number was registered, a repurchase dated before its
    release: the row's createdAt or releasedAt would lie in the future of the decision."""

    @settings(max_examples=EXAMPLES)
    @given(earlier=before_by, zone=offsets)
    @example(earlier=timedelta(microseconds=1), zone=UTC)
    def check(earlier: timedelta, zone: timezone) -> None:
        refused(
            world,
            [release(now=(CREATED_AT - earlier).astimezone(zone))],
            {"release_before_created"},
            error_validator,
        )
        refused(
            world,
            [repurchase(now=(RELEASED_AT - earlier).astimezone(zone))],
            {"repurchase_before_release"},
            error_validator,
        )

    check()


def refuses_every_bad_field(
    world: Session,
    validator: Draft202012Validator,
    field: str,
    values: st.SearchStrategy[object],
    code: str,
    *examples: object,
) -> None:
    """A register order with `field` set to any of `values` (the `examples` first) is refused
    with `code`; the examples run in the order given, as stacked @example decorators do."""

    def check(value: object) -> None:
        refused(world, [register(**{field: value})], {code}, validator)

    for value in reversed(examples):
        check = example(value=value)(check)
    settings(max_examples=EXAMPLES)(given(value=values)(check))()


def test_bad_country_codes(world: Session, error_validator: Draft202012Validator) -> None:
    refuses_every_bad_field(
        world, error_validator, "country_code", bad_country, "invalid_country_code"
    )


def test_negative_non_numeric_and_odd_prices(
    world: Session, error_validator: Draft202012Validator
) -> None:
    refuses_every_bad_field(
        world,
        error_validator,
        "monthly_price",
        bad_price,
        "invalid_price",
        -1,
        Decimal("-0.0001"),
        "abc",
        "",
    )


def test_oversized_and_invalid_labels(
    world: Session, error_validator: Draft202012Validator
) -> None:
    refuses_every_bad_field(
        world,
        error_validator,
        "label",
        bad_label,
        "invalid_label",
        "x" * 256,
        "front\x00desk",
        "front desk \ud800",
    )


def test_bad_and_unknown_account_ids(world: Session, error_validator: Draft202012Validator) -> None:
    @settings(max_examples=EXAMPLES)
    @given(bad=bad_account_id, unknown=unknown_account_id)
    def check(bad: object, unknown: str) -> None:
        refused(
            world,
            [
                *every_call(account_id=bad),
                lambda s: shared.open_account(s, account_id=bad, plan="paid"),  # type: ignore[arg-type]
            ],
            {"invalid_account_id"},
            error_validator,
        )
        refused(
            world,
            every_call(account_id=unknown),
            {"account_not_found"},
            error_validator,
        )

    check()


def test_sql_shaped_text_is_data_never_sql(world: Session) -> None:
    """Where such a string is a valid value (a label, an account id) it is stored verbatim
    and read back verbatim; the tables around it are intact."""

    @settings(max_examples=EXAMPLES)
    @given(text=st.one_of(st.sampled_from(SQL_SHAPED), st.text(max_size=255)), n=st.integers(0, 99))
    @example(text="'; DROP TABLE phone_numbers; --", n=0)
    def check(text: str, n: int) -> None:
        savepoint = world.begin_nested()
        try:
            counts = {
                table: world.scalar(select(func.count()).select_from(table))
                for table in (Account, PhoneNumber)
            }
            account = text[:64] if text[:64].isprintable() and text[:64] else "acc_plain"
            number = f"+1415777{n:04d}"
            if account not in (A, B):
                shared.open_account(world, account_id=account, plan="paid")
            label = text.replace("\x00", "")
            body = shared.register_number(
                world,
                account_id=account,
                phone_number=number,
                country_code="US",
                number_type="local",
                monthly_price="1.00",
                label=label,
                now=NOW,
            )
            assert body.get("label", "") == label
            stored = world.scalars(select(PhoneNumber).where(PhoneNumber.phone_number == number))
            row = stored.one()
            assert (row.account_id, row.label or "") == (account, label)
            assert world.scalar(select(func.count()).select_from(PhoneNumber)) == (
                counts[PhoneNumber] + 1
            )
            assert world.scalar(select(func.count()).select_from(Account)) == counts[Account] + (
                account not in (A, B)
            )
            shared.release_number(world, account_id=account, phone_number=number, now=NOW)
            listed = shared.released_numbers_body(world, account_id=account, now=NOW)
            assert [n["phoneNumber"] for n in listed["numbers"]] == [number]
        finally:
            savepoint.rollback()

    check()


# --- the worker: task messages with wrong argument types, and a pickled message --------------

FUTURE = "2999-01-01T00:00:00Z"
BAD_TASKS: list[tuple[str, list[Any], dict[str, Any], str]] = [
    ("numbers.purge_expired", [], {"now": 12345}, "ValidationError"),
    ("numbers.purge_expired", [], {"now": "yesterday"}, "ValidationError"),
    ("numbers.purge_expired", [], {"now": "2026-11-27T12:00:00"}, "ValidationError"),  # naive
    # Ahead of the worker's clock: it would purge numbers that are still repurchasable.
    ("numbers.purge_expired", [], {"now": FUTURE}, "ValidationError"),
    ("numbers.purge_expired", [], {"now": "0001-01-01T00:00:00+00:00"}, "ValidationError"),
    ("numbers.purge_expired", [], {"now": {"$gt": ""}}, "ValidationError"),
    ("numbers.purge_expired", [], {"now": "'; DROP TABLE phone_numbers; --"}, "ValidationError"),
    ("numbers.purge_expired", [], {"now": ["2026-11-01T00:00:00Z"]}, "ValidationError"),
    ("numbers.purge_expired", [], {"dry_run": "false"}, "ValidationError"),
    ("numbers.purge_expired", [], {"dry_run": 0}, "ValidationError"),
    ("numbers.purge_expired", [], {"dry_run": None}, "ValidationError"),
    ("numbers.purge_expired", [], {"carrier": "extra"}, "ValidationError"),
    ("numbers.purge_expired", [None, False, None, "extra"], {}, "TypeError"),
    ("numbers.purge_expired", [], {"batch_size": 1}, "TypeError"),
    ("numbers.publish_releasable", [], {"now": 3.5}, "ValidationError"),
    ("numbers.publish_releasable", [], {"now": FUTURE}, "ValidationError"),
    ("numbers.publish_releasable", [], {"now": "2026-13-45T99:00:00Z"}, "ValidationError"),
    ("numbers.publish_releasable", ["a", "b"], {}, "TypeError"),
]


@pytest.fixture(scope="module")
def worker_env(
    pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return service_env(
        database_url=pg_url, redis_url=redis_url, data_dir=tmp_path_factory.mktemp("data")
    )


@pytest.fixture
def store(pg_store: Engine) -> Engine:
    """The empty PostgreSQL store with A's number released at RELEASED_AT and one overdue."""
    with make_session_factory(pg_store).begin() as session:
        make_number(session, account_id=A, phone_number=A_RELEASED, released_at=RELEASED_AT)
        make_number(
            session,
            account_id=A,
            phone_number="+14155550102",
            released_at=datetime.now(UTC) - timedelta(days=20),
            now=datetime.now(UTC),
        )
    return pg_store


@pytest.fixture
def worker(
    worker_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Process]:
    process = start_worker(worker_env, tmp_path / "worker.log")
    try:
        wait_for(lambda: "ready." in process.output(), timeout=60, what="the worker")
        yield process
    finally:
        process.stop()


def store_rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row but the purge runs' (see `run_statuses`)."""
    with make_session_factory(engine)() as session:
        rows = snapshot(session)
    del rows["purge_runs"]
    return rows


def run_statuses(engine: Engine) -> list[str]:
    with make_session_factory(engine)() as session:
        return list(session.scalars(select(PurgeRun.status)))


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.processes(moved_clock=False)  # a refused message, whatever the date
def test_wrong_argument_types_fail_the_task_without_retry_or_change(
    store: Engine, worker: Process, redis_url: str, redis_client: redis.Redis
) -> None:
    before = store_rows(store)
    with celery_client(redis_url) as client:
        sent = [
            (client.send_task(name, args=args, kwargs=kwargs).id, name, kwargs, error)
            for name, args, kwargs, error in BAD_TASKS
        ]
        # A dry run may look ahead (it deletes nothing); the worker still works after it all.
        look_ahead = client.send_task(
            "numbers.purge_expired", kwargs={"now": FUTURE, "dry_run": True}
        )
    for task_id, name, kwargs, error in sent:
        meta = wait_task(redis_client, task_id, timeout=30, states=("FAILURE",))
        assert meta["result"]["exc_type"] == error, (name, kwargs, meta)
        assert meta["retries"] == 0, (name, kwargs)
        message = " ".join(map(str, meta["result"]["exc_message"]))
        assert message, (name, kwargs)
        if error == "ValidationError":
            assert any(word in message for word in ("now", "dry_run", "carrier")), message
    ahead = wait_task(redis_client, look_ahead.id, timeout=30)["result"]
    assert (ahead["status"], ahead["would_purge"]) == ("dry_run", 2)
    assert "Retry in" not in worker.output()
    assert store_rows(store) == before  # no number, tombstone or assignment changed
    assert run_statuses(store) == ["dry_run"]  # only the look-ahead dry run ran
    assert redis_client.exists("releasable:all", "releasable:meta") == 0  # nothing was published


class Payload:
    """Runs `os.mkdir(path)` when unpickled: what a hostile pickle can do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.processes(moved_clock=False)  # a refused message, whatever the date
def test_a_pickled_message_is_refused_and_runs_nothing(
    store: Engine, worker: Process, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    before = store_rows(store)
    marker = tmp_path / "unpickled"
    with celery_client(redis_url, accept_pickle=True) as client:
        plain = client.send_task("numbers.purge_expired", serializer="pickle")
        hostile = client.send_task(
            "numbers.purge_expired", kwargs={"now": Payload(str(marker))}, serializer="pickle"
        )
        # Sent after them on the same queue: once it is done, they were consumed before it.
        after_them = client.send_task("numbers.purge_expired", kwargs={"dry_run": True})
    wait_task(redis_client, after_them.id, timeout=30)
    wait_for(
        lambda: worker.output().count("Refusing to deserialize untrusted content") >= 2,
        timeout=10,
        what="the worker to refuse both pickled messages",
    )
    assert not marker.exists()
    assert task_meta(redis_client, plain.id) is None
    assert task_meta(redis_client, hostile.id) is None
    assert f"numbers.purge_expired[{plain.id}] received" not in worker.output()
    assert store_rows(store) == before
    assert run_statuses(store) == ["dry_run"]
    assert worker.popen.poll() is None
    assert "x-python-serialize" in worker.output()
    assert redis_client.llen("celery") == 0  # refused messages are dropped, not requeued forever
