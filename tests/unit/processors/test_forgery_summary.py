"""The forgery stage's native summary (native/src/forgery.rs) against its Python reading of the decoded
request: the same view, down to the order of every dict and set, on varied and odd requests; and the
native loops of the cardinality sketches against the Python arithmetic they replaced."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from rampart_native import scan_traces

from benchmarks.otlp_load import trace_request
from processors.base import Batch
from processors.forgery import ForgeryProcessor
from rampart.config import ForgeryConfig
from schemas.envelope import PayloadFormat, Signal

NOW = 1_764_000_000_000_000_000
U64 = 2**64 - 1

keys = st.sampled_from(["service.name", "peer.service", "http.route", "url.path", "", "k", "ключ"])
strings = st.sampled_from(["", "a", "checkout", "cart", "GET /x", "é", "日本", "a\x00b", "x" * 300])


@st.composite
def any_values(draw: st.DrawFn, depth: int = 0) -> AnyValue | None:
    kind = draw(st.sampled_from(["none", "string", "string", "string", "int", "bool", "double", "bytes"]
                                + (["array", "kvlist"] if depth < 2 else [])))
    value = AnyValue()
    if kind == "none":
        return None
    if kind == "string":
        value.string_value = draw(strings)
    elif kind == "int":
        value.int_value = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "bool":
        value.bool_value = draw(st.booleans())
    elif kind == "double":
        value.double_value = draw(st.floats(allow_nan=False))
    elif kind == "bytes":
        value.bytes_value = draw(st.binary(max_size=9))
    elif kind == "array":
        value.array_value.SetInParent()
        for inner in draw(st.lists(any_values(depth + 1), max_size=2)):
            value.array_value.values.append(inner or AnyValue())
    else:
        value.kvlist_value.SetInParent()
        for kv in draw(st.lists(key_values(depth + 1), max_size=2)):
            value.kvlist_value.values.append(kv)
    return value


@st.composite
def key_values(draw: st.DrawFn, depth: int = 0) -> KeyValue:
    kv = KeyValue(key=draw(keys))
    value = draw(any_values(depth))
    if value is not None:
        kv.value.CopyFrom(value)
    return kv


times = st.one_of(st.integers(NOW - 10**12, NOW + 10**11), st.sampled_from([0, 1, U64, NOW + 2**62]))


@st.composite
def requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(draw(st.lists(key_values(), max_size=4)))
        for _ in range(draw(st.integers(1, 2))):
            spans = rs.scope_spans.add().spans
            for _ in range(draw(st.integers(1, 4))):
                start, end = draw(times), draw(times)
                span = spans.add(trace_id=b"\x01" * 16, span_id=draw(st.sampled_from([b"", b"\x02" * 8, b"\x03" * 8])),
                                 parent_span_id=draw(st.sampled_from([b"", b"\x04" * 8, b"\x05" * 8])),
                                 name=draw(strings), kind=draw(st.integers(-2, 7)),
                                 start_time_unix_nano=start, end_time_unix_nano=end)
                span.attributes.extend(draw(st.lists(key_values(), max_size=5)))
                span.status.code = draw(st.integers(-1, 3))
                span.status.message = draw(strings)
                for _ in range(draw(st.integers(0, 2))):
                    event = span.events.add(name=draw(strings), time_unix_nano=draw(times))
                    event.attributes.extend(draw(st.lists(key_values(), max_size=2)))
                for _ in range(draw(st.integers(0, 1))):
                    span.links.add(trace_id=b"\x06" * 16, span_id=b"\x07" * 8)
    return request


def ordered(value: Any) -> Any:
    """A value with every dict and set as the list of its items in iteration order."""
    if isinstance(value, dict):
        return [(ordered(k), ordered(v)) for k, v in value.items()]
    if isinstance(value, (set, frozenset, list, tuple)):
        return [ordered(v) for v in value]
    if dataclasses.is_dataclass(value):
        return [(f.name, ordered(getattr(value, f.name))) for f in dataclasses.fields(value)]
    return value


def views(request: ExportTraceServiceRequest, config: ForgeryConfig | None = None,
          payload: bytes | None = None) -> tuple[Any, Any]:
    """(the native view, the Python view) of one request. ``_extract`` is the processor's one reading
    of a batch; comparing its two ways needs it directly."""
    processor = ForgeryProcessor(config or ForgeryConfig(replay_sample_every=1))
    raw = request.SerializeToString() if payload is None else payload
    batch = Batch(signal=Signal.TRACES, request=request, batch_id="b", tenant="t", principal="p",
                  received_at_ns=NOW, raw_payload=raw)
    native = processor._extract(batch)
    batch.raw_payload = None
    return ordered(native), ordered(processor._extract(batch))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_summary_agrees_with_the_python_reading(request: ExportTraceServiceRequest) -> None:
    native, python = views(request)
    assert native == python


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.integers(2, 5), st.integers(2, 5))
def test_summary_samples_as_the_python_reading(request: ExportTraceServiceRequest, replay: int,
                                               lineage: int) -> None:
    native, python = views(request, ForgeryConfig(replay_sample_every=replay, lineage_sample_every=lineage))
    assert native == python


def test_realistic_batches_agree() -> None:
    rng = random.Random(5)
    for spans in (1, 10, 100, 1000):
        native, python = views(trace_request(spans, rng))
        assert native == python


def test_a_request_it_does_not_take_goes_the_python_way() -> None:
    request = trace_request(3, random.Random(1))
    payload = request.SerializeToString()
    # The request's first field again: a second resource_spans is valid protobuf, but a singular
    # field repeated inside it (here a span's name) makes the native reader step aside.
    doubled_name = ExportTraceServiceRequest()
    doubled_name.ParseFromString(payload)
    span = doubled_name.resource_spans[0].scope_spans[0].spans[0]
    tail = b"\x2a\x01x"   # field 5 (name), "x", after the span's other fields
    raw = payload.replace(span.SerializeToString(), span.SerializeToString() + tail, 1)
    assert raw != payload
    decoded = ExportTraceServiceRequest.FromString(raw)
    assert not scan_traces(raw).clean
    native, python = views(decoded, payload=raw)
    assert native == python


def test_json_payloads_are_read_from_the_decoded_request() -> None:
    request = trace_request(5, random.Random(2))
    processor = ForgeryProcessor(ForgeryConfig())
    batch = Batch(signal=Signal.TRACES, request=request, batch_id="b", tenant="t", principal="p",
                  received_at_ns=NOW, raw_payload=b"{}", payload_format=PayloadFormat.OTLP_JSON)
    assert processor._extract(batch).spans == 5
