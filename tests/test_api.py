"""The HTTP API in this process (an httpx ASGI client) on the fixed `now`: bodies, statuses,
the envelope, authentication, and bad input that changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount
from structlog.testing import capture_logs

import shared
from shared.api import bearer_key, create_app
from shared.api_keys import create_api_key, revoke_api_key
from shared.db import make_engine, make_session_factory
from shared.errors import ProviderError
from shared.models import ApiKey, PhoneNumber
from tests.factories import NOW, make_number, snapshot
from tests.stores import delete_all_rows

pytestmark = pytest.mark.postgres

Call = Callable[..., httpx.Response]

RELEASED = "+14155550101"
ACTIVE = "+14155550102"
OTHERS = "+14155550201"  # acc_b's, released
UNKNOWN = "+14155550999"


def call_app(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request to the ASGI `app` through httpx, as a client would send it."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(send())


@pytest.fixture(scope="module")
def sessions(pg_engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Committing sessions on the PostgreSQL store, emptied before and after this module (its
    tests share one store: those that change it act on accounts of their own)."""
    delete_all_rows(pg_engine)
    yield make_session_factory(pg_engine)
    delete_all_rows(pg_engine)


@pytest.fixture(scope="module")
def store(sessions: sessionmaker[Session]) -> dict[str, str]:
    """acc_a (paid) with a released and an active number, acc_b with a released one; their keys."""
    with sessions.begin() as session:
        make_number(
            session,
            account_id="acc_a",
            phone_number=RELEASED,
            released_at=NOW - timedelta(days=2),
            label="Support line",
            a2p_status="approved",
        )
        make_number(session, account_id="acc_a", phone_number=ACTIVE)
        make_number(
            session, account_id="acc_b", phone_number=OTHERS, released_at=NOW - timedelta(days=1)
        )
        return {
            account: create_api_key(session, account_id=account, now=NOW)["key"]
            for account in ("acc_a", "acc_b")
        }


@pytest.fixture(scope="module")
def app(pg_engine: Engine, store: dict[str, str]) -> Any:
    return create_app(engine=pg_engine, clock=lambda: NOW)


@pytest.fixture(scope="module")
def api(app: Any, store: dict[str, str]) -> Call:
    """`api(method, path, key="acc_a", **httpx_kwargs)`: a request with that account's key
    (or with `key` itself when it names no account)."""

    def request(
        method: str, path: str, *, key: str | None = "acc_a", **kwargs: Any
    ) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers = {"Authorization": f"Bearer {store.get(key, key)}"} | headers
        return call_app(app, method, path, headers=headers, **kwargs)

    return request


def account_of_its_own(
    sessions: sessionmaker[Session],
    account_id: str,
    *numbers: tuple[str, timedelta | None],
    plan: str = "paid",
) -> str:
    """A new account with `numbers` (each released that long before NOW, or active); its key."""
    with sessions.begin() as session:
        for number, age in numbers:
            make_number(
                session,
                account_id=account_id,
                phone_number=number,
                plan=plan,
                released_at=None if age is None else NOW - age,
            )
        return create_api_key(session, account_id=account_id, now=NOW)["key"]


def assert_envelope(
    answer: httpx.Response, validator: Draft202012Validator, *, status: int, code: str
) -> dict[str, Any]:
    body: dict[str, Any] = answer.json()
    validator.validate(body)
    assert (answer.status_code, body["error"]["code"]) == (status, code), body
    # The trackingId is the request's id, in the X-Request-Id header and in the logs.
    assert body["trackingId"] == answer.headers["x-request-id"]
    return body


def test_the_list_is_the_librarys_body(
    api: Call, sessions: sessionmaker[Session], released_numbers_validator: Any
) -> None:
    answer = api("GET", "/numbers/released")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    with sessions() as session:
        assert answer.json() == shared.released_numbers_body(session, account_id="acc_a", now=NOW)
    released_numbers_validator.validate(answer.json())
    assert [n["phoneNumber"] for n in answer.json()["numbers"]] == [RELEASED]
    assert [n["phoneNumber"] for n in api("GET", "/numbers/released", key="acc_b").json()[
        "numbers"
    ]] == [OTHERS]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}, "missing_api_key"),
        ({"Authorization": "Bearer "}, "missing_api_key"),
        ({"Authorization": "Bearer nrk_not-a-key"}, "invalid_api_key"),
    ],
)
def test_no_valid_key_is_401(
    api: Call, headers: dict[str, str], code: str, error_validator: Draft202012Validator
) -> None:
    answer = api("GET", "/numbers/released", key=None, headers=headers)
    assert_envelope(answer, error_validator, status=401, code=code)


def test_a_revoked_key_is_401_like_an_unknown_one(
    api: Call, sessions: sessionmaker[Session], error_validator: Any
) -> None:
    with sessions.begin() as session:
        key = create_api_key(session, account_id="acc_a", now=NOW)["key"]
    assert api("GET", "/numbers/released", key=key).status_code == 200
    with sessions.begin() as session:
        revoke_api_key(session, key=key, now=NOW)
    revoked = api("GET", "/numbers/released", key=key)
    unknown = api("GET", "/numbers/released", key="nrk_never-issued")
    assert_envelope(revoked, error_validator, status=401, code="invalid_api_key")
    assert revoked.json()["error"] == unknown.json()["error"]
    # The other keys of the account still work.
    assert api("GET", "/numbers/released").status_code == 200


def test_keys_are_stored_hashed(store: dict[str, str], sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        stored = session.execute(select(ApiKey.id, ApiKey.key_hash)).all()
    assert stored
    for key in store.values():
        assert all(key not in (key_id, key_hash) for key_id, key_hash in stored)


def test_release_then_order_back_keeps_created_at(
    api: Call, sessions: sessionmaker[Session], released_numbers_validator: Any
) -> None:
    active, released = "+14155550401", "+14155550402"
    key = account_of_its_own(
        sessions, "acc_release", (active, None), (released, timedelta(days=13, hours=23))
    )
    answer = api("DELETE", f"/numbers/{active}", key=key)
    assert answer.status_code == 200
    assert answer.json() == {
        "phoneNumber": active,
        "released": True,
        "releasedAt": "2025-11-27T12:00:00Z",
    }
    listed = api("GET", "/numbers/released", key=key).json()["numbers"]
    assert [number["phoneNumber"] for number in listed] == [active, released]
    created_at = listed[1]["createdAt"]
    ordered = api("POST", "/numbers/order", json={"phoneNumber": released}, key=key)
    assert ordered.status_code == 200
    body = ordered.json()
    assert (body["phoneNumber"], body["status"]) == (released, "completed")
    assert body["orderId"].startswith("ord_")
    after = api("GET", "/numbers/released", key=key).json()
    released_numbers_validator.validate(after)
    assert [number["phoneNumber"] for number in after["numbers"]] == [active]
    with sessions() as session:
        number = session.scalars(
            select(PhoneNumber).where(PhoneNumber.phone_number == released)
        ).one()
    assert number.billing_status == "active"
    assert number.created_at.isoformat().replace("+00:00", "Z") == created_at
    # The order is stored under the id it answered (it was not before): found again, alike.
    with sessions() as session:
        assert (
            shared.find_order(session, account_id="acc_release", order_id=body["orderId"]) == body
        )
    # Released again: a second release of the same number conflicts with its state.
    again = api("DELETE", f"/numbers/{active}", key=key)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "number_already_released")


def _without_number(answer: httpx.Response, number: str) -> dict[str, Any]:
    error: dict[str, Any] = answer.json()["error"]
    return {key: value.replace(number, "<n>") for key, value in error.items()}


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("DELETE", "/numbers/{}", None),
        ("POST", "/numbers/order", "{}"),
    ],
)
def test_another_accounts_number_answers_like_an_unknown_one(
    api: Call, sessions: sessionmaker[Session], method: str, path: str, payload: str | None
) -> None:
    def act(number: str) -> httpx.Response:
        body = None if payload is None else json.dumps({"phoneNumber": number})
        return api(method, path.format(number), content=body)

    with sessions() as session:
        before = snapshot(session)
    others, unknown = act(OTHERS), act(UNKNOWN)
    assert others.status_code == unknown.status_code == 404
    assert _without_number(others, OTHERS) == _without_number(unknown, UNKNOWN)
    assert others.json()["error"]["code"] == "number_not_found"
    with sessions() as session:
        assert snapshot(session) == before


def test_ordering_an_active_number_is_a_clear_409(api: Call, error_validator: Any) -> None:
    answer = api("POST", "/numbers/order", json={"phoneNumber": ACTIVE})
    assert_envelope(answer, error_validator, status=409, code="number_not_released")


def test_ordering_back_past_the_plan_cap_is_402(
    api: Call, sessions: sessionmaker[Session], error_validator: Any
) -> None:
    released = "+14155550301"
    key = account_of_its_own(
        sessions,
        "acc_free",
        (released, timedelta(days=1)),
        ("+14155550302", None),
        plan="free",
    )
    with sessions() as session:
        before = snapshot(session)
    answer = api("POST", "/numbers/order", json={"phoneNumber": released}, key=key)
    assert_envelope(answer, error_validator, status=402, code="plan_limit_reached")
    with sessions() as session:
        assert snapshot(session) == before


def test_a_window_closed_is_a_clear_409(
    pg_engine: Engine, store: dict[str, str], error_validator: Any
) -> None:
    app = create_app(engine=pg_engine, clock=lambda: NOW + timedelta(days=14))
    answer = call_app(
        app,
        "POST",
        "/numbers/order",
        json={"phoneNumber": RELEASED},
        headers={"Authorization": f"Bearer {store['acc_a']}"},
    )
    assert_envelope(answer, error_validator, status=409, code="repurchase_window_closed")


DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b'{"phoneNumber": "+1415', {}, 400, "invalid_json"),
        (b"", {}, 400, "invalid_json"),
        (b"[]", {}, 400, "missing_phone_number"),
        (b'"+14155550101"', {}, 400, "missing_phone_number"),
        (b'{"phone_number": "+14155550101"}', {}, 400, "missing_phone_number"),
        (b'{"phoneNumber": 14155550101}', {}, 400, "invalid_phone_number"),
        (b'{"phoneNumber": null}', {}, 400, "invalid_phone_number"),
        # UTF-16, a BOM, Latin-1 bytes: JSON on the wire is UTF-8 (RFC 8259).
        (
            '{"phoneNumber": "+14155550101"}'.encode("utf-16"),
            {"Content-Type": "application/json; charset=utf-16"},
            400,
            "invalid_json",
        ),
        (b'\xef\xbb\xbf{"phoneNumber": "+14155550101"}', {}, 400, "invalid_json"),
        (b'{"phoneNumber": "+1415555\xe90101"}', {}, 400, "invalid_json"),
        # Unicode digits, a lone surrogate, a NUL, full-width plus.
        ('{"phoneNumber": "+١٤١٥٥٥٥٠١٠١"}'.encode(), {}, 400, "invalid_phone_number"),
        (b'{"phoneNumber": "+1415555\\ud8000101"}', {}, 400, "invalid_phone_number"),
        (b'{"phoneNumber": "+14155550101\\u0000"}', {}, 400, "invalid_phone_number"),
        ('{"phoneNumber": "\uff0b14155550101"}'.encode(), {}, 400, "invalid_phone_number"),
        (DEEP, {}, 400, "invalid_json"),
        (b'{"phoneNumber": "' + b"1" * 20_000 + b'"}', {}, 413, "body_too_large"),
    ],
    ids=lambda value: None if isinstance(value, bytes | dict) else str(value),
)
def test_bad_order_bodies_get_the_envelope_and_change_nothing(
    api: Call,
    sessions: sessionmaker[Session],
    error_validator: Any,
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    with sessions() as session:
        before = snapshot(session)
    answer = api("POST", "/numbers/order", content=content, headers=headers)
    assert_envelope(answer, error_validator, status=status, code=code)
    with sessions() as session:
        assert snapshot(session) == before


def test_a_huge_streamed_body_is_refused_without_a_length(
    api: Call, sessions: sessionmaker[Session], error_validator: Any
) -> None:
    """No Content-Length (chunked): refused once the bytes read pass the limit."""
    read = []

    async def chunks() -> Any:
        for _ in range(1000):
            read.append(1)
            yield b" " * 1024

    with sessions() as session:
        before = snapshot(session)
    answer = api("POST", "/numbers/order", content=chunks())
    assert_envelope(answer, error_validator, status=413, code="body_too_large")
    assert len(read) < 100  # it stopped reading near the limit (16 KiB)
    with sessions() as session:
        assert snapshot(session) == before


@pytest.mark.parametrize(
    "path",
    [
        "/numbers/%2B14155550102%2F..%2F%2B14155550101",
        "/numbers/..%2F%2B14155550102",
        "/numbers/%2B14155550102%00",
        "/numbers/%2B1415555%D9%A1%D9%A0%D9%A2",  # +1415555 then Arabic-Indic digits
        "/numbers/%2B14155550102%20",
        "/numbers/+14155550102;x",
        "/numbers/%252B14155550102",
        "/numbers/%2B14155550102/",
    ],
)
def test_release_with_path_tricks_gets_the_envelope_and_changes_nothing(
    api: Call, sessions: sessionmaker[Session], error_validator: Any, path: str
) -> None:
    with sessions() as session:
        before = snapshot(session)
    answer = api("DELETE", path)
    assert_envelope(answer, error_validator, status=400, code="invalid_phone_number")
    with sessions() as session:
        assert snapshot(session) == before


def test_unknown_routes_and_methods_get_the_envelope(api: Call, error_validator: Any) -> None:
    assert_envelope(
        api("GET", "/numbers/nope/x"), error_validator, status=405, code="method_not_allowed"
    )
    assert_envelope(api("GET", "/nope"), error_validator, status=404, code="not_found")
    answer = api("PUT", "/numbers/released")
    assert_envelope(answer, error_validator, status=405, code="method_not_allowed")


@pytest.mark.parametrize(
    ("path", "allowed"), [("/numbers/released", "GET"), ("/numbers/order", "POST")]
)
def test_delete_on_the_other_routes_is_405_not_a_number(
    api: Call, sessions: sessionmaker[Session], error_validator: Any, path: str, allowed: str
) -> None:
    """DELETE /numbers/released and /numbers/order are methods those routes do not have (405
    and their Allow), not a release of a number called `released` (a 400: Schemathesis over
    HTTP found it)."""
    with sessions() as session:
        before = snapshot(session)
    answer = api("DELETE", path)
    assert_envelope(answer, error_validator, status=405, code="method_not_allowed")
    assert answer.headers["allow"] == allowed
    with sessions() as session:
        assert snapshot(session) == before


def test_a_failing_store_is_500_without_its_details(error_validator: Any) -> None:
    # A port nothing listens on: the connection is refused at once.
    dead = make_engine("postgresql+psycopg://postgres:s3cret-pw@127.0.0.1:9/none")
    app = create_app(engine=dead, authenticate=lambda _request: "acc_a")
    with capture_logs() as logs:
        answer = call_app(app, "GET", "/numbers/released")
    body = assert_envelope(answer, error_validator, status=500, code="internal_error")
    assert "s3cret" not in answer.text
    assert "127.0.0.1" not in answer.text
    failed = [entry for entry in logs if entry["event"] == "api.failed"]
    assert len(failed) == 1
    assert failed[0]["exc_info"]
    request_line = [entry for entry in logs if entry["event"] == "api.request"]
    assert request_line[0]["request_id"] == body["trackingId"]
    assert request_line[0]["status"] == 500
    dead.dispose()


def test_a_platforms_own_authentication(pg_engine: Engine, store: dict[str, str]) -> None:
    """`authenticate(request) -> account_id` replaces the key store; its errors are answered
    in the envelope with their status (a 502 when its own provider fails)."""

    def platform_auth(request: Request) -> str:
        token = bearer_key(request)
        if token == "upstream-down":
            raise ProviderError("The identity provider failed.", provider="sso")
        return {"token-b": "acc_b"}[token]

    app = create_app(engine=pg_engine, authenticate=platform_auth, clock=lambda: NOW)
    listed = call_app(app, "GET", "/numbers/released", headers={"Authorization": "Bearer token-b"})
    assert [n["phoneNumber"] for n in listed.json()["numbers"]] == [OTHERS]
    # The key store's keys mean nothing to it.
    failed = call_app(
        app, "GET", "/numbers/released", headers={"Authorization": "Bearer upstream-down"}
    )
    assert failed.status_code == 502
    assert failed.json()["error"] == {
        "code": "provider_error",
        "message": "The identity provider failed.",
        "provider": "sso",
    }


def test_every_request_is_logged_with_its_id(api: Call) -> None:
    with capture_logs() as logs:
        answer = api("GET", "/numbers/released")
    lines = [entry for entry in logs if entry["event"] == "api.request"]
    assert len(lines) == 1
    assert lines[0]["request_id"] == answer.headers["x-request-id"]
    assert (lines[0]["status"], lines[0]["path"]) == (200, "/numbers/released")
    # The key is never logged.
    assert "nrk_" not in json.dumps(logs, default=str)


def test_mounted_in_a_platforms_app(pg_engine: Engine, store: dict[str, str]) -> None:
    """As the README mounts it: under a prefix of the platform's own ASGI app."""
    platform = Starlette(routes=[Mount("/v1", app=create_app(engine=pg_engine, clock=lambda: NOW))])
    headers = {"Authorization": f"Bearer {store['acc_b']}"}
    listed = call_app(platform, "GET", "/v1/numbers/released", headers=headers)
    assert [n["phoneNumber"] for n in listed.json()["numbers"]] == [OTHERS]
    unknown = call_app(platform, "DELETE", f"/v1/numbers/{UNKNOWN}", headers=headers)
    assert unknown.status_code == 404
    assert unknown.json()["trackingId"] == unknown.headers["x-request-id"]
