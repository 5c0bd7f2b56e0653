"""What the fuzz and hostile-input tests share: example counts, a hang guard, stage chains, and
hypothesis strategies that build valid OTLP requests and then break them.

Structure-aware on purpose: random bytes rarely get past the first varint, so most strategies start
from a real request (random resources, scopes, spans, data points, log records, nested attribute
values, extreme timestamps and ids) and then flip, cut, splice or insert bytes, or replace parts of
its JSON form.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from processors.base import Processor
from processors.chain import ChainOutcome, StageChain
from processors.dedup import DedupProcessor, InMemoryMarks
from processors.otlp import REQUEST_TYPES
from processors.scrub import ScrubProcessor
from processors.validate import ValidateProcessor
from rampart.config import DedupConfig, ScrubConfig, ValidateConfig
from rampart.keyring import KeyRing, generate_key
from rampart.topics import TopicNames
from schemas.envelope import Envelope, PayloadFormat, Signal, decode, encode

# CI runs a few hundred examples per target (well under two minutes for the whole folder); set
# RAMPART_FUZZ_EXAMPLES=20000 for a long hunt (hours).
EXAMPLES = int(os.environ.get("RAMPART_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

NOW = 1_764_000_000_000_000_000
TOPICS = TopicNames("fz")


def _rings() -> tuple[KeyRing, KeyRing]:
    gateway_key, worker_key = generate_key(), generate_key()
    return KeyRing({"gw": gateway_key}, "gw"), KeyRing({"gw": gateway_key, "worker": worker_key}, "worker")


GATEWAY, WORKER = _rings()


# ---------------------------------------------------------------- hang guard

class Hang(Exception):
    """A target did not return within its guard: a hang (or a near-hang) is a bug like a crash."""


@contextlib.contextmanager
def hang_guard(seconds: int, what: str = "target") -> Iterator[None]:
    """Fail with Hang if the block runs longer than ``seconds`` (SIGALRM: the main thread only).

    Generous on purpose: this detects hangs, it does not measure speed."""
    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise Hang(f"{what} still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- stage chains

def processors_for(names: list[str]) -> list[Processor]:
    build: dict[str, Callable[[], Processor]] = {
        "validate": lambda: ValidateProcessor(ValidateConfig()),
        "scrub": lambda: ScrubProcessor(ScrubConfig(), {}),
        "dedup": lambda: DedupProcessor(DedupConfig(), InMemoryMarks(), "fz"),
    }
    return [build[name]() for name in names]


def chain(names: list[str], keying: str = "trace_id") -> StageChain:
    return StageChain(names=names, processors=processors_for(names), keyring=WORKER, topics=TOPICS,
                      output_topic=TOPICS.clean, keying=keying, output_partitions=lambda _s: 4, instance="fuzz")


def envelope(payload: bytes, signal_: Signal = Signal.TRACES,
             payload_format: PayloadFormat = PayloadFormat.OTLP_PROTO) -> bytes:
    """A gateway-signed envelope around ``payload``, as the raw topic holds it."""
    return encode(GATEWAY.sign(Envelope(batch_id=str(uuid.uuid4()), tenant="acme", principal="k1", signal=signal_,
                                        payload_format=payload_format, received_at_ns=NOW, gateway_id="gw",
                                        payload=payload, stages=("gateway",))))


def check_outcome(outcome: ChainOutcome, signal_: Signal) -> None:
    """What every outcome must look like: quarantined with a reason, or outputs and rejects with
    reasons that account for every item, all signed and decodable."""
    topics = [r.topic for r in outcome.records]
    if outcome.quarantine_reason is not None:
        assert outcome.quarantine_reason
        quarantine = [r for r in outcome.records if r.topic == TOPICS.quarantine(signal_)]
        assert len(quarantine) == 1
        headers = dict(quarantine[0].headers or [])
        assert headers["rampart.quarantine.reason"] == outcome.quarantine_reason.encode()
        assert TOPICS.audit() in topics and TOPICS.clean(signal_) not in topics
        return
    assert outcome.items_in == outcome.items_out + sum(outcome.dropped.values())
    request_type = REQUEST_TYPES[signal_]
    for record in outcome.records:
        if record.topic == TOPICS.audit():
            continue
        out = decode(record.value)
        WORKER.verify(out)
        assert out.payload_format is PayloadFormat.OTLP_PROTO
        request_type.FromString(out.payload)
        if record.topic == TOPICS.rejected(signal_):
            assert out.attributes["rampart.reject.reason"] and out.attributes["rampart.reject.detail"]
            assert int(out.attributes["rampart.reject.count"]) >= 1
        else:
            assert record.topic == TOPICS.clean(signal_), record.topic


# ---------------------------------------------------------------- valid OTLP requests

def _ids(size: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(min_size=size, max_size=size), st.just(bytes(size)), st.binary(max_size=size * 2))


TIMESTAMPS = st.one_of(st.integers(NOW - 10**12, NOW + 10**10), st.sampled_from([0, 1, 2**63 - 1, 2**64 - 1]),
                       st.integers(0, 2**64 - 1))
TEXT = st.one_of(st.text(max_size=30), st.sampled_from(["jane@example.com", "Bearer abcdefgh12345678",
                                                        "4111 1111 1111 1111", "AKIAABCDEFGHIJKLMNOP",
                                                        "https://u:pw@host/x?token=s3cret", "10.0.0.1",
                                                        "[REDACTED]", "select * from t where a='x'"]))
KEYS = st.one_of(st.text(max_size=12), st.sampled_from(["service.name", "tenant.id", "authorization", "password",
                                                        "db.statement", "rampart.redacted.count"]))


@st.composite
def any_values(draw: st.DrawFn, depth: int = 0) -> AnyValue:
    value = AnyValue()
    kinds = ["string", "bool", "int", "double", "bytes", "empty"] + (["array", "kvlist"] if depth < 10 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "string":
        value.string_value = draw(TEXT)
    elif kind == "bool":
        value.bool_value = draw(st.booleans())
    elif kind == "int":
        value.int_value = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "double":
        value.double_value = draw(st.floats(allow_nan=True, allow_infinity=True))
    elif kind == "bytes":
        value.bytes_value = draw(st.binary(max_size=20))
    elif kind == "array":
        for _ in range(draw(st.integers(0, 3))):
            value.array_value.values.add().CopyFrom(draw(any_values(depth + 1)))
    elif kind == "kvlist":
        for _ in range(draw(st.integers(0, 3))):
            value.kvlist_value.values.add(key=draw(KEYS)).value.CopyFrom(draw(any_values(depth + 1)))
    return value


def _attributes(draw: st.DrawFn, container: Any, most: int = 4) -> None:
    for _ in range(draw(st.integers(0, most))):
        container.add(key=draw(KEYS)).value.CopyFrom(draw(any_values()))


def _resource_and_scope(draw: st.DrawFn, resource: Any, scope: Any) -> None:
    _attributes(draw, resource.resource.attributes)
    if draw(st.booleans()):
        resource.resource.attributes.add(key="service.name").value.string_value = draw(st.sampled_from(["a", "b"]))
    scope.scope.name = draw(st.text(max_size=10))
    _attributes(draw, scope.scope.attributes, most=2)


@st.composite
def trace_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        resource = request.resource_spans.add()
        for _ in range(draw(st.integers(0, 2))):
            scope = resource.scope_spans.add()
            _resource_and_scope(draw, resource, scope)
            for _ in range(draw(st.integers(0, 4))):
                span = scope.spans.add(trace_id=draw(_ids(16)), span_id=draw(_ids(8)), parent_span_id=draw(_ids(8)),
                                       name=draw(TEXT), kind=draw(st.integers(0, 5)),
                                       start_time_unix_nano=draw(TIMESTAMPS), end_time_unix_nano=draw(TIMESTAMPS),
                                       trace_state=draw(st.sampled_from(["", "a=1", "Bad=", "x" * 300])))
                _attributes(draw, span.attributes)
                for _ in range(draw(st.integers(0, 2))):
                    event = span.events.add(name=draw(TEXT), time_unix_nano=draw(TIMESTAMPS))
                    _attributes(draw, event.attributes, most=2)
                for _ in range(draw(st.integers(0, 1))):
                    link = span.links.add(trace_id=draw(_ids(16)), span_id=draw(_ids(8)))
                    _attributes(draw, link.attributes, most=2)
    return request


@st.composite
def metrics_requests(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    numbers = st.floats(allow_nan=True, allow_infinity=True)
    for _ in range(draw(st.integers(0, 2))):
        resource = request.resource_metrics.add()
        scope = resource.scope_metrics.add()
        _resource_and_scope(draw, resource, scope)
        for _ in range(draw(st.integers(0, 3))):
            metric = scope.metrics.add(name=draw(st.sampled_from(["orders", "", "latency.ms", "x" * 2000])))
            kind = draw(st.sampled_from(["gauge", "sum", "histogram", "exponential_histogram", "summary", "none"]))
            for _ in range(draw(st.integers(0, 3))):
                stamps = {"time_unix_nano": draw(TIMESTAMPS), "start_time_unix_nano": draw(TIMESTAMPS)}
                if kind in ("gauge", "sum"):
                    data = getattr(metric, kind)
                    if kind == "sum":
                        data.is_monotonic = draw(st.booleans())
                        data.aggregation_temporality = draw(st.integers(0, 3))
                    point = data.data_points.add(**stamps)
                    if draw(st.booleans()):
                        point.as_int = draw(st.integers(-(2**63), 2**63 - 1))
                    else:
                        point.as_double = draw(numbers)
                elif kind == "histogram":
                    point = metric.histogram.data_points.add(
                        count=draw(st.integers(0, 2**64 - 1)), sum=draw(numbers),
                        bucket_counts=draw(st.lists(st.integers(0, 2**64 - 1), max_size=4)),
                        explicit_bounds=draw(st.lists(numbers, max_size=3)), **stamps)
                elif kind == "exponential_histogram":
                    point = metric.exponential_histogram.data_points.add(
                        count=draw(st.integers(0, 10)), zero_count=draw(st.integers(0, 10)),
                        scale=draw(st.integers(-(2**31), 2**31 - 1)), **stamps)
                    point.positive.bucket_counts.extend(draw(st.lists(st.integers(0, 10), max_size=3)))
                    point.negative.offset = draw(st.integers(-(2**31), 2**31 - 1))
                elif kind == "summary":
                    point = metric.summary.data_points.add(count=draw(st.integers(0, 10)), **stamps)
                    point.quantile_values.add(quantile=draw(numbers), value=draw(numbers))
                else:
                    continue
                _attributes(draw, point.attributes, most=2)
    return request


@st.composite
def logs_requests(draw: st.DrawFn) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        resource = request.resource_logs.add()
        scope = resource.scope_logs.add()
        _resource_and_scope(draw, resource, scope)
        for _ in range(draw(st.integers(0, 4))):
            record = scope.log_records.add(time_unix_nano=draw(TIMESTAMPS), observed_time_unix_nano=draw(TIMESTAMPS),
                                           severity_number=draw(st.integers(-3, 30)),
                                           severity_text=draw(st.text(max_size=8)),
                                           trace_id=draw(_ids(16)), span_id=draw(_ids(8)))
            record.body.CopyFrom(draw(any_values()))
            _attributes(draw, record.attributes)
    return request


REQUESTS: dict[Signal, Callable[[], st.SearchStrategy[Any]]] = {
    Signal.TRACES: trace_requests, Signal.METRICS: metrics_requests, Signal.LOGS: logs_requests}


def requests(signal_: Signal) -> st.SearchStrategy[Message]:
    strategy: st.SearchStrategy[Message] = REQUESTS[signal_]()
    return strategy


# ---------------------------------------------------------------- breaking them

@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few random structure-blind edits: what a fuzzer does to a real message."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate", "varint"]))
        pos = draw(st.integers(0, len(out))) if out else 0
        if action == "flip" and pos < len(out):
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and pos < len(out):
            out[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x0B, 0x0C]))
        elif action == "truncate":
            del out[pos:]
        elif action == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del out[pos:pos + draw(st.integers(1, 8))]
        elif action == "duplicate":
            end = draw(st.integers(pos, len(out)))
            out[pos:pos] = out[pos:end]
        elif action == "varint":  # an absurd length or tag
            out[pos:pos] = draw(st.sampled_from([b"\xff" * 9 + b"\x01", b"\x80" * 10, b"\xff\xff\xff\xff\x0f"]))
    return bytes(out)


@st.composite
def spliced(draw: st.DrawFn, first: bytes, second: bytes) -> bytes:
    """A prefix of one message followed by a suffix of another."""
    return first[:draw(st.integers(0, len(first)))] + second[draw(st.integers(0, len(second))):]


@st.composite
def hostile_protobuf(draw: st.DrawFn, signal_: Signal) -> bytes:
    """Valid, mutated or spliced requests of ``signal_``, or of another signal, or random bytes."""
    first = draw(requests(signal_)).SerializeToString()
    choice = draw(st.sampled_from(["valid", "mutated", "spliced", "other_signal", "random"]))
    if choice == "valid":
        return first
    if choice == "mutated":
        return draw(mutated(first))
    if choice == "spliced":
        other = draw(requests(draw(st.sampled_from(list(Signal))))).SerializeToString()
        return draw(spliced(first, other))
    if choice == "other_signal":
        return draw(requests(draw(st.sampled_from(list(Signal))))).SerializeToString()
    return draw(st.binary(max_size=300))


def otlp_json(request: Message) -> Any:
    """The OTLP/JSON form of a request: protobuf's JSON mapping with ids as hex, as OTLP wants."""
    document = MessageToDict(request)
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                    node[key] = base64.b64decode(value).hex()
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))
    return document


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
    | st.sampled_from([10**400, -(10**30), 2**64, -1, 1e308, "-1", "18446744073709551616", "zz", "NaN", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


@st.composite
def json_mutated(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with some values replaced by arbitrary JSON (wrong types, huge numbers, ...)."""
    for _ in range(draw(st.integers(1, 3))):
        nodes: list[tuple[Any, Any]] = []
        stack: list[Any] = [document]
        while stack:
            node = stack.pop()
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            for key, value in items:
                nodes.append((node, key))
                stack.append(value)
        if not nodes:
            return draw(JSON_VALUES)
        parent, key = draw(st.sampled_from(nodes))
        parent[key] = draw(JSON_VALUES)
    return document


def dumps_with_duplicates(document: Any, duplicate: Callable[[str], bool]) -> str:
    """JSON text in which every key ``duplicate`` picks appears twice, the first time with null."""
    if isinstance(document, dict):
        members = []
        for key, value in document.items():
            if duplicate(key):
                members.append(f"{json.dumps(key)}:null")
            members.append(f"{json.dumps(key)}:{dumps_with_duplicates(value, duplicate)}")
        return "{" + ",".join(members) + "}"
    if isinstance(document, list):
        return "[" + ",".join(dumps_with_duplicates(v, duplicate) for v in document) + "]"
    if isinstance(document, float) and not math.isfinite(document):
        return "1e999"
    return json.dumps(document)


@st.composite
def hostile_json(draw: st.DrawFn, signal_: Signal) -> bytes:
    """OTLP/JSON of ``signal_``: valid, with replaced values, duplicate keys, or broken text."""
    document = otlp_json(draw(requests(signal_)))
    choice = draw(st.sampled_from(["valid", "values", "duplicates", "text"]))
    if choice == "valid":
        return json.dumps(document).encode()
    if choice == "values":
        return json.dumps(draw(json_mutated(document))).encode()
    if choice == "duplicates":
        return dumps_with_duplicates(document, lambda key: len(key) % 2 == 0).encode()
    return draw(mutated(json.dumps(document).encode()))
