"""Whoever can write to Rampart's topics but holds no signing key gets nothing to a backend.

On every topic of the pipeline (raw, each hop between stages, clean), a party with Kafka write access
injects records that are new (signed with a guessed key), altered (a genuine record with one payload
bit changed), re-tenanted (a genuine record relabelled to another tenant) or copied past stages (a
genuine gateway record put on a later topic, which would skip validate and scrub). Each one lands in
quarantine with its reason and an audit event; the backend receives exactly the genuine spans, once.
A genuine record replayed as is, is absorbed: dedup rejects it on the stage topics (its batch was
seen) and the sink skips it on the clean topic (its batch was delivered).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from confluent_kafka import Producer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from rampart.keyring import KeyRing, generate_key
from schemas.envelope import Envelope, Signal, decode, encode
from tests.integration.ingest import otlp_data
from tests.support.backend import CapturingBackend
from tests.support.deployment import Deployment, post, read_raw

pytestmark = pytest.mark.e2e

TRACES = Signal.TRACES


def wait_for(what: str, predicate: object, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} within {timeout_s}s"
        time.sleep(0.3)


def test_injected_records_never_reach_the_backend(deployment: Deployment, backend: CapturingBackend) -> None:
    gateway = deployment.start_gateway()
    for stage in ("validate", "scrub", "dedup"):
        deployment.start_worker(stage)
    sink = deployment.start_sink("otlp", RAMPART__SINKS__OTLP__ENDPOINT=backend.endpoint)
    _, token = deployment.api_key()
    body = encode_spans(otlp_data.spans(5)).SerializeToString()
    assert post(f"{gateway.http_url}/v1/traces", body, {"Content-Type": "application/x-protobuf",
                                                         "x-api-key": token})[0] == 200
    wait_for("the genuine spans at the backend", lambda: len(backend.arrivals) == 5)

    topics = deployment.topics
    stage_topics = [topics.raw(TRACES), topics.after("validate", TRACES), topics.after("scrub", TRACES)]
    genuine = {t: decode(read_raw(deployment.kafka_bootstrap, t, 10)[0]) for t in (*stage_topics, topics.clean(TRACES))}
    gateway_record = genuine[topics.raw(TRACES)]
    intruder = KeyRing({"gateway-1": generate_key(), "worker-1": generate_key()}, "worker-1")

    def altered(envelope: Envelope) -> Envelope:
        payload = bytearray(envelope.payload)
        payload[-1] ^= 0x01
        return replace(envelope, payload=bytes(payload))

    injected: list[tuple[str, Envelope]] = []
    for topic, envelope in genuine.items():
        injected += [(topic, intruder.sign(replace(envelope, batch_id=f"{envelope.batch_id}-new", key_id="",
                                                   signature=b""))),
                     (topic, altered(envelope)),
                     (topic, replace(envelope, tenant="victim"))]
    injected += [(topic, gateway_record) for topic in (*stage_topics[1:], topics.clean(TRACES))]  # skips stages
    replays = [(topic, envelope) for topic, envelope in genuine.items()]

    producer = Producer({"bootstrap.servers": deployment.kafka_bootstrap})
    for topic, envelope in [*injected, *replays]:
        producer.produce(topic, encode(envelope), b"intruder")
    assert producer.flush(10) == 0

    quarantine = topics.quarantine(TRACES)
    wait_for(f"{len(injected)} quarantined records",
             lambda: len(read_raw(deployment.kafka_bootstrap, quarantine, 10)) >= len(injected))
    events = [json.loads(e) for e in deployment.read_audit() if b'"quarantined"' in e]
    reasons = sorted(e["reason"] for e in events)
    assert reasons.count("bad_signature") == 3 * len(genuine), reasons
    assert reasons.count("skipped_stages") == 3, reasons
    assert len(events) == len(injected), reasons

    # Replays: rejected as duplicates by dedup (the raw and hop topics) or skipped by the sink (clean).
    wait_for("the replay on the clean topic skipped by the sink",
             lambda: 'outcome="already_delivered"' in sink.metrics())
    time.sleep(2)  # anything that slipped through would have arrived by now
    spans = [s for r in backend.received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) == 5, "a span reached the backend twice, or one that was never sent"
