"""Realistic OTLP request bodies for benchmarks: a service graph's spans with the attributes real
instrumentation sets (HTTP server and client spans, database calls, events on errors)."""

from __future__ import annotations

import gzip
import random
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SERVICES = ["frontend", "checkout", "cart", "payment", "shipping", "catalog", "recommendation", "email"]
ROUTES = ["/api/cart", "/api/checkout", "/api/products/{id}", "/api/recommendations", "/api/ship", "/health"]


def _kv(key: str, value: str | int) -> KeyValue:
    kv = KeyValue(key=key)
    if isinstance(value, int):
        kv.value.int_value = value
    else:
        kv.value.string_value = value
    return kv


def trace_request(spans: int, rng: random.Random, services: int = 4) -> ExportTraceServiceRequest:
    """One export request of ``spans`` spans spread over ``services`` resources, as an SDK batch would be."""
    request = ExportTraceServiceRequest()
    per_service = max(1, spans // services)
    now = 1_764_000_000_000_000_000
    made = 0
    for s in range(services):
        rs = request.resource_spans.add()
        service = SERVICES[(s + rng.randrange(len(SERVICES))) % len(SERVICES)]
        rs.resource.attributes.extend([
            _kv("service.name", service), _kv("service.version", "1.42.0"),
            _kv("deployment.environment", "production"), _kv("host.name", f"ip-10-0-{s}-{rng.randrange(255)}"),
            _kv("k8s.namespace.name", "shop"), _kv("k8s.pod.name", f"{service}-7d9f8b6c4-{rng.randrange(99999):05d}"),
            _kv("telemetry.sdk.language", "python"), _kv("telemetry.sdk.name", "opentelemetry"),
            _kv("telemetry.sdk.version", "1.45.2")])
        ss = rs.scope_spans.add()
        ss.scope.name, ss.scope.version = "opentelemetry.instrumentation.flask", "0.66b2"
        count = per_service if s < services - 1 else spans - made
        for _ in range(count):
            span = ss.spans.add()
            span.trace_id = rng.randbytes(16)
            span.span_id = rng.randbytes(8)
            span.parent_span_id = rng.randbytes(8) if rng.random() < 0.8 else b""
            route = rng.choice(ROUTES)
            span.name = f"GET {route}"
            span.kind = rng.choice([Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL])
            start = now + rng.randrange(10**9)
            span.start_time_unix_nano = start
            span.end_time_unix_nano = start + int(rng.lognormvariate(15, 1))
            code = 500 if rng.random() < 0.02 else 200
            span.attributes.extend([
                _kv("http.request.method", "GET"), _kv("url.path", route.replace("{id}", str(rng.randrange(10**6)))),
                _kv("http.route", route), _kv("http.response.status_code", code),
                _kv("server.address", f"{service}.shop.svc.cluster.local"), _kv("server.port", 8080),
                _kv("network.protocol.version", "1.1"), _kv("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64)"),
                _kv("client.address", f"10.0.{rng.randrange(255)}.{rng.randrange(255)}")])
            if rng.random() < 0.2:
                span.attributes.extend([_kv("db.system", "postgresql"),
                                        _kv("db.query.text", "SELECT id, price FROM products WHERE id = $1")])
            if code == 500:
                span.status.code = Status.STATUS_CODE_ERROR
                event = span.events.add(name="exception", time_unix_nano=start + 1000)
                event.attributes.extend([_kv("exception.type", "TimeoutError"),
                                         _kv("exception.message", "upstream timed out after 2s")])
        made += count
    return request


def bodies(spans: int, count: int, seed: int, compress: bool) -> list[bytes]:
    """``count`` distinct serialized requests (gzip-compressed when asked) of ``spans`` spans each."""
    rng = random.Random(seed)
    out = [trace_request(spans, rng).SerializeToString() for _ in range(count)]
    return [gzip.compress(b, compresslevel=6) for b in out] if compress else out


def shift_to_now(request: ExportTraceServiceRequest) -> None:
    """The generator's timestamps are from one fixed day; validate keeps only the last 24 h."""
    shift = time.time_ns() - 1_764_000_000_500_000_000
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.start_time_unix_nano += shift
                span.end_time_unix_nano += shift
                for event in span.events:
                    event.time_unix_nano += shift
