"""CPU seconds and memory of processes from /proc, and the machine they run on.

Other engineers run tests on the same 2-core machine: `CpuWindow` measures how much CPU went to
processes that are not ours while a phase ran, so a polluted figure is visible in the results.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None, reaped_children: bool = False) -> float | None:
    """utime + stime of a live process (plus cutime + cstime, its exited and waited-for children, when
    asked), or None when it is gone."""
    if pid is None:
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "; field 3 (state) is index 0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped_children else 0)
    return ticks / CLK_TCK


def status_kb(pid: int | None, key: str) -> int | None:
    """A `VmHWM`/`VmRSS`-style line of /proc/<pid>/status, in kB."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mb(pid: int | None) -> float | None:
    kb = status_kb(pid, "VmHWM")
    return None if kb is None else round(kb / 1024, 1)


def rss_bytes(pid: int | None = None) -> int:
    kb = status_kb(pid or os.getpid(), "VmRSS")
    return (kb or 0) * 1024


def system_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from the first line of /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def pid_from_file(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def stack_pids() -> dict[str, int]:
    """The broker's and PostgreSQL's postmaster pids, when the local stack runs them."""
    from ledgergate.shared.settings import StackSettings

    data = StackSettings().data_dir
    found = {"kafka": pid_from_file(data / "kafka" / "kafka.pid"),
             "postgres": pid_from_file(data / "postgres" / "pgdata" / "postmaster.pid")}
    return {k: v for k, v in found.items() if v is not None}


def broker() -> dict[str, int]:
    """{"kafka": pid}, or {} when the broker is not the local stack's."""
    return {k: v for k, v in stack_pids().items() if k == "kafka"}


def children_cpu_seconds(pid: int) -> float:
    """A process's CPU plus all its children's, live or exited: PostgreSQL does its work in one backend
    process per connection, and the postmaster reaps each when its connection closes."""
    total = cpu_seconds(pid, reaped_children=True) or 0.0
    for child in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int(child.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            total += cpu_seconds(int(child.name)) or 0.0
    return total


@dataclass
class CpuWindow:
    """CPU used by named processes over a phase, and by everything else on the machine meanwhile."""

    pids: dict[str, int]
    started: float = field(default_factory=time.monotonic)
    busy0: float = field(default_factory=system_busy_seconds)
    cpu0: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cpu0 = {name: self._cpu(name, pid) for name, pid in self.pids.items()}

    @staticmethod
    def _cpu(name: str, pid: int) -> float:
        return children_cpu_seconds(pid) if name == "postgres" else (cpu_seconds(pid) or 0.0)

    def close(self, final: dict[str, float] | None = None, extra_s: float = 0.0) -> dict[str, Any]:
        """Per-process CPU seconds over the window; `final` gives the last reading of processes that have
        already exited (they report their own), `extra_s` CPU of ours counted elsewhere (reaped children).
        `foreign_cores` is the machine's busy CPU that none of it accounts for, averaged over the window:
        other people's work on a shared machine."""
        wall = max(1e-6, time.monotonic() - self.started)
        final = final or {}
        used = {name: round(max(0.0, final.get(name, self._cpu(name, pid)) - self.cpu0[name]), 3)
                for name, pid in self.pids.items()}
        busy = system_busy_seconds() - self.busy0
        foreign = max(0.0, busy - sum(used.values()) - extra_s) / wall
        return {"wall_s": round(wall, 2), "cpu_s": used, "machine_busy_cores": round(busy / wall, 2),
                "foreign_cores": round(foreign, 2)}


def machine() -> dict[str, object]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    import confluent_kafka

    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "confluent_kafka": confluent_kafka.__version__, "librdkafka": confluent_kafka.libversion()[0],
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


def reaped_children_cpu_seconds() -> float:
    """CPU of this process's children that have exited and been waited for (and theirs)."""
    t = os.times()
    return t.children_user + t.children_system


def wait_quiet(max_wait_s: float, cores: float = 0.3) -> float:
    """Wait up to `max_wait_s` until the machine is nearly idle; returns the busy cores seen last."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0 = system_busy_seconds(), time.monotonic()
        time.sleep(1.0)
        busy = (system_busy_seconds() - b0) / (time.monotonic() - t0)
        if busy <= cores or time.monotonic() > deadline:
            return round(busy, 2)
