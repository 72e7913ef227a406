"""The API's OpenAPI document: the contract's bodies and the page's answers, and Schemathesis's
property-based run against the application that serves it (in this process, the fixed `now`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import hypothesis
import pytest
import schemathesis
from sqlalchemy import Engine
from starlette.applications import Starlette

from shared.api import create_app
from shared.api.openapi import PAGE_ANSWERS
from shared.api_keys import create_api_key
from shared.db import make_session_factory
from tests.conftest import SCHEMA_PATH
from tests.factories import NOW, make_number
from tests.stores import delete_all_rows

pytestmark = pytest.mark.postgres

OPERATIONS = {
    ("/numbers/released", "get"): "ReleasedNumbersResponse",
    ("/numbers/{phoneNumber}", "delete"): "ReleasePhoneNumberResponse",
    ("/numbers/order", "post"): "OrderPhoneNumberResponse",
}


@pytest.fixture(scope="module")
def served(pg_engine: Engine) -> Iterator[tuple[Starlette, str]]:
    """The application on a store with acc_a's released and active numbers, and acc_a's key."""
    delete_all_rows(pg_engine)
    with make_session_factory(pg_engine).begin() as session:
        make_number(
            session,
            account_id="acc_a",
            phone_number="+14155550101",
            released_at=NOW - timedelta(days=3),
            a2p_status="pending",
        )
        make_number(session, account_id="acc_a", phone_number="+14155550102")
        key = create_api_key(session, account_id="acc_a", now=NOW)["key"]
    yield create_app(engine=pg_engine, clock=lambda: NOW), key
    delete_all_rows(pg_engine)


@pytest.fixture(scope="module")
def document(served: tuple[Starlette, str]) -> dict[str, Any]:
    """The document as the application serves it."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", served[0])
    raw: dict[str, Any] = schema.raw_schema
    return raw


def _shape(schema: dict[str, Any]) -> dict[str, Any]:
    """What a client relies on: field names, types, required keys, enums (nested)."""
    return {
        "type": schema.get("type"),
        "required": sorted(schema.get("required", [])),
        "enum": schema.get("enum"),
        "ref": schema.get("$ref", "").rpartition("/")[2] or None,
        "properties": {name: _shape(value) for name, value in schema.get("properties", {}).items()},
        "items": _shape(schema["items"]) if "items" in schema else None,
    }


def test_the_document_has_the_contracts_bodies(document: dict[str, Any]) -> None:
    contract = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))["$defs"]
    served = document["components"]["schemas"]
    assert set(contract) <= set(served)
    for name, schema in contract.items():
        assert _shape(served[name]) == _shape(schema), name
    # The page's enums, as it lists them.
    number = served["PhoneNumber"]["properties"]
    assert number["billingStatus"]["enum"] == ["active", "released"]
    assert number["a2pStatus"]["enum"] == ["pending", "testing", "approved"]


def test_every_operation_documents_the_pages_answers(document: dict[str, Any]) -> None:
    assert {(path, method) for path, item in document["paths"].items() for method in item} == set(
        OPERATIONS
    )
    assert set(PAGE_ANSWERS) == {"400", "401", "402", "500", "502"}
    for (path, method), ok in OPERATIONS.items():
        answers = document["paths"][path][method]["responses"]
        assert set(PAGE_ANSWERS) | {"200"} <= set(answers)
        assert answers["200"]["content"]["application/json"]["schema"]["$ref"].endswith(ok)
        for status in set(answers) - {"200"}:
            error = answers[status]["content"]["application/json"]["schema"]["$ref"]
            assert error == "#/components/schemas/ErrorResponse"
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize(
    "operation", sorted(f"{method.upper()} {path}" for path, method in OPERATIONS)
)
def test_schemathesis_finds_no_failure(
    served: tuple[Starlette, str], operation: str, mode: str
) -> None:
    """Schemathesis's cases for one operation (valid data, then invalid data), each answer
    checked by all its default checks (no 5xx, documented statuses and bodies...)."""
    app, key = served
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    method, path = operation.split(" ")
    strategy = schema[path][method].as_strategy(generation_mode=schemathesis.GenerationMode(mode))

    @hypothesis.given(case=strategy)
    @hypothesis.settings(max_examples=20)
    def check(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"})

    check()
