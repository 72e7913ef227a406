"""`numbers-retention serve` as a client meets it: Pingram's official Python SDK over real HTTP.

The served process decides on the host's clock, so these tests take `wall_now` (real_clock) and
share one server; the API's rules are tested in this process on the fixed `now`
(tests/test_api.py).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from pingram import Pingram
from pingram.exceptions import ApiException, NotFoundException, UnauthorizedException
from pingram.models.order_phone_number_request import OrderPhoneNumberRequest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

import shared
from shared.api_keys import create_api_key
from shared.clock import utcnow
from shared.db import make_session_factory
from shared.models import PhoneNumber
from tests.factories import make_number
from tests.processes import Process, service_env
from tests.servers import serving_api
from tests.stores import delete_all_rows

pytestmark = [pytest.mark.postgres, pytest.mark.processes]

T = TypeVar("T")

RELEASED, ACTIVE, OTHERS = "+14155550101", "+14155550102", "+14155550201"
FREE_RELEASED, FREE_ACTIVE = "+14155550301", "+14155550302"


class Served:
    """The server process, its URL, the accounts' keys and sessions on its store."""

    def __init__(
        self, process: Process, url: str, keys: dict[str, str], sessions: sessionmaker[Session]
    ) -> None:
        self.process, self.url, self.keys, self.sessions = process, url, keys, sessions

    def sdk(self, call: Callable[[Any], Awaitable[T]], *, account: str = "acc_a") -> T:
        """`call(numbers_api)` with Pingram's SDK, authenticated as `account` (or that key)."""

        async def run() -> T:
            key = self.keys.get(account, account)
            async with Pingram(api_key=key, base_url=self.url) as client:
                return await call(client.numbers)

        return asyncio.run(run())


def _store(sessions: sessionmaker[Session], now: datetime) -> dict[str, str]:
    """acc_a: a released and an active number; acc_b: a released one; acc_free (free plan):
    a released and an active one. Their keys."""
    day = timedelta(days=1)
    with sessions.begin() as session:
        make_number(
            session, account_id="acc_a", phone_number=RELEASED, released_at=now - day, now=now
        )
        make_number(session, account_id="acc_a", phone_number=ACTIVE, now=now)
        make_number(
            session, account_id="acc_b", phone_number=OTHERS, released_at=now - day, now=now
        )
        for number, released_at in ((FREE_RELEASED, now - day), (FREE_ACTIVE, None)):
            make_number(
                session,
                account_id="acc_free",
                phone_number=number,
                plan="free",
                released_at=released_at,
                now=now,
            )
        return {
            account: create_api_key(session, account_id=account, now=now)["key"]
            for account in ("acc_a", "acc_b", "acc_free")
        }


@pytest.fixture(scope="module")
def served(
    pg_engine: Engine, pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    delete_all_rows(pg_engine)
    sessions = make_session_factory(pg_engine)
    keys = _store(sessions, utcnow() - timedelta(seconds=5))
    folder = tmp_path_factory.mktemp("api")
    env = service_env(database_url=pg_url, redis_url=redis_url, data_dir=folder)
    try:
        with serving_api(env, folder / "api.log") as (process, url):
            yield Served(process, url, keys, sessions)
    finally:
        delete_all_rows(pg_engine)


def _error(raised: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(raised.value.body)
    assert body["trackingId"] == raised.value.headers["x-request-id"]
    return body["error"]


def test_the_sdk_lists_releases_and_orders_back(served: Served, wall_now: datetime) -> None:
    listed = served.sdk(lambda numbers: numbers.numbers_list_released())
    with served.sessions() as session:
        body = shared.released_numbers_body(session, account_id="acc_a")
    assert listed.to_dict() == body
    assert [number.phone_number for number in listed.numbers] == [RELEASED]

    released = served.sdk(lambda numbers: numbers.numbers_release_number(ACTIVE))
    assert (released.phone_number, released.released) == (ACTIVE, True)
    assert datetime.fromisoformat(released.released_at) >= wall_now

    created_at = listed.numbers[0].created_at
    order = OrderPhoneNumberRequest(phone_number=RELEASED)
    ordered = served.sdk(lambda numbers: numbers.numbers_order_number(order))
    assert (ordered.phone_number, ordered.status) == (RELEASED, "completed")
    assert ordered.order_id.startswith("ord_")

    after = served.sdk(lambda numbers: numbers.numbers_list_released())
    assert [number.phone_number for number in after.numbers] == [ACTIVE]
    with served.sessions() as session:
        number = session.scalars(
            select(PhoneNumber).where(PhoneNumber.phone_number == RELEASED)
        ).one()
    assert number.billing_status == "active"
    assert number.created_at == datetime.fromisoformat(created_at)
    # The order the SDK was answered is the one stored.
    with served.sessions() as session:
        stored = shared.find_order(session, account_id="acc_a", order_id=ordered.order_id)
    assert stored == ordered.to_dict()


@pytest.mark.parametrize("key", ["nrk_never-issued", "not even a key"])
def test_the_sdk_gets_401_for_a_bad_key(served: Served, wall_now: datetime, key: str) -> None:
    with pytest.raises(UnauthorizedException) as raised:
        served.sdk(lambda numbers: numbers.numbers_list_released(), account=key)
    assert raised.value.status == 401
    assert _error(raised)["code"] == "invalid_api_key"


def test_the_sdk_gets_402_past_the_plan_cap(served: Served, wall_now: datetime) -> None:
    order = OrderPhoneNumberRequest(phone_number=FREE_RELEASED)
    with pytest.raises(ApiException) as raised:
        served.sdk(lambda numbers: numbers.numbers_order_number(order), account="acc_free")
    assert raised.value.status == 402
    assert _error(raised)["code"] == "plan_limit_reached"


def test_another_accounts_number_is_not_found_like_an_unknown_one(
    served: Served, wall_now: datetime
) -> None:
    answers = []
    for number in (OTHERS, "+14155550999"):
        with pytest.raises(NotFoundException) as raised:
            served.sdk(lambda numbers, number=number: numbers.numbers_release_number(number))
        error = _error(raised)
        answers.append({key: value.replace(number, "<n>") for key, value in error.items()})
    assert answers[0] == answers[1]
    assert answers[0]["code"] == "number_not_found"
    # acc_b's number is untouched.
    listed = served.sdk(lambda numbers: numbers.numbers_list_released(), account="acc_b")
    assert [number.phone_number for number in listed.numbers] == [OTHERS]


def test_the_compose_healthcheck_passes_against_it(served: Served, wall_now: datetime) -> None:
    """The compose `api` service's healthcheck, as Docker runs it, on this server's port."""
    compose = yaml.safe_load((Path(__file__).parent.parent / "docker-compose.yml").read_text())
    kind, *command = compose["services"]["api"]["healthcheck"]["test"]
    assert kind == "CMD"
    port = served.url.rpartition(":")[2]
    command = [arg.replace(":8080/", f":{port}/") for arg in command]
    command[0] = sys.executable if command[0] == "python" else command[0]
    assert subprocess.run(command, timeout=30, check=False).returncode == 0


def test_sigterm_stops_the_server_cleanly(served: Served, wall_now: datetime) -> None:
    """Last in this module: SIGTERM ends the server gracefully (uvicorn finishes the requests
    in flight, runs the app's shutdown, which closes the pool, then exits by the signal, as
    systemd and docker expect), and its JSON log has one line per request with its id."""
    served.process.popen.send_signal(signal.SIGTERM)
    assert served.process.popen.wait(30) == -signal.SIGTERM
    said = [event["event"] for event in served.process.events()]
    assert said[-3:] == [
        "Waiting for application shutdown.",
        "Application shutdown complete.",
        said[-1],
    ]
    assert said[-1].startswith("Finished server process")
    requests = [event for event in served.process.events() if event.get("event") == "api.request"]
    assert requests
    assert all(event["request_id"].startswith("trk_") for event in requests)
    assert all("nrk_" not in json.dumps(event) for event in served.process.events())
