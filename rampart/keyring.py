"""HMAC-SHA256 envelope signing with key ids, one signing key and any number of verify-only keys;
optionally AES-256-GCM payload encryption with its own key ids, for data not yet scrubbed.

Rotation without downtime: add the new key to every process's ring (verify-only), then make it
the signing key, then, once nothing signed with the old key is left in Kafka's retention, remove
the old one. Encryption keys rotate the same way. Key material lives in a file or the environment,
never in code or config.

Order: encrypt, then sign. The signature covers the ciphertext and the encryption attributes, so a
tampered record fails verification before anything is decrypted; the cipher's associated data binds
the ciphertext to its batch, so it cannot be moved into another envelope either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rampart.config import KeyringConfig
from rampart.settings import ConfigError, env_secret
from schemas.envelope import Envelope

__all__ = ["ENCRYPTION_ATTRIBUTE", "KeyRing", "KeyringError", "SignatureError", "generate_key", "is_encrypted",
           "load_keyring", "write_key"]

MIN_KEY_BYTES = 32
ENCRYPTION_KEY_BYTES = 32  # AES-256
ENCRYPTION_ATTRIBUTE = "rampart.encryption"          # the cipher, e.g. "AES-256-GCM"
ENCRYPTION_KEY_ATTRIBUTE = "rampart.encryption_key_id"
_CIPHER = "AES-256-GCM"
_NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class KeyringError(Exception):
    """The key ring cannot be loaded or is unusable (missing file, bad key, unknown signing id)."""


class SignatureError(Exception):
    """An envelope failed verification. ``reason`` is a stable code for metrics and quarantine."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    fingerprint: str
    signing: bool
    purpose: str = "signature"  # or "encryption"


class KeyRing:
    """Signs with one key, verifies with all; encrypts with one encryption key, decrypts with all.
    Key bytes never leave this object."""

    def __init__(self, keys: Mapping[str, bytes], signing_key_id: str | None,
                 encryption_keys: Mapping[str, bytes] | None = None, encryption_key_id: str | None = None) -> None:
        encryption_keys = dict(encryption_keys or {})
        for key_id in (*keys, *encryption_keys):
            if not _KEY_ID.match(key_id):
                raise KeyringError(f"key id {key_id!r} must be 1-64 of A-Z a-z 0-9 . _ -")
        for key_id, key in keys.items():
            if len(key) < MIN_KEY_BYTES:
                raise KeyringError(f"key {key_id!r} is {len(key)} bytes; at least {MIN_KEY_BYTES} are required")
        for key_id, key in encryption_keys.items():
            if len(key) != ENCRYPTION_KEY_BYTES:
                raise KeyringError(f"encryption key {key_id!r} is {len(key)} bytes; AES-256 needs "
                                   f"{ENCRYPTION_KEY_BYTES}")
        for what, chosen, ring in (("signing", signing_key_id, keys), ("encryption", encryption_key_id,
                                                                        encryption_keys)):
            if chosen is not None and chosen not in ring:
                known = ", ".join(sorted(ring)) or "none"
                raise KeyringError(f"{what} key {chosen!r} is not in the key ring ({what} keys: {known})")
        self._keys = dict(keys)
        self._ciphers = {key_id: AESGCM(key) for key_id, key in encryption_keys.items()}
        self._fingerprints = {key_id: _fingerprint(key) for key_id, key in encryption_keys.items()}
        self.signing_key_id = signing_key_id
        self.encryption_key_id = encryption_key_id

    def __repr__(self) -> str:
        return (f"KeyRing(keys={sorted(self._keys)}, signing_key_id={self.signing_key_id!r}, "
                f"encryption_keys={sorted(self._ciphers)}, encryption_key_id={self.encryption_key_id!r})")

    def sign(self, envelope: Envelope) -> Envelope:
        """Return ``envelope`` carrying this ring's signing key id and a fresh signature."""
        if self.signing_key_id is None:
            raise KeyringError("this key ring has no signing key (set keyring.signing_key_id)")
        unsigned = envelope
        if envelope.key_id != self.signing_key_id or envelope.signature:  # (a stage's outputs come ready)
            unsigned = _with_key(envelope, self.signing_key_id, b"")
        return _with_key(unsigned, self.signing_key_id, self._mac(self._keys[self.signing_key_id], unsigned))

    def seal(self, envelope: Envelope, *, encrypt: bool) -> Envelope:
        """Sign ``envelope``, encrypting its payload first when ``encrypt`` is set."""
        return self.sign(self._encrypt(envelope) if encrypt else envelope)

    def verify(self, envelope: Envelope) -> None:
        """Raise SignatureError unless the envelope was signed by a key in this ring, unaltered."""
        if not envelope.signature:
            raise SignatureError("missing_signature", "envelope carries no signature")
        key = self._keys.get(envelope.key_id)
        if key is None:
            raise SignatureError("unknown_key_id", f"envelope is signed with unknown key id {envelope.key_id!r}")
        expected = self._mac(key, envelope)
        if not hmac.compare_digest(expected, envelope.signature):
            raise SignatureError("bad_signature",
                                 f"signature does not match (key id {envelope.key_id!r}): altered or forged")

    def open(self, envelope: Envelope) -> Envelope:
        """Verify ``envelope`` and return it with its payload in clear (decrypted if it was encrypted)."""
        self.verify(envelope)
        return self._decrypt(envelope) if is_encrypted(envelope) else envelope

    def require_encryption_key(self) -> None:
        if self.encryption_key_id is None:
            raise KeyringError("keyring.encrypt_unscrubbed is on but the key ring has no encryption key: add one "
                               "with `rampart keys generate --encryption --id <id>`")

    def describe(self) -> list[KeyInfo]:
        """Key ids with a non-secret fingerprint (SHA-256 of the key, first 12 hex digits)."""
        return ([KeyInfo(key_id, _fingerprint(key), key_id == self.signing_key_id)
                 for key_id, key in sorted(self._keys.items())]
                + [KeyInfo(key_id, fingerprint, key_id == self.encryption_key_id, "encryption")
                   for key_id, fingerprint in sorted(self._fingerprints.items())])

    def _encrypt(self, envelope: Envelope) -> Envelope:
        if self.encryption_key_id is None:
            self.require_encryption_key()
        assert self.encryption_key_id is not None
        nonce = secrets.token_bytes(_NONCE_BYTES)  # random 96-bit nonces: safe far beyond any key's lifetime here
        sealed = nonce + self._ciphers[self.encryption_key_id].encrypt(nonce, envelope.payload, _aad(envelope))
        attributes = {**envelope.attributes, ENCRYPTION_ATTRIBUTE: _CIPHER,
                      ENCRYPTION_KEY_ATTRIBUTE: self.encryption_key_id}
        return replace(envelope, payload=sealed, attributes=attributes)

    def _decrypt(self, envelope: Envelope) -> Envelope:
        cipher_name = envelope.attributes.get(ENCRYPTION_ATTRIBUTE)
        key_id = envelope.attributes.get(ENCRYPTION_KEY_ATTRIBUTE, "")
        if cipher_name != _CIPHER:
            raise SignatureError("unknown_cipher", f"payload encrypted with unsupported cipher {cipher_name!r}")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise SignatureError("unknown_encryption_key", f"payload encrypted with unknown key id {key_id!r}")
        try:
            payload = cipher.decrypt(envelope.payload[:_NONCE_BYTES], envelope.payload[_NONCE_BYTES:],
                                     _aad(envelope))
        except (InvalidTag, ValueError):
            raise SignatureError("decryption_failed", f"payload does not decrypt with key {key_id!r}") from None
        attributes = {k: v for k, v in envelope.attributes.items()
                      if k not in (ENCRYPTION_ATTRIBUTE, ENCRYPTION_KEY_ATTRIBUTE)}
        return replace(envelope, payload=payload, attributes=attributes)

    @staticmethod
    def _mac(key: bytes, envelope: Envelope) -> bytes:
        mac = hmac.new(key, envelope.signed_header(), hashlib.sha256)
        mac.update(envelope.payload)  # not concatenated: payloads can be megabytes
        return mac.digest()


def is_encrypted(envelope: Envelope) -> bool:
    return ENCRYPTION_ATTRIBUTE in envelope.attributes


def _aad(envelope: Envelope) -> bytes:
    """The batch's identity, bound to the ciphertext (length-prefixed, so fields cannot run into each other)."""
    out = bytearray()
    for text in (envelope.batch_id, envelope.tenant, envelope.principal, envelope.signal.value,
                 envelope.payload_format.value):
        data = text.encode()
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:12]


def _with_key(envelope: Envelope, key_id: str, signature: bytes) -> Envelope:
    return replace(envelope, key_id=key_id, signature=signature)


def generate_key() -> bytes:
    return secrets.token_bytes(MIN_KEY_BYTES)


def load_keyring(config: KeyringConfig, env: Mapping[str, str]) -> KeyRing:
    """Load keys from ``config.file`` or, when no file is set, from the variable ``config.env_var``."""
    if config.file is not None:
        found = _read_key_file(config.file)
        return KeyRing(found.keys, config.signing_key_id or found.signing_key_id, found.encryption_keys,
                       config.encryption_key_id or found.encryption_key_id)
    try:
        raw = env_secret(env, config.env_var)
    except ConfigError as exc:
        raise KeyringError(str(exc)) from None
    if not raw:
        raise KeyringError(f"no keys: set keyring.file in the config or the environment variable "
                           f"{config.env_var} (as 'id:base64[,id:base64...]'); "
                           "`rampart keys generate` makes a key file")
    keys = {}
    for item in raw.split(","):
        key_id, sep, encoded = item.strip().partition(":")
        if not sep:
            raise KeyringError(f"{config.env_var}: entry {key_id[:16]!r}… is not 'id:base64'")
        keys[key_id] = _b64(encoded, f"{config.env_var} key {key_id!r}")
    if config.encryption_key_id is not None:
        raise KeyringError("keyring.encryption_key_id needs keyring.file: encryption keys live in the key file")
    return KeyRing(keys, config.signing_key_id)


@dataclass
class _KeyFile:
    keys: dict[str, bytes]
    signing_key_id: str | None
    encryption_keys: dict[str, bytes]
    encryption_key_id: str | None


def _read_key_file(path: str) -> _KeyFile:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise KeyringError(f"key file {path} not found (create one with `rampart keys generate`)") from None
    except (OSError, yaml.YAMLError) as exc:
        raise KeyringError(f"key file {path} cannot be read: {type(exc).__name__}") from None
    if (not isinstance(data, dict) or not isinstance(data.get("keys", {}), dict)
            or not isinstance(data.get("encryption_keys", {}), dict)):
        raise KeyringError(f"key file {path}: expected a mapping with 'keys: {{id: base64}}' (and optionally "
                           "'encryption_keys: {id: base64}')")

    def decoded(section: str) -> dict[str, bytes]:
        return {str(k): _b64(str(v), f"key file {path}, {section} {k!r}") for k, v in data.get(section, {}).items()}

    def chosen(name: str) -> str | None:
        return str(data[name]) if data.get(name) is not None else None

    return _KeyFile(decoded("keys"), chosen("signing_key_id"), decoded("encryption_keys"),
                    chosen("encryption_key_id"))


def write_key(path: str, key_id: str, *, make_signing: bool, encryption: bool = False) -> KeyRing:
    """Add a fresh random key to the key file at ``path`` (created with mode 0600 if absent).

    ``encryption`` adds an AES-256 payload key instead of a signing key; ``make_signing`` then makes it the
    key new payloads are encrypted with. The first key of each kind is the one in use.
    """
    found = _read_key_file(path) if os.path.exists(path) else _KeyFile({}, None, {}, None)
    if key_id in found.keys or key_id in found.encryption_keys:
        raise KeyringError(f"key file {path} already holds key {key_id!r}; keys are never overwritten")
    if encryption:
        found.encryption_keys[key_id] = secrets.token_bytes(ENCRYPTION_KEY_BYTES)
        if make_signing or found.encryption_key_id is None:
            found.encryption_key_id = key_id
    else:
        found.keys[key_id] = generate_key()
        if make_signing or found.signing_key_id is None:
            found.signing_key_id = key_id
    # Validates ids and lengths before anything is written.
    ring = KeyRing(found.keys, found.signing_key_id, found.encryption_keys, found.encryption_key_id)
    doc: dict[str, object] = {"signing_key_id": found.signing_key_id,
                              "keys": {k: base64.b64encode(v).decode("ascii") for k, v in found.keys.items()}}
    if found.encryption_keys:
        doc["encryption_key_id"] = found.encryption_key_id
        doc["encryption_keys"] = {k: base64.b64encode(v).decode("ascii") for k, v in found.encryption_keys.items()}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# Rampart key ring (HMAC signing keys, AES-256 payload keys). Secret: keep it out of version "
                "control and logs.\n")
        yaml.safe_dump(doc, f, sort_keys=True)
    os.replace(tmp, path)
    return ring


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{where} is not valid base64") from None
