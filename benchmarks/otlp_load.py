"""Realistic OTLP request bodies for benchmarks: a service graph's spans with the attributes real
instrumentation sets (HTTP server and client spans, database calls, events on errors), and the
metrics those services export (request-duration histograms, counters, gauges)."""

from __future__ import annotations

import gzip
import random
import time

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
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


METHODS = ["GET", "POST", "PUT", "DELETE"]
STATUS_CODES = [200, 201, 404, 500, 503]
# Ten bounds, eleven buckets: about what SDK views configure for request durations.
DURATION_BOUNDS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]


def _http_attributes(j: int) -> list[KeyValue]:
    """The ``j``-th combination of route, method and status: the same ``j`` is the same series in every export."""
    return [_kv("http.route", ROUTES[j % len(ROUTES)]), _kv("http.request.method", METHODS[j // len(ROUTES) % 4]),
            _kv("http.response.status_code", STATUS_CODES[j // (len(ROUTES) * 4) % 5]),
            _kv("server.port", 8080 + j // (len(ROUTES) * 4 * 5))]


def metrics_request(points: int, seq: int, at_ns: int, start_ns: int, instance: str,
                    rng: random.Random, services: int = 4) -> ExportMetricsServiceRequest:
    """Export number ``seq`` of a periodic metrics reader in each of ``services`` services: ``points`` data
    points, every one its own series and cumulative since ``start_ns``, stamped ``at_ns``. Per service about
    40 % request-duration histograms (ten bounds, one exemplar each), 30 % monotonic counters, 15 %
    in-flight gauges as non-monotonic sums, 15 % memory and CPU gauges. Successive ``seq`` give the same
    series with growing counts, as successive exports of one process would."""
    request = ExportMetricsServiceRequest()
    made = 0
    for s in range(services):
        count = points // services if s < services - 1 else points - made
        made += count
        service = SERVICES[s % len(SERVICES)]
        rm = request.resource_metrics.add()
        rm.resource.attributes.extend([
            _kv("service.name", service), _kv("service.namespace", "shop"), _kv("service.version", "1.42.0"),
            _kv("service.instance.id", f"{service}-{instance}"), _kv("deployment.environment", "production"),
            _kv("host.name", f"ip-10-0-{s}-17"), _kv("k8s.namespace.name", "shop"),
            _kv("telemetry.sdk.language", "python"), _kv("telemetry.sdk.version", "1.45.2")])
        sm = rm.scope_metrics.add()
        sm.scope.name, sm.scope.version = "opentelemetry.instrumentation.flask", "0.66b2"
        histograms, counters, in_flight = round(count * 0.4), round(count * 0.3), round(count * 0.15)
        gauges = count - histograms - counters - in_flight

        duration = sm.metrics.add(name="http.server.request.duration", unit="s",
                                  description="Duration of HTTP server requests.")
        duration.histogram.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        for j in range(histograms):
            h = duration.histogram.data_points.add(start_time_unix_nano=start_ns, time_unix_nano=at_ns)
            h.attributes.extend(_http_attributes(j))
            h.explicit_bounds.extend(DURATION_BOUNDS_S)
            # Growing with seq in every bucket, so each export's cumulative counts follow the last one's.
            h.bucket_counts.extend((seq + 1) * (1 + (j + b) % 7) for b in range(len(DURATION_BOUNDS_S) + 1))
            h.count = sum(h.bucket_counts)
            h.sum = h.count * 0.08
            exemplar = h.exemplars.add(time_unix_nano=at_ns, as_double=rng.lognormvariate(-3, 1))
            exemplar.trace_id, exemplar.span_id = rng.randbytes(16), rng.randbytes(8)

        orders = sm.metrics.add(name="app.orders.processed", unit="{order}", description="Orders processed.")
        orders.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        orders.sum.is_monotonic = True
        for j in range(counters):
            p = orders.sum.data_points.add(start_time_unix_nano=start_ns, time_unix_nano=at_ns,
                                           as_int=(seq + 1) * (3 + j % 11))
            p.attributes.extend(_http_attributes(j))

        active = sm.metrics.add(name="http.server.active_requests", unit="{request}")
        active.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
        for j in range(in_flight):
            p = active.sum.data_points.add(start_time_unix_nano=start_ns, time_unix_nano=at_ns,
                                           as_int=rng.randrange(40))
            p.attributes.extend(_http_attributes(j)[:2])
            p.attributes.append(_kv("worker", j // 24))

        memory = sm.metrics.add(name="process.memory.usage", unit="By")
        for j in range(gauges):
            p = memory.gauge.data_points.add(time_unix_nano=at_ns, as_int=rng.randrange(200, 900) << 20)
            p.attributes.extend([_kv("process.pid", 1000 + j), _kv("memory.type", "rss")])
    return request
