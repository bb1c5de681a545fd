"""The proxy's stream relay (services/proxy/app.py `relay`) over an httpx response served by httpx's own
MockTransport: one write per server-sent event, the same bytes as the upstream's (less the usage chunk the
caller did not ask for), a cut stream's tail passed on, and the settlement from the usage it reported.
The whole path, broker and stand-in included, is tests/e2e/test_proxy.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from ledgergate.services.proxy import app, core


class _Grant:
    """What relay calls on a Grant, recorded."""

    def __init__(self, cache_store: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.cache_store = cache_store
        self.texts: list[str | None] = []  # the completion text each settle was given

    def settle(self, usage: dict[str, int], text: str | None = None, status: str = "OK") -> None:
        self.calls.append(("settle", (usage, status)))
        self.texts.append(text)

    def settle_from_text(self, text: str, status: str = "TRUNCATED") -> None:
        self.calls.append(("settle_from_text", (text, status)))

    def void(self) -> None:
        self.calls.append(("void", None))


def _event(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _relay(body: str, wants_usage: bool, cache_store: bool = False) -> tuple[list[str], _Grant]:
    async def go() -> tuple[list[str], _Grant]:
        transport = httpx.MockTransport(lambda _request: httpx.Response(200, content=body.encode()))
        async with httpx.AsyncClient(transport=transport) as client:
            reply = await client.send(client.build_request("POST", "http://standin/v1/chat/completions"), stream=True)
            grant = _Grant(cache_store)
            out = [piece async for piece in app.relay(reply, core.StreamTally(wants_usage), grant)]  # type: ignore[arg-type]
            return out, grant

    return asyncio.run(go())


WORDS = [_event({"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}) for w in ("a", " b")]
FINISH = _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
USAGE = _event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})


def test_each_event_goes_out_in_one_piece_and_the_stream_is_settled_from_its_usage() -> None:
    out, grant = _relay("".join([*WORDS, FINISH, USAGE, _event("[DONE]")]), wants_usage=True)
    assert out == [*WORDS, FINISH, USAGE, _event("[DONE]")]
    assert grant.calls == [("settle", ({"input_tokens": 5, "cached_input_tokens": 0, "output_tokens": 2,
                                        "reasoning_tokens": 0}, "OK"))]


def test_the_usage_chunk_nobody_asked_for_is_dropped_with_its_separator() -> None:
    out, grant = _relay("".join([*WORDS, FINISH, USAGE, _event("[DONE]")]), wants_usage=False)
    assert "".join(out) == "".join([*WORDS, FINISH, _event("[DONE]")])
    assert grant.calls[0][0] == "settle"


def test_a_cut_stream_passes_on_its_tail_and_is_settled_from_its_text() -> None:
    tail = 'data: {"choices": [{"index": 0, "delta": {"content": " c"}}]}\n'  # no blank line: cut mid-event
    out, grant = _relay("".join(WORDS) + tail, wants_usage=False)
    assert out == [*WORDS, tail]
    assert grant.calls == [("settle_from_text", ("a b c", "TRUNCATED"))]


def test_the_answer_goes_with_the_settlement_only_when_the_decision_asked_for_it() -> None:
    body = "".join([*WORDS, FINISH, USAGE, _event("[DONE]")])
    assert _relay(body, wants_usage=False)[1].texts == [None]  # cache_store False: no text leaves
    assert _relay(body, wants_usage=False, cache_store=True)[1].texts == ["a b"]
    cut_at_cap = _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    _out, grant = _relay("".join([*WORDS, cut_at_cap, USAGE, _event("[DONE]")]), False, cache_store=True)
    assert grant.texts == [None]  # an answer cut at the output cap is not a whole answer to cache
