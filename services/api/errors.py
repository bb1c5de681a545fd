"""The API's typed errors and the handlers that render every error as one JSON shape:

    {"error": {"code": "forbidden", "message": "...", "request_id": "..."}}

FastAPI's defaults answer `{"detail": ...}` in three different shapes (string, list of pydantic
errors that echo the input, Starlette's "Not Found"); clients should parse one.

No input answers a 500 by design: every parameter is validated at the edge (services/api/paging.py,
models.py). The handlers here are the backstop behind that: a value PostgreSQL refuses is still the
caller's 422, and anything else unexpected is a JSON 500 `internal_error`, logged by type and location.
"""

from __future__ import annotations

import traceback
from typing import Any, ClassVar

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledgergate.errors import LedgergateError
from ledgergate.services.api.log import log

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
                 422: "invalid_request", 429: "too_many_requests", 503: "unavailable"}


class ApiError(LedgergateError):
    status_code = 500
    code = "internal_error"
    headers: ClassVar[dict[str, str] | None] = None


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class Conflict(ApiError):
    """The request is well formed but the resource's state refuses it (a tenant at its credential bound)."""

    status_code = 409
    code = "conflict"


class Unprocessable(ApiError):
    status_code = 422
    code = "invalid_request"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"


class Unavailable(ApiError):
    """A dependency (PostgreSQL, Kafka) did not answer in time; the client may retry."""

    status_code = 503
    code = "unavailable"


def error_body(request: Request | None, code: str, message: str, details: list[dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    if request_id:
        error["request_id"] = request_id
    if details:
        error["details"] = details
    return {"error": error}


INTERNAL_ERROR_MESSAGE = "internal error; quote the request id when reporting it"


def log_unhandled(exc: BaseException, method: str | None, path: str | None) -> None:
    """Log an exception no handler claimed: its type and where it was raised, never its message or locals
    (either may quote request data: a prompt, a key, a tenant's filter)."""
    frames = traceback.extract_tb(exc.__traceback__)[-6:]
    log().error("unhandled_exception", error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                method=method, path=path, at=[f"{f.filename}:{f.lineno} {f.name}" for f in frames])


def _database_refused(exc: psycopg.Error) -> str:
    """What PostgreSQL (or psycopg, for NUL) refused, without quoting the value: psycopg's messages do."""
    if exc.sqlstate is None and "NUL" in str(exc):
        return "a text value holds a NUL (0x00) character"
    name = type(exc).__name__
    state = f", SQLSTATE {exc.sqlstate}" if exc.sqlstate else ""
    return f"a value in the request is not valid for the database ({name}{state})"


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only where and what: pydantic's `input`/`ctx` would echo the caller's payload back (and into logs).
    return [{"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": err.get("type", "")}
            for err in exc.errors()[:20]]


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(request, exc.code, exc.message), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(first['loc']) or 'request'}: {first['msg']}"
        return JSONResponse(error_body(request, "invalid_request", message, details), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse(error_body(request, code, str(exc.detail)), exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(psycopg_pool.PoolTimeout)
    async def _pool_timeout(request: Request, exc: psycopg_pool.PoolTimeout) -> JSONResponse:
        log().warning("database_pool_timeout", error=str(exc))
        return JSONResponse(error_body(request, "unavailable", "the database did not answer in time; retry"), 503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(psycopg.DataError)
    async def _db_refused_value(request: Request, exc: psycopg.DataError) -> JSONResponse:
        # Class 22 (data exception: a NUL, an invalid byte sequence, a number out of range, a too long
        # string) is the caller's value, not the database's health: 422, never 500 or 503.
        log().warning("database_refused_input", error_type=type(exc).__name__, sqlstate=exc.sqlstate)
        return JSONResponse(error_body(request, "invalid_request", _database_refused(exc)), 422)

    @app.exception_handler(psycopg.OperationalError)
    async def _db_down(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        if exc.sqlstate is not None and exc.sqlstate.startswith("54"):
            # Class 54, program limit exceeded (too many columns, a too large index row...): the input's
            # size, and retrying would fail the same way.
            log().warning("database_refused_input", error_type=type(exc).__name__, sqlstate=exc.sqlstate)
            return JSONResponse(error_body(request, "invalid_request", _database_refused(exc)), 422)
        log().warning("database_unavailable", error=str(exc))
        return JSONResponse(error_body(request, "unavailable", "the database is unavailable; retry"), 503,
                            headers={"Retry-After": "1"})

    # The last resort, for a failure outside every other layer (services/api/middleware.py's
    # UnhandledErrorMiddleware catches the rest, inside the request-id middleware): Starlette would
    # otherwise answer a plain-text "Internal Server Error".
    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log_unhandled(exc, request.method, request.url.path)
        return JSONResponse(error_body(request, "internal_error", INTERNAL_ERROR_MESSAGE), 500)
