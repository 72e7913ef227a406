"""Fail safe: the purge deletes only what is provably due and released, whatever the
configuration, the provider's answer or the operator's input (issue: fail safe)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared.models import NumberEvent, PhoneNumber, PurgeRun
from shared.provider import TelnyxProvider
from shared.purge.operator import resolve_by_operator
from shared.status import store_status
from tests.factories import NOW, make_number, make_overdue
from tests.fake_telnyx import API_KEY, FakeTelnyx, Reply, StaticServer, record
from tests.purging import purge_expired
from tests.stores import numbers_by_phone, tombstones_by_phone

Factory = sessionmaker[Session]
Invoke = Callable[..., Result]
# Every purge here decides a day before the suite's instant: never ahead of the host's clock.
WHEN = NOW - timedelta(days=1)
OVERDUE = timedelta(days=15)


def seed(factory: Factory, count: int, *, ids: Callable[[int], str | None] = str) -> list[str]:
    """`count` overdue numbers with provider ids ids(i); their E.164 numbers."""
    return make_overdue(
        factory, "acc_safe", "+1415620", count, lambda i: ids(900 + i), now=WHEN, age=OVERDUE
    )


def telnyx_at(url: str) -> TelnyxProvider:
    return TelnyxProvider(base_url=url, api_key=API_KEY, timeout=0.5)


# --- 1. a wrong provider configuration never counts as a release ------------------------------


@pytest.mark.parametrize("suffix", ["/v2", "/api"])
def test_an_extra_path_in_the_base_url_deletes_nothing(
    session_factory: Factory, fake_telnyx: FakeTelnyx, suffix: str
) -> None:
    numbers = seed(session_factory, 3)
    provider = telnyx_at(fake_telnyx.url + suffix)
    try:
        report = purge_expired(session_factory, now=WHEN, provider=provider)
    finally:
        provider.close()
    assert (report.status, report.purged) == ("provider_misconfigured", 0)
    assert report.reason is not None
    assert "TELNYX_BASE_URL" in report.reason
    assert dict(fake_telnyx.calls) == {}  # the pre-flight check stopped it: no DELETE sent
    assert set(numbers_by_phone(session_factory)) == set(numbers)
    assert tombstones_by_phone(session_factory) == {}
    with session_factory() as session:
        run = session.scalars(select(PurgeRun)).one()
    assert run.status == "provider_misconfigured"


@pytest.mark.parametrize(("status", "body"), [(404, "<h1>Not Found</h1>"), (200, "<h1>Hi</h1>")])
def test_a_web_server_answering_html_deletes_nothing(
    session_factory: Factory, status: int, body: str
) -> None:
    numbers = seed(session_factory, 3)
    with StaticServer(Reply(status, body, {"Content-Type": "text/html"})) as server:
        provider = telnyx_at(server.url)
        try:
            report = purge_expired(session_factory, now=WHEN, provider=provider)
        finally:
            provider.close()
    assert (report.status, report.purged) == ("provider_misconfigured", 0)
    assert set(numbers_by_phone(session_factory)) == set(numbers)
    assert tombstones_by_phone(session_factory) == {}


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(200, "<html>ok</html>", {"Content-Type": "text/html"}), id="200-html"),
        pytest.param(Reply(404, "<html>gone</html>", {"Content-Type": "text/html"}), id="404-html"),
        pytest.param(Reply(404, "{}"), id="404-json-not-telnyx"),
        pytest.param(record("12345"), id="record-of-another-id"),
        pytest.param(Reply(200, '{"data": {"id": "900"}}'), id="no-record-type"),
        pytest.param(Reply(200, "not json"), id="200-unparsable"),
        pytest.param(Reply(301, "", {"Location": "https://elsewhere/"}), id="redirect"),
        pytest.param(Reply(405, "<html>no</html>", {"Content-Type": "text/html"}), id="405"),
    ],
)
def test_an_answer_that_does_not_prove_the_release_keeps_the_row_and_stops_the_run(
    session_factory: Factory, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider, reply: Reply
) -> None:
    numbers = seed(session_factory, 4)
    fake_telnyx.script["900"] = [reply]
    report = purge_expired(session_factory, now=WHEN, provider=telnyx)
    # The other three calls were in flight with it; each of them was answered with the record
    # of its own id, which proves its release whatever another number's answer was: they are
    # tombstoned (issue 20: never left released at the carrier and still in the store).
    assert (report.status, report.purged) == ("provider_misconfigured", 3)
    left = numbers_by_phone(session_factory)
    assert set(left) == {numbers[0]}
    assert left[numbers[0]].provider_error_code == "provider_misconfigured"
    # The run stopped calling: at most the calls already in flight were made.
    assert fake_telnyx.calls["900"] == 1
    assert sorted(tombstones_by_phone(session_factory)) == numbers[1:]
    with session_factory() as session:
        last = store_status(session, now=WHEN)["last_runs"][0]
    assert last["status"] == "provider_misconfigured"
    assert "TELNYX_BASE_URL" in last["reason"]


# --- 2. an undecodable answer is one number's failure, not a stalled purge ----------------------


def test_an_undecodable_answer_is_a_transient_failure_of_that_number(
    session_factory: Factory, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    numbers = seed(session_factory, 3)
    fake_telnyx.script["900"] = [Reply(200, "not gzip at all", {"Content-Encoding": "gzip"})]
    report = purge_expired(session_factory, now=WHEN, provider=telnyx)
    assert (report.status, report.purged, report.provider_failed) == ("completed", 2, 1)
    kept = numbers_by_phone(session_factory)[numbers[0]]
    assert kept.provider_error_code == "provider_unreachable"
    assert not kept.provider_failed_permanently
    assert kept.provider_next_attempt_at is not None
    with session_factory() as session:
        assert store_status(session, now=WHEN)["upstream_failed"] == 1
    # The next run, past the backoff, releases it: nothing stays stuck behind it.
    fake_telnyx.script["900"] = []
    later = WHEN + timedelta(hours=1)
    assert purge_expired(session_factory, now=later, provider=telnyx).purged == 1
    assert numbers_by_phone(session_factory) == {}


# --- 3. a stored provider id can never address another resource --------------------------------

CRAFTED = ["777/../888", "../../v2/phone_numbers/888", "777#frag", "777?x=1", "7 7", "٣", ""]


@pytest.mark.parametrize("crafted", CRAFTED)
def test_a_crafted_provider_id_is_refused_where_it_is_stored(
    session: Session, crafted: str
) -> None:
    with pytest.raises(shared.ValidationError) as refused:
        make_number(
            session, account_id="acc_x", phone_number="+14155559000", provider_number_id=crafted
        )
    assert refused.value.code == "invalid_provider_number_id"
    assert refused.value.body()["error"]["fix"]


def test_a_crafted_id_already_in_the_store_is_never_sent(
    session_factory: Factory, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    numbers = seed(session_factory, len(CRAFTED) - 1)
    with session_factory.begin() as session:  # written before ids were validated
        for number, crafted in zip(numbers, CRAFTED, strict=False):
            session.execute(
                update(PhoneNumber)
                .where(PhoneNumber.phone_number == number)
                .values(provider_number_id=crafted)
            )
    report = purge_expired(session_factory, now=WHEN, provider=telnyx)
    assert (report.purged, report.provider_failed) == (0, len(numbers))
    assert dict(fake_telnyx.calls) == {}
    assert fake_telnyx.paths == []
    assert all(
        row.provider_error_code == "invalid_provider_number_id" and row.provider_failed_permanently
        for row in numbers_by_phone(session_factory).values()
    )


def test_a_valid_id_travels_as_exactly_one_path_segment(
    fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    assert telnyx.release("1293384261075731499").resolution == "provider"
    assert fake_telnyx.paths == ["/v2/phone_numbers/1293384261075731499"]


# --- 4. switching the provider off never deletes what the carrier may still hold -----------------


def test_rows_with_upstream_state_wait_for_the_provider_or_a_person(
    session_factory: Factory, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    transient, permanent, claimed, untouched = seed(session_factory, 4)
    fake_telnyx.script["900"] = [Reply(503, "")]
    fake_telnyx.script["901"] = [Reply(422, '{"errors": [{"code": "10007"}]}')]
    fake_telnyx.script["902"] = [Reply(200, None, delay=5)]  # answered after the run gave up
    fake_telnyx.script["903"] = [Reply(503, "")]
    purge_expired(session_factory, now=WHEN, provider=telnyx)
    with session_factory.begin() as session:  # as a killed run leaves it: claimed, no answer
        session.execute(
            update(PhoneNumber)
            .where(PhoneNumber.phone_number == claimed)
            .values(purge_state="purging", provider_error_code=None, provider_attempts=0)
        )
        session.execute(
            update(PhoneNumber)
            .where(PhoneNumber.phone_number == untouched)
            .values(purge_state=None, provider_error_code=None, provider_number_id=None)
        )
    # PROVIDER=none now: only the number no upstream run touched goes.
    report = purge_expired(session_factory, now=WHEN + timedelta(hours=1))
    assert (report.provider, report.purged) == ("none", 1)
    assert set(numbers_by_phone(session_factory)) == {transient, permanent, claimed}
    with session_factory() as session:
        status = store_status(session, now=WHEN)
    assert (status["upstream_failed"], status["upstream_claimed"]) == (2, 1)

    # A person settles one by hand: the tombstone records who and why.
    with session_factory.begin() as session:
        answer = resolve_by_operator(
            session, phone_number=permanent, reason="released in the portal, T-42", by="ops"
        )
    assert answer["resolution"] == "operator"
    stone = tombstones_by_phone(session_factory)[permanent]
    assert (stone.resolution, stone.resolved_by, stone.resolution_note) == (
        "operator",
        "ops",
        "released in the portal, T-42",
    )
    assert stone.upstream_released_at is None
    assert set(numbers_by_phone(session_factory)) == {transient, claimed}
    with session_factory() as session:
        purged = session.scalars(select(NumberEvent).where(NumberEvent.kind == "purged"))
        assert permanent in {event.phone_number for event in purged}


def test_settling_by_hand_refuses_what_it_cannot_prove(session_factory: Factory) -> None:
    [number] = seed(session_factory, 1)
    with session_factory.begin() as session:
        make_number(session, account_id="acc_safe", phone_number="+14155559999", now=WHEN)
    for phone, reason, code in [
        (number, "done", "no_upstream_state"),  # the purge handles it by itself
        ("+14155559998", "done", "no_upstream_state"),  # unknown
        (number, "", "invalid_reason"),
        ("not a number", "done", "invalid_phone_number"),
    ]:
        with session_factory.begin() as session, pytest.raises(shared.ValidationError) as refused:
            resolve_by_operator(session, phone_number=phone, reason=reason, by="ops")
        assert refused.value.code == code
    with session_factory.begin() as session, pytest.raises(shared.ValidationError) as refused:
        resolve_by_operator(session, phone_number=number, reason="done", by="")
    assert refused.value.code == "invalid_by"
    assert refused.value.fix.startswith("Pass who acts")
    with session_factory.begin() as session:
        session.execute(
            update(PhoneNumber)
            .where(PhoneNumber.phone_number == number)
            .values(purge_state="purging", purge_hold=True)
        )
    with session_factory.begin() as session, pytest.raises(shared.ValidationError) as refused:
        resolve_by_operator(session, phone_number=number, reason="done", by="ops")
    assert refused.value.code == "number_not_due"
    # Settled as of an instant ahead of the host's clock: refused, as a real purge run is.
    with session_factory.begin() as session:
        session.execute(
            update(PhoneNumber).where(PhoneNumber.phone_number == number).values(purge_hold=False)
        )
    ahead = datetime.now(UTC) + timedelta(days=1)
    with session_factory.begin() as session, pytest.raises(shared.ValidationError) as refused:
        resolve_by_operator(session, phone_number=number, reason="done", by="ops", now=ahead)
    assert refused.value.code == "now_in_future"
    assert tombstones_by_phone(session_factory) == {}


# --- 5. a future instant is refused by the library, not only by the task ------------------------


def test_a_real_run_ahead_of_the_clock_is_refused_and_a_dry_run_may_look_ahead(
    session_factory: Factory,
) -> None:
    with session_factory.begin() as session:
        make_number(
            session,
            account_id="acc_safe",
            phone_number="+14155559100",
            released_at=datetime.now(UTC) - timedelta(days=1),
            now=datetime.now(UTC),
        )
    future = datetime.now(UTC) + timedelta(days=30)
    with pytest.raises(shared.ValidationError) as refused:
        purge_expired(session_factory, now=future)
    assert refused.value.code == "now_in_future"
    assert len(numbers_by_phone(session_factory)) == 1
    dry = purge_expired(session_factory, now=future, dry_run=True)
    assert (dry.status, dry.would_purge) == ("dry_run", 1)
    with session_factory() as session:
        runs = session.scalars(select(PurgeRun)).all()
    assert all(run.started_at <= datetime.now(UTC) for run in runs)


def test_the_cli_refuses_a_future_purge_and_publication(
    tmp_path: Path, cli_in: Callable[..., Invoke]
) -> None:
    cli = cli_in(tmp_path, REDIS_URL="redis://127.0.0.1:1/0", LOG_FORMAT="auto")
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    assert cli("migrate").exit_code == 0
    for args in (("purge", "--now", future), ("publish", "--now", future)):
        done = cli(*args)
        assert done.exit_code == 2, (args, done.stderr)
        assert json.loads(done.stderr)["error"]["code"] == "now_in_future"


@pytest.mark.parametrize("where", ["html", "closed port"])
def test_the_cli_purge_stopped_by_the_provider_exits_5(
    tmp_path: Path, where: str, cli_in: Callable[..., Invoke]
) -> None:
    """A cron job or CI step must not read a run the provider stopped as a success."""
    settings = {"PROVIDER": "telnyx", "TELNYX_API_KEY": API_KEY, "PROVIDER_FAILURE_STREAK": "1"}
    with StaticServer(Reply(200, "<h1>Hi</h1>", {"Content-Type": "text/html"})) as proxy:
        cli = cli_in(
            tmp_path,
            **settings,
            TELNYX_BASE_URL=proxy.url if where == "html" else "http://127.0.0.1:1",
            LOG_FORMAT="auto",
        )
        assert cli("migrate").exit_code == 0
        done = cli("purge")
    assert done.exit_code == 5, done.stderr
    status = "provider_misconfigured" if where == "html" else "provider_unavailable"
    assert json.loads(done.stdout)["status"] == status
    assert f"purge stopped ({status})" in done.stderr


# --- 9. the embedded default (SQLite) enforces the rules PostgreSQL's row locks do --------------


def _at_once(*calls: Callable[[], object]) -> list[object]:
    """Run the calls on threads released together; each one's result or ApiError."""
    start = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except shared.ApiError as error:
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_two_repurchases_at_once_never_pass_the_plan_cap(session_factory: Factory) -> None:
    for round_ in range(5):
        first, second = f"+141562{round_}0001", f"+141562{round_}0002"
        account = f"acc_free{round_}"
        with session_factory.begin() as session:
            make_number(session, account_id=account, phone_number=first, plan="free",
                        released_at=WHEN - timedelta(days=1), now=WHEN)  # fmt: skip
            make_number(session, account_id=account, phone_number=second, plan="free",
                        released_at=WHEN - timedelta(days=1), now=WHEN)  # fmt: skip

        def buy(number: str, account: str = account) -> Callable[[], object]:
            def call() -> object:
                with session_factory.begin() as session:
                    return shared.repurchase_number(
                        session, account_id=account, phone_number=number, now=WHEN
                    )

            return call

        results = _at_once(buy(first), buy(second))
        errors = [r for r in results if isinstance(r, shared.ApiError)]
        assert len(errors) == 1, results
        assert (errors[0].status, errors[0].code) == (402, "plan_limit_reached")
        with session_factory() as session:
            active = session.scalar(
                select(func.count()).where(
                    PhoneNumber.account_id == account, PhoneNumber.billing_status == "active"
                )
            )
        assert active == 1


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_repurchases_racing_a_purge_end_in_the_envelope_or_a_tombstone(
    session_factory: Factory, fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    numbers = seed(session_factory, 20)
    # The buyers act a second before the deadline; the purge decides a day after it.
    just_in_time = WHEN - OVERDUE + shared.RETENTION - timedelta(seconds=1)

    def buy(number: str) -> object:
        with session_factory.begin() as session:
            return shared.repurchase_number(
                session, account_id="acc_safe", phone_number=number, now=just_in_time
            )

    calls: list[Callable[[], object]] = [
        lambda: purge_expired(session_factory, now=WHEN, provider=telnyx)
    ]
    calls += [lambda n=n: buy(n) for n in numbers[::2]]  # type: ignore[misc]
    results = _at_once(*calls)
    # No raw database error: each repurchase answered or refused with the envelope.
    assert all(isinstance(r, dict | shared.ApiError | shared.PurgeReport) for r in results)
    for error in (r for r in results if isinstance(r, shared.ApiError)):
        assert error.code in ("repurchase_window_closed", "number_being_purged", "number_not_found")
    gone, left = tombstones_by_phone(session_factory), numbers_by_phone(session_factory)
    assert set(gone) | set(left) == set(numbers)
    assert not set(gone) & set(left)
