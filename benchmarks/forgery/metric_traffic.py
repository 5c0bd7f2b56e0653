"""Metric batches for the forgery evaluation, derived from the same simulated requests as the traces.

Every (principal, service) exports every ``EXPORT_S`` seconds what an OpenTelemetry SDK would, from
its own process since it started (cumulative temporality): ``http.server.request.duration`` (a
histogram of its SERVER spans, ms), ``http.server.requests`` (a monotonic sum) and
``process.cpu.utilization`` (a gauge: a base load plus the requests in flight by Little's law, rate x
mean duration, smoothed over about a minute as a host-metrics collector reports it). So the metrics
agree with the traces: an incident, a deploy or a traffic spike shows in both.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from benchmarks.forgery.traffic import EPOCH_NS, NS

EXPORT_S = 10.0
DURATION = "http.server.request.duration"
REQUESTS = "http.server.requests"
CPU = "process.cpu.utilization"
_CPU_BASE, _CPU_PER_REQUEST_IN_FLIGHT, _CPU_SMOOTHING = 0.05, 0.5, 0.3
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


@dataclass
class Process:
    """One (principal, service) process's instruments since it started."""

    started_s: float
    phase: float
    count: int = 0
    total_ms: float = 0.0
    window_count: int = 0        # since the last export, for the gauge
    window_ms: float = 0.0
    cpu: float = -1.0            # smoothed utilisation (-1: no export yet)

    def observe(self, duration_ms: float) -> None:
        self.count += 1
        self.total_ms += duration_ms
        self.window_count += 1
        self.window_ms += duration_ms

    def restart(self, t: float) -> None:
        self.started_s, self.count, self.total_ms = t, 0, 0.0

    def gauge(self) -> float:
        """CPU utilisation: the base load plus what the requests in flight over the last interval cost,
        smoothed."""
        in_flight = self.window_ms / 1000.0 / EXPORT_S
        now = _CPU_BASE + _CPU_PER_REQUEST_IN_FLIGHT * in_flight
        self.cpu = now if self.cpu < 0 else self.cpu + _CPU_SMOOTHING * (now - self.cpu)
        return self.cpu


def build_request(service: str, host: str, started_s: float, at_s: float, count: int, total_ms: float,
                  cpu: float) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.extend([_kv("service.name", service), _kv("host.name", host)])
    scope = rm.scope_metrics.add()
    scope.scope.name = "opentelemetry.instrumentation.shop"
    start_ns, now_ns = EPOCH_NS + int(started_s * NS), EPOCH_NS + int(at_s * NS)
    histogram = scope.metrics.add(name=DURATION, unit="ms")
    histogram.histogram.aggregation_temporality = _CUMULATIVE
    histogram.histogram.data_points.add(start_time_unix_nano=start_ns, time_unix_nano=now_ns, count=count,
                                        sum=total_ms)
    requests = scope.metrics.add(name=REQUESTS, unit="{request}")
    requests.sum.aggregation_temporality = _CUMULATIVE
    requests.sum.is_monotonic = True
    requests.sum.data_points.add(start_time_unix_nano=start_ns, time_unix_nano=now_ns, as_int=count)
    gauge = scope.metrics.add(name=CPU, unit="1")
    gauge.gauge.data_points.add(time_unix_nano=now_ns, as_double=cpu)
    return request


def _kv(key: str, value: str) -> KeyValue:
    kv = KeyValue(key=key)
    kv.value.string_value = value
    return kv
