"""Kafka security settings reach both client libraries: librdkafka (gateways, publishers, admin) and
aiokafka (the faust consumers of stages and sinks). The broker-side proof is
tests/integration/test_kafka_security.py; this checks the mapping and the token provider."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import faust
import pytest
from aiohttp import web

from rampart.config import KafkaConfig
from rampart.kafka import client_properties
from rampart.oauth import OidcTokenProvider, TokenError
from rampart.settings import Secret
from rampart.streaming import faust_credentials
from tests.support.certs import TestCA


def oauth(url: str = "http://127.0.0.1:1/token") -> KafkaConfig:
    return KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                       sasl_oauthbearer_token_endpoint_url=url, sasl_oauthbearer_client_id="rampart",
                       sasl_oauthbearer_client_secret=Secret("client-secret"), sasl_oauthbearer_scope="kafka")


def test_librdkafka_gets_sasl_and_tls() -> None:
    config = KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                         sasl_password=Secret("p"), ssl_ca_location="/ca.pem", ssl_certificate_location="/c.pem",
                         ssl_key_location="/k.pem", ssl_key_password=Secret("kp"))
    props = client_properties(config, "t")
    assert {k: props[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password",
                                  "ssl.ca.location", "ssl.certificate.location", "ssl.key.location",
                                  "ssl.key.password")} == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "u",
        "sasl.password": "p", "ssl.ca.location": "/ca.pem", "ssl.certificate.location": "/c.pem",
        "ssl.key.location": "/k.pem", "ssl.key.password": "kp"}


def test_librdkafka_fetches_oauth_tokens_itself() -> None:
    props = client_properties(oauth("https://idp.example/token"), "t")
    assert props["sasl.oauthbearer.method"] == "oidc"
    assert props["sasl.oauthbearer.token.endpoint.url"] == "https://idp.example/token"
    assert (props["sasl.oauthbearer.client.id"], props["sasl.oauthbearer.client.secret"]) == ("rampart",
                                                                                            "client-secret")
    assert props["sasl.oauthbearer.scope"] == "kafka"


def test_plaintext_has_no_faust_credentials() -> None:
    assert faust_credentials(KafkaConfig()) is None


def test_faust_gets_tls_with_the_configured_ca_and_client_certificate(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    client = ca.issue("rampart-client", server=False)
    credentials = faust_credentials(KafkaConfig(security_protocol="SSL", ssl_ca_location=str(ca.cert_path),
                                                ssl_certificate_location=str(client.cert),
                                                ssl_key_location=str(client.key)))
    assert isinstance(credentials, faust.SSLCredentials)
    context = credentials.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert any(c["subject"] == ((("commonName", "Rampart Test CA"),),) for c in context.get_ca_certs())


@pytest.mark.parametrize(("protocol", "expected"), [("SASL_SSL", "SASL_SSL"), ("SASL_PLAINTEXT", "SASL_PLAINTEXT")])
def test_faust_gets_sasl(protocol: str, expected: str) -> None:
    credentials = faust_credentials(KafkaConfig(security_protocol=protocol,  # type: ignore[arg-type]
                                                sasl_mechanism="SCRAM-SHA-256", sasl_username="u",
                                                sasl_password=Secret("p")))
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == expected
    assert (credentials.mechanism.value, credentials.username, credentials.password) == ("SCRAM-SHA-256", "u", "p")


def test_faust_gets_an_oauth_token_provider() -> None:
    credentials = faust_credentials(oauth())
    assert isinstance(credentials, faust.OAuthCredentials)
    assert isinstance(credentials.oauth_cb, OidcTokenProvider)
    assert credentials.protocol.value == "SASL_SSL"


class TokenEndpoint:
    """A real OIDC token endpoint on 127.0.0.1 that counts its grants."""

    def __init__(self, expires_in: int = 3600, status: int = 200) -> None:
        self.grants: list[dict[str, str]] = []
        self.expires_in = expires_in
        self.status = status

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.grants.append({k: str(v) for k, v in form.items()} | {"auth": request.headers.get("Authorization", "")})
        if self.status != 200:
            return web.Response(status=self.status, text="invalid_client")
        return web.json_response({"access_token": f"token-{len(self.grants)}", "token_type": "bearer",
                                  "expires_in": self.expires_in})


@contextlib.asynccontextmanager
async def serving(server: TokenEndpoint) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/token", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/token"
    finally:
        await runner.cleanup()


def test_token_is_fetched_once_and_reused() -> None:
    server = TokenEndpoint()

    async def scenario() -> list[str]:
        async with serving(server) as url:
            provider = OidcTokenProvider(oauth(url))
            return list(await asyncio.gather(*(provider.token() for _ in range(5))))

    assert asyncio.run(scenario()) == ["token-1"] * 5
    assert len(server.grants) == 1
    grant = server.grants[0]
    assert grant["grant_type"] == "client_credentials" and grant["scope"] == "kafka"
    assert grant["auth"].startswith("Basic ")


def test_token_is_refreshed_before_it_expires() -> None:
    server = TokenEndpoint(expires_in=1)  # shorter than the refresh margin: every call needs a fresh token

    async def scenario() -> str:
        async with serving(server) as url:
            provider = OidcTokenProvider(oauth(url))
            await provider.token()
            await asyncio.sleep(1.1)
            return await provider.token()

    assert asyncio.run(scenario()) == "token-2"


def test_refused_grant_says_what_the_endpoint_answered() -> None:
    async def scenario() -> None:
        async with serving(TokenEndpoint(status=401)) as url:
            await OidcTokenProvider(oauth(url)).token()

    with pytest.raises(TokenError, match="answered 401: invalid_client") as info:
        asyncio.run(scenario())
    assert "client-secret" not in str(info.value)
