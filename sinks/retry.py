"""The one retry engine of every sink: exponential backoff with jitter, Retry-After honoured, and a
circuit breaker that stops calling a backend that keeps failing.

It never gives up on a retryable failure: the record stays uncommitted and Kafka holds the backlog
behind it. While it waits, the consumer stops fetching for that partition; nothing spins.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping

from sinks.base import ExportError, ExportRequest, Sink

__all__ = ["CircuitBreaker", "RetryPolicy", "deliver"]


class CircuitBreaker:
    """Closed while calls succeed; open for ``open_s`` after ``threshold`` failures in a row; then a probe."""

    def __init__(self, threshold: int, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = threshold
        self._open_s = open_s
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        return self._failures >= self._threshold

    def wait_s(self) -> float:
        """How long a caller must wait before it may call the backend."""
        return max(0.0, self._open_until - self._clock()) if self.is_open else 0.0

    def success(self) -> None:
        self._failures = 0
        self._open_until = 0.0

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self._threshold:
            self._open_until = self._clock() + self._open_s


class RetryPolicy:
    def __init__(self, initial_s: float, max_s: float, multiplier: float = 2.0,
                 rng: Callable[[], float] = random.random) -> None:
        self.initial_s, self.max_s, self.multiplier, self._rng = initial_s, max_s, multiplier, rng

    def backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Full jitter below the exponential bound; never less than what the backend asked for."""
        bound = min(self.max_s, self.initial_s * self.multiplier ** attempt)
        delay = bound * (0.5 + 0.5 * self._rng())
        return max(delay, retry_after_s or 0.0)


async def deliver(sink: Sink, request: ExportRequest, policy: RetryPolicy, breaker: CircuitBreaker,
                  on_retry: Callable[[ExportError, float], None]) -> Mapping[str, int] | None:
    """Export until the backend accepts; raise PermanentExportError when it refuses for good.
    Returns what the sink left out, by reason (see Sink.export)."""
    attempt = 0
    while True:
        wait = breaker.wait_s()
        if wait:
            await asyncio.sleep(wait)
        try:
            left_out = await sink.export(request)
        except ExportError as exc:
            if not exc.retriable:
                breaker.success()  # the backend answered: it is up, it just will not take this
                raise
            breaker.failure()
            delay = policy.backoff_s(attempt, exc.retry_after_s)
            on_retry(exc, delay)
            await asyncio.sleep(delay)
            attempt += 1
            continue
        breaker.success()
        return left_out
