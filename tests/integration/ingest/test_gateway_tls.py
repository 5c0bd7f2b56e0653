"""TLS and mutual TLS on both listeners, with certificates the test makes itself."""

from __future__ import annotations

import ssl
import urllib.error
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.ingest import otlp_data
from tests.support.certs import Issued, TestCA
from tests.support.deployment import Deployment, GatewayProcess, post

pytestmark = pytest.mark.integration

TRACES = encode_spans(otlp_data.spans(3)).SerializeToString()


def tls_env(server: Issued, client_ca: Path | None = None, min_version: str = "TLSv1.2") -> dict[str, str]:
    env = {"RAMPART__GATEWAY__TLS__CERT_FILE": str(server.cert), "RAMPART__GATEWAY__TLS__KEY_FILE": str(server.key),
           "RAMPART__GATEWAY__TLS__MIN_VERSION": min_version}
    if client_ca is not None:
        env["RAMPART__GATEWAY__TLS__CLIENT_CA_FILE"] = str(client_ca)
    return env


def client_context(ca: TestCA, client: Issued | None = None, max_version: ssl.TLSVersion | None = None
                   ) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    if max_version is not None:
        context.maximum_version = max_version
    return context


def send(gateway: GatewayProcess, token: str, context: ssl.SSLContext | None) -> int:
    return post(f"{gateway.http_url}/v1/traces", TRACES,
                {"Content-Type": "application/x-protobuf", "x-api-key": token}, context=context)[0]


def test_tls_on_both_listeners(deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets these variables replace the exporter's own certificate_file; a user pointing an
    # exporter at a private CA would unset them too.
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    ca = TestCA(tmp_path / "pki")
    gateway = deployment.start_gateway(**tls_env(ca.issue("gateway", server=True)))
    _, token = deployment.api_key()

    assert send(gateway, token, client_context(ca)) == 200
    exporter = HttpSpanExporter(endpoint=f"{gateway.http_url}/v1/traces", headers={"x-api-key": token},
                                certificate_file=str(ca.cert_path))
    assert exporter.export(otlp_data.spans(4)) is SpanExportResult.SUCCESS
    grpc_exporter = GrpcSpanExporter(endpoint=gateway.grpc_target, headers={"x-api-key": token},
                                     credentials=grpc.ssl_channel_credentials(ca.cert_path.read_bytes()))
    assert grpc_exporter.export(otlp_data.spans(4)) is SpanExportResult.SUCCESS

    # Plain text to a TLS listener gets no OTLP answer at all.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        post(f"http://127.0.0.1:{gateway.http_port}/v1/traces", TRACES, {"x-api-key": token})
    with grpc.insecure_channel(gateway.grpc_target) as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(
            TRACES, metadata=(("x-api-key", token),), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def test_weak_protocol_versions_are_refused(deployment: Deployment, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    gateway = deployment.start_gateway(**tls_env(ca.issue("gateway", server=True), min_version="TLSv1.3"))
    _, token = deployment.api_key()
    with pytest.raises(urllib.error.URLError, match=r"(?i)version|alert|handshake|EOF"):
        send(gateway, token, client_context(ca, max_version=ssl.TLSVersion.TLSv1_2))
    assert send(gateway, token, client_context(ca)) == 200


def test_mutual_tls_requires_a_certificate_from_the_configured_ca(deployment: Deployment, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    stranger_ca = TestCA(tmp_path / "other", name="Someone Else's CA")
    gateway = deployment.start_gateway(**tls_env(ca.issue("gateway", server=True), client_ca=ca.cert_path))
    _, token = deployment.api_key()

    assert send(gateway, token, client_context(ca, ca.issue("client", server=False))) == 200
    for client in (None, stranger_ca.issue("intruder", server=False)):
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            send(gateway, token, client_context(ca, client))

    good = ca.issue("grpc-client", server=False)
    credentials = grpc.ssl_channel_credentials(ca.cert_path.read_bytes(), good.key.read_bytes(),
                                               good.cert.read_bytes())
    exporter = GrpcSpanExporter(endpoint=gateway.grpc_target, headers={"x-api-key": token}, credentials=credentials)
    assert exporter.export(otlp_data.spans(2)) is SpanExportResult.SUCCESS
    bare = grpc.ssl_channel_credentials(ca.cert_path.read_bytes())
    with grpc.secure_channel(gateway.grpc_target, bare) as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(
            TRACES, metadata=(("x-api-key", token),), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
