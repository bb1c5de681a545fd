"""Install (when missing), initialise, start, stop and probe the project's own PostgreSQL cluster.

The cluster lives under the data directory and listens on its own port, so it never touches a
PostgreSQL the machine already runs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from ledgergate.shared.errors import StackError
from ledgergate.shared.settings import StackSettings
from ledgergate.tools.devstack.proc import pid_alive, port_open, require_disk, require_free_port, tail

PG_OS_USER = "postgres"


def _dir(s: StackSettings) -> Path:
    return s.data_dir / "postgres"


def _pgdata(s: StackSettings) -> Path:
    return _dir(s) / "pgdata"


def _log_file(s: StackSettings) -> Path:
    return _dir(s) / "postgres.log"


def _find_bindir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def ensure_installed() -> Path:
    """Debian's packages are the supported source; install them when the machine has none."""
    bindir = _find_bindir()
    if bindir is not None:
        return bindir
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError("PostgreSQL is not installed; install Debian's `postgresql` package and retry")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
        if result.returncode != 0:
            raise StackError(f"`{' '.join(cmd)}` failed while installing PostgreSQL:\n{result.stderr[-2000:]}")
    bindir = _find_bindir()
    if bindir is None:
        raise StackError("apt-get installed postgresql but no initdb was found under /usr/lib/postgresql")
    return bindir


def _as_pg_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; the Debian package creates the `postgres` user.
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", PG_OS_USER, "--", *cmd]


def _chown_tree(path: Path) -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(PG_OS_USER)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _run(cmd: list[str], what: str, timeout_s: float = 120) -> str:
    result = subprocess.run(_as_pg_user(cmd), capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise StackError(f"{what} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def _initdb(s: StackSettings, bindir: Path) -> None:
    if (_pgdata(s) / "PG_VERSION").exists():
        return
    _dir(s).mkdir(parents=True, exist_ok=True)
    # The postgres user must be able to walk down to its data directory.
    for parent in [_dir(s), *_dir(s).parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)
    pwfile = _dir(s) / "pwfile"
    pwfile.write_text(s.pg_password + "\n")
    (_dir(s) / "run").mkdir(exist_ok=True)
    _chown_tree(_dir(s))
    _run([str(bindir / "initdb"), "-D", str(_pgdata(s)), "-U", s.pg_user, f"--pwfile={pwfile}",
          "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
         "initdb")
    pwfile.unlink()


def ready(s: StackSettings, database: str = "postgres") -> bool:
    """A real connection and query: the cluster is up only when it answers one."""
    import psycopg

    try:
        with psycopg.connect(s.dsn(database), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def running_pid(s: StackSettings) -> int | None:
    try:
        pid = int((_pgdata(s) / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def start(s: StackSettings) -> str:
    if running_pid(s) is not None and ready(s):
        _ensure_database(s)
        return f"postgres already running (pid {running_pid(s)}) on 127.0.0.1:{s.pg_port}"
    require_free_port(s.pg_port, "PostgreSQL")
    require_disk(s.data_dir, s.min_free_disk_mb)
    bindir = ensure_installed()
    _initdb(s, bindir)
    (_dir(s) / "run").mkdir(exist_ok=True)
    _chown_tree(_dir(s) / "run")
    options = (f"-p {s.pg_port} -c listen_addresses=127.0.0.1 -k {_dir(s) / 'run'} "
               f"-c max_connections=200 -c shared_buffers=256MB")
    _run([str(bindir / "pg_ctl"), "-D", str(_pgdata(s)), "-l", str(_log_file(s)), "-o", options,
          "-w", "-t", str(int(s.start_timeout_s)), "start"], "pg_ctl start", timeout_s=s.start_timeout_s + 10)
    deadline = time.monotonic() + s.start_timeout_s
    while not ready(s):
        if time.monotonic() > deadline:
            raise StackError(f"postgres did not accept connections; last log lines:\n{tail(_log_file(s))}")
        time.sleep(0.3)
    _ensure_database(s)
    return f"postgres started (pid {running_pid(s)}) on 127.0.0.1:{s.pg_port}"


def _ensure_database(s: StackSettings) -> None:
    import psycopg

    with psycopg.connect(s.dsn("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (s.pg_database,)).fetchone()
        if exists is None:
            conn.execute(f'CREATE DATABASE "{s.pg_database}"')


def stop(s: StackSettings) -> str:
    pid = running_pid(s)
    if pid is None:
        return "postgres not running"
    bindir = _find_bindir()
    if bindir is None:
        raise StackError("postgres is running but pg_ctl cannot be found to stop it")
    _run([str(bindir / "pg_ctl"), "-D", str(_pgdata(s)), "-m", "fast", "-w", "stop"], "pg_ctl stop")
    return f"postgres stopped (pid {pid})"


def status(s: StackSettings) -> str:
    pid = running_pid(s)
    where = f"127.0.0.1:{s.pg_port}"
    if pid is None:
        taken = " (port taken by another process!)" if port_open(s.pg_port) else ""
        return f"postgres: stopped (would listen on {where}){taken}"
    state = "ready" if ready(s) else "NOT accepting connections"
    return f"postgres: running pid {pid} on {where}, {state}; log {_log_file(s)}"
