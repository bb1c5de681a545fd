"""Where a Kafka cluster is and how a client proves who it is: one typed, frozen object that every client
of the project (the services, the SDK, the tools) is built from.

    KafkaConnection(bootstrap="kafka-1:9094", security_protocol="SASL_SSL", ssl_ca_location="/etc/ca.pem",
                    sasl_mechanism="SCRAM-SHA-512", sasl_username="gate", sasl_password=Secret("..."))

`KafkaConnection.from_env()` reads the same fields from `LEDGERGATE_KAFKA_*` (ENV_VARS), and
`librdkafka_config()` turns it into the librdkafka keys; ledgergate.kafka_config puts them into every
producer, consumer and admin configuration, so no client of the project can leave them out.

Everything is checked when the object is made, so a misconfigured process fails at start with a
ConnectionSettingsError that names the problem, not minutes later with a broker that never answers.
Secrets (passwords, the key password, the OAuth client secret) are `Secret`s: repr/str show a mask, so
logging a settings object never prints them; only `librdkafka_config()` reveals them, to librdkafka.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final, NoReturn

from ledgergate.errors import ConnectionSettingsError

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
TLS_PROTOCOLS: Final = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS: Final = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
# The mechanisms that authenticate with a username and a password.
PASSWORD_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SASL_MECHANISMS: Final = (*PASSWORD_MECHANISMS, "OAUTHBEARER")
# `ssl.ca.location=probe`: librdkafka looks for the system's CA bundle in the usual places (a managed
# cluster whose certificate a public CA signed needs no CA file of its own).
CA_PROBE: Final = "probe"

# Field -> environment variable. The names are librdkafka's keys with `_` for `.`, under LEDGERGATE_KAFKA_.
ENV_VARS: Final = {
    "bootstrap": "LEDGERGATE_KAFKA_BOOTSTRAP",
    "security_protocol": "LEDGERGATE_KAFKA_SECURITY_PROTOCOL",
    "ssl_ca_location": "LEDGERGATE_KAFKA_SSL_CA_LOCATION",
    "ssl_certificate_location": "LEDGERGATE_KAFKA_SSL_CERTIFICATE_LOCATION",
    "ssl_key_location": "LEDGERGATE_KAFKA_SSL_KEY_LOCATION",
    "ssl_key_password": "LEDGERGATE_KAFKA_SSL_KEY_PASSWORD",
    "ssl_endpoint_identification": "LEDGERGATE_KAFKA_SSL_ENDPOINT_IDENTIFICATION",
    "sasl_mechanism": "LEDGERGATE_KAFKA_SASL_MECHANISM",
    "sasl_username": "LEDGERGATE_KAFKA_SASL_USERNAME",
    "sasl_password": "LEDGERGATE_KAFKA_SASL_PASSWORD",
    "sasl_oauthbearer_token_endpoint_url": "LEDGERGATE_KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
    "sasl_oauthbearer_client_id": "LEDGERGATE_KAFKA_SASL_OAUTHBEARER_CLIENT_ID",
    "sasl_oauthbearer_client_secret": "LEDGERGATE_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
    "sasl_oauthbearer_scope": "LEDGERGATE_KAFKA_SASL_OAUTHBEARER_SCOPE",
}
_SECRET_FIELDS: Final = frozenset({"ssl_key_password", "sasl_password", "sasl_oauthbearer_client_secret"})
_OAUTH_FIELDS: Final = ("sasl_oauthbearer_token_endpoint_url", "sasl_oauthbearer_client_id",
                        "sasl_oauthbearer_client_secret", "sasl_oauthbearer_scope")
_TRUE: Final = frozenset({"true", "1", "yes", "on", "https"})
_FALSE: Final = frozenset({"false", "0", "no", "off", "none"})
_MASK: Final = "**********"


class Secret:
    """A secret string that does not print itself: repr and str show a mask, `reveal()` the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        assert isinstance(value, str), f"a Secret wraps a str, not {type(value).__name__}"
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """How to reach and authenticate to a Kafka cluster. The defaults are the local dev stack: PLAINTEXT
    to 127.0.0.1:9092. Plain strings given for the secret fields are wrapped in Secret."""

    # host:port[,host:port...]
    bootstrap: str = DEFAULT_BOOTSTRAP
    # PLAINTEXT, SSL (TLS), SASL_PLAINTEXT (SASL, no TLS: credentials cross the network readable), SASL_SSL.
    security_protocol: str = "PLAINTEXT"
    # TLS (SSL, SASL_SSL) only. The PEM file of the CA(s) that sign the brokers' certificates; None: the
    # trust store librdkafka was built with; "probe": the system's CA bundle.
    ssl_ca_location: str | None = None
    # Mutual TLS: the client's PEM certificate and private key, both or neither; the key's password if it
    # is encrypted.
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: Secret | None = None
    # Check that a broker's certificate names the host the client dialled (librdkafka's default, https).
    # Turn it off only for certificates without the right names, never to silence a wrong CA.
    ssl_endpoint_identification: bool = True
    # SASL (SASL_PLAINTEXT, SASL_SSL) only: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (username + password) or
    # OAUTHBEARER (OIDC client credentials: librdkafka fetches and refreshes the token itself).
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    sasl_oauthbearer_token_endpoint_url: str | None = None
    sasl_oauthbearer_client_id: str | None = None
    sasl_oauthbearer_client_secret: Secret | None = None
    sasl_oauthbearer_scope: str | None = None

    def __post_init__(self) -> None:
        # Normalise first (upper-case names, secrets wrapped), then check: the checks see what is used.
        set_ = object.__setattr__
        for name in _SECRET_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                set_(self, name, Secret(value))
        if isinstance(self.security_protocol, str):
            set_(self, "security_protocol", self.security_protocol.strip().upper())
        if isinstance(self.sasl_mechanism, str):
            set_(self, "sasl_mechanism", self.sasl_mechanism.strip().upper() or None)
        _validate(self)

    # --- what it means -------------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        return self.security_protocol in TLS_PROTOCOLS

    @property
    def sasl(self) -> bool:
        return self.security_protocol in SASL_PROTOCOLS

    def describe(self) -> str:
        """One line for logs and error messages: where and how, never a secret."""
        how = self.security_protocol
        if self.sasl:
            who = self.sasl_username if self.sasl_mechanism in PASSWORD_MECHANISMS else self.sasl_oauthbearer_client_id
            how += f" {self.sasl_mechanism} as {who}"
        return f"{self.bootstrap} ({how})"

    def __repr__(self) -> str:
        # The dataclass repr would print secrets as Secret('***') already; this one also leaves out what
        # is unset, so a log line stays readable.
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                          if getattr(self, f.name) is not None)
        return f"KafkaConnection({shown})"

    __str__ = __repr__

    def librdkafka_config(self) -> dict[str, str]:
        """The librdkafka keys of this connection (every client's, whatever its role). The secrets are
        revealed here and only here: the dict goes to a client constructor, never to a log."""
        config = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol.lower()}
        if self.tls:
            config["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_endpoint_identification else "none"
            for key, value in (("ssl.ca.location", self.ssl_ca_location),
                               ("ssl.certificate.location", self.ssl_certificate_location),
                               ("ssl.key.location", self.ssl_key_location)):
                if value is not None:
                    config[key] = value
            if self.ssl_key_password is not None:
                config["ssl.key.password"] = self.ssl_key_password.reveal()
        if self.sasl:
            assert self.sasl_mechanism is not None  # _validate
            config["sasl.mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism in PASSWORD_MECHANISMS:
                assert self.sasl_username is not None and self.sasl_password is not None
                config["sasl.username"] = self.sasl_username
                config["sasl.password"] = self.sasl_password.reveal()
            else:
                assert self.sasl_oauthbearer_token_endpoint_url is not None
                assert self.sasl_oauthbearer_client_id is not None and self.sasl_oauthbearer_client_secret is not None
                # librdkafka's own OIDC client (client-credentials grant): no oauth_cb to write or keep alive.
                config["sasl.oauthbearer.method"] = "oidc"
                config["sasl.oauthbearer.token.endpoint.url"] = self.sasl_oauthbearer_token_endpoint_url
                config["sasl.oauthbearer.client.id"] = self.sasl_oauthbearer_client_id
                config["sasl.oauthbearer.client.secret"] = self.sasl_oauthbearer_client_secret.reveal()
                if self.sasl_oauthbearer_scope is not None:
                    config["sasl.oauthbearer.scope"] = self.sasl_oauthbearer_scope
        return config

    def env_vars(self) -> dict[str, str]:
        """The LEDGERGATE_KAFKA_* variables that make `from_env()` return this connection, for a child
        process (the services a tool starts). Every variable is there, the unset ones empty, so whatever
        the parent's environment holds cannot mix in. Reveals the secrets: an environment, never a log."""
        out: dict[str, str] = {}
        for name, var in ENV_VARS.items():
            value = getattr(self, name)
            if value is None:
                out[var] = ""
            elif isinstance(value, Secret):
                out[var] = value.reveal()
            elif isinstance(value, bool):
                out[var] = "true" if value else "false"
            else:
                out[var] = str(value)
        return out

    # --- where it comes from -------------------------------------------------------------------

    @classmethod
    def from_env(cls, bootstrap: str | None = None, env: Mapping[str, str] | None = None) -> KafkaConnection:
        """The connection that the LEDGERGATE_KAFKA_* variables describe (ENV_VARS); an empty variable is an
        unset one. A `bootstrap` argument wins over LEDGERGATE_KAFKA_BOOTSTRAP."""
        env = os.environ if env is None else env
        given: dict[str, str] = {name: env[var].strip() for name, var in ENV_VARS.items() if env.get(var, "").strip()}
        if bootstrap is not None:
            given["bootstrap"] = bootstrap
        values: dict[str, object] = dict(given)
        if "ssl_endpoint_identification" in given:
            values["ssl_endpoint_identification"] = _flag(given["ssl_endpoint_identification"],
                                                          ENV_VARS["ssl_endpoint_identification"])
        return cls(**values)  # type: ignore[arg-type]  # each value is the field's type (str, bool; Secret from str)


def _flag(text: str, var: str) -> bool:
    word = text.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConnectionSettingsError(f"{var}={text!r}: give true or false (https or none, as librdkafka names them)")


def _validate(c: KafkaConnection) -> None:
    def fail(problem: str) -> NoReturn:
        raise ConnectionSettingsError(f"Kafka connection settings: {problem}")

    if not isinstance(c.bootstrap, str) or not c.bootstrap.strip() or any(
            not part.strip() for part in c.bootstrap.split(",")):
        fail(f"bootstrap {c.bootstrap!r} must be host:port[,host:port...]")
    if c.security_protocol not in SECURITY_PROTOCOLS:
        fail(f"unknown security_protocol {c.security_protocol!r}; one of {', '.join(SECURITY_PROTOCOLS)}")
    if not isinstance(c.ssl_endpoint_identification, bool):
        fail(f"ssl_endpoint_identification must be a bool, not {c.ssl_endpoint_identification!r}")

    # TLS: files that exist, given only where they are used (a file set for PLAINTEXT is a mistake that
    # would otherwise go unnoticed until the cluster moved to TLS).
    tls_files = {"ssl_ca_location": c.ssl_ca_location, "ssl_certificate_location": c.ssl_certificate_location,
                 "ssl_key_location": c.ssl_key_location}
    tls_given = [name for name, value in tls_files.items() if value is not None]
    if c.ssl_key_password is not None:
        tls_given.append("ssl_key_password")
    if tls_given and not c.tls:
        fail(f"{', '.join(tls_given)} given, but security_protocol {c.security_protocol} does not use TLS "
             f"(SSL or SASL_SSL does)")
    for name, value in tls_files.items():
        if value is None or (name == "ssl_ca_location" and value == CA_PROBE):
            continue
        if not Path(value).is_file():
            fail(f"{name} {value!r} is not a file")
    if (c.ssl_certificate_location is None) != (c.ssl_key_location is None):
        fail("mutual TLS needs both ssl_certificate_location and ssl_key_location")
    if c.ssl_key_password is not None and c.ssl_key_location is None:
        fail("ssl_key_password given without ssl_key_location")

    # SASL: a mechanism exactly when the protocol is SASL_*, and that mechanism's credentials, no others.
    oauth_given = [name for name in _OAUTH_FIELDS if getattr(c, name) is not None]
    password_given = [name for name in ("sasl_username", "sasl_password") if getattr(c, name) is not None]
    if not c.sasl:
        given = (["sasl_mechanism"] if c.sasl_mechanism is not None else []) + password_given + oauth_given
        if given:
            fail(f"{', '.join(given)} given, but security_protocol {c.security_protocol} does not use SASL "
                 f"(SASL_PLAINTEXT or SASL_SSL does)")
        return
    if c.sasl_mechanism is None:
        fail(f"security_protocol {c.security_protocol} needs a sasl_mechanism: one of {', '.join(SASL_MECHANISMS)}")
    if c.sasl_mechanism not in SASL_MECHANISMS:
        fail(f"unknown sasl_mechanism {c.sasl_mechanism!r}; one of {', '.join(SASL_MECHANISMS)}")
    if c.sasl_mechanism in PASSWORD_MECHANISMS:
        if not c.sasl_username or not c.sasl_password:
            fail(f"sasl_mechanism {c.sasl_mechanism} needs sasl_username and sasl_password")
        if oauth_given:
            fail(f"{', '.join(oauth_given)} given, but only sasl_mechanism OAUTHBEARER uses them")
        return
    if password_given:
        fail(f"{', '.join(password_given)} given, but sasl_mechanism OAUTHBEARER authenticates with "
             f"sasl_oauthbearer_client_id and sasl_oauthbearer_client_secret")
    missing = [name for name in _OAUTH_FIELDS[:3] if not getattr(c, name)]
    if missing:
        fail(f"sasl_mechanism OAUTHBEARER (OIDC client credentials) needs {', '.join(missing)}")
    url = c.sasl_oauthbearer_token_endpoint_url or ""
    if not url.startswith(("https://", "http://")):
        fail(f"sasl_oauthbearer_token_endpoint_url {url!r} must be an http(s):// URL")
