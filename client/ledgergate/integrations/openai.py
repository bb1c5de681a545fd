"""An `openai.OpenAI` or `openai.AsyncOpenAI` client whose chat completions are gated.

    from openai import OpenAI
    from ledgergate import Gate, GateClient, GateSettings
    from ledgergate.integrations.openai import gated

    client = gated(OpenAI(), Gate(GateClient(), GateSettings(tenant_id="acme", workflow_id="support")))
    reply = client.chat.completions.create(model="gpt-4o", messages=[...], max_tokens=256)

Each `chat.completions.create` (sync, async, `stream=True`) asks the gate first, then calls the model the
gate decided with at most the output tokens it granted, then settles with the usage the provider reported
(streams ask for it with `stream_options.include_usage`; a usage-only chunk the caller did not ask for is
not passed on). A stream that breaks or is abandoned (closed, or dropped before its end) is settled from the
text received, marked estimated; a call that fails before any output voids its reservation. Everything else
on the client (embeddings, files, ...) passes through untouched. Per-call gate options ride in the
`ledgergate` keyword: {"workflow_id", "agent_id", "labels", "request_id", "max_cost_micro_usd"}.

The response cache (docs/decisions/0013): on a CACHE_HIT the provider is not called; the call returns the
tenant's cached answer as the openai package's own `ChatCompletion` (one choice, the requested model, zero
usage, id "ledgergate-cache-<request id>"), or for `stream=True` an iterator (async iterator) of its
`ChatCompletionChunk`s. The answer's text goes with the settlement only when the decision asked for it
(`cache_store`) and the answer is one whole choice (finish_reason "stop"); otherwise no text is sent. The
label {"cache": "bypass"} in the `ledgergate` options keeps a call away from the cache.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ledgergate.admission import Gate, Grant
from ledgergate.integrations.wire import (
    cacheable_text,
    cached_chunks,
    cached_completion,
    decided_call,
    gate_messages,
    gate_options,
    output_cap,
    sampling_of,
    settle_response,
    usage_from_openai,
)

__all__ = ["AsyncGatedOpenAI", "GatedOpenAI", "gated"]


def gated(client: Any, gate: Gate) -> Any:
    """`client` with its chat completions gated (an AsyncOpenAI gives an async wrapper)."""
    if isinstance(client, openai.AsyncOpenAI):
        return AsyncGatedOpenAI(client, gate)
    if isinstance(client, openai.OpenAI):
        return GatedOpenAI(client, gate)
    raise TypeError(f"gated() wraps an openai.OpenAI or openai.AsyncOpenAI, not {type(client).__name__}")


class _Passthrough:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _prepare(gate: Gate, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """The gate's arguments and the options popped from the call's keywords."""
    options = gate_options(kwargs.pop("ledgergate", None))
    cap = output_cap(kwargs)
    ask = {"messages": gate_messages(kwargs["messages"]), "model": kwargs["model"], "max_output_tokens": cap,
           "tools": kwargs.get("tools"), "sampling": sampling_of(kwargs), **options}
    return ask, options, cap


def _decided(kwargs: dict[str, Any], grant: Grant) -> dict[str, Any]:
    """The call as the gate decided it; a stream asks for its usage."""
    call = decided_call(kwargs, grant.model, grant.max_output_tokens)
    if call.get("stream"):
        call["stream_options"] = {**(call.get("stream_options") or {}), "include_usage": True}
    return call


def _wanted_usage(kwargs: Mapping[str, Any]) -> bool:
    return bool((kwargs.get("stream_options") or {}).get("include_usage"))


class _StreamAccount:
    """What a stream has delivered so far, and its one settlement."""

    def __init__(self, grant: Grant, pass_usage: bool) -> None:
        self.grant = grant
        self.pass_usage = pass_usage
        self.parts: list[str] = []
        self.usage: dict[str, int] | None = None
        self.finished = False  # a choice reported its finish_reason
        self.finish_reason: str | None = None
        self.indexes: set[int] = set()  # the choices seen (the cache stores one-choice answers only)
        self.tool_calls = False

    def see(self, chunk: Any) -> bool:
        """Take in one chunk; whether the caller gets it."""
        if getattr(chunk, "usage", None) is not None:
            self.usage = usage_from_openai(chunk.usage)
        choices = getattr(chunk, "choices", None) or []
        for choice in choices:
            self.indexes.add(int(getattr(choice, "index", 0) or 0))
            delta = getattr(choice, "delta", None)
            content = getattr(delta, "content", None)
            if content:
                self.parts.append(content)
            if getattr(delta, "tool_calls", None):
                self.tool_calls = True
            if getattr(choice, "finish_reason", None):
                self.finished = True
                self.finish_reason = str(choice.finish_reason)
        return bool(choices) or self.pass_usage

    def end(self, broken: bool = False, abandoned: bool = False) -> None:
        if self.grant.settled:
            return
        text = "".join(self.parts)
        if self.usage is not None:
            answer = (cacheable_text(len(self.indexes), self.finish_reason, text)
                      if self.grant.cache_store and not self.tool_calls else None)
            self.grant.settle(self.usage, answer, "OK" if self.finished else "TRUNCATED")
        elif broken and not text:
            self.grant.void()
        else:
            self.grant.settle_from_text(text, "CANCELLED" if abandoned else "TRUNCATED")


class GatedStream:
    """Iterates the provider's stream; settles at its end, when it breaks, or when closed or dropped early."""

    def __init__(self, stream: Any, account: _StreamAccount) -> None:
        self._stream = stream
        self._account = account

    def __iter__(self) -> Iterator[Any]:
        try:
            for chunk in self._stream:
                if self._account.see(chunk):
                    yield chunk
        except GeneratorExit:
            self._account.end(abandoned=True)
            raise
        except BaseException:
            self._account.end(broken=True)
            raise
        self._account.end()

    def close(self) -> None:
        self._account.end(abandoned=True)
        self._stream.close()

    def __enter__(self) -> GatedStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._account.grant.settled:
            self._account.end(abandoned=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class AsyncGatedStream:
    def __init__(self, stream: Any, account: _StreamAccount) -> None:
        self._stream = stream
        self._account = account

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            async for chunk in self._stream:
                if self._account.see(chunk):
                    yield chunk
        except GeneratorExit:
            self._account.end(abandoned=True)
            raise
        except BaseException:
            self._account.end(broken=True)
            raise
        self._account.end()

    async def close(self) -> None:
        self._account.end(abandoned=True)
        await self._stream.close()

    async def __aenter__(self) -> AsyncGatedStream:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def __del__(self) -> None:
        if not self._account.grant.settled:
            self._account.end(abandoned=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class CachedStream:
    """A cache hit's answer as a stream of ChatCompletionChunks (nothing to settle, nothing to close)."""

    def __init__(self, chunks: list[ChatCompletionChunk]) -> None:
        self._chunks = iter(chunks)

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self

    def __next__(self) -> ChatCompletionChunk:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks = iter(())

    def __enter__(self) -> CachedStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class AsyncCachedStream:
    def __init__(self, chunks: list[ChatCompletionChunk]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        self._chunks = iter(())

    async def __aenter__(self) -> AsyncCachedStream:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


def _cached(grant: Grant, kwargs: Mapping[str, Any]) -> ChatCompletion | list[ChatCompletionChunk]:
    """A CACHE_HIT's answer in the openai package's own types: the completion, or a stream's chunks."""
    if kwargs.get("stream"):
        return [ChatCompletionChunk.model_validate(c) for c in cached_chunks(grant, _wanted_usage(kwargs))]
    return ChatCompletion.model_validate(cached_completion(grant))


class _Completions(_Passthrough):
    def __init__(self, inner: Any, gate: Gate) -> None:
        super().__init__(inner)
        self._gate = gate

    def create(self, **kwargs: Any) -> Any:
        ask, _options, _cap = _prepare(self._gate, kwargs)
        grant = self._gate.admit(**ask)
        if grant.cache_hit:  # answered from the tenant's cache: the provider is not called
            cached = _cached(grant, kwargs)
            return CachedStream(cached) if isinstance(cached, list) else cached
        try:
            result = self._inner.create(**_decided(kwargs, grant))
        except BaseException:
            grant.void()  # nothing came back: nothing was produced
            raise
        if kwargs.get("stream"):
            return GatedStream(result, _StreamAccount(grant, _wanted_usage(kwargs)))
        settle_response(grant, result)
        return result


class _AsyncCompletions(_Passthrough):
    def __init__(self, inner: Any, gate: Gate) -> None:
        super().__init__(inner)
        self._gate = gate

    async def create(self, **kwargs: Any) -> Any:
        ask, _options, _cap = _prepare(self._gate, kwargs)
        grant = await self._gate.admit_async(**ask)
        if grant.cache_hit:
            cached = _cached(grant, kwargs)
            return AsyncCachedStream(cached) if isinstance(cached, list) else cached
        try:
            result = await self._inner.create(**_decided(kwargs, grant))
        except BaseException:
            grant.void()
            raise
        if kwargs.get("stream"):
            return AsyncGatedStream(result, _StreamAccount(grant, _wanted_usage(kwargs)))
        settle_response(grant, result)
        return result


class _Chat(_Passthrough):
    def __init__(self, inner: Any, completions: Any) -> None:
        super().__init__(inner)
        self.completions = completions


class GatedOpenAI(_Passthrough):
    def __init__(self, client: Any, gate: Gate) -> None:
        super().__init__(client)
        self.gate = gate
        self.chat = _Chat(client.chat, _Completions(client.chat.completions, gate))


class AsyncGatedOpenAI(_Passthrough):
    def __init__(self, client: Any, gate: Gate) -> None:
        super().__init__(client)
        self.gate = gate
        self.chat = _Chat(client.chat, _AsyncCompletions(client.chat.completions, gate))
