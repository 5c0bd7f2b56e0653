"""A backend that refuses batches for good: they land in the sink's DLQ topic with its answer, and
`rampart dlq replay` delivers them once the backend accepts."""

from __future__ import annotations

import subprocess
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult

from schemas.envelope import decode
from tests.integration.ingest import otlp_data
from tests.support.backend import CapturingBackend
from tests.support.deployment import RAMPART, Deployment

pytestmark = pytest.mark.e2e


def dlq_records(deployment: Deployment) -> list[tuple[dict[str, bytes], int]]:
    """(headers, spans in the batch) of every record in the otlp sink's DLQ topic."""
    topic = deployment.topics.dlq("otlp")
    c = Consumer({"bootstrap.servers": deployment.kafka_bootstrap, "group.id": f"r{time.time_ns()}",
                  "auto.offset.reset": "earliest"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        end = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[tuple[dict[str, bytes], int]] = []
        deadline = time.monotonic() + 10
        while len(out) < end and time.monotonic() < deadline:
            message = c.poll(0.5)
            if message is not None and message.error() is None:
                payload = ExportTraceServiceRequest.FromString(decode(message.value()).payload)
                spans = sum(len(ss.spans) for rs in payload.resource_spans for ss in rs.scope_spans)
                out.append((dict(message.headers() or []), spans))
        return out
    finally:
        c.close()


def test_refused_batches_go_to_the_dlq_and_replay_delivers_them(deployment: Deployment,
                                                                backend: CapturingBackend) -> None:
    backend.status = 400
    deployment.start_worker("validate,scrub,dedup")
    sink = deployment.start_sink("otlp", RAMPART__SINKS__OTLP__ENDPOINT=backend.endpoint)
    gateway = deployment.start_gateway()
    _, token = deployment.api_key()
    exporter = OTLPSpanExporter(endpoint=f"{gateway.http_url}/v1/traces", headers={"x-api-key": token})
    for _ in range(2):
        assert exporter.export(otlp_data.spans(5)) is SpanExportResult.SUCCESS

    deadline = time.monotonic() + 60
    records = dlq_records(deployment)
    while sum(spans for _, spans in records) < 10:
        assert time.monotonic() < deadline, "refused batches did not reach the DLQ topic"
        time.sleep(0.5)
        records = dlq_records(deployment)
    assert {h["rampart.dlq.answer"] for h, _ in records} == {b"payload refused by test backend"}
    assert all(h["rampart.dlq.reason"].endswith(b"answered 400") for h, _ in records)
    # A 400 is final: never retried. (A combined export that is refused is split, so each batch is
    # tried alone once after at most one combined attempt.)
    retries = [line for line in sink.metrics().splitlines() if line.startswith("rampart_sink_retries_total{")]
    assert all(line.endswith(" 0.0") for line in retries)
    assert len(records) <= backend.refused <= 2 * len(records)

    backend.status = None  # the cause is fixed
    result = subprocess.run([RAMPART, "dlq", "replay", "--sink", "otlp"], env=deployment.env(
        RAMPART__SINKS__OTLP__ENDPOINT=backend.endpoint), capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert f"{len(records)} batches delivered" in result.stdout
    assert sum(len(ss.spans) for r in backend.received for rs in r.resource_spans for ss in rs.scope_spans) == 10
