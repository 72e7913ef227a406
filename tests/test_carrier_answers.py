"""Per-number truth: whose problem each documented answer of the carrier shows decides its
scope (issue 20). The key or the base URL stops the run with the real cause named; one
number's refusal keeps that number, waiting on a person or on the carrier, and the run goes
on; the carrier being down backs off. Against the Telnyx-like server on loopback, on both
backends."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from shared.provider import TelnyxProvider
from shared.status import store_status
from tests.factories import NOW, make_overdue
from tests.fake_telnyx import (
    API_KEY,
    FORBIDDEN,
    LOCKED,
    UNAUTHORIZED,
    FakeTelnyx,
    Reply,
    deletion_locked,
    port_out_pending,
    port_out_refusal,
    record,
    telnyx_error,
)
from tests.purging import purge_expired
from tests.stores import numbers_by_phone, tombstones_by_phone
from worker.cli.render import status_table
from worker.metrics import Reader, RetentionCollector

Factory = sessionmaker[Session]
# Every run decides two days before the suite's instant: later runs stay in the host's past.
WHEN = NOW - timedelta(days=2)
OVERDUE = timedelta(days=15)


def seed(factory: Factory, count: int) -> list[str]:
    """`count` overdue numbers with provider ids '500' + i; their E.164 numbers."""
    return make_overdue(
        factory, "acc_truth", "+1415640", count, lambda i: f"500{i}", now=WHEN, age=OVERDUE
    )


def pid(i: int) -> str:
    return f"500{i}"


def status_at(factory: Factory) -> dict[str, object]:
    with factory() as session:
        return store_status(session, now=WHEN)


# --- this number: kept, waiting on a person or on the carrier; the run goes on ------------------


def test_a_locked_number_is_kept_and_never_stalls_the_purge(
    session_factory: Factory, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    """Telnyx's 403 `10035` (resource locked) is about that number alone: the other 29 are
    purged, the locked one is kept with Telnyx's code, waiting on a person, and later runs
    neither call it again nor stop on it."""
    numbers = seed(session_factory, 30)
    fake_telnyx.script[pid(7)] = [LOCKED]
    report = purge_expired(session_factory, now=WHEN, provider=telnyx)
    assert (report.status, report.purged, report.remaining) == ("completed", 29, 1)
    assert (report.provider_released, report.provider_refused, report.provider_failed) == (
        29,
        1,
        0,
    )
    kept = numbers_by_phone(session_factory)
    assert list(kept) == [numbers[7]]
    locked = kept[numbers[7]]
    assert locked.provider_error_code == "provider_number_refused"
    assert locked.provider_code == "10035"
    assert locked.provider_failed_permanently  # only a person (Telnyx support) can lift it
    assert locked.provider_next_attempt_at is None
    assert "Contact Telnyx support" in (locked.provider_error_message or "")
    assert sorted(tombstones_by_phone(session_factory)) == numbers[:7] + numbers[8:]
    status = status_at(session_factory)
    assert (status["upstream_refused_person"], status["upstream_refused_carrier"]) == (1, 0)
    [stuck] = status["upstream_stuck"]  # type: ignore[misc]
    assert (stuck["waits_on"], stuck["refused"]) == ("person", True)
    assert stuck["provider_code"] == "10035"
    for later in (timedelta(hours=1), timedelta(hours=7)):
        again = purge_expired(session_factory, now=WHEN + later, provider=telnyx)
        assert (again.status, again.purged) == ("completed", 0)
    assert fake_telnyx.calls[pid(7)] == 1


def test_refusals_of_single_numbers_never_read_as_an_outage(
    session_factory: Factory,
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
    settings_env: Callable[..., None],
) -> None:
    """Twelve numbers in a row answer a 422 (a pending port-out) with a streak limit of 4:
    the carrier is up and answering, so the run completes; the refusals never count toward
    the streak, and a 422 Telnyx marks retryable waits on the carrier, the others on a person."""
    settings_env(PROVIDER_FAILURE_STREAK="4", PROVIDER_CONCURRENCY="2")
    numbers = seed(session_factory, 16)
    for i in range(12):
        fake_telnyx.script[pid(i)] = [port_out_refusal(retryable=i % 2 == 0 or None)]
    report = purge_expired(session_factory, now=WHEN, provider=telnyx)
    assert (report.status, report.purged) == ("completed", 4)
    assert (report.provider_refused, report.provider_failed) == (12, 0)
    assert sum(fake_telnyx.calls.values()) == 16
    kept = numbers_by_phone(session_factory)
    assert sorted(kept) == numbers[:12]
    assert all(row.provider_error_code == "provider_number_refused" for row in kept.values())
    assert all(row.provider_code == "10015" for row in kept.values())
    carrier = {n for n, row in kept.items() if not row.provider_failed_permanently}
    assert carrier == set(numbers[0:12:2])
    assert all(kept[n].provider_next_attempt_at == WHEN + timedelta(seconds=60) for n in carrier)
    status = status_at(session_factory)
    assert (status["upstream_refused_person"], status["upstream_refused_carrier"]) == (6, 6)
    assert status["upstream_claimed"] == 0  # every one of them was called and answered


@pytest.mark.parametrize(
    ("answer", "code", "waits_on"),
    [
        pytest.param(deletion_locked, "deletion_lock_enabled", "person", id="deletion-lock"),
        pytest.param(port_out_pending, "port-out-pending", "carrier", id="port-out-pending"),
        pytest.param(
            lambda i: record(i, status="active"), "active", "carrier", id="still-active-record"
        ),
    ],
)
def test_a_record_that_is_not_a_deletion_keeps_the_number(
    session_factory: Factory,
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
    answer: Callable[[str], Reply],
    code: str,
    waits_on: str,
) -> None:
    """Telnyx's record of the very id proves a release only in status "deleted" without a
    deletion lock: a record with its deletion lock on, or in `port-out-pending`, keeps the
    number (it was not deleted) and the run goes on."""
    numbers = seed(session_factory, 3)
    fake_telnyx.script[pid(1)] = [answer(pid(1)), Reply(200, None)]
    report = purge_expired(session_factory, now=WHEN, provider=telnyx)
    assert (report.status, report.purged) == ("completed", 2)
    assert report.provider_refused == 1
    kept = numbers_by_phone(session_factory)[numbers[1]]
    assert (kept.provider_error_code, kept.provider_code) == ("provider_number_refused", code)
    assert kept.provider_failed_permanently == (waits_on == "person")
    assert pid(1) not in fake_telnyx.released
    if waits_on == "carrier":  # retried after the backoff: the carrier finishes what it does
        assert kept.provider_next_attempt_at == WHEN + timedelta(seconds=60)
        later = purge_expired(session_factory, now=WHEN + timedelta(minutes=1), provider=telnyx)
        assert later.purged == 1
        assert numbers_by_phone(session_factory) == {}


# --- the key or the base URL: the run stops, naming the real cause ------------------------------

KEY, BASE_URL = "TELNYX_API_KEY", "TELNYX_BASE_URL"
STOPPING_ANSWERS = [
    pytest.param(UNAUTHORIZED, KEY, BASE_URL, id="401-10009"),
    pytest.param(FORBIDDEN, KEY, BASE_URL, id="403-10010"),
    pytest.param(Reply(403, '{"errors": []}'), KEY, BASE_URL, id="403-no-code"),
    pytest.param(
        Reply(403, "<h1>Forbidden</h1>", {"Content-Type": "text/html"}),
        BASE_URL,
        KEY,
        id="403-html",
    ),
    pytest.param(
        Reply(200, "<html>ok</html>", {"Content-Type": "text/html"}), BASE_URL, KEY, id="200-html"
    ),
    pytest.param(record("12345"), BASE_URL, KEY, id="record-of-another-id"),
]


@pytest.mark.parametrize(("stop", "names", "not_named"), STOPPING_ANSWERS)
def test_a_stopping_answer_names_its_cause_and_the_proven_releases_are_tombstoned(
    session_factory: Factory,
    fake_telnyx: FakeTelnyx,
    stop: Reply,
    names: str,
    not_named: str,
) -> None:
    """The key refused (401, a 403 without Telnyx's per-number code) or a base URL that is
    not Telnyx (HTML, a record of another id) stops the run, and its reason names that one
    setting. The numbers Telnyx released in the same batch, each with its own record, are
    tombstoned: never left released at the carrier and still in the store."""
    numbers = seed(session_factory, 8)
    fake_telnyx.script[pid(3)] = [Reply(stop.status, stop.body, stop.headers, delay=0.2)]
    # A timeout well above the answer's delay: on a busy machine the fixture's 0.5 s could
    # pass first, and a timeout keeps the number for a later run (a run `completed`).
    patient = TelnyxProvider(base_url=fake_telnyx.url, api_key=API_KEY, timeout=10)
    try:
        report = purge_expired(session_factory, now=WHEN, provider=patient)
    finally:
        patient.close()
    assert report.status == "provider_misconfigured"
    # Every call of the batch was in flight before the stopping answer came (concurrency 8).
    assert report.purged == 7
    assert names in (report.reason or "")
    assert not_named not in (report.reason or "")
    assert list(numbers_by_phone(session_factory)) == [numbers[3]]
    stones = tombstones_by_phone(session_factory).values()
    assert {stone.provider_number_id for stone in stones} == fake_telnyx.released
    kept = numbers_by_phone(session_factory)[numbers[3]]
    assert kept.provider_error_code == "provider_misconfigured"
    assert not kept.provider_failed_permanently
    status = status_at(session_factory)
    assert (status["upstream_refused_person"], status["upstream_refused_carrier"]) == (0, 0)


def test_the_pre_flight_check_names_the_key_when_telnyx_refuses_it(
    session_factory: Factory, fake_telnyx: FakeTelnyx
) -> None:
    seed(session_factory, 2)
    wrong = TelnyxProvider(base_url=fake_telnyx.url, api_key="KEY_revoked", timeout=0.5)
    try:
        report = purge_expired(session_factory, now=WHEN, provider=wrong)
    finally:
        wrong.close()
    assert (report.status, report.purged) == ("provider_misconfigured", 0)
    assert "TELNYX_API_KEY" in (report.reason or "")
    assert "TELNYX_BASE_URL" not in (report.reason or "")
    assert dict(fake_telnyx.calls) == {}  # nothing claimed, nothing sent


# --- the carrier down: as before, transient and backed off --------------------------------------


def test_refusals_between_failures_leave_the_outage_rule_as_it_was(
    session_factory: Factory,
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
    settings_env: Callable[..., None],
) -> None:
    """A carrier that fails every call stops the run as `provider_unavailable` after the
    streak, refused numbers or not; the refused ones are kept as refusals, the others retry."""
    settings_env(PROVIDER_FAILURE_STREAK="3", PROVIDER_CONCURRENCY="1")
    seed(session_factory, 10)
    fake_telnyx.default = telnyx_error(503, "10007", "Unexpected error")
    fake_telnyx.script[pid(0)] = [LOCKED]
    report = purge_expired(session_factory, now=WHEN, provider=telnyx)
    assert (report.status, report.purged) == ("provider_unavailable", 0)
    assert (report.provider_refused, report.provider_failed) == (1, 3)
    rows = {row.provider_number_id: row for row in numbers_by_phone(session_factory).values()}
    assert rows[pid(0)].provider_error_code == "provider_number_refused"
    assert {rows[pid(i)].provider_error_code for i in (1, 2, 3)} == {"provider_release_failed"}
    assert sum(fake_telnyx.calls.values()) == 4
    assert rows[pid(4)].provider_error_code is None  # never called: claimed for the next run


# --- counted apart: status, its table and the exporter ------------------------------------------


def test_refused_numbers_are_counted_apart_in_status_and_the_exporter(
    session_factory: Factory, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    seed(session_factory, 4)
    fake_telnyx.script[pid(0)] = [LOCKED]
    fake_telnyx.script[pid(1)] = [port_out_pending(pid(1))]
    fake_telnyx.script[pid(2)] = [telnyx_error(503, "10007", "Unexpected error")]
    report = purge_expired(session_factory, now=WHEN, provider=telnyx)
    assert (report.status, report.purged, report.provider_refused) == ("completed", 1, 2)
    status = status_at(session_factory)
    assert (status["upstream_failed"], status["upstream_permanent"]) == (3, 1)
    assert (status["upstream_refused_person"], status["upstream_refused_carrier"]) == (1, 1)
    stuck = {n["provider_code"]: n for n in status["upstream_stuck"]}  # type: ignore[attr-defined]
    assert {code: (n["refused"], n["waits_on"]) for code, n in stuck.items()} == {
        "10035": (True, "person"),
        "port-out-pending": (True, "carrier"),
        "10007": (False, None),
    }
    table = status_table(status)
    assert "  Refused by the carrier   2 (1 waiting on a person, 1 on the carrier)" in table
    assert "refused, waits on a person" in table
    assert "refused, waits on carrier" in table
    # The exporter's kinds split `upstream_failed` with nothing counted twice.
    collector = RetentionCollector(
        Reader(session_factory, None, clock=lambda: WHEN), cache_seconds=0
    )
    registry = CollectorRegistry()
    registry.register(collector)
    kinds = {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.name == "numbers_retention_upstream_failed"
    }
    assert kinds == {"transient": 1, "permanent": 0, "refused_person": 1, "refused_carrier": 1}
