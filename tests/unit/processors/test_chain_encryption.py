"""Payload encryption at rest: what is not yet scrubbed stays encrypted on every topic, and a record
that was tampered with or cannot be decrypted is quarantined with the reason, never processed."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import replace

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processors.chain import StageChain
from processors.dedup import DedupProcessor, InMemoryMarks
from processors.scrub import ScrubProcessor
from processors.validate import ValidateProcessor
from rampart.config import DedupConfig, ScrubConfig, ValidateConfig
from rampart.keyring import ENCRYPTION_ATTRIBUTE, KeyRing, generate_key, is_encrypted
from rampart.topics import TopicNames
from schemas.envelope import Envelope, PayloadFormat, Signal, decode, encode
from tests.unit.processors.helpers import NOW, traces

SIGNING, ENCRYPTION = generate_key(), secrets.token_bytes(32)
GATEWAY = KeyRing({"gw": SIGNING}, "gw", {"enc-1": ENCRYPTION}, "enc-1")
WORKER = KeyRing({"gw": SIGNING, "worker": generate_key()}, "worker", {"enc-1": ENCRYPTION}, "enc-1")
TOPICS = TopicNames("t")
SECRET = "jane@example.com"


def stage(names: list[str], ring: KeyRing = WORKER, encrypt: bool = False) -> StageChain:
    available = {"validate": ValidateProcessor(ValidateConfig()), "scrub": ScrubProcessor(ScrubConfig(), {}),
                 "dedup": DedupProcessor(DedupConfig(), InMemoryMarks(), "t")}
    return StageChain(names=names, processors=[available[n] for n in names], keyring=ring, topics=TOPICS,
                      output_topic=TOPICS.clean if names[-1] == "dedup" else lambda s: TOPICS.after(names[-1], s),
                      keying="gateway",
                      output_partitions=lambda _s: 3, instance="test", encrypt_unscrubbed=encrypt)


def request_with_secret() -> ExportTraceServiceRequest:
    request = traces(3)
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].attributes.add(key="user.email").value.string_value = SECRET
    spans[1].trace_id = bytes(16)  # rejected by validate
    return request


def raw_record(request: ExportTraceServiceRequest, encrypt: bool = True) -> bytes:
    return encode(GATEWAY.seal(Envelope(batch_id=str(uuid.uuid4()), tenant="acme", principal="k1",
                                        signal=Signal.TRACES, payload_format=PayloadFormat.OTLP_PROTO,
                                        received_at_ns=NOW, gateway_id="gw", payload=request.SerializeToString(),
                                        stages=("gateway",)), encrypt=encrypt))


def test_raw_record_is_unreadable_without_the_key() -> None:
    value = raw_record(request_with_secret())
    envelope = decode(value)
    assert envelope.attributes[ENCRYPTION_ATTRIBUTE] == "AES-256-GCM"
    assert SECRET.encode() not in value
    with pytest.raises(Exception):  # noqa: B017 - any parse failure will do: it is ciphertext
        parsed = ExportTraceServiceRequest.FromString(envelope.payload)
        assert parsed.resource_spans[0].scope_spans[0].spans
    opened = WORKER.open(envelope)
    assert not is_encrypted(opened)
    assert SECRET.encode() in opened.payload


def test_data_stays_encrypted_until_scrubbed_and_rejects_stay_encrypted() -> None:
    validated = stage(["validate"]).handle(Signal.TRACES, raw_record(request_with_secret()), None, "src")
    (out,) = [r for r in validated.records if r.topic == "t.validated.traces"]
    (reject,) = [r for r in validated.records if r.topic == "t.rejected.traces"]
    # Encrypted input: outputs are encrypted even though this stage's own policy is off.
    assert is_encrypted(decode(out.value)) and is_encrypted(decode(reject.value))
    assert SECRET.encode() not in out.value

    scrubbed = stage(["scrub", "dedup"]).handle(Signal.TRACES, out.value, None, "src")
    (clean,) = [r for r in scrubbed.records if r.topic == "t.clean.traces"]
    envelope = decode(clean.value)
    assert not is_encrypted(envelope)  # scrubbed: sinks and backends read it as before
    WORKER.verify(envelope)
    assert SECRET.encode() not in clean.value and b"REDACTED" in envelope.payload


def test_policy_encrypts_plain_input_before_scrub() -> None:
    plain = raw_record(traces(2), encrypt=False)
    assert not is_encrypted(decode(plain))
    outcome = stage(["validate"], encrypt=True).handle(Signal.TRACES, plain, None, "src")
    (out,) = outcome.records
    assert is_encrypted(decode(out.value))


def quarantine_reason(value: bytes, ring: KeyRing = WORKER) -> str | None:
    return stage(["validate"], ring).handle(Signal.TRACES, value, None, "src").quarantine_reason


def test_tampered_ciphertext_is_quarantined() -> None:
    envelope = decode(raw_record(traces(2)))
    flipped = bytearray(envelope.payload)
    flipped[20] ^= 1
    assert quarantine_reason(encode(replace(envelope, payload=bytes(flipped)))) == "bad_signature"


def test_unknown_or_wrong_encryption_key_is_quarantined() -> None:
    value = raw_record(traces(2))
    without_key = KeyRing({"gw": SIGNING, "worker": generate_key()}, "worker")
    assert quarantine_reason(value, without_key) == "unknown_encryption_key"
    wrong_key = KeyRing({"gw": SIGNING, "worker": generate_key()}, "worker", {"enc-1": secrets.token_bytes(32)})
    assert quarantine_reason(value, wrong_key) == "decryption_failed"


def test_ciphertext_cannot_move_to_another_batch() -> None:
    # Even a holder of the signing key cannot re-use a ciphertext under another batch or tenant.
    envelope = decode(raw_record(traces(2)))
    moved = GATEWAY.sign(replace(envelope, tenant="other", key_id="", signature=b""))
    assert quarantine_reason(encode(moved)) == "decryption_failed"
