"""Start, stop and probe a single-node Apache Kafka broker in KRaft combined mode.

The jars come from Maven Central through deploy/kafka/pom.xml; the broker runs from them directly
with `java -cp`, which is all the official tarball's scripts do.

The broker always listens PLAINTEXT on loopback (clients of the dev stack, the broker's own inter-broker
and controller traffic). With a SaslSslListener it also serves SASL_SSL on a port of its own: TLS from PEM
files, SCRAM-SHA-512 users created when the storage is formatted (tests/integration/test_sasl_ssl.py).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ledgergate.connection import KafkaConnection, Secret
from ledgergate.kafka_config import admin_config
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


# The one mechanism the SASL_SSL listener enables: SCRAM keeps no password on the broker (a salted
# verifier in the cluster metadata) and sends none over the wire.
SCRAM_MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class SaslSslListener:
    """A SASL_SSL listener beside the PLAINTEXT one, on 127.0.0.1:port."""

    port: int
    # PEM: the broker's certificate (chain) followed by its private key, unencrypted PKCS#8, in one file.
    keystore_location: Path
    # PEM: the CA(s) whose client certificates the broker accepts (mutual TLS, `client_auth`).
    truststore_location: Path
    # SCRAM-SHA-512 users (name, password), stored in the cluster metadata at format time. They go to
    # `kafka-storage format` on its command line: a dev broker's test users, not production credentials.
    scram_users: tuple[tuple[str, Secret], ...]
    client_auth: Literal["none", "requested", "required"] = "none"

    def __post_init__(self) -> None:
        assert 1024 <= self.port <= 65535, f"port out of range: {self.port}"
        assert self.scram_users, "a SASL_SSL listener with no user admits nobody"
        for name, password in self.scram_users:
            # The --add-scram syntax is name=...,password=... inside [...]: these would break it.
            assert name and not set(name) & set(',=[]" \n'), f"SCRAM user name unusable: {name!r}"
            assert password.reveal() and not set(password.reveal()) & set(',=[]"\n'), f"password of {name} unusable"
        for path in (self.keystore_location, self.truststore_location):
            if not path.is_file():
                raise StackError(f"{path} is not a file (the SASL_SSL listener needs it)")


def local_connection(s: StackSettings) -> KafkaConnection:
    """The dev stack's own broker, on its PLAINTEXT loopback listener: what the launcher probes. Not a
    configured cluster (KafkaSettings().kafka_connection is that), so no security settings."""
    return KafkaConnection(bootstrap=f"127.0.0.1:{s.kafka_port}")


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


def _write_config(s: StackSettings, secure: SaslSslListener | None = None) -> Path:
    base = (DEPLOY_DIR / "server.properties").read_text()
    log_dirs = _dir(s) / "logs"
    plain = f"PLAINTEXT://127.0.0.1:{s.kafka_port}"
    extra = f",SASL_SSL://127.0.0.1:{secure.port}" if secure else ""
    overrides = (
        f"\n# --- written by ledgergate's stack launcher from its settings ---\n"
        f"listeners={plain}{extra},CONTROLLER://127.0.0.1:{s.kafka_controller_port}\n"
        f"advertised.listeners={plain}{extra}\n"
        f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}\n"
        f"log.dirs={log_dirs}\n"
    )
    if secure is not None:
        # Later keys win in a properties file: this map replaces the base one. Inter-broker and controller
        # traffic stay PLAINTEXT on loopback; only the client listener is secured.
        ssl = "listener.name.sasl_ssl."
        overrides += (
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL\n"
            f"{ssl}sasl.enabled.mechanisms={SCRAM_MECHANISM}\n"
            f"{ssl}{SCRAM_MECHANISM.lower()}.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
            # PEM files as they are (Kafka 2.7+): no keytool, no JKS/PKCS12 conversion.
            f"{ssl}ssl.keystore.type=PEM\n"
            f"{ssl}ssl.keystore.location={secure.keystore_location}\n"
            f"{ssl}ssl.truststore.type=PEM\n"
            f"{ssl}ssl.truststore.location={secure.truststore_location}\n"
            f"{ssl}ssl.client.auth={secure.client_auth}\n"
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


# The options through which Kafka's tools take a client properties file (security settings among them).
TOOL_CONFIG_OPTIONS = ("--command-config", "--consumer.config", "--producer.config", "--consumer-property",
                       "--producer-property")


def tool_command(s: StackSettings, name: str, args: Sequence[str], connection: KafkaConnection) -> list[str]:
    """The java command line for a Kafka command-line tool; `--bootstrap-server` (the connection's) is
    added unless `args` names one. The Java tools do not read LEDGERGATE_KAFKA_*: against a secured
    cluster the caller passes their client properties (TOOL_CONFIG_OPTIONS), or this refuses."""
    main = TOOLS.get(name)
    if main is None:
        raise StackError(f"unknown Kafka tool {name!r}; one of {', '.join(TOOLS)}")
    configured = any(a.split("=", 1)[0] in TOOL_CONFIG_OPTIONS for a in args)
    if connection.security_protocol != "PLAINTEXT" and not configured:
        raise StackError(f"{connection.describe()} is secured, and Kafka's Java tools take their security settings "
                         f"from a client properties file: pass it ({' / '.join(TOOL_CONFIG_OPTIONS[:3])} FILE, "
                         "as the tool names it)")
    java = require_tool("java", "install a Java 17+ runtime (`apt-get install openjdk-17-jre-headless`)")
    ensure_jars(s)
    given = any(a == "--bootstrap-server" or a.startswith("--bootstrap-server=") for a in args)
    return _java_cmd(s, java, main, *([] if given else ["--bootstrap-server", connection.bootstrap]), *args)


def _format_storage(s: StackSettings, java: str, config: Path, secure: SaslSslListener | None = None) -> None:
    if (_dir(s) / "logs" / "meta.properties").exists():
        return
    # SCRAM credentials live in the cluster metadata; KRaft writes the first ones at format time, so the
    # broker accepts its users from its first start, with no admin call over an unauthenticated listener.
    scram = [arg for name, password in (secure.scram_users if secure else ())
             for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password.reveal()}]")]
    result = subprocess.run(
        _java_cmd(s, java, "kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c", str(config),
                  "--ignore-formatted", *scram),
        capture_output=True, text=True, timeout=120, check=False,
    )
    if result.returncode != 0:
        raise StackError(f"formatting Kafka storage failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def metadata_ok(connection: KafkaConnection, timeout_s: float = 2.0) -> bool:
    """A real metadata round trip: the broker is up only when it answers one (over `connection`, so a
    secured listener is probed with its TLS and SASL settings)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(admin_config(connection, **{"socket.timeout.ms": int(timeout_s * 1000)}))
    try:
        md = admin.list_topics(timeout=timeout_s)
    except Exception:
        return False
    return len(md.brokers) > 0


def start(s: StackSettings, secure: SaslSslListener | None = None) -> str:
    """Start the broker (idempotent); with `secure`, a SASL_SSL listener too. A data directory already
    formatted keeps the SCRAM users it was formatted with."""
    bootstrap = f"127.0.0.1:{s.kafka_port}"
    if running_pid(s) is not None:
        if metadata_ok(local_connection(s), timeout_s=5):
            return f"kafka already running (pid {running_pid(s)}) on {bootstrap}"
        wait_ready(s, bootstrap)
        return f"kafka was starting (pid {running_pid(s)}); now ready on {bootstrap}"
    java = require_tool("java", "install a Java 17+ runtime (`apt-get install openjdk-17-jre-headless`)")
    require_free_port(s.kafka_port, "the Kafka broker")
    require_free_port(s.kafka_controller_port, "the Kafka controller")
    if secure is not None:
        require_free_port(secure.port, "the Kafka SASL_SSL listener")
    require_disk(s.data_dir, s.min_free_disk_mb)
    ensure_jars(s)
    _dir(s).mkdir(parents=True, exist_ok=True)
    config = _write_config(s, secure)
    _format_storage(s, java, config, secure)
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
        if port_open(s.kafka_port) and metadata_ok(local_connection(s)):
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
    ready = "ready" if metadata_ok(local_connection(s)) else "NOT answering metadata requests"
    return f"kafka: running pid {pid} on {bootstrap}, {ready}; log {_log_file(s)}"

