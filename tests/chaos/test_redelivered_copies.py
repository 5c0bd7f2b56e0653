"""Two copies of one batch close together on the clean topic reach the backend once.

Faults leave such copies behind: a stage worker that lost its partitions (a Kafka outage longer than
the session timeout) still publishes the records it was working on while their new owner processes
them again, and a stage's producer retry after a missed acknowledgement writes the record a second
time. Both copies carry the same batch id (docs/stages.md), and the sink remembers the batch ids its
backend accepted (sinks/delivered.py) so that a redelivery is not exported twice. When the copies are
in the sink at the same time, both are checked before either is marked.

Found by the chaos runs: the scrub SIGKILL test, run while the shared broker was restarted under it,
counted 6 spans twice at the backend. This test writes the copies directly, so it does not depend on
the timing of a fault.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Producer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from rampart.config import KeyringConfig
from rampart.keyring import load_keyring
from schemas.envelope import Envelope, PayloadFormat, Signal, encode
from tests.chaos.harness import backend_copies, metric
from tests.integration.ingest import otlp_data
from tests.support.backend import CapturingBackend
from tests.support.deployment import Deployment

pytestmark = pytest.mark.e2e

BATCHES, SPANS = 20, 4


def test_copies_of_a_batch_in_flight_together_are_exported_once(deployment: Deployment,
                                                                  backend: CapturingBackend) -> None:
    ring = load_keyring(KeyringConfig(file=deployment.keyring_file, signing_key_id="worker-1"), {})
    batches = [ring.sign(Envelope(
        batch_id=str(uuid.uuid4()), tenant="acme", principal="k1", signal=Signal.TRACES,
        payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=time.time_ns(), gateway_id="gw",
        payload=encode_spans(otlp_data.spans(SPANS)).SerializeToString(),
        stages=("gateway", "validate", "scrub", "dedup"))) for _ in range(BATCHES)]
    sink = deployment.start_sink("otlp", RAMPART__SINKS__OTLP__ENDPOINT=backend.endpoint)
    producer = Producer({"bootstrap.servers": deployment.kafka_bootstrap})
    topic = deployment.topics.clean(Signal.TRACES)
    for envelope in batches:
        for _ in range(2):  # the record and its copy, one after the other on the same partition
            producer.produce(topic, encode(envelope), envelope.batch_id.encode())
    assert producer.flush(10) == 0

    deadline = time.monotonic() + 30
    handled = 0.0
    while handled < 2 * BATCHES:
        assert time.monotonic() < deadline, f"the sink handled {handled} of {2 * BATCHES} records"
        time.sleep(0.5)
        handled = sum(metric(sink.metrics(), "rampart_sink_batches_total", outcome=outcome)
                      for outcome in ("exported", "already_delivered"))
    copies = backend_copies(backend)
    assert len(copies) == BATCHES * SPANS
    twice = sum(1 for n in copies.values() if n > 1)
    assert twice == 0, (f"{twice} of {len(copies)} spans reached the backend twice: both copies of a batch were "
                        "exported (rampart_sink_batches_total: "
                        f"{metric(sink.metrics(), 'rampart_sink_batches_total', outcome='exported'):.0f} exported, "
                        f"{metric(sink.metrics(), 'rampart_sink_batches_total', outcome='already_delivered'):.0f} "
                        "already delivered)")
