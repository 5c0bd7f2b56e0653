"""The clean-batch fast path against the Python path it stands in for: the same records, counters and
drops for every input, clean or not, and the fast path actually taken for clean traffic."""

from __future__ import annotations

import json
import random
import secrets
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry
from rampart_native import Needles, card_screen, scan_traces

from benchmarks.otlp_load import SERVICES, trace_request
from processors.base import Batch, Processor, Result
from processors.chain import ChainOutcome, StageChain
from processors.dedup import DedupProcessor, InMemoryMarks
from processors.forgery import INTEGRITY_SCORE, ForgeryProcessor
from processors.scrub import ScrubProcessor
from processors.validate import ValidateProcessor
from rampart.config import DedupConfig, ForgeryConfig, ScrubConfig, ValidateConfig
from rampart.keyring import KeyRing, SignatureError, generate_key, is_encrypted
from rampart.publisher import Record
from schemas.envelope import Envelope, EnvelopeError, PayloadFormat, Signal, decode, encode
from tests.data.hostile import corpus
from tests.fuzz.support import FUZZ, NOW, TOPICS, mutated

_SIGNING, _PAYLOAD = generate_key(), {"enc": secrets.token_bytes(32)}
GATEWAY = KeyRing({"gw": _SIGNING}, "gw", _PAYLOAD, "enc")
WORKER = KeyRing({"gw": _SIGNING, "worker": generate_key()}, "worker", _PAYLOAD, "enc")
HOSTILE = Path(__file__).resolve().parents[2] / "data" / "hostile"
CLEAN_TEXT = ["GET /api/cart", "checkout", "1.42.0", "production", "Mozilla/5.0 (X11; Linux x86_64)", "shop", ""]
# Each kind of thing the scrub screens react to, and things they let through.
SCRUB_TEXT = ["jane.doe@example.com", "4111 1111 1111 1111", "4111 1111 1111 1112", "Bearer abcdefgh12345678",
              "AKIAABCDEFGHIJKLMNOP", "https://admin:hunter2@db.internal/x", "http://host/path?x=1",
              "/login?user=bob&password=hunter2", "10.0.0.1", "[REDACTED]", "x [HMAC:0123456789abcdef] y",
              "-----BEGIN RSA PRIVATE KEY-----\nabc", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "x'y", "a\nb"]
SQL = ["SELECT id FROM t WHERE id = $1", "SELECT * FROM t WHERE a = 'x'", "SELECT 1", "UPDATE t SET a = $2"]
KEYS = ["http.route", "url.full", "db.query.text", "db.statement", "Authorization", "x-api-key", "user.password",
        "tenant.id", "tenant", "rampart.redacted.count", "k" * 1025, "é"]


def chains(keying: str, partitions: int, encrypt: bool = False,
           processors: Callable[[], list[Processor]] | None = None) -> tuple[StageChain, StageChain]:
    """The same chain twice, with and without the fast path, each with its own dedup marks."""
    def build(fast: bool) -> StageChain:
        chosen = processors() if processors else [
            ValidateProcessor(ValidateConfig()), ScrubProcessor(ScrubConfig(), {}),
            DedupProcessor(DedupConfig(), InMemoryMarks(), "t")]
        return StageChain(names=[p.name for p in chosen], processors=chosen, keyring=WORKER, topics=TOPICS,
                          output_topic=TOPICS.clean, keying=keying, output_partitions=lambda _s: partitions,
                          instance="test", encrypt_unscrubbed=encrypt, fast_path=fast)
    return build(True), build(False)


def envelope(payload: bytes, batch_id: str | None = None, encrypt: bool = False) -> bytes:
    return encode(GATEWAY.seal(Envelope(batch_id=batch_id or str(uuid.uuid4()), tenant="acme", principal="k1",
                                        signal=Signal.TRACES, payload_format=PayloadFormat.OTLP_PROTO,
                                        received_at_ns=NOW, gateway_id="gw", payload=payload, stages=("gateway",)),
                               encrypt=encrypt))


def comparable(record: Record) -> tuple[Any, ...]:
    """A record without what differs between two runs by nature: times and (when encrypted) nonces."""
    headers = tuple(h for h in record.headers or [] if h[0] != "rampart.quarantine.at")
    if record.topic == TOPICS.audit():
        value: Any = {k: v for k, v in json.loads(record.value).items() if k != "ts"}
    else:
        try:
            value = WORKER.open(decode(record.value))
            value = (value.batch_id, value.payload, value.stages, value.attributes, value.tenant)
        except (EnvelopeError, SignatureError):  # a quarantined input: compared as the bytes it was
            value = record.value
    return record.topic, record.key, record.partition, headers, value


def same(fast: ChainOutcome, slow: ChainOutcome) -> None:
    assert slow.fast_path_batches == 0
    assert [comparable(r) for r in fast.records] == [comparable(r) for r in slow.records]
    assert (fast.quarantine_reason, fast.items_in, fast.items_out, fast.changed, fast.dropped, fast.counts) == \
        (slow.quarantine_reason, slow.items_in, slow.items_out, slow.changed, slow.dropped, slow.counts)


def run_both(pair: tuple[StageChain, StageChain], values: list[bytes]) -> int:
    """Feed both chains the same records; every outcome must agree. Returns the fast-path count."""
    taken = 0
    for value in values:
        fast = pair[0].handle(Signal.TRACES, value, b"key", "t.raw.traces/0/1")
        slow = pair[1].handle(Signal.TRACES, value, b"key", "t.raw.traces/0/1")
        same(fast, slow)
        taken += fast.fast_path_batches
    return taken


# ---------------------------------------------------------------- requests near the clean/not-clean line

def _value(draw: st.DrawFn, depth: int = 0) -> AnyValue:
    value = AnyValue()
    kind = draw(st.sampled_from(["string", "string", "int", "bool", "double", "bytes", "array", "kvlist", "empty"]))
    if kind == "string":
        value.string_value = draw(st.sampled_from(CLEAN_TEXT))
    elif kind == "int":
        value.int_value = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "bool":
        value.bool_value = draw(st.booleans())
    elif kind == "double":
        value.double_value = draw(st.floats(allow_nan=False))
    elif kind == "bytes":
        value.bytes_value = draw(st.binary(max_size=8))
    elif kind == "array" and depth < 3:
        value.array_value.values.extend(_value(draw, depth + 1) for _ in range(draw(st.integers(0, 2))))
    elif kind == "kvlist" and depth < 3:
        for _ in range(draw(st.integers(0, 2))):
            entry = value.kvlist_value.values.add(key=draw(st.sampled_from(["a", "b.c"])))
            entry.value.CopyFrom(_value(draw, depth + 1))
    return value


def _attributes(draw: st.DrawFn, container: Any, most: int = 3) -> None:
    for _ in range(draw(st.integers(0, most))):
        container.add(key=draw(st.sampled_from(["http.route", "server.port", "net.peer", "a.b"]))).value.CopyFrom(
            _value(draw))


def _ids(rng: random.Random) -> tuple[bytes, bytes]:
    return bytes([rng.randrange(1, 256)]) + rng.randbytes(15), bytes([rng.randrange(1, 256)]) + rng.randbytes(7)


@st.composite
def clean_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    rng = random.Random(draw(st.integers(0, 2**32)))
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        resource = request.resource_spans.add(schema_url=draw(st.sampled_from(["", "https://opentelemetry.io/s"])))
        if draw(st.booleans()):
            resource.resource.attributes.add(key="service.name").value.string_value = draw(st.sampled_from("ab"))
            _attributes(draw, resource.resource.attributes)
        for _ in range(draw(st.integers(1, 2))):
            scope = resource.scope_spans.add(schema_url=draw(st.sampled_from(["", "s"])))
            if draw(st.booleans()):
                scope.scope.name, scope.scope.version = "lib", draw(st.sampled_from(["", "1.0"]))
                _attributes(draw, scope.scope.attributes, most=1)
            for _ in range(draw(st.integers(1, 4))):
                trace_id, span_id = _ids(rng)
                start = NOW - draw(st.integers(0, 10**12))
                span = scope.spans.add(trace_id=trace_id, span_id=span_id, name=draw(st.sampled_from(CLEAN_TEXT)),
                                       kind=draw(st.integers(0, 5)), start_time_unix_nano=start,
                                       end_time_unix_nano=start + draw(st.integers(0, 10**9)),
                                       flags=draw(st.sampled_from([0, 1, 257])),
                                       trace_state=draw(st.sampled_from(["", "", "a=1,b=2", "vendor@x=y"])),
                                       dropped_attributes_count=draw(st.sampled_from([0, 2])))
                if draw(st.booleans()):
                    span.parent_span_id = _ids(rng)[1]
                if draw(st.booleans()):
                    span.status.code = draw(st.sampled_from([0, 1, 2]))
                    span.status.message = draw(st.sampled_from(["", "boom"]))
                _attributes(draw, span.attributes)
                for _ in range(draw(st.integers(0, 2))):
                    event = span.events.add(name=draw(st.sampled_from(CLEAN_TEXT)), time_unix_nano=start + 5)
                    _attributes(draw, event.attributes, most=1)
                for _ in range(draw(st.integers(0, 1))):
                    link_trace, link_span = _ids(rng)
                    link = span.links.add(trace_id=link_trace, span_id=link_span,
                                          trace_state=draw(st.sampled_from(["", "a=1"])))
                    _attributes(draw, link.attributes, most=1)
    return request


def _spans(request: ExportTraceServiceRequest) -> list[Span]:
    return [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


def _somewhere(draw: st.DrawFn, request: ExportTraceServiceRequest) -> Any:
    """An attribute list of the request: a resource's, a scope's, a span's, an event's or a link's."""
    span = draw(st.sampled_from(_spans(request)))
    holders = [request.resource_spans[0].resource.attributes, request.resource_spans[0].scope_spans[0].scope.attributes,
               span.attributes, *(e.attributes for e in span.events), *(link.attributes for link in span.links)]
    return draw(st.sampled_from(holders))


def _twist(draw: st.DrawFn, request: ExportTraceServiceRequest) -> None:
    """One change that may (or, as for a claim of the right tenant, may not) make the batch not clean."""
    span = draw(st.sampled_from(_spans(request)))
    twist = draw(st.sampled_from([
        "trace_id", "span_id", "parent", "end_before_start", "old", "future", "event_time", "attributes", "events",
        "links", "name", "key", "string", "bytes", "deep", "tracestate", "link_id", "claim", "claim_ok",
        "claim_int", "scrub_value", "scrub_name", "scrub_event_name", "scrub_nested", "sql", "sensitive",
        "sensitive_nested", "empty_scope", "empty_resource", "max_depth_ok"]))
    if twist == "trace_id":
        span.trace_id = draw(st.sampled_from([bytes(16), b"short", bytes(17)]))
    elif twist == "span_id":
        span.span_id = draw(st.sampled_from([bytes(8), b"abc"]))
    elif twist == "parent":
        span.parent_span_id = b"abc"
    elif twist == "end_before_start":
        span.end_time_unix_nano = span.start_time_unix_nano - 1
    elif twist == "old":
        span.start_time_unix_nano = NOW - 24 * 3600 * 10**9 - 1
    elif twist == "future":
        span.end_time_unix_nano = NOW + 300 * 10**9 + draw(st.sampled_from([0, 1]))
    elif twist == "event_time":
        span.events.add(name="e", time_unix_nano=draw(st.sampled_from([1, NOW + 10**12, 0])))
    elif twist == "attributes":
        for i in range(draw(st.sampled_from([128, 129]))):
            _somewhere(draw, request).add(key=f"k{i}").value.int_value = i
    elif twist == "events":
        span.events.extend(Span.Event(name="e", time_unix_nano=NOW) for _ in range(draw(st.sampled_from([128, 129]))))
    elif twist == "links":
        trace_id, span_id = _ids(random.Random(1))
        span.links.extend(Span.Link(trace_id=trace_id, span_id=span_id) for _ in range(129))
    elif twist == "name":
        span.name = "n" * draw(st.sampled_from([1024, 1025])) if draw(st.booleans()) else "é" * 513
    elif twist == "key":
        _somewhere(draw, request).add(key="k" * draw(st.sampled_from([1024, 1025]))).value.int_value = 1
    elif twist == "string":
        _somewhere(draw, request).add(key="s").value.string_value = "s" * draw(st.sampled_from([32768, 32769]))
    elif twist == "bytes":
        _somewhere(draw, request).add(key="b").value.bytes_value = b"b" * draw(st.sampled_from([32768, 32769]))
    elif twist in ("deep", "max_depth_ok"):
        value = AnyValue(string_value="x")
        for _ in range(8 if twist == "deep" else 7):
            outer = AnyValue()
            outer.array_value.values.add().CopyFrom(value)
            value = outer
        _somewhere(draw, request).add(key="d").value.CopyFrom(value)
    elif twist == "tracestate":
        span.trace_state = draw(st.sampled_from(["Bad=1", "a=1,,b=2", "a=" + "v" * 300, "a= 1", " a=1 "]))
    elif twist == "link_id":
        span.links.add(trace_id=b"x" * 16, span_id=b"short")
    elif twist in ("claim", "claim_ok", "claim_int"):
        claim = request.resource_spans[-1].resource.attributes.add(key=draw(st.sampled_from(["tenant.id", "tenant"])))
        if twist == "claim_int":
            claim.value.int_value = 7
        else:
            claim.value.string_value = "acme" if twist == "claim_ok" else "other"
    elif twist == "scrub_value":
        _somewhere(draw, request).add(key=draw(st.sampled_from(KEYS[:3]))).value.string_value = \
            draw(st.sampled_from(SCRUB_TEXT))
    elif twist == "scrub_name":
        span.name = draw(st.sampled_from(SCRUB_TEXT))
    elif twist == "scrub_event_name":
        span.events.add(name=draw(st.sampled_from(SCRUB_TEXT)), time_unix_nano=NOW)
    elif twist == "scrub_nested":
        value = _somewhere(draw, request).add(key="n").value
        inner = value.kvlist_value.values.add(key=draw(st.sampled_from(KEYS))).value
        inner.array_value.values.add().string_value = draw(st.sampled_from(SCRUB_TEXT + SQL))
    elif twist == "sql":
        span.attributes.add(key=draw(st.sampled_from(["db.query.text", "db.statement"]))).value.string_value = \
            draw(st.sampled_from(SQL))
        if draw(st.booleans()):
            span.attributes.add(key="http.route").value.string_value = "/items/42"
    elif twist == "sensitive":
        _somewhere(draw, request).add(key=draw(st.sampled_from(KEYS[4:]))).value.string_value = "v"
    elif twist == "sensitive_nested":
        value = _somewhere(draw, request).add(key="headers").value
        value.kvlist_value.values.add(key=draw(st.sampled_from(["Cookie", "PASSWORD", "ok"]))).value.string_value = "v"
    elif twist == "empty_scope":
        request.resource_spans[0].scope_spans.add()
    elif twist == "empty_resource":
        request.resource_spans.add()


def _field(number: int, payload: bytes) -> bytes:
    return corpus.field(number, payload)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """Clean requests, twisted ones, and ones whose wire bytes say more than the message does."""
    request = draw(clean_requests())
    for _ in range(draw(st.integers(0, 2))):
        _twist(draw, request)
    data = request.SerializeToString()
    wire = draw(st.sampled_from(["as_is", "as_is", "as_is", "unknown", "repeated", "zero", "order", "mutated"]))
    resource = request.resource_spans[0].SerializeToString()
    if wire == "unknown":      # an unknown field, at the top or inside a resource
        return data + _field(draw(st.sampled_from([2, 999])), b"jane@example.com")
    if wire == "repeated":     # a singular field twice: protobuf keeps the last (or merges messages)
        extra = draw(st.sampled_from([_field(3, b"other"), _field(1, b"")]))
        return _field(1, resource + extra) + data[len(_field(1, resource)):]
    if wire == "zero":         # a field at its default value, written out
        return _field(1, resource + b"\x1a\x00") + data[len(_field(1, resource)):]
    if wire == "order":        # the resource after its scopes: same message, not canonical
        rs = request.resource_spans[0]
        tail = b"".join(_field(2, s.SerializeToString()) for s in rs.scope_spans)
        return _field(1, tail + _field(1, rs.resource.SerializeToString())) + data[len(_field(1, resource)):]
    if wire == "mutated":
        return draw(mutated(data))
    return data


@FUZZ
@given(st.lists(payloads(), min_size=1, max_size=3), st.sampled_from([("gateway", 1), ("trace_id", 1),
                                                                      ("trace_id", 4), ("tenant_service", 1)]),
       st.data())
def test_the_fast_path_gives_what_the_python_path_gives(values: list[bytes], keying: tuple[str, int],
                                                        data: st.DataObject) -> None:
    pair = chains(*keying)
    records: list[bytes] = []
    for payload in values:
        records.append(envelope(payload))
        # Redelivered records, client retries under a new batch id, and spans seen before.
        repeat = data.draw(st.sampled_from(["none", "none", "redeliver", "retry"]))
        if repeat == "redeliver":
            records.append(records[-1])
        elif repeat == "retry":
            records.append(envelope(payload))
    run_both(pair, records)


@FUZZ
@given(st.data())
def test_a_span_seen_before_is_a_duplicate_on_both_paths(data: st.DataObject) -> None:
    first, second = data.draw(clean_requests()), data.draw(clean_requests())
    _spans(second)[0].trace_id, _spans(second)[0].span_id = _spans(first)[0].trace_id, _spans(first)[0].span_id
    pair = chains("trace_id", 3)
    assert run_both(pair, [envelope(first.SerializeToString()), envelope(second.SerializeToString())]) == 1


@pytest.mark.parametrize("payload", [
    corpus.deep_attribute_span(50), corpus.deep_attribute_span(200), corpus.many_attributes(200),
    corpus.many_attributes(200, on="resource"), corpus.huge_string_span(40_000), corpus.invalid_utf8_span(),
    corpus.truncated_inside(), corpus.wrong_wire_types(), corpus.timestamps(NOW - 10, NOW), corpus.zero_ids(),
    corpus.empty_resources(10), corpus.unknown_field_with_secret(), corpus.redos_span("1." * 2000, 3),
    *(path.read_bytes() for path in sorted(HOSTILE.glob("stage-proto-traces-*.pb")))])
def test_hostile_inputs_give_the_same_outcome(payload: bytes) -> None:
    for keying in ("gateway", "trace_id"):
        run_both(chains(keying, 4), [envelope(payload)])


def generated(spans: int, rng: random.Random, services: int = 4) -> ExportTraceServiceRequest:
    """A request of the benchmarks' generator, its times moved to just before NOW."""
    request = trace_request(spans, rng, services)
    for span in _spans(request):  # the generator's timestamps lie just before its own fixed "now"
        span.start_time_unix_nano += NOW - 1_764_000_000_500_000_000
        span.end_time_unix_nano += NOW - 1_764_000_000_500_000_000
        for event in span.events:
            event.time_unix_nano += NOW - 1_764_000_000_500_000_000
    return request


def test_the_fast_path_is_taken_for_the_benchmarks_clean_traffic() -> None:
    rng = random.Random(7)
    requests = [generated(200, rng) for _ in range(3)]
    for keying, partitions in (("gateway", 1), ("trace_id", 6)):
        assert run_both(chains(keying, partitions), [envelope(r.SerializeToString()) for r in requests]) == 3


def test_under_tenant_service_keying_batches_of_one_service_take_the_fast_path() -> None:
    rng = random.Random(8)
    one, four = generated(50, rng, services=1), generated(50, rng, services=4)
    pair = chains("tenant_service", 1)
    assert run_both(pair, [envelope(one.SerializeToString()), envelope(four.SerializeToString())]) == 1
    another = generated(5, rng, services=1)
    service = another.resource_spans[0].resource.attributes[0].value.string_value
    outcome = pair[0].handle(Signal.TRACES, envelope(another.SerializeToString()), None, "src")
    assert outcome.fast_path_batches == 1 and [r.key for r in outcome.records] == [f"acme/{service}".encode()]


def forgery(**overrides: Any) -> ForgeryProcessor:
    # Past learning, the generator's services allow-listed for k1: clean batches pass and teach.
    return ForgeryProcessor(ForgeryConfig(learning_s=0.0, allowed_new_services={"acme/k1": tuple(SERVICES)},
                                          **overrides))


def forgery_traffic(rng: random.Random) -> list[bytes]:
    """Clean batches of one and of four services, and among them what the stage flags or changes."""
    values = [envelope(generated(rng.choice([3, 40, 120]), rng, 1).SerializeToString() if i % 2 else
                       generated(rng.choice([40, 120]), rng, 4).SerializeToString()) for i in range(12)]
    intruder = generated(20, rng, services=1)   # a service k1 never reported: new_service, quarantined
    intruder.resource_spans[0].resource.attributes[0].value.string_value = "intruder"
    claimed = generated(20, rng, services=1)    # a client's own integrity claim: stripped (a change)
    claimed.resource_spans[0].resource.attributes.add(key=INTEGRITY_SCORE).value.double_value = 0.0
    replayed = values[3]                        # the same payload under another batch id: replay
    return [*values[:6], envelope(intruder.SerializeToString()), envelope(claimed.SerializeToString()),
            envelope(decode(replayed).payload), *values[6:]]


@pytest.mark.parametrize(("keying", "fused"), [("gateway", False), ("tenant_service", False), ("trace_id", True),
                                               ("tenant_service", True)])
def test_the_forgery_stage_on_the_fast_path_gives_what_the_python_path_gives(keying: str, fused: bool) -> None:
    def processors() -> list[Processor]:
        stages: list[Processor] = [ValidateProcessor(ValidateConfig()), ScrubProcessor(ScrubConfig(), {}),
                                   DedupProcessor(DedupConfig(), InMemoryMarks(), "t")] if fused else []
        return [*stages, forgery()]

    taken = run_both(chains(keying, 3, processors=processors), forgery_traffic(random.Random(9)))
    assert taken == (6 if keying == "tenant_service" else 12)   # the clean ones (of one service)


def test_a_batch_forgery_cleared_is_screened_once_when_a_later_processor_needs_it_decoded() -> None:
    rng = random.Random(10)
    first, second = generated(30, rng, services=1), generated(30, rng, services=1)
    _spans(second)[0].trace_id, _spans(second)[0].span_id = _spans(first)[0].trace_id, _spans(first)[0].span_id
    registries: list[CollectorRegistry] = []

    def processors() -> list[Processor]:
        screen = forgery()
        registries.append(CollectorRegistry())
        screen.register_metrics(registries[-1])
        return [screen, DedupProcessor(DedupConfig(), InMemoryMarks(), "t")]

    # The second batch repeats a span: dedup cannot clear it after forgery did, so the chain decodes it.
    assert run_both(chains("gateway", 1, processors=processors),
                    [envelope(first.SerializeToString()), envelope(second.SerializeToString())]) == 1
    for registry in registries:
        assert registry.get_sample_value("rampart_forgery_batch_score_count") == 2
        assert registry.get_sample_value("rampart_forgery_batches_total", {"action": "passed", "tenant": "acme"}) == 2


def test_encrypted_batches_stay_encrypted_until_scrub_on_the_fast_path() -> None:
    request = trace_request(20, random.Random(3))
    for span in _spans(request):
        span.start_time_unix_nano = span.end_time_unix_nano = NOW
    value = envelope(request.SerializeToString(), encrypt=True)
    assert run_both(chains("trace_id", 4), [value]) == 1
    validate_only = chains("trace_id", 4, processors=lambda: [ValidateProcessor(ValidateConfig())])
    assert run_both(validate_only, [value]) == 1
    outcome = validate_only[0].handle(Signal.TRACES, value, None, "src")
    assert outcome.records and all(is_encrypted(decode(r.value)) for r in outcome.records)


def test_a_chain_with_a_processor_that_cannot_clear_keeps_the_python_path() -> None:
    class Counting(Processor):
        name = "counting"

        def process(self, batch: Batch) -> Result:
            return Result(counts={"seen": 1})

    pair = chains("gateway", 1, processors=lambda: [ValidateProcessor(ValidateConfig()), Counting()])
    request = trace_request(10, random.Random(5))
    for span in _spans(request):
        span.start_time_unix_nano = span.end_time_unix_nano = NOW
    assert run_both(pair, [envelope(request.SerializeToString())]) == 0


# ---------------------------------------------------------------- the native module on its own

@FUZZ
@given(st.one_of(st.binary(max_size=400), payloads(), payloads().flatmap(mutated)))
def test_the_native_scan_survives_any_bytes_and_is_clean_only_for_what_re_encodes_as_itself(payload: bytes) -> None:
    scan = scan_traces(payload)
    if not scan.clean:
        assert scan.reason
        with pytest.raises(ValueError, match="not a clean batch"):
            scan.split(2)
        return
    request = ExportTraceServiceRequest.FromString(payload)
    assert request.SerializeToString() == payload
    spans = _spans(request)
    assert scan.spans == len(spans)
    assert scan.entries == len(spans) + sum(1 + len(rs.scope_spans) for rs in request.resource_spans)
    assert scan.dedup_keys(b"p") == [b"p" + s.trace_id + s.span_id for s in spans]
    parts = scan.split(3)
    assert [p for p, _ in parts] == sorted({zlib.crc32(s.trace_id) % 3 for s in spans})
    assert all((part is None) == (len(parts) == 1) for _, part in parts)


@FUZZ
@given(st.lists(st.binary(max_size=6), max_size=6), st.lists(st.booleans(), min_size=6, max_size=6),
       st.binary(max_size=200) | st.sampled_from([b"ACCESS_TOKEN=x", b"Token=", b"\xc3\x89T\xc3\xa9"]))
def test_needles_answer_as_substring_tests_do(needles: list[bytes], fold: list[bool], payload: bytes) -> None:
    pairs = [(n.lower() if f else n, f) for n, f in zip(needles, fold, strict=False)]
    expected = [(n in payload.lower()) if f else (n in payload) for n, f in pairs]
    assert Needles(pairs).found(payload) == expected


@FUZZ
@given(st.text(alphabet="0123456789 -x.", max_size=40).map(str.encode))
def test_the_card_screen_matches_its_definition(payload: bytes) -> None:
    mapped = bytes(0x30 if 0x30 <= b <= 0x39 else 0x2D if b in (0x20, 0x2D) else 0x78 for b in payload)
    assert card_screen(payload) == (b"00000000" in mapped or b"0000-0000" in mapped)
