"""Per-tenant token buckets (requests/s and bytes/s) shared by every gateway replica through Redis.

The buckets live in Redis and are refilled with Redis' clock, so replicas with skewed clocks agree.
A replica does not ask Redis on every request: when it has to ask, it takes what the request needs
plus a *lease*, up to ``lease_s`` seconds' worth of the tenant's rates, and serves the tenant's next
requests from that lease locally until it runs short or ``lease_ttl_s`` passes. The next call
returns whatever is left of the old lease to the bucket and takes a new one, in the same round trip.

Every token a replica spends was taken from the shared bucket first, so over any long period no
tenant gets more than its rate. What leases change, and docs/gateway.md states for clients:

- over any interval, N replicas admit at most ``N * lease_s`` seconds' worth of the rates beyond
  what the bucket alone allows (each replica can hold one lease it took before the interval);
- a replica's unused lease is missing from the bucket until that replica's next call returns it, so
  a tenant spread over several replicas can see 429 up to ``(N - 1) * lease_s`` seconds' worth early.

Leases hold whole requests only, so a tenant allowed less than one request per ``lease_s`` gets no
request lease and is limited exactly. A request larger than the byte burst is let through once the
bucket is full and leaves it in debt, so big batches are slowed, never refused forever.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ingest.errors import Throttled, Unavailable
from rampart.config import RateLimitConfig

__all__ = ["Lease", "RateLimiter"]

log = logging.getLogger(__name__)

# KEYS[1] bucket; ARGV: rates and bursts, this request's size, the old lease returned, the lease wanted.
# Returns {allowed, seconds to wait, request tokens leased, byte tokens leased}; numbers as strings
# because Redis would truncate Lua numbers to integers.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local req_rate, req_burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local byte_rate, byte_burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local size = tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'r', 'b', 't')
local r = tonumber(state[1]) or req_burst
local b = tonumber(state[2]) or byte_burst
local elapsed = math.max(0, now - (tonumber(state[3]) or now))
r = math.min(req_burst, r + elapsed * req_rate + tonumber(ARGV[6]))
b = math.min(byte_burst, b + elapsed * byte_rate + tonumber(ARGV[7]))
local wait = 0
if r < 1 then wait = math.max(wait, (1 - r) / req_rate) end
local need = math.min(size, byte_burst)
if b < need then wait = math.max(wait, (need - b) / byte_rate) end
local allowed, lease_r, lease_b = 0, 0, 0
if wait == 0 then
  allowed = 1
  r = r - 1
  b = b - size
  lease_r = math.max(0, math.min(tonumber(ARGV[8]), math.floor(r)))
  lease_b = math.max(0, math.min(tonumber(ARGV[9]), b))
  r = r - lease_r
  b = b - lease_b
end
redis.call('HSET', KEYS[1], 'r', tostring(r), 'b', tostring(b), 't', tostring(now))
local full_s = math.max(req_burst / req_rate, byte_burst / byte_rate)
redis.call('PEXPIRE', KEYS[1], math.ceil(full_s * 1000) + 1000)
return {allowed, tostring(wait), tostring(lease_r), tostring(lease_b)}
"""


class Lease:
    """Tokens one replica took from a tenant's shared buckets ahead of use, valid until ``expires_at``."""

    __slots__ = ("bytes", "expires_at", "last_error", "lock", "refills", "requests")

    def __init__(self) -> None:
        self.requests = 0.0
        self.bytes = 0.0
        self.expires_at = 0.0
        # One refill per tenant at a time: concurrent requests that find the lease short wait for it
        # instead of each taking a lease, which would let one replica hold several.
        self.lock = asyncio.Lock()
        self.refills = 0  # completed
        # Why the last refill could not reach Redis (None if it did): requests that waited for that
        # refill apply the failure policy at once instead of each waiting out Redis' timeout in turn.
        self.last_error: Exception | None = None

    def take(self, size_bytes: int, now: float) -> bool:
        """Spend one request and ``size_bytes`` from the lease if it is still valid and holds enough."""
        if now >= self.expires_at or self.requests < 1 or self.bytes < size_bytes:
            return False
        self.requests -= 1
        self.bytes -= size_bytes
        return True

    def surrender(self) -> tuple[float, float]:
        """Empty the lease; returns what was left, to be given back to the shared buckets."""
        left = (self.requests, self.bytes)
        self.requests = self.bytes = 0.0
        return left

    def grant(self, requests: float, size_bytes: float, expires_at: float) -> None:
        self.requests, self.bytes, self.expires_at = requests, size_bytes, expires_at


class RateLimiter:
    def __init__(self, client: aioredis.Redis, prefix: str, default: RateLimitConfig,
                 per_tenant: dict[str, RateLimitConfig], failure_policy: Literal["open", "closed"],
                 lease_ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._script = client.register_script(_SCRIPT)
        self._prefix = prefix
        self._default = default
        self._per_tenant = per_tenant
        self._failure_policy = failure_policy
        self._lease_ttl_s = lease_ttl_s
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._last_warning = 0.0

    async def check(self, tenant: str, size_bytes: int) -> bool:
        """Take one request and ``size_bytes`` from the tenant's budget; raise Throttled if it is spent.

        Returns False when Redis could not be asked and the ``open`` policy let the request through.
        """
        lease = self._leases.get(tenant)
        if lease is None:
            lease = self._leases[tenant] = Lease()
        if lease.take(size_bytes, self._clock()):
            return True
        refills_seen = lease.refills
        async with lease.lock:
            if lease.take(size_bytes, self._clock()):  # refilled while this request waited
                return True
            if lease.refills != refills_seen and lease.last_error is not None:
                return self._redis_failed(lease.last_error)
            return await self._refill(tenant, lease, size_bytes)

    async def _refill(self, tenant: str, lease: Lease, size_bytes: int) -> bool:
        limits = self._per_tenant.get(tenant, self._default)
        returned_requests, returned_bytes = lease.surrender()
        # The lease's lifetime counts from before the call, so it never outlives lease_ttl_s from
        # the moment Redis granted it.
        asked_at = self._clock()
        try:
            allowed, wait, leased_requests, leased_bytes = await self._script(
                keys=[f"{self._prefix}:ratelimit:{tenant}"],
                args=[limits.requests_per_s, limits.burst_requests, limits.bytes_per_s, limits.burst_bytes,
                      size_bytes, returned_requests, returned_bytes,
                      math.floor(limits.requests_per_s * limits.lease_s), limits.bytes_per_s * limits.lease_s])
        except (RedisError, OSError) as exc:
            # What the old lease held is lost, not spent: the tenant can only get less, never more.
            lease.refills, lease.last_error = lease.refills + 1, exc
            return self._redis_failed(exc)
        lease.refills, lease.last_error = lease.refills + 1, None
        if int(allowed) != 1:
            retry = max(1.0, float(wait))
            raise Throttled(f"tenant {tenant} is over its rate limit; retry in {retry:.0f}s", retry_after_s=retry)
        lease.grant(float(leased_requests), float(leased_bytes), asked_at + self._lease_ttl_s)
        return True

    def _redis_failed(self, exc: Exception) -> bool:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning("rate limiter cannot reach Redis (%s); policy %s: requests are %s",
                        type(exc).__name__, self._failure_policy,
                        "let through unlimited" if self._failure_policy == "open" else "refused with 503")
        if self._failure_policy == "closed":
            raise Unavailable("rate limiter unavailable", retry_after_s=5)
        return False
