"""Run ledgergate services as child processes: `python -m ledgergate.tools.cli run <name>`, one log file each.

Used by the demo, the end-to-end tests and the crash tests (SIGTERM, `kill -9`, restart). Each child
runs in its own session, so a Ctrl-C in the terminal reaches only the parent, which then stops the
children in order; a restarted service appends to the same log, so one file shows every life.

With `supervise=True` it is also the dev stack's supervisor: a child that exits without being asked
to (a fatal client error exits non-zero on purpose) is started again after a backoff that doubles up
to RESTART_BACKOFF_MAX_S and resets once the child has run for RESTART_RESET_S.

Several instances of one service run side by side as `service`, `service@1`, `service@2`, ...
(`ledgergate run <service> --instances N`): each its own instance id, so its own transactional id, and
the group shares the partitions among them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

from ledgergate.shared.errors import ServiceStartError
from ledgergate.shared.settings import PROJECT_ROOT

# The four that decide, in pipeline order; tools/run.py names every process `ledgergate run` starts.
GATE_SERVICES = ("token-counter", "policy", "budget-manager", "router")
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 15.0
RESTART_RESET_S = 60.0
# `router@1` is instance 1 of the router (LEDGERGATE_INSTANCE_ID=1); more than the partition count of the
# topics would sit idle.
INSTANCE_SEP = "@"
MAX_INSTANCES = 64


def instance_name(service: str, index: int) -> str:
    """A child's name: the service's for instance 0, `service@index` for the others (its log file too)."""
    assert 0 <= index < MAX_INSTANCES, f"instance index out of range: {index}"
    return service if index == 0 else f"{service}{INSTANCE_SEP}{index}"


def service_of(name: str) -> str:
    return name.split(INSTANCE_SEP, 1)[0]


def instance_of(name: str) -> int:
    _, sep, index = name.partition(INSTANCE_SEP)
    return int(index) if sep else 0


class ServiceSet:
    def __init__(self, settings_env: Mapping[str, str], log_dir: Path, stop_timeout_s: float = 30.0,
                 env_for: Mapping[str, Mapping[str, str]] | None = None, supervise: bool = False) -> None:
        """`settings_env` is laid over os.environ for every child (e.g. LEDGERGATE_TOPIC_PREFIX);
        `env_for[name]` over that for one child (e.g. its LEDGERGATE_HEALTH_PORT)."""
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **settings_env}
        self.env_for = {name: dict(env) for name, env in (env_for or {}).items()}
        self.log_dir = Path(log_dir)
        self.stop_timeout_s = stop_timeout_s
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._started_once: set[str] = set()
        self._started_at: dict[str, float] = {}
        # Children we stopped on purpose (stop, kill9): never restarted until start() is called again.
        self._stopped: set[str] = set()
        self._restarts: dict[str, int] = {}
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None
        if supervise:
            self._supervisor = threading.Thread(target=self._supervise, name="service-supervisor", daemon=True)
            self._supervisor.start()

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

    def restarts(self) -> dict[str, int]:
        """How often the supervisor restarted each child after an exit nobody asked for."""
        return dict(self._restarts)

    def describe_logs(self) -> str:
        return ", ".join(str(self.log_path(n)) for n in self._procs) or str(self.log_dir)

    # --- control -------------------------------------------------------------------------------

    def command(self, name: str) -> list[str]:
        return [sys.executable, "-m", "ledgergate.tools.cli", "run", service_of(name)]

    def _child_env(self, name: str) -> dict[str, str]:
        env = {**self.env, **self.env_for.get(name, {})}
        index = instance_of(name)
        if index:
            # Its own transactional id and client id; its own health port beside instance 0's.
            env["LEDGERGATE_INSTANCE_ID"] = str(index)
            if int(env.get("LEDGERGATE_HEALTH_PORT") or 0):
                env["LEDGERGATE_HEALTH_PORT"] = str(int(env["LEDGERGATE_HEALTH_PORT"]) + index)
        return env

    def start(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self._start(name)

    def _start(self, name: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.alive(name):
            raise ServiceStartError(f"{name} is already running (pid {self.pid(name)})")
        self._stopped.discard(name)
        self._close_log(name)
        # First start of this set truncates the log; restarts append to it.
        mode = "ab" if name in self._started_once else "wb"
        log = open(self.log_path(name), mode)  # noqa: SIM115 - lives as long as the process
        try:
            proc = subprocess.Popen(self.command(name), cwd=PROJECT_ROOT, env=self._child_env(name),
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            log.close()
            raise ServiceStartError(f"cannot start {name}: {exc}") from exc
        self._procs[name] = proc
        self._logs[name] = log
        self._started_once.add(name)
        self._started_at[name] = time.monotonic()

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float | None = None) -> int | None:
        """Send `sig`, wait for the exit (SIGKILL after the timeout); the exit code, None if not started."""
        with self._lock:
            proc = self._procs.get(name)
            if proc is None:
                return None
            self._stopped.add(name)
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
        with self._lock:
            self._stopped.update(self._procs)
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
        self.close()

    def close(self) -> None:
        """Stop supervising, then stop every child."""
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.join()
        self.stop_all()

    def _supervise(self) -> None:
        backoff: dict[str, float] = {}
        due: dict[str, float] = {}
        while not self._closing.wait(0.2):
            with self._lock:
                for name, proc in list(self._procs.items()):
                    if name in self._stopped or proc.poll() is None:
                        continue
                    now = time.monotonic()
                    if name not in due:
                        ran_s = now - self._started_at.get(name, now)
                        delay = RESTART_BACKOFF_S if ran_s >= RESTART_RESET_S else min(
                            RESTART_BACKOFF_MAX_S, backoff.get(name, RESTART_BACKOFF_S / 2) * 2)
                        backoff[name] = delay
                        due[name] = now + delay
                        with contextlib.suppress(OSError), open(self.log_path(name), "ab") as log:
                            log.write(f"# service runner: {name} exited with {proc.returncode}; "
                                      f"restarting in {delay:.1f} s\n".encode())
                    if now >= due[name]:
                        del due[name]
                        self._restarts[name] = self._restarts.get(name, 0) + 1
                        with contextlib.suppress(ServiceStartError):  # tried again next turn
                            self._start(name)

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
