"""Can this connection reach and authenticate to the cluster? One metadata round trip, watched through
librdkafka's error callback, so a client fails at once with a typed error that says why.

librdkafka never raises an authentication failure to the caller: a wrong SASL password or a CA that does
not sign the broker's certificate only reaches the error callback, while the request itself waits and
then times out as a transport failure. A client without this check would wait its whole timeout and then
blame the topics or the network.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from ledgergate.connection import KafkaConnection
from ledgergate.errors import ConnectionSettingsError, KafkaAuthenticationError, KafkaUnreachableError
from ledgergate.kafka_config import admin_config

# The errors that retrying cannot fix: the broker refused the credentials, or the TLS handshake failed.
REFUSED = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL})
# Short metadata attempts, so the error callback is served between them.
ATTEMPT_S = 0.5


def check_cluster(connection: KafkaConnection, timeout_s: float) -> int:
    """The number of brokers the cluster reports. Raises KafkaAuthenticationError as soon as the broker
    refuses the credentials or the TLS handshake fails, KafkaUnreachableError when no broker answered
    within timeout_s, ConnectionSettingsError when librdkafka cannot load the settings (a key file it
    cannot read or decrypt)."""
    assert timeout_s > 0, f"timeout_s must be positive, not {timeout_s}"
    errors: list[KafkaError] = []
    lock = threading.Lock()

    def on_error(err: KafkaError) -> None:
        with lock:
            errors.append(err)

    try:
        # log_level 3 (error): the callback reports what matters; librdkafka's own lines would repeat it.
        admin = AdminClient(admin_config(connection, error_cb=on_error, log_level=3))
    except KafkaException as exc:
        raise ConnectionSettingsError(f"librdkafka refused the settings for {connection.describe()}: "
                                      f"{exc.args[0].str()}") from exc
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            return len(admin.list_topics(timeout=max(0.05, min(ATTEMPT_S, deadline - time.monotonic()))).brokers)
        except KafkaException as exc:
            last = exc.args[0].str()
        admin.poll(0)  # serves the error callback
        with lock:
            seen = list(errors)
        refused = next((err for err in seen if err.code() in REFUSED or _tls_alert(err)), None)
        if refused is not None:
            raise KafkaAuthenticationError(f"{connection.describe()} refused the client: {refused.str()}")
        if time.monotonic() >= deadline:
            detail = next((err.str() for err in reversed(seen) if err.code() != KafkaError._ALL_BROKERS_DOWN), last)
            raise KafkaUnreachableError(f"no broker of {connection.describe()} answered within {timeout_s:g} s: "
                                        f"{detail}")


def _tls_alert(err: KafkaError) -> bool:
    """The broker's TLS layer rejected the client (e.g. no or an untrusted client certificate, mutual TLS):
    librdkafka reports the alert as a transport error, so only its text tells it from a network one."""
    return err.code() == KafkaError._TRANSPORT and "ssl/tls alert" in err.str().lower()
