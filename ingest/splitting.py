"""Split an OTLP request that is too large for one Kafka record into several that each fit.

The only place the gateway decodes a payload. It splits by resource, then by scope inside a
resource that is too big on its own, then by record (span, metric, log record) inside a scope;
every part keeps its resource and scope, so each part is a complete, valid OTLP request. A single
record larger than the limit cannot be split and is refused with 413.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ingest.errors import InvalidArgument, PayloadTooLarge
from schemas.envelope import PayloadFormat, Signal

__all__ = ["split_payload"]

# Field names per level: the request's resource list, a resource's scope list, a scope's records.
_PROTO_FIELDS = {
    Signal.TRACES: (ExportTraceServiceRequest, ("resource_spans", "scope_spans", "spans")),
    Signal.METRICS: (ExportMetricsServiceRequest, ("resource_metrics", "scope_metrics", "metrics")),
    Signal.LOGS: (ExportLogsServiceRequest, ("resource_logs", "scope_logs", "log_records")),
}
_JSON_FIELDS = {
    Signal.TRACES: ("resourceSpans", "scopeSpans", "spans"),
    Signal.METRICS: ("resourceMetrics", "scopeMetrics", "metrics"),
    Signal.LOGS: ("resourceLogs", "scopeLogs", "logRecords"),
}
_FRAMING_BYTES = 16  # tag + length prefix of an embedded message, generously


def split_payload(signal: Signal, payload_format: PayloadFormat, payload: bytes, max_bytes: int) -> list[bytes]:
    """``[payload]`` when it fits in ``max_bytes``; otherwise complete OTLP requests that each fit."""
    if len(payload) <= max_bytes:
        return [payload]
    if payload_format is PayloadFormat.OTLP_PROTO:
        return _split_proto(signal, payload, max_bytes)
    return _split_json(signal, payload, max_bytes)


class _Level:
    """How to read and rebuild one level of the OTLP hierarchy, for either encoding."""

    def __init__(self, children: Callable[[Any], list[Any]], empty_copy: Callable[[Any], Any],
                 append: Callable[[Any, Any], None]) -> None:
        self.children = children
        self.empty_copy = empty_copy
        self.append = append


def _pack(levels: list[_Level], size: Callable[[Any], int], depth: int, node: Any, budget: int) -> Iterator[Any]:
    """Yield copies of ``node`` whose children are shared out so that each copy fits in ``budget``."""
    if depth == len(levels):  # a single span, metric or log record: cannot be split
        if size(node) + _FRAMING_BYTES > budget:
            raise PayloadTooLarge(f"a single record of {size(node)} bytes exceeds the {budget}-byte Kafka record limit")
        yield node
        return
    level = levels[depth]
    current = level.empty_copy(node)
    overhead = current_size = size(current)
    for child in level.children(node):
        for piece in _pack(levels, size, depth + 1, child, budget - overhead):
            piece_size = size(piece) + _FRAMING_BYTES
            if current_size + piece_size > budget and current_size > overhead:
                yield current
                current, current_size = level.empty_copy(node), overhead
            level.append(current, piece)
            current_size += piece_size
    if current_size > overhead:
        yield current


def _split_proto(signal: Signal, payload: bytes, max_bytes: int) -> list[bytes]:
    request_type, (resources, scopes, records) = _PROTO_FIELDS[signal]
    request: Message = request_type()
    try:
        request.ParseFromString(payload)
    except DecodeError:
        raise InvalidArgument(f"request body is not a valid OTLP {signal.value} protobuf message") from None

    def copier(field: str) -> Callable[[Message], Message]:
        def empty_copy(node: Message) -> Message:
            copy = type(node)()
            copy.CopyFrom(node)
            copy.ClearField(field)
            return copy
        return empty_copy

    levels = [_Level(children=lambda n, f=f: list(getattr(n, f)), empty_copy=copier(f),  # type: ignore[misc]
                     append=lambda parent, child, f=f: getattr(parent, f).append(child))  # type: ignore[misc]
              for f in (resources, scopes, records)]
    parts = list(_pack(levels, lambda n: n.ByteSize(), 0, request, max_bytes))
    return [part.SerializeToString() for part in parts]


def _split_json(signal: Signal, payload: bytes, max_bytes: int) -> list[bytes]:
    fields = _JSON_FIELDS[signal]
    try:
        request = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"request body is not valid OTLP {signal.value} JSON") from None
    if not isinstance(request, dict):
        raise InvalidArgument(f"request body is not an OTLP {signal.value} JSON object")

    def level(field: str) -> _Level:
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in field)

        def children(node: dict[str, Any]) -> list[Any]:
            value = node.get(field, node.get(snake, []))
            if not isinstance(value, list):
                raise InvalidArgument(f"OTLP JSON field {field} must be an array")
            return value

        def empty_copy(node: dict[str, Any]) -> dict[str, Any]:
            copy = {k: v for k, v in node.items() if k not in (field, snake)}
            copy[field] = []
            return copy

        return _Level(children=children, empty_copy=empty_copy,
                      append=lambda parent, child: parent[field].append(child))

    def size(node: Any) -> int:
        return len(json.dumps(node, separators=(",", ":")))

    parts = list(_pack([level(f) for f in fields], size, 0, request, max_bytes))
    return [json.dumps(part, separators=(",", ":")).encode() for part in parts]
