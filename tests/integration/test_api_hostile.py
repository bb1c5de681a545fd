"""Hostile input over EVERY route and EVERY parameter, on real PostgreSQL and Kafka (issue D3: a NUL in a
filter was a plain-text 500 from psycopg.DataError).

Routes and their path/query/body parameters are enumerated from the app itself (`app.routes`), so a route or
parameter added later is attacked without anyone remembering this test. The contract: no input answers a
5xx, every 4xx is the API's JSON `{"error": ...}` shape, a non-printable character (NUL, control, format,
surrogate) in any declared parameter or body string is refused rather than accepted, and the API is still
ready afterwards.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, get_args
from urllib.parse import quote

import psycopg
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import BaseModel
from structlog.testing import capture_logs

from ledgergate.services.api.app import create_app
from ledgergate.services.api.deps import DbConn
from ledgergate.services.api.paging import encode_cursor
from ledgergate.shared.policy import Policy
from ledgergate.shared.settings import KafkaSettings
from tests.integration.apiharness import (  # noqa: F401  (fixtures)
    A,
    Keys,
    api_db_fixture,
    api_fixture,
    api_settings,
    keys_fixture,
    seed,
    wait_ready,
)

pytestmark = pytest.mark.integration
H = Keys.h

# Hostile strings, percent-encoded into the URL as UTF-8 (so "%00" arrives as the three characters %00).
HOSTILE_TEXT = ["\x00", "a\x00b", "\x1b[31m", "\u202e", "x" * 10_000, "%00", "../../etc", "' OR 1=1 --",
                "a\n", "\r\nX-Injected: 1", "", " ", "\t", "\ufeff", "null", "-1", "💥" * 200]
# Sent as raw URL bytes: a lone surrogate U+D800 (invalid UTF-8 %ED%A0%80), other invalid UTF-8 and broken
# escapes, which no Python str can express.
HOSTILE_RAW = ["%ED%A0%80", "a%ED%A0%80b", "%FF%FE", "%C0%80", "%", "%zz"]
HOSTILE_INT = ["-1", "-9223372036854775809", "9223372036854775808", "9" * 400, "1e309", "NaN", "0x10", "1.5",
               "+1", "٣"]
# Well-formed cursors with hostile content: this API never issues them, a caller can craft them. Every one
# is refused but the last (shaped like a real one: printable, bounded).
HOSTILE_CURSORS = [encode_cursor(1, "a\x00b"), encode_cursor(10**30, "x"), encode_cursor(-(2**70), "x"),
                   encode_cursor("\x00"), encode_cursor(1, "\ud800"), encode_cursor(1.5, "x"),
                   encode_cursor(True, "x"), encode_cursor(), "W1tbW1tbW1tbW1tbW1td", encode_cursor(1, "x" * 300)]
PERIODS = ["9999-12", "0000-01", "٢٠٢٤-٠١", "2024-00", "2024-1", "2024-01\n"]

# Plausible values for the parameters not under attack, so the hostile one decides the answer.
PATH_VALUES = {"tenant_id": A, "request_id": "req-1", "key_id": "0123456789ab",
               "credential_id": "lgc_1_0123456789abcdef", "template_id": "faq", "version": "1"}
BODIES: dict[str, Any] = {"budgets": {"limit_micro_usd": 1}, "raise": {"amount_micro_usd": 1},
                          "lower": {"amount_micro_usd": 1}, "credits": {"amount_micro_usd": 1}, "void": {},
                          "policy": {"max_output_tokens": 100}, "api-keys": {"tenant_id": A},
                          "credentials": {"name": "hostile"}, "mode": {"mode": "OPTIONAL"},
                          "templates": {"template_id": "faq", "version": 1, "text": "Hello {name}"}}
# Keys worth attacking in a body that is a free-form document (PUT /policy): the policy schema's.
DOCUMENT_KEYS = {"policy": list(Policy.model_fields)}


def _deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": [value]}
    return value


HOSTILE_JSON: list[Any] = ["\x00", "a\x00b", "\x1b[31m", "\u202e", "\ud800", "x" * 10_000, "../../etc",
                           "' OR 1=1 --", "", 10**30, -(10**30), 2**63, -(2**63) - 1, 10**400, 1e308, -1, 0, 1.5,
                           float("inf"), float("nan"), True, None, [], {}, ["\x00"], {"\x00": "\x00"},
                           {"a\x00b": ["\ud800"]}, [[[[[[[[[["x"]]]]]]]]]], _deep(50), "WORKFLOW", "TENANT"]
HOSTILE_BODIES: list[bytes] = [b"", b"null", b"[]", b'"x"', b"1", b"\x00", b"{", b'{"a":', b"{}" * 10,
                               b'{"x":"\\u0000"}', b'{"x":"\xed\xa0\x80"}', b"\xff\xfe{}", b'{"a":NaN}',
                               b'{"a":Infinity}', b'{"a":1e999999}', b'{"a":' + b"9" * 5000 + b"}",
                               b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
                               b"[" * 100_000]


@dataclass
class Route:
    method: str
    path: str
    path_params: list[str] = field(default_factory=list)
    query_params: dict[str, bool] = field(default_factory=dict)  # name -> is an integer
    body: Any = None  # the body's annotation, when the route takes one

    @property
    def key(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def _unprintable(value: Any) -> bool:
    """Whether a (JSON) value holds a string that is not printable, anywhere inside it."""
    if isinstance(value, str):
        return not value.isprintable()
    if isinstance(value, dict):
        return any(_unprintable(k) or _unprintable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unprintable(v) for v in value)
    return False


def _is_int(annotation: Any) -> bool:
    return annotation is int or int in get_args(annotation)


def _routes(app: Any) -> list[Route]:
    routes = []
    for ctx in iter_route_contexts(app.routes):
        dependant = getattr(ctx, "dependant", None)
        paths, queries, bodies = [], {}, []
        pending = [dependant] if dependant is not None else []
        while pending:
            dep = pending.pop()
            paths += [p.alias for p in dep.path_params]
            queries.update({q.alias: _is_int(q.field_info.annotation) for q in dep.query_params})
            bodies += [b.field_info.annotation for b in dep.body_params]
            pending += dep.dependencies
        for method in sorted((ctx.methods or set()) - {"HEAD"}):
            routes.append(Route(method, ctx.path, sorted(set(paths)), queries, bodies[0] if bodies else None))
    return routes


def _url(route: Route, path_values: dict[str, str] | None = None, query: str = "") -> str:
    values = {name: quote(v, safe="") for name, v in PATH_VALUES.items()} | (path_values or {})
    path = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], route.path)
    return f"{path}?{query}" if query else path


def _model_fields(annotation: Any) -> list[str]:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return list(candidate.model_fields)
    return []


class Checker:
    def __init__(self, client: TestClient, headers: dict[str, str]) -> None:
        self.client, self.headers = client, headers
        self.failures: list[str] = []
        self.sent = 0

    def send(self, method: str, url: str, what: str, body: bytes | None = None, *, refuse: bool = False) -> int:
        """Send one request; record a 5xx, a 4xx not in the JSON error shape, and, with `refuse`, any
        answer but a 4xx (the value must not be accepted)."""
        self.sent += 1
        headers = dict(self.headers)
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            resp = self.client.request(method, url, headers=headers, content=body)
        except Exception as exc:  # the app raised through the test client: a 500 by another name
            self.failures.append(f"{what}: raised {type(exc).__name__}: {str(exc)[:200]}")
            return 599
        if resp.status_code >= 500:
            self.failures.append(f"{what}: {resp.status_code} {resp.text[:300]!r}")
        elif refuse and resp.status_code < 400:
            self.failures.append(f"{what}: accepted ({resp.status_code}), must be refused")
        elif resp.status_code >= 400:
            try:
                error = resp.json()["error"]
                assert error["code"] and error["message"] and error["request_id"] == resp.headers["x-request-id"]
            except Exception:
                self.failures.append(f"{what}: {resp.status_code} not the JSON error shape: {resp.text[:300]!r}")
        return resp.status_code


def _json(value: Any) -> bytes:
    # Python's json writes NaN/Infinity and escapes a lone surrogate as \\ud800: both reach the server as is.
    return json.dumps(value).encode()


@pytest.fixture(name="seeded")
def seeded_fixture(api: TestClient, api_db: str) -> TestClient:
    seed(api_db)
    return api


def test_the_issue_a_nul_in_a_filter_is_a_json_422(seeded: TestClient, keys: Keys) -> None:
    for url in (f"/v1/tenants/{A}/ledger?workflow=%00", f"/v1/tenants/{A}/ledger?model=%00",
                f"/v1/tenants/{A}/ledger?entry_type=%00", f"/v1/tenants/{A}/decisions?workflow=%00",
                f"/v1/tenants/{A}/ledger?model=a%00b", f"/v1/tenants/{A}/ledger?cursor={HOSTILE_CURSORS[0]}"):
        resp = seeded.get(url, headers=H(keys.admin))
        assert resp.status_code == 422, f"{url}: {resp.status_code} {resp.text}"
        assert resp.json()["error"]["code"] == "invalid_request", resp.text
    # Names are printable text, not ids: a model with a space or a slash is still a valid filter.
    for params in ({"model": "gpt-4o"}, {"model": "my model/v2"}, {"entry_type": "ReservationSettled"}):
        assert seeded.get(f"/v1/tenants/{A}/ledger", headers=H(keys.admin), params=params).status_code == 200


def test_hostile_values_in_every_parameter_of_every_route(seeded: TestClient, keys: Keys) -> None:
    routes = _routes(seeded.app)
    check = Checker(seeded, H(keys.admin))
    attacked: set[tuple[str, str, str]] = set()
    for route in routes:
        base_body = _json(BODIES[route.key]) if route.body is not None else None
        # The route answers a plain valid request, so the refusals below are the hostile value's doing.
        status = check.send(route.method, _url(route), f"{route.method} {route.path} (valid)", base_body)
        assert status < 400 or status == 404, f"{route.method} {route.path}: valid request answered {status}"
        # (url-encoded value, must it be refused?)
        texts = [(quote(v, safe=""), not v.isprintable()) for v in HOSTILE_TEXT] + [(v, False) for v in HOSTILE_RAW]
        for name in route.path_params:
            attacked.add((route.method, route.path, name))
            for value, refuse in texts:
                check.send(route.method, _url(route, {name: value}), f"{route.method} {route.path} {name}={value[:40]}",
                           base_body, refuse=refuse)
        # Every declared query parameter, plus one the route does not know (and may ignore).
        for name, is_int in [*route.query_params.items(), ("unknown_param", False)]:
            attacked.add((route.method, route.path, name))
            values = texts + [(v, False) for v in HOSTILE_INT if is_int]
            if name == "cursor":
                values += [(c, i < len(HOSTILE_CURSORS) - 1) for i, c in enumerate(HOSTILE_CURSORS)]
            if name == "period":
                values += [(quote(p, safe=""), True) for p in PERIODS]
            for value, refuse in values:
                check.send(route.method, _url(route, query=f"{name}={value}"),
                           f"{route.method} {route.path} ?{name}={value[:40]}", base_body,
                           refuse=refuse and name != "unknown_param")
            check.send(route.method, _url(route, query=f"{name}=1&{name}=%00"),  # repeated parameter
                       f"{route.method} {route.path} ?{name} twice", base_body)
    body_routes = [r for r in routes if r.body is not None]
    for route in body_routes:
        base = BODIES[route.key]
        for name in dict.fromkeys([*base, *_model_fields(route.body), *DOCUMENT_KEYS.get(route.key, []), "\x00"]):
            attacked.add((route.method, route.path, f"body.{name}"))
            for value in HOSTILE_JSON:
                check.send(route.method, _url(route), f"{route.method} {route.path} body.{name}={value!r:.40}",
                           _json({**base, name: value}), refuse=_unprintable(name) or _unprintable(value))
        for raw in HOSTILE_BODIES:
            check.send(route.method, _url(route), f"{route.method} {route.path} body {raw[:40]!r}", raw)
    # The enumeration really found the routes and parameters (an empty walk must not pass).
    assert len(routes) >= 20 and len(body_routes) >= 7, routes
    for must in (("GET", "/v1/tenants/{tenant_id}/ledger", "workflow"), ("GET", "/v1/tenants/{tenant_id}/ledger",
                 "entry_type"), ("GET", "/v1/tenants/{tenant_id}/decisions", "workflow"),
                 ("GET", "/v1/decisions/{request_id}", "request_id"), ("PUT", "/v1/tenants/{tenant_id}/policy",
                 "body.allowed_models"), ("POST", "/v1/api-keys", "body.name")):
        assert must in attacked, must
    assert not check.failures, f"{len(check.failures)} of {check.sent} requests failed:\n" + "\n".join(
        check.failures[:60])
    ready = seeded.get("/readyz")
    assert ready.status_code == 200, ready.text


def test_unexpected_errors_are_json_500_and_database_refusals_422(kafka: KafkaSettings, api_db: str) -> None:
    """The backstop behind the edge validation, on routes that fail on purpose."""
    app = create_app(api_settings(kafka, api_db))

    def boom() -> None:
        raise RuntimeError("prompt: the secret plan")

    def nul(db: DbConn) -> None:
        db.execute("SELECT %s::text", ("a\x00b",))  # refused by psycopg before it is sent

    def bad_cast(db: DbConn) -> None:
        db.execute("SELECT %s::bigint", ("the secret plan",))  # refused by PostgreSQL: InvalidTextRepresentation

    def overflow(db: DbConn) -> None:
        db.execute("SELECT %s::bigint * %s::bigint", (2**62, 2**62))  # NumericValueOutOfRange

    for path, endpoint in (("boom", boom), ("nul", nul), ("cast", bad_cast), ("overflow", overflow)):
        app.add_api_route(f"/test/{path}", endpoint)
    with TestClient(app) as client:
        wait_ready(client)
        with capture_logs() as logs:
            resp = client.get("/test/boom")
        assert resp.status_code == 500 and resp.headers["content-type"].startswith("application/json"), resp.text
        error = resp.json()["error"]
        assert error["code"] == "internal_error" and error["request_id"] == resp.headers["x-request-id"]
        assert "secret" not in resp.text
        unhandled = [e for e in logs if e["event"] == "unhandled_exception"]
        assert unhandled and unhandled[0]["error_type"] == "builtins.RuntimeError", logs
        assert any("boom" in frame for frame in unhandled[0]["at"]), unhandled
        assert "secret" not in repr(logs)  # never the exception's message: it may quote request data
        for path in ("nul", "cast", "overflow"):
            with capture_logs() as logs:
                resp = client.get(f"/test/{path}")
            assert resp.status_code == 422, f"{path}: {resp.status_code} {resp.text}"
            assert resp.json()["error"]["code"] == "invalid_request", resp.text
            assert "secret" not in resp.text and "secret" not in repr(logs)
        assert "NUL" in client.get("/test/nul").json()["error"]["message"]
        assert client.get("/readyz").status_code == 200
        # The pool is healthy after the refused statements (each rolled back its connection).
        with psycopg.connect(api_db) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
