"""The error envelope: one shape for every status, optional keys only when set."""

from __future__ import annotations

import re

import pytest
from jsonschema import Draft202012Validator

import shared
from shared import errors

SUBCLASSES = [
    (shared.ValidationError, 400, "validation_error"),
    (shared.UnauthorizedError, 401, "unauthorized"),
    (shared.UsageLimitError, 402, "usage_limit_exceeded"),
    (shared.InternalError, 500, "internal_error"),
    (shared.ProviderError, 502, "provider_error"),
]


@pytest.mark.parametrize(("cls", "status", "default_code"), SUBCLASSES)
def test_status_and_default_code(
    cls: type[shared.ApiError], status: int, default_code: str
) -> None:
    error = cls("Something is off.")
    assert issubclass(cls, shared.ApiError)
    assert isinstance(error, Exception)
    assert (error.status, error.code, error.message) == (status, default_code, "Something is off.")
    assert str(error) == "Something is off."
    assert (error.fix, error.provider, error.provider_code) == (None, None, None)
    assert repr(error) == f"{cls.__name__}(status={status}, code={default_code!r})"


def test_base_class_is_internal() -> None:
    assert (shared.ApiError.status, shared.ApiError("x").code) == (500, "internal_error")


@pytest.mark.parametrize(("cls", "status", "default_code"), SUBCLASSES)
def test_minimal_body(
    cls: type[shared.ApiError],
    status: int,
    default_code: str,
    error_validator: Draft202012Validator,
) -> None:
    body = cls("Something is off.").body("trk_123")
    assert body == {
        "trackingId": "trk_123",
        "error": {"code": default_code, "message": "Something is off."},
    }
    error_validator.validate(body)


@pytest.mark.parametrize(
    ("kwargs", "extra"),
    [
        ({}, {}),
        ({"fix": "Do this."}, {"fix": "Do this."}),
        ({"provider": "telnyx"}, {"provider": "telnyx"}),
        ({"provider_code": "10015"}, {"providerCode": "10015"}),
        (
            {"fix": "Retry later.", "provider": "telnyx", "provider_code": "90001"},
            {"fix": "Retry later.", "provider": "telnyx", "providerCode": "90001"},
        ),
        ({"fix": "", "provider": "", "provider_code": ""}, {}),
        ({"fix": None, "provider": None, "provider_code": None}, {}),
    ],
)
def test_optional_keys_only_when_set(
    kwargs: dict[str, str | None], extra: dict[str, str], error_validator: Draft202012Validator
) -> None:
    body = shared.ProviderError("Telnyx refused.", code="provider_refused", **kwargs).body("trk_1")
    assert body == {
        "trackingId": "trk_1",
        "error": {"code": "provider_refused", "message": "Telnyx refused.", **extra},
    }
    error_validator.validate(body)


def test_code_given_wins_over_default() -> None:
    error = shared.UsageLimitError("Over the cap.", code="plan_limit_reached", fix="Upgrade.")
    assert error.body("t")["error"] == {
        "code": "plan_limit_reached",
        "message": "Over the cap.",
        "fix": "Upgrade.",
    }


def test_tracking_id_is_generated_when_not_given(error_validator: Draft202012Validator) -> None:
    error = shared.InternalError("Boom.")
    ids = {error.body()["trackingId"] for _ in range(50)}
    assert len(ids) == 50
    for tracking_id in ids:
        assert re.fullmatch(r"trk_[0-9a-f]{32}", tracking_id)
    error_validator.validate(error.body())
    assert error.body(tracking_id=None)["trackingId"].startswith("trk_")


def test_tracking_id_given_is_kept() -> None:
    assert shared.ValidationError("x").body(tracking_id="req-42")["trackingId"] == "req-42"


def test_errors_are_raisable_and_catchable_as_api_error() -> None:
    with pytest.raises(shared.ApiError) as caught:
        raise shared.UnauthorizedError("No such account.", code="account_not_found")
    assert caught.value.status == 401
    assert caught.value.body("t")["error"]["code"] == "account_not_found"


def test_public_names() -> None:
    for name in [
        "ApiError",
        "ValidationError",
        "UnauthorizedError",
        "UsageLimitError",
        "InternalError",
        "ProviderError",
    ]:
        assert getattr(shared, name) is getattr(errors, name)
        assert name in shared.__all__
