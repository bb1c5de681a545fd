"""The Kafka connection settings (ledgergate.connection): the rules checked at construction, the
librdkafka keys they become, the environment they are read from, and secrets that never print."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ledgergate.connection import ENV_VARS, KafkaConnection, Secret
from ledgergate.errors import ConnectionSettingsError, GateClientError, LedgergateError
from ledgergate.kafka_config import admin_config, consumer_config, producer_config, transactional_producer_config
from ledgergate.settings import ClientSettings
from ledgergate.shared.settings import KafkaSettings, RouterSettings, StackSettings
from ledgergate.tools.devstack import kafka as devkafka

SECRETS = ("s3cret-sasl", "s3cret-key", "s3cret-oauth")


@pytest.fixture(autouse=True)
def _no_kafka_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("ca", "cert", "key"):
        path = tmp_path / f"{name}.pem"
        path.write_text(f"-----BEGIN {name.upper()}-----\n")
        files[name] = str(path)
    return files


def scram(pem: dict[str, str], **kw: Any) -> KafkaConnection:
    fields: dict[str, Any] = {
        "bootstrap": "k1:9094,k2:9094", "security_protocol": "SASL_SSL", "ssl_ca_location": pem["ca"],
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "gate", "sasl_password": Secret(SECRETS[0])}
    return KafkaConnection(**{**fields, **kw})


def oauth(**kw: Any) -> KafkaConnection:
    fields: dict[str, Any] = {
        "bootstrap": "k1:9094", "security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER",
        "sasl_oauthbearer_token_endpoint_url": "https://idp.example/oauth2/token",
        "sasl_oauthbearer_client_id": "ledgergate", "sasl_oauthbearer_client_secret": Secret(SECRETS[2]),
        "sasl_oauthbearer_scope": "kafka"}
    return KafkaConnection(**{**fields, **kw})


# --- the librdkafka keys ------------------------------------------------------------------------------


def test_the_default_is_the_local_stack_in_plaintext() -> None:
    assert KafkaConnection().librdkafka_config() == {"bootstrap.servers": "127.0.0.1:9092",
                                                     "security.protocol": "plaintext"}


def test_sasl_ssl_scram_with_mutual_tls_maps_to_librdkafka_keys(pem: dict[str, str]) -> None:
    conn = scram(pem, ssl_certificate_location=pem["cert"], ssl_key_location=pem["key"],
                 ssl_key_password=Secret(SECRETS[1]))
    assert conn.librdkafka_config() == {
        "bootstrap.servers": "k1:9094,k2:9094", "security.protocol": "sasl_ssl",
        "ssl.endpoint.identification.algorithm": "https", "ssl.ca.location": pem["ca"],
        "ssl.certificate.location": pem["cert"], "ssl.key.location": pem["key"], "ssl.key.password": SECRETS[1],
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "gate", "sasl.password": SECRETS[0]}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_password_mechanisms_over_sasl_plaintext(mechanism: str) -> None:
    conn = KafkaConnection("k:9092", "SASL_PLAINTEXT", sasl_mechanism=mechanism.lower(), sasl_username="u",
                           sasl_password="p")
    assert conn.librdkafka_config() == {"bootstrap.servers": "k:9092", "security.protocol": "sasl_plaintext",
                                        "sasl.mechanism": mechanism, "sasl.username": "u", "sasl.password": "p"}


def test_oauthbearer_uses_librdkafkas_oidc_client() -> None:
    assert oauth().librdkafka_config() == {
        "bootstrap.servers": "k1:9094", "security.protocol": "sasl_ssl",
        "ssl.endpoint.identification.algorithm": "https", "sasl.mechanism": "OAUTHBEARER",
        "sasl.oauthbearer.method": "oidc", "sasl.oauthbearer.token.endpoint.url": "https://idp.example/oauth2/token",
        "sasl.oauthbearer.client.id": "ledgergate", "sasl.oauthbearer.client.secret": SECRETS[2],
        "sasl.oauthbearer.scope": "kafka"}
    assert "sasl.oauthbearer.scope" not in oauth(sasl_oauthbearer_scope=None).librdkafka_config()


def test_tls_without_a_ca_file_and_without_hostname_checks(pem: dict[str, str]) -> None:
    assert KafkaConnection("k:9093", "SSL", ssl_endpoint_identification=False).librdkafka_config() == {
        "bootstrap.servers": "k:9093", "security.protocol": "ssl", "ssl.endpoint.identification.algorithm": "none"}
    assert KafkaConnection("k:9093", "ssl", ssl_ca_location="probe").librdkafka_config()["ssl.ca.location"] == "probe"


def test_every_client_config_carries_the_connection(pem: dict[str, str]) -> None:
    conn = scram(pem)
    keys = conn.librdkafka_config()
    for config in (producer_config(conn), consumer_config(conn, "g"), admin_config(conn),
                   transactional_producer_config(conn, "tx")):
        assert {k: config[k] for k in keys} == keys
    assert consumer_config(conn, "g")["group.id"] == "g" and producer_config(conn)["partitioner"] == "murmur2_random"


@pytest.mark.parametrize("key", ["bootstrap.servers", "security.protocol", "sasl.password", "ssl.ca.location"])
def test_an_override_cannot_replace_or_drop_the_connection(key: str) -> None:
    with pytest.raises(AssertionError, match="connection settings come from the KafkaConnection"):
        producer_config(KafkaConnection(), **{key: "x"})
    with pytest.raises(AssertionError, match="KafkaConnection, not str"):
        consumer_config("127.0.0.1:9092", "g")  # type: ignore[arg-type]


# --- the rules -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "problem"), [
    ({"bootstrap": " "}, "bootstrap"),
    ({"bootstrap": "a:1,,b:2"}, "bootstrap"),
    ({"security_protocol": "TLS"}, "unknown security_protocol 'TLS'"),
    ({"security_protocol": "SASL_SSL"}, "needs a sasl_mechanism"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "unknown sasl_mechanism 'GSSAPI'"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u"},
     "needs sasl_username and sasl_password"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_password": "p"},
     "needs sasl_username and sasl_password"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": ""},
     "needs sasl_username and sasl_password"),
    ({"sasl_mechanism": "PLAIN"}, "does not use SASL"),
    ({"security_protocol": "SSL", "sasl_username": "u", "sasl_password": "p"}, "does not use SASL"),
    ({"security_protocol": "SSL", "ssl_ca_location": "/nonexistent/ca.pem"}, "is not a file"),
    ({"ssl_ca_location": "CA"}, "does not use TLS"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p",
      "ssl_ca_location": "CA"}, "does not use TLS"),
    ({"security_protocol": "SSL", "ssl_certificate_location": "CERT"}, "both ssl_certificate_location"),
    ({"security_protocol": "SSL", "ssl_key_location": "KEY"}, "both ssl_certificate_location"),
    ({"security_protocol": "SSL", "ssl_key_password": "kp"}, "ssl_key_password given without"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_oauthbearer_client_id": "c"},
     "needs sasl_oauthbearer_token_endpoint_url, sasl_oauthbearer_client_secret"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_oauthbearer_client_id": "c",
      "sasl_oauthbearer_client_secret": "s", "sasl_oauthbearer_token_endpoint_url": "idp.example/token"},
     "must be an http"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_username": "u"},
     "OAUTHBEARER authenticates with"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u", "sasl_password": "p",
      "sasl_oauthbearer_client_id": "c"}, "only sasl_mechanism OAUTHBEARER uses them"),
    ({"ssl_endpoint_identification": "no"}, "must be a bool"),
])
def test_settings_that_cannot_work_are_refused_at_construction(fields: dict[str, Any], problem: str,
                                                                pem: dict[str, str]) -> None:
    real = {"CA": pem["ca"], "CERT": pem["cert"], "KEY": pem["key"]}
    fields = {k: real.get(v, v) if isinstance(v, str) else v for k, v in fields.items()}
    with pytest.raises(ConnectionSettingsError, match=problem) as caught:
        KafkaConnection(**fields)
    assert isinstance(caught.value, LedgergateError) and caught.value.code == "connection_settings_invalid"


def test_a_certificate_file_that_went_missing_is_named(pem: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "rotated-away.pem")
    with pytest.raises(ConnectionSettingsError, match=r"ssl_certificate_location '.*rotated-away\.pem' is not a file"):
        scram(pem, ssl_certificate_location=missing, ssl_key_location=pem["key"])


def test_names_are_normalised_and_plain_strings_become_secrets() -> None:
    conn = KafkaConnection("k:1", " sasl_ssl ", sasl_mechanism="scram-sha-512", sasl_username="u", sasl_password="p")
    assert conn.security_protocol == "SASL_SSL" and conn.sasl_mechanism == "SCRAM-SHA-512"
    assert isinstance(conn.sasl_password, Secret) and conn.sasl_password.reveal() == "p"
    assert conn == KafkaConnection("k:1", "SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                                   sasl_password=Secret("p"))
    assert conn.tls and conn.sasl and not KafkaConnection().tls


# --- secrets -------------------------------------------------------------------------------------------


def test_secrets_never_appear_in_repr_str_describe_or_logs(pem: dict[str, str], caplog: pytest.LogCaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    conn = scram(pem, ssl_certificate_location=pem["cert"], ssl_key_location=pem["key"],
                 ssl_key_password=Secret(SECRETS[1]))
    monkeypatch.setenv("LEDGERGATE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("LEDGERGATE_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("LEDGERGATE_KAFKA_SASL_USERNAME", "gate")
    monkeypatch.setenv("LEDGERGATE_KAFKA_SASL_PASSWORD", SECRETS[0])
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("connecting %s %r", conn, conn)
    shown = [repr(conn), str(conn), conn.describe(), f"{conn}", repr(oauth()),
             str(oauth().sasl_oauthbearer_client_secret), repr(KafkaSettings()), str(RouterSettings()),
             repr(ClientSettings(conn)), caplog.text]
    for text in shown:
        assert not any(secret in text for secret in SECRETS), text
    assert "Secret('**********')" in repr(conn) and "gate" in conn.describe()
    assert KafkaSettings().model_dump().keys().isdisjoint({"kafka_connection"})


# --- where it comes from -------------------------------------------------------------------------------


def test_from_env_reads_every_field(pem: dict[str, str]) -> None:
    env = {"LEDGERGATE_KAFKA_BOOTSTRAP": "k1:9094", "LEDGERGATE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
           "LEDGERGATE_KAFKA_SSL_CA_LOCATION": pem["ca"], "LEDGERGATE_KAFKA_SSL_CERTIFICATE_LOCATION": pem["cert"],
           "LEDGERGATE_KAFKA_SSL_KEY_LOCATION": pem["key"], "LEDGERGATE_KAFKA_SSL_KEY_PASSWORD": SECRETS[1],
           "LEDGERGATE_KAFKA_SSL_ENDPOINT_IDENTIFICATION": "none", "LEDGERGATE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
           "LEDGERGATE_KAFKA_SASL_USERNAME": "gate", "LEDGERGATE_KAFKA_SASL_PASSWORD": SECRETS[0],
           "LEDGERGATE_KAFKA_SASL_OAUTHBEARER_SCOPE": ""}  # empty: unset
    conn = KafkaConnection.from_env(env=env)
    assert conn == KafkaConnection("k1:9094", "SASL_SSL", pem["ca"], pem["cert"], pem["key"], Secret(SECRETS[1]),
                                   False, "SCRAM-SHA-256", "gate", Secret(SECRETS[0]))
    assert KafkaConnection.from_env(bootstrap="other:1", env=env).bootstrap == "other:1"
    assert KafkaConnection.from_env(env={}) == KafkaConnection()


def test_env_vars_round_trip_and_blank_what_is_unset(pem: dict[str, str]) -> None:
    for conn in (scram(pem), oauth(), KafkaConnection("x:1"),
                 scram(pem, ssl_certificate_location=pem["cert"], ssl_key_location=pem["key"],
                       ssl_key_password="kp", ssl_endpoint_identification=False)):
        env = conn.env_vars()
        assert set(env) == set(ENV_VARS.values())
        assert KafkaConnection.from_env(env=env) == conn
    # A parent's leftover SASL variables cannot leak into a PLAINTEXT child.
    assert KafkaConnection("x:1").env_vars()["LEDGERGATE_KAFKA_SASL_MECHANISM"] == ""


def test_a_bad_flag_in_the_environment_is_named() -> None:
    with pytest.raises(ConnectionSettingsError, match="LEDGERGATE_KAFKA_SSL_ENDPOINT_IDENTIFICATION='maybe'"):
        KafkaConnection.from_env(env={"LEDGERGATE_KAFKA_SSL_ENDPOINT_IDENTIFICATION": "maybe"})


def test_service_settings_carry_the_connection_from_the_environment(pem: dict[str, str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    conn = scram(pem)
    for var, value in conn.env_vars().items():
        monkeypatch.setenv(var, value)
    assert RouterSettings().kafka_connection == conn and RouterSettings().kafka_bootstrap == conn.bootstrap
    # kafka_bootstrap given explicitly (the test fixtures do) keeps the environment's security settings.
    assert KafkaSettings(kafka_bootstrap="h:1").kafka_connection == replace(conn, bootstrap="h:1")
    # A connection given explicitly brings its own bootstrap: never two addresses that disagree.
    given = KafkaSettings(kafka_bootstrap="ignored:1", kafka_connection=KafkaConnection("mine:2"))
    assert given.kafka_bootstrap == "mine:2" and given.kafka_connection.security_protocol == "PLAINTEXT"
    monkeypatch.setenv("LEDGERGATE_KAFKA_SASL_PASSWORD", "")
    with pytest.raises(ConnectionSettingsError, match="needs sasl_username and sasl_password"):
        RouterSettings()


def test_client_settings_rules(pem: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    conn = scram(pem)
    assert ClientSettings.from_env(kafka_connection=conn).kafka_connection is conn
    assert ClientSettings.from_env(conn.bootstrap, kafka_connection=conn).kafka_bootstrap == conn.bootstrap
    with pytest.raises(GateClientError, match="is not the kafka_connection's bootstrap"):
        ClientSettings.from_env("elsewhere:1", kafka_connection=conn)
    for var, value in conn.env_vars().items():
        monkeypatch.setenv(var, value)
    # A bootstrap argument replaces the address only; TLS and SASL still come from the environment.
    assert ClientSettings.from_env("h:1").kafka_connection == replace(conn, bootstrap="h:1")
    assert ClientSettings.from_env().kafka_connection == conn


# --- the dev broker's secured listener -----------------------------------------------------------------


def test_the_sasl_ssl_listener_config(tmp_path: Path, pem: dict[str, str]) -> None:
    stack = StackSettings(data_dir=tmp_path, kafka_port=29092, kafka_controller_port=29093)
    listener = devkafka.SaslSslListener(29094, Path(pem["cert"]), Path(pem["ca"]),
                                        (("gate", Secret("listener-secret-pw")),), "required")
    (tmp_path / "kafka").mkdir()
    text = devkafka._write_config(stack, listener).read_text()
    lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert lines["listeners"] == ("PLAINTEXT://127.0.0.1:29092,SASL_SSL://127.0.0.1:29094,"
                                  "CONTROLLER://127.0.0.1:29093")
    assert lines["inter.broker.listener.name"] == "PLAINTEXT"
    assert lines["listener.security.protocol.map"].endswith("SASL_SSL:SASL_SSL")
    assert lines["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert lines["listener.name.sasl_ssl.ssl.keystore.type"] == "PEM"
    assert lines["listener.name.sasl_ssl.ssl.client.auth"] == "required"
    assert "listener-secret-pw" not in text.split("\n# --- written")[1], "no password in the broker's config"
    with pytest.raises(AssertionError, match="unusable"):
        devkafka.SaslSslListener(29094, Path(pem["cert"]), Path(pem["ca"]), (("a,b", Secret("pw")),))


def test_kafka_tools_refuse_a_secured_cluster_without_client_properties(pem: dict[str, str]) -> None:
    from ledgergate.shared.errors import StackError

    with pytest.raises(StackError, match="client properties file"):
        devkafka.tool_command(StackSettings(), "topics", ["--list"], scram(pem))
