"""Small builders of OTLP requests for processor tests."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processors.base import Batch
from schemas.envelope import Signal

NOW = 1_764_000_000_000_000_000


def traces(n: int = 1, **span_fields: Any) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "checkout"
    ss = rs.scope_spans.add()
    for i in range(n):
        span = ss.spans.add(trace_id=bytes([1]) * 15 + bytes([i + 1]), span_id=bytes([2]) * 7 + bytes([i + 1]),
                            name=f"op-{i}", start_time_unix_nano=NOW - 1000, end_time_unix_nano=NOW)
        for key, value in span_fields.items():
            setattr(span, key, value)
    return request


def metrics() -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    counter = scope.metrics.add(name="orders")
    counter.sum.is_monotonic = True
    counter.sum.aggregation_temporality = 2
    counter.sum.data_points.add(as_int=5, time_unix_nano=NOW, start_time_unix_nano=NOW - 10)
    histogram = scope.metrics.add(name="latency")
    histogram.histogram.aggregation_temporality = 2
    histogram.histogram.data_points.add(count=3, bucket_counts=[1, 1, 1], explicit_bounds=[0.1, 1.0],
                                        time_unix_nano=NOW)
    return request


def logs(n: int = 1) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for i in range(n):
        record = records.add(time_unix_nano=NOW, severity_number=9)
        record.body.string_value = f"line {i}"
    return request


def batch(signal: Signal, request: Any, tenant: str = "acme") -> Batch:
    return Batch(signal=signal, request=request, batch_id="b-1", tenant=tenant, principal="key-1",
                 received_at_ns=NOW)
