"""Per-tenant token buckets (requests/s and bytes/s) shared by every gateway replica through Redis.

One script call per request refills and takes from both buckets atomically, using Redis' clock so
replicas with skewed clocks agree. A request larger than the byte burst is let through once the
bucket is full and leaves it in debt, so big batches are slowed, never refused forever.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ingest.errors import Throttled, Unavailable
from rampart.config import RateLimitConfig

__all__ = ["RateLimiter"]

log = logging.getLogger(__name__)

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
r = math.min(req_burst, r + elapsed * req_rate)
b = math.min(byte_burst, b + elapsed * byte_rate)
local wait = 0
if r < 1 then wait = math.max(wait, (1 - r) / req_rate) end
local need = math.min(size, byte_burst)
if b < need then wait = math.max(wait, (need - b) / byte_rate) end
local allowed = 0
if wait == 0 then
  allowed = 1
  r = r - 1
  b = b - size
end
redis.call('HSET', KEYS[1], 'r', tostring(r), 'b', tostring(b), 't', tostring(now))
local full_s = math.max(req_burst / req_rate, byte_burst / byte_rate)
redis.call('PEXPIRE', KEYS[1], math.ceil(full_s * 1000) + 1000)
return {allowed, tostring(wait)}
"""


class RateLimiter:
    def __init__(self, client: aioredis.Redis, prefix: str, default: RateLimitConfig,
                 per_tenant: dict[str, RateLimitConfig], failure_policy: Literal["open", "closed"]) -> None:
        self._script = client.register_script(_SCRIPT)
        self._prefix = prefix
        self._default = default
        self._per_tenant = per_tenant
        self._failure_policy = failure_policy
        self._last_warning = 0.0

    async def check(self, tenant: str, size_bytes: int) -> bool:
        """Take one request and ``size_bytes`` from the tenant's buckets; raise Throttled if they are empty.

        Returns False when Redis could not be asked and the ``open`` policy let the request through.
        """
        limits = self._per_tenant.get(tenant, self._default)
        try:
            allowed, wait = await self._script(
                keys=[f"{self._prefix}:ratelimit:{tenant}"],
                args=[limits.requests_per_s, limits.burst_requests, limits.bytes_per_s, limits.burst_bytes,
                      size_bytes])
        except (RedisError, OSError) as exc:
            return self._redis_failed(exc)
        if int(allowed) != 1:
            retry = max(1.0, float(wait))
            raise Throttled(f"tenant {tenant} is over its rate limit; retry in {retry:.0f}s", retry_after_s=retry)
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
