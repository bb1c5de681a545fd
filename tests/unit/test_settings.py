"""Settings defaults that depend on other settings: the default PostgreSQL DSN follows the stack's."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ledgergate.shared.settings import (
    ApiSettings,
    PostgresSettings,
    ProjectorSettings,
    StackSettings,
    TokenCounterSettings,
)

STACK_VARS = ("LEDGERGATE_PG_DSN", "LEDGERGATE_PG_PORT", "LEDGERGATE_PG_USER", "LEDGERGATE_PG_PASSWORD",
              "LEDGERGATE_PG_DATABASE")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in STACK_VARS:
        monkeypatch.delenv(name, raising=False)


def test_default_dsn_is_the_stack_default() -> None:
    assert PostgresSettings().pg_dsn == "postgresql://ledgergate:ledgergate@127.0.0.1:5433/ledgergate"


def test_default_dsn_follows_the_stack_port_user_password_and_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERGATE_PG_PORT", "25999")
    monkeypatch.setenv("LEDGERGATE_PG_USER", "alice")
    monkeypatch.setenv("LEDGERGATE_PG_PASSWORD", "s3cret")
    monkeypatch.setenv("LEDGERGATE_PG_DATABASE", "books")
    expected = "postgresql://alice:s3cret@127.0.0.1:25999/books"
    assert PostgresSettings().pg_dsn == expected
    # The same string the stack launcher connects with, and the services that compose PostgresSettings.
    assert StackSettings().dsn() == expected
    assert ApiSettings().pg_dsn == expected
    assert ProjectorSettings().pg_dsn == expected


def test_explicit_dsn_wins_over_the_stack_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERGATE_PG_PORT", "25999")
    monkeypatch.setenv("LEDGERGATE_PG_DSN", "postgresql://u:p@db.internal:5432/ledger")
    assert PostgresSettings().pg_dsn == "postgresql://u:p@db.internal:5432/ledger"
    assert PostgresSettings(pg_dsn="postgresql://x@h/y").pg_dsn == "postgresql://x@h/y"


def test_the_credential_master_key_is_bounded_hidden_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in (TokenCounterSettings, ApiSettings):
        monkeypatch.setenv("LEDGERGATE_CREDENTIAL_MASTER_KEY", "")
        assert cls().master_key_bytes() is None
        monkeypatch.setenv("LEDGERGATE_CREDENTIAL_MASTER_KEY", "too-short-secret")
        with pytest.raises(ValidationError) as err:
            cls()
        assert "too-short-secret" not in str(err.value)  # a refused secret is never echoed
        monkeypatch.setenv("LEDGERGATE_CREDENTIAL_MASTER_KEY", "k" * 32)
        settings = cls()
        assert settings.master_key_bytes() == b"k" * 32 and "k" * 32 not in repr(settings)
    monkeypatch.setenv("LEDGERGATE_AUTH_DEFAULT_MODE", "sometimes")
    with pytest.raises(ValidationError):
        TokenCounterSettings()
