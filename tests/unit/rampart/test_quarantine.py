"""`rampart quarantine` logic without Kafka: what list and show reveal, and where a release goes."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from rampart.config import RampartConfig, StagesConfig
from rampart.keyring import KeyRing, generate_key
from rampart.quarantine import (
    NotReleasable,
    QuarantinedRecord,
    _target_topic,
    describe,
    parse_since,
    summarise,
    table,
)
from schemas.envelope import Envelope, PayloadFormat, Signal
from tests.unit.processors.helpers import NOW, traces

RING = KeyRing({"gw": generate_key()}, "gw", {"enc": generate_key()}, "enc")
CONFIG = RampartConfig(stages=StagesConfig(pipeline=("validate", "scrub", "dedup", "forgery")))


def request_with_secret() -> ExportTraceServiceRequest:
    request = traces(3)
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].attributes.add(key="user.email").value.string_value = "jane@example.com"
    spans[1].status.code = 2
    return request


def record(*, reason: str = "forgery_suspected", ring: KeyRing = RING, encrypt: bool = False,
           stages: tuple[str, ...] = ("gateway", "validate", "scrub", "dedup")) -> QuarantinedRecord:
    envelope = Envelope(batch_id=str(uuid.uuid4()), tenant="acme", principal="k1", signal=Signal.TRACES,
                        payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=NOW, gateway_id="gw",
                        payload=request_with_secret().SerializeToString(), stages=stages)
    sealed = ring.seal(envelope, encrypt=encrypt)
    verified = ring is RING
    headers = {"rampart.quarantine.reason": reason, "rampart.quarantine.score": "0.970",
               "rampart.quarantine.reasons": "latency_masking"}
    return QuarantinedRecord("traces/0/5", Signal.TRACES, 0, 5, NOW / 1e9, headers, b"acme/cart", b"", sealed,
                             verified, "" if verified else "signature does not match")


def test_since_takes_durations_and_iso_times() -> None:
    assert parse_since("30m", now_s=10_000.0) == 10_000.0 - 1800
    assert parse_since("2d", now_s=200_000.0) == 200_000.0 - 172_800
    assert parse_since("2026-11-28T05:00:00Z") == parse_since("2026-11-28T05:00:00")
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


def test_show_summarises_without_values_unless_asked() -> None:
    r = record()
    summary = summarise(r, RING, values=False)
    text = json.dumps(summary)
    assert summary["items_per_service"] and summary["errors_per_service"] == {"checkout": 1}
    assert "user.email" in summary["attribute_keys"] and "jane@example.com" not in text
    asked = summarise(r, RING, values=True)
    assert "jane@example.com" in json.dumps(asked["attribute_values"]) and "warning" not in asked


def test_values_of_an_encrypted_payload_are_never_shown() -> None:
    r = record(encrypt=True, stages=("gateway",))
    summary = summarise(r, RING, values=True)
    assert summary["items_per_service"] == {"checkout": 3}   # counted after decryption ...
    assert "jane@example.com" not in json.dumps(summary)         # ... but no value leaves it
    assert "encrypted" in summary["attribute_values"]


def test_an_unverified_record_is_neither_decoded_nor_attributed_to_a_tenant() -> None:
    r = record(ring=KeyRing({"gw": generate_key()}, "gw"))
    assert "not verified" in summarise(r, RING, values=True)["payload"]
    metadata = r.metadata()
    assert metadata["tenant"] == "" and metadata["releasable"] is False
    assert "(unverified)" in table([r])[1]


def test_show_says_why_a_record_is_not_releasable() -> None:
    assert "releasable  yes" in describe(record(), {})
    assert "would launder it" in describe(record(reason="bad_signature"), {})
    assert "skipped stages" in describe(record(reason="skipped_stages"), {})


def test_a_release_goes_to_the_first_stage_the_batch_has_not_passed() -> None:
    fused = record(stages=("gateway",)).envelope
    separate = record().envelope
    assert fused is not None and separate is not None
    assert _target_topic(CONFIG, fused) == "rampart.raw.traces"
    assert _target_topic(CONFIG, separate) == "rampart.deduplicated.traces"
    done = replace(separate, stages=(*separate.stages, "forgery"))
    with pytest.raises(NotReleasable, match="no stage"):
        _target_topic(CONFIG, done)
