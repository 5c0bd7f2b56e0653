"""Split an OTLP request that is too large for one Kafka record into several that each fit.

It splits by resource, then by scope inside a resource that is too big on its own, then by record
(span, metric, log record) inside a scope; every part keeps its resource and scope, so each part is
a complete OTLP request. A single record larger than the limit cannot be split and is refused with
413. Protobuf is cut at the wire level without being decoded; JSON is decoded (the only place the
gateway decodes a payload), within a memory budget.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ingest.errors import InvalidArgument, PayloadTooLarge
from ingest.wire import read_field
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
# json.loads builds Python objects of up to ~72 bytes per "{", "[", "," and ":" of the text (measured:
# 5.7x the text for SDK output, 25-39x for hostile bodies of empty objects or arrays). A body whose
# count predicts more than this is refused instead of decoded: a hostile 64 MiB body of "{}," would
# otherwise take 1.7 GB to split.
_JSON_BYTES_PER_TOKEN = 72
_JSON_DECODE_BUDGET_BYTES = 256 * 1024 * 1024


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
    """Yield copies of ``node`` whose children are shared out so that each copy fits in ``budget``.

    Only children too big on their own are taken apart (taking every child apart cost seconds per
    million items for nothing)."""
    if depth == len(levels):  # a single span, metric or log record: cannot be split
        if size(node) + _FRAMING_BYTES > budget:
            raise PayloadTooLarge(f"a single record of {size(node)} bytes exceeds the {budget}-byte Kafka record limit")
        yield node
        return
    level = levels[depth]
    current = level.empty_copy(node)
    overhead = current_size = size(current)
    for child in level.children(node):
        child_size = size(child) + _FRAMING_BYTES
        if child_size <= budget - overhead:
            pieces: Iterator[tuple[Any, int]] = iter(((child, child_size),))
        else:
            pieces = ((piece, size(piece) + _FRAMING_BYTES)
                      for piece in _pack(levels, size, depth + 1, child, budget - overhead))
        for piece, piece_size in pieces:
            if current_size + piece_size > budget and current_size > overhead:
                yield current
                current, current_size = level.empty_copy(node), overhead
            level.append(current, piece)
            current_size += piece_size
    if current_size > overhead:
        yield current


def _split_proto(signal: Signal, payload: bytes, max_bytes: int) -> list[bytes]:
    """Split at the wire level, without decoding: copies of the bytes as received, cut between items.

    Decoding the whole request to split it cost 99 s and 5.4 GB for a hostile 16 MiB body made of
    8 million empty resources (``0a 00`` repeated). Every level of an OTLP request nests its
    children the same way, as length-delimited fields (request: resources; resource: scopes;
    scope: spans, metrics or log records), so cutting only needs the fields' boundaries: linear
    time, and memory for the parts alone. Whatever else a message holds (its resource or scope,
    schema URL, unknown fields) is copied into each of its parts.
    """
    return list(_proto_parts(payload, 0, len(payload), _PROTO_CHILD_FIELDS[signal], max_bytes))


def _child_field_numbers(request_type: type[Message], names: tuple[str, ...]) -> tuple[int, ...]:
    """The field numbers of ``names``, each a field of the previous one's message type."""
    numbers, descriptor = [], request_type.DESCRIPTOR
    for name in names:
        field = descriptor.fields_by_name[name]
        numbers.append(field.number)
        if field.message_type is not None:
            descriptor = field.message_type
    return tuple(numbers)


def _small_children(field_number: int) -> re.Pattern[bytes]:
    """Matches a run of consecutive ``field_number`` entries shorter than 128 bytes each, in C.

    Hostile payloads are made of millions of tiny items; stepping over them one by one in Python
    costs ~0.5 µs each, the expression ~60 ns. Larger items are few per megabyte anyway.
    """
    key = re.escape(_key(field_number))
    lengths = b"|".join(re.escape(bytes([n])) + (b".{%d}" % n if n else b"") for n in range(128))
    return re.compile(b"(?:" + key + b"(?>" + lengths + b"))++", re.DOTALL)


_PROTO_CHILD_FIELDS = {signal: _child_field_numbers(request_type, names)
                       for signal, (request_type, names) in _PROTO_FIELDS.items()}


def _proto_parts(data: bytes, start: int, end: int, child_fields: tuple[int, ...], budget: int) -> Iterator[bytes]:
    """Messages holding the header of the message ``data[start:end]`` and a share of its children
    (field ``child_fields[0]``), each at most ``budget`` bytes. A child too big on its own is split
    the same way one level down; below the last level a child is a record and cannot be split."""
    child_field = child_fields[0]
    small = _SMALL_CHILDREN[child_field]
    part = _Part(data, _header(data, start, end, child_field))
    if part.overhead + _FRAMING_BYTES > budget:
        raise PayloadTooLarge(f"a resource or scope of {part.overhead} bytes without its items exceeds the "
                              f"{budget}-byte Kafka record limit")
    pos = start
    while pos < end:
        run = small.match(data, pos, min(end, pos + budget - part.size))  # whole small children that fit
        if run is not None:
            part.add_slice(pos, run.end())
            pos = run.end()
            continue
        number, wire_type, value_start, field_end = read_field(data, pos, end)
        field_start, pos = pos, field_end
        if number != child_field or wire_type != 2:
            continue
        if part.size + field_end - field_start > budget and part.has_children:  # this child starts a new part
            yield part.take()
        if part.size + field_end - field_start <= budget:
            part.add_slice(field_start, field_end)
            continue
        if len(child_fields) == 1:
            raise PayloadTooLarge(f"a single record of {field_end - value_start} bytes exceeds the "
                                  f"{budget - part.overhead}-byte Kafka record limit")
        for sub in _proto_parts(data, value_start, field_end, child_fields[1:],
                                budget - part.overhead - _FRAMING_BYTES):
            entry = _key(child_field) + _uvarint(len(sub)) + sub
            if part.size + len(entry) > budget and part.has_children:
                yield part.take()
            part.add_bytes(entry)
    if part.has_children:
        yield part.take()


def _header(data: bytes, start: int, end: int, child_field: int) -> bytes:
    """Every field of the message ``data[start:end]`` but its children, as received."""
    small = _SMALL_CHILDREN[child_field]
    header = bytearray()
    pos = start
    while pos < end:
        run = small.match(data, pos, end)
        if run is not None:
            pos = run.end()
            continue
        number, wire_type, _, field_end = read_field(data, pos, end)
        if number != child_field or wire_type != 2:
            header += data[pos:field_end]
        pos = field_end
    return bytes(header)


class _Part:
    """One part being filled: a message's header, then children, mostly as slices of the input
    (children next to each other are kept as one slice)."""

    def __init__(self, data: bytes, header: bytes) -> None:
        self._data = data
        self._header = header
        self.overhead = len(header)
        self._pieces: list[bytes] = []
        self._run_start = self._run_end = 0
        self.size = self.overhead

    @property
    def has_children(self) -> bool:
        return self.size > self.overhead

    def add_slice(self, first: int, last: int) -> None:
        if first != self._run_end:
            self._close_run()
            self._run_start = first
        self._run_end = last
        self.size += last - first

    def add_bytes(self, entry: bytes) -> None:
        self._close_run()
        self._pieces.append(entry)
        self.size += len(entry)

    def take(self) -> bytes:
        """The part's bytes; the builder starts over with just the header."""
        self._close_run()
        out = b"".join([self._header, *self._pieces])
        self._pieces, self.size = [], self.overhead
        return out

    def _close_run(self) -> None:
        if self._run_end > self._run_start:
            self._pieces.append(self._data[self._run_start:self._run_end])
        self._run_start = self._run_end


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field_number: int) -> bytes:
    return _uvarint(field_number << 3 | 2)


_SMALL_CHILDREN = {number: _small_children(number) for numbers in _PROTO_CHILD_FIELDS.values() for number in numbers}


def _without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse objects that name a key twice, as the validate stage does: json.loads would keep the
    last value and the parts would silently lose what the first one held."""
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate key")
    return document


def _split_json(signal: Signal, payload: bytes, max_bytes: int) -> list[bytes]:
    fields = _JSON_FIELDS[signal]
    tokens = sum(payload.count(c) for c in (b"{", b"[", b",", b":"))
    if tokens * _JSON_BYTES_PER_TOKEN > _JSON_DECODE_BUDGET_BYTES:
        raise PayloadTooLarge(f"OTLP JSON request of {len(payload)} bytes with {tokens} values is too large to split "
                              "here: send protobuf or smaller requests")
    try:
        request = json.loads(payload, object_pairs_hook=_without_duplicate_keys)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError; RecursionError: deep nesting)
        raise InvalidArgument(f"request body is not valid OTLP {signal.value} JSON") from None
    if not isinstance(request, dict):
        raise InvalidArgument(f"request body is not an OTLP {signal.value} JSON object")

    def level(field: str) -> _Level:
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in field)

        def children(node: Any) -> list[Any]:
            # A resource or scope that is not an object used to escape as AttributeError (500).
            if not isinstance(node, dict):
                raise InvalidArgument(f"OTLP JSON: an entry that should hold {field} is not an object")
            value = node.get(field, node.get(snake, []))
            if not isinstance(value, list):
                raise InvalidArgument(f"OTLP JSON field {field} must be an array")
            return value

        def empty_copy(node: Any) -> dict[str, Any]:
            if not isinstance(node, dict):
                raise InvalidArgument(f"OTLP JSON: an entry that should hold {field} is not an object")
            copy = {k: v for k, v in node.items() if k not in (field, snake)}
            copy[field] = []
            return copy

        return _Level(children=children, empty_copy=empty_copy,
                      append=lambda parent, child: parent[field].append(child))

    def size(node: Any) -> int:
        return len(json.dumps(node, separators=(",", ":")))

    try:
        parts = list(_pack([level(f) for f in fields], size, 0, request, max_bytes))
        return [json.dumps(part, separators=(",", ":")).encode() for part in parts]
    except RecursionError:
        # json.dumps re-encodes what json.loads accepted, but from deeper in the stack (this used to
        # escape as a 500).
        raise InvalidArgument(f"request body is not valid OTLP {signal.value} JSON (nested too deeply)") from None
