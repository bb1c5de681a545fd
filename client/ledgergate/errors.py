"""The errors the public package raises (the SDK, the codec, the id rules), and their common base.

Each error carries a short machine-readable `code` (used as a DENY reason or a dead-letter header)
beside its human message. The server's own errors (ledgergate.shared.errors) derive from the same base,
so `except LedgergateError` catches both families.
"""

from __future__ import annotations

from typing import Any


class LedgergateError(Exception):
    """Base of every deliberate ledgergate error."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CodecError(LedgergateError):
    """Bytes that cannot be decoded into an event, or an event that cannot be encoded."""

    code = "codec_error"


class UnknownFingerprintError(CodecError):
    code = "unknown_schema_fingerprint"


class TruncatedMessageError(CodecError):
    code = "truncated_message"


class MalformedMessageError(CodecError):
    code = "malformed_message"


class SchemaError(LedgergateError):
    """A schema file in schemas/ is missing, invalid or incompatible with its previous version."""

    code = "schema_error"


class TopicConfigError(LedgergateError):
    code = "topic_config_error"


class GateTimeoutError(LedgergateError):
    """The client SDK did not receive a decision within its timeout."""

    code = "gate_timeout"


class GateClientError(LedgergateError):
    """The client could not send a message, or was closed while a request waited."""

    code = "gate_client_error"


class GateOverloadedError(GateClientError):
    """More requests are waiting for decisions than the client's bound allows."""

    code = "gate_client_overloaded"


class ConnectionSettingsError(LedgergateError):
    """Kafka connection settings that cannot work: an unknown security protocol or SASL mechanism, a
    mechanism without its credentials, a certificate file that does not exist (ledgergate.connection)."""

    code = "connection_settings_invalid"


class KafkaAuthenticationError(GateClientError):
    """The broker refused the client: SASL authentication failed, or the TLS handshake did (a CA that does
    not sign the broker's certificate, a client certificate the broker does not accept)."""

    code = "kafka_authentication_failed"


class KafkaUnreachableError(GateClientError):
    """No broker answered a metadata request in time (down, a wrong address, or a protocol the listener
    does not speak, e.g. PLAINTEXT to a TLS port); the message carries the last error librdkafka saw."""

    code = "kafka_unreachable"


class InvalidRequestError(GateClientError):
    """The SDK refused to publish a request that breaks the gate's edge rule (ledgergate.ids): the gate would
    answer it DENY invalid_request."""

    code = "invalid_request"


class GateDeniedError(LedgergateError):
    """The gate answered DENY: `reason` (its first reason code), `binding_scope` (which budget or rule bound
    it, e.g. "TENANT:acme" or "policy") and the whole `decision`."""

    code = "gate_denied"

    def __init__(self, decision: dict[str, Any], message: str | None = None) -> None:
        self.decision = decision
        self.request_id: str = decision["request_id"]
        self.reason_codes: tuple[str, ...] = tuple(decision.get("reason_codes") or ())
        self.reason: str = self.reason_codes[0] if self.reason_codes else "denied"
        self.binding_scope: str | None = decision.get("binding_scope")
        super().__init__(message or f"the gate denied request {self.request_id}: {self.reason}"
                         + (f" (bound by {self.binding_scope})" if self.binding_scope else ""))


class GateThrottledError(GateDeniedError):
    """The gate answered THROTTLE and the caller chose not to wait (or waited its limit): `retry_after_ms`."""

    code = "gate_throttled"

    def __init__(self, decision: dict[str, Any], waited_ms: int = 0) -> None:
        self.retry_after_ms: int = int(decision.get("retry_after_ms") or 0)
        self.waited_ms = waited_ms
        super().__init__(decision, f"the gate throttled request {decision['request_id']}: retry after "
                         f"{self.retry_after_ms} ms" + (f" (already waited {waited_ms} ms)" if waited_ms else ""))


class GateUnavailableError(LedgergateError):
    """No decision came (the broker or the gate is away or slow) and the call may not fail open: this client
    fails closed, the tenant's policy forbids failing open, or the local fail-open envelope is spent."""

    code = "gate_unavailable"
