"""The official OpenTelemetry SDK exporters send through the gateway; what lands in Kafka is exactly what
they sent, signed, and labelled with the tenant and principal of the key that sent it."""

from __future__ import annotations

import gzip
import json

import pytest
from grpc import Compression as GrpcCompression
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from schemas.envelope import PayloadFormat, Signal, decode
from tests.integration.ingest import otlp_data
from tests.support.deployment import Deployment, post, read_raw

pytestmark = pytest.mark.integration


def check_envelope(deployment: Deployment, signal: Signal, expected_payload: bytes, key_id: str) -> None:
    (envelope,) = deployment.read_envelopes(signal, count=1)
    deployment.verifier().verify(envelope)
    assert envelope.payload == expected_payload
    assert envelope.tenant == "acme" and envelope.principal == key_id
    assert envelope.signal is signal and envelope.stages == ("gateway",)


@pytest.mark.parametrize("compression", [HttpCompression.NoCompression, HttpCompression.Gzip])
def test_http_exporters_traces_metrics_logs(deployment: Deployment, compression: HttpCompression) -> None:
    gateway = deployment.start_gateway()
    key_id, token = deployment.api_key()
    headers = {"Authorization": f"Bearer {token}"}

    spans = otlp_data.spans(25)
    exporter = HttpSpanExporter(endpoint=f"{gateway.http_url}/v1/traces", headers=headers, compression=compression)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    check_envelope(deployment, Signal.TRACES, encode_spans(spans).SerializeToString(), key_id)

    metrics = otlp_data.metrics()
    metric_exporter = HttpMetricExporter(endpoint=f"{gateway.http_url}/v1/metrics", headers=headers,
                                         compression=compression)
    assert metric_exporter.export(metrics) is MetricExportResult.SUCCESS
    check_envelope(deployment, Signal.METRICS, encode_metrics(metrics).SerializeToString(), key_id)

    logs = otlp_data.log_records(10)
    log_exporter = HttpLogExporter(endpoint=f"{gateway.http_url}/v1/logs", headers=headers, compression=compression)
    assert log_exporter.export(logs) is LogRecordExportResult.SUCCESS  # type: ignore[arg-type]
    check_envelope(deployment, Signal.LOGS, encode_logs(logs).SerializeToString(), key_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("compression", [GrpcCompression.NoCompression, GrpcCompression.Gzip])
def test_grpc_exporters_traces_metrics_logs(deployment: Deployment, compression: GrpcCompression) -> None:
    gateway = deployment.start_gateway()
    key_id, token = deployment.api_key()
    headers = {"x-api-key": token}
    common = {"endpoint": gateway.grpc_target, "insecure": True, "headers": headers, "compression": compression}

    spans = otlp_data.spans(40)
    assert GrpcSpanExporter(**common).export(spans) is SpanExportResult.SUCCESS
    check_envelope(deployment, Signal.TRACES, encode_spans(spans).SerializeToString(), key_id)

    metrics = otlp_data.metrics()
    assert GrpcMetricExporter(**common).export(metrics) is MetricExportResult.SUCCESS
    check_envelope(deployment, Signal.METRICS, encode_metrics(metrics).SerializeToString(), key_id)

    logs = otlp_data.log_records(5)
    assert GrpcLogExporter(**common).export(logs) is LogRecordExportResult.SUCCESS  # type: ignore[arg-type]
    check_envelope(deployment, Signal.LOGS, encode_logs(logs).SerializeToString(), key_id)  # type: ignore[arg-type]


def test_otlp_json_over_http_is_kept_as_json(deployment: Deployment) -> None:
    gateway = deployment.start_gateway()
    key_id, token = deployment.api_key()
    body = json.dumps({"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "cart"}}]}, "scopeSpans": [{"spans": [
            {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "checkout",
             "kind": 2, "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000"}]}]}]})
    status, headers, answer = post(f"{gateway.http_url}/v1/traces", gzip.compress(body.encode()),
                                   {"Content-Type": "application/json", "Content-Encoding": "gzip",
                                    "Authorization": f"Bearer {token}"})
    assert (status, answer) == (200, b"{}")
    assert headers["Content-Type"].startswith("application/json")
    (envelope,) = deployment.read_envelopes(Signal.TRACES, count=1)
    deployment.verifier().verify(envelope)
    assert envelope.payload_format is PayloadFormat.OTLP_JSON and envelope.payload == body.encode()
    assert envelope.principal == key_id


def test_tenant_comes_from_the_key_never_from_the_payload(deployment: Deployment) -> None:
    gateway = deployment.start_gateway()
    key, token = deployment.registry.create("tenant-a", [Signal.TRACES], "")
    deployment.wait_for_key_table()
    spans = otlp_data.spans(3, service="spoof")
    # The payload claims another tenant in its resource; the envelope must still say tenant-a.
    request = encode_spans(spans)
    request.resource_spans[0].resource.attributes.add(key="tenant.id").value.string_value = "tenant-b"
    status, _, _ = post(f"{gateway.http_url}/v1/traces", request.SerializeToString(),
                        {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {token}"})
    assert status == 200
    (envelope,) = deployment.read_envelopes(Signal.TRACES, count=1)
    assert envelope.tenant == "tenant-a" and envelope.principal == key.key_id


def test_oversized_request_is_split_into_complete_envelopes(deployment: Deployment) -> None:
    # A 1 MiB Kafka record limit (the broker allows 10): a request of several MiB must become several
    # envelopes, each a complete OTLP request that keeps its resource, together holding every span once.
    gateway = deployment.start_gateway(RAMPART__KAFKA__MAX_MESSAGE_BYTES=str(1024 * 1024))
    _, token = deployment.api_key()
    request = encode_spans([s for i in range(6) for s in otlp_data.spans(2000, service=f"svc-{i}")])
    body = request.SerializeToString()
    assert len(body) > 1.5 * 1024 * 1024
    status, _, _ = post(f"{gateway.http_url}/v1/traces", body,
                        {"Content-Type": "application/x-protobuf", "x-api-key": token})
    assert status == 200
    # 200 is answered only after Kafka acknowledged every part, so all of them are there now.
    envelopes = [decode(v) for v in read_raw(deployment.kafka_bootstrap, deployment.topics.raw(Signal.TRACES), 10)]
    assert len(envelopes) >= 2
    seen = []
    for envelope in envelopes:
        deployment.verifier().verify(envelope)
        assert len(envelope.payload) <= 1024 * 1024
        assert envelope.attributes["rampart.split"].endswith(f"/{len(envelopes)}")
        for rs in ExportTraceServiceRequest.FromString(envelope.payload).resource_spans:
            assert "service.name" in [a.key for a in rs.resource.attributes]
            seen += [(s.trace_id, s.span_id) for ss in rs.scope_spans for s in ss.spans]
    sent = [(s.trace_id, s.span_id) for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert sorted(seen) == sorted(sent) and len(seen) == 12000
