"""Encryption at rest for unscrubbed data, on the real broker: with keyring.encrypt_unscrubbed on, the
raw and validated topics and the rejected records hold only ciphertext, the clean topic and the
backend get the scrubbed data in clear, and a tampered ciphertext is quarantined with an audit event."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from confluent_kafka import Producer
from google.protobuf.message import DecodeError
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from rampart.keyring import is_encrypted, write_key
from schemas.envelope import Envelope, Signal, decode, encode
from tests.integration.ingest import otlp_data
from tests.support.backend import CapturingBackend
from tests.support.deployment import Deployment, post, read_raw

pytestmark = pytest.mark.e2e

SECRET = b"jane@example.com"
ENCRYPT = {"RAMPART__KEYRING__ENCRYPT_UNSCRUBBED": "true"}


def records(deployment: Deployment, topic: str, count: int, timeout_s: float = 60) -> list[bytes]:
    deadline = time.monotonic() + timeout_s
    while len(values := read_raw(deployment.kafka_bootstrap, topic, 10)) < count:
        assert time.monotonic() < deadline, f"{topic}: {len(values)} of {count} records within {timeout_s}s"
        time.sleep(0.5)
    return values


def unreadable(value: bytes) -> bool:
    """Neither the planted secret nor any span can be read from the record without the key."""
    envelope = decode(value)
    if SECRET in value or not is_encrypted(envelope):
        return False
    try:
        request = ExportTraceServiceRequest.FromString(envelope.payload)
    except DecodeError:  # ciphertext rarely parses at all
        return True
    return not any(ss.spans for rs in request.resource_spans for ss in rs.scope_spans)


def test_unscrubbed_data_is_encrypted_on_every_topic(deployment: Deployment, backend: CapturingBackend) -> None:
    write_key(deployment.keyring_file, "enc-1", make_signing=False, encryption=True)
    gateway = deployment.start_gateway(**ENCRYPT)
    deployment.start_worker("validate", **ENCRYPT)
    deployment.start_worker("scrub,dedup", **ENCRYPT)
    deployment.start_sink("otlp", RAMPART__SINKS__OTLP__ENDPOINT=backend.endpoint)
    _, token = deployment.api_key()

    request = encode_spans(otlp_data.spans(10))
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].attributes.add(key="enduser.email").value.string_value = SECRET.decode()
    spans[1].trace_id = bytes(16)  # validate rejects it: the reject record holds unscrubbed data
    status = post(f"{gateway.http_url}/v1/traces", request.SerializeToString(),
                  {"Content-Type": "application/x-protobuf", "x-api-key": token})[0]
    assert status == 200

    deadline = time.monotonic() + 60
    while len(backend.arrivals) < 9:
        assert time.monotonic() < deadline, f"{len(backend.arrivals)} of 9 spans reached the backend"
        time.sleep(0.2)
    topics = deployment.topics
    for topic in (topics.raw(Signal.TRACES), topics.after("validate", Signal.TRACES),
                  topics.rejected(Signal.TRACES)):
        values = records(deployment, topic, 1)
        assert all(unreadable(v) for v in values), f"{topic} holds readable unscrubbed data"
    for value in records(deployment, topics.clean(Signal.TRACES), 1):
        assert not is_encrypted(decode(value)) and SECRET not in value
    received = [s for r in backend.received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(received) == 9
    assert not any(SECRET.decode() in str(s.attributes) for s in received)


def test_tampered_ciphertext_is_quarantined(deployment: Deployment) -> None:
    write_key(deployment.keyring_file, "enc-1", make_signing=False, encryption=True)
    gateway = deployment.start_gateway(**ENCRYPT)
    deployment.start_worker("validate,scrub,dedup", **ENCRYPT)
    _, token = deployment.api_key()
    body = encode_spans(otlp_data.spans(3)).SerializeToString()
    assert post(f"{gateway.http_url}/v1/traces", body, {"Content-Type": "application/x-protobuf",
                                                         "x-api-key": token})[0] == 200
    original = decode(records(deployment, deployment.topics.raw(Signal.TRACES), 1)[0])

    # Someone with write access to Kafka, but no key, flips a bit of the ciphertext and writes it back.
    payload = bytearray(original.payload)
    payload[len(payload) // 2] ^= 0x01
    tampered: Envelope = replace(original, batch_id=original.batch_id + "-t", payload=bytes(payload))
    producer = Producer({"bootstrap.servers": deployment.kafka_bootstrap})
    producer.produce(deployment.topics.raw(Signal.TRACES), encode(tampered), b"x")
    assert producer.flush(10) == 0

    quarantined = records(deployment, deployment.topics.quarantine(Signal.TRACES), 1)
    assert len(quarantined) == 1

    def audited_bad_signature() -> bool:
        events = [json.loads(v) for v in read_raw(deployment.kafka_bootstrap, deployment.topics.audit(), 5)]
        return any(e.get("reason") == "bad_signature" for e in events)

    deadline = time.monotonic() + 30
    while not audited_bad_signature():
        assert time.monotonic() < deadline, "no bad_signature audit event"
        time.sleep(0.5)
    # Only the genuine batch's 3 spans came out (re-keying by trace id may spread them over records).
    def clean_spans() -> int:
        clean = [decode(v) for v in read_raw(deployment.kafka_bootstrap, deployment.topics.clean(Signal.TRACES), 5)]
        return sum(len(ss.spans) for e in clean for rs in ExportTraceServiceRequest.FromString(e.payload).resource_spans
                   for ss in rs.scope_spans)

    deadline = time.monotonic() + 30
    while clean_spans() < 3:
        assert time.monotonic() < deadline, "the genuine spans did not reach the clean topic"
        time.sleep(0.5)
    assert clean_spans() == 3
