"""The demo's last act: the calls people already make, gated (docs/integrations.md). The real `openai`
package calls the OpenAI-compatible stand-in (tools/openai_standin.py, on loopback) through the gated client
(`ledgergate.integrations.openai.gated`) and through `ledgergate run proxy` with a tenant's API key; a tenant
with no budget is refused by the proxy with a 402 that names the scope."""

from __future__ import annotations

import time
from typing import Any

import httpx
import psycopg

from ledgergate.admission import Gate, GateSettings
from ledgergate.client import GateClient
from ledgergate.errors import GateDeniedError
from ledgergate.shared import apikeys
from ledgergate.shared.settings import PostgresSettings, ProxySettings
from ledgergate.tools.openai_standin import StandinServer
from ledgergate.tools.servicerunner import ServiceSet

ASK: Any = [{"role": "system", "content": "You answer support questions in one line."},  # openai's TypedDicts
            {"role": "user", "content": "Can I change the card my subscription is billed to?"}]
PROXY_READY_TIMEOUT_S = 60.0


def _proxy_ready(base_url: str, key: str, timeout_s: float = PROXY_READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = httpx.get(f"{base_url}/models", headers={"authorization": f"Bearer {key}"}, timeout=2)
            if answer.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the proxy at {base_url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.5)


def run(client: GateClient, services: ServiceSet, tenant: str, run_id: str) -> dict[str, Any] | None:
    """The act's rows, or None when the `openai` package is not installed (it is a dev dependency)."""
    try:
        import openai

        from ledgergate.integrations.openai import gated
    except ImportError:
        return None
    rows: list[dict[str, Any]] = []

    def attempt(via: str, asked: str, call: Any) -> None:
        """One call; its row says what the gate answered, whatever it was (a refusal is part of the show)."""
        try:
            outcome, model, tokens = call()
        except GateDeniedError as exc:
            outcome, model, tokens = f"{exc.decision['outcome']} {exc.reason} ({exc.binding_scope})", "", 0
        except openai.APIStatusError as exc:
            said = exc.body.get("message", "") if isinstance(exc.body, dict) else ""
            outcome, model, tokens = f"{exc.status_code} {said}", "", 0
        rows.append({"via": via, "asked": asked, "outcome": outcome, "model": model, "tokens": tokens})

    with StandinServer() as standin:
        sdk = gated(openai.OpenAI(base_url=standin.base_url, api_key="sk-standin", max_retries=0),
                    Gate(client, GateSettings(tenant_id=tenant, workflow_id="support", agent_id="demo-bot")))

        def plain() -> tuple[str, str, int]:
            reply = sdk.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=64)
            return "granted", reply.model, reply.usage.total_tokens if reply.usage else 0

        def streamed() -> tuple[str, str, int]:
            chunks = list(sdk.chat.completions.create(model="gpt-4o-mini", messages=ASK, max_tokens=64, stream=True,
                                                      stream_options={"include_usage": True}))
            usage = next((c.usage for c in reversed(chunks) if c.usage), None)
            return "granted", chunks[0].model if chunks else "", usage.total_tokens if usage else 0

        attempt("gated OpenAI client", "gpt-4o", plain)
        attempt("gated OpenAI client, stream", "gpt-4o-mini", streamed)

        proxy = ProxySettings()
        with psycopg.connect(PostgresSettings().pg_dsn) as conn:
            key, broke_key = (str(apikeys.create_key(conn, tenant_id=t, is_admin=False, can_write=False,
                                                     name=f"demo proxy {run_id}").token)
                              for t in (tenant, f"{tenant}-nobudget"))
        services.env_for["proxy"] = {**services.env_for.get("proxy", {}),
                                     "LEDGERGATE_PROXY_UPSTREAM_BASE_URL": standin.base_url}
        services.start(["proxy"])
        base_url = f"http://{proxy.proxy_host}:{proxy.proxy_port}/v1"
        _proxy_ready(base_url, key)
        headers = {"x-ledgergate-workflow": "support", "x-ledgergate-agent": "demo-bot"}

        def through_proxy(api_key: str) -> Any:
            def call() -> tuple[str, str, int]:
                via = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, default_headers=headers)
                raw = via.chat.completions.with_raw_response.create(model="gpt-4o", messages=ASK, max_tokens=64)
                answer = raw.parse()
                return (raw.headers["x-ledgergate-outcome"], raw.headers["x-ledgergate-model"],
                        answer.usage.total_tokens if answer.usage else 0)
            return call

        attempt("proxy (base_url)", "gpt-4o", through_proxy(key))
        attempt("proxy, a tenant with no budget", "gpt-4o", through_proxy(broke_key))
    return {"rows": rows, "proxy": base_url, "tenant_key": key}


def format_rows(act: dict[str, Any] | None) -> str:
    if act is None:
        return "\ncalls people already make: skipped (the `openai` package is not installed)"
    lines = ["", "calls people already make (the real openai package; the OpenAI-compatible stand-in as provider):",
             f"  {'via':<32}{'asked':<14}{'outcome':<66}{'called':<14}{'tokens':>7}"]
    lines += [f"  {r['via']:<32}{r['asked']:<14}{r['outcome'][:65]:<66}{r['model']:<14}{r['tokens']:>7}"
              for r in act["rows"]]
    lines.append(f"proxy: {act['proxy']}  (OpenAI(base_url=..., api_key=<a tenant key>); this run's: "
                 f"{act['tenant_key']})")
    return "\n".join(lines)
