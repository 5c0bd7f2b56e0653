"""HMAC-SHA256 envelope signing with key ids, one signing key and any number of verify-only keys.

Rotation without downtime: add the new key to every process's ring (verify-only), then make it
the signing key, then, once nothing signed with the old key is left in Kafka's retention, remove
the old one. Key material lives in a file or the environment, never in code or config.
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

from rampart.config import KeyringConfig
from rampart.settings import ConfigError, env_secret
from schemas.envelope import Envelope

__all__ = ["KeyRing", "KeyringError", "SignatureError", "generate_key", "load_keyring", "write_key"]

MIN_KEY_BYTES = 32
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


class KeyRing:
    """Signs with one key, verifies with all. Key bytes never leave this object."""

    def __init__(self, keys: Mapping[str, bytes], signing_key_id: str | None) -> None:
        for key_id, key in keys.items():
            if not _KEY_ID.match(key_id):
                raise KeyringError(f"key id {key_id!r} must be 1-64 of A-Z a-z 0-9 . _ -")
            if len(key) < MIN_KEY_BYTES:
                raise KeyringError(f"key {key_id!r} is {len(key)} bytes; at least {MIN_KEY_BYTES} are required")
        if signing_key_id is not None and signing_key_id not in keys:
            known = ", ".join(sorted(keys)) or "none"
            raise KeyringError(f"signing key {signing_key_id!r} is not in the key ring (keys: {known})")
        self._keys = dict(keys)
        self.signing_key_id = signing_key_id

    def __repr__(self) -> str:
        return f"KeyRing(keys={sorted(self._keys)}, signing_key_id={self.signing_key_id!r})"

    def sign(self, envelope: Envelope) -> Envelope:
        """Return ``envelope`` carrying this ring's signing key id and a fresh signature."""
        if self.signing_key_id is None:
            raise KeyringError("this key ring has no signing key (set keyring.signing_key_id)")
        unsigned = _with_key(envelope, self.signing_key_id, b"")
        return _with_key(unsigned, self.signing_key_id, self._mac(self._keys[self.signing_key_id], unsigned))

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

    def describe(self) -> list[KeyInfo]:
        """Key ids with a non-secret fingerprint (SHA-256 of the key, first 12 hex digits)."""
        return [KeyInfo(key_id, hashlib.sha256(key).hexdigest()[:12], key_id == self.signing_key_id)
                for key_id, key in sorted(self._keys.items())]

    @staticmethod
    def _mac(key: bytes, envelope: Envelope) -> bytes:
        mac = hmac.new(key, envelope.signed_header(), hashlib.sha256)
        mac.update(envelope.payload)  # not concatenated: payloads can be megabytes
        return mac.digest()


def _with_key(envelope: Envelope, key_id: str, signature: bytes) -> Envelope:
    return replace(envelope, key_id=key_id, signature=signature)


def generate_key() -> bytes:
    return secrets.token_bytes(MIN_KEY_BYTES)


def load_keyring(config: KeyringConfig, env: Mapping[str, str]) -> KeyRing:
    """Load keys from ``config.file`` or, when no file is set, from the variable ``config.env_var``."""
    if config.file is not None:
        keys, file_signing_id = _read_key_file(config.file)
        return KeyRing(keys, config.signing_key_id or file_signing_id)
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
    return KeyRing(keys, config.signing_key_id)


def _read_key_file(path: str) -> tuple[dict[str, bytes], str | None]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise KeyringError(f"key file {path} not found (create one with `rampart keys generate`)") from None
    except (OSError, yaml.YAMLError) as exc:
        raise KeyringError(f"key file {path} cannot be read: {type(exc).__name__}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys", {}), dict):
        raise KeyringError(f"key file {path}: expected a mapping with 'keys: {{id: base64}}'")
    keys = {str(k): _b64(str(v), f"key file {path}, key {k!r}") for k, v in data.get("keys", {}).items()}
    signing = data.get("signing_key_id")
    return keys, (str(signing) if signing is not None else None)


def write_key(path: str, key_id: str, *, make_signing: bool) -> KeyRing:
    """Add a fresh random key to the key file at ``path`` (created with mode 0600 if absent)."""
    keys, signing = _read_key_file(path) if os.path.exists(path) else ({}, None)
    if key_id in keys:
        raise KeyringError(f"key file {path} already holds key {key_id!r}; keys are never overwritten")
    keys[key_id] = generate_key()
    if make_signing or signing is None:
        signing = key_id
    ring = KeyRing(keys, signing)  # validates ids and lengths before anything is written
    doc = {"signing_key_id": signing,
           "keys": {k: base64.b64encode(v).decode("ascii") for k, v in keys.items()}}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# Rampart HMAC key ring. Secret: keep it out of version control and logs.\n")
        yaml.safe_dump(doc, f, sort_keys=True)
    os.replace(tmp, path)
    return ring


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{where} is not valid base64") from None
