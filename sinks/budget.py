"""Per-tenant export budgets: a byte bucket per (sink, tenant) in Redis, refilled continuously at
``bytes_per_window / window_s``, shared by every replica of the sink, taken with one script call.

A batch larger than the whole budget passes when the bucket is full and leaves it in debt, so a
large batch is delayed, never refused forever.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

from rampart.config import ExportBudgetConfig

__all__ = ["ExportBudgets"]

_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'b', 't')
local b = tonumber(state[1]) or burst
b = math.min(burst, b + math.max(0, now - (tonumber(state[2]) or now)) * rate)
local need = math.min(size, burst)
local wait = 0
if b < need then wait = (need - b) / rate else b = b - size end
redis.call('HSET', KEYS[1], 'b', tostring(b), 't', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class ExportBudgets:
    def __init__(self, client: aioredis.Redis, prefix: str, sink: str,
                 budgets: Mapping[str, ExportBudgetConfig]) -> None:
        self._script = client.register_script(_SCRIPT)
        self._prefix = f"{prefix}:budget:{sink}:"
        self._budgets = budgets

    def limited(self, tenant: str) -> bool:
        return tenant in self._budgets

    async def take(self, tenant: str, size_bytes: int) -> float:
        """0 if the tenant may export ``size_bytes`` now (and they are taken), else seconds to wait."""
        budget = self._budgets.get(tenant)
        if budget is None:
            return 0.0
        rate = budget.bytes_per_window / budget.window_s
        wait = await self._script(keys=[self._prefix + tenant], args=[rate, budget.bytes_per_window, size_bytes])
        return float(wait)
