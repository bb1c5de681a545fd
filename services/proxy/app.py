"""`ledgergate run proxy`: an OpenAI-compatible gateway. Any OpenAI client works by changing `base_url`.

    client = OpenAI(base_url="http://127.0.0.1:8100/v1", api_key="lgk_...")   # a tenant's API key

`POST /v1/chat/completions` authenticates the tenant's key (the admin API issues them), gates the call
through Kafka exactly as the SDK does (ledgergate.admission: workflow, agent and request id from the
x-ledgergate-* headers), forwards it to the deployment the decision names with the decided model and
output cap, streams the answer back, and settles with the usage the upstream reported. A DENY is a 402
(budget), 403 (policy) or 400 (the request) in OpenAI's error format; a THROTTLE a 429 with Retry-After;
no decision and no fail-open a 503. `GET /v1/models` lists the models the price catalogue knows.

A CACHE_HIT (the tenant's response cache, docs/decisions/0013) is answered here without calling upstream:
the cached answer as an OpenAI chat completion (zero usage), or as server-sent events for a stream, with
`x-ledgergate-cache: hit`. An upstream answer's text goes with the settlement only when the decision asked
for it (`cache_store`) and the answer is one whole choice.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import psycopg
import uvicorn
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from psycopg_pool import ConnectionPool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledgergate.admission import Gate, GateSettings, Grant
from ledgergate.client import GateClient
from ledgergate.errors import GateDeniedError, GateUnavailableError, InvalidRequestError
from ledgergate.integrations.wire import cached_completion, sampling_of, settle_response
from ledgergate.services.proxy import core
from ledgergate.shared import apikeys, metrics
from ledgergate.shared.apikeys import Principal
from ledgergate.shared.catalogue import DATA_DIR, DeploymentCatalogue, deployments, prices
from ledgergate.shared.logging import configure
from ledgergate.shared.settings import ProxySettings

CHAT_ROUTE = "/v1/chat/completions"
# Lines of one server-sent event held back to send it in one write; an upstream that never ends an event is
# passed on in pieces of this many lines.
RELAY_EVENT_LINES_MAX = 64


class Keys:
    """Tenant keys verified against PostgreSQL, remembered for a short while (bounded)."""

    def __init__(self, pool: ConnectionPool, ttl_ms: int, max_entries: int) -> None:
        self.pool, self.ttl_s, self.max_entries = pool, ttl_ms / 1000, max_entries
        self._known: collections.OrderedDict[str, tuple[float, Principal | None]] = collections.OrderedDict()

    async def principal(self, token: str) -> Principal | None:
        now = time.monotonic()
        digest = hashlib.sha256(token.encode()).hexdigest()  # the key itself is never kept
        hit = self._known.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = await asyncio.to_thread(self._lookup, token)
        self._known[digest] = (now + self.ttl_s, principal)
        self._known.move_to_end(digest)
        while len(self._known) > self.max_entries:
            self._known.popitem(last=False)
        return principal

    def unready(self) -> str | None:
        """None when PostgreSQL answers a query; else what is wrong."""
        try:
            with self.pool.connection(timeout=2.0) as conn:
                conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            return f"postgres: {type(exc).__name__}"
        return None

    def _lookup(self, token: str) -> Principal | None:
        try:
            with self.pool.connection() as conn:
                return apikeys.lookup(conn, token)
        except (psycopg.Error, OSError) as exc:
            raise core.ProxyError(f"cannot verify API keys now: {type(exc).__name__}", status=503,
                                  kind="service_unavailable", code="keys_unavailable") from None


class Proxy:
    """What the routes share: settings, the one GateClient, a Gate per tenant, the upstream HTTP client."""

    def __init__(self, settings: ProxySettings, client: GateClient, keys: Keys, http: httpx.AsyncClient,
                 catalogue: DeploymentCatalogue) -> None:
        self.settings, self.client, self.keys, self.http, self.catalogue = settings, client, keys, http, catalogue
        self._gates: collections.OrderedDict[str, Gate] = collections.OrderedDict()

    def gate(self, tenant_id: str) -> Gate:
        gate = self._gates.get(tenant_id)
        if gate is None:
            s = self.settings
            gate = self._gates[tenant_id] = Gate(self.client, GateSettings(
                tenant_id=tenant_id, decision_timeout_ms=s.proxy_decision_timeout_ms, on_throttle="raise",
                on_unavailable=s.proxy_on_unavailable, fail_open_micro_usd_per_min=s.proxy_fail_open_micro_usd_per_min))
            while len(self._gates) > self.settings.proxy_tenants_max:
                self._gates.popitem(last=False)
        self._gates.move_to_end(tenant_id)
        return gate


class Measure:
    """Each request's status and time to its response's start, as a plain ASGI middleware: Starlette's
    BaseHTTPMiddleware (`@app.middleware("http")`) runs every response through a task group and a memory
    stream, which cost the proxy 2 ms of CPU per streamed call and 0.4 ms per plain one (`ledgergate bench
    proxy`, BENCHMARKS.md "Proxy")."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in (CHAT_ROUTE, "/v1/models") else "other"

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                metrics.observe_http(scope["method"], route, message["status"], time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, sending)


def get_proxy(request: Request) -> Proxy:
    proxy: Proxy = request.app.state.proxy
    return proxy


async def tenant_of(request: Request, proxy: Annotated[Proxy, Depends(get_proxy)],
                    authorization: Annotated[str | None, Header()] = None) -> str:
    token = (authorization or "").removeprefix("Bearer ").strip()
    if not token:
        raise core.ProxyError("missing API key: send `Authorization: Bearer <tenant key>`", status=401,
                              code="invalid_api_key")
    principal = await proxy.keys.principal(token)
    if principal is None:
        raise core.ProxyError("invalid or revoked API key", status=401, code="invalid_api_key")
    if principal.tenant_id is None:
        raise core.ProxyError("an admin key speaks for no tenant: use a tenant's key", status=403,
                              kind="permission_error", code="tenant_key_required")
    return principal.tenant_id


ProxyDep = Annotated[Proxy, Depends(get_proxy)]
TenantDep = Annotated[str, Depends(tenant_of)]


def create_app(settings: ProxySettings | None = None) -> FastAPI:
    settings = settings or ProxySettings()
    log = configure("proxy")
    metrics.configure("proxy", settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = ConnectionPool(settings.pg_dsn, min_size=1, max_size=4, open=False, name="proxy-keys",
                              check=ConnectionPool.check_connection, kwargs={"connect_timeout": 5})
        pool.open(wait=False)
        # One client for every tenant: "all" reads every decisions partition (a tenant's first call waits
        # for no assignment).
        client = await asyncio.to_thread(GateClient, connection=settings.kafka_connection,
                                         topic_prefix=settings.topic_prefix, partitions="all",
                                         timeout_s=settings.proxy_start_timeout_s)
        limits = httpx.Limits(max_connections=settings.proxy_upstream_connections_max)
        http = httpx.AsyncClient(timeout=settings.proxy_upstream_timeout_s, limits=limits)
        catalogue = deployments(settings.proxy_deployments_path or DATA_DIR / "deployments.yaml")
        app.state.proxy = Proxy(settings, client, Keys(pool, settings.proxy_key_cache_ttl_ms,
                                                       settings.proxy_keys_cached_max), http, catalogue)
        log.info("proxy_started", host=settings.proxy_host, port=settings.proxy_port,
                 topic_prefix=settings.topic_prefix, upstream_override=bool(settings.proxy_upstream_base_url))
        try:
            yield
        finally:
            await http.aclose()
            for gate in list(app.state.proxy._gates.values()):
                gate.report_journal(flush_timeout_s=2.0)
            client.close()
            pool.close()
            log.info("proxy_stopped")

    app = FastAPI(title="ledgergate proxy", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(core.ProxyError)
    async def proxy_error(_request: Request, exc: core.ProxyError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    app.add_middleware(Measure)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(proxy: ProxyDep) -> JSONResponse:
        # Ready when both things a call needs answer: PostgreSQL (tenant keys) and Kafka (the gate).
        problems = {"postgres": await asyncio.to_thread(proxy.keys.unready),
                    "kafka": await asyncio.to_thread(proxy.client.unready)}
        ready = not any(problems.values())
        return JSONResponse({"status": "ok" if ready else "unavailable",
                             "checks": {name: problem or "ok" for name, problem in problems.items()}},
                            status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics_page() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models(_tenant: TenantDep) -> dict[str, Any]:
        version = prices().at(time.time_ns() // 1_000_000)
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "ledgergate"}
                                           for m in sorted(version.models)]}

    @app.post(CHAT_ROUTE)
    async def chat(request: Request, proxy: ProxyDep, tenant_id: TenantDep) -> Response:
        declared = request.headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > settings.proxy_max_body_bytes:
            raise core.ProxyError(f"the body is larger than {settings.proxy_max_body_bytes} bytes", status=413)
        raw = await request.body()
        if len(raw) > settings.proxy_max_body_bytes:
            raise core.ProxyError(f"the body is larger than {settings.proxy_max_body_bytes} bytes", status=413)
        try:
            body = json.loads(raw)
        except ValueError:
            raise core.ProxyError("the body is not JSON") from None
        call = core.parse_chat(body, settings.proxy_messages_max)
        headers = request.headers
        try:
            grant = await proxy.gate(tenant_id).admit_async(
                call.messages, call.model, call.max_output_tokens, request_id=headers.get(core.REQUEST_ID_HEADER),
                workflow_id=headers.get(core.WORKFLOW_HEADER, ""), agent_id=headers.get(core.AGENT_HEADER, ""),
                tools=call.tools, sampling=sampling_of(call.body))
        except InvalidRequestError as exc:
            raise core.ProxyError(exc.message, code="invalid_request") from None
        except GateDeniedError as exc:
            raise core.refusal(exc) from None
        except GateUnavailableError as exc:
            raise core.ProxyError(exc.message, status=503, kind="service_unavailable", code="gate_unavailable",
                                  headers={"retry-after": "1"}) from None
        if grant.cache_hit:
            return cached_reply(call, grant)
        return await forward(proxy, call, grant)

    return app


def cached_reply(call: core.ChatCall, grant: Grant) -> Response:
    """A CACHE_HIT answered without the upstream (nothing was reserved, nothing is settled)."""
    ours = {"x-ledgergate-request-id": grant.request_id, "x-ledgergate-outcome": grant.outcome,
            "x-ledgergate-model": grant.model, core.CACHE_HEADER: "hit"}
    if call.stream:
        return Response(core.cached_events(grant, call.wants_usage), headers=ours, media_type="text/event-stream")
    return JSONResponse(cached_completion(grant), headers=ours)


async def forward(proxy: Proxy, call: core.ChatCall, grant: Grant) -> Response:
    decision = grant.decision or {}
    deployment = decision.get("deployment") or {}
    # A fail-open call has no decision: the catalogue's own choice for the model, as the router would make it.
    chosen = (proxy.catalogue.find(grant.model, deployment.get("endpoint", "")) if deployment
              else proxy.catalogue.choose(grant.model, None, grant.request_id))
    try:
        upstream = core.upstream_for(chosen, grant.model, proxy.settings.proxy_upstream_base_url)
    except core.ProxyError:
        grant.void()
        raise
    headers = {"content-type": "application/json"}
    key = os.environ.get(upstream.api_key_env, "") if upstream.api_key_env else ""
    if key:
        headers["authorization"] = f"Bearer {key}"
    ours = {"x-ledgergate-request-id": grant.request_id, "x-ledgergate-outcome": grant.outcome,
            "x-ledgergate-model": grant.model}
    payload = core.upstream_body(call, upstream.model, grant.max_output_tokens)
    url = f"{upstream.base_url}/chat/completions"
    if not call.stream:
        try:
            reply = await proxy.http.post(url, json=payload, headers=headers)
        except httpx.HTTPError as exc:
            grant.void()
            raise core.ProxyError(f"the upstream did not answer: {type(exc).__name__}", status=502,
                                  kind="server_error", code="upstream_unreachable", headers=ours) from None
        if reply.status_code >= 400:
            grant.void()
            return Response(reply.content, status_code=reply.status_code, headers=ours,
                            media_type=reply.headers.get("content-type"))
        settle_response(grant, reply.json())  # the answer's text only when the decision asked for it
        return Response(reply.content, status_code=reply.status_code, headers=ours, media_type="application/json")
    try:
        upstream_reply = await proxy.http.send(proxy.http.build_request("POST", url, json=payload, headers=headers),
                                               stream=True)
    except httpx.HTTPError as exc:
        grant.void()
        raise core.ProxyError(f"the upstream did not answer: {type(exc).__name__}", status=502,
                              kind="server_error", code="upstream_unreachable", headers=ours) from None
    if upstream_reply.status_code >= 400:
        content = await upstream_reply.aread()
        await upstream_reply.aclose()
        grant.void()
        return Response(content, status_code=upstream_reply.status_code, headers=ours,
                        media_type=upstream_reply.headers.get("content-type"))
    return StreamingResponse(relay(upstream_reply, core.StreamTally(call.wants_usage), grant),
                             media_type="text/event-stream", headers=ours)


async def relay(reply: httpx.Response, tally: core.StreamTally, grant: Grant) -> AsyncIterator[str]:
    """The upstream's events, passed on whole (one write per event, not per line: the blank line that ends
    an event is a line of its own); settled however the stream ends."""
    ended, broken = False, False
    event: list[str] = []
    try:
        async for line in reply.aiter_lines():
            out = tally.line(line)
            if out is None:
                continue
            event.append(out + "\n")
            if not out or len(event) >= RELAY_EVENT_LINES_MAX:
                yield "".join(event)
                event.clear()
        ended = True
    except httpx.HTTPError:
        broken = True
    finally:
        await reply.aclose()
        if tally.usage is not None:
            grant.settle(tally.usage, tally.answer if grant.cache_store else None,
                         "OK" if tally.finished else "TRUNCATED")
        elif broken and not tally.text:
            grant.void()
        else:  # cut upstream (no usage), or the caller went away (the generator closed before its end)
            grant.settle_from_text(tally.text, "TRUNCATED" if ended or broken else "CANCELLED")
    if event:  # what a cut stream sent after its last blank line (the caller went away: never reached)
        yield "".join(event)


def run(settings: ProxySettings | None = None) -> None:
    settings = settings or ProxySettings()
    uvicorn.run(create_app(settings), host=settings.proxy_host, port=settings.proxy_port, log_config=None,
                access_log=False, proxy_headers=False, timeout_graceful_shutdown=10)
