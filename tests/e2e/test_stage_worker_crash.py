"""Killing a stage worker with SIGKILL mid-stream loses nothing: its partitions move to the others and
every span that went in comes out; collapsed by batch id (redeliveries keep their batch id), exactly once."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from schemas.envelope import Signal, decode
from tests.integration.ingest import otlp_data
from tests.support.deployment import Deployment, post, read_raw

pytestmark = pytest.mark.e2e

BATCHES, SPANS_PER_BATCH = 80, 25


def test_sigkill_of_a_worker_loses_nothing(deployment: Deployment) -> None:
    gateway = deployment.start_gateway()
    fast_failover = {"RAMPART__STAGES__SESSION_TIMEOUT_S": "6"}
    victim = deployment.start_worker("validate,scrub,dedup", **fast_failover)
    deployment.start_worker("validate,scrub,dedup", **fast_failover)
    _, token = deployment.api_key()

    sent: set[bytes] = set()
    statuses: list[int] = []

    def load() -> None:
        for _ in range(BATCHES):
            request = encode_spans(otlp_data.spans(SPANS_PER_BATCH))
            status = post(f"{gateway.http_url}/v1/traces", request.SerializeToString(),
                          {"Content-Type": "application/x-protobuf", "x-api-key": token})[0]
            statuses.append(status)
            if status == 200:
                sent.update(s.trace_id + s.span_id for rs in request.resource_spans for ss in rs.scope_spans
                            for s in ss.spans)
            time.sleep(0.05)

    sender = threading.Thread(target=load)
    sender.start()
    time.sleep(1.5)
    victim.kill()
    time.sleep(1.0)
    deployment.start_worker("validate,scrub,dedup", **fast_failover)  # the replacement
    sender.join()
    assert statuses.count(200) == BATCHES

    deadline = time.monotonic() + 90
    while True:
        envelopes = [decode(v) for v in read_raw(deployment.kafka_bootstrap,
                                                 deployment.topics.clean(Signal.TRACES), 10)]
        per_span: Counter[bytes] = Counter()
        per_span_collapsed: Counter[bytes] = Counter()
        seen_batches: set[str] = set()
        for envelope in envelopes:
            request = ExportTraceServiceRequest.FromString(envelope.payload)
            ids = [s.trace_id + s.span_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
            per_span.update(ids)
            if envelope.batch_id not in seen_batches:
                seen_batches.add(envelope.batch_id)
                per_span_collapsed.update(ids)
        if set(per_span) >= sent or time.monotonic() > deadline:
            break
        time.sleep(1)
    missing = sent - set(per_span)
    assert not missing, f"{len(missing)} of {len(sent)} acknowledged spans never reached the clean topic"
    assert set(per_span_collapsed) == sent and set(per_span_collapsed.values()) == {1}
    print(f"\n[crash test] {len(sent)} spans in, {sum(per_span.values())} span copies out "
          f"({sum(per_span.values()) - len(sent)} redelivered), exactly once per batch id")
