"""Every Kafka security mode Rampart offers works end to end on the real broker: spans sent to a gateway
reach the backend through a worker and a sink, every one of them talking to Kafka over SASL/SCRAM over
TLS, OAUTHBEARER (OIDC client credentials) over TLS, or mutual TLS, with their secrets read from files.

The local broker (scripts/services) listens with SASL_SSL on 9094 and mutual TLS on 9095.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from rampart.config import KafkaConfig
from rampart.kafka import admin_client
from rampart.settings import Secret
from tests.integration.ingest import otlp_data
from tests.support import services
from tests.support.backend import CapturingBackend
from tests.support.certs import TestCA
from tests.support.deployment import Deployment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def security(kafka_bootstrap: str) -> services.KafkaSecurity:
    return services.require_kafka_security()


@pytest.fixture(scope="module")
def scram_user(kafka_bootstrap: str) -> Iterator[tuple[str, str]]:
    """A SCRAM user (both hash sizes) added through the admin API, removed afterwards."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    user, password = f"rampart-test-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    mechanisms = (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512)
    for m in mechanisms:  # the broker takes one change per user and request
        upsert = UserScramCredentialUpsertion(user, ScramCredentialInfo(m, 4096), password.encode())
        admin.alter_user_scram_credentials([upsert])[user].result(timeout=30)
    yield user, password
    for m in mechanisms:
        admin.alter_user_scram_credentials([UserScramCredentialDeletion(user, m)])[user].result(timeout=30)


class TokenEndpoint:
    """An OIDC token endpoint on 127.0.0.1 handing out unsigned JWTs (the local broker accepts those) to
    one client, and recording which HTTP client asked: librdkafka and aiokafka must both come."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        expected = "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self.user_agents: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                endpoint.user_agents.append(self.headers.get("User-Agent", ""))
                if self.headers.get("Authorization") != expected:
                    self._answer(401, {"error": "invalid_client"})
                    return
                self._answer(200, {"access_token": unsigned_jwt("rampart-oauth"), "token_type": "bearer",
                                   "expires_in": 3600})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def unsigned_jwt(subject: str) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return f"{part({'alg': 'none'})}.{part({'sub': subject, 'iat': now, 'exp': now + 3600})}."


def secret_file(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def run_pipeline(deployment: Deployment, backend: CapturingBackend, kafka_env: dict[str, str]) -> None:
    """Gateway, fused worker and OTLP sink all on the secured listener; 15 spans must reach the backend."""
    deployment.start_worker("validate,scrub,dedup", **kafka_env)
    deployment.start_sink("otlp", RAMPART__SINKS__OTLP__ENDPOINT=backend.endpoint, **kafka_env)
    gateway = deployment.start_gateway(**kafka_env)
    _, token = deployment.api_key()
    exporter = OTLPSpanExporter(endpoint=f"{gateway.http_url}/v1/traces", headers={"x-api-key": token})
    for _ in range(3):
        assert exporter.export(otlp_data.spans(5)) is SpanExportResult.SUCCESS
    deadline = time.monotonic() + 60
    while len(backend.arrivals) < 15:
        assert time.monotonic() < deadline, f"only {len(backend.arrivals)} of 15 spans reached the backend"
        time.sleep(0.2)
    assert len(backend.arrivals) == 15


def test_scram_over_tls(deployment: Deployment, backend: CapturingBackend, security: services.KafkaSecurity,
                        scram_user: tuple[str, str], tmp_path: Path) -> None:
    user, password = scram_user
    run_pipeline(deployment, backend, {
        "RAMPART__KAFKA__BOOTSTRAP_SERVERS": security.sasl_ssl_bootstrap,
        "RAMPART__KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "RAMPART__KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "RAMPART__KAFKA__SASL_USERNAME": user,
        "RAMPART__KAFKA__SASL_PASSWORD_FILE": secret_file(tmp_path, "kafka-password", password),
        "RAMPART__KAFKA__SSL_CA_LOCATION": str(security.ca),
    })


def test_oauthbearer_over_tls(deployment: Deployment, backend: CapturingBackend,
                              security: services.KafkaSecurity, tmp_path: Path) -> None:
    client_secret = secrets.token_urlsafe(18)
    endpoint = TokenEndpoint("rampart", client_secret)
    try:
        run_pipeline(deployment, backend, {
            "RAMPART__KAFKA__BOOTSTRAP_SERVERS": security.sasl_ssl_bootstrap,
            "RAMPART__KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "RAMPART__KAFKA__SASL_MECHANISM": "OAUTHBEARER",
            "RAMPART__KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": endpoint.url,
            "RAMPART__KAFKA__SASL_OAUTHBEARER_CLIENT_ID": "rampart",
            "RAMPART__KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET_FILE": secret_file(tmp_path, "oidc", client_secret),
            "RAMPART__KAFKA__SSL_CA_LOCATION": str(security.ca),
        })
    finally:
        endpoint.close()
    # Both client libraries fetched their own tokens: librdkafka (gateway, producers) and aiokafka (consumers).
    assert any("aiohttp" in agent for agent in endpoint.user_agents), endpoint.user_agents
    assert any("aiohttp" not in agent for agent in endpoint.user_agents), endpoint.user_agents


def test_mutual_tls(deployment: Deployment, backend: CapturingBackend, security: services.KafkaSecurity) -> None:
    run_pipeline(deployment, backend, {
        "RAMPART__KAFKA__BOOTSTRAP_SERVERS": security.mtls_bootstrap,
        "RAMPART__KAFKA__SECURITY_PROTOCOL": "SSL",
        "RAMPART__KAFKA__SSL_CA_LOCATION": str(security.ca),
        "RAMPART__KAFKA__SSL_CERTIFICATE_LOCATION": str(security.client_cert),
        "RAMPART__KAFKA__SSL_KEY_LOCATION": str(security.client_key),
    })


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_other_sasl_mechanisms(mechanism: str, security: services.KafkaSecurity,
                               scram_user: tuple[str, str]) -> None:
    user, password = (security.plain_username, security.plain_password) if mechanism == "PLAIN" else scram_user
    config = KafkaConfig(bootstrap_servers=security.sasl_ssl_bootstrap, security_protocol="SASL_SSL",
                         sasl_mechanism=mechanism,  # type: ignore[arg-type]
                         sasl_username=user, sasl_password=Secret(password), ssl_ca_location=str(security.ca))
    assert admin_client(config, "test").list_topics(timeout=15).topics


@pytest.mark.parametrize("case", ["wrong password", "no client certificate", "unknown CA"])
def test_the_broker_refuses_clients_without_valid_credentials(case: str, security: services.KafkaSecurity,
                                                             scram_user: tuple[str, str], tmp_path: Path) -> None:
    if case == "wrong password":
        config = KafkaConfig(bootstrap_servers=security.sasl_ssl_bootstrap, security_protocol="SASL_SSL",
                             sasl_mechanism="SCRAM-SHA-512", sasl_username=scram_user[0],
                             sasl_password=Secret("not-the-password"), ssl_ca_location=str(security.ca))
    elif case == "no client certificate":
        config = KafkaConfig(bootstrap_servers=security.mtls_bootstrap, security_protocol="SSL",
                             ssl_ca_location=str(security.ca))
    else:  # Rampart must not trust a broker whose certificate its CA did not sign
        config = KafkaConfig(bootstrap_servers=security.mtls_bootstrap, security_protocol="SSL",
                             ssl_ca_location=str(TestCA(tmp_path).cert_path),
                             ssl_certificate_location=str(security.client_cert),
                             ssl_key_location=str(security.client_key))
    with pytest.raises(KafkaException):
        admin_client(config, "test").list_topics(timeout=5)
