"""API-key checks: the table authenticates tokens; secrets are hashed; revocation and signals are enforced."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ingest import apikeys as apikeys_mod
from ingest.apikeys import ApiKey, ApiKeyTable, RevokedKey, parse_credentials
from ingest.errors import PermissionDenied, Unauthenticated
from schemas.envelope import Signal

SECRET = "A" * 43
KEY_ID = "0123456789abcdef"
TOKEN = f"rpk_{KEY_ID}_{SECRET}"


def table(revoked: bool = False, signals: frozenset[Signal] = frozenset(Signal)) -> ApiKeyTable:
    key = ApiKey(KEY_ID, "acme", signals, hashlib.sha256(SECRET.encode()).digest(), "app", 1.0,
                 2.0 if revoked else None)
    return ApiKeyTable([key], version=1)


def test_valid_token_authenticates() -> None:
    key = table().authenticate(TOKEN, Signal.TRACES)
    assert (key.key_id, key.tenant) == (KEY_ID, "acme")


@pytest.mark.parametrize(("token", "message"), [
    (None, "missing API key"),
    ("", "malformed API key"),
    ("rpk_short_x", "malformed API key"),
    (f"rpk_{KEY_ID}_{'B' * 43}", "invalid API key"),
    (f"rpk_{'f' * 16}_{SECRET}", "invalid API key"),
])
def test_bad_tokens(token: str | None, message: str) -> None:
    with pytest.raises(Unauthenticated, match=message):
        table().authenticate(token, Signal.TRACES)


def test_revoked_key_is_refused_distinctly() -> None:
    with pytest.raises(RevokedKey) as info:
        table(revoked=True).authenticate(TOKEN, Signal.TRACES)
    assert info.value.key.key_id == KEY_ID and info.value.http_status == 401


def test_signal_not_allowed_is_403() -> None:
    with pytest.raises(PermissionDenied, match=r"may not send logs \(allowed: metrics, traces\)"):
        table(signals=frozenset({Signal.TRACES, Signal.METRICS})).authenticate(TOKEN, Signal.LOGS)


def test_secrets_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append(len(a))
        return real(a, b)

    monkeypatch.setattr(apikeys_mod.hmac, "compare_digest", recording)
    table().authenticate(TOKEN, Signal.TRACES)
    with pytest.raises(Unauthenticated):
        table().authenticate(f"rpk_{'e' * 16}_{SECRET}", Signal.TRACES)  # unknown id: still compared
    assert calls == [32, 32]


def test_a_verified_token_is_checked_once_per_table(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[bytes] = []
    real = hashlib.sha256

    def recording(data: bytes) -> hashlib._Hash:
        hashed.append(data)
        return real(data)

    snapshot = table(signals=frozenset({Signal.TRACES}))
    monkeypatch.setattr("ingest.apikeys.hashlib.sha256", recording)
    for _ in range(3):
        assert snapshot.authenticate(TOKEN, Signal.TRACES).key_id == KEY_ID
    assert hashed == [SECRET.encode()]
    with pytest.raises(PermissionDenied):  # the signal is still checked on every request
        snapshot.authenticate(TOKEN, Signal.LOGS)
    with pytest.raises(Unauthenticated, match="invalid API key"):  # same key id, another secret
        snapshot.authenticate(f"rpk_{KEY_ID}_{'B' * 43}", Signal.TRACES)


def test_revocation_is_honoured_although_the_old_table_had_verified_the_token() -> None:
    before = table()
    before.authenticate(TOKEN, Signal.TRACES)
    # A revocation bumps the registry's version: the gateway swaps in a new table, with its own cache.
    with pytest.raises(RevokedKey):
        table(revoked=True).authenticate(TOKEN, Signal.TRACES)


def test_stored_record_holds_a_hash_not_the_secret() -> None:
    record = table().keys()[0].to_json()
    assert SECRET not in record and hashlib.sha256(SECRET.encode()).hexdigest() in record
    assert ApiKey.from_json(KEY_ID, record) == table().keys()[0]


@pytest.mark.parametrize(("headers", "expected"), [
    ({"authorization": "Bearer abc"}, "abc"),
    ({"authorization": "bearer  abc "}, "abc"),
    ({"x-api-key": " abc"}, "abc"),
    ({"authorization": "Basic dTpw"}, ""),
    ({}, None),
])
def test_credentials_from_headers(headers: dict[str, str], expected: str | None) -> None:
    assert parse_credentials(headers) == expected
