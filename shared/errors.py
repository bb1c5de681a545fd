"""Every exception ledgergate raises on purpose lives here, so callers can catch by family.

Each error carries a short machine-readable `code` (used as a DENY reason or a dead-letter header)
beside its human message.
"""

from __future__ import annotations


class LedgergateError(Exception):
    """Base of every deliberate ledgergate error."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- stack (local Kafka + PostgreSQL) ---------------------------------------------------------


class StackError(LedgergateError):
    """The local stack cannot be started, stopped or reached; the message names what is missing."""

    code = "stack_error"


# --- encoding ----------------------------------------------------------------------------------


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


# --- tokenizers --------------------------------------------------------------------------------


class TokenizerError(LedgergateError):
    code = "tokenizer_error"


class TokenizerIntegrityError(TokenizerError):
    """A shipped rank file does not match the SHA-256 that tiktoken publishes for it."""

    code = "tokenizer_integrity"


class UnknownModelError(TokenizerError):
    """No encoding is known for a model name and no fallback is configured."""

    code = "unknown_model"


# --- topics and Kafka ----------------------------------------------------------------------------


class TopicConfigError(LedgergateError):
    code = "topic_config_error"


class GateTimeoutError(LedgergateError):
    """The client SDK did not receive a decision within its timeout."""

    code = "gate_timeout"
