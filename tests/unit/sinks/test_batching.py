"""Batching combines concurrent exports of one tenant, isolates a refused record, and respects limits."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from schemas.envelope import Signal
from sinks.base import ExportRequest, PermanentExportError
from sinks.batching import ExportBatcher


def request(tenant: str, name: str) -> ExportRequest:
    r = ExportTraceServiceRequest()
    r.resource_spans.add().scope_spans.add().spans.add(name=name)
    return ExportRequest(Signal.TRACES, tenant, r.SerializeToString(), 1, name)


class Backend:
    def __init__(self, refuse: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.refuse = refuse

    async def export(self, req: ExportRequest) -> Mapping[str, int] | None:
        names = [s.name for rs in ExportTraceServiceRequest.FromString(req.payload).resource_spans
                 for ss in rs.scope_spans for s in ss.spans]
        self.calls.append(names)
        if self.refuse in names:
            raise PermanentExportError("400", answer=f"bad {self.refuse}")
        return None


async def submit_all(batcher: ExportBatcher, requests: list[ExportRequest]) -> list[object]:
    return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)


def test_concurrent_records_of_a_tenant_share_one_export() -> None:
    backend = Backend()
    batcher = ExportBatcher(backend.export, max_records=10, max_bytes=1 << 20, max_wait_s=0.05)
    reqs = [request("a", f"s{i}") for i in range(4)] + [request("b", "t0")]
    asyncio.run(submit_all(batcher, reqs))
    assert sorted(map(sorted, backend.calls)) == [["s0", "s1", "s2", "s3"], ["t0"]]


def test_full_batches_leave_without_waiting_and_limits_hold() -> None:
    backend = Backend()
    batcher = ExportBatcher(backend.export, max_records=2, max_bytes=1 << 20, max_wait_s=30)
    asyncio.run(asyncio.wait_for(submit_all(batcher, [request("a", f"s{i}") for i in range(4)]), timeout=5))
    assert sorted(map(sorted, backend.calls)) == [["s0", "s1"], ["s2", "s3"]]


def test_a_refused_record_is_isolated_and_the_others_delivered() -> None:
    backend = Backend(refuse="s2")
    batcher = ExportBatcher(backend.export, max_records=10, max_bytes=1 << 20, max_wait_s=0.05)
    results = asyncio.run(submit_all(batcher, [request("a", f"s{i}") for i in range(4)]))
    assert [isinstance(r, PermanentExportError) for r in results] == [False, False, True, False]
    assert backend.calls[0] == ["s0", "s1", "s2", "s3"] and sorted(backend.calls[1:]) == [["s0"], ["s1"], ["s2"],
                                                                                          ["s3"]]


@pytest.mark.parametrize("records", [1])
def test_batching_can_be_switched_off(records: int) -> None:
    backend = Backend()
    batcher = ExportBatcher(backend.export, max_records=records, max_bytes=1 << 20, max_wait_s=1)
    asyncio.run(submit_all(batcher, [request("a", "s0"), request("a", "s1")]))
    assert sorted(backend.calls) == [["s0"], ["s1"]]
