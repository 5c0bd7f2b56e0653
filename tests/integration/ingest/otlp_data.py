"""Telemetry made with the real OpenTelemetry SDK, kept in memory so tests can export it on demand."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def spans(count: int, service: str = "checkout") -> Sequence[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "host.name": "web-1"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("rampart.tests", "1.0")
    for i in range(count):
        with tracer.start_as_current_span(f"GET /cart/{i % 7}", attributes={"http.request.method": "GET",
                                                                           "http.response.status_code": 200}):
            pass
    provider.shutdown()
    return memory.get_finished_spans()


def metrics(service: str = "checkout") -> MetricsData:
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=Resource.create({"service.name": service}), metric_readers=[reader])
    meter = provider.get_meter("rampart.tests")
    counter = meter.create_counter("orders", unit="1")
    histogram = meter.create_histogram("request.duration", unit="s")
    for i in range(20):
        counter.add(1, {"region": "eu"})
        histogram.record(0.01 * i, {"route": "/cart"})
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return data


def log_records(count: int, service: str = "checkout") -> list[object]:
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("rampart.tests")
    for i in range(count):
        logger.emit(body=f"order {i} placed", severity_number=SeverityNumber.INFO, attributes={"order.id": i})
    provider.shutdown()
    return list(memory.get_finished_logs())
