"""The application: three routes on the library, a request id on every answer and log line,
every error in the page's envelope."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import validation
from shared.api.auth import Authenticate, key_store
from shared.api.openapi import openapi_document
from shared.clock import utcnow
from shared.db import engine_for, make_session_factory
from shared.errors import ApiError, InternalError, ValidationError
from shared.lifecycle import release_number
from shared.listing import released_numbers_body
from shared.number_orders import order_number
from shared.settings import get_store_settings

log = structlog.get_logger("shared.api")

# The only body is {"phoneNumber": ...}: a few dozen bytes. Anything far larger is refused
# before it is read in full.
MAX_BODY_BYTES = 16 * 1024

Action = Callable[[str], dict[str, Any]]

# The fixed routes beside `DELETE /numbers/{phoneNumber}` and their methods: a DELETE there is a
# method the route does not have (405), not the release of a number called `released`.
FIXED_ROUTES = {"released": "GET", "order": "POST"}


class BodyTooLarge(ApiError):
    """413: the request body is over the API's limit; it was not read."""

    status = 413
    default_code = "body_too_large"


# The library's 400s that are not bad input, answered with HTTP's own statuses: a number the
# account cannot act on (unknown, or another account's: one answer) is not found; a number
# whose state forbids the act conflicts with it. The envelope and its code stay the library's.
HTTP_STATUS = {
    "number_not_found": 404,
    "number_already_released": 409,
    "number_not_released": 409,
    "number_being_purged": 409,
    "repurchase_window_closed": 409,
}


def envelope(error: ApiError, request_id: str) -> JSONResponse:
    """The page's error envelope, its trackingId the request's id (as in the logs)."""
    status = HTTP_STATUS.get(error.code, error.status) if error.status == 400 else error.status
    return JSONResponse(error.body(tracking_id=request_id), status_code=status)


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id") or f"trk_{uuid.uuid4().hex}")


class RequestContext:
    """Gives each request an id (`X-Request-Id`, the errors' trackingId, `request_id` in the
    log), logs one `api.request` line per request, and answers what nothing else caught with
    the 500 envelope (the traceback goes to the log, never to the caller)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"trk_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        started, status, responded = time.perf_counter(), 500, False
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:  # the request's boundary: logged with its traceback, answered 500
                log.exception("api.failed", method=scope["method"], path=scope["path"])
                if responded:  # too late for an envelope: the server drops the connection
                    raise
                error = InternalError(
                    "The request failed on our side.",
                    fix=f"Try again; if it persists, give the operators the trackingId "
                    f"{request_id} (it is in their logs).",
                )
                await envelope(error, request_id)(scope, receive, send_with_id)
            finally:
                # request_id given again: a log set up without contextvars still has it.
                log.info(
                    "api.request",
                    request_id=request_id,
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    ms=round((time.perf_counter() - started) * 1000, 3),
                )


async def _http_error(request: Request, error: Exception) -> Response:
    """Routing's own answers (no such route, method not allowed) in the envelope."""
    assert isinstance(error, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    body = ApiError(
        str(error.detail), code=code, fix="See the API's description: GET /openapi.json."
    ).body(tracking_id=_request_id(request))
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


class NumbersApi:
    """The routes' work: authenticate, then one library call in its own session."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        authenticate: Authenticate,
        clock: Callable[[], datetime],
        max_body_bytes: int,
    ) -> None:
        self.sessions = sessions
        self.authenticate = authenticate
        self.clock = clock
        self.max_body_bytes = max_body_bytes

    async def released(self, request: Request) -> Response:
        return await run_in_threadpool(self._answer, request, self._list)

    async def release(self, request: Request) -> Response:
        phone_number = request.path_params["phone_number"]
        if phone_number in FIXED_ROUTES:
            raise HTTPException(405, headers={"Allow": FIXED_ROUTES[phone_number]})
        return await run_in_threadpool(
            self._answer, request, lambda account: self._release(account, phone_number)
        )

    async def order(self, request: Request) -> Response:
        try:
            raw = await self._body(request)
        except ApiError as error:
            return envelope(error, _request_id(request))
        return await run_in_threadpool(
            self._answer, request, lambda account: self._order(account, raw)
        )

    async def health(self, _request: Request) -> Response:
        return await run_in_threadpool(self._health)

    def _answer(self, request: Request, action: Action) -> Response:
        try:
            account = self.authenticate(request)
            body = action(account)
        except ApiError as error:
            answer = envelope(error, _request_id(request))
            log.info("api.refused", code=error.code, status=answer.status_code)
            return answer
        return JSONResponse(body)

    def _list(self, account: str) -> dict[str, Any]:
        with self.sessions() as session:
            return released_numbers_body(session, account_id=account, now=self.clock())

    def _release(self, account: str, phone_number: str) -> dict[str, Any]:
        with self.sessions.begin() as session:
            return release_number(
                session, account_id=account, phone_number=phone_number, now=self.clock()
            )

    def _order(self, account: str, raw: bytes) -> dict[str, Any]:
        phone_number = validation.phone_number(order_phone_number(raw))
        with self.sessions.begin() as session:
            try:
                # The order is recorded with the repurchase, in its transaction: the orderId
                # answered is the one stored (shared/number_orders.py).
                answer = order_number(
                    session, account_id=account, phone_number=phone_number, now=self.clock()
                )
            except ValidationError as error:
                if error.code != "number_not_found":
                    raise
                # Unknown and another account's number alike: nothing tells them apart.
                raise ValidationError(
                    f"Number {phone_number} is not one this account released.",
                    code="number_not_found",
                    fix="This API orders back numbers the account released, within "
                    "their repurchase window; order other numbers from the platform.",
                ) from None
        log.info("api.ordered", order_id=answer["orderId"], phone_number=answer["phoneNumber"])
        return answer

    def _health(self) -> Response:
        with self.sessions() as session:
            session.execute(text("SELECT 1"))
        return JSONResponse({"status": "ok"})

    async def _body(self, request: Request) -> bytes:
        """The body, refused (413) as soon as it is known to pass the limit."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(
            f"The request body is over {self.max_body_bytes} bytes.",
            fix='Send only {"phoneNumber": "+14155550123"}.',
        )


def order_phone_number(raw: bytes) -> object:
    """The `phoneNumber` of an order's body (validated by the library), or a 400."""
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValidationError(
            "The request body is not a JSON document in UTF-8.",
            code="invalid_json",
            fix='Send {"phoneNumber": "+14155550123"} as application/json (UTF-8).',
        ) from None
    if not isinstance(payload, dict) or "phoneNumber" not in payload:
        raise ValidationError(
            "The request body has no phoneNumber.",
            code="missing_phone_number",
            fix='Send {"phoneNumber": "+14155550123"}.',
        )
    return payload["phoneNumber"]


def create_app(
    *,
    engine: Engine | None = None,
    authenticate: Authenticate | None = None,
    clock: Callable[[], datetime] = utcnow,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Starlette:
    """The API as an ASGI application, on `engine` (default: the configured store).

    `authenticate(request) -> account_id` replaces the built-in key store (a platform's own
    auth); `clock` is the decision instant of release and repurchase (tests fix it).
    """
    own_engine = engine is None
    store = engine if engine is not None else engine_for(get_store_settings())
    api = NumbersApi(
        sessions=make_session_factory(store),
        authenticate=authenticate or key_store(store),
        clock=clock,
        max_body_bytes=max_body_bytes,
    )
    document = openapi_document()

    async def openapi(_request: Request) -> Response:
        return JSONResponse(document)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        if own_engine:  # a graceful shutdown closes the pool it opened
            store.dispose()

    return Starlette(
        routes=[
            Route("/numbers/released", api.released, methods=[FIXED_ROUTES["released"]]),
            Route("/numbers/order", api.order, methods=[FIXED_ROUTES["order"]]),
            # `path`: a number with an encoded slash reaches the library's check (a 400)
            # instead of missing the route.
            Route("/numbers/{phone_number:path}", api.release, methods=["DELETE"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/health", api.health, methods=["GET"]),
        ],
        middleware=[Middleware(RequestContext)],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
