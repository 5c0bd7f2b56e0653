"""The whole path for traces: OpenTelemetry SDK -> gateway -> validate/scrub/dedup -> OTLP sink -> Jaeger,
checked through Jaeger's query API."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.deployment import Deployment, SinkProcess
from tests.support.proxy import CuttableProxy
from tests.support.services import JAEGER_OTLP_GRPC_TARGET, JAEGER_OTLP_HTTP_URL

pytestmark = pytest.mark.e2e

SECRET_EMAIL = "jane.secret@example.com"


def make_spans(service: str, count: int) -> list[Any]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "tenant.id": "someone-else"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("e2e")
    for i in range(count):
        with tracer.start_as_current_span(f"checkout-{i}", attributes={"enduser.email": SECRET_EMAIL,
                                                                      "http.route": "/checkout"}):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def jaeger_spans(jaeger_url: str, service: str) -> list[dict[str, Any]]:
    url = f"{jaeger_url}/api/traces?service={service}&limit=1000&lookback=1h"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            data = json.load(resp)["data"] or []
    except urllib.error.HTTPError:
        return []
    return [dict(span, process=trace["processes"][span["processID"]]) for trace in data for span in trace["spans"]]


def wait_for_spans(jaeger_url: str, service: str, count: int, timeout_s: float = 90) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        spans = jaeger_spans(jaeger_url, service)
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(1)


def lag(sink: SinkProcess) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in sink.metrics().splitlines()
               if line.startswith("rampart_consumer_lag_records{"))


def start_pipeline(deployment: Deployment, sink_endpoint: str = JAEGER_OTLP_HTTP_URL,
                   protocol: str = "http") -> tuple[str, SinkProcess]:
    deployment.start_worker("validate,scrub,dedup")
    sink = deployment.start_sink("otlp", RAMPART__SINKS__OTLP__ENDPOINT=sink_endpoint,
                                 RAMPART__SINKS__OTLP__PROTOCOL=protocol,
                                 RAMPART__SINKS__INITIAL_BACKOFF_S="0.2", RAMPART__SINKS__MAX_BACKOFF_S="2",
                                 RAMPART__SINKS__CIRCUIT_OPEN_S="1")
    return deployment.start_gateway().http_url, sink


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_spans_reach_jaeger_scrubbed_deduplicated_and_labelled_with_the_tenant(deployment: Deployment,
                                                                               jaeger_url: str, protocol: str) -> None:
    endpoint = JAEGER_OTLP_HTTP_URL if protocol == "http" else JAEGER_OTLP_GRPC_TARGET
    gateway_url, _sink = start_pipeline(deployment, endpoint, protocol)
    _, token = deployment.api_key(tenant="acme")
    service = f"shop-{uuid.uuid4().hex[:8]}"
    spans = make_spans(service, 30)
    exporter = OTLPSpanExporter(endpoint=f"{gateway_url}/v1/traces", headers={"x-api-key": token})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.export(spans) is SpanExportResult.SUCCESS  # a client retry: must not double the data

    found = wait_for_spans(jaeger_url, service, 30)
    assert sorted(s["operationName"] for s in found) == sorted(f"checkout-{i}" for i in range(30))
    time.sleep(3)  # give a duplicate time to arrive, if one were coming
    assert len(jaeger_spans(jaeger_url, service)) == 30
    text = json.dumps(jaeger_spans(jaeger_url, service))
    assert SECRET_EMAIL not in text and "[REDACTED]" in text
    tags = {t["key"]: t["value"] for t in found[0]["process"]["tags"]}
    assert tags["tenant.id"] == "acme"


def test_backend_outage_loses_nothing_and_the_sink_does_not_spin(deployment: Deployment, jaeger_url: str) -> None:
    proxy = CuttableProxy(14318)
    try:
        gateway_url, sink = start_pipeline(deployment, f"http://127.0.0.1:{proxy.port}")
        _, token = deployment.api_key()
        service = f"outage-{uuid.uuid4().hex[:8]}"
        exporter = OTLPSpanExporter(endpoint=f"{gateway_url}/v1/traces", headers={"x-api-key": token})
        sent = 0
        proxy.cut()
        for _ in range(10):  # a steady stream while the backend is unreachable
            assert exporter.export(make_spans(service, 5)) is SpanExportResult.SUCCESS
            sent += 5
            time.sleep(0.5)
        metrics = sink.metrics()
        retries = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("rampart_sink_retries_total{"))
        assert 0 < retries < 200, f"{retries} retries in 5 s: the sink should back off, not spin"
        assert jaeger_spans(jaeger_url, service) == []
        deadline = time.monotonic() + 20
        while lag(sink) == 0:  # Kafka holds the backlog, and the sink says how large it is
            assert time.monotonic() < deadline, "the sink's lag gauge did not show the backlog"
            time.sleep(1)
        proxy.restore()
        found = wait_for_spans(jaeger_url, service, sent)
        assert len(found) == sent
        deadline = time.monotonic() + 30
        while lag(sink) > 0:
            assert time.monotonic() < deadline, "the sink's lag did not drain"
            time.sleep(1)
    finally:
        proxy.close()
