"""Operator release keys: who may let a quarantined batch back into the pipeline.

Every Rampart process holds an HMAC envelope key, so an envelope signature only proves that *some*
Rampart process wrote a record. A release must prove more: that an operator decided it. So a release
carries a second signature, Ed25519, made with an operator's private key that no service holds. The
pipeline knows only the public halves (``keyring.release_keys``, not secret), so a compromised
gateway or worker can still sign envelopes but cannot forge a release.

The release signature covers the batch (id, tenant, principal, signal and the SHA-256 of the
payload in clear) and the release itself (operator key id, reason, time, quarantine record), so it
cannot be moved to other data or reworded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.envelope import Envelope

__all__ = ["RELEASED_BY", "RELEASE_ATTRIBUTES", "RELEASE_REASON", "OperatorKey", "ReleaseError", "ReleaseKeys",
           "generate_operator_key", "load_operator_key", "sign_release"]

# Envelope attributes of a release. The gateway builds every envelope's attributes itself, so no
# client can set these; the release signature is what makes them mean anything.
RELEASED_BY = "rampart.released_by"            # the operator key id that signed the release
RELEASE_REASON = "rampart.release_reason"
RELEASED_AT = "rampart.released_at"
RELEASE_OF = "rampart.release_of"               # the quarantine record, e.g. traces/0/12
RELEASE_SIGNATURE = "rampart.release_signature"  # base64 Ed25519 signature of the statement below
RELEASE_ATTRIBUTES = (RELEASED_BY, RELEASE_REASON, RELEASED_AT, RELEASE_OF, RELEASE_SIGNATURE)

_DOMAIN = b"rampart.release.v1\x00"


class ReleaseError(Exception):
    """A release that cannot be trusted, or an operator key that cannot be used. ``reason`` is a
    stable code for quarantine records and metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


@dataclass(frozen=True)
class OperatorKey:
    key_id: str
    private: Ed25519PrivateKey

    def public_text(self) -> str:
        return base64.b64encode(self.private.public_key().public_bytes_raw()).decode("ascii")


def generate_operator_key(path: str, key_id: str) -> OperatorKey:
    """Write a new operator key to ``path`` (mode 0600; never overwrites) and return it."""
    if not key_id or len(key_id) > 64 or not all(c.isalnum() or c in "._-" for c in key_id):
        raise ReleaseError("bad_key_id", f"operator key id {key_id!r}: use 1-64 letters, digits, '.', '_', '-'")
    key = OperatorKey(key_id, Ed25519PrivateKey.generate())
    doc = {"operator_key_id": key_id,
           "ed25519_private_key": base64.b64encode(key.private.private_bytes_raw()).decode("ascii")}
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ReleaseError("exists", f"{path} exists already; operator keys are never overwritten") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# Rampart operator release key (Ed25519 private key). Only its operator may read it: "
                "whoever holds it can release quarantined data.\n")
        yaml.safe_dump(doc, f, sort_keys=True)
    return key


def load_operator_key(path: str) -> OperatorKey:
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise ReleaseError("unreadable", f"cannot read operator key file {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ReleaseError("unreadable", f"operator key file {path} is not YAML") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("operator_key_id"), str) \
            or not isinstance(doc.get("ed25519_private_key"), str):
        raise ReleaseError("unreadable", f"operator key file {path} needs operator_key_id and ed25519_private_key "
                                         "(make one with `rampart keys operator`)")
    raw = _b64(doc["ed25519_private_key"], f"ed25519_private_key in {path}", 32)
    return OperatorKey(doc["operator_key_id"], Ed25519PrivateKey.from_private_bytes(raw))


def sign_release(key: OperatorKey, envelope: Envelope, *, reason: str, released_at: str,
                 record_id: str) -> dict[str, str]:
    """The attributes that release ``envelope`` (its payload in clear), signed by ``key``."""
    attributes = {RELEASED_BY: key.key_id, RELEASE_REASON: reason, RELEASED_AT: released_at, RELEASE_OF: record_id}
    signature = key.private.sign(_statement(envelope, attributes))
    return {**attributes, RELEASE_SIGNATURE: base64.b64encode(signature).decode("ascii")}


class ReleaseKeys:
    """The operators' public keys, from ``keyring.release_keys`` (key id -> base64 Ed25519 public key)."""

    def __init__(self, keys: Mapping[str, str], where: str = "keyring.release_keys") -> None:
        self._keys = {key_id: Ed25519PublicKey.from_public_bytes(_b64(text, f"{where}.{key_id}", 32))
                      for key_id, text in keys.items()}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def check(self, envelope: Envelope) -> str | None:
        """The operator key id that released ``envelope`` (payload in clear); None if it carries no
        release. Raises ReleaseError if it carries one that does not verify."""
        attributes = envelope.attributes
        if not any(name in attributes for name in RELEASE_ATTRIBUTES):
            return None
        key_id = attributes.get(RELEASED_BY, "")
        if not self._keys:
            raise ReleaseError("bad_release", "the batch claims a release, but no operator release key is "
                                              "configured (keyring.release_keys)")
        public = self._keys.get(key_id)
        if public is None:
            raise ReleaseError("bad_release", f"the batch claims a release by {key_id!r}, which is not an "
                                              "operator key in keyring.release_keys")
        try:
            signature = base64.b64decode(attributes.get(RELEASE_SIGNATURE, ""), validate=True)
            public.verify(signature, _statement(envelope, attributes))
        except (binascii.Error, ValueError, InvalidSignature):
            raise ReleaseError("bad_release", f"the release signature of {key_id!r} does not match this batch "
                                              "and release: altered or forged") from None
        return key_id


def _statement(envelope: Envelope, attributes: Mapping[str, str]) -> bytes:
    out = bytearray(_DOMAIN)
    for text in (envelope.batch_id, envelope.tenant, envelope.principal, envelope.signal.value,
                 attributes.get(RELEASED_BY, ""), attributes.get(RELEASE_REASON, ""),
                 attributes.get(RELEASED_AT, ""), attributes.get(RELEASE_OF, "")):
        data = text.encode("utf-8")
        out += struct.pack(">I", len(data)) + data
    out += hashlib.sha256(envelope.payload).digest()
    return bytes(out)


def _b64(text: str, where: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ReleaseError("bad_key", f"{where} is not valid base64") from None
    if len(raw) != size:
        raise ReleaseError("bad_key", f"{where} must be {size} bytes (base64 of an Ed25519 key), not {len(raw)}")
    return raw
