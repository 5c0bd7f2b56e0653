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
from opentelemetry.sdk.metrics import MeterProvider, TraceBasedExemplarFilter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from tests.support.deployment import Deployment, GatewayProcess

pytestmark = pytest.mark.e2e


def get(prometheus_url: str, path: str, **params: str) -> Any:
    with urllib.request.urlopen(f"{prometheus_url}{path}?{urllib.parse.urlencode(params)}", timeout=10) as resp:
        return json.load(resp)["data"]


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = get(prometheus_url, "/api/v1/query", query=promql)["result"]
    return result


@pytest.fixture(scope="module")
def pipeline(module_deployment: Deployment, prometheus_url: str) -> tuple[GatewayProcess, str]:
    module_deployment.start_worker("validate,scrub,dedup")
    module_deployment.start_sink("prometheus", RAMPART__SINKS__PROMETHEUS__ENDPOINT=f"{prometheus_url}/api/v1/write")
    gateway = module_deployment.start_gateway()
    _, token = module_deployment.api_key(tenant="acme")
    return gateway, token


def send(gateway: GatewayProcess, token: str, data: MetricsData | None) -> None:
    assert data is not None
    exporter = OTLPMetricExporter(endpoint=f"{gateway.http_url}/v1/metrics", headers={"x-api-key": token})
    assert exporter.export(data) is MetricExportResult.SUCCESS


def test_metrics_reach_prometheus_with_prometheus_names(pipeline: tuple[GatewayProcess, str],
                                                         prometheus_url: str) -> None:
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
    send(*pipeline, data)

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


def test_exemplars_reach_prometheus_on_their_bucket_and_counter(pipeline: tuple[GatewayProcess, str],
                                                                prometheus_url: str) -> None:
    features = get(prometheus_url, "/api/v1/status/flags").get("enable-feature", "")
    if "exemplar-storage" not in features:
        pytest.fail(f"Prometheus at {prometheus_url} runs without --enable-feature=exemplar-storage (its features: "
                    f"{features!r}), so it drops every exemplar it is sent; restart it with the flag: "
                    "`scripts/services down prometheus && scripts/services up prometheus`", pytrace=False)
    service = f"pay-{uuid.uuid4().hex[:8]}"
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=Resource.create({"service.name": service}), metric_readers=[reader],
                             exemplar_filter=TraceBasedExemplarFilter())
    meter = provider.get_meter("e2e")
    payments = meter.create_counter("payments", unit="{payment}")
    latency = meter.create_histogram("payment.duration", unit="s")
    tracer = TracerProvider().get_tracer("e2e")
    started = time.time()
    with tracer.start_as_current_span("fast payment") as fast:
        payments.add(1)
        latency.record(0.3)   # default bounds 0, 5, 10, 25, 50, ...: the (0, 5] bucket
    with tracer.start_as_current_span("slow payment") as slow:
        latency.record(30.0)  # the (25, 50] bucket
    data = reader.get_metrics_data()
    provider.shutdown()
    send(*pipeline, data)

    ids = {name: (f"{span.get_span_context().trace_id:032x}", f"{span.get_span_context().span_id:016x}")
           for name, span in (("fast", fast), ("slow", slow))}
    window = {"start": str(started - 60), "end": str(time.time() + 60)}
    deadline = time.monotonic() + 90
    while len(found := get(prometheus_url, "/api/v1/query_exemplars", query=f'{{job="{service}"}}', **window)) < 3:
        assert time.monotonic() < deadline, f"3 series with exemplars expected within 90 s, Prometheus has {found}"
        time.sleep(1)
    got = {(s["seriesLabels"]["__name__"], s["seriesLabels"].get("le")):
           [(e["labels"]["trace_id"], e["labels"]["span_id"], float(e["value"])) for e in s["exemplars"]]
           for s in found}
    assert got == {
        ("payments_total", None): [(*ids["fast"], 1.0)],
        ("payment_duration_seconds_bucket", "5.0"): [(*ids["fast"], 0.3)],
        ("payment_duration_seconds_bucket", "50.0"): [(*ids["slow"], 30.0)],
    }
    stamps = [e["timestamp"] for s in found for e in s["exemplars"]]
    assert all(started - 1 <= t <= time.time() for t in stamps), f"exemplar timestamps {stamps} not from this run"
