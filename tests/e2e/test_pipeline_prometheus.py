"""The whole path for metrics: OpenTelemetry SDK -> gateway -> stages -> Prometheus remote write,
checked through Prometheus' HTTP API."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource

from tests.support.deployment import Deployment

pytestmark = pytest.mark.e2e


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prometheus_url}/api/v1/query?query={urllib.parse.quote(promql)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        result: list[dict[str, Any]] = json.load(resp)["data"]["result"]
        return result


def test_metrics_reach_prometheus_with_prometheus_names(deployment: Deployment, prometheus_url: str) -> None:
    deployment.start_worker("validate,scrub,dedup")
    deployment.start_sink("prometheus", RAMPART__SINKS__PROMETHEUS__ENDPOINT=f"{prometheus_url}/api/v1/write")
    gateway = deployment.start_gateway()
    _, token = deployment.api_key(tenant="acme")

    service = f"cart-{uuid.uuid4().hex[:8]}"
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=Resource.create({"service.name": service, "user.email": "jane@example.com"}),
                             metric_readers=[reader])
    meter = provider.get_meter("e2e")
    orders = meter.create_counter("orders", unit="{order}")
    latency = meter.create_histogram("checkout.duration", unit="s")
    for i in range(10):
        orders.add(1, {"region": "eu"})
        latency.record(0.05 * i, {"region": "eu"})
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    exporter = OTLPMetricExporter(endpoint=f"{gateway.http_url}/v1/metrics", headers={"x-api-key": token})
    assert exporter.export(data) is MetricExportResult.SUCCESS

    deadline = time.monotonic() + 90
    while not query(prometheus_url, f'orders_total{{job="{service}"}}'):
        assert time.monotonic() < deadline, "the counter did not reach Prometheus within 90 s"
        time.sleep(1)
    (counter,) = query(prometheus_url, f'orders_total{{job="{service}"}}')
    assert float(counter["value"][1]) == 10 and counter["metric"]["region"] == "eu"
    assert counter["metric"]["tenant"] == "acme"
    (count,) = query(prometheus_url, f'checkout_duration_seconds_count{{job="{service}"}}')
    assert float(count["value"][1]) == 10
    buckets = query(prometheus_url, f'checkout_duration_seconds_bucket{{job="{service}"}}')
    assert {b["metric"]["le"] for b in buckets} >= {"+Inf"}
    (info,) = query(prometheus_url, f'target_info{{job="{service}"}}')
    assert info["metric"]["tenant_id"] == "acme"
    assert "jane@example.com" not in json.dumps(info)  # scrubbed before it left the pipeline
