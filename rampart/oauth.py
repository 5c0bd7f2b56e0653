"""OAUTHBEARER tokens for the faust (aiokafka) consumers, from an OIDC client-credentials grant.

librdkafka fetches its own tokens (``sasl.oauthbearer.method=oidc``, see rampart.kafka); aiokafka asks
a token provider instead, and this is the one Rampart gives it, so both client libraries
authenticate the same way from the same settings.
"""

from __future__ import annotations

import asyncio
import base64
import time
from urllib.parse import quote_plus

import aiohttp
from aiokafka.abc import AbstractTokenProvider

from rampart.config import KafkaConfig

__all__ = ["OidcTokenProvider", "TokenError"]

# Refresh this long before the token expires, so a connection never presents an expired one.
_REFRESH_MARGIN_S = 30.0
_DEFAULT_LIFETIME_S = 300.0


class TokenError(Exception):
    """The token endpoint did not hand out a token."""


class OidcTokenProvider(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka ships no type hints
    def __init__(self, config: KafkaConfig, timeout_s: float = 10.0) -> None:
        if (config.sasl_oauthbearer_token_endpoint_url is None or config.sasl_oauthbearer_client_id is None
                or config.sasl_oauthbearer_client_secret is None):
            raise ValueError("OAUTHBEARER needs kafka.sasl_oauthbearer_token_endpoint_url, _client_id and "
                             "_client_secret")
        self._url = config.sasl_oauthbearer_token_endpoint_url
        self._form = {"grant_type": "client_credentials"}
        if config.sasl_oauthbearer_scope:
            self._form["scope"] = config.sasl_oauthbearer_scope
        # RFC 6749 2.3.1: both parts are form-encoded before they are joined and base64-encoded.
        client_id, secret = config.sasl_oauthbearer_client_id, config.sasl_oauthbearer_client_secret.reveal()
        pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
        self._headers = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._token: str | None = None
        self._refresh_at = 0.0
        # Connections to several brokers ask at once; one request serves them all.
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or time.monotonic() >= self._refresh_at:
                self._token, lifetime = await self._fetch()
                self._refresh_at = time.monotonic() + max(1.0, lifetime - _REFRESH_MARGIN_S)
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            try:
                async with session.post(self._url, data=self._form, headers=self._headers) as response:
                    if response.status != 200:
                        # The endpoint's own words help the operator; they never contain our secret.
                        text = (await response.text())[:200]
                        raise TokenError(f"token endpoint {self._url} answered {response.status}: {text}")
                    body = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TokenError(f"token endpoint {self._url} unreachable: {exc}") from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenError(f"token endpoint {self._url} answered without an access_token")
        lifetime = body.get("expires_in", _DEFAULT_LIFETIME_S)
        return token, float(lifetime) if isinstance(lifetime, int | float) else _DEFAULT_LIFETIME_S
