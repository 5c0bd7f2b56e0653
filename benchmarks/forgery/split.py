"""Several forgery processors as the workers of ``stages.keying: tenant_service``: each batch goes to
the processor that owns its service, and the processors share the lineage index in Redis (or not,
to show what is lost). Stands in for one processor in benchmarks/forgery/run.py's Simulation."""

from __future__ import annotations

import uuid
import zlib

import redis

from benchmarks.forgery.traffic import SERVICES
from processors.base import Batch, Result
from processors.forgery import ForgeryProcessor, Verdict
from processors.forgery.shared_lineage import RedisParentIds
from processors.otlp import resources
from rampart.config import ForgeryConfig

__all__ = ["REDIS_URL", "SplitWorkers"]

REDIS_URL = "redis://127.0.0.1:6379/0"


class SplitWorkers:
    """One processor per service of the traffic's graph; a service outside it (a new one) goes to the
    processor its name hashes to, as a Kafka partitioner would put it on some worker. With ``shared``,
    the processors share a lineage index in Redis under a prefix of their own (deleted by ``close``)."""

    def __init__(self, config: ForgeryConfig, *, shared: bool, redis_url: str = REDIS_URL) -> None:
        self._client = redis.Redis.from_url(redis_url) if shared else None
        self.prefix = f"bench:lineage:{uuid.uuid4().hex[:8]}:"
        self.processors = {s: ForgeryProcessor(config, lineage_index=RedisParentIds(self._client, self.prefix)
                                               if self._client is not None else None) for s in SERVICES}
        self._names = sorted(self.processors)

    def owner(self, batch: Batch) -> ForgeryProcessor:
        service = ""
        for resource in resources(batch.request, batch.signal):
            for kv in resource.resource.attributes:
                if kv.key == "service.name":
                    service = kv.value.string_value
                    break
            break
        found = self.processors.get(service)
        if found is None:
            found = self.processors[self._names[zlib.crc32(service.encode()) % len(self._names)]]
        return found

    def screen(self, batch: Batch) -> Verdict:
        return self.owner(batch).screen(batch)

    def screen_metrics(self, batch: Batch) -> Verdict:
        return self.owner(batch).screen_metrics(batch)

    def act(self, batch: Batch, verdict: Verdict) -> Result:
        return self.owner(batch).act(batch, verdict)

    def memory_entries(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self.processors.values():
            for kind, n in p.memory_entries().items():
                total[kind] = total.get(kind, 0) + n
        return total

    def redis_keys(self) -> dict[str, int]:
        """Keys and bytes the shared index holds in Redis now (MEMORY USAGE of each key)."""
        if self._client is None:
            return {"keys": 0, "bytes": 0}
        keys = list(self._client.scan_iter(f"{self.prefix}*"))
        return {"keys": len(keys), "bytes": sum(int(self._client.memory_usage(k) or 0) for k in keys)}

    def close(self) -> None:
        if self._client is not None:
            for key in self._client.scan_iter(f"{self.prefix}*"):
                self._client.delete(key)
