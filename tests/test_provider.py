"""The Telnyx adapter against a real HTTP server on loopback that answers like Telnyx."""

from __future__ import annotations

import socket

import pytest

from shared.provider import NoProvider, TelnyxProvider, make_provider
from shared.settings import Settings
from tests.fake_telnyx import (
    API_KEY,
    FORBIDDEN,
    LOCKED,
    NOT_FOUND,
    OK,
    TOO_MANY_REQUESTS,
    UNAUTHORIZED,
    FakeTelnyx,
    Reply,
    StaticServer,
    deletion_locked,
    port_out_pending,
    port_out_refusal,
    record,
    telnyx_error,
)


def test_200_releases(fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider) -> None:
    assert telnyx.release("111").outcome == "released"
    assert fake_telnyx.calls == {"111": 1}


def test_404_counts_as_released_so_the_call_is_safe_to_repeat(
    fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    fake_telnyx.script["222"] = [OK, telnyx_error(404, "10005", "Resource not found")]
    assert telnyx.release("222").outcome == "released"
    assert telnyx.release("222").outcome == "released"
    assert fake_telnyx.calls["222"] == 2


def test_a_429_is_asked_again_once_retry_after_has_passed(
    fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    fake_telnyx.script["333"] = [Reply(429, TOO_MANY_REQUESTS, {"Retry-After": "0"}), OK]
    assert telnyx.release("333").outcome == "released"
    assert fake_telnyx.calls["333"] == 2
    assert telnyx.pace.limited == 1


def test_a_429_whose_wait_is_too_long_defers_the_call_not_fails_it(
    fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    fake_telnyx.script["333"] = [Reply(429, TOO_MANY_REQUESTS, {"Retry-After": "42"})]
    result = telnyx.release("333")
    assert (result.outcome, result.error) == ("deferred", None)
    assert 41 < (result.retry_after or 0) <= 42
    # The wait holds for the carrier's next calls too: none is sent before it has passed.
    assert telnyx.release("334").outcome == "deferred"
    assert (fake_telnyx.calls["333"], fake_telnyx.calls["334"]) == (1, 0)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_transient(fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider, status: int) -> None:
    fake_telnyx.script["444"] = [telnyx_error(status, "90000", "Internal error")]
    result = telnyx.release("444")
    assert result.outcome == "transient"
    assert result.error is not None
    assert result.error.status == 502
    body = result.error.body("trk_1")
    assert body["error"]["provider"] == "telnyx"
    assert body["error"]["providerCode"] == "90000"
    assert "Internal error" in body["error"]["message"]


@pytest.mark.parametrize(("status", "code"), [(400, "10015"), (409, "10019")])
def test_other_4xx_is_permanent_and_keeps_the_telnyx_code(
    fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider, status: int, code: str
) -> None:
    fake_telnyx.script["555"] = [
        telnyx_error(status, code, "Cannot delete", "Number has an active order")
    ]
    result = telnyx.release("555")
    assert result.outcome == "permanent"
    assert result.error is not None
    assert result.error.provider_code == code
    assert "Number has an active order" in result.error.message


def test_slow_response_past_the_timeout_is_transient(
    fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    fake_telnyx.script["666"] = [Reply(200, None, delay=2.0)]
    result = telnyx.release("666")
    assert result.outcome == "transient"
    assert result.error is not None
    assert result.error.code == "provider_unreachable"


@pytest.mark.parametrize("body", ["<html>bad gateway</html>", "", '{"errors": "nope"}', "[1,2]"])
def test_malformed_error_bodies_still_give_a_clear_error(
    fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider, body: str
) -> None:
    fake_telnyx.script["777"] = [Reply(500, body)]
    result = telnyx.release("777")
    assert result.outcome == "transient"
    assert result.error is not None
    assert result.error.provider_code is None
    assert "HTTP 500" in result.error.message


def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = TelnyxProvider(base_url=f"http://127.0.0.1:{port}", api_key=API_KEY, timeout=0.5)
    try:
        assert provider.release("888").outcome == "transient"
    finally:
        provider.close()


def test_the_key_is_sent_as_a_bearer_token(fake_telnyx: FakeTelnyx) -> None:
    wrong = TelnyxProvider(base_url=fake_telnyx.url, api_key="wrong", timeout=0.5)
    try:
        result = wrong.release("999")
    finally:
        wrong.close()
    assert result.outcome == "misconfigured"
    assert fake_telnyx.unauthorized == 1
    assert result.error is not None
    assert "wrong" not in result.error.message


def test_settings_choose_the_provider() -> None:
    assert isinstance(make_provider(Settings()), NoProvider)
    telnyx = make_provider(Settings(provider="telnyx", telnyx_api_key="k"))
    assert isinstance(telnyx, TelnyxProvider)
    telnyx.close()


def test_holds_is_true_only_on_the_record_of_that_id(
    fake_telnyx: FakeTelnyx, telnyx: TelnyxProvider
) -> None:
    assert telnyx.holds("555")
    fake_telnyx.held = {"556"}
    assert not telnyx.holds("555")  # Telnyx's 404: another account's key
    assert telnyx.holds("556")
    assert not telnyx.holds("../556")  # never sent
    foreign = Reply(200, record("557").body, {"Content-Type": "application/json"})
    with StaticServer(foreign) as wrong:
        other = TelnyxProvider(base_url=wrong.url, api_key=API_KEY, timeout=0.5)
        assert not other.holds("556")  # a record, but of another id
        other.close()
    with StaticServer(Reply(200, "<h1>Hi</h1>", {"Content-Type": "text/html"})) as proxy:
        other = TelnyxProvider(base_url=proxy.url, api_key=API_KEY, timeout=0.5)
        assert not other.holds("556")
        other.close()


# Each documented answer of Telnyx to `DELETE /v2/phone_numbers/{id}`, by whose problem it is
# (docs/runbook.md, "What each answer of Telnyx means").
ANSWERS = [
    pytest.param(OK, "released", None, None, id="record-deleted"),
    pytest.param(NOT_FOUND, "released", None, None, id="404-10005"),
    pytest.param(LOCKED, "refused", "person", "10035", id="403-10035-locked"),
    pytest.param(port_out_refusal(), "refused", "person", "10015", id="422"),
    pytest.param(port_out_refusal(retryable=True), "refused", "carrier", "10015", id="422-retry"),
    pytest.param(
        deletion_locked("123"), "refused", "person", "deletion_lock_enabled", id="deletion-lock"
    ),
    pytest.param(
        port_out_pending("123"), "refused", "carrier", "port-out-pending", id="port-out-pending"
    ),
    pytest.param(record("123", status="ported-out"), "refused", "person", "ported-out", id="po"),
    pytest.param(UNAUTHORIZED, "misconfigured", "key", None, id="401-10009"),
    pytest.param(FORBIDDEN, "misconfigured", "key", None, id="403-10010"),
    pytest.param(
        Reply(403, "<h1>no</h1>", {"Content-Type": "text/html"}),
        "misconfigured",
        "base_url",
        None,
        id="403-html",
    ),
    pytest.param(record("456"), "misconfigured", "base_url", None, id="record-of-another-id"),
    pytest.param(
        Reply(200, '{"data": {"id": "123", "record_type": "phone_number"}}'),
        "misconfigured",
        "base_url",
        None,
        id="record-without-status",
    ),
    pytest.param(
        telnyx_error(500, "10007", "Unexpected error"), "transient", None, "10007", id="500"
    ),
    pytest.param(Reply(503, ""), "transient", None, None, id="503-empty"),
    pytest.param(telnyx_error(400, "10015", "Bad Request"), "permanent", None, "10015", id="400"),
]


@pytest.mark.parametrize(("reply", "outcome", "whose", "provider_code"), ANSWERS)
def test_each_documented_answer_is_read_by_whose_problem_it_is(
    fake_telnyx: FakeTelnyx,
    telnyx: TelnyxProvider,
    reply: Reply,
    outcome: str,
    whose: str | None,
    provider_code: str | None,
) -> None:
    fake_telnyx.script["123"] = [reply]
    result = telnyx.release("123")
    assert result.outcome == outcome
    if outcome == "refused":
        assert result.waits_on == whose
    if outcome == "misconfigured":
        assert result.error is not None
        named = {"key": "TELNYX_API_KEY", "base_url": "TELNYX_BASE_URL"}
        assert named[str(whose)] in result.error.fix
        others = set(named.values()) - {named[str(whose)]}
        assert all(other not in result.error.fix for other in others)
    if result.error is not None and outcome != "misconfigured":
        assert result.error.provider_code == provider_code
