"""A real HTTP server on 127.0.0.1 (http.server in a thread) standing in for an alerts webhook."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Webhook:
    """Answers each POST with respond(n) for the n-th request (from 1); records every request."""

    respond: Callable[[int], int]
    received: list[tuple[float, dict[str, str], dict[str, Any], int]] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, status: int | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [b for _, _, b, s in self.received if status is None or s == status]


@contextlib.contextmanager
def webhook(respond: Callable[[int], int]) -> Iterator[Webhook]:
    hook = Webhook(respond)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with hook.lock:
                status = hook.respond(len(hook.received) + 1)
                hook.received.append((time.monotonic(), dict(self.headers), body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/ledgergate?token=not-logged"
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
