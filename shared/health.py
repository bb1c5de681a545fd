"""Liveness, readiness and a bounded shutdown for one long-running process.

Readiness tells the truth: a process is ready only while its main loop turns and, when input is
waiting for it, while that input is being consumed. A loop wedged inside a client call, or a consumer
that has stopped fetching while its partitions have a backlog, reports not ready within
`stall_after_ms`. A fatal client error reports not ready at once (the process is about to exit).

`GET /healthz` answers 200 while the loop turns (a supervisor restarts a process that fails it);
`GET /readyz` answers 200 or 503 with the reasons, as JSON; `GET /metrics` is the process's Prometheus
metrics (shared/metrics/), so each process has one small HTTP listener. Served on a daemon thread, only
when a port is configured.

SIGTERM/SIGINT ask the loop to stop; if the process has not exited `shutdown_timeout_ms` later (a
client call that does not return), a watchdog ends it with exit code 3, so SIGTERM always ends a
process within its shutdown timeout. The signals are taken by a thread of their own (sigwait), not by
a Python handler, which would run only once the main thread is back from C: measured, a librdkafka
commit_transaction(10 s) after a broker restart did not return for minutes.

For the same reason every blocking client call runs inside `Health.call(name, limit_ms)`: a call still
running past its limit (its own timeout plus a grace) ends the process with exit code 4, so the
supervisor starts a fresh instance, which fences this one and rebuilds its state from the topics.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ledgergate.shared import metrics

EXIT_SHUTDOWN_TIMEOUT = 3
EXIT_WEDGED = 4
EXIT_STALLED = 5
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Health:
    """What the main loop reports; read by the HTTP thread. Plain attribute writes are atomic in
    CPython, so the loop never takes a lock on its hot path."""

    def __init__(self, service: str, stall_after_ms: int, clock_ms: Callable[[], int] = _now_ms) -> None:
        assert stall_after_ms > 0
        self.service = service
        self.stall_after_ms = stall_after_ms
        self._clock_ms = clock_ms
        now = clock_ms()
        self.started_ms = now
        self.loop_ms = now            # last turn of the main loop
        self.progress_ms = now        # last time input was consumed (or found to be none)
        self.backlog = False          # input waiting on an owned partition, as of the last check
        self.fatal: str | None = None
        self.detail: dict[str, Any] = {}
        self._call: tuple[str, int] | None = None  # (name, deadline) of the blocking call under way
        self._watchdog: threading.Thread | None = None

    @contextlib.contextmanager
    def call(self, name: str, limit_ms: int) -> Iterator[None]:
        """Mark a blocking client call; the watchdog ends the process if it outlives `limit_ms`."""
        self._call = (name, self._clock_ms() + limit_ms)
        try:
            yield
        finally:
            self._call = None
            self.loop_ms = self._clock_ms()

    def overdue_call(self) -> str | None:
        call = self._call
        if call is not None and self._clock_ms() > call[1]:
            return call[0]
        return None

    def stalled_ms(self) -> int:
        """How long input has waited with nothing consumed (0 when none waits)."""
        return self._clock_ms() - self.progress_ms if self.backlog else 0

    def start_watchdog(self, log: Any, stalled_exit_ms: int | None = None, interval_s: float = 1.0) -> None:
        """Exit for a fresh instance on a wedged call; with `stalled_exit_ms`, also when input has
        waited that long with nothing consumed while the loop turns. Measured after broker restarts:
        a consumer that rejoined its group, was assigned and then never fetched again, silently."""
        if self._watchdog is not None:
            return

        def watch() -> None:
            while True:
                time.sleep(interval_s)
                name = self.overdue_call()
                if name is not None:
                    log.error("client_call_wedged", call=name, action="exiting for a fresh instance")
                    sys.stderr.flush()
                    os._exit(EXIT_WEDGED)
                stalled = self.stalled_ms()
                if stalled_exit_ms is not None and stalled > stalled_exit_ms:
                    log.error("input_stalled", stalled_ms=stalled, action="exiting for a fresh instance")
                    sys.stderr.flush()
                    os._exit(EXIT_STALLED)

        self._watchdog = threading.Thread(target=watch, name=f"{self.service}-watchdog", daemon=True)
        self._watchdog.start()

    def turned(self) -> None:
        self.loop_ms = self._clock_ms()

    def progressed(self) -> None:
        self.progress_ms = self.loop_ms = self._clock_ms()

    def backlog_is(self, waiting: bool) -> None:
        now = self._clock_ms()
        if not waiting:
            self.progress_ms = now  # nothing to do is not a stall
        self.backlog = waiting
        self.loop_ms = now

    def failed(self, reason: str) -> None:
        self.fatal = reason

    def problems(self) -> list[str]:
        now = self._clock_ms()
        found = []
        if self.fatal is not None:
            found.append(f"fatal: {self.fatal}")
        if now - self.loop_ms > self.stall_after_ms:
            found.append(f"main loop has not turned for {now - self.loop_ms} ms")
        if self.backlog and now - self.progress_ms > self.stall_after_ms:
            found.append(f"input is waiting and none was consumed for {now - self.progress_ms} ms")
        return found

    def live(self) -> bool:
        return self.fatal is None and self._clock_ms() - self.loop_ms <= self.stall_after_ms

    def report(self) -> dict[str, Any]:
        problems = self.problems()
        return {"service": self.service, "ready": not problems, "problems": problems,
                "backlog": self.backlog, **self.detail}

    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        health = self

        class Probe(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._answer(200, *metrics.render())
                    return
                if self.path == "/healthz":
                    ok, body = health.live(), {"service": health.service, "live": health.live()}
                elif self.path == "/readyz":
                    body = health.report()
                    ok = bool(body["ready"])
                else:
                    self.send_error(404, "only /healthz, /readyz and /metrics")
                    return
                self._answer(200 if ok else 503, json.dumps(body).encode(), "application/json")

            def _answer(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:  # probes are frequent; the loop logs what matters
                pass

        server = ThreadingHTTPServer((host, port), Probe)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name=f"{self.service}-health", daemon=True).start()
        return server


def on_stop_signal(stop: Callable[[], None], shutdown_timeout_ms: int, log: Any) -> None:
    """SIGTERM/SIGINT call `stop` (the loop finishes its batch and closes its clients); the process
    is ended if that takes longer than `shutdown_timeout_ms`. Call it on the main thread before any
    Kafka client exists: the signals are blocked here, and threads created later (librdkafka's)
    inherit the mask, so only the waiting thread ever receives them."""
    assert shutdown_timeout_ms > 0
    if threading.current_thread() is not threading.main_thread():
        return  # embedded (tests, benchmarks): the host owns the signals
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def wait() -> None:
        signum = signal.sigwait(STOP_SIGNALS)
        log.info("stop_requested", signal=signal.Signals(signum).name, timeout_ms=shutdown_timeout_ms)
        stop()
        time.sleep(shutdown_timeout_ms / 1000)
        log.error("shutdown_timeout", timeout_ms=shutdown_timeout_ms)
        sys.stderr.flush()
        os._exit(EXIT_SHUTDOWN_TIMEOUT)

    threading.Thread(target=wait, name="stop-signals", daemon=True).start()
