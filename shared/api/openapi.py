"""The API's OpenAPI 3.1 document, its bodies taken from the project's copy of the contract."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

# The page's answers, in its words; every operation documents all of them.
PAGE_ANSWERS = {
    "400": "Bad Request - validation errors, invalid input",
    "401": "Unauthorized",
    "402": "Payment Required - usage limits exceeded",
    "500": "Internal Server Error",
    "502": "Bad Gateway - provider error",
}
# Beyond the page: a number the account cannot act on, and one whose state forbids the act.
NUMBER_ANSWERS = {
    "404": "Not Found - no such number on this account (another account's number included)",
    "409": "Conflict - the number's state forbids this (already released, not released, "
    "window closed)",
}
# The example is the one the errors' `fix` gives; Schemathesis's examples phase sends it.
EXAMPLE_NUMBER = "+14155550123"
PHONE_NUMBER = {
    "type": "string",
    "pattern": "^\\+[1-9][0-9]{1,14}$",
    "description": "E.164",
    "examples": [EXAMPLE_NUMBER],
}


def contract_schemas() -> dict[str, Any]:
    """The contract's definitions, their references pointed at the document's components."""
    text = (files("shared") / "contract" / "released-numbers.schema.json").read_text("utf-8")
    text = text.replace('"#/$defs/', '"#/components/schemas/')
    schemas: dict[str, Any] = json.loads(text)["$defs"]
    return schemas


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def _answers(ok: str, description: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    answers = {"200": {"description": description, "content": _json(ok)}}
    statuses = PAGE_ANSWERS | (extra or {})
    for status, text in sorted(statuses.items()):
        answers[status] = {"description": text, "content": _json("ErrorResponse")}
    return answers


def _operation(operation_id: str, summary: str, answers: dict[str, Any]) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, "responses": answers}


def openapi_document() -> dict[str, Any]:
    """The document `GET /openapi.json` serves."""
    schemas = contract_schemas() | {
        "ReleasePhoneNumberResponse": {
            "type": "object",
            "required": ["phoneNumber", "released", "releasedAt"],
            "properties": {
                "phoneNumber": PHONE_NUMBER,
                "released": {"type": "boolean", "const": True},
                "releasedAt": {"type": "string", "format": "date-time"},
            },
            "additionalProperties": False,
        },
        "OrderPhoneNumberRequest": {
            "type": "object",
            "required": ["phoneNumber"],
            "properties": {"phoneNumber": PHONE_NUMBER},
        },
        "OrderPhoneNumberResponse": {
            "type": "object",
            "required": ["orderId", "status", "phoneNumber"],
            "properties": {
                "orderId": {"type": "string", "minLength": 1},
                "status": {"type": "string", "enum": ["completed"]},
                "phoneNumber": PHONE_NUMBER,
            },
            "additionalProperties": False,
        },
    }
    release = _operation(
        "numbers_release_number",
        "Release a phone number from the account. No refund for the current billing month.",
        _answers("ReleasePhoneNumberResponse", "Released", NUMBER_ANSWERS),
    )
    release["parameters"] = [
        {
            "name": "phoneNumber",
            "in": "path",
            "required": True,
            "description": "E.164 phone number to release",
            "schema": PHONE_NUMBER,
        }
    ]
    order = _operation(
        "numbers_order_number",
        "Reactivate a number the account released, within its repurchase window "
        "(keeps its original createdAt).",
        _answers(
            "OrderPhoneNumberResponse",
            "Ordered",
            NUMBER_ANSWERS | {"413": "Payload Too Large - the body is over the limit"},
        ),
    )
    order["requestBody"] = {"required": True, "content": _json("OrderPhoneNumberRequest")}
    listing = _operation(
        "numbers_list_released",
        "List released phone numbers. Released numbers may be purchased again within 2 weeks "
        "of being released, and are removed from the list after 2 weeks.",
        _answers("ReleasedNumbersResponse", "Successful response"),
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "numbers-retention: released numbers", "version": "1"},
        "security": [{"bearerAuth": []}],
        "paths": {
            "/numbers/released": {"get": listing},
            "/numbers/{phoneNumber}": {"delete": release},
            "/numbers/order": {"post": order},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
