"""The replica side of rate limiting: leases taken from the shared buckets, spent locally, given back.

Redis is replaced by a model of the bucket script at a frozen Redis time (no refill), so every
figure is exact; tests/integration/ingest/test_ratelimit_redis.py runs the real script.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from ingest.errors import Throttled, Unavailable
from ingest.ratelimit import RateLimiter
from rampart.config import RateLimitConfig

# 100 requests/s and 1000 bytes/s, leases of 0.1 s: 10 requests and 100 bytes ahead per call.
LIMITS = RateLimitConfig(requests_per_s=100, burst_requests=50, bytes_per_s=1000, burst_bytes=5000, lease_s=0.1)
TTL_S = 1.0


class FakeBuckets:
    """The bucket script's arithmetic for one tenant, Redis' clock stopped; counts calls."""

    def __init__(self) -> None:
        self.requests: float | None = None
        self.bytes: float | None = None
        self.calls: list[list[float]] = []
        self.failing = False
        self.gate: asyncio.Event | None = None

    def register_script(self, _text: str) -> FakeBuckets:
        return self

    async def __call__(self, keys: list[str], args: list[float]) -> list[Any]:
        self.calls.append(list(args))
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise RedisConnectionError("connection refused")
        _rate, burst_r, _brate, burst_b, size, back_r, back_b, want_r, want_b = args
        r = min(burst_r, (burst_r if self.requests is None else self.requests) + back_r)
        b = min(burst_b, (burst_b if self.bytes is None else self.bytes) + back_b)
        allowed, lease_r, lease_b = 0, 0.0, 0.0
        if r >= 1 and b >= min(size, burst_b):
            allowed, r, b = 1, r - 1, b - size
            lease_r, lease_b = max(0, min(want_r, math.floor(r))), max(0.0, min(want_b, b))
            r, b = r - lease_r, b - lease_b
        self.requests, self.bytes = r, b
        return [allowed, "0.5", str(lease_r), str(lease_b)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(buckets: FakeBuckets, clock: Clock, limits: RateLimitConfig = LIMITS,
            policy: str = "open") -> RateLimiter:
    return RateLimiter(cast(aioredis.Redis, buckets), "p", limits, {}, policy,  # type: ignore[arg-type]
                       lease_ttl_s=TTL_S, clock=clock)


def run(limiter: RateLimiter, sizes: list[int]) -> list[bool | str]:
    """Check each size in turn; a refusal shows as 'throttled'."""
    async def go() -> list[bool | str]:
        out: list[bool | str] = []
        for size in sizes:
            try:
                out.append(await limiter.check("acme", size))
            except Throttled:
                out.append("throttled")
        return out
    return asyncio.run(go())


def test_one_redis_call_serves_the_request_and_a_lease_of_lease_s_worth() -> None:
    buckets, clock = FakeBuckets(), Clock()
    assert run(limiter(buckets, clock), [10] * 11) == [True] * 11
    assert len(buckets.calls) == 1  # the first request and 10 leased ones
    assert buckets.calls[0][-2:] == [10, 100.0]  # floor(100 * 0.1) requests, 1000 * 0.1 bytes wanted
    assert buckets.requests == 50 - 11 and buckets.bytes == 5000 - 10 - 100


def test_a_short_lease_is_given_back_in_the_call_that_takes_the_next() -> None:
    buckets, clock = FakeBuckets(), Clock()
    limit = limiter(buckets, clock)
    run(limit, [10, 10, 10])  # lease after the first: 10 requests, 100 bytes; 2 requests and 20 bytes spent
    run(limit, [500])  # more bytes than the lease holds: back to Redis, returning 8 requests and 80 bytes
    assert len(buckets.calls) == 2 and buckets.calls[1][4:7] == [500, 8.0, 80.0]
    # Nothing spent twice, nothing lost: 4 requests and 530 bytes left the bucket, plus the new lease.
    assert buckets.requests == 50 - 4 - 10 and buckets.bytes == 5000 - 530 - 100


def test_an_expired_lease_is_not_spent_but_given_back() -> None:
    buckets, clock = FakeBuckets(), Clock()
    limit = limiter(buckets, clock)
    run(limit, [10, 10])
    clock.now += TTL_S - 0.001
    run(limit, [10])
    assert len(buckets.calls) == 1
    clock.now += 0.001
    run(limit, [10])
    assert len(buckets.calls) == 2 and buckets.calls[1][5:7] == [8.0, 80.0]


def test_concurrent_requests_on_an_empty_lease_make_one_call() -> None:
    buckets, clock = FakeBuckets(), Clock()
    limit = limiter(buckets, clock)

    async def go() -> list[bool]:
        buckets.gate = asyncio.Event()
        checks = [asyncio.create_task(limit.check("acme", 10)) for _ in range(8)]
        await asyncio.sleep(0)
        buckets.gate.set()
        return await asyncio.gather(*checks)

    assert asyncio.run(go()) == [True] * 8
    assert len(buckets.calls) == 1  # one request paid in the call, seven from its lease


def test_refusal_comes_from_the_shared_bucket_and_leaves_no_lease() -> None:
    buckets, clock = FakeBuckets(), Clock()
    limits = RateLimitConfig(requests_per_s=100, burst_requests=3, bytes_per_s=1000, burst_bytes=5000, lease_s=0.1)
    limit = limiter(buckets, clock, limits)
    # The first call takes 1 request and the 2 left as its lease; the fourth request finds both empty.
    assert run(limit, [1, 1, 1, 1]) == [True, True, True, "throttled"]
    assert len(buckets.calls) == 2
    with pytest.raises(Throttled) as info:
        asyncio.run(limit.check("acme", 1))
    assert info.value.retry_after_s == 1.0  # at least a second, as before leases


def test_lease_of_zero_asks_redis_every_time() -> None:
    buckets, clock = FakeBuckets(), Clock()
    limits = RateLimitConfig(requests_per_s=100, burst_requests=50, bytes_per_s=1000, burst_bytes=5000, lease_s=0)
    assert run(limiter(buckets, clock, limits), [10] * 5) == [True] * 5
    assert len(buckets.calls) == 5


def test_slow_tenants_get_no_request_lease_so_their_limit_stays_exact() -> None:
    buckets, clock = FakeBuckets(), Clock()
    limits = RateLimitConfig(requests_per_s=5, burst_requests=2, bytes_per_s=1000, burst_bytes=5000, lease_s=0.1)
    assert run(limiter(buckets, clock, limits), [1, 1, 1]) == [True, True, "throttled"]
    assert [c[7] for c in buckets.calls] == [0, 0, 0]


def test_replicas_together_never_spend_more_than_the_bucket_held() -> None:
    buckets, clock = FakeBuckets(), Clock()
    replicas = [limiter(buckets, clock) for _ in range(3)]
    admitted = sum(r is True for _ in range(40) for limit in replicas for r in run(limit, [1]))
    held = sum(limit._leases["acme"].requests for limit in replicas)
    # Redis' clock is stopped: 50 requests in the bucket, some of them still held in leases.
    assert admitted + held == 50 and admitted >= 50 - 3 * 10


def test_redis_down_spends_a_valid_lease_then_applies_the_policy() -> None:
    buckets, clock = FakeBuckets(), Clock()
    limit = limiter(buckets, clock)
    run(limit, [10])
    buckets.failing = True
    assert run(limit, [10] * 10) == [True] * 10  # paid for before Redis went away
    assert run(limit, [10]) == [False]  # open: let through, reported as unchecked
    closed = limiter(buckets, clock, policy="closed")
    with pytest.raises(Unavailable):
        asyncio.run(closed.check("acme", 10))


def test_requests_waiting_for_a_refill_that_cannot_reach_redis_do_not_each_ask_again() -> None:
    buckets, clock = FakeBuckets(), Clock()
    limit = limiter(buckets, clock)

    async def go() -> list[bool]:
        buckets.failing, buckets.gate = True, asyncio.Event()
        checks = [asyncio.create_task(limit.check("acme", 10)) for _ in range(5)]
        await asyncio.sleep(0)
        buckets.gate.set()
        waited = await asyncio.gather(*checks)
        return [*waited, await limit.check("acme", 10)]

    # A blackholed Redis costs each request at most one timeout, as before leases; a request that
    # arrives after the failed call asks Redis again.
    assert asyncio.run(go()) == [False] * 6
    assert len(buckets.calls) == 2
