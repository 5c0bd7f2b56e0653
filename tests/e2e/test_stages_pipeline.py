"""Gateway -> validate -> scrub -> dedup on the real broker and Redis, fed by the OpenTelemetry SDK."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from confluent_kafka import Producer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from rampart.keyring import KeyRing, generate_key
from schemas.envelope import Envelope, PayloadFormat, Signal, decode, encode
from tests.integration.ingest import otlp_data
from tests.support.deployment import Deployment, GatewayProcess, post, read_raw

pytestmark = pytest.mark.e2e


def send(gateway: GatewayProcess, token: str, body: bytes) -> int:
    return post(f"{gateway.http_url}/v1/traces", body, {"Content-Type": "application/x-protobuf",
                                                        "x-api-key": token})[0]


def span_ids(envelopes: list[Envelope]) -> Counter[bytes]:
    ids: Counter[bytes] = Counter()
    for envelope in envelopes:
        for rs in ExportTraceServiceRequest.FromString(envelope.payload).resource_spans:
            ids.update(s.trace_id + s.span_id for ss in rs.scope_spans for s in ss.spans)
    return ids


def wait_for(deployment: Deployment, topic: str, predicate: object, timeout_s: float = 60) -> list[Envelope]:
    deadline = time.monotonic() + timeout_s
    while True:
        envelopes = [decode(v) for v in read_raw(deployment.kafka_bootstrap, topic, 10)]
        if predicate(envelopes):  # type: ignore[operator]
            return envelopes
        assert time.monotonic() < deadline, f"{topic} did not reach the expected state within {timeout_s}s"
        time.sleep(0.5)


@pytest.mark.parametrize("layout", ["fused", "separate"])
def test_spans_flow_through_the_stages_scrubbed_and_deduplicated(deployment: Deployment, layout: str) -> None:
    gateway = deployment.start_gateway()
    if layout == "fused":
        deployment.start_worker("validate,scrub,dedup")
    else:
        for stage in ("validate", "scrub", "dedup"):
            deployment.start_worker(stage)
    _, token = deployment.api_key()

    good = encode_spans(otlp_data.spans(20))
    spans = good.resource_spans[0].scope_spans[0].spans
    spans[0].attributes.add(key="enduser.email").value.string_value = "jane@example.com"
    spans[1].trace_id = bytes(16)
    body = good.SerializeToString()
    assert send(gateway, token, body) == 200
    assert send(gateway, token, body) == 200  # the client's retry of the same request

    clean_topic = deployment.topics.clean(Signal.TRACES)
    clean = wait_for(deployment, clean_topic, lambda es: sum(span_ids(es).values()) >= 19)
    verifier = deployment.verifier()
    for envelope in clean:
        verifier.verify(envelope)
        assert envelope.key_id == "worker-1" and envelope.stages[-3:] == ("validate", "scrub", "dedup")
        assert b"jane@example.com" not in envelope.payload
    ids = span_ids(clean)
    assert len(ids) == 19 and set(ids.values()) == {1}
    rejected = wait_for(deployment, deployment.topics.rejected(Signal.TRACES),
                        lambda es: sum(span_ids(es).values()) >= 21)
    rejected_spans: Counter[str] = Counter()
    for envelope in rejected:
        rejected_spans[envelope.attributes["rampart.reject.reason"]] += sum(span_ids([envelope]).values())
    # validate runs before dedup, so each of the two requests has its invalid span rejected; dedup then
    # rejects the retry's 19 valid spans as duplicates (in one batch, or one per part when validate
    # re-keyed the batch by trace id for the next topic).
    assert rejected_spans == {"invalid_trace_id": 2, "duplicate_batch": 19}


def test_a_forged_message_on_the_raw_topic_is_quarantined(deployment: Deployment) -> None:
    deployment.start_worker("validate,scrub,dedup")
    intruder = KeyRing({"gateway-1": generate_key()}, "gateway-1")  # right id, wrong secret
    forged = intruder.sign(Envelope(batch_id="forged-1", tenant="victim", principal="k", signal=Signal.TRACES,
                                    payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=time.time_ns(),
                                    gateway_id="gw", payload=encode_spans(otlp_data.spans(2)).SerializeToString()))
    producer = Producer({"bootstrap.servers": deployment.kafka_bootstrap})
    producer.produce(deployment.topics.raw(Signal.TRACES), encode(forged))
    assert producer.flush(10) == 0
    deadline = time.monotonic() + 60
    while not read_raw(deployment.kafka_bootstrap, deployment.topics.quarantine(Signal.TRACES), 5):
        assert time.monotonic() < deadline, "the forged message was not quarantined within 60 s"
        time.sleep(0.5)
    assert read_raw(deployment.kafka_bootstrap, deployment.topics.clean(Signal.TRACES), 5) == []
    events = [e for e in deployment.read_audit() if b'"quarantined"' in e]
    assert events and b"bad_signature" in events[0]
