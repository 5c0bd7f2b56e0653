"""A batch the backend already accepted is not exported again when Kafka delivers it a second time
(as after a sink crash or rebalance between export and commit): every sink replica checks the
accepted batch ids it shares in Redis."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Producer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from rampart.config import KeyringConfig
from rampart.keyring import load_keyring
from schemas.envelope import Envelope, PayloadFormat, Signal, encode
from tests.integration.ingest import otlp_data
from tests.support.backend import CapturingBackend
from tests.support.deployment import Deployment

pytestmark = pytest.mark.e2e


def test_redelivered_batch_is_exported_once(deployment: Deployment, backend: CapturingBackend) -> None:
    worker_ring = load_keyring(KeyringConfig(file=deployment.keyring_file, signing_key_id="worker-1"), {})
    batches = [worker_ring.sign(Envelope(
        batch_id=str(uuid.uuid4()), tenant="acme", principal="k1", signal=Signal.TRACES,
        payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=time.time_ns(), gateway_id="gw",
        payload=encode_spans(otlp_data.spans(4)).SerializeToString(),
        stages=("gateway", "validate", "scrub", "dedup"))) for _ in range(3)]
    producer = Producer({"bootstrap.servers": deployment.kafka_bootstrap})
    topic = deployment.topics.clean(Signal.TRACES)

    def produce(envelopes: list[Envelope]) -> None:
        for envelope in envelopes:
            producer.produce(topic, encode(envelope), envelope.batch_id.encode())
        assert producer.flush(10) == 0

    def wait_for(outcome: str, count: int) -> None:
        deadline = time.monotonic() + 30
        line = f'rampart_sink_batches_total{{outcome="{outcome}",signal="traces",sink="otlp"}} {count:.1f}'
        while line not in sink.metrics():
            assert time.monotonic() < deadline, f"no {line!r} in:\n{sink.metrics()}"
            time.sleep(0.2)

    sink = deployment.start_sink("otlp", RAMPART__SINKS__OTLP__ENDPOINT=backend.endpoint)
    produce(batches)
    wait_for("exported", 3)
    produce([batches[0], batches[2]])  # delivered again, as after a crash between export and commit
    wait_for("already_delivered", 2)
    spans = [s for r in backend.received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(spans) == 12 and len({s.span_id for s in spans}) == 12
    assert 'outcome="exported",signal="traces",sink="otlp"} 3.0' in sink.metrics()
