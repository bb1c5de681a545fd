"""Run ledgergate services as child processes: `python -m shared.cli run <name>`, one log file each.

Used by the demo, the end-to-end tests and the crash tests (SIGTERM, `kill -9`, restart). Each child
runs in its own session, so a Ctrl-C in the terminal reaches only the parent, which then stops the
children in order; a restarted service appends to the same log, so one file shows every life.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

from shared.errors import ServiceStartError
from shared.settings import PROJECT_ROOT

SERVICES = ("token-counter", "policy", "budget-manager", "router")


class ServiceSet:
    def __init__(self, settings_env: Mapping[str, str], log_dir: Path, stop_timeout_s: float = 30.0) -> None:
        """`settings_env` is laid over os.environ for every child (e.g. LEDGERGATE_TOPIC_PREFIX)."""
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **settings_env}
        self.log_dir = Path(log_dir)
        self.stop_timeout_s = stop_timeout_s
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._started_once: set[str] = set()

    # --- queries ---------------------------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def pid(self, name: str) -> int | None:
        proc = self._procs.get(name)
        return None if proc is None else proc.pid

    def returncode(self, name: str) -> int | None:
        proc = self._procs.get(name)
        return None if proc is None else proc.poll()

    def names(self) -> list[str]:
        return list(self._procs)

    def dead(self) -> list[str]:
        """Services started and not stopped by us that have exited."""
        return [name for name, proc in self._procs.items() if proc.poll() is not None]

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def describe_logs(self) -> str:
        return ", ".join(str(self.log_path(n)) for n in self._procs) or str(self.log_dir)

    # --- control -------------------------------------------------------------------------------

    def command(self, name: str) -> list[str]:
        return [sys.executable, "-m", "shared.cli", "run", name]

    def start(self, names: Iterable[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            if self.alive(name):
                raise ServiceStartError(f"{name} is already running (pid {self.pid(name)})")
            self._close_log(name)
            # First start of this set truncates the log; restarts append to it.
            mode = "ab" if name in self._started_once else "wb"
            log = open(self.log_path(name), mode)  # noqa: SIM115 - lives as long as the process
            try:
                proc = subprocess.Popen(self.command(name), cwd=PROJECT_ROOT,
                                        env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                log.close()
                raise ServiceStartError(f"cannot start {name}: {exc}") from exc
            self._procs[name] = proc
            self._logs[name] = log
            self._started_once.add(name)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float | None = None) -> int | None:
        """Send `sig`, wait for the exit (SIGKILL after the timeout); the exit code, None if not started."""
        proc = self._procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(proc, sig)
        return self._reap(name, self.stop_timeout_s if timeout_s is None else timeout_s)

    def kill9(self, name: str) -> int | None:
        return self.stop(name, signal.SIGKILL)

    def restart(self, name: str, sig: int = signal.SIGTERM) -> None:
        self.stop(name, sig)
        self.start([name])

    def stop_all(self, sig: int = signal.SIGTERM, timeout_s: float | None = None) -> dict[str, int | None]:
        """Signal every running service at once, then wait for each (shutdowns overlap)."""
        for proc in self._procs.values():
            if proc.poll() is None:
                self._signal(proc, sig)
        deadline = time.monotonic() + (self.stop_timeout_s if timeout_s is None else timeout_s)
        codes: dict[str, int | None] = {}
        for name in list(self._procs):
            codes[name] = self._reap(name, max(0.0, deadline - time.monotonic()))
        return codes

    def __enter__(self) -> ServiceSet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_all()

    # --- internals -----------------------------------------------------------------------------

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # exited between poll() and the signal
            proc.send_signal(sig)

    def _reap(self, name: str, timeout_s: float) -> int | None:
        proc = self._procs[name]
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._signal(proc, signal.SIGKILL)
            proc.wait()
        self._close_log(name)
        return proc.returncode

    def _close_log(self, name: str) -> None:
        log = self._logs.pop(name, None)
        if log is not None:
            log.close()
