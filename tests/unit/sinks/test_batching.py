"""Batching combines concurrent exports of one tenant, isolates a refused record, and respects limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

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
    batcher = ExportBatcher(backend.export, slots=4, max_records=10, max_bytes=1 << 20, max_wait_s=0.05)
    reqs = [request("a", f"s{i}") for i in range(4)] + [request("b", "t0")]
    asyncio.run(submit_all(batcher, reqs))
    assert sorted(map(sorted, backend.calls)) == [["s0", "s1", "s2", "s3"], ["t0"]]


def test_full_batches_leave_without_waiting_and_limits_hold() -> None:
    backend = Backend()
    batcher = ExportBatcher(backend.export, slots=4, max_records=2, max_bytes=1 << 20, max_wait_s=30)
    asyncio.run(asyncio.wait_for(submit_all(batcher, [request("a", f"s{i}") for i in range(4)]), timeout=5))
    assert sorted(map(sorted, backend.calls)) == [["s0", "s1"], ["s2", "s3"]]


def test_a_refused_record_is_isolated_and_the_others_delivered() -> None:
    backend = Backend(refuse="s2")
    batcher = ExportBatcher(backend.export, slots=4, max_records=10, max_bytes=1 << 20, max_wait_s=0.05)
    results = asyncio.run(submit_all(batcher, [request("a", f"s{i}") for i in range(4)]))
    assert [isinstance(r, PermanentExportError) for r in results] == [False, False, True, False]
    assert backend.calls[0] == ["s0", "s1", "s2", "s3"] and sorted(backend.calls[1:]) == [["s0"], ["s1"], ["s2"],
                                                                                          ["s3"]]


@pytest.mark.parametrize("records", [1])
def test_batching_can_be_switched_off(records: int) -> None:
    backend = Backend()
    batcher = ExportBatcher(backend.export, slots=4, max_records=records, max_bytes=1 << 20, max_wait_s=1)
    asyncio.run(submit_all(batcher, [request("a", "s0"), request("a", "s1")]))
    assert sorted(backend.calls) == [["s0"], ["s1"]]


class FakeClock:
    """Stands in for the event loop's call_later: timers fire only when the test advances time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, Callable[[], None], asyncio.Handle]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.Handle:
        handle = asyncio.Handle(callback, (), asyncio.get_running_loop())
        self._timers.append((self.now + delay, callback, handle))
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self._timers if t[0] <= self.now]
        self._timers = [t for t in self._timers if t[0] > self.now]
        for _, callback, handle in due:
            if not handle.cancelled():
                callback()


class GatedBackend(Backend):
    """Each export stays in its slot until the test releases it: slot states under the test's control."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0
        self._gates: list[asyncio.Future[None]] = []

    async def export(self, req: ExportRequest) -> Mapping[str, int] | None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gates.append(gate)
        try:
            await super().export(req)
            await gate
        finally:
            self.in_flight -= 1
        return None

    def release_oldest(self) -> None:
        self._gates.pop(0).set_result(None)


async def run_loop() -> None:
    """Let every task that can run do so (no wall-clock time passes in these tests)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_batch_keeps_filling_while_every_slot_is_busy() -> None:
    async def scenario() -> None:
        clock, backend = FakeClock(), GatedBackend()
        batcher = ExportBatcher(backend.export, slots=1, max_records=4, max_bytes=1 << 20, max_wait_s=0.1,
                                call_later=clock.call_later)
        waiting = [asyncio.create_task(batcher.submit(request("a", "s0")))]
        await run_loop()
        assert backend.calls == []                    # not full, not yet waited long enough
        clock.advance(0.1)
        await run_loop()
        assert backend.calls == [["s0"]]              # on time, and a slot was free: it leaves alone

        waiting += [asyncio.create_task(batcher.submit(request("a", f"s{i}"))) for i in (1, 2)]
        await run_loop()
        clock.advance(1.0)                            # s1 has waited far longer than max_wait_s ...
        await run_loop()
        assert backend.calls == [["s0"]]              # ... but the only slot is busy: it keeps filling
        waiting += [asyncio.create_task(batcher.submit(request("a", f"s{i}"))) for i in (3, 4, 5)]
        await run_loop()
        assert backend.calls == [["s0"]]              # s1-s4 full, waiting for the slot; s5 starts a new batch

        backend.release_oldest()
        await run_loop()
        assert backend.calls == [["s0"], ["s1", "s2", "s3", "s4"]]
        backend.release_oldest()
        await run_loop()
        assert backend.calls == [["s0"], ["s1", "s2", "s3", "s4"]]  # a slot is free, but s5 is not due yet
        clock.advance(0.1)
        await run_loop()
        assert backend.calls == [["s0"], ["s1", "s2", "s3", "s4"], ["s5"]]
        backend.release_oldest()
        assert await asyncio.gather(*waiting) == [None] * 6
        assert backend.most_in_flight == 1

    asyncio.run(scenario())


def test_waiting_batches_take_free_slots_oldest_first_and_never_more_than_the_slots() -> None:
    async def scenario() -> None:
        clock, backend = FakeClock(), GatedBackend()
        batcher = ExportBatcher(backend.export, slots=2, max_records=3, max_bytes=1 << 20, max_wait_s=0.1,
                                call_later=clock.call_later)
        waiting = [asyncio.create_task(batcher.submit(request(t, f"{t}0"))) for t in ("a", "b")]
        await run_loop()
        clock.advance(0.1)
        await run_loop()
        assert sorted(backend.calls) == [["a0"], ["b0"]]   # both slots busy now
        waiting += [asyncio.create_task(batcher.submit(request(t, f"{t}1"))) for t in ("c", "a", "b")]
        await run_loop()
        clock.advance(0.1)
        await run_loop()
        assert len(backend.calls) == 2                     # three batches due, no slot free
        backend.release_oldest()
        await run_loop()
        assert backend.calls[2] == ["c1"]                  # the oldest of them
        backend.release_oldest()
        await run_loop()
        assert backend.calls[3] == ["a1"] and len(backend.calls) == 4
        backend.release_oldest()
        backend.release_oldest()
        await run_loop()
        backend.release_oldest()
        await asyncio.gather(*waiting)
        assert backend.calls[4] == ["b1"] and backend.most_in_flight == 2

    asyncio.run(scenario())
