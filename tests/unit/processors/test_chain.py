"""One stage's handling of one record: outputs, rejects, quarantine and keying, without Kafka."""

from __future__ import annotations

import json
import uuid
import zlib
from dataclasses import replace
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processors.base import Batch, Processor, Quarantine, Result
from processors.chain import StageChain
from processors.dedup import DedupProcessor, InMemoryMarks
from processors.forgery import INTEGRITY_SCORE, ForgeryProcessor
from processors.scrub import ScrubProcessor
from processors.validate import ValidateProcessor
from rampart.config import DedupConfig, ForgeryConfig, ScrubConfig, ValidateConfig
from rampart.keyring import KeyRing, generate_key
from rampart.release import RELEASED_BY, ReleaseKeys, generate_operator_key, sign_release
from rampart.topics import TopicNames
from schemas.envelope import Envelope, PayloadFormat, Signal, decode, encode
from tests.data.hostile.corpus import field
from tests.unit.processors.helpers import NOW, traces

GATEWAY_KEY, WORKER_KEY = generate_key(), generate_key()
GATEWAY = KeyRing({"gw": GATEWAY_KEY}, "gw")
WORKER = KeyRing({"gw": GATEWAY_KEY, "worker": WORKER_KEY}, "worker")
TOPICS = TopicNames("t")


def chain(keying: str = "gateway", partitions: int = 6) -> StageChain:
    processors = [ValidateProcessor(ValidateConfig()), ScrubProcessor(ScrubConfig(), {}),
                  DedupProcessor(DedupConfig(), InMemoryMarks(), "t")]
    return StageChain(names=["validate", "scrub", "dedup"], processors=processors, keyring=WORKER, topics=TOPICS,
                      output_topic=TOPICS.clean, keying=keying, output_partitions=lambda _s: partitions,
                      instance="test")


def envelope(request: ExportTraceServiceRequest, ring: KeyRing = GATEWAY, signal: Signal = Signal.TRACES) -> bytes:
    return encode(ring.sign(Envelope(batch_id=str(uuid.uuid4()), tenant="acme", principal="k1", signal=signal,
                                     payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=NOW, gateway_id="gw",
                                     payload=request.SerializeToString(), stages=("gateway",))))


def test_clean_batch_passes_through_re_signed_by_the_worker() -> None:
    outcome = chain().handle(Signal.TRACES, envelope(traces(5)), b"k", "t.raw.traces/0/1")
    (record,) = outcome.records
    assert record.topic == "t.clean.traces" and record.key == b"k"
    out = decode(record.value)
    WORKER.verify(out)
    assert out.key_id == "worker" and out.stages == ("gateway", "validate", "scrub", "dedup")
    assert outcome.items_in == outcome.items_out == 5
    assert len(ExportTraceServiceRequest.FromString(out.payload).resource_spans[0].scope_spans[0].spans) == 5


def test_dropped_items_become_signed_reject_records_with_reasons() -> None:
    request = traces(4)
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[1].trace_id = bytes(16)
    spans[2].end_time_unix_nano = 1
    spans[3].attributes.add(key="user.email").value.string_value = "jane@example.com"
    outcome = chain().handle(Signal.TRACES, envelope(request), None, "src")
    outputs = [r for r in outcome.records if r.topic == "t.clean.traces"]
    rejects = [decode(r.value) for r in outcome.records if r.topic == "t.rejected.traces"]
    assert len(outputs) == 1 and outcome.items_out == 2
    assert sorted(r.attributes["rampart.reject.reason"] for r in rejects) == ["end_before_start", "invalid_trace_id"]
    for reject in rejects:
        WORKER.verify(reject)
        assert len(ExportTraceServiceRequest.FromString(reject.payload).resource_spans[0].scope_spans[0].spans) == 1
    assert outcome.dropped == {("validate", "invalid_trace_id"): 1, ("validate", "end_before_start"): 1}
    assert outcome.changed == {"scrub": 1} and outcome.counts[("scrub", "email")] == 1
    assert b"jane@example.com" not in outputs[0].value


def test_a_replayed_batch_produces_nothing_but_its_rejects() -> None:
    c = chain()
    first = envelope(traces(3))
    assert len(c.handle(Signal.TRACES, first, None, "src").records) == 1
    assert len(c.handle(Signal.TRACES, first, None, "src").records) == 1  # redelivery: same batch id, kept
    retry = envelope(traces(3))                                            # the client's retry: new batch id
    outcome = c.handle(Signal.TRACES, retry, None, "src")
    assert [r.topic for r in outcome.records] == ["t.rejected.traces"]
    assert outcome.dropped == {("dedup", "duplicate_batch"): 3}


def quarantined(value: bytes, signal: Signal = Signal.TRACES) -> tuple[str | None, list[str]]:
    outcome = chain().handle(signal, value, b"key", "t.raw.traces/3/42")
    topics = [r.topic for r in outcome.records]
    audit = [json.loads(r.value) for r in outcome.records if r.topic == "t.audit"]
    assert audit and audit[0]["event"] == "quarantined" and audit[0]["source"] == "t.raw.traces/3/42"
    quarantine = next(r for r in outcome.records if r.topic.startswith("t.quarantine."))
    assert quarantine.value == value and dict(quarantine.headers or [])["rampart.quarantine.reason"]
    return outcome.quarantine_reason, topics


def test_unsigned_forged_or_garbled_messages_are_quarantined_with_the_reason() -> None:
    intruder = KeyRing({"intruder": generate_key()}, "intruder")
    assert quarantined(envelope(traces(1), ring=intruder))[0] == "unknown_key_id"
    forged = bytearray(envelope(traces(1)))
    forged[-3] ^= 0x01
    assert quarantined(bytes(forged))[0] == "bad_signature"
    assert quarantined(b"not an envelope")[0] == "malformed_envelope"
    assert quarantined(envelope(traces(1), signal=Signal.LOGS))[0] == "signal_mismatch"
    garbage = encode(GATEWAY.sign(Envelope(batch_id="b", tenant="acme", principal="k", signal=Signal.TRACES,
                                           payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=NOW,
                                           gateway_id="gw", payload=b"\xff\xff\xff")))
    reason, topics = quarantined(garbage)
    assert reason == "undecodable_payload" and "t.clean.traces" not in topics


def test_otlp_json_is_decoded_and_emitted_as_protobuf() -> None:
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "x",
         "startTimeUnixNano": str(NOW - 10), "endTimeUnixNano": str(NOW)}]}]}]}).encode()
    value = encode(GATEWAY.sign(Envelope(batch_id=str(uuid.uuid4()), tenant="acme", principal="k",
                                         signal=Signal.TRACES, payload_format=PayloadFormat.OTLP_JSON,
                                         received_at_ns=NOW, gateway_id="gw", payload=body)))
    (record,) = chain().handle(Signal.TRACES, value, None, "src").records
    out = decode(record.value)
    assert out.payload_format is PayloadFormat.OTLP_PROTO
    span = ExportTraceServiceRequest.FromString(out.payload).resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == "5b8efff798038103d269b633813fc60c" and span.span_id.hex() == "eee19b7ec3c1b174"


def test_trace_id_keying_puts_every_span_of_a_trace_on_one_partition() -> None:
    request = traces(30)
    spans = request.resource_spans[0].scope_spans[0].spans
    for i, span in enumerate(spans):
        span.trace_id = bytes([i % 7 + 1]) * 16  # 7 traces, interleaved
    value = envelope(request)
    outcome = chain(keying="trace_id", partitions=4).handle(Signal.TRACES, value, None, "src")
    seen: dict[bytes, int] = {}
    total = 0
    for record in outcome.records:
        WORKER.verify(decode(record.value))
        part = ExportTraceServiceRequest.FromString(decode(record.value).payload)
        for span in part.resource_spans[0].scope_spans[0].spans:
            assert seen.setdefault(span.trace_id, record.partition or 0) == record.partition
            assert record.partition == zlib.crc32(span.trace_id) % 4
            total += 1
    assert total == 30 and len(outcome.records) > 1
    again = chain(keying="trace_id", partitions=4).handle(Signal.TRACES, value, None, "src")
    assert [decode(r.value).batch_id for r in again.records] == [decode(r.value).batch_id for r in outcome.records]


def test_later_stages_keep_an_unkeyed_record_on_its_partition() -> None:
    # Under trace_id keying records carry no key, only a partition: a later stage must keep it (modulo
    # its output's partition count), whether or not the batch takes the fast path, or a trace's spans
    # scatter again and the copies of a redelivered batch reach different sink replicas.
    clean = traces(5)
    dirty = traces(5)
    dirty.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="user.email").value.string_value = "a@b.example"
    for request in (clean, dirty):
        value = envelope(request)
        for partitions, expected in ((6, 5), (4, 1)):
            (record,) = [r for r in chain(partitions=partitions).handle(Signal.TRACES, value, None,
                                                                           "t.raw.traces/5/17").records
                         if r.topic == "t.clean.traces"]
            assert (record.key, record.partition) == (None, expected)
    (keyed,) = chain().handle(Signal.TRACES, envelope(clean), b"k", "t.raw.traces/5/17").records
    assert (keyed.key, keyed.partition) == (b"k", None)


def test_tenant_service_keying() -> None:
    request = traces(2)
    other = request.resource_spans.add()
    other.resource.attributes.add(key="service.name").value.string_value = "cart"
    other.scope_spans.add().spans.add(trace_id=b"\x09" * 16, span_id=b"\x09" * 8, start_time_unix_nano=NOW - 5,
                                      end_time_unix_nano=NOW)
    outcome = chain(keying="tenant_service").handle(Signal.TRACES, envelope(request), None, "src")
    assert sorted(r.key for r in outcome.records) == [b"acme/cart", b"acme/checkout"]


def test_forgery_sends_canonical_bytes_on_and_encodes_anything_else_anew() -> None:
    """A batch the forgery stage leaves alone goes out as it came only when its encoding is the
    canonical one; a client's integrity claim is always stripped from what goes out."""
    forgery = ForgeryProcessor(ForgeryConfig())   # in its learning period: every batch passes
    c = StageChain(names=["forgery"], processors=[forgery], keyring=WORKER, topics=TOPICS, output_topic=TOPICS.clean,
                   keying="gateway", output_partitions=lambda _s: 6, instance="test")

    def sent(payload: bytes) -> bytes:
        value = encode(GATEWAY.sign(Envelope(
            batch_id=str(uuid.uuid4()), tenant="acme", principal="k1", signal=Signal.TRACES,
            payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=NOW, gateway_id="gw", payload=payload,
            stages=("gateway",))))
        (record,) = c.handle(Signal.TRACES, value, b"k", "src").records
        return decode(record.value).payload

    # Durations differ from request to request, or the later ones would be replays of the first.
    canonical = traces(3, start_time_unix_nano=NOW - 1234).SerializeToString()
    assert sent(canonical) == canonical
    # The same request with a span's kind written out although it is the default (0): valid, not canonical.
    request = traces(1, start_time_unix_nano=NOW - 2345)
    resource = request.resource_spans[0]
    span = resource.scope_spans[0].spans[0].SerializeToString() + b"\x30\x00"
    padded = field(1, field(1, resource.resource.SerializeToString()) + field(2, field(2, span)))
    assert ExportTraceServiceRequest.FromString(padded) == request
    assert sent(padded) == request.SerializeToString() != padded
    claimed = traces(2, start_time_unix_nano=NOW - 3456)
    claimed.resource_spans[0].resource.attributes.add(key=INTEGRITY_SCORE).value.double_value = 0.0
    out = ExportTraceServiceRequest.FromString(sent(claimed.SerializeToString()))
    assert [kv.key for kv in out.resource_spans[0].resource.attributes] == ["service.name"]


class _SetAside(Processor):
    """Asks for the whole batch to be quarantined, as forgery does above its threshold."""

    name = "set-aside"

    def process(self, batch: Batch) -> Result:
        result = Result()
        result.quarantine = Quarantine("forgery_suspected", "score 0.97: new_service", {"score": "0.970"})
        return result


def test_a_processor_quarantines_the_whole_input_untouched_with_an_audit_event() -> None:
    request = traces(3)
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = bytes(16)   # validate rejects this one first
    processors = [ValidateProcessor(ValidateConfig()), _SetAside()]
    c = StageChain(names=["validate", "set-aside"], processors=processors, keyring=WORKER, topics=TOPICS,
                   output_topic=TOPICS.clean, keying="gateway", output_partitions=lambda _s: 6, instance="test")
    value = envelope(request)
    outcome = c.handle(Signal.TRACES, value, b"k", "t.raw.traces/1/7")
    quarantine, audit = outcome.records
    # The input as it arrived, still signed by the gateway (releasable), and no reject or output beside it.
    assert quarantine.topic == "t.quarantine.traces" and quarantine.value == value and quarantine.key == b"k"
    GATEWAY.verify(decode(quarantine.value))
    headers = dict(quarantine.headers or [])
    assert headers["rampart.quarantine.reason"] == b"forgery_suspected"
    assert headers["rampart.quarantine.score"] == b"0.970"
    assert headers["rampart.quarantine.source"] == b"t.raw.traces/1/7"
    event = json.loads(audit.value)
    assert audit.topic == "t.audit" and event["event"] == "quarantined" and event["tenant"] == "acme"
    assert event["processor"] == "set-aside" and event["batch_id"] == decode(value).batch_id
    assert outcome.quarantine_reason == "forgery_suspected" and outcome.items_out == 0 and outcome.dropped == {}


class _LetsReleasesThrough(Processor):
    """Sets every batch aside unless an operator released it, as the forgery stage does."""

    name = "set-aside"
    honours_release = True

    def __init__(self) -> None:
        self.released_by: list[str | None] = []

    def process(self, batch: Batch) -> Result:
        self.released_by.append(batch.released_by)
        result = Result()
        if batch.released_by is None:
            result.quarantine = Quarantine("forgery_suspected", "suspect", {})
        return result


def _released_envelope(tmp_path: Path, key_id: str, listed: bool) -> tuple[bytes, ReleaseKeys]:
    key = generate_operator_key(str(tmp_path / f"{key_id}.key"), key_id)
    other = generate_operator_key(str(tmp_path / f"{key_id}-listed.key"), key_id)
    opened = decode(envelope(traces(2)))
    attributes = {**opened.attributes, **sign_release(key, opened, reason="genuine", released_at="1",
                                                      record_id="traces/0/1")}
    value = encode(GATEWAY.sign(replace(opened, attributes=attributes, signature=b"")))
    return value, ReleaseKeys({key_id: (key if listed else other).public_text()})


def test_only_a_release_signed_by_a_listed_operator_key_lets_a_batch_through(tmp_path: Path) -> None:
    value, keys = _released_envelope(tmp_path, "alice", listed=True)
    processor = _LetsReleasesThrough()
    c = StageChain(names=["set-aside"], processors=[processor], keyring=WORKER, topics=TOPICS,
                   output_topic=TOPICS.clean, keying="gateway", output_partitions=lambda _s: 6, instance="test",
                   release_keys=keys)
    (out,) = c.handle(Signal.TRACES, value, b"k", "t.raw.traces/0/1").records
    assert out.topic == "t.clean.traces" and processor.released_by == ["alice"]

    # Signed with a service's envelope key (which any gateway or worker holds), but not by a listed
    # operator key: quarantined before any processor sees it, with an audit event.
    forged, keys = _released_envelope(tmp_path / "m", "alice", listed=False)
    c = StageChain(names=["set-aside"], processors=[processor], keyring=WORKER, topics=TOPICS,
                   output_topic=TOPICS.clean, keying="gateway", output_partitions=lambda _s: 6, instance="test",
                   release_keys=keys)
    outcome = c.handle(Signal.TRACES, forged, b"k", "t.raw.traces/0/2")
    assert outcome.quarantine_reason == "bad_release" and processor.released_by == ["alice"]
    assert [r.topic for r in outcome.records] == ["t.quarantine.traces", "t.audit"]

    # A chain where nothing honours releases does not care: the attributes travel on.
    (passed,) = chain().handle(Signal.TRACES, forged, b"k", "t.raw.traces/0/3").records
    assert passed.topic == "t.clean.traces" and decode(passed.value).attributes[RELEASED_BY] == "alice"
