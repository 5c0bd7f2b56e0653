"""Decode and encode OTLP export requests, and walk their items (spans, metric data points, log records).

Stages decode a payload once, let every processor of the chain work on the same message, and
encode once. Output is always OTLP protobuf, whatever the client sent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from schemas.envelope import PayloadFormat, Signal

__all__ = ["MAX_JSON_VALUES", "DuplicateKeyError", "ItemRef", "OtlpDecodeError", "OtlpTooManyItems",
           "count_entries", "count_items", "decode_payload", "new_request", "prune_empty", "remove", "subset", "walk"]

REQUEST_TYPES: dict[Signal, type[Message]] = {
    Signal.TRACES: ExportTraceServiceRequest,
    Signal.METRICS: ExportMetricsServiceRequest,
    Signal.LOGS: ExportLogsServiceRequest,
}
_RESOURCE_FIELD = {Signal.TRACES: "resource_spans", Signal.METRICS: "resource_metrics", Signal.LOGS: "resource_logs"}
_SCOPE_FIELD = {Signal.TRACES: "scope_spans", Signal.METRICS: "scope_metrics", Signal.LOGS: "scope_logs"}
_ITEM_FIELD = {Signal.TRACES: "spans", Signal.LOGS: "log_records"}
# OTLP/JSON carries these ids as hex strings; protobuf's JSON mapping expects base64.
_HEX_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


class OtlpDecodeError(ValueError):
    """The payload is not a valid OTLP request of its signal; ``reason`` is a stable code."""

    reason = "undecodable_payload"


class OtlpTooManyItems(OtlpDecodeError):
    """The payload holds more than a record of its size ever should (see MAX_JSON_VALUES)."""

    reason = "too_many_items"


# JSON is decoded in Python, at ~3 µs per value ("{", "[", "," and ":" counted); an SDK's OTLP/JSON
# has ~0.09 per byte, ~0.9 million in a 10 MB record. Hostile JSON packs up to 0.67 per byte
# (empty objects): 3 million empty log records took 30 s and 650 MB to decode. Payloads with more
# values than this are refused before decoding.
MAX_JSON_VALUES = 2_000_000


def new_request(signal: Signal) -> Message:
    return REQUEST_TYPES[signal]()


def decode_payload(signal: Signal, payload_format: PayloadFormat, payload: bytes) -> Message:
    request = new_request(signal)
    if payload_format is PayloadFormat.OTLP_PROTO:
        try:
            request.ParseFromString(payload)
        except DecodeError as exc:
            raise OtlpDecodeError(f"not a valid OTLP {signal.value} protobuf message: {exc}") from None
        return request
    values = sum(payload.count(c) for c in (b"{", b"[", b",", b":"))
    if values > MAX_JSON_VALUES:
        raise OtlpTooManyItems(f"OTLP {signal.value} JSON with {values} values (more than {MAX_JSON_VALUES}): "
                               "too many items for one record")
    try:
        document = json.loads(payload, object_pairs_hook=_without_duplicate_keys)
        ParseDict(_hex_ids_to_base64(document), request, ignore_unknown_fields=True)
    except (ValueError, UnicodeDecodeError, ParseError, TypeError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, DuplicateKeyError) else type(exc).__name__
        raise OtlpDecodeError(f"not valid OTLP {signal.value} JSON: {detail}") from None
    return request


class DuplicateKeyError(ValueError):
    """A JSON object names a key twice."""


def _without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused if it names a key twice. json.loads keeps the last value silently, so
    a second "resourceSpans" (or "traceId") made everything in the first disappear without a reject
    record; which value counts is not defined by JSON (RFC 8259), so neither is kept."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(f"duplicate key {key[:100]!r}")
            seen.add(key)
    return document


def _hex_ids_to_base64(node: Any) -> Any:
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, value in current.items():
                if key in _HEX_ID_KEYS and isinstance(value, str):
                    try:
                        current[key] = base64.b64encode(bytes.fromhex(value)).decode()
                    except ValueError:
                        raise ValueError(f"{key} is not hex") from None
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(current, list):
            stack.extend(v for v in current if isinstance(v, dict | list))
    return node


@dataclass(frozen=True, slots=True)
class ItemRef:
    """One span, metric data point or log record, with where it sits in the request."""

    resource: Any          # ResourceSpans / ResourceMetrics / ResourceLogs
    scope: Any             # ScopeSpans / ScopeMetrics / ScopeLogs
    container: Any         # the repeated field holding the item
    index: int
    item: Any              # Span / *DataPoint / LogRecord
    metric: Any = None     # the Metric owning a data point (metrics only)


def resources(request: Message, signal: Signal) -> Any:
    return getattr(request, _RESOURCE_FIELD[signal])


def walk(request: Message, signal: Signal) -> Iterator[ItemRef]:
    """Every item of the request, in order."""
    scope_field = _SCOPE_FIELD[signal]
    for resource in resources(request, signal):
        for scope in getattr(resource, scope_field):
            if signal is Signal.METRICS:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    if kind is None:
                        continue
                    points = getattr(metric, kind).data_points
                    for index, point in enumerate(points):
                        yield ItemRef(resource, scope, points, index, point, metric)
            else:
                items = getattr(scope, _ITEM_FIELD[signal])
                for index, item in enumerate(items):
                    yield ItemRef(resource, scope, items, index, item)


def count_items(request: Message, signal: Signal) -> int:
    """How many spans, metric data points or log records the request holds (without walking them)."""
    scope_field = _SCOPE_FIELD[signal]
    if signal is Signal.METRICS:
        total = 0
        for resource in resources(request, signal):
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    total += len(getattr(metric, kind).data_points) if kind else 0
        return total
    item_field = _ITEM_FIELD[signal]
    return sum(len(getattr(scope, item_field)) for resource in resources(request, signal)
               for scope in getattr(resource, scope_field))


def count_entries(request: Message, signal: Signal, limit: int) -> int:
    """Resources, scopes, metrics and items together; counting stops once past ``limit``."""
    scope_field = _SCOPE_FIELD[signal]
    container = resources(request, signal)
    total = len(container)
    for resource in container:
        scopes = getattr(resource, scope_field)
        total += len(scopes)
        if total > limit:
            return total
        for scope in scopes:
            if signal is Signal.METRICS:
                total += len(scope.metrics)
                for metric in scope.metrics:
                    if total > limit:
                        return total
                    kind = metric.WhichOneof("data")
                    total += len(getattr(metric, kind).data_points) if kind else 0
            else:
                total += len(getattr(scope, _ITEM_FIELD[signal]))
            if total > limit:
                return total
    return total


def remove(refs: list[ItemRef]) -> None:
    """Delete the referenced items (indices stay valid: each container is pruned from the back)."""
    by_container: dict[int, tuple[Any, list[int]]] = {}
    for ref in refs:
        by_container.setdefault(id(ref.container), (ref.container, []))[1].append(ref.index)
    for container, indices in by_container.values():
        for index in sorted(set(indices), reverse=True):
            del container[index]


def subset(signal: Signal, refs: list[ItemRef]) -> Message:
    """A new request holding copies of just these items, each with its resource and scope."""
    request = new_request(signal)
    resource_field, scope_field = _RESOURCE_FIELD[signal], _SCOPE_FIELD[signal]
    resource_copies: dict[int, Any] = {}
    scope_copies: dict[int, Any] = {}
    metric_copies: dict[int, Any] = {}
    for ref in refs:
        resource = resource_copies.get(id(ref.resource))
        if resource is None:
            resource = getattr(request, resource_field).add()
            resource.resource.CopyFrom(ref.resource.resource)
            resource.schema_url = ref.resource.schema_url
            resource_copies[id(ref.resource)] = resource
        scope = scope_copies.get(id(ref.scope))
        if scope is None:
            scope = getattr(resource, scope_field).add()
            scope.scope.CopyFrom(ref.scope.scope)
            scope.schema_url = ref.scope.schema_url
            scope_copies[id(ref.scope)] = scope
        if signal is Signal.METRICS:
            metric = metric_copies.get(id(ref.metric))
            if metric is None:
                metric = scope.metrics.add()
                metric.CopyFrom(ref.metric)
                kind = metric.WhichOneof("data")
                del getattr(metric, kind).data_points[:]
                metric_copies[id(ref.metric)] = metric
            getattr(metric, metric.WhichOneof("data")).data_points.add().CopyFrom(ref.item)
        else:
            getattr(scope, _ITEM_FIELD[signal]).add().CopyFrom(ref.item)
    return request


def prune_empty(request: Message, signal: Signal) -> None:
    """Drop scopes, metrics and resources left without items, so output carries no empty shells."""
    scope_field = _SCOPE_FIELD[signal]
    container = resources(request, signal)
    for r in range(len(container) - 1, -1, -1):
        scopes = getattr(container[r], scope_field)
        for s in range(len(scopes) - 1, -1, -1):
            scope = scopes[s]
            if signal is Signal.METRICS:
                for m in range(len(scope.metrics) - 1, -1, -1):
                    kind = scope.metrics[m].WhichOneof("data")
                    if kind is None or not getattr(scope.metrics[m], kind).data_points:
                        del scope.metrics[m]
                empty = not scope.metrics
            else:
                empty = not getattr(scope, _ITEM_FIELD[signal])
            if empty:
                del scopes[s]
        if not scopes:
            del container[r]
