"""The gate on a secured cluster: a broker of its own with a SASL_SSL listener (TLS from a CA this test
makes with the openssl CLI, mutual TLS, SCRAM-SHA-512), the topics provisioned over it, the four services
as processes configured through LEDGERGATE_KAFKA_* alone, and the SDK asking for a decision over it.
A wrong password, a wrong CA and PLAINTEXT to the TLS port fail fast with typed errors.

The broker runs on free ports from a temporary data directory (never the dev stack's 9092/9093), and is
stopped however the test ends. PLAINTEXT stays on loopback for the broker's own inter-broker and
controller traffic (tools/devstack/kafka.py: SaslSslListener)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ledgergate.client import GateClient
from ledgergate.connection import KafkaConnection, Secret
from ledgergate.errors import GateTimeoutError, KafkaAuthenticationError, KafkaUnreachableError
from ledgergate.preflight import check_cluster
from ledgergate.shared.kafka import provision
from ledgergate.shared.settings import ServiceSettings, StackSettings
from ledgergate.tools.devstack import kafka
from ledgergate.tools.servicerunner import GATE_SERVICES, ServiceSet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
USER, PASSWORD, KEY_PASSWORD = "gate", "gate-scram-secret", "client-key-secret"
# Few partitions: every service rebuilds from all of them at start, and nothing here needs more.
PARTITIONS = 2
SMALL = [{"role": "user", "content": "Summarise the ledger."}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Pki:
    ca: Path
    broker_keystore: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD
    other_ca: Path  # a CA that signed nothing here


def make_pki(folder: Path) -> Pki:
    """A CA, a broker certificate for 127.0.0.1 signed by it (cert + unencrypted PKCS#8 key in one PEM,
    as Kafka's PEM keystore reads it), a client certificate with an encrypted key, and an unrelated CA.
    EC P-256 keys: generated in milliseconds, unlike RSA on a slow machine."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
    for name in ("ca", "other-ca"):
        _openssl(folder, "req", "-x509", *ec, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
                 "-subj", f"/CN=ledgergate-test-{name}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (folder / "broker.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                                       "extendedKeyUsage=serverAuth\n")
    _openssl(folder, "req", *ec, "-nodes", "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=127.0.0.1")
    _openssl(folder, "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "broker.crt", "-days", "2", "-extfile", "broker.ext")
    keystore = folder / "broker-keystore.pem"
    keystore.write_text((folder / "broker.crt").read_text() + (folder / "broker.key").read_text())
    (folder / "client.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                       "extendedKeyUsage=clientAuth\n")
    _openssl(folder, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-aes-256-cbc",
             "-pass", f"pass:{KEY_PASSWORD}", "-out", "client.key")
    _openssl(folder, "req", "-new", "-key", "client.key", "-passin", f"pass:{KEY_PASSWORD}", "-subj", "/CN=gate-client",
             "-out", "client.csr")
    _openssl(folder, "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.crt", "-days", "2", "-extfile", "client.ext")
    return Pki(folder / "ca.pem", keystore, folder / "client.crt", folder / "client.key", folder / "other-ca.pem")


@dataclass(frozen=True)
class SecuredBroker:
    connection: KafkaConnection  # SASL_SSL, SCRAM-SHA-512, mutual TLS: what every client here uses
    pki: Pki
    stack: StackSettings


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    root = tmp_path_factory.mktemp("sasl-ssl")
    pki = make_pki(root / "pki")
    # The jar cache, heap floor and timeouts of the environment; everything else its own.
    base = StackSettings()
    stack = base.model_copy(update={"data_dir": root / "data", "kafka_port": _free_port(),
                                    "kafka_controller_port": _free_port(), "kafka_heap_mb": 256,
                                    "start_timeout_s": 90.0, "min_free_disk_mb": 256})
    listener = kafka.SaslSslListener(port=_free_port(), keystore_location=pki.broker_keystore,
                                     truststore_location=pki.ca, scram_users=((USER, Secret(PASSWORD)),),
                                     client_auth="required")
    connection = KafkaConnection(
        bootstrap=f"127.0.0.1:{listener.port}", security_protocol="SASL_SSL", ssl_ca_location=str(pki.ca),
        ssl_certificate_location=str(pki.client_cert), ssl_key_location=str(pki.client_key),
        ssl_key_password=Secret(KEY_PASSWORD), sasl_mechanism="SCRAM-SHA-512", sasl_username=USER,
        sasl_password=Secret(PASSWORD))
    try:
        kafka.start(stack, listener)
        yield SecuredBroker(connection, pki, stack)
    finally:
        # Also after a start that failed half way: start() writes the pid file before it waits.
        kafka.stop(stack)


def test_the_gate_decides_over_sasl_ssl(secured: SecuredBroker, tmp_path: Path) -> None:
    conn, prefix = secured.connection, f"t{uuid.uuid4().hex[:10]}."
    # Provisioning over the secured listener, as `ledgergate topics apply` would with these variables.
    report = provision.apply(conn, provision.load_specs(partitions=PARTITIONS, prefix=prefix))
    assert all(line.startswith("created") for line in report), report
    assert {n for n in provision.describe(conn) if n.startswith(prefix)} == {
        s.name for s in provision.load_specs(prefix=prefix)}

    # The services get the cluster from the environment only, and read it back as the same connection.
    env = {**conn.env_vars(), "LEDGERGATE_TOPIC_PREFIX": prefix}
    services = ServiceSet(env, tmp_path / "logs")
    try:
        services.start(GATE_SERVICES)
        with GateClient(topic_prefix=prefix, timeout_s=15, connection=conn) as gate:
            _wait_for_a_decision(gate, services)
            gate.send_command("acme", "SET_LIMIT", 100_000_000, reason="sasl test")
            decision = gate.request("acme", SMALL, "gpt-4o-mini", 64, timeout_s=30)
        assert decision["outcome"] == "ALLOW", decision
        assert decision["deployment"]["model"] == "gpt-4o-mini" and decision["reserved_micro_usd"] > 0
        assert not services.dead(), {name: services.tail(name) for name in services.dead()}
    finally:
        services.close()


def _wait_for_a_decision(gate: GateClient, services: ServiceSet, timeout_s: float = 90.0) -> None:
    """The services are up once a probe request gets its decision (they authenticate, rebuild, join)."""
    deadline = time.monotonic() + timeout_s
    while True:
        dead = services.dead()
        assert not dead, {name: services.tail(name) for name in dead}
        try:
            gate.request("probe", SMALL, "gpt-4o-mini", 8, timeout_s=10)
            return
        except GateTimeoutError:
            if time.monotonic() > deadline:
                raise AssertionError({name: services.tail(name) for name in GATE_SERVICES}) from None


def test_the_services_read_the_connection_from_the_environment(secured: SecuredBroker,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in secured.connection.env_vars().items():
        monkeypatch.setenv(var, value)
    assert ServiceSettings().kafka_connection == secured.connection
    assert check_cluster(ServiceSettings().kafka_connection, timeout_s=15) == 1


def test_a_wrong_password_is_refused_fast_with_a_typed_error(secured: SecuredBroker) -> None:
    wrong = replace(secured.connection, sasl_password=Secret("not-the-password"))
    started = time.monotonic()
    with pytest.raises(KafkaAuthenticationError, match="SASL authentication"):
        GateClient(topic_prefix="any.", timeout_s=5, connection=wrong)
    assert time.monotonic() - started < 8, "refused at the first answer, not after the client's timeout"


def test_a_ca_that_did_not_sign_the_broker_is_refused(secured: SecuredBroker) -> None:
    strange = replace(secured.connection, ssl_ca_location=str(secured.pki.other_ca))
    with pytest.raises(KafkaAuthenticationError, match="certificate verify failed"):
        check_cluster(strange, timeout_s=8)


def test_plaintext_to_the_sasl_ssl_port_fails(secured: SecuredBroker) -> None:
    plaintext = KafkaConnection(bootstrap=secured.connection.bootstrap)
    started = time.monotonic()
    with pytest.raises(KafkaUnreachableError, match="no broker"):
        check_cluster(plaintext, timeout_s=3)
    assert time.monotonic() - started < 6
