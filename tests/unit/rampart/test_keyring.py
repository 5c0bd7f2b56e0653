"""Signing and verification: any change to a signed field is caught; rotation keeps old messages valid."""

from __future__ import annotations

import base64
import dataclasses
import hmac
import os
import stat
from pathlib import Path

import pytest
import yaml

from rampart import keyring as keyring_mod
from rampart.config import KeyringConfig
from rampart.keyring import KeyRing, KeyringError, SignatureError, generate_key, load_keyring, write_key
from schemas.envelope import Envelope, EnvelopeError, PayloadFormat, Signal, decode, encode


def unsigned(**changes: object) -> Envelope:
    fields: dict[str, object] = dict(
        batch_id="b-1", tenant="acme", principal="key-01", signal=Signal.TRACES,
        payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=1_764_000_000_000_000_000, gateway_id="gw-a",
        payload=b"\x0a\x02hi" * 8, stages=("gateway",), attributes={"part": "1/1"})
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing({"k1": generate_key(), "k0": generate_key()}, "k1")


def test_signed_envelope_verifies(ring: KeyRing) -> None:
    signed = ring.sign(unsigned())
    assert signed.key_id == "k1" and len(signed.signature) == 32
    ring.verify(signed)
    ring.verify(decode(encode(signed)))


def _flip_one_bit(value: object) -> object:
    if isinstance(value, Signal):
        return Signal.METRICS
    if isinstance(value, PayloadFormat):
        return PayloadFormat.OTLP_JSON
    if isinstance(value, bytes):
        return bytes([value[0] ^ 0x01]) + value[1:]
    if isinstance(value, str):
        return chr(ord(value[0]) ^ 0x01) + value[1:]
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int):
        return value ^ 0x01
    if isinstance(value, tuple):
        return (_flip_one_bit(value[0]), *value[1:])
    if isinstance(value, dict):
        key = next(iter(value))
        return {key: _flip_one_bit(value[key])}
    raise TypeError(type(value))


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Envelope) if f.name != "signature"])
def test_changing_any_signed_field_fails_verification(ring: KeyRing, field: str) -> None:
    signed = ring.sign(unsigned())
    altered = dataclasses.replace(signed, **{field: _flip_one_bit(getattr(signed, field))})
    with pytest.raises(SignatureError) as info:
        ring.verify(altered)
    # Changing the key id points at another (or no) key; everything else is a bad signature.
    assert info.value.reason in ({"unknown_key_id"} if field == "key_id" else {"bad_signature"})


def test_flipping_any_bit_of_the_encoded_message_is_refused(ring: KeyRing) -> None:
    data = encode(ring.sign(unsigned()))
    for bit in range(len(data) * 8):
        corrupted = bytearray(data)
        corrupted[bit // 8] ^= 1 << (bit % 8)
        try:
            envelope = decode(bytes(corrupted))
        except EnvelopeError:
            continue  # refused by the codec
        with pytest.raises(SignatureError):
            ring.verify(envelope)


def test_unknown_key_id_is_refused_with_that_reason(ring: KeyRing) -> None:
    other = KeyRing({"stranger": generate_key()}, "stranger")
    with pytest.raises(SignatureError, match="unknown key id 'stranger'") as info:
        ring.verify(other.sign(unsigned()))
    assert info.value.reason == "unknown_key_id"


def test_same_key_id_with_a_different_secret_is_a_bad_signature(ring: KeyRing) -> None:
    impostor = KeyRing({"k1": generate_key()}, "k1")
    with pytest.raises(SignatureError) as info:
        ring.verify(impostor.sign(unsigned()))
    assert info.value.reason == "bad_signature"


def test_missing_signature_is_refused(ring: KeyRing) -> None:
    with pytest.raises(SignatureError) as info:
        ring.verify(unsigned())
    assert info.value.reason == "missing_signature"


def test_rotation_keeps_old_messages_verifiable() -> None:
    old_key, new_key = generate_key(), generate_key()
    before = KeyRing({"2026-10": old_key}, "2026-10")
    old_message = before.sign(unsigned())
    after = KeyRing({"2026-10": old_key, "2026-11": new_key}, "2026-11")
    new_message = after.sign(unsigned())
    assert new_message.key_id == "2026-11"
    after.verify(old_message)
    after.verify(new_message)
    with pytest.raises(SignatureError):
        before.verify(new_message)  # a process not yet given the new key refuses, it does not guess


def test_verification_compares_in_constant_time(ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_compare = hmac.compare_digest

    def recording_compare(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real_compare(a, b)

    monkeypatch.setattr(keyring_mod.hmac, "compare_digest", recording_compare)
    ring.verify(ring.sign(unsigned()))
    assert calls == [(32, 32)]


def test_short_keys_and_bad_ids_are_refused() -> None:
    with pytest.raises(KeyringError, match="at least 32"):
        KeyRing({"k": b"short"}, "k")
    with pytest.raises(KeyringError, match="key id"):
        KeyRing({"bad id!": generate_key()}, None)
    with pytest.raises(KeyringError, match="not in the key ring"):
        KeyRing({"a": generate_key()}, "b")


def test_ring_without_signing_key_verifies_but_cannot_sign(ring: KeyRing) -> None:
    verifier = KeyRing({"k1": generate_key()}, None)
    with pytest.raises(KeyringError, match="no signing key"):
        verifier.sign(unsigned())


def test_repr_and_describe_never_show_key_bytes() -> None:
    key = generate_key()
    ring = KeyRing({"k1": key}, "k1")
    text = repr(ring) + repr(ring.describe())
    assert base64.b64encode(key).decode() not in text and key.hex() not in text
    assert ring.describe()[0].signing


def test_key_file_round_trip_and_rotation(tmp_path: Path) -> None:
    path = str(tmp_path / "secrets" / "keyring.yaml")
    first = write_key(path, "k1", make_signing=False)
    assert first.signing_key_id == "k1"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = write_key(path, "k2", make_signing=True)
    assert second.signing_key_id == "k2"
    loaded = load_keyring(KeyringConfig(file=path), {})
    assert [k.key_id for k in loaded.describe()] == ["k1", "k2"] and loaded.signing_key_id == "k2"
    pinned = load_keyring(KeyringConfig(file=path, signing_key_id="k1"), {})
    assert pinned.signing_key_id == "k1"
    with pytest.raises(KeyringError, match="never overwritten"):
        write_key(path, "k1", make_signing=False)


def test_keys_from_environment() -> None:
    a, b = generate_key(), generate_key()
    env = {"RAMPART_KEYS": f"a:{base64.b64encode(a).decode()}, b:{base64.b64encode(b).decode()}"}
    ring = load_keyring(KeyringConfig(signing_key_id="b"), env)
    signed = ring.sign(unsigned())
    assert signed.key_id == "b"
    KeyRing({"b": b}, None).verify(signed)  # the key decoded from the variable is exactly b


@pytest.mark.parametrize(("env", "message"), [
    ({}, "no keys"),
    ({"RAMPART_KEYS": "nocolon"}, "is not 'id:base64'"),
    ({"RAMPART_KEYS": "a:***"}, "not valid base64"),
])
def test_bad_environment_keys_are_explained(env: dict[str, str], message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        load_keyring(KeyringConfig(), env)


def test_missing_or_malformed_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="not found"):
        load_keyring(KeyringConfig(file=str(tmp_path / "none.yaml")), {})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"keys": ["not", "a", "mapping"]}))
    with pytest.raises(KeyringError, match="expected a mapping"):
        load_keyring(KeyringConfig(file=str(bad)), {})


def test_encryption_keys_live_in_the_key_file_and_rotate(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.yaml")
    write_key(path, "sig-1", make_signing=True)
    write_key(path, "enc-1", make_signing=False, encryption=True)
    old = load_keyring(KeyringConfig(file=path), {})
    sealed = old.seal(unsigned(), encrypt=True)
    assert sealed.payload != unsigned().payload and sealed.attributes["rampart.encryption_key_id"] == "enc-1"

    ring = write_key(path, "enc-2", make_signing=True, encryption=True)  # rotation: new payloads use enc-2
    assert (ring.signing_key_id, ring.encryption_key_id) == ("sig-1", "enc-2")
    rotated = load_keyring(KeyringConfig(file=path), {})
    assert rotated.open(sealed).payload == unsigned().payload  # old payloads still open
    assert rotated.seal(unsigned(), encrypt=True).attributes["rampart.encryption_key_id"] == "enc-2"
    assert [(i.key_id, i.purpose, i.signing) for i in rotated.describe()] == [
        ("sig-1", "signature", True), ("enc-1", "encryption", False), ("enc-2", "encryption", True)]
    with pytest.raises(KeyringError, match="already holds key 'enc-1'"):
        write_key(path, "enc-1", make_signing=False, encryption=True)


def test_encryption_needs_a_key() -> None:
    ring = KeyRing({"k": generate_key()}, "k")
    with pytest.raises(KeyringError, match="rampart keys generate --encryption"):
        ring.seal(unsigned(), encrypt=True)
    with pytest.raises(KeyringError, match="AES-256 needs 32"):
        KeyRing({"k": generate_key()}, "k", {"e": b"short"}, "e")
    with pytest.raises(KeyringError, match="encryption key 'nope' is not in the key ring"):
        KeyRing({"k": generate_key()}, "k", {"e": bytes(32)}, "nope")
