"""Forgery baselines that survive a worker restart and a rebalance: snapshots in Redis.

What is kept, and where (``<redis.key_prefix>:<forgery.state.key_prefix>:v1:...``):

- ``t:<tenant>``: when the tenant was first seen (its learning period) and its principals' timing;
- ``s:<tenant>/<service>``: every (service, span name) group with its sources, the service's span
  names, the principals known to report it, its attribute keys' cardinality references, its
  lineage (each source's orphan and caller/callee counts, the peers' orphaned batches) and its metric
  groups (each source's latest reading, usual residuals and frozen reference).

The unit is the (tenant, service) because that is how ``stages.keying: tenant_service`` spreads traffic
over partitions: after a rebalance, the worker that first sees a (tenant, service) loads its snapshot
before screening that batch. Each (tenant, service) that received data is saved again at most every
``snapshot_interval_s``, one per batch so a batch never pays for many: the batch's path copies the
state (``to_dict``), a background thread encodes and writes the copy. Loading is one GET on the
batch's path, bounded by ``timeout_s``. When Redis fails, the stage
carries on from memory and leaves Redis alone for ``retry_after_s``; a load that failed is tried again
afterwards and merged into what was learned meanwhile.

Encoding: a 4-byte version tag, then zlib-compressed JSON (compact, and readable with two commands
when someone needs to look). Snapshots over ``max_snapshot_bytes`` are not saved.

Not kept: replay digests, HyperLogLog registers and Bloom filters. They hold ``hash()`` values, which
Python keys per process, so they mean nothing in another process (docs/forgery.md).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from processors.forgery.baselines import BaselineStore
from processors.forgery.cardinality import CardinalityTracker
from processors.forgery.lineage import LineageTracker
from processors.forgery.metric_peers import MetricScreen
from rampart.config import ForgeryStateConfig, RampartConfig
from rampart.stores import redis_client

__all__ = ["VERSION", "InMemorySnapshots", "RedisSnapshots", "SnapshotStore", "StateKeeper", "decode", "encode",
           "stage_client"]

log = logging.getLogger(__name__)

VERSION = b"RFS1"
# Saves waiting for the background thread; past this a save is dropped (counted): its key stays dirty
# and is saved on a later round.
_MAX_PENDING_SAVES = 64

Report = Callable[[str, str], None]   # (operation "save" | "load", outcome)


def stage_client(config: RampartConfig) -> redis.Redis:
    """The forgery stage's own Redis client: every call waits at most ``forgery.state.timeout_s`` and is
    not retried (redis-py 8 retries a timed-out call ten times by default, which would hold a batch up
    for seconds); the stage retries by itself, after ``retry_after_s``."""
    client = redis_client(replace(config, redis=replace(config.redis, socket_timeout_s=config.forgery.state.timeout_s)))
    client.set_retry(Retry(NoBackoff(), 0))
    return client


class SnapshotUnavailable(Exception):
    """The snapshot store did not answer (in time)."""


class SnapshotStore(ABC):
    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The snapshot under ``key``, None when there is none. Raises SnapshotUnavailable."""

    @abstractmethod
    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store ``value`` under ``key`` for ``ttl_s``. Raises SnapshotUnavailable."""


class RedisSnapshots(SnapshotStore):
    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def get(self, key: str) -> bytes | None:
        try:
            value = self._client.get(key)
        except (RedisError, OSError) as exc:
            raise SnapshotUnavailable(type(exc).__name__) from None
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            self._client.set(key, value, px=int(ttl_s * 1000))
        except (RedisError, OSError) as exc:
            raise SnapshotUnavailable(type(exc).__name__) from None


class InMemorySnapshots(SnapshotStore):
    """A test double with the same contract; ``down`` makes every call fail as an unreachable Redis does."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.down = False

    def get(self, key: str) -> bytes | None:
        if self.down:
            raise SnapshotUnavailable("down")
        return self.values.get(key)

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if self.down:
            raise SnapshotUnavailable("down")
        self.values[key] = value


def encode(data: dict[str, Any]) -> bytes:
    return VERSION + zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 6)


def decode(value: bytes) -> dict[str, Any]:
    """A snapshot's content; ValueError (TypeError) when it is of another version or damaged."""
    if not value.startswith(VERSION):
        raise ValueError(f"not a {VERSION.decode()} snapshot")
    try:
        data = json.loads(zlib.decompress(value[len(VERSION):]))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"damaged snapshot: {exc}") from None
    if not isinstance(data, dict):
        raise TypeError("damaged snapshot: not an object")
    return data


class StateKeeper:
    """Loads a tenant's and a service's snapshot when the processor first sees them, and saves what
    changed, at most once per ``snapshot_interval_s`` per key, off the batch's path."""

    def __init__(self, config: ForgeryStateConfig, store: SnapshotStore, redis_prefix: str,
                 baselines: BaselineStore, cardinality: CardinalityTracker, report: Report,
                 clock: Callable[[], float] = time.monotonic, background: bool = True,
                 max_units: int = 20_000, lineage: LineageTracker | None = None,
                 metrics: MetricScreen | None = None) -> None:
        self._config = config
        self._store = store
        self._prefix = f"{redis_prefix}:{config.key_prefix}:v1:"
        self._baselines = baselines
        self._cardinality = cardinality
        self._lineage = lineage
        self._metrics = metrics
        self._report = report
        self._clock = clock
        # Units are (tenant, None) or (tenant, service). Each table holds at most max_units, least
        # recently used out, so invented service names cannot grow them: a unit forgotten here is
        # loaded again when it comes back, which merges harmlessly into what is held.
        self._max_units = max_units
        self._loaded: OrderedDict[tuple[str, str | None], None] = OrderedDict()
        self._retry: OrderedDict[tuple[str, str | None], float] = OrderedDict()  # failed loads: try again after
        self._dirty: OrderedDict[tuple[str, str | None], None] = OrderedDict()   # oldest change first
        self._saved_at: dict[tuple[str, str | None], float] = {}
        self._down_until = -1e18
        self._pending: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(_MAX_PENDING_SAVES)
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._save_loop, name="forgery-snapshots", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ on the batch's path

    def prepare(self, tenant: str, services: Iterable[str], now_s: float) -> None:
        """Make sure the snapshots of ``tenant`` and each of ``services`` were loaded (or tried) before
        the batch is screened. ``now_s`` is the batch's envelope time."""
        for unit in ((tenant, None), *((tenant, s) for s in services)):
            if unit in self._loaded:
                self._loaded.move_to_end(unit)
            else:
                self._load(unit, now_s)

    def touched(self, tenant: str, services: Iterable[str]) -> None:
        """The batch changed the state of these units: save them on a later round."""
        self._dirty[(tenant, None)] = None
        for service in services:
            self._dirty[(tenant, service)] = None
        while len(self._dirty) > self._max_units:
            self._dirty.popitem(last=False)

    def save_due(self) -> None:
        """Snapshot the unit changed longest ago if its interval has passed (one per call: every batch
        pays for at most one snapshot). The write itself happens on the background thread."""
        if not self._dirty or self._clock() < self._down_until:
            return
        now = self._clock()
        for unit in self._dirty:
            # A unit whose snapshot could not be loaded yet is not saved: that would overwrite what an
            # earlier owner learned with what this worker learned since its start.
            if unit in self._loaded and now - self._saved_at.get(unit, -1e18) >= self._config.snapshot_interval_s:
                break
        else:
            return
        self._save(unit, now, wait_s=0.0)

    def close(self, timeout_s: float = 5.0) -> None:
        """Save every changed unit now (a clean shutdown or a handover keeps the latest state), wait up to
        ``timeout_s`` for the writes, then stop the thread."""
        deadline = self._clock() + timeout_s
        for unit in [u for u in self._dirty if u in self._loaded]:
            self._save(unit, self._clock(), wait_s=max(0.0, deadline - self._clock()))
        if self._thread is not None:
            try:
                self._pending.put(None, timeout=max(0.01, deadline - self._clock()))
            except queue.Full:
                return
            self._thread.join(max(0.01, deadline - self._clock()))

    def _save(self, unit: tuple[str, str | None], now: float, wait_s: float) -> None:
        del self._dirty[unit]
        self._saved_at[unit] = now
        # Exporting copies the state into plain lists and dicts (it must run here, between batches, while
        # nothing changes it); encoding and writing the copy happen on the background thread.
        data = self._export(unit)
        if data is None:
            return
        if self._thread is None:
            self._write(self._key(unit), data)
            return
        try:
            self._pending.put((self._key(unit), data), timeout=wait_s) if wait_s else \
                self._pending.put_nowait((self._key(unit), data))
        except queue.Full:
            self._dirty[unit] = None   # try again on a later round
            self._report("save", "dropped")

    # ------------------------------------------------------------------ internals

    def _key(self, unit: tuple[str, str | None]) -> str:
        tenant, service = unit
        if service is None:
            return f"{self._prefix}t:{quote(tenant, safe='')}"
        return f"{self._prefix}s:{quote(tenant, safe='')}/{quote(service, safe='')}"

    def _load(self, unit: tuple[str, str | None], now_s: float) -> None:
        wall = self._clock()
        if wall < self._down_until or wall < self._retry.get(unit, -1e18):
            return
        try:
            value = self._store.get(self._key(unit))
        except SnapshotUnavailable as exc:
            self._failed("load", exc)
            self._retry[unit] = self._down_until
            if len(self._retry) > self._max_units:
                self._retry.popitem(last=False)
            return
        self._loaded[unit] = None
        self._retry.pop(unit, None)
        if len(self._loaded) > self._max_units:
            forgotten, _ = self._loaded.popitem(last=False)
            self._saved_at.pop(forgotten, None)
            self._dirty.pop(forgotten, None)
        if value is None:
            self._report("load", "missing")
            return
        try:
            self._import(unit, decode(value), now_s)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            # A damaged or foreign snapshot is ignored: learning again is safe, guessing is not.
            self._report("load", "invalid")
            log.warning("forgery snapshot %s ignored: %s", self._key(unit), exc)
            return
        self._report("load", "ok")

    def _export(self, unit: tuple[str, str | None]) -> dict[str, Any] | None:
        tenant, service = unit
        if service is None:
            return self._baselines.export_tenant(tenant)
        baselines = self._baselines.export_service(tenant, service)
        if not baselines["reporters"]:
            # No principal was ever accepted reporting it (e.g. invented names, all flagged new_service):
            # nothing worth keeping, and not saving it keeps such names from filling Redis.
            return None
        data: dict[str, Any] = {"baselines": baselines,
                                "cardinality": self._cardinality.export_service(tenant, service)}
        if self._lineage is not None:
            data["lineage"] = self._lineage.export_service(tenant, service)
        if self._metrics is not None:
            data["metrics"] = self._metrics.export_service(tenant, service)
        return data

    def _import(self, unit: tuple[str, str | None], data: dict[str, Any], now_s: float) -> None:
        tenant, service = unit
        if service is None:
            self._baselines.import_tenant(tenant, data)
            return
        self._baselines.import_service(tenant, service, data["baselines"], now_s)
        self._cardinality.import_service(tenant, service, data["cardinality"], now_s)
        if self._lineage is not None and "lineage" in data:   # snapshots saved before lineage had none
            self._lineage.import_service(tenant, service, data["lineage"])
        if self._metrics is not None and "metrics" in data:
            self._metrics.import_service(tenant, service, data["metrics"])

    def _failed(self, operation: str, exc: Exception) -> None:
        self._down_until = self._clock() + self._config.retry_after_s
        self._report(operation, "failed")
        log.warning("forgery state: Redis %s failed (%s); working from memory for %.0f s", operation, exc,
                    self._config.retry_after_s)

    def _write(self, key: str, data: dict[str, Any]) -> None:
        value = encode(data)
        if len(value) > self._config.max_snapshot_bytes:
            self._report("save", "too_large")
            log.warning("forgery snapshot %s is %d bytes, over forgery.state.max_snapshot_bytes: not saved",
                        key, len(value))
            return
        try:
            self._store.set(key, value, self._config.ttl_s)
        except SnapshotUnavailable as exc:
            self._failed("save", exc)
            return
        self._report("save", "ok")

    def _save_loop(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            self._write(*item)
