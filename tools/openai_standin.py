"""LOCAL STAND-IN for an OpenAI-compatible provider, over HTTP: the wire format, not a model.

`POST /v1/chat/completions` (JSON or server-sent events, `stream_options.include_usage` honoured) and
`GET /v1/models`, so the real `openai` package, the proxy and the framework hooks can be tested and
benchmarked offline. The answer is words from tools/provider_standin.py, as many as the request's output
cap allows (at most `answer_words`); usage counts words as tokens. Faults on request, by the header
`x-standin-fault` or, through a gateway that passes no such header, the body's `user` "standin-fault:<f>":
`error` (a 500 before any output), `cut` (a stream that stops after `cut_after_chunks` chunks without its
usage or [DONE]), `slow` (each chunk `slow_chunk_ms` apart). It records what it was asked (`calls`), so a
test can see the model and the output cap the gate decided.

As its own process (the bench, so its CPU is not the measuring process's):
`python -m ledgergate.tools.openai_standin --port 0` prints `{"port": N, "base_url": ...}` once it serves,
and exits when its stdin closes (the parent went away) or on SIGTERM. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ledgergate.tools.provider_standin import WORDS

FAULT_HEADER = "x-standin-fault"
FAULT_USER_PREFIX = "standin-fault:"  # the same, as the body's `user`
CALLS_REMEMBERED_MAX = 10_000


@dataclass
class StandinState:
    answer_words: int = 24
    cut_after_chunks: int = 3
    slow_chunk_ms: int = 50
    models: tuple[str, ...] = ("gpt-4o", "gpt-4o-mini", "gpt-4.1-nano")
    calls: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, call: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append(call)
            del self.calls[:-CALLS_REMEMBERED_MAX]


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status)


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    words = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        words += len(str(content or "").split()) + 3  # a few tokens of framing per message, as providers count
    return words


def create_app(state: StandinState) -> FastAPI:
    app = FastAPI(title="OpenAI-compatible provider stand-in")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "standin"}
                                           for m in state.models]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            return _error(400, "model and messages are required")
        fault = request.headers.get(FAULT_HEADER, "")
        user = body.get("user")
        if not fault and isinstance(user, str) and user.startswith(FAULT_USER_PREFIX):
            fault = user.removeprefix(FAULT_USER_PREFIX)  # through a gateway, which passes no extra headers
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or state.answer_words
        n_words = max(1, min(int(cap), state.answer_words))
        words = [WORDS[(i * 7) % len(WORDS)] for i in range(n_words)]
        prompt_tokens = _prompt_tokens(body["messages"])
        state.record({"model": body["model"], "max_tokens": body.get("max_tokens"),
                      "max_completion_tokens": body.get("max_completion_tokens"), "stream": bool(body.get("stream")),
                      "temperature": body.get("temperature"), "fault": fault,
                      "authorization": request.headers.get("authorization", ""),
                      "at": time.time()})
        if fault == "error":
            return _error(500, "the stand-in was asked to fail", "server_error")
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n_words,
                 "total_tokens": prompt_tokens + n_words}
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not body.get("stream"):
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": created, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": "length" if n_words == cap else "stop", "logprobs": None}],
                "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return "data: " + json.dumps({
                "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}) + "\n\n"

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for i, word in enumerate(words):
                if fault == "cut" and i >= state.cut_after_chunks:
                    return  # the connection ends: no finish, no usage, no [DONE]
                if fault == "slow":
                    await asyncio.sleep(state.slow_chunk_ms / 1000)
                yield chunk({"content": word if i == 0 else " " + word})
            yield chunk({}, "length" if n_words == cap else "stop")
            if include_usage:
                yield "data: " + json.dumps({"id": completion_id, "object": "chat.completion.chunk",
                                             "created": created, "model": body["model"], "choices": [],
                                             "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class StandinServer:
    """The stand-in served by uvicorn on a thread of this process, on loopback (port 0: a free one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, state: StandinState | None = None) -> None:
        self.state = state or StandinState()
        config = uvicorn.Config(create_app(self.state), host=host, port=port, log_level="warning",
                                lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="openai-standin", daemon=True)

    def start(self, timeout_s: float = 10.0) -> StandinServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the OpenAI stand-in did not start within {timeout_s} s")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledgergate.tools.openai_standin", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0: a free one (printed)")
    parser.add_argument("--answer-words", type=int, default=StandinState.answer_words)
    args = parser.parse_args(argv)
    # Loopback only: the stand-in is for tests and the bench, never a listener on the network.
    with StandinServer(port=args.port, state=StandinState(answer_words=args.answer_words)) as server:
        print(json.dumps({"port": server.port, "base_url": server.base_url}), flush=True)
        sys.stdin.read()  # until the parent closes our stdin or dies; SIGTERM ends the process at once
    return 0


if __name__ == "__main__":
    sys.exit(main())
