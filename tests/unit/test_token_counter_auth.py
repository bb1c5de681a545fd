"""token-counter's pure core, authentication (invariant 5): which signed and unsigned requests a tenant's
credential state lets through, by mode, key, scope, revocation and a key newer than the state read.
Fakes only here: the canonical bytes are any bytes, signed with the helper the SDK uses."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ledgergate.events import Signature
from ledgergate.services.token_counter.core import FAIL_CLOSED, Authenticator, TenantKeys, authenticate, tenant_keys
from ledgergate.shared.credentials import CredentialChange, CredentialKey, TenantCredentials, derive_secret
from ledgergate.signing import hmac_hex

MASTER = b"k" * 32
T0 = 1_794_000_000_000
K1, K2, K3 = "lgc_1_aaaaaaaaaaaaaaaa", "lgc_2_bbbbbbbbbbbbbbbb", "lgc_3_cccccccccccccccc"  # K3 revoked
K4, K5 = "lgc_4_dddddddddddddddd", "lgc_5_eeeeeeeeeeeeeeee"  # issued after the state below
MESSAGE = b"canonical bytes of one request"
AUTH = Authenticator(MASTER, "OPTIONAL")


def state(mode: str | None = "REQUIRED") -> TenantKeys:
    creds = TenantCredentials("acme", mode, 5, 3,  # type: ignore[arg-type]
                              (CredentialKey(K1, "", T0), CredentialKey(K2, "bot", T0)),
                              CredentialChange("REVOKED", K3, "api:x", T0))
    return tenant_keys(creds, MASTER)


def signed(key_id: str, agent_scope: str = "", tenant: str = "acme", message: bytes = MESSAGE) -> Signature:
    return Signature(key_id, hmac_hex(derive_secret(MASTER, tenant, agent_scope, key_id), message))


def check(signature: Signature | None, keys: TenantKeys | None = None, agent: str = "bot",
          auth: Authenticator = AUTH, tenant: str = "acme") -> str | None:
    return authenticate(auth, keys, tenant, agent, signature, lambda: MESSAGE)


def test_the_tenants_live_keys_verify_within_their_scope() -> None:
    keys = state()
    assert check(signed(K1), keys, agent="") is None
    assert check(signed(K1), keys, agent="anyone") is None
    assert check(signed(K2, "bot"), keys, agent="bot") is None
    assert "scoped to another agent" in (check(signed(K2, "bot"), keys, agent="other") or "")


@pytest.mark.parametrize(("signature", "why"), [
    (Signature(K1, "0" * 64), "does not verify under key"),
    (signed(K1, message=b"another request"), "does not verify under key"),
    (signed(K1, tenant="globex"), "does not verify under key"),  # globex's K1 (same id) is not acme's
    (signed(K3), "revoked"),
    (signed("lgc_2_ffffffffffffffff", tenant="globex"), "revoked, or is not tenant acme's"),
    (signed("lgc_9_ffffffffffffffff", tenant="globex"), "does not verify"),  # another tenant's newer key
    (Signature("lgk_0123456789ab_key", "0" * 64), "not a ledgergate credential id"),
    (Signature(K1, "not hex at all"), "does not verify"),
])
def test_forgeries_fail_with_their_reason(signature: Signature, why: str) -> None:
    reason = check(signature, state())
    assert reason is not None and why in reason, reason


def test_a_key_newer_than_the_state_read_verifies_by_derivation_and_keeps_its_scope() -> None:
    """Issued after the last record this instance read: the client may use it at once (rotation loses
    nothing), and only the master key's holder can have made a secret that verifies."""
    keys = state()
    assert check(signed(K4), keys, agent="anyone") is None
    assert check(signed(K5, "bot"), keys, agent="bot") is None
    assert check(signed(K5, "bot"), keys, agent="other") is not None
    assert check(signed(K4), None) is None  # a tenant this instance never had a state for
    assert check(Signature(K4, hmac_hex(b"z" * 32, MESSAGE)), keys) is not None


@pytest.mark.parametrize(("mode", "default", "passes"), [
    ("REQUIRED", "OPTIONAL", False), ("OPTIONAL", "REQUIRED", True), (None, "OPTIONAL", True),
    (None, "REQUIRED", False)])
def test_unsigned_requests_pass_by_the_tenants_mode_else_the_default(mode: str | None, default: str,
                                                                    passes: bool) -> None:
    auth = Authenticator(MASTER, default)  # type: ignore[arg-type]
    never: Callable[[], bytes] = lambda: pytest.fail("an unsigned request is never encoded")  # noqa: E731
    reason = authenticate(auth, state(mode), "acme", "bot", None, never)
    assert (reason is None) == passes, reason
    assert (authenticate(auth, None, "acme", "bot", None, never) is None) == (default == "OPTIONAL")


def test_a_signature_is_verified_in_optional_mode_too() -> None:
    assert check(Signature(K1, "0" * 64), state("OPTIONAL")) is not None


def test_without_a_master_key_nothing_signed_passes() -> None:
    no_key = Authenticator(None, "OPTIONAL")
    assert "no credential master key" in (check(signed(K1), state(), auth=no_key) or "")
    assert check(None, state("OPTIONAL"), auth=no_key) is None
    creds = TenantCredentials("acme", None, 1, 1, (CredentialKey(K1, "", T0),), CredentialChange("ISSUED", K1, "x", T0))
    assert tenant_keys(creds, None).live == {}


def test_a_tombstone_fails_closed() -> None:
    assert check(None, FAIL_CLOSED) is not None
    for key_id in (K1, K4, "lgc_999999999_ffffffffffffffff"):
        assert check(signed(key_id), FAIL_CLOSED) is not None
