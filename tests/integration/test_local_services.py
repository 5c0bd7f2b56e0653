"""The local Redis, Prometheus and Jaeger are the real things, configured as later stages need them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
import redis
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.support.services import JAEGER_OTLP_HTTP_URL

pytestmark = pytest.mark.integration


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        result: dict[str, object] = json.load(resp)
        return result


def test_redis_keeps_values_with_expiry(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"test:{uuid.uuid4()}"
    client.set(key, b"v", px=60_000)
    assert client.get(key) == b"v"
    assert 0 < client.pttl(key) <= 60_000
    client.delete(key)


def test_prometheus_accepts_remote_write(prometheus_url: str) -> None:
    flags = get_json(f"{prometheus_url}/api/v1/status/flags")["data"]
    assert isinstance(flags, dict) and flags["web.enable-remote-write-receiver"] == "true"


def test_jaeger_stores_spans_sent_over_otlp(jaeger_url: str) -> None:
    service = f"rampart-test-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{JAEGER_OTLP_HTTP_URL}/v1/traces")))
    with provider.get_tracer("test").start_as_current_span("probe") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            found = get_json(f"{jaeger_url}/api/traces/{trace_id}")
        except urllib.error.HTTPError:
            time.sleep(0.5)
            continue
        spans = found["data"][0]["spans"]  # type: ignore[index]
        assert [s["operationName"] for s in spans] == ["probe"]
        return
    pytest.fail(f"trace {trace_id} did not appear in Jaeger within 30 s")
