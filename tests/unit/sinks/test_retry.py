"""The retry engine: backoff bounds, Retry-After, the circuit breaker, permanent errors pass through."""

from __future__ import annotations

import asyncio

import pytest

from schemas.envelope import Signal
from sinks.base import ExportError, ExportRequest, PermanentExportError, RetryableExportError, Sink
from sinks.retry import CircuitBreaker, RetryPolicy, deliver

REQUEST = ExportRequest(Signal.TRACES, "acme", b"", 0, "b")


def test_backoff_grows_to_its_cap_with_jitter_and_honours_retry_after() -> None:
    low, high = RetryPolicy(0.5, 8.0, rng=lambda: 0.0), RetryPolicy(0.5, 8.0, rng=lambda: 1.0)
    assert [low.backoff_s(a, None) for a in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert [high.backoff_s(a, None) for a in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert low.backoff_s(0, 7.0) == 7.0


def test_breaker_opens_after_the_threshold_and_closes_on_success() -> None:
    now = [100.0]
    breaker = CircuitBreaker(threshold=3, open_s=10.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.failure()
    assert not breaker.is_open and breaker.wait_s() == 0
    breaker.failure()
    assert breaker.is_open and breaker.wait_s() == 10.0
    now[0] += 4
    assert breaker.wait_s() == 6.0
    breaker.success()
    assert not breaker.is_open and breaker.wait_s() == 0


class Flaky(Sink):
    name = "flaky"

    def __init__(self, errors: list[ExportError]) -> None:
        self.errors = errors
        self.calls = 0

    @property
    def signals(self) -> list[Signal]:
        return [Signal.TRACES]

    async def export(self, request: ExportRequest) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def test_retries_until_accepted() -> None:
    sink = Flaky([RetryableExportError("503", retry_after_s=0.01), RetryableExportError("reset")])
    delays: list[float] = []
    asyncio.run(deliver(sink, REQUEST, RetryPolicy(0.001, 0.01), CircuitBreaker(5, 0.01),
                        lambda _e, d: delays.append(d)))
    assert sink.calls == 3 and delays[0] >= 0.01


def test_permanent_errors_are_not_retried() -> None:
    sink = Flaky([PermanentExportError("400", answer="bad payload")])
    with pytest.raises(PermanentExportError) as info:
        asyncio.run(deliver(sink, REQUEST, RetryPolicy(0.001, 0.01), CircuitBreaker(5, 0.01), lambda _e, _d: None))
    assert sink.calls == 1 and info.value.answer == "bad payload"
