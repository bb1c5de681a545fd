"""Process and port helpers shared by the Kafka and PostgreSQL launchers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

from ledgergate.shared.errors import StackError


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def require_free_port(port: int, what: str) -> None:
    if port_open(port):
        raise StackError(
            f"port {port} is taken by another process, so {what} cannot listen on it; "
            f"stop that process (`ss -ltnp 'sport = :{port}'` names it) or choose another port "
            f"with the setting named in the README"
        )


def require_disk(path: Path, min_free_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free_mb = shutil.disk_usage(path).free // (1024 * 1024)
    if free_mb < min_free_mb:
        raise StackError(
            f"disk nearly full: {free_mb} MiB free under {path}, the stack needs at least {min_free_mb} MiB "
            f"(LEDGERGATE_MIN_FREE_DISK_MB); free some space or point LEDGERGATE_DATA_DIR elsewhere"
        )


def require_tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} is not installed or not on PATH: {hint}")
    return found


def stop_pid(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM, wait for a clean exit (Kafka flushes its logs), SIGKILL only if it does not come."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
