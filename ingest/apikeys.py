"""Ingest API keys: issued once, stored only as SHA-256 hashes in Redis, cached by every gateway.

A key looks like ``rpk_<key id>_<secret>``. The key id is public (it names the principal in
envelopes, logs and audit events); the 256-bit secret is shown once at creation and never stored.
Each key belongs to one tenant and may send only the signals it lists. Every gateway replica
reloads the registry when its version counter changes, at most ``apikey_refresh_interval_s``
apart, which bounds how long a revoked key keeps working.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from ingest.errors import PermissionDenied, Unauthenticated
from schemas.envelope import Signal

__all__ = ["ApiKey", "ApiKeyRegistry", "ApiKeyTable", "parse_credentials"]

TOKEN_PREFIX = "rpk"
_TOKEN = re.compile(r"^rpk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_DUMMY_HASH = hashlib.sha256(b"no such key").digest()


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    signals: frozenset[Signal]
    secret_sha256: bytes
    name: str
    created_at: float
    revoked_at: float | None = None

    def to_json(self) -> str:
        return json.dumps({
            "tenant": self.tenant, "signals": sorted(s.value for s in self.signals),
            "secret_sha256": self.secret_sha256.hex(), "name": self.name,
            "created_at": self.created_at, "revoked_at": self.revoked_at,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, key_id: str, text: str) -> ApiKey:
        data = json.loads(text)
        return cls(key_id=key_id, tenant=data["tenant"], signals=frozenset(Signal(s) for s in data["signals"]),
                   secret_sha256=bytes.fromhex(data["secret_sha256"]), name=data.get("name", ""),
                   created_at=float(data["created_at"]), revoked_at=data.get("revoked_at"))


def parse_credentials(headers: Mapping[str, str]) -> str | None:
    """The API key from ``Authorization: Bearer <key>`` or ``x-api-key: <key>``.

    ``headers`` must answer lower-case names (gRPC metadata does; aiohttp's headers are case-insensitive).
    """
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return ""  # present but not a bearer token: malformed, not missing
    key = headers.get("x-api-key")
    return key.strip() if key is not None else None


class ApiKeyTable:
    """An immutable snapshot of the registry that authenticates tokens in constant time."""

    def __init__(self, keys: Iterable[ApiKey], version: int) -> None:
        self._keys = {k.key_id: k for k in keys}
        self.version = version
        # Tokens that passed the full check against this snapshot, so a client's next request costs a
        # dict lookup instead of a regex and a SHA-256. The cache lives and dies with the snapshot:
        # every change to the registry (a revocation too) bumps its version and the gateway loads a
        # new table, whose cache starts empty, so revocation takes effect exactly as without it. It
        # holds at most one token per unrevoked key: only the token whose secret matches the key's hash.
        self._verified: dict[str, ApiKey] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list[ApiKey]:
        return list(self._keys.values())

    def authenticate(self, token: str | None, signal: Signal) -> ApiKey:
        """The key for ``token`` if it is valid, unrevoked and may send ``signal``; else raise."""
        key = self._verified.get(token) if token else None
        if key is None:
            key = self._verify(token)
        if signal not in key.signals:
            allowed = ", ".join(sorted(s.value for s in key.signals)) or "none"
            raise PermissionDenied(f"this API key may not send {signal.value} (allowed: {allowed})")
        return key

    def _verify(self, token: str | None) -> ApiKey:
        if token is None:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
        match = _TOKEN.match(token)
        if match is None:
            raise Unauthenticated("malformed API key")
        key_id, secret = match.groups()
        key = self._keys.get(key_id)
        presented = hashlib.sha256(secret.encode("ascii")).digest()
        # Compare even for unknown ids, so an unknown id costs the same as a wrong secret.
        valid = hmac.compare_digest(presented, key.secret_sha256 if key else _DUMMY_HASH) and key is not None
        if key is None or not valid:
            raise Unauthenticated("invalid API key")
        if key.revoked_at is not None:
            raise RevokedKey("API key has been revoked", key)
        self._verified[token] = key
        return key


class RevokedKey(Unauthenticated):
    """A revoked key was used: a 401 like any other, but worth its own audit event."""

    reason = "revoked_key"

    def __init__(self, message: str, key: ApiKey) -> None:
        super().__init__(message)
        self.key = key


class ApiKeyRegistry:
    """The registry in Redis: a hash of key id -> JSON record, plus a version counter."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._hash = f"{prefix}:apikeys"
        self._version = f"{prefix}:apikeys:version"

    def create(self, tenant: str, signals: Iterable[Signal], name: str = "") -> tuple[ApiKey, str]:
        """Issue a new key. Returns the record and the token, which is shown once and never stored."""
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", tenant):
            raise ValueError("tenant must be 1-64 of A-Z a-z 0-9 . _ -")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        key = ApiKey(key_id=key_id, tenant=tenant, signals=frozenset(signals),
                     secret_sha256=hashlib.sha256(secret.encode("ascii")).digest(), name=name,
                     created_at=time.time())
        if not key.signals:
            raise ValueError("a key must allow at least one signal")
        self._write(key)
        return key, f"{TOKEN_PREFIX}_{key_id}_{secret}"

    def revoke(self, key_id: str) -> ApiKey:
        raw = self._redis.hget(self._hash, key_id)
        if raw is None:
            raise KeyError(key_id)
        key = ApiKey.from_json(key_id, raw.decode() if isinstance(raw, bytes) else str(raw))
        if key.revoked_at is None:
            key = ApiKey(**{**key.__dict__, "revoked_at": time.time()})
            self._write(key)
        return key

    def load(self) -> ApiKeyTable:
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._version)
            pipe.hgetall(self._hash)
            version_raw, records = pipe.execute()
        keys = [ApiKey.from_json(_text(k), _text(v)) for k, v in records.items()]
        return ApiKeyTable(keys, int(version_raw or 0))

    def version(self) -> int:
        return int(self._redis.get(self._version) or 0)

    def _write(self, key: ApiKey) -> None:
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._hash, key.key_id, key.to_json())
            pipe.incr(self._version)
            pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ApiKeyCache:
    """This replica's copy of the registry, reloaded whenever the registry's version changes.

    Until the first load succeeds every request gets 503 (the gateway cannot tell good keys from
    bad); after that, a Redis outage leaves the last loaded table in force.
    """

    def __init__(self, registry: ApiKeyRegistry) -> None:
        self._registry = registry
        self.table: ApiKeyTable | None = None

    def refresh(self) -> bool:
        """Reload if the registry changed; returns True if a new table was loaded. Blocking: run in a thread."""
        if self.table is not None and self._registry.version() == self.table.version:
            return False
        self.table = self._registry.load()
        return True
