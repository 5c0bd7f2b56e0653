"""The lineage index shared through Redis (processors/forgery/shared_lineage.py), against the real local
Redis: what one worker writes another finds, within the buckets and caps, sampled alike everywhere;
a Redis that is down or silent costs at most its timeout and leaves children undecided, never orphans."""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import pytest
import redis

from processors.forgery.lineage import Calls, LineageTracker
from processors.forgery.processor import lineage_shared
from processors.forgery.shared_lineage import Answer, Exchange, InMemoryParentIds, RedisParentIds, SharedIndex
from processors.forgery.state import stage_client
from rampart.config import ConfigError, ForgeryConfig, ForgeryStateConfig, RampartConfig, RedisConfig, load_config

WAIT_S = 10.0


class Events:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, outcome: str, n: int) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + n


@pytest.fixture
def prefix(redis_key_prefix: str) -> str:
    return redis_key_prefix


def index(store: RedisParentIds | InMemoryParentIds, events: Events, *, sample_every: int = 1,
          max_ids: int = 1000, clock: float = 0.0) -> SharedIndex:
    return SharedIndex(store, wait_s=WAIT_S, max_lag_s=60.0, sample_every=sample_every, max_ids=max_ids,
                       retry_after_s=10.0, report=events, clock=lambda: clock)


def ids(n: int) -> list[bytes]:
    return [os.urandom(8) for _ in range(n)]


def found(answer: Answer | None) -> list[bool]:
    assert answer is not None
    return answer.found


def tracker(shared: SharedIndex, events: Events) -> LineageTracker:
    return LineageTracker(wait_s=WAIT_S, half_life_s=20.0, sample_every=1, max_ids=1000, max_sources=100,
                          shared=shared, report=events)


def test_ids_one_worker_writes_are_found_by_another_within_the_buckets(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    events = Events()
    a, b = index(RedisParentIds(client, prefix), events), index(RedisParentIds(client, prefix), events)
    written, other = ids(5), ids(3)
    assert found(a.exchange(Exchange("acme", a.bucket(100.0), written, {"frontend": 100.0}, []))) == []
    lo, hi = b.span(105.0)
    answer = b.exchange(Exchange("acme", b.bucket(105.0), [], {"cart": 105.0}, [(lo, hi, written[:2] + other)]))
    assert found(answer) == [True, True, False, False, False]
    # Another tenant, or buckets too far away, do not see them.
    assert found(b.exchange(Exchange("other", 10, [], {}, [(lo, hi, written)]))) == [False] * 5
    far = b.span(200.0)
    assert found(b.exchange(Exchange("acme", 20, [], {}, [(*far, written)]))) == [False] * 5
    # Watermarks: the latest envelope time screened of each service, whoever wrote it.
    assert b.watermarks["acme"] == {"frontend": 100.0, "cart": 105.0}
    a.exchange(Exchange("acme", 10, [], {"cart": 104.0}, []))
    assert a.watermarks["acme"]["cart"] == 105.0
    keys = list(client.scan_iter(f"{prefix}*"))
    assert keys and all(0 < client.pttl(k) <= (4 * WAIT_S + 120) * 1000 for k in keys)
    assert events.counts == {"ok": 5}


def test_a_full_bucket_takes_no_more_ids(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    events = Events()
    shared = index(RedisParentIds(client, prefix), events, max_ids=4000)   # 1,000 ids per bucket
    first = ids(900)
    shared.exchange(Exchange("acme", 7, first, {}, []))
    shared.exchange(Exchange("acme", 7, first[:50] + ids(300), {}, []))   # 50 known, 100 fit, 200 do not
    assert client.scard(f"{prefix}acme:i:7") == 1000
    assert events.counts["capped"] == 200


def test_every_worker_samples_the_same_ids(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    events = Events()
    a = index(RedisParentIds(client, prefix), events, sample_every=4)
    b = index(RedisParentIds(redis.Redis.from_url(redis_url), prefix), events, sample_every=4)
    population = ids(4000)
    kept = a.keep(population)
    assert kept is not None and kept == b.keep(population)
    assert 800 < len(kept) < 1200
    assert a.keep([b"short"]) == []   # not a span id: neither written nor looked up


def test_an_unreachable_redis_costs_its_timeout_and_then_nothing(redis_url: str) -> None:
    # A port that accepts connections and never answers: the worst case, a Redis that hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        config = RampartConfig(redis=RedisConfig(url=f"redis://127.0.0.1:{port}/0"),
                               forgery=ForgeryConfig(state=ForgeryStateConfig(timeout_s=0.2)))
        client = stage_client(config)   # the client the stage builds: its timeout, no retries
        events = Events()
        now = [0.0]
        shared = SharedIndex(RedisParentIds(client, "x:"), wait_s=WAIT_S, max_lag_s=60.0, sample_every=1,
                             max_ids=1000, retry_after_s=10.0, report=events, clock=lambda: now[0])
        started = time.monotonic()
        assert shared.exchange(Exchange("acme", 1, ids(3), {"cart": 10.0}, [(0, 1, ids(2))])) is None
        assert time.monotonic() - started < 0.5
        started = time.monotonic()
        assert shared.exchange(Exchange("acme", 1, ids(3), {}, [])) is None   # left alone: no wait at all
        assert time.monotonic() - started < 0.01
        assert events.counts == {"failed": 1, "skipped": 1}
    finally:
        listener.close()


def test_children_are_undecided_not_orphans_while_the_index_cannot_be_asked() -> None:
    store, events, wall = InMemoryParentIds(), Events(), [0.0]
    shared = SharedIndex(store, wait_s=WAIT_S, max_lag_s=60.0, sample_every=1, max_ids=1000, retry_after_s=10.0,
                         report=events, clock=lambda: wall[0])
    lineage = tracker(shared, events)
    source = lineage.source("acme", "k0", "cart", 0.0)
    for t in range(0, 60, 5):
        wall[0] = float(t)
        store.down = t == 10
        lineage.begin("acme", ["cart"], [], [b"p%07d" % t], float(t))
        lineage.check("acme", "cart", source, [b"p%07d" % t], {0: 3}, float(t))
    assert events.counts["failed"] == 1 and events.counts["skipped"] == 1   # at 10; left alone at 15
    store.down = False
    lineage.begin("acme", ["cart"], [], [], 70.0)
    lineage.begin("acme", ["cart"], [], [], 71.0)
    # Children waiting during the outage, and those up to 3 x wait after it, are undecided: their
    # parents may have been among the writes that were lost. The three after that are orphans.
    assert events.counts["undecided"] == 9
    orphaned, total = source.orphan_share()
    assert orphaned == total and 2.0 < total <= 3.0   # three orphans, decayed a little since resolved


def test_a_child_waits_for_a_lagging_caller_and_finds_its_parent() -> None:
    store, events = InMemoryParentIds(), Events()
    callee_worker = tracker(index(store, events), events)
    caller_worker = tracker(index(store, events), events)
    source = callee_worker.source("acme", "k0", "cart", 0.0)
    caller_worker.begin("acme", ["frontend"], [], [], 0.0)          # the caller's worker has started ...
    callee_worker.begin("acme", ["cart"], [], [b"parent01"], 5.0)
    callee_worker.check("acme", "cart", source, [b"parent01"], {0: 1}, 5.0)
    callee_worker.begin("acme", ["cart"], [], [], 30.0)   # due at 15 s: frontend is screened up to 0 s only
    assert source.orphan_share() == (0.0, 0.0)
    caller_worker.begin("acme", ["frontend"], [b"parent01"], [], 6.0)   # ... and reaches the parent late
    caller_worker.begin("acme", ["frontend"], [], [], 16.0)
    callee_worker.begin("acme", ["cart"], [], [], 31.0)
    assert source.orphan_share() == (0.0, 0.0)   # the watermarks it knows are one exchange old
    callee_worker.begin("acme", ["cart"], [], [], 32.0)
    orphaned, total = source.orphan_share()
    assert orphaned == 0.0 and total > 0.99


def test_call_counts_from_every_worker_reach_the_callee_s_worker_one_bucket_late(redis_url: str,
                                                                                 prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    events = Events()
    callee_worker = tracker(index(RedisParentIds(client, prefix), events), events)
    caller_worker = tracker(index(RedisParentIds(client, prefix), events), events)
    source = callee_worker.source("acme", "k0", "cart", 0.0)
    for t in range(0, 40):
        caller_worker.begin("acme", ["frontend"], [], [], float(t), Calls.of("k0", {"cart": 10}, {}))
        callee_worker.begin("acme", ["cart"], [], [], t + 0.5, Calls.of("k0", {}, {"cart": 12}))
    # Buckets 0 to 2 (10 s each) are finished and read; bucket 3 is still being written.
    assert source.calls_at == 30.0
    ratio = callee_worker.count_calls(source, 1000, 0, 40.0)   # counts given here are ignored when shared
    assert ratio is not None and math.isclose(ratio, 1.2)
    assert caller_worker.source("acme", "k0", "cart", 0.0).server_calls == 0.0   # not its service


def test_the_index_is_shared_under_tenant_service_keying_unless_configured_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "rampart.yaml"
    path.write_text("stages:\n  keying: tenant_service\n")
    assert lineage_shared(load_config(str(path), env={}))
    assert not lineage_shared(load_config(str(path), env={"RAMPART__FORGERY__LINEAGE_INDEX": "memory"}))
    path.write_text("stages:\n  keying: trace_id\nforgery:\n  lineage_max_lag_s: 30\n")
    assert not lineage_shared(load_config(str(path), env={}))
    assert lineage_shared(load_config(str(path), env={"RAMPART__FORGERY__LINEAGE_INDEX": "redis"}))
    with pytest.raises(ConfigError, match="lineage_index"):
        load_config(str(path), env={"RAMPART__FORGERY__LINEAGE_INDEX": "shared"})
    with pytest.raises(ConfigError, match="lineage_max_lag_s"):
        load_config(str(path), env={"RAMPART__FORGERY__LINEAGE_MAX_LAG_S": "0"})
