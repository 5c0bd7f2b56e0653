"""The rate-limit script in real Redis, driven by several in-process replicas' limiters."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
import redis.asyncio as aioredis

from ingest.errors import Throttled
from ingest.ratelimit import RateLimiter
from rampart.config import RateLimitConfig

pytestmark = pytest.mark.integration


def test_replicas_with_leases_admit_no_more_than_the_shared_bucket(redis_url: str) -> None:
    # 10 requests/s, leases of 1 s: every call takes 10 requests ahead for its replica.
    limits = RateLimitConfig(requests_per_s=10, burst_requests=50, bytes_per_s=1e6, burst_bytes=1e7, lease_s=1.0)
    prefix = f"test.ratelimit.{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[int, float, float, float]:
        client = aioredis.Redis.from_url(redis_url)
        replicas = [RateLimiter(client, prefix, limits, {}, "closed", lease_ttl_s=30.0) for _ in range(3)]
        admitted = 0
        started = time.monotonic()
        for _ in range(40):
            for limit in replicas:
                with contextlib.suppress(Throttled):
                    admitted += await limit.check("acme", 1000)
        elapsed = time.monotonic() - started
        held = sum(limit._leases["acme"].requests for limit in replicas)
        await replicas[0].check("other", 1000)
        leased_bytes = replicas[0]._leases["other"].bytes
        await client.aclose()
        return admitted, elapsed, held, leased_bytes

    admitted, elapsed, held, leased_bytes = asyncio.run(scenario())
    refilled = 10 * elapsed
    # Every admitted request was taken from the bucket first; what the replicas still hold is not spent.
    assert admitted <= 50 + refilled + 1
    assert admitted + held >= 50
    assert held <= 3 * 10
    assert 0 < leased_bytes <= 1e6  # a second's worth of bytes, returned by the script as a float


def test_an_expired_lease_goes_back_to_the_bucket_with_the_next_call(redis_url: str) -> None:
    limits = RateLimitConfig(requests_per_s=10, burst_requests=11, bytes_per_s=1e6, burst_bytes=1e7, lease_s=1.0)
    prefix = f"test.ratelimit.{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[list[bool | str], float]:
        client = aioredis.Redis.from_url(redis_url)
        a, b = (RateLimiter(client, prefix, limits, {}, "closed", lease_ttl_s=0.05) for _ in range(2))
        out: list[bool | str] = [await a.check("acme", 1)]  # 1 request spent and the other 10 leased by a
        try:
            out.append(await b.check("acme", 1))
        except Throttled:
            out.append("throttled")
        await asyncio.sleep(0.06)  # a's lease expired: a no longer spends it ...
        out.append(await a.check("acme", 1))  # ... and its next call returns the 10 before taking
        held = a._leases["acme"].requests
        await client.aclose()
        return out, held

    answers, held = asyncio.run(scenario())
    assert answers == [True, "throttled", True]
    # Without the 10 given back the bucket would hold only what refilled in the pause (about 1).
    assert held >= 9
