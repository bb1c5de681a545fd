"""ledgergate.signing (the public helper) and ledgergate.shared.credentials (derivation, key ids, the
credential state record): a signature covers every field, survives the wire (decode, then re-encode under
the writer's schema), fails for any other secret, record or event, and the canonical form is pinned."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ledgergate.codec import codec
from ledgergate.errors import CodecError, GateClientError, MalformedMessageError
from ledgergate.shared.credentials import (
    MAX_LIVE_KEYS,
    CredentialChange,
    CredentialKey,
    TenantCredentials,
    derive_secret,
    new_key_id,
)
from ledgergate.signing import (
    Credential,
    canonical_bytes,
    hmac_hex,
    key_sequence,
    message_canonical_bytes,
    sign,
    verify,
)

MASTER = b"m" * 32
KEY_ID = "lgc_1_0123456789abcdef"
SECRET = derive_secret(MASTER, "acme", "", KEY_ID)
CREDENTIAL = Credential(KEY_ID, SECRET.hex())
T0 = 1_794_000_000_000


def request(**over: Any) -> dict[str, Any]:
    rec = {"request_id": "req-1", "tenant_id": "acme", "workflow_id": "wf", "agent_id": "bot",
           "requested_model": "gpt-4o", "messages": [{"role": "user", "content": "Grüße, 世界", "name": None}],
           "tools_json": None, "max_output_tokens": 500, "priority": "NORMAL", "region": None,
           "max_cost_micro_usd": None, "labels": {"team": "search", "env": "prod"}, "requested_at_ms": T0,
           "trace_context": {}, "signature": None}
    rec.update(over)
    return rec


def completion(**over: Any) -> dict[str, Any]:
    rec = {"request_id": "req-1", "tenant_id": "acme", "model": "gpt-4o", "status": "OK",
           "usage": {"input_tokens": 10, "cached_input_tokens": 0, "output_tokens": 5, "reasoning_tokens": 0},
           "completion_text": None, "completed_at_ms": T0, "trace_context": {}, "agent_id": "bot", "signature": None}
    rec.update(over)
    return rec


def on_the_wire(name: str, signed: dict[str, Any]) -> bool:
    """What the token-counter does: decode the bytes, take the body the signature covers from them."""
    value = codec().encode(name, signed)
    _, rec = codec().decode(value)
    return verify(SECRET, message_canonical_bytes(name, value, rec), rec["signature"]["hmac_sha256"])


@pytest.mark.parametrize("signature", [
    {"key_id": KEY_ID, "hmac_sha256": "ab" * 32}, {"key_id": "", "hmac_sha256": ""},
    {"key_id": "k" * 300, "hmac_sha256": "é" * 70},  # multi-byte lengths and UTF-8: what a forger may send
    {"key_id": "\x00", "hmac_sha256": "\x02"}])
@pytest.mark.parametrize(("name", "make"), [("InvocationRequested", request), ("InvocationCompleted", completion)])
def test_the_verifiers_slice_is_the_re_encoded_body(name: str, make: Any, signature: dict[str, str]) -> None:
    """The token-counter takes the covered body out of the message (signature is the last field) rather
    than encoding the record again: the same bytes, whatever the signature field holds."""
    for content in ("", "x" * 200, "Grüße"):
        varied = ({"messages": [{"role": "user", "content": content, "name": None}]} if name == "InvocationRequested"
                  else {"completion_text": content})
        rec = make(**varied, signature=signature)
        value = codec().encode(name, rec)
        _, decoded = codec().decode(value)
        assert message_canonical_bytes(name, value, decoded) == canonical_bytes(name, decoded,
                                                                               codec().fingerprint_of(value))
    assert codec().last_field(codec().schema(name).fingerprint) == "signature"


@pytest.mark.parametrize(("name", "make"), [("InvocationRequested", request), ("InvocationCompleted", completion)])
def test_a_signed_record_verifies_after_the_wire_and_the_signature_is_not_covered(name: str, make: Any) -> None:
    signed = sign(name, make(), CREDENTIAL)
    assert signed["signature"]["key_id"] == KEY_ID and len(signed["signature"]["hmac_sha256"]) == 64
    assert canonical_bytes(name, signed) == canonical_bytes(name, make())
    assert on_the_wire(name, signed)


@pytest.mark.parametrize("change", [
    {"tenant_id": "globex"}, {"request_id": "req-2"}, {"agent_id": "other"}, {"max_output_tokens": 501},
    {"messages": [{"role": "user", "content": "Grüße, 世界!", "name": None}]}, {"labels": {"team": "search"}},
    {"labels": {"env": "prod", "team": "search"}},  # the same map in another order is other bytes: still signed
    {"priority": "HIGH"}, {"max_cost_micro_usd": 1}, {"requested_at_ms": T0 + 1}])
def test_changing_any_field_breaks_the_signature(change: dict[str, Any]) -> None:
    signed = sign("InvocationRequested", request(), CREDENTIAL)
    tampered = {**copy.deepcopy(signed), **change}
    assert not on_the_wire("InvocationRequested", tampered)


def test_another_secret_event_or_schema_version_does_not_verify() -> None:
    message = canonical_bytes("InvocationRequested", request())
    mac = hmac_hex(SECRET, message)
    assert verify(SECRET, message, mac)
    assert not verify(derive_secret(MASTER, "acme", "", "lgc_2_0123456789abcdef"), message, mac)
    # The writer fingerprint is covered: the same record under another version of its schema is other bytes.
    older = next(fp for fp, w in codec()._by_fingerprint.items()
                 if w.name == "InvocationRequested" and fp != codec().schema("InvocationRequested").fingerprint)
    assert canonical_bytes("InvocationRequested", request(), older) != message
    with pytest.raises(CodecError):
        canonical_bytes("GateDecision", request())


@pytest.mark.parametrize("claim", ["", "00" * 31, "0" * 63 + "g", "A" * 64, "é" * 64, "0" * 65])
def test_a_malformed_claim_is_false_not_an_error(claim: str) -> None:
    assert not verify(SECRET, b"anything", claim)


def test_the_canonical_form_is_pinned() -> None:
    """The wire contract for every signer outside this package: changing the form fails here first."""
    message = canonical_bytes("InvocationRequested", request())
    assert message.startswith(b"ledgergate-signature-v1\x00InvocationRequested\x00")
    assert message[44:52] == codec().schema("InvocationRequested").fingerprint
    assert message[52:] == codec().encode_body("InvocationRequested", request())
    assert SECRET.hex() == "92e8e276b75edb2a4b4121d07a0863482f73005d87dbbd7677c21c251855e1e1"
    assert hmac_hex(SECRET, message) == "a126c9881c6542dbddc0d3456ed17b8c1300317add3d150c7959e481863cb2ce"


def test_a_credential_checks_its_shape_and_never_shows_its_secret() -> None:
    assert SECRET.hex() not in repr(CREDENTIAL) and KEY_ID in repr(CREDENTIAL)
    for key_id, secret in (("lgk_1_0123456789abcdef", SECRET.hex()), ("lgc_0_0123456789abcdef", SECRET.hex()),
                           (KEY_ID, SECRET.hex()[:-1]), (KEY_ID, SECRET.hex().upper()), (KEY_ID + "\n", SECRET.hex())):
        with pytest.raises(GateClientError):
            Credential(key_id, secret)


def test_key_ids_carry_their_sequence() -> None:
    assert key_sequence(KEY_ID) == 1 and key_sequence("lgc_999999999_0123456789abcdef") == 999_999_999
    for bad in ("lgc_01_0123456789abcdef", "lgc_1_0123456789abcde", "lgc_1_0123456789ABCDEF", "x" * 1000, ""):
        assert key_sequence(bad) is None
    made = new_key_id(42)
    assert key_sequence(made) == 42 and made != new_key_id(42)


def test_derived_secrets_differ_by_tenant_scope_and_key() -> None:
    secrets = {derive_secret(MASTER, t, a, k) for t in ("acme", "acm") for a in ("", "e", "bot")
               for k in (KEY_ID, "lgc_2_0123456789abcdef")}
    assert len(secrets) == 12
    assert derive_secret(b"n" * 32, "acme", "", KEY_ID) != SECRET


def _state(**over: Any) -> dict[str, Any]:
    rec = TenantCredentials("acme", "REQUIRED", 3, 2, (CredentialKey(KEY_ID, "", T0),),
                            CredentialChange("ISSUED", KEY_ID, "api:k", T0)).to_record()
    rec.update(over)
    return rec


def test_the_credential_state_round_trips_and_refuses_what_cannot_be() -> None:
    rec = _state()
    assert codec().decode(codec().encode("TenantCredentials", rec))[1] == rec
    assert TenantCredentials.from_record(rec).to_record() == rec
    too_many = [{"key_id": f"lgc_{i}_0123456789abcdef", "agent_id": "", "created_at_ms": T0}
                for i in range(1, MAX_LIVE_KEYS + 2)]
    for bad in (_state(issued_through=0), _state(keys=too_many, issued_through=99),
                _state(keys=[{"key_id": "nope", "agent_id": "", "created_at_ms": T0}]),
                _state(keys=[{"key_id": KEY_ID, "agent_id": "bad\x00id", "created_at_ms": T0}]),
                _state(tenant_id="")):
        with pytest.raises(MalformedMessageError):
            TenantCredentials.from_record(bad)
