"""Per-tenant export budgets: a tenant over its budget is held back (or dead-lettered); others are not."""

from __future__ import annotations

import json
import time

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.ingest import otlp_data
from tests.support.backend import CapturingBackend
from tests.support.deployment import Deployment, SinkProcess, read_raw

pytestmark = pytest.mark.e2e


def tenant_spans(backend: CapturingBackend, tenant: str) -> int:
    return sum(len(ss.spans) for r in backend.received for rs in r.resource_spans
               if any(kv.key == "tenant.id" and kv.value.string_value == tenant for kv in rs.resource.attributes)
               for ss in rs.scope_spans)


def over_budget(sink: SinkProcess) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in sink.metrics().splitlines()
               if line.startswith("rampart_sink_over_budget_total{") and 'tenant="big"' in line)


@pytest.mark.parametrize("policy", ["hold", "dead_letter"])
def test_a_tenant_over_budget_is_held_back_and_others_are_not(deployment: Deployment, backend: CapturingBackend,
                                                               policy: str) -> None:
    deployment.start_worker("validate,scrub,dedup")
    sink = deployment.start_sink("otlp", RAMPART__SINKS__OTLP__ENDPOINT=backend.endpoint,
                                 RAMPART__SINKS__BUDGETS__BIG__BYTES_PER_WINDOW="4000",
                                 RAMPART__SINKS__BUDGETS__BIG__WINDOW_S="600",
                                 RAMPART__SINKS__BUDGET_POLICY=policy)
    gateway = deployment.start_gateway()
    _, big = deployment.api_key(tenant="big")
    _, small = deployment.api_key(tenant="small")
    for token in (big, small):
        exporter = OTLPSpanExporter(endpoint=f"{gateway.http_url}/v1/traces", headers={"x-api-key": token})
        for _ in range(4):
            assert exporter.export(otlp_data.spans(20)) is SpanExportResult.SUCCESS

    deadline = time.monotonic() + 60
    while tenant_spans(backend, "small") < 80:
        assert time.monotonic() < deadline, "the tenant within budget was held back too"
        time.sleep(0.5)
    deadline = time.monotonic() + 20
    while over_budget(sink) == 0:
        assert time.monotonic() < deadline, "the over-budget tenant was never held back"
        time.sleep(0.5)
    assert 0 < tenant_spans(backend, "big") < 80
    events = [json.loads(v) for v in deployment.read_audit()]
    assert any(e["event"] == "export_budget_exceeded" and e["tenant"] == "big" and e["policy"] == policy
               for e in events)
    dead_lettered = read_raw(deployment.kafka_bootstrap, deployment.topics.dlq("otlp"), 5)
    assert bool(dead_lettered) is (policy == "dead_letter")
