"""Prometheus remote write: OTLP metrics converted by the OpenTelemetry-to-Prometheus compatibility
rules, sent as a snappy-compressed remote-write 1.0 protobuf.

Conversion, per the OpenTelemetry specification's Prometheus compatibility section:
- names: characters outside [a-zA-Z0-9_:] become "_", runs of "_" collapse; the unit is appended
  ("s" -> "_seconds", "By" -> "_bytes", "1" on gauges -> "_ratio", "a/b" -> "_a_per_b", units in
  braces dropped); monotonic sums get "_total";
- gauges -> gauges; monotonic cumulative sums -> counters; non-monotonic sums -> gauges;
  cumulative histograms -> "_bucket" (cumulative, with "le", "+Inf" last), "_sum", "_count";
  summaries -> the name with "quantile", "_sum", "_count";
- resource attributes: service.namespace/service.name -> job, service.instance.id -> instance, and all
  others as labels of a "target_info" gauge of value 1; the tenant is a label of every series.
- exemplars of histogram points go to the "_bucket" series whose "le" bucket holds their value, those
  of monotonic sums to the "_total" series; "trace_id"/"span_id" (hex) and the filtered attributes
  become exemplar labels, an attribute left out where it would break the 128-character limit on an
  exemplar's labels. Other points' exemplars are dropped, as the specification says.
Not converted, and counted with a reason instead of being mangled: delta temporality (Prometheus
needs cumulative values) and exponential histograms (remote write 1.0 has no native histograms).
"""

from __future__ import annotations

import functools
import math
import re
import struct
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import cramjam
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from rampart.config import PrometheusSinkConfig
from schemas.envelope import Signal
from sinks.base import ExportRequest, PermanentExportError, RetryableExportError, Sink
from sinks.otlp import RETRYABLE_STATUS, headers_from

__all__ = ["EXEMPLAR_LABELS_MAX_CHARS", "Conversion", "Exemplar", "PrometheusRemoteWriteSink", "convert", "exemplar",
           "metric_name"]

_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]+")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]+")
_UNITS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds", "min": "minutes",
          "h": "hours", "d": "days", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes",
          "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes", "bit": "bits", "m": "meters",
          "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams", "Cel": "celsius",
          "Hz": "hertz", "%": "percent"}
# Denominators of "x/y" units read in the singular: "By/s" -> "bytes_per_second".
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
_RESOURCE_TO_JOB = ("service.name", "service.namespace", "service.instance.id")


def _sanitize(text: str, pattern: re.Pattern[str]) -> str:
    out = re.sub(r"_+", "_", pattern.sub("_", text))
    return f"_{out}" if out[:1].isdigit() else out


@functools.lru_cache(maxsize=16384)  # a few hundred keys recur on every point
def label_name(key: str) -> str:
    """An attribute key as a label name: invalid characters to "_"; never a leading digit; a leading "_"
    only if the key had one (labels starting with "__" are Prometheus' own)."""
    name = re.sub(r"_+", "_", _INVALID_LABEL.sub("_", key))
    if name[:1].isdigit():
        return f"key_{name}"
    if name.startswith("_") and not key.startswith("_"):
        return f"key{name}"
    return name


def _unit_suffix(unit: str, is_gauge: bool) -> str:
    unit = re.sub(r"\{[^}]*\}", "", unit).strip()
    if not unit:
        return ""
    if unit == "1":
        return "ratio" if is_gauge else ""
    if "/" in unit:
        num, _, den = unit.partition("/")
        parts = [_UNITS.get(num, num), "per", _PER_UNITS.get(den, den)] if num else ["per", _PER_UNITS.get(den, den)]
        return "_".join(p for p in parts if p)
    return _UNITS.get(unit, unit)


def metric_name(name: str, unit: str, *, counter: bool, gauge: bool) -> str:
    """The Prometheus metric family name for an OTLP metric."""
    base = _sanitize(name.strip(". "), _INVALID_NAME).rstrip("_") or "metric"
    suffix = _sanitize(_unit_suffix(unit, gauge), _INVALID_LABEL).strip("_")
    if suffix and not base.endswith(f"_{suffix}"):
        base = f"{base}_{suffix}"
    if counter:
        base = base.removesuffix("_total") + "_total"
    return base


# The OpenMetrics limit on an exemplar's labels: names and values together, in characters (Prometheus
# refuses an exemplar over it).
EXEMPLAR_LABELS_MAX_CHARS = 128

Labels = tuple[tuple[str, str], ...]  # sorted by name


@dataclass(frozen=True)
class Exemplar:
    labels: Labels
    value: float
    timestamp_ms: int


@dataclass
class Conversion:
    series: dict[Labels, list[tuple[float, int]]] = field(default_factory=dict)
    exemplars: dict[Labels, list[Exemplar]] = field(default_factory=dict)  # series -> its exemplars
    refused: dict[str, int] = field(default_factory=dict)   # reason -> data points not converted

    def add(self, labels: Mapping[str, str], value: float, timestamp_ms: int) -> Labels:
        key = tuple(sorted(labels.items()))
        self.series.setdefault(key, []).append((value, timestamp_ms))
        return key

    def add_exemplar(self, series: Labels, exemplar: Exemplar) -> None:
        self.exemplars.setdefault(series, []).append(exemplar)

    def refuse(self, reason: str, n: int) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + n


def _value(anyvalue: Any) -> str:
    kind = anyvalue.WhichOneof("value")
    if kind is None:
        return ""
    value = getattr(anyvalue, kind)
    if kind == "bool_value":
        return "true" if value else "false"
    if kind in ("array_value", "kvlist_value"):
        return str(value).replace("\n", " ")
    return str(value)


def _labels(attributes: Iterable[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for kv in attributes:
        name = label_name(kv.key)
        value = _value(kv.value)
        out[name] = f"{out[name]};{value}" if name in out else value  # collisions join, as the spec says
    return out


def _number(point: Any) -> float:
    return float(point.as_double if point.WhichOneof("value") == "as_double" else point.as_int)


def exemplar(otlp: Any) -> Exemplar:
    """An OTLP exemplar as a remote-write one: trace and span id first, then as many of its filtered
    attributes (by label name) as fit within the limit on an exemplar's labels."""
    ids = {name: raw.hex() for name, raw in (("trace_id", otlp.trace_id), ("span_id", otlp.span_id)) if raw}
    labels = dict(ids)
    room = EXEMPLAR_LABELS_MAX_CHARS - sum(len(k) + len(v) for k, v in ids.items())
    for name, value in sorted(_labels(otlp.filtered_attributes).items()):
        if name not in labels and len(name) + len(value) <= room:
            labels[name] = value
            room -= len(name) + len(value)
    return Exemplar(tuple(sorted(labels.items())), _number(otlp), otlp.time_unix_nano // 1_000_000)


def _float_label(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


def convert(request: ExportMetricsServiceRequest, tenant: str) -> Conversion:
    out = Conversion()
    for rm in request.resource_metrics:
        resource = {kv.key: _value(kv.value) for kv in rm.resource.attributes}
        service = resource.get("service.name", "unknown_service")
        namespace = resource.get("service.namespace")
        job = f"{namespace}/{service}" if namespace else service
        target = {"job": job, "tenant": tenant}
        if "service.instance.id" in resource:
            target["instance"] = resource["service.instance.id"]
        info = {**_labels(kv for kv in rm.resource.attributes if kv.key not in _RESOURCE_TO_JOB), **target}
        latest = 0
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                latest = max(latest, _convert_metric(metric, target, out))
        if info.keys() - target.keys() and latest:
            out.add({"__name__": "target_info", **info}, 1.0, latest)
    return out


def _convert_metric(metric: Any, target: Mapping[str, str], out: Conversion) -> int:
    """Add the metric's samples; returns the newest timestamp (ms) seen."""
    kind = metric.WhichOneof("data")
    latest = 0
    if kind in ("gauge", "sum"):
        data = getattr(metric, kind)
        if kind == "sum" and data.aggregation_temporality != _CUMULATIVE:
            out.refuse("delta_temporality", len(data.data_points))
            return 0
        counter = kind == "sum" and data.is_monotonic  # monotonic sums are counters; the rest are gauges
        name = metric_name(metric.name, metric.unit, counter=counter, gauge=not counter)
        for p in data.data_points:
            ts = p.time_unix_nano // 1_000_000
            latest = max(latest, ts)
            series = out.add({"__name__": name, **_labels(p.attributes), **target}, _number(p), ts)
            if counter:
                for e in p.exemplars:
                    out.add_exemplar(series, exemplar(e))
    elif kind == "histogram":
        if metric.histogram.aggregation_temporality != _CUMULATIVE:
            out.refuse("delta_temporality", len(metric.histogram.data_points))
            return 0
        name = metric_name(metric.name, metric.unit, counter=False, gauge=False)
        for p in metric.histogram.data_points:
            ts = p.time_unix_nano // 1_000_000
            latest = max(latest, ts)
            labels = {**_labels(p.attributes), **target}
            running = 0
            bounds = [*p.explicit_bounds, float("inf")]
            buckets = []
            for bound, count in zip(bounds, p.bucket_counts, strict=False):
                running += count
                buckets.append(out.add({"__name__": f"{name}_bucket", "le": _float_label(bound), **labels},
                                       float(running), ts))
            if not p.bucket_counts:
                buckets.append(out.add({"__name__": f"{name}_bucket", "le": "+Inf", **labels}, float(p.count), ts))
            for e in p.exemplars:
                converted = exemplar(e)
                # Bucket i holds (bounds[i-1], bounds[i]]: the first bound not below the value. A NaN
                # lies in no bucket; with bucket counts missing, every value lies in the one "+Inf" bucket.
                i = 0 if not p.bucket_counts else bisect_left(p.explicit_bounds, converted.value)
                if not math.isnan(converted.value) and i < len(buckets):
                    out.add_exemplar(buckets[i], converted)
            if p.HasField("sum"):
                out.add({"__name__": f"{name}_sum", **labels}, p.sum, ts)
            out.add({"__name__": f"{name}_count", **labels}, float(p.count), ts)
    elif kind == "summary":
        name = metric_name(metric.name, metric.unit, counter=False, gauge=False)
        for p in metric.summary.data_points:
            ts = p.time_unix_nano // 1_000_000
            latest = max(latest, ts)
            labels = {**_labels(p.attributes), **target}
            for q in p.quantile_values:
                out.add({"__name__": name, "quantile": repr(float(q.quantile)), **labels}, q.value, ts)
            out.add({"__name__": f"{name}_sum", **labels}, p.sum, ts)
            out.add({"__name__": f"{name}_count", **labels}, float(p.count), ts)
    elif kind == "exponential_histogram":
        out.refuse("exponential_histogram", len(metric.exponential_histogram.data_points))
    return latest


# ---------------------------------------------------------------- remote write 1.0 wire format

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _encode_labels(labels: Labels) -> bytes:
    return b"".join(_encode_label(name, text) for name, text in labels)


# The same label pairs (job, instance, resource attributes, le bounds) recur on nearly every series
# of a sink's life: encoding them in Python each time was most of the sink's CPU (~100 µs per point).
@functools.lru_cache(maxsize=65536)
def _encode_label(name: str, text: str) -> bytes:
    return _field(1, _field(1, name.encode()) + _field(2, text.encode()))


def encode_write_request(conversion: Conversion) -> bytes:
    """prometheus.WriteRequest{timeseries: [TimeSeries{labels, samples, exemplars}]} in protobuf wire format."""
    out = bytearray()
    for labels, samples in conversion.series.items():
        series = bytearray(_encode_labels(labels))  # already sorted by name, as remote write requires
        for sample, timestamp in sorted(samples, key=lambda s: s[1]):
            series += _field(2, b"\x09" + struct.pack("<d", sample) + b"\x10" + _varint(timestamp))
        # Oldest first: Prometheus drops an exemplar older than the last one it has for the series.
        for e in sorted(conversion.exemplars.get(labels, ()), key=lambda e: e.timestamp_ms):
            series += _field(3, _encode_labels(e.labels) + b"\x11" + struct.pack("<d", e.value)
                             + b"\x18" + _varint(e.timestamp_ms))
        out += _field(1, bytes(series))
    return bytes(out)


class PrometheusRemoteWriteSink(Sink):
    name = "prometheus"

    def __init__(self, config: PrometheusSinkConfig, env: Mapping[str, str]) -> None:
        self._config = config
        self._headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
                         "X-Prometheus-Remote-Write-Version": "0.1.0",
                         **headers_from(config.headers, config.headers_from_env, env, "sinks.prometheus")}
        self._session: aiohttp.ClientSession | None = None

    @property
    def signals(self) -> list[Signal]:
        return [Signal.METRICS]

    async def export(self, request: ExportRequest) -> Mapping[str, int]:
        conversion = convert(ExportMetricsServiceRequest.FromString(request.payload), request.tenant)
        if not conversion.series:
            return conversion.refused
        body = bytes(cramjam.snappy.compress_raw(encode_write_request(conversion)))
        headers = dict(self._headers)
        if self._config.tenant_header:
            headers[self._config.tenant_header] = request.tenant
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._config.timeout_s))
        try:
            async with self._session.post(self._config.endpoint, data=body, headers=headers) as response:
                status, answer = response.status, (await response.read())[:500].decode("utf-8", "replace")
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RetryableExportError(f"{self._config.endpoint}: {type(exc).__name__}") from None
        if 200 <= status < 300:
            return conversion.refused
        if status in RETRYABLE_STATUS:
            delay = float(retry_after) if retry_after and retry_after.isdigit() else None
            raise RetryableExportError(f"{self._config.endpoint} answered {status}", delay, answer)
        raise PermanentExportError(f"{self._config.endpoint} answered {status}", None, answer)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
