"""Which batches a sink's backend has already accepted, shared by every replica of the sink.

Sinks commit a record only after the backend accepted it, so a sink that dies between the two (or
loses its partitions in a rebalance) hands the record to another replica, which would export it
again. Marking each accepted batch id in Redis, and skipping batches already marked, closes that
window down to the moment between the backend's answer and the mark.

Redis being unreachable never stops exports: the batch is exported (a possible duplicate, never a
loss) and the failure is counted.
"""

from __future__ import annotations

import redis.asyncio as aioredis

__all__ = ["DeliveredMarks"]


class DeliveredMarks:
    def __init__(self, client: aioredis.Redis, key_prefix: str, sink: str, ttl_s: float) -> None:
        self._client = client
        self._prefix = f"{key_prefix}:delivered:{sink}:"
        self._ttl_ms = max(1, int(ttl_s * 1000))

    async def already_delivered(self, batch_id: str) -> bool:
        """True if the backend accepted this batch before. Raises RedisError/OSError when Redis is away."""
        return bool(await self._client.exists(self._prefix + batch_id))

    async def mark(self, batch_id: str) -> None:
        await self._client.set(self._prefix + batch_id, b"1", px=self._ttl_ms)
