"""The two-phase purge against a Telnyx-like HTTP server on loopback, on both backends."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

import shared
from shared.models import PhoneNumber
from shared.provider import TelnyxProvider
from shared.purge.operator import reset_upstream
from shared.purge.upstream import claim_batch
from shared.status import store_status
from tests.factories import make_number, make_overdue
from tests.fake_telnyx import API_KEY, OK, FakeTelnyx, Reply, telnyx_error
from tests.processes import start_worker, wait_for
from tests.purging import purge_expired
from tests.stores import numbers_by_phone, tombstones_by_phone

Factory = sessionmaker[Session]
OVERDUE = timedelta(days=15)


def seed(
    factory: Factory, now: datetime, count: int, *, age: timedelta = OVERDUE, start: int = 0
) -> list[str]:
    """`count` numbers released `age` before `now`, provider id '70<i>'; their E.164 numbers."""
    return make_overdue(
        factory, "acc_up", "+1415730", count, lambda i: f"70{i}", now=now, age=age, start=start
    )


def test_released_upstream_then_tombstoned(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    numbers = seed(session_factory, now, 5)
    fresh = seed(session_factory, now, 1, age=timedelta(days=1), start=50)
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged, report.provider) == ("completed", 5, "telnyx")
    assert (report.provider_released, report.provider_failed, report.provider_skipped) == (5, 0, 0)
    assert dict(fake_telnyx.calls) == {f"70{i}": 1 for i in range(5)}
    tombstones = tombstones_by_phone(session_factory)
    assert sorted(tombstones) == numbers
    assert all(
        t.provider == "telnyx" and t.upstream_released_at == now for t in tombstones.values()
    )
    assert list(numbers_by_phone(session_factory)) == fresh


def hold_active(factory: Factory, now: datetime, provider_number_id: str = "799") -> str:
    """An active number with a provider id: the key's account is seen to hold it."""
    with factory.begin() as session:
        make_number(
            session,
            account_id="acc_up",
            phone_number="+14157399999",
            provider_number_id=provider_number_id,
            now=now,
        )
    return provider_number_id


def test_404_counts_as_released_and_no_id_skips_the_call(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    hold_active(session_factory, now)
    seed(session_factory, now, 2)
    with session_factory.begin() as session:
        session.execute(
            update(PhoneNumber)
            .where(PhoneNumber.provider_number_id == "701")
            .values(provider_number_id=None)
        )
    fake_telnyx.script["700"] = [telnyx_error(404, "10005", "Resource not found")]
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.purged, report.provider_released, report.provider_skipped) == (2, 1, 1)
    assert dict(fake_telnyx.calls) == {"700": 1}
    providers = {t.provider for t in tombstones_by_phone(session_factory).values()}
    assert providers == {"telnyx", None}


@pytest.mark.parametrize("active", ["another account's", "none"])
def test_a_404_proves_nothing_unless_the_keys_account_holds_an_active_number(
    session_factory: Factory,
    now: datetime,
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
    active: str,
) -> None:
    """A valid key of another account (a sandbox's) answers every number with Telnyx's 404:
    that must stop the run with every row kept, not purge them all as "already gone"."""
    if active != "none":
        hold_active(session_factory, now)
    numbers = seed(session_factory, now, 3)
    fake_telnyx.held = set()  # the key's account holds none of this store's numbers
    fake_telnyx.default = telnyx_error(404, "10005", "Resource not found")
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged) == ("provider_misconfigured", 0)
    assert "another account's key" in (report.reason or "")
    assert "TELNYX_API_KEY" in (report.reason or "")
    assert tombstones_by_phone(session_factory) == {}
    kept = numbers_by_phone(session_factory)
    assert set(numbers) <= set(kept)
    failed = [n for n in numbers if kept[n].provider_error_code is not None]
    assert failed
    assert {kept[n].provider_error_code for n in failed} == {"provider_misconfigured"}
    # With the right key (the account holds its active numbers), the same 404s release them.
    fake_telnyx.held = None
    if active == "none":
        hold_active(session_factory, now)
    with session_factory.begin() as session:
        for number in failed:
            reset_upstream(session, phone_number=number)
    again = purge_expired(session_factory, now=now, provider=telnyx)
    assert (again.status, again.purged) == ("completed", 3)
    resolutions = {t.resolution for t in tombstones_by_phone(session_factory).values()}
    assert resolutions == {"not_found"}


def test_a_transient_failure_keeps_the_row_and_retries_after_backoff(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    [number] = seed(session_factory, now, 1)
    fake_telnyx.script["700"] = [
        telnyx_error(503, "90001", "Service unavailable"),
        OK,
    ]
    first = purge_expired(session_factory, now=now, provider=telnyx)
    assert (first.purged, first.provider_failed, first.remaining) == (0, 1, 1)
    kept = numbers_by_phone(session_factory)[number]
    assert (kept.purge_state, kept.provider_attempts, kept.provider_code) == ("purging", 1, "90001")
    assert kept.provider_error_code == "provider_release_failed"
    assert kept.provider_next_attempt_at == now + timedelta(seconds=60)
    assert not kept.provider_failed_permanently
    # Claimed: the account can no longer buy it back, and the list does not offer it.
    with session_factory() as session:
        with pytest.raises(shared.ValidationError) as refused:
            shared.repurchase_number(session, account_id="acc_up", phone_number=number, now=now)
        assert refused.value.code == "number_being_purged"
        status = store_status(session, now=now)
    assert (status["upstream_failed"], status["upstream_permanent"]) == (1, 0)
    assert status["upstream_stuck"][0]["provider_code"] == "90001"
    # Before the backoff has passed: not called again.
    purge_expired(session_factory, now=now + timedelta(seconds=59), provider=telnyx)
    assert fake_telnyx.calls["700"] == 1
    done = purge_expired(session_factory, now=now + timedelta(seconds=60), provider=telnyx)
    assert (done.purged, done.provider_released) == (1, 1)
    assert fake_telnyx.calls["700"] == 2
    assert list(tombstones_by_phone(session_factory)) == [number]


@pytest.mark.parametrize(
    ("retry_after", "wait"),
    [
        ("120", timedelta(seconds=120)),
        ("90.5", timedelta(seconds=90.5)),
        # Absurd: capped (a day) instead of overflowing the backoff's timedelta.
        ("99999999999999999999", timedelta(days=1)),
    ],
)
def test_a_5xx_retry_after_sets_the_numbers_next_attempt(
    session_factory: Factory,
    now: datetime,
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
    retry_after: str,
    wait: timedelta,
) -> None:
    [number] = seed(session_factory, now, 1)
    busy = telnyx_error(503, "90001", "Service unavailable")
    fake_telnyx.script["700"] = [Reply(busy.status, busy.body, {"Retry-After": retry_after})]
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged, report.provider_failed) == ("completed", 0, 1)
    kept = numbers_by_phone(session_factory)[number]
    assert kept.provider_next_attempt_at == now + wait


def test_a_429_longer_than_the_run_has_left_ends_it_with_the_number_kept_unfailed(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    """A 429 is the carrier's pace, not the number's answer: the number is not backed off;
    the run (600 s at most) does not wait 900 s, and ends as at its time bound."""
    [number] = seed(session_factory, now, 1)
    fake_telnyx.script["700"] = [
        Reply(429, '{"errors": [{"code": "10011"}]}', {"Retry-After": "900"})
    ]
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged, report.provider_failed) == ("limit_reached", 0, 0)
    assert (report.provider_rate_limited, report.provider_deferred) == (1, 1)
    assert "rate limited" in (report.reason or "")
    kept = numbers_by_phone(session_factory)[number]
    assert (kept.purge_state, kept.provider_attempts, kept.provider_error_code) == (
        "purging",
        0,
        None,
    )
    assert kept.provider_next_attempt_at is None
    # The next run with this provider honours the wait: it calls nothing before it passed.
    again = purge_expired(session_factory, now=now, provider=telnyx)
    assert (again.status, fake_telnyx.calls["700"], fake_telnyx.checks) == ("limit_reached", 1, 1)


def test_a_permanent_error_stops_retrying_until_a_person_resets_it(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    now -= timedelta(days=5)  # runs at now + 3 days must still be in the host's past
    [number] = seed(session_factory, now, 1)
    fake_telnyx.script["700"] = [
        telnyx_error(422, "10007", "Unprocessable", "Number is in a port-out"),
        OK,
    ]
    purge_expired(session_factory, now=now, provider=telnyx)
    purge_expired(session_factory, now=now + timedelta(days=3), provider=telnyx)
    assert fake_telnyx.calls["700"] == 1
    kept = numbers_by_phone(session_factory)[number]
    assert kept.provider_failed_permanently
    assert kept.provider_next_attempt_at is None
    assert "port-out" in (kept.provider_error_message or "")
    with session_factory() as session:
        assert store_status(session, now=now)["upstream_permanent"] == 1
    with session_factory.begin() as session:
        reset_upstream(session, phone_number=number)
    assert purge_expired(session_factory, now=now + timedelta(days=3), provider=telnyx).purged == 1
    assert fake_telnyx.calls["700"] == 2


@pytest.mark.parametrize(
    "reply",
    [Reply(200, None, delay=1.5), Reply(500, "<html>oops</html>"), Reply(502, "")],
    ids=["timeout", "html-500", "empty-502"],
)
def test_slow_and_malformed_answers_keep_the_row(
    session_factory: Factory,
    now: datetime,
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
    reply: Reply,
) -> None:
    [number] = seed(session_factory, now, 1)
    fake_telnyx.script["700"] = [reply]
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.purged, report.provider_failed) == (0, 1)
    kept = numbers_by_phone(session_factory)[number]
    assert kept.provider_error_message
    assert not kept.provider_failed_permanently
    assert tombstones_by_phone(session_factory) == {}


def test_a_provider_down_for_the_whole_run_is_not_hammered(
    session_factory: Factory,
    now: datetime,
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
    settings_env: Callable[..., None],
) -> None:
    seed(session_factory, now, 30)
    fake_telnyx.default = telnyx_error(503, "90001", "Service unavailable")
    settings_env(PROVIDER_FAILURE_STREAK="5", PROVIDER_CONCURRENCY="2")
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.status, report.purged) == ("provider_unavailable", 0)
    # The streak stops new calls; at most the calls already in flight finish.
    assert 5 <= sum(fake_telnyx.calls.values()) <= 5 + 1
    assert len(numbers_by_phone(session_factory)) == 30


def test_upstream_calls_are_bounded_in_concurrency(
    session_factory: Factory,
    now: datetime,
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
    settings_env: Callable[..., None],
) -> None:
    seed(session_factory, now, 12)
    fake_telnyx.default = Reply(200, None, delay=0.1)
    settings_env(PROVIDER_CONCURRENCY="3")
    assert purge_expired(session_factory, now=now, provider=telnyx).purged == 12
    assert fake_telnyx.max_in_flight == 3


def test_rows_left_claimed_by_a_dead_run_are_picked_up_and_called_again(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    numbers = seed(session_factory, now, 3)
    # A run claims (and commits), calls the provider, then dies before its second phase.
    with session_factory.begin() as session:
        claims = claim_batch(session, now=now, after=0, limit=10)
    for claim in claims:
        assert telnyx.release(claim.provider_number_id or "").outcome == "released"
    report = purge_expired(session_factory, now=now, provider=telnyx)
    assert (report.purged, report.provider_released) == (3, 3)
    # The second call for each number was harmless; each is tombstoned exactly once.
    assert dict(fake_telnyx.calls) == {"700": 2, "701": 2, "702": 2}
    assert sorted(tombstones_by_phone(session_factory)) == numbers


def test_the_key_never_reaches_logs_or_summaries(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    seed(session_factory, now, 2)
    fake_telnyx.script["701"] = [telnyx_error(500, "90000", "boom")]
    with capture_logs() as logs:
        report = purge_expired(session_factory, now=now, provider=telnyx)
    with session_factory() as session:
        status = store_status(session, now=now)
    everything = json.dumps([logs, report.as_dict(), status], default=str)
    assert API_KEY not in everything
    assert "90000" in everything  # the provider's code is there, the key is not


def test_repeated_runs_with_a_flaky_provider_lose_nothing(
    session_factory: Factory, now: datetime, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    """Every overdue number ends released upstream and tombstoned exactly once, or kept with
    its error; none is deleted without an upstream release."""
    now -= timedelta(days=3)  # eight runs, seven hours apart, all in the host's past
    numbers = seed(session_factory, now, 40)
    chance = random.Random(7)
    for i in range(40):
        kind = chance.random()
        if kind < 0.1:
            fake_telnyx.script[f"70{i}"] = [telnyx_error(422, "10015", "Unprocessable")]
        elif kind < 0.5:
            failures = [telnyx_error(500, "90000", "flaky")] * chance.randint(1, 3)
            fake_telnyx.script[f"70{i}"] = [*failures, OK]
    when = now
    for _ in range(8):
        purge_expired(session_factory, now=when, provider=telnyx)
        when += timedelta(hours=7)  # past every backoff of the first attempts
    tombstones = tombstones_by_phone(session_factory)
    kept = numbers_by_phone(session_factory)
    assert set(tombstones) | set(kept) == set(numbers)
    assert not set(tombstones) & set(kept)
    for number, stone in tombstones.items():
        assert stone.provider_number_id in fake_telnyx.released, number
    for row in kept.values():
        assert row.provider_number_id not in fake_telnyx.released
        assert row.provider_failed_permanently
        assert row.provider_code == "10015"
    assert len(tombstones) >= 30


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.processes
def test_a_worker_killed_between_claim_and_delete(
    pg_factory: Factory,
    process_env: Callable[..., dict[str, str]],
    fake_telnyx: FakeTelnyx,
    tmp_path: Path,
) -> None:
    """A real worker claims rows and is SIGKILLed while its upstream calls hang; the next run
    picks the claimed rows up, the provider sees those numbers twice, and every number is
    tombstoned exactly once."""
    now = datetime.now(UTC)
    numbers = seed(pg_factory, now, 12)
    fake_telnyx.default = Reply(200, "{}", delay=30)  # every call hangs: the worker dies mid-call
    env = process_env(
        PROVIDER="telnyx",
        TELNYX_BASE_URL=fake_telnyx.url,
        TELNYX_API_KEY=API_KEY,
        PROVIDER_BATCH_SIZE="6",
        PROVIDER_TIMEOUT_SECONDS="60",
    )
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        sent = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "worker", "call", "numbers.purge_expired"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert sent.stdout.strip()
        wait_for(lambda: fake_telnyx.in_flight >= 6, timeout=30, what="the worker's upstream calls")
        worker.kill()  # SIGKILL, the whole process group
        worker.popen.wait(10)
    finally:
        worker.stop()
    claimed = {n for n, row in numbers_by_phone(pg_factory).items() if row.purge_state == "purging"}
    assert len(claimed) == 6
    assert tombstones_by_phone(pg_factory) == {}
    fake_telnyx.default = OK
    provider = TelnyxProvider(base_url=fake_telnyx.url, api_key=API_KEY, timeout=5)
    try:
        report = purge_expired(pg_factory, now=now, provider=provider)
    finally:
        provider.close()
    assert (report.status, report.purged) == ("completed", 12)
    assert sorted(tombstones_by_phone(pg_factory)) == numbers
    called_twice = {pid for pid, count in fake_telnyx.calls.items() if count == 2}
    assert len(called_twice) == 6
    assert set(fake_telnyx.calls.values()) == {1, 2}
    assert API_KEY not in worker.output()
