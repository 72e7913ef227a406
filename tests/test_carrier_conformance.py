"""One conformance suite every carrier adapter passes against a fake written from that
carrier's API reference (issue 21): proof of release, not-found, the key refused, a wrong base
URL answering HTML, a redirect, crafted ids, per-number refusals, rate limiting with that
carrier's headers, undecodable answers, timeouts, server errors, and (for a carrier releasing
by orders) partial and unsettled orders.

A new carrier is added by writing its module (shared/carriers/) and its fake, plus its `Kit`
below: the cases run for it unchanged. The fakes are in-process HTTP servers on loopback,
started once for the module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from shared.carriers import CARRIERS, make_carrier
from shared.carriers.bandwidth import BandwidthProvider
from shared.carriers.base import REFUSED_CODE, Submitted, UpstreamResult, is_async
from shared.carriers.telnyx import TelnyxProvider
from shared.carriers.telnyx_jobs import TelnyxJobsProvider
from shared.carriers.twilio import TwilioProvider
from shared.settings import Settings
from tests import fake_bandwidth as bw
from tests import fake_twilio as tw
from tests.fake_telnyx import (
    API_KEY,
    LOCKED,
    NOT_FOUND,
    OK,
    TOO_MANY_REQUESTS,
    FakeTelnyx,
    Reply,
    StaticServer,
)

Adapter = Any  # a Provider, or an AsyncProvider


@dataclass
class Kit:
    """One carrier's adapter and fake, as the cases drive them."""

    name: str
    make: Callable[[str, bool, float], Adapter]  # (base URL, right credentials?, timeout)
    url: Callable[[], str]
    number: Callable[[int], str]
    hold: Callable[[str], None]
    holds_now: Callable[[str], bool]
    gone: Callable[[str], None]  # the carrier does not hold it (any more)
    refuse: Callable[[str], None]  # the carrier refuses to release this number alone
    refused_code: str
    # The next answer to the call that releases this number (then the carrier answers as
    # it stands); the carrier's 429 with its own headers; a 2xx whose body cannot be read.
    answer_next: Callable[[str, Reply], None]
    rate_limited: Reply
    garbage: Reply
    key_settings: str  # named in the fix of an answer refusing the credentials
    requested: Callable[[str], bool]  # whether any request named this text
    reset: Callable[[], None]


def release(adapter: Adapter, number: str) -> UpstreamResult:
    """The carrier's final outcome for one number: its release call, or (a carrier releasing
    by orders) its order placed, then read until it settles the number."""
    if not is_async(adapter):
        result: UpstreamResult = adapter.release(number)
        return result
    bad = adapter.invalid(number)
    if bad is not None:
        return bad
    placed = adapter.submit([number])
    if not isinstance(placed, Submitted):
        return placed
    for _ in range(5):
        settled = adapter.settle(placed.order_id, [number])
        if isinstance(settled, UpstreamResult):
            return settled
        if number in settled:
            return settled[number]
    raise AssertionError("the order never settled")


def _telnyx_kit(fake: FakeTelnyx) -> Kit:
    def reset() -> None:
        fake.script.clear()
        fake.released.clear()
        fake.calls.clear()
        fake.log.clear()
        fake.held = set()

    def hold(number: str) -> None:
        assert fake.held is not None
        fake.held.add(number)

    def gone(number: str) -> None:
        fake.script[number] = [NOT_FOUND]

    return Kit(
        name="telnyx",
        make=lambda url, good, timeout: TelnyxProvider(
            base_url=url, api_key=API_KEY if good else "KEY_wrong", timeout=timeout
        ),
        url=lambda: fake.url,
        number=lambda i: f"77{i:04d}",
        hold=hold,
        holds_now=fake.holds,
        gone=gone,
        refuse=lambda number: fake.script.__setitem__(number, [LOCKED]),
        refused_code="10035",
        answer_next=lambda number, reply: fake.script.__setitem__(number, [reply, OK]),
        rate_limited=Reply(
            429,
            TOO_MANY_REQUESTS,
            {"x-ratelimit-limit": "10", "x-ratelimit-remaining": "0", "Retry-After": "0.05"},
        ),
        garbage=Reply(200, '{"data": {"id": '),
        key_settings="TELNYX_API_KEY",
        requested=lambda text: any(text in path for _m, path, _a in fake.log),
        reset=reset,
    )


def _held_in_a_set(fake: tw.FakeTwilio | bw.FakeBandwidth) -> dict[str, Any]:
    """The parts of a kit whose fake keeps the numbers it holds in a set and logs each
    request as (method, path)."""
    return {
        "url": lambda: fake.url,
        "hold": fake.held.add,
        "holds_now": lambda number: number in fake.held,
        "gone": fake.held.discard,
        "requested": lambda text: any(text in path for _m, path in fake.log),
        "reset": fake.reset,
    }


def _twilio_kit(fake: tw.FakeTwilio) -> Kit:
    def refuse(number: str) -> None:
        fake.held.add(number)
        fake.emergency.add(number)

    return Kit(
        name="twilio",
        make=lambda url, good, timeout: TwilioProvider(
            base_url=url,
            account_sid=tw.ACCOUNT_SID,
            auth_token=tw.AUTH_TOKEN if good else "wrong_token",
            timeout=timeout,
        ),
        number=tw.sid,
        refuse=refuse,
        refused_code=str(tw.EMERGENCY_ADDRESS_CODE),
        answer_next=lambda number, reply: fake.script.__setitem__(number, [reply]),
        rate_limited=Reply(429, tw.TOO_MANY_REQUESTS.body, {"Retry-After": "0.05"}),
        garbage=Reply(200, "\xff{not json"),
        key_settings="TWILIO_AUTH_TOKEN",
        **_held_in_a_set(fake),
    )


def _telnyx_jobs_kit(fake: FakeTelnyx) -> Kit:
    kit = _telnyx_kit(fake)
    base_reset = kit.reset

    def reset() -> None:
        base_reset()
        fake.job_failures.clear()
        fake.job_script.clear()
        fake.job_pending_reads = 0

    def refuse(number: str) -> None:
        kit.hold(number)
        fake.job_failures[number] = ("10035", "Resource locked")

    def gone(number: str) -> None:
        assert fake.held is not None
        fake.held.discard(number)

    kit.name = "telnyx"
    kit.make = lambda url, good, timeout: TelnyxJobsProvider(
        base_url=url, api_key=API_KEY if good else "KEY_wrong", timeout=timeout
    )
    kit.number = lambda i: f"78{i:04d}"
    kit.gone = gone
    kit.refuse = refuse
    kit.answer_next = lambda number, reply: fake.job_script.__setitem__("POST job", [reply])
    kit.garbage = Reply(202, '{"data": {"id": ')
    kit.reset = reset
    return kit


BANDWIDTH_REFUSAL = bw.DISCONNECT_ERROR


def _bandwidth_kit(fake: bw.FakeBandwidth) -> Kit:
    def refuse(number: str) -> None:
        fake.held.add(number)
        fake.refuse[number] = BANDWIDTH_REFUSAL

    return Kit(
        name="bandwidth",
        make=lambda url, good, timeout: BandwidthProvider(
            base_url=url,
            account_id=bw.ACCOUNT_ID,
            username=bw.USERNAME,
            password=bw.PASSWORD if good else "wrong",
            timeout=timeout,
        ),
        number=bw.tn,
        refuse=refuse,
        refused_code=BANDWIDTH_REFUSAL[0],
        answer_next=lambda number, reply: fake.script.__setitem__("POST", [reply]),
        rate_limited=Reply(429, bw.TOO_MANY_REQUESTS.body, {**bw.XML, "Retry-After": "0.05"}),
        garbage=Reply(201, "<DisconnectTelephoneNumberOrderResponse><orderRequest><id>", bw.XML),
        key_settings="BANDWIDTH_PASSWORD",
        **_held_in_a_set(fake),
    )


@pytest.fixture(scope="module")
def kits() -> Iterator[dict[str, Kit]]:
    telnyx, twilio, bandwidth = FakeTelnyx(), tw.FakeTwilio(), bw.FakeBandwidth()
    with telnyx.running(), twilio.running(), bandwidth.running():
        yield {
            "telnyx": _telnyx_kit(telnyx),
            "twilio": _twilio_kit(twilio),
            "bandwidth": _bandwidth_kit(bandwidth),
            "telnyx-jobs": _telnyx_jobs_kit(telnyx),
        }


@pytest.fixture(params=["telnyx", "twilio", "bandwidth", "telnyx-jobs"])
def kit(request: pytest.FixtureRequest, kits: dict[str, Kit]) -> Kit:
    chosen = kits[request.param]
    chosen.reset()
    return chosen


@pytest.fixture
def adapter(kit: Kit) -> Iterator[Adapter]:
    made = kit.make(kit.url(), True, 0.5)
    yield made
    made.close()


def test_every_carrier_has_a_module_and_a_kit(kits: dict[str, Kit]) -> None:
    """The family is what the settings name: a module per carrier, each under this suite."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        twilio_account_sid=tw.ACCOUNT_SID,
        bandwidth_account_id=bw.ACCOUNT_ID,
    )
    for name in CARRIERS:
        made = make_carrier(name, settings)
        assert made.name == name
        made.close()
    assert {kit.name for kit in kits.values()} == set(CARRIERS) - {"none"}


# --- proof ------------------------------------------------------------------------------------


def test_a_release_counts_on_the_carriers_proof(kit: Kit, adapter: Adapter) -> None:
    number = kit.number(1)
    kit.hold(number)
    assert adapter.check() is None
    assert adapter.holds(number)
    result = release(adapter, number)
    assert (result.outcome, result.resolution) == ("released", "provider")
    assert not kit.holds_now(number)
    assert not adapter.holds(number)


def test_not_found_is_a_release_only_for_a_proven_account(kit: Kit, adapter: Adapter) -> None:
    """The carrier's own "not found": released, but only where the account is proven (the
    purge turns it into a stop otherwise: shared/purge/upstream.py)."""
    number = kit.number(2)
    kit.gone(number)
    result = release(adapter, number)
    assert (result.outcome, result.needs_account) == ("released", True)


# --- configuration: the run stops and says what to check ---------------------------------------


def test_refused_credentials_stop_and_name_the_settings(kit: Kit) -> None:
    wrong = kit.make(kit.url(), False, 0.5)
    try:
        number = kit.number(3)
        kit.hold(number)
        checked = wrong.check()
        assert checked is not None
        assert checked.outcome == "misconfigured"
        assert checked.error is not None
        assert kit.key_settings in checked.error.fix
        assert release(wrong, number).outcome == "misconfigured"
        assert kit.holds_now(number)
    finally:
        wrong.close()


@pytest.mark.parametrize(
    "answer",
    [
        Reply(200, "<html><body>Welcome</body></html>", {"Content-Type": "text/html"}),
        Reply(301, "", {"Location": "https://example.com/login"}),
        Reply(404, "<html>Not Found</html>", {"Content-Type": "text/html"}),
    ],
    ids=["html", "redirect", "html-404"],
)
def test_a_wrong_base_url_stops_and_never_releases(kit: Kit, answer: Reply) -> None:
    with StaticServer(answer) as server:
        wrong = kit.make(server.url, True, 0.5)
        try:
            checked = wrong.check()
            assert checked is not None
            assert checked.outcome == "misconfigured"
            result = release(wrong, kit.number(4))
            assert result.outcome == "misconfigured"
        finally:
            wrong.close()


# --- crafted ids: never sent ---------------------------------------------------------------------


@pytest.mark.parametrize("crafted", ["../1", "1/../../accounts", "%2e%2e", "", " 1", "x" * 40])
def test_a_crafted_id_is_never_sent(kit: Kit, adapter: Adapter, crafted: str) -> None:
    result = release(adapter, crafted)
    assert result.outcome == "permanent"
    assert result.error is not None
    assert result.error.code == "invalid_provider_number_id"
    assert not (crafted and kit.requested(crafted))


def test_an_id_with_a_path_appended_is_never_sent(kit: Kit, adapter: Adapter) -> None:
    crafted = kit.number(5) + "/../x"
    assert release(adapter, crafted).outcome == "permanent"
    assert not kit.requested("/x")


# --- one number's refusal: kept with the carrier's code ---------------------------------------


def test_a_refusal_keeps_that_number_with_the_carriers_code(kit: Kit, adapter: Adapter) -> None:
    number = kit.number(6)
    kit.refuse(number)
    result = release(adapter, number)
    assert (result.outcome, result.waits_on) == ("refused", "person")
    assert result.error is not None
    assert (result.error.code, result.error.provider_code) == (REFUSED_CODE, kit.refused_code)
    assert result.error.provider == kit.name


# --- availability: backed off ---------------------------------------------------------------------


def test_the_carriers_rate_limit_is_waited_out(kit: Kit, adapter: Adapter) -> None:
    """A 429 with the carrier's headers is waited out and the call asked again: released,
    and counted as a 429 (never a failure of the number)."""
    number = kit.number(7)
    kit.hold(number)
    kit.answer_next(number, kit.rate_limited)
    result = release(adapter, number)
    assert result.outcome == "released"
    assert adapter.pace.limited == 1


def test_server_errors_back_off(kit: Kit, adapter: Adapter) -> None:
    number = kit.number(8)
    kit.hold(number)
    kit.answer_next(number, Reply(503, "", {"Retry-After": "30"}))
    result = release(adapter, number)
    assert (result.outcome, result.retry_after) == ("transient", 30.0)
    assert kit.holds_now(number)


def test_an_undecodable_answer_is_never_a_release(kit: Kit, adapter: Adapter) -> None:
    number = kit.number(9)
    kit.hold(number)
    kit.answer_next(number, kit.garbage)
    result = release(adapter, number)
    assert result.outcome in ("misconfigured", "transient")
    assert kit.holds_now(number)


def test_a_timeout_is_the_carrier_down(kit: Kit) -> None:
    slow = kit.make(kit.url(), True, 0.2)
    try:
        number = kit.number(10)
        kit.hold(number)
        kit.answer_next(number, Reply(204, "", delay=0.5))
        result = release(slow, number)
        assert result.outcome == "transient"
        assert result.error is not None
        assert result.error.code == "provider_unreachable"
    finally:
        slow.close()


# --- orders (carriers releasing asynchronously) --------------------------------------------------


def held_refused_gone(
    kit: Kit, adapter: Adapter, held: str, refused: str, gone: str
) -> tuple[Submitted, dict[str, UpstreamResult]]:
    """One order for three numbers: one the carrier holds, one it refuses to release, one it
    does not hold; the order placed, and what its first read settles."""
    kit.hold(held)
    kit.refuse(refused)
    placed = adapter.submit([held, refused, gone])
    assert isinstance(placed, Submitted)
    settled = adapter.settle(placed.order_id, [held, refused, gone])
    assert isinstance(settled, dict)
    return placed, settled


@pytest.fixture
def ordering(kits: dict[str, Kit]) -> Iterator[tuple[Kit, Adapter, Any]]:
    kit = kits["bandwidth"]
    kit.reset()
    made = kit.make(kit.url(), True, 0.5)
    yield kit, made, made
    made.close()


def test_a_partial_order_settles_each_number_by_its_own_outcome(
    ordering: tuple[Kit, Adapter, Any],
) -> None:
    kit, adapter, _ = ordering
    held, refused, gone = kit.number(11), kit.number(12), kit.number(13)
    placed, settled = held_refused_gone(kit, adapter, held, refused, gone)
    assert settled[held].outcome == "released"
    assert not settled[held].needs_account
    assert settled[held].proof is not None
    assert settled[held].proof["order"] == placed.order_id
    assert settled[held].proof["status"] == "PARTIAL"
    assert settled[refused].outcome == "refused"
    assert (settled[gone].outcome, settled[gone].needs_account) == ("released", True)


def test_an_order_not_settled_yet_settles_nothing(ordering: tuple[Kit, Adapter, Any]) -> None:
    kit, adapter, _ = ordering
    fake: bw.FakeBandwidth = adapter_fake(kit)
    fake.pending_reads = None  # never settles
    number = kit.number(14)
    kit.hold(number)
    placed = adapter.submit([number])
    assert isinstance(placed, Submitted)
    assert adapter.settle(placed.order_id, [number]) == {}
    assert kit.holds_now(number)


def test_an_order_in_an_unknown_status_stops(ordering: tuple[Kit, Adapter, Any]) -> None:
    kit, adapter, _ = ordering
    fake = adapter_fake(kit)
    fake.script["GET order"] = [
        Reply(
            200,
            bw.HEAD + "<DisconnectTelephoneNumberOrderResponse><OrderStatus>DONE-ISH"
            "</OrderStatus></DisconnectTelephoneNumberOrderResponse>",
            bw.XML,
        )
    ]
    settled = adapter.settle("0b1c", [kit.number(15)])
    assert isinstance(settled, UpstreamResult)
    assert settled.outcome == "misconfigured"


def adapter_fake(kit: Kit) -> bw.FakeBandwidth:
    """The Bandwidth fake behind a kit (its reset is the fake's bound method)."""
    fake = getattr(kit.reset, "__self__", None)
    assert isinstance(fake, bw.FakeBandwidth)
    return fake


def test_the_twilio_proof_is_a_read_after_its_bodiless_answer(kits: dict[str, Kit]) -> None:
    """Twilio's 204 says nothing of the number: the read after it must answer Twilio's own
    404 (20404); a 204 followed by the number's record is no release."""
    kit = kits["twilio"]
    kit.reset()
    fake = getattr(kit.reset, "__self__", None)
    assert isinstance(fake, tw.FakeTwilio)
    adapter = kit.make(kit.url(), True, 0.5)
    try:
        number = kit.number(16)
        kit.hold(number)
        fake.script[number] = [Reply(204, "")]  # answered 204, but nothing was deleted
        result = adapter.release(number)
        assert result.outcome == "refused"
        assert result.waits_on == "carrier"
        assert ("GET", f"{tw.NUMBERS}{number}.json") in fake.log
        fake.script[number] = [Reply(204, "")]
        fake.held.discard(number)
        proven = adapter.release(number)
        assert (proven.outcome, proven.account_bound) == ("released", True)
        assert proven.proof is not None
        assert proven.proof["read"].startswith("GET ")
    finally:
        adapter.close()


def test_a_telnyx_deletion_job_settles_each_number_by_its_own_operation(
    kits: dict[str, Kit],
) -> None:
    """Telnyx's bulk deletion job: 202 with the job; a later read of the job settles each
    number by its own operation (successful, failed with Telnyx's code, or not found)."""
    kit = kits["telnyx-jobs"]
    kit.reset()
    adapter = kit.make(kit.url(), True, 0.5)
    try:
        held, refused, gone = kit.number(21), kit.number(22), kit.number(23)
        placed, settled = held_refused_gone(kit, adapter, held, refused, gone)
        assert (settled[held].outcome, settled[held].resolution) == ("released", "provider")
        assert settled[held].proof == {
            "resolution": "provider",
            "call": "POST /v2/phone_numbers/jobs/delete_phone_numbers",
            "job": placed.order_id,
        }
        assert settled[refused].error is not None
        assert (settled[refused].outcome, settled[refused].error.provider_code) == (
            "refused",
            "10035",
        )
        assert (settled[gone].outcome, settled[gone].needs_account) == ("released", True)
        assert not kit.holds_now(held)
    finally:
        adapter.close()
