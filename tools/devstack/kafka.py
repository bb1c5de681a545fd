"""Start, stop and probe a single-node Apache Kafka broker in KRaft combined mode.

The jars come from Maven Central through deploy/kafka/pom.xml; the broker runs from them directly
with `java -cp`, which is all the official tarball's scripts do.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from ledgergate.shared.errors import StackError
from ledgergate.shared.settings import PROJECT_ROOT, StackSettings
from ledgergate.tools.devstack.proc import (
    pid_alive,
    port_open,
    read_pid,
    require_disk,
    require_free_port,
    require_tool,
    stop_pid,
    tail,
)

DEPLOY_DIR = PROJECT_ROOT / "deploy" / "kafka"
# KRaft wants a base64url UUID; a fixed one is fine because each data directory is one cluster.
CLUSTER_ID = "bGVkZ2VyZ2F0ZS1rYWZrYQ"


def _dir(s: StackSettings) -> Path:
    return s.data_dir / "kafka"


def _pid_file(s: StackSettings) -> Path:
    return _dir(s) / "kafka.pid"


def _log_file(s: StackSettings) -> Path:
    return _dir(s) / "server.log"


def running_pid(s: StackSettings) -> int | None:
    pid = read_pid(_pid_file(s))
    return pid if pid_alive(pid) else None


# The broker jar, and the command-line tools jar (not a dependency of the broker); a cache that lacks
# either is topped up. `[0-9]` keeps kafka-tools-api-*.jar, which the broker does bring, from matching.
REQUIRED_JARS = ("kafka_2.13-[0-9]*.jar", "kafka-tools-[0-9]*.jar")

# `ledgergate kafka-tool NAME`: the main classes behind the official tarball's bin/ scripts (Kafka 4.x).
TOOLS = {
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "topics": "org.apache.kafka.tools.TopicCommand",
    "get-offsets": "org.apache.kafka.tools.GetOffsetShell",
}


def _jars_present(s: StackSettings) -> bool:
    return all(any(s.kafka_libs_dir.glob(pattern)) for pattern in REQUIRED_JARS)


def ensure_jars(s: StackSettings) -> None:
    """Copy the broker and tools jars into the git-ignored cache with Maven (a no-op once they are there)."""
    if _jars_present(s):
        return
    mvn = require_tool("mvn", "install Maven (`apt-get install maven`) so the Kafka jars can be fetched")
    s.kafka_libs_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(DEPLOY_DIR / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={s.kafka_libs_dir}"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    if result.returncode != 0 or not _jars_present(s):
        raise StackError(f"Maven could not fetch the Kafka jars:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")


def _write_config(s: StackSettings) -> Path:
    base = (DEPLOY_DIR / "server.properties").read_text()
    log_dirs = _dir(s) / "logs"
    overrides = (
        f"\n# --- written by ledgergate's stack launcher from its settings ---\n"
        f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}\n"
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}\n"
        f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}\n"
        f"log.dirs={log_dirs}\n"
    )
    path = _dir(s) / "server.properties"
    path.write_text(base + overrides)
    return path


def _java_cmd(s: StackSettings, java: str, main: str, *args: str) -> list[str]:
    return [
        java, f"-Xmx{s.kafka_heap_mb}m", f"-Xms{s.kafka_heap_mb}m",
        "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.yaml'}",
        "-cp", f"{s.kafka_libs_dir}/*", main, *args,
    ]


def tool_command(s: StackSettings, name: str, args: Sequence[str], bootstrap: str) -> list[str]:
    """The java command line for a Kafka command-line tool; `--bootstrap-server bootstrap` is added
    unless `args` names one."""
    main = TOOLS.get(name)
    if main is None:
        raise StackError(f"unknown Kafka tool {name!r}; one of {', '.join(TOOLS)}")
    java = require_tool("java", "install a Java 17+ runtime (`apt-get install openjdk-17-jre-headless`)")
    ensure_jars(s)
    given = any(a == "--bootstrap-server" or a.startswith("--bootstrap-server=") for a in args)
    return _java_cmd(s, java, main, *([] if given else ["--bootstrap-server", bootstrap]), *args)


def _format_storage(s: StackSettings, java: str, config: Path) -> None:
    if (_dir(s) / "logs" / "meta.properties").exists():
        return
    result = subprocess.run(
        _java_cmd(s, java, "kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c", str(config),
                  "--ignore-formatted"),
        capture_output=True, text=True, timeout=120, check=False,
    )
    if result.returncode != 0:
        raise StackError(f"formatting Kafka storage failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def metadata_ok(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """A real metadata round trip: the broker is up only when it answers one."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout_s * 1000)})
    try:
        md = admin.list_topics(timeout=timeout_s)
    except Exception:
        return False
    return len(md.brokers) > 0


def start(s: StackSettings) -> str:
    bootstrap = f"127.0.0.1:{s.kafka_port}"
    if running_pid(s) is not None:
        if metadata_ok(bootstrap, timeout_s=5):
            return f"kafka already running (pid {running_pid(s)}) on {bootstrap}"
        wait_ready(s, bootstrap)
        return f"kafka was starting (pid {running_pid(s)}); now ready on {bootstrap}"
    java = require_tool("java", "install a Java 17+ runtime (`apt-get install openjdk-17-jre-headless`)")
    require_free_port(s.kafka_port, "the Kafka broker")
    require_free_port(s.kafka_controller_port, "the Kafka controller")
    require_disk(s.data_dir, s.min_free_disk_mb)
    ensure_jars(s)
    _dir(s).mkdir(parents=True, exist_ok=True)
    config = _write_config(s)
    _format_storage(s, java, config)
    with open(_log_file(s), "ab") as log:
        proc = subprocess.Popen(
            _java_cmd(s, java, "kafka.Kafka", str(config)),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=_dir(s),
        )
    _pid_file(s).write_text(str(proc.pid))
    wait_ready(s, bootstrap)
    return f"kafka started (pid {proc.pid}) on {bootstrap}"


def wait_ready(s: StackSettings, bootstrap: str) -> None:
    deadline = time.monotonic() + s.start_timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(read_pid(_pid_file(s))):
            raise StackError(f"kafka exited during start; last lines of {_log_file(s)}:\n{tail(_log_file(s))}")
        if port_open(s.kafka_port) and metadata_ok(bootstrap):
            return
        time.sleep(0.5)
    raise StackError(
        f"kafka did not answer a metadata request on {bootstrap} within {s.start_timeout_s:.0f} s; "
        f"last lines of {_log_file(s)}:\n{tail(_log_file(s))}"
    )


def stop(s: StackSettings) -> str:
    pid = running_pid(s)
    if pid is None:
        return "kafka not running"
    stop_pid(pid, timeout_s=45)
    _pid_file(s).unlink(missing_ok=True)
    return f"kafka stopped (pid {pid})"


def status(s: StackSettings) -> str:
    pid = running_pid(s)
    bootstrap = f"127.0.0.1:{s.kafka_port}"
    if pid is None:
        return f"kafka: stopped (would listen on {bootstrap})"
    ready = "ready" if metadata_ok(bootstrap) else "NOT answering metadata requests"
    return f"kafka: running pid {pid} on {bootstrap}, {ready}; log {_log_file(s)}"

