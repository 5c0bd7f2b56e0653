"""The lineage index shared by every worker through Redis, for ``stages.keying: tenant_service``.

With that keying a worker owns whole (tenant, service) groups, so the CLIENT span that called a SERVER
span is usually screened by another worker. Every worker therefore writes the ids of the spans that
can be remote parents (CLIENT, PRODUCER) into a per-tenant set per time bucket, and looks a child's
parent id up in the buckets around its arrival: once on arrival and once ``wait_s`` later. All of a
batch's work (its writes, its arrival look-ups and the look-ups of the tenant's children due now) is
one Lua script call, one round trip, returning one string of flags (redis-py parses each element of an
array reply in Python; see processors/dedup.py).

Buckets are envelope times (``received_at``, set by the gateway), so workers that lag behind one
another still write and look up the same buckets. A child is only resolved once every service of its
tenant has been screened past the child's due time, less half the wait (*watermarks*: per tenant, the
latest envelope time screened of each service, written by whichever worker owns it); a service not heard of
for ``max_lag_s`` of envelope time is taken as gone quiet, not as lagging, and a child still
undecided ``max_lag_s`` after its due time is dropped undecided. Undecided is never "orphan".

Caller/callee counts travel the same way: each batch adds its client spans per (principal, callee) and
its server spans with a parent per (principal, service) to a hash per bucket; the callee's worker reads
a bucket once every service has been screened past its end (strictly: it is read once), and adds both
sides together, so their ratio is not skewed by the delay.

When Redis fails or is slow (``timeout_s``), the exchange is counted and skipped, Redis is left alone
for ``retry_after_s``, and every child whose parent might have been written meanwhile is dropped
undecided (the parent could be among the writes that were lost).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

import redis
from redis.exceptions import RedisError

__all__ = ["ID_BYTES", "Answer", "Exchange", "InMemoryParentIds", "LineageUnavailable", "ParentIds", "RedisParentIds",
           "SharedIndex"]

log = logging.getLogger(__name__)

ID_BYTES = 8   # OTLP span ids; ids of another length are neither written nor looked up
_MAX_READS = 4   # buckets of call counts read at once (a worker that fell further behind skips the rest)

# ARGV: ids key prefix, watermark key, ttl ms, bucket to write, cap per bucket, ids to write (8 bytes each),
# watermarks ("service\0seconds\n" ...), call counts to add to the bucket ("field\tn\n" ...), the call
# counts' key prefix, buckets of call counts to read ("b1,b2"), then query groups: first bucket, last
# bucket, ids (8 bytes each).
# Returns {flags: "1" for each queried id found in any of its buckets, "0" otherwise, in query order;
# ids not written because the bucket was full; the watermark hash, flattened; each bucket read, flattened}.
_SCRIPT = """
local prefix, wm_key, ttl, bucket, cap, ids, marks = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4],
  tonumber(ARGV[5]), ARGV[6], ARGV[7]
local capped = 0
if #ids > 0 then
  local key = prefix .. bucket
  local room = cap - redis.call('SCARD', key)
  for pos = 1, #ids, 8 do
    if room <= 0 then capped = capped + 1 else
      room = room - redis.call('SADD', key, string.sub(ids, pos, pos + 7))
    end
  end
  redis.call('PEXPIRE', key, ttl)
end
if #marks > 0 then
  for service, at in string.gmatch(marks, '([^%z]*)%z([^\\n]*)\\n') do
    local old = tonumber(redis.call('HGET', wm_key, service) or '-1')
    if tonumber(at) > old then redis.call('HSET', wm_key, service, at) end
  end
  redis.call('PEXPIRE', wm_key, ttl)
end
local calls, calls_prefix = ARGV[8], ARGV[9]
if #calls > 0 then
  local key = calls_prefix .. bucket
  for name, n in string.gmatch(calls, '([^\\t]*)\\t([^\\n]*)\\n') do
    redis.call('HINCRBY', key, name, n)
  end
  redis.call('PEXPIRE', key, ttl)
end
local read = {}
for b in string.gmatch(ARGV[10], '[^,]+') do
  read[#read + 1] = redis.call('HGETALL', calls_prefix .. b)
end
local out = {}
local i = 11
while i + 2 <= #ARGV do
  local lo, hi, q = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), ARGV[i + 2]
  for pos = 1, #q, 8 do
    local id, found = string.sub(q, pos, pos + 7), '0'
    for b = lo, hi do
      if redis.call('SISMEMBER', prefix .. b, id) == 1 then found = '1' break end
    end
    out[#out + 1] = found
  end
  i = i + 3
end
return {table.concat(out), capped, redis.call('HGETALL', wm_key), read}
"""


class LineageUnavailable(Exception):
    """The shared index did not answer (in time)."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """What one batch sends: ids to write into ``bucket``, its services' watermarks, look-ups (first
    bucket, last bucket, ids), call counts to add to ``bucket`` (``Calls``), and buckets of call counts
    to read."""

    tenant: str
    bucket: int
    writes: list[bytes]
    watermarks: dict[str, float]
    queries: list[tuple[int, int, list[bytes]]]
    calls: dict[tuple[str, str, str], int] = field(default_factory=dict)
    reads: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Answer:
    found: list[bool]                                  # a flag per queried id, in query order
    capped: int                                        # ids not written: the bucket was full
    watermarks: dict[str, float]                       # the tenant's, after this exchange
    calls: list[dict[tuple[str, str, str], int]]       # each bucket read: ("c"|"s", principal, service) -> n


class ParentIds(ABC):
    """Where the shared ids live: Redis, or a dict in tests."""

    @abstractmethod
    def exchange(self, request: Exchange, ttl_ms: int, cap: int) -> Answer:
        """Write, look up, read (raises LineageUnavailable)."""

    @abstractmethod
    def salt(self) -> bytes:
        """A random key every worker shares, for sampling ids alike (raises LineageUnavailable)."""


class RedisParentIds(ParentIds):
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self._script = client.register_script(_SCRIPT)
        self._prefix = prefix   # "<redis.key_prefix>:<forgery.state.key_prefix>:lineage:v1:"

    def exchange(self, request: Exchange, ttl_ms: int, cap: int) -> Answer:
        base = f"{self._prefix}{quote(request.tenant, safe='')}:"
        marks = b"".join(_q(s) + b"\0" + repr(t).encode() + b"\n" for s, t in request.watermarks.items())
        calls = b"".join(b"\0".join(_q(part) for part in key) + b"\t%d\n" % n for key, n in request.calls.items())
        args: list[bytes | str | int] = [base + "i:", base + "w", ttl_ms, request.bucket, cap,
                                         b"".join(request.writes), marks, calls, base + "c:",
                                         ",".join(map(str, request.reads))]
        for lo, hi, ids in request.queries:
            args += [lo, hi, b"".join(ids)]
        try:
            flags, capped, flat, reads = self._script(keys=[], args=args)
        except (RedisError, OSError) as exc:
            raise LineageUnavailable(type(exc).__name__) from None
        watermarks = {}
        for name, value in _pairs(flat):
            try:
                watermarks[unquote(name.decode())] = float(value)
            except (UnicodeDecodeError, ValueError):
                continue
        read = []
        for bucket in reads:
            counts: dict[tuple[str, str, str], int] = {}
            for name, value in _pairs(bucket):
                parts = name.split(b"\0")
                if len(parts) == 3:
                    counts[(parts[0].decode(), unquote(parts[1].decode()), unquote(parts[2].decode()))] = int(value)
            read.append(counts)
        return Answer([f == 0x31 for f in flags], int(capped), watermarks, read)

    def salt(self) -> bytes:
        key = f"{self._prefix}salt"
        try:
            self._client.set(key, os.urandom(16), nx=True)
            value = self._client.get(key)
        except (RedisError, OSError) as exc:
            raise LineageUnavailable(type(exc).__name__) from None
        if not isinstance(value, bytes):
            raise LineageUnavailable("no salt")
        return value


def _q(text: str) -> bytes:
    return quote(text, safe="").encode()


def _pairs(flat: list[bytes]) -> list[tuple[bytes, bytes]]:
    return list(zip(flat[::2], flat[1::2], strict=False))


class InMemoryParentIds(ParentIds):
    """A test double two processors can share, with the same contract (no expiry; ``down`` makes every
    call fail as an unreachable Redis does)."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, int], set[bytes]] = {}
        self.watermarks: dict[str, dict[str, float]] = {}
        self.calls: dict[tuple[str, int], dict[tuple[str, str, str], int]] = {}
        self.down = False

    def exchange(self, request: Exchange, ttl_ms: int, cap: int) -> Answer:
        if self.down:
            raise LineageUnavailable("down")
        bucket = self.ids.setdefault((request.tenant, request.bucket), set())
        capped = 0
        for i in request.writes:
            if len(bucket) >= cap:
                capped += 1
            else:
                bucket.add(i)
        marks = self.watermarks.setdefault(request.tenant, {})
        for service, t in request.watermarks.items():
            marks[service] = max(t, marks.get(service, -1.0))
        flags = [any(i in self.ids.get((request.tenant, b), ()) for b in range(lo, hi + 1))
                 for lo, hi, ids in request.queries for i in ids]
        bucket_calls = self.calls.setdefault((request.tenant, request.bucket), {})
        for key, n in request.calls.items():
            bucket_calls[key] = bucket_calls.get(key, 0) + n
        return Answer(flags, capped, dict(marks), [dict(self.calls.get((request.tenant, b), {}))
                                                   for b in request.reads])

    def salt(self) -> bytes:
        if self.down:
            raise LineageUnavailable("down")
        return b"0123456789abcdef"


Report = Callable[[str, int], None]   # (outcome, count)


class SharedIndex:
    """One worker's side of the shared index: buckets, watermarks, sampling, and what to do when
    Redis does not answer. ``wait_s`` is the orphan wait; parents are looked for from ``2 x wait_s``
    before a child to ``wait_s`` after it (the in-memory index's window)."""

    def __init__(self, store: ParentIds, *, wait_s: float, max_lag_s: float, sample_every: int, max_ids: int,
                 retry_after_s: float, report: Report, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self.wait_s = wait_s
        self.max_lag_s = max_lag_s
        self._bucket_s = wait_s
        self._sample_every = sample_every
        self._salt: bytes | None = None
        # Each bucket holds ids written over wait_s; four buckets are looked at for a child, and a
        # bucket lives while a lagging worker may still look at it.
        self._cap = max(max_ids // 4, 1)
        self._ttl_ms = int((4 * wait_s + 2 * max_lag_s) * 1000)
        self._retry_after_s = retry_after_s
        self._report = report
        self._clock = clock
        self._down_until = -1e18
        self.watermarks: dict[str, dict[str, float]] = {}   # tenant -> service -> envelope time
        self._read_upto: dict[str, int] = {}   # tenant -> last bucket of call counts read

    def bucket(self, t: float) -> int:
        return int(t // self._bucket_s)

    def bucket_end(self, bucket: int) -> float:
        return (bucket + 1) * self._bucket_s

    def span(self, arrival_s: float) -> tuple[int, int]:
        """The buckets a parent of a child arriving at ``arrival_s`` may be in."""
        return self.bucket(arrival_s - 2 * self.wait_s), self.bucket(arrival_s + self.wait_s)

    def keep(self, ids: list[bytes]) -> list[bytes] | None:
        """The ids of the sample (a keyed hash every worker shares), None when the key is unknown yet."""
        ids = [i for i in ids if len(i) == ID_BYTES]
        every = self._sample_every
        if every <= 1:
            return ids
        salt = self._salt
        if salt is None:
            if not self.available():
                return None
            try:
                salt = self._salt = self._store.salt()
            except LineageUnavailable as exc:
                self._failed(exc)
                return None
        return [i for i in ids if int.from_bytes(hashlib.blake2b(i, key=salt, digest_size=8).digest()) % every == 0]

    def available(self) -> bool:
        return self._clock() >= self._down_until

    def resolvable(self, tenant: str, due_s: float, slack: bool = True) -> bool:
        """Every service of the tenant that was screened within ``max_lag_s`` before ``due_s`` has been
        screened up to ``due_s`` less half the wait: whatever parent exists was written by now.

        The slack: a service's latest batch is seconds old when the watermarks are read (they come back
        with the previous exchange, and each source flushes every few seconds at its own phase: about
        3 s at the median, under 5 s at the 99th percentile, in the evaluation), so waiting for all of
        them to pass ``due_s`` exactly resolves most children one batch late. A parent normally comes
        within one SDK flush interval (5 s) of its child; it is missed only if it came in the second
        half of the wait *and* its writer lagged. Call counts
        are read without it (``slack`` false): a bucket is read once."""
        marks = self.watermarks.get(tenant)
        if not marks:
            return True
        quiet, settled = due_s - self.max_lag_s, due_s - (self.wait_s / 2 if slack else 0.0)
        return all(t >= settled or t < quiet for t in marks.values())

    def reads_due(self, tenant: str, now_s: float) -> list[int]:
        """The buckets of call counts every writer of the tenant has finished and this worker has not
        read yet (at most the last few: older ones may have expired)."""
        newest = self.bucket(now_s)
        cursor = self._read_upto.get(tenant)
        if cursor is None:
            cursor = self._read_upto[tenant] = newest - 1   # counts from now on, not the past
        due = []
        for b in range(max(cursor + 1, newest - _MAX_READS), newest):
            if not self.resolvable(tenant, (b + 1) * self._bucket_s, slack=False):
                break
            due.append(b)
        return due

    def exchange(self, request: Exchange) -> Answer | None:
        """Send one batch's writes, look-ups and reads; None when Redis did not answer (or is being left
        alone)."""
        if not self.available():
            self._report("skipped", 1)
            return None
        try:
            answer = self._store.exchange(request, self._ttl_ms, self._cap)
        except LineageUnavailable as exc:
            self._failed(exc)
            return None
        self._report("ok", 1)
        if answer.capped:
            self._report("capped", answer.capped)
        self.watermarks[request.tenant] = answer.watermarks
        if request.reads:
            self._read_upto[request.tenant] = request.reads[-1]
        return answer

    def _failed(self, exc: Exception) -> None:
        self._down_until = self._clock() + self._retry_after_s
        self._report("failed", 1)
        log.warning("forgery lineage: Redis failed (%s); lineage undecided for %.0f s", exc, self._retry_after_s)
