"""The error envelope: {trackingId, error: {code, message, fix?, provider?, providerCode?}}."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar


class ApiError(Exception):
    """An error the API answers with the API's envelope; subclasses fix the HTTP status."""

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init_subclass__(cls, *, status: int | None = None, code: str | None = None) -> None:
        # `class NotFound(ApiError, status=404, code="not_found")`: a subclass's status and
        # default code in its header (or, as before, as class attributes of its own).
        super().__init_subclass__()
        if status is not None:
            cls.status = status
        if code is not None:
            cls.default_code = code

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        fix: str | None = None,
        provider: str | None = None,
        provider_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message
        self.fix = fix
        self.provider = provider
        self.provider_code = provider_code

    def body(self, tracking_id: str | None = None) -> dict[str, Any]:
        """The error envelope, with a fresh tracking id unless one is given."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fix:
            error["fix"] = self.fix
        if self.provider:
            error["provider"] = self.provider
        if self.provider_code:
            error["providerCode"] = self.provider_code
        return {"trackingId": tracking_id or f"trk_{uuid.uuid4().hex}", "error": error}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r})"


class ValidationError(ApiError, status=400, code="validation_error"):
    """400: the request is invalid and nothing was changed."""


class UnauthorizedError(ApiError, status=401, code="unauthorized"):
    """401: the caller is not allowed to act on this account."""


class UsageLimitError(ApiError, status=402, code="usage_limit_exceeded"):
    """402: the account's plan does not allow this."""


class InternalError(ApiError, status=500, code="internal_error"):
    """500: something on our side failed."""


class ProviderError(ApiError, status=502, code="provider_error"):
    """502: the telecom provider refused or failed the call."""
