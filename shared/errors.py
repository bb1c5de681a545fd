"""The exceptions the server side raises on purpose (services, library, tools), so callers can catch by
family. Two other homes, each for a reason: the public package's errors (codec, SDK, ids) live in
ledgergate.errors with the common base `LedgergateError`, since the client cannot import this module; and
the API's HTTP errors (services/api/errors.py), which carry a status code and exist only in the API.
"""

from __future__ import annotations

from ledgergate.errors import LedgergateError

# --- stack (local Kafka + PostgreSQL) ---------------------------------------------------------


class StackError(LedgergateError):
    """The local stack cannot be started, stopped or reached; the message names what is missing."""

    code = "stack_error"


# --- tokenizers --------------------------------------------------------------------------------


class TokenizerError(LedgergateError):
    code = "tokenizer_error"


class TokenizerIntegrityError(TokenizerError):
    """A shipped rank file does not match the SHA-256 that tiktoken publishes for it."""

    code = "tokenizer_integrity"


class UnknownModelError(TokenizerError):
    """No encoding is known for a model name and no fallback is configured."""

    code = "unknown_model"


# --- read model and reconciliation ------------------------------------------------------------------


class UsageTableError(LedgergateError):
    """PostgreSQL could not be reached or queried."""

    code = "usage_table_error"


class InvoiceError(LedgergateError):
    """The invoice file cannot be read or a row is not in the documented shape; names the line."""

    code = "invoice_error"


class MigrationError(LedgergateError):
    code = "migration_error"


# --- topics and Kafka -------------------------------------------------------------------------------


class ReadTimeoutError(LedgergateError):
    code = "read_timeout"


# --- stack ------------------------------------------------------------------------------------------


class ServiceStartError(LedgergateError):
    """A service process could not be started or died while starting; the message names its log."""

    code = "service_start_error"


# --- catalogues -------------------------------------------------------------------------------------


class CatalogueError(LedgergateError):
    code = "catalogue_error"


class UnknownPriceError(CatalogueError):
    code = "unknown_price"


# --- alerter ----------------------------------------------------------------------------------------


class AlerterConfigError(LedgergateError):
    code = "alerter_config_error"


class DeliveryError(LedgergateError):
    """One failed POST. `permanent` failures go to the dead-letter topic without further attempts."""

    code = "webhook_failed"

    def __init__(self, message: str, permanent: bool = False, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after_ms = retry_after_ms


class DeadLetterError(LedgergateError):
    """The dead-letter record could not be written; the alert stays uncommitted and comes back."""

    code = "dead_letter_failed"


# --- projector --------------------------------------------------------------------------------------


class StaleOffsetsError(LedgergateError):
    """consumer_offsets no longer holds the offsets this instance read from: another instance took the
    partition over (or an operator moved it). The batch is rolled back and the partitions re-read."""

    code = "stale_offsets"


class UnexpectedEventError(LedgergateError):
    """A well-formed event of a type that does not belong on the topic it was read from."""

    code = "unexpected_event"


# --- policy -----------------------------------------------------------------------------------------


class PolicyError(LedgergateError):
    code = "invalid_policy"


# --- API --------------------------------------------------------------------------------------------


class ApiKeyError(LedgergateError):
    code = "api_key_error"


class UnauthenticatedError(LedgergateError):
    """A completion whose signature fails (or is missing where the tenant requires one): the
    token-counter dead-letters it under this code, and it settles nothing (invariant 5)."""

    code = "unauthenticated"


# --- process lifecycle -------------------------------------------------------------------------


class FatalClientError(LedgergateError):
    """A Kafka client reported a fatal error (fenced producer, fenced static member, ...), or a
    transaction could not be committed or aborted within its deadline. The process exits non-zero so
    its supervisor starts a fresh one, which fences what is left of this one and rebuilds its state."""

    code = "fatal_client_error"


class UnstorableValueError(LedgergateError):
    """A decoded event holds a value the read model cannot store (PostgreSQL `text` and `jsonb`
    refuse NUL); the projector records it in projection_errors and moves on."""

    code = "unstorable_value"
