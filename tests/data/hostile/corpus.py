"""The hostile-input corpus: payloads and request bodies built on demand, so that the large ones
(100 MB strings, a million attributes, gzip bombs) never live in the repository.

Each function returns the bytes of one case; tests/fuzz/test_hostile_*.py send them to a real
gateway or through a stage chain and check the outcome. Small inputs that once crashed or hung
something are kept as files next to this module (see README.md) and replayed by
tests/fuzz/test_regressions.py. ``python -m tests.data.hostile.corpus DIR`` writes the moderate
cases to DIR for use with other tools (curl, a collector, another fuzzer's seed corpus).
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

from opentelemetry.proto.trace.v1.trace_pb2 import Span

HERE = Path(__file__).resolve().parent
NOW = 1_764_000_000_000_000_000  # the received_at the in-process tests give their envelopes
TRACE_ID, SPAN_ID = bytes(range(1, 17)), bytes(range(1, 9))


# ---------------------------------------------------------------- protobuf wire helpers

def uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, value: bytes) -> bytes:
    """A length-delimited field (embedded message, string or bytes)."""
    return uvarint(number << 3 | 2) + uvarint(len(value)) + value


def span(name: str = "op", **fields: object) -> bytes:
    """A valid span (ids set, timestamps around NOW), as bytes; more fields can be appended."""
    message = Span(trace_id=TRACE_ID, span_id=SPAN_ID, name=name, start_time_unix_nano=NOW - 1000,
                   end_time_unix_nano=NOW)
    for key, value in fields.items():
        setattr(message, key, value)
    return message.SerializeToString()


def traces(*spans: bytes, resource: bytes = b"") -> bytes:
    """ExportTraceServiceRequest{resource_spans: [{resource, scope_spans: [{spans}]}]}."""
    scope_spans = b"".join(field(2, s) for s in spans)
    return field(1, (field(1, resource) if resource else b"") + field(2, scope_spans))


def attribute(key: bytes, any_value: bytes) -> bytes:
    """A KeyValue: key (1) and an AnyValue (2)."""
    return field(1, key) + field(2, any_value)


def string_value(text: bytes) -> bytes:
    return field(1, text)


# ---------------------------------------------------------------- payloads

def deep_value(levels: int) -> bytes:
    """An AnyValue nested ``levels`` deep through kvlist values."""
    value = string_value(b"bottom")
    for _ in range(levels):
        value = field(6, field(1, attribute(b"k", value)))  # AnyValue.kvlist_value.values[0]
    return value


def deep_attribute_span(levels: int) -> bytes:
    """A span whose one attribute nests ``levels`` deep (span.attributes is field 9)."""
    return traces(span() + field(9, attribute(b"deep", deep_value(levels))))


def deep_json(levels: int) -> bytes:
    """OTLP/JSON with an attribute value nested ``levels`` deep (kvlistValue in kvlistValue)."""
    head = '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10",' \
           '"spanId":"0102030405060708","name":"op","attributes":[{"key":"deep","value":'
    opening = '{"kvlistValue":{"values":[{"key":"k","value":'
    closing = "}]}}"
    return (head + opening * levels + '{"stringValue":"bottom"}' + closing * levels + "}]}]}]}]}").encode()


def many_attributes(count: int, on: str = "span") -> bytes:
    """``count`` attributes (key "a", empty value: 7 bytes each) on the span or on its resource."""
    attributes = field(9 if on == "span" else 1, attribute(b"a", b"")) * count
    if on == "span":
        return traces(span() + attributes)
    return traces(span(), resource=attributes)


def many_resource_attributes_logs(count: int, records: int) -> bytes:
    """A resource with ``count`` attributes above ``records`` log records: what made dedup quadratic."""
    resource = field(1, attribute(b"a", b"")) * count
    log_records = b"".join(field(2, b"\x09" + NOW.to_bytes(8, "little") + field(5, string_value(b"line %d" % i)))
                           for i in range(records))
    return field(1, field(1, resource) + field(2, log_records))


def huge_string_span(size: int) -> bytes:
    """A span with one string attribute of ``size`` bytes."""
    return traces(span() + field(9, attribute(b"big", string_value(b"x" * size))))


def invalid_utf8_span() -> bytes:
    """A span name that is not UTF-8 (proto3 strings must be)."""
    return traces(span(name="") + field(5, b"caf\xc3(\xff\xfe"))


def truncated_inside() -> bytes:
    """Top-level framing intact (the gateway's check passes), a span inside cut short."""
    good = span()
    return field(1, field(2, field(2, good)[:-5] + b"\x0a\x05ab"))


def wrong_wire_types() -> bytes:
    """trace_id as a varint, name as fixed64, start time as a string: proto3 keeps them as unknown
    fields, so the span arrives without ids or times."""
    bad = (b"\x08" + uvarint(12345) + b"\x29" + bytes(8) + field(7, b"yesterday")
           + field(2, SPAN_ID) + b"\x41" + NOW.to_bytes(8, "little"))
    return traces(bad)


def timestamps(start: int, end: int) -> bytes:
    return traces(span(start_time_unix_nano=start, end_time_unix_nano=end))


def zero_ids() -> bytes:
    return traces(span(trace_id=bytes(16)), span(span_id=bytes(8)), span(trace_id=bytes(16), span_id=bytes(8)))


def json_span(**fields: object) -> dict[str, object]:
    span_fields: dict[str, object] = {"traceId": TRACE_ID.hex(), "spanId": SPAN_ID.hex(), "name": "op",
                                      "startTimeUnixNano": str(NOW - 1000), "endTimeUnixNano": str(NOW)}
    span_fields.update(fields)
    return span_fields


def json_traces(*spans: dict[str, object]) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}).encode()


JSON_WRONG_TYPES = {
    "name_is_a_number": json_traces(json_span(name=5)),
    "attributes_is_a_string": json_traces(json_span(attributes="x")),
    "spans_is_an_object": b'{"resourceSpans":[{"scopeSpans":[{"spans":{"name":"x"}}]}]}',
    "trace_id_is_a_number": json_traces(json_span(traceId=1)),
    "trace_id_not_hex": json_traces(json_span(traceId="zz" * 16)),
    "int_value_is_a_list": json_traces(json_span(attributes=[{"key": "k", "value": {"intValue": [1]}}])),
    "resource_is_a_list": b'{"resourceSpans":[{"resource":[1,2],"scopeSpans":[]}]}',
}

JSON_HUGE_NUMBERS = {
    "negative_time": json_traces(json_span(startTimeUnixNano="-1")),
    "time_above_uint64": json_traces(json_span(endTimeUnixNano=str(2**64))),
    "time_as_float_1e30": json_traces(json_span(endTimeUnixNano=1e30)),
    "time_as_1e999": json_traces(json_span()).replace(f'"{NOW}"'.encode(), b"1e999"),
    "int_value_5000_digits": json_traces(json_span()).replace(f'"{NOW}"'.encode(), b"9" * 5000),
    "int_attribute_above_int64": json_traces(json_span(attributes=[{"key": "k", "value": {"intValue": str(2**63)}}])),
}


def json_duplicate_keys(first_trace_id: str, last_trace_id: str) -> bytes:
    """A span naming traceId twice."""
    text = json_traces(json_span(name="dup")).decode()
    return text.replace(f'"traceId": "{TRACE_ID.hex()}"',
                        f'"traceId": "{first_trace_id}", "traceId": "{last_trace_id}"').encode()


def json_duplicate_resource_lists() -> bytes:
    """Two "resourceSpans" arrays: json.loads would keep only the second."""
    first = json.dumps([{"scopeSpans": [{"spans": [json_span(name="first")]}]}])
    second = json.dumps([{"scopeSpans": [{"spans": [json_span(name="second")]}]}])
    return f'{{"resourceSpans": {first}, "resourceSpans": {second}}}'.encode()


def empty_resources(count: int) -> bytes:
    """``count`` empty resources: two bytes each, millions in a few megabytes."""
    return b"\x0a\x00" * count


def empty_log_records(count: int) -> bytes:
    return field(1, field(2, b"\x12\x00" * count))


def empty_json_log_records(count: int) -> bytes:
    return b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[' + b"{}," * (count - 1) + b"{}]}]}]}"


def unknown_field_with_secret() -> bytes:
    """A span with a field this build's schema does not know (number 999) holding an e-mail address."""
    return traces(span() + field(999, b"leak: jane.doe@example.com"))


def redos_span(value: str, count: int = 100) -> bytes:
    """A span with ``count`` copies of a string that backtracking expressions choke on, plus an
    e-mail and a JWT prefix so that the scrub screens let every detector run."""
    attributes = b"".join(field(9, attribute(b"v%d" % i, string_value(value.encode()))) for i in range(count))
    return traces(span() + attributes + field(9, attribute(b"mail", string_value(b"x@example.io eyJ"))))


def gzip_bomb(inflated_bytes: int) -> bytes:
    """gzip of ``inflated_bytes`` zero bytes (about 1000:1), built without holding the inflated data."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(inflated_bytes // len(chunk))]
    parts.append(compressor.compress(bytes(inflated_bytes % len(chunk))))
    parts.append(compressor.flush())
    return b"".join(parts)


def gzip_members(*members: bytes) -> bytes:
    """Several gzip members back to back (RFC 1952): they inflate to their concatenation."""
    out = b""
    for member in members:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        out += compressor.compress(member) + compressor.flush()
    return out


MODERATE = {
    "deep_attribute_5000.pb": lambda: deep_attribute_span(5000),
    "deep_json_5000.json": lambda: deep_json(5000),
    "invalid_utf8.pb": invalid_utf8_span,
    "truncated_inside.pb": truncated_inside,
    "wrong_wire_types.pb": wrong_wire_types,
    "zero_ids.pb": zero_ids,
    "duplicate_resource_lists.json": json_duplicate_resource_lists,
    "gzip_bomb_256MiB.gz": lambda: gzip_bomb(256 * 1024 * 1024),
    "unknown_field_with_secret.pb": unknown_field_with_secret,
}


def main(argv: list[str]) -> None:
    target = Path(argv[0] if argv else "hostile-corpus")
    target.mkdir(parents=True, exist_ok=True)
    for name, build in MODERATE.items():
        (target / name).write_bytes(build())
        print(target / name)


if __name__ == "__main__":
    main(sys.argv[1:])
