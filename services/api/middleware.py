"""Pure ASGI middleware: request ids and access logs, the JSON 500 backstop, the request body size limit and
the HTTP metrics.

Pure ASGI rather than BaseHTTPMiddleware: the body limit has to wrap `receive` so a chunked upload
without Content-Length is cut off at the limit instead of being read whole first.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledgergate.services.api.errors import INTERNAL_ERROR_MESSAGE, error_body, log_unhandled
from ledgergate.services.api.log import log
from ledgergate.shared import metrics

REQUEST_ID_HEADER = "x-request-id"
# A caller's request id is echoed into logs and headers only when it looks like an id, never arbitrary text.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")



class _BodyTooLarge(Exception):
    pass


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    # RequestContextMiddleware, outside this one, adds the X-Request-ID header to every response.
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body larger than {self.max_bytes} bytes"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1  # unparseable: refuse rather than guess
                if declared > self.max_bytes:
                    await _send_json(send, 413, _body(scope, "payload_too_large", message))
                    return
        received = 0
        exceeded = replaced = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return msg

        async def guarded_send(msg: Message) -> None:
            nonlocal replaced
            # FastAPI turns any exception while reading the body into its own 400; once the limit is
            # exceeded, whatever response the app produces is replaced by the 413.
            if exceeded:
                if msg["type"] == "http.response.start" and not replaced:
                    replaced = True
                    await _send_json(send, 413, _body(scope, "payload_too_large", message))
                return
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not replaced:
                replaced = True
                await _send_json(send, 413, _body(scope, "payload_too_large", message))


class UnhandledErrorMiddleware:
    """An exception no handler claimed becomes a JSON 500 `internal_error` instead of Starlette's plain text.

    It sits just inside RequestContextMiddleware, so the answer carries the X-Request-ID header, the access
    log records the 500, and the log line of the exception has the request id bound. The exception is not
    re-raised: it has been answered and logged (by type and location, never its message).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log_unhandled(exc, scope.get("method"), scope.get("path"))
            if not started:  # once a response has begun, the server can only cut the connection
                await _send_json(send, 500, _body(scope, "internal_error", INTERNAL_ERROR_MESSAGE))


class RequestContextMiddleware:
    """Gives every request an id (the caller's X-Request-ID when it is a sane id), binds it to structlog's
    context for every log line of the request, returns it as a header and writes one access log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                msg["headers"] = [*msg.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(msg)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                # tenant_id is set by the auth dependency; the path is logged without the query string,
                # which may carry filters a tenant considers private.
                log().info("http_request", method=scope.get("method"), path=scope.get("path"), status=status,
                          tenant_id=state.get("tenant_id"), key_id=state.get("key_id"),
                          ms=round((time.perf_counter() - started) * 1000, 2))


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Counts and times every request by method, route template and status. The template
    (`/v1/tenants/{tenant_id}/balances`), never the path, which holds tenant and request ids: the label
    set stays the size of the route table."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router writes the matched route into this same scope dict; none matched: "unmatched".
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            metrics.observe_http(method if method in _METHODS else "other", template, status,
                                 time.perf_counter() - started)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            return text if _SAFE_REQUEST_ID.fullmatch(text) else None
    return None


def _body(scope: Scope, code: str, message: str) -> dict[str, Any]:
    body = error_body(None, code, message)
    request_id = scope.get("state", {}).get("request_id")
    if request_id:
        body["error"]["request_id"] = request_id
    return body
