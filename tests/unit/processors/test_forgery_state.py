"""Forgery baselines in snapshots: what a restarted worker, or one that gains a service in a rebalance,
gets back, and what happens when the snapshot store is down."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from processors.base import Batch, Result
from processors.forgery import DROP_REASON, ForgeryProcessor
from processors.forgery.state import InMemorySnapshots, decode, encode
from rampart.config import ForgeryConfig, ForgeryStateConfig
from schemas.envelope import Signal
from tests.unit.processors.test_forgery import NS, PRINCIPALS, T0, latencies, request
from tests.unit.processors.test_forgery_lineage import SERVER, linked
from tests.unit.processors.test_forgery_metrics import metrics_request

CONFIG = ForgeryConfig(learning_s=60.0, state=ForgeryStateConfig(snapshot_interval_s=10.0, retry_after_s=30.0))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(store: InMemorySnapshots, clock: Clock, config: ForgeryConfig = CONFIG) -> ForgeryProcessor:
    processor = ForgeryProcessor(config, store, "test", clock=clock, background_saves=False)
    processor.register_metrics(CollectorRegistry())
    return processor


def process(processor: ForgeryProcessor, principal: str, service: str, now_s: float, rng: random.Random,
            tenant: str = "acme") -> Result:
    req = request(service, latencies(rng, 20, 20), now_s=now_s, rng=rng)
    return processor.process(Batch(signal=Signal.TRACES, request=req, batch_id=f"{principal}-{now_s}", tenant=tenant,
                                   principal=principal, received_at_ns=int(now_s * NS)))


def learn(processor: ForgeryProcessor, clock: Clock, rng: random.Random, seconds: float) -> float:
    """Four principals report cart every 5 s, k0 search too; the wall clock moves with the traffic."""
    t = T0
    while t < T0 + seconds:
        for i, principal in enumerate(PRINCIPALS):
            process(processor, principal, "cart", t + i, rng)
        process(processor, "k0", "search", t + 4, rng)
        clock.now += 5
        t += 5
    return t


def test_a_restarted_worker_keeps_its_learning_and_its_baselines() -> None:
    store, clock, rng = InMemorySnapshots(), Clock(), random.Random(1)
    first = make(store, clock)
    t = learn(first, clock, rng, 200)
    first.close()   # a clean stop saves what changed since the last round
    assert {k.split(":v1:")[1] for k in store.values} == {"t:acme", "s:acme/cart", "s:acme/search"}

    restarted = make(store, clock)
    # What was learned passes, and every source of every group is back ...
    assert process(restarted, "k0", "search", t + 1, rng).quarantine is None
    assert process(restarted, "k2", "cart", t + 2, rng).quarantine is None
    assert restarted.memory_entries()["sources"] == first.memory_entries()["sources"] == 5
    # ... past learning at once: a service k1 never reported is flagged without a new learning period.
    flagged = process(restarted, "k1", "search", t + 3, rng)
    assert flagged.quarantine is not None and flagged.quarantine.reason == DROP_REASON
    assert "new_service" in flagged.quarantine.fields["reasons"]


def test_a_worker_that_gains_a_service_loads_it_when_it_first_sees_it() -> None:
    store, clock, rng = InMemorySnapshots(), Clock(), random.Random(2)
    owner = make(store, clock)
    t = learn(owner, clock, rng, 200)
    owner.close()
    # The new owner already screens another service of the tenant; the rebalance hands it cart.
    other = make(store, clock)
    process(other, "k9", "billing", t, rng, tenant="other")
    assert process(other, "k3", "cart", t + 1, rng).quarantine is None
    assert process(other, "k3", "search", t + 2, rng).quarantine is not None   # k3 never reported search


def test_snapshots_are_saved_at_most_once_per_interval_per_unit() -> None:
    store, clock, rng = InMemorySnapshots(), Clock(), random.Random(3)
    processor = make(store, clock)
    writes: list[str] = []
    original = store.set

    def counted(key: str, value: bytes, ttl_s: float) -> None:
        writes.append(key)
        original(key, value, ttl_s)

    store.set = counted  # type: ignore[method-assign]
    for i in range(6):
        process(processor, "k0", "cart", T0 + i, rng)   # the wall clock stands still
    # One unit per batch, each once: the tenant, then the service; nothing again within the interval.
    assert sorted(k.split(":v1:")[1] for k in writes) == ["s:acme/cart", "t:acme"]
    clock.now += 10
    process(processor, "k0", "cart", T0 + 10, rng)
    assert len(writes) == 3


def test_while_the_store_is_down_the_stage_works_from_memory_and_merges_later() -> None:
    store, clock, rng = InMemorySnapshots(), Clock(), random.Random(4)
    first = make(store, clock)
    t = learn(first, clock, rng, 200)
    first.close()
    store.down = True
    second = make(store, clock)
    registry = CollectorRegistry()
    second.register_metrics(registry)
    result = process(second, "k1", "search", t, rng)
    # Nothing is known here yet: the tenant learns again, nothing is blocked or flagged.
    assert result.quarantine is None and result.counts["learning_batches"] == 1
    assert registry.get_sample_value("rampart_forgery_snapshots_total", {"operation": "load",
                                                                        "outcome": "failed"}) == 1
    process(second, "k1", "search", t + 1, rng)   # within retry_after_s: Redis is left alone
    assert registry.get_sample_value("rampart_forgery_snapshots_total", {"operation": "load",
                                                                        "outcome": "failed"}) == 1
    store.down = False
    clock.now += 30
    # Loaded now and merged: the earlier start of the tenant wins, so learning is over again.
    flagged = process(second, "k2", "search", t + 40, rng)
    assert flagged.quarantine is not None and "new_service" in flagged.quarantine.fields["reasons"]


def test_a_unit_not_loaded_is_never_saved_over_the_stored_one() -> None:
    store, clock, rng = InMemorySnapshots(), Clock(), random.Random(5)
    first = make(store, clock)
    learn(first, clock, rng, 100)
    first.close()
    saved = dict(store.values)
    store.down = True
    second = make(store, clock)
    process(second, "k0", "cart", T0 + 500, rng)
    store.down = False
    second.close()   # its units were never loaded: nothing of its own is written
    assert store.values == saved


def test_a_damaged_or_foreign_snapshot_is_ignored() -> None:
    store, clock, rng = InMemorySnapshots(), Clock(), random.Random(6)
    store.values["test:forgery:v1:t:acme"] = b"RFS0 something else"
    store.values["test:forgery:v1:s:acme/cart"] = encode({"baselines": {"names": "not a list"}})
    registry = CollectorRegistry()
    processor = ForgeryProcessor(CONFIG, store, "test", clock=clock, background_saves=False)
    processor.register_metrics(registry)
    assert process(processor, "k0", "cart", T0, rng).counts["learning_batches"] == 1
    assert registry.get_sample_value("rampart_forgery_snapshots_total", {"operation": "load",
                                                                        "outcome": "invalid"}) == 2


def test_an_oversized_snapshot_is_not_saved() -> None:
    store, clock, rng = InMemorySnapshots(), Clock(), random.Random(7)
    registry = CollectorRegistry()
    processor = ForgeryProcessor(replace(CONFIG, state=replace(CONFIG.state, max_snapshot_bytes=2048)), store, "test",
                                 clock=clock, background_saves=False)
    processor.register_metrics(registry)
    for i in range(40):   # the first two batches save the (still small) tenant and service snapshots
        process(processor, f"k{i}", "cart", T0 + i, rng)
    small = store.values["test:forgery:v1:s:acme/cart"]
    clock.now += 10
    for i in range(2):    # the tenant, then the service with 40 sources: too large, not saved
        process(processor, "k0", "cart", T0 + 50 + i, rng)
    assert store.values["test:forgery:v1:s:acme/cart"] == small
    assert registry.get_sample_value("rampart_forgery_snapshots_total", {"operation": "save",
                                                                        "outcome": "too_large"}) == 1


def test_invented_service_names_are_flagged_and_never_fill_the_store() -> None:
    store, clock, rng = InMemorySnapshots(), Clock(), random.Random(8)
    processor = make(store, clock)
    t = learn(processor, clock, rng, 100)
    for i in range(20):
        clock.now += 10   # every unit is due again
        result = process(processor, "k1", f"invented-{i}", t + i, rng)
        assert result.quarantine is not None
    processor.close()
    assert not [k for k in store.values if "invented" in k]


def test_the_encoding_is_versioned_and_round_trips() -> None:
    data = {"first_s": 1.5, "principals": [["k0", {"f": 1.0, "n": 64, "v": [0.5]}]]}
    value = encode(data)
    assert value.startswith(b"RFS1") and decode(value) == data
    with pytest.raises(ValueError, match="RFS1"):
        decode(b"{}")


def test_a_restarted_worker_gets_its_lineage_back_and_flags_the_next_fake_at_once() -> None:
    store, clock, rng = InMemorySnapshots(), Clock(), random.Random(5)

    def send(processor: ForgeryProcessor, principal: str, req: object, now_s: float) -> Result:
        return processor.process(Batch(signal=Signal.TRACES, request=req, batch_id=f"{principal}-{now_s}-{id(req)}",
                                       tenant="acme", principal=principal, received_at_ns=int(now_s * NS)))

    def rounds(processor: ForgeryProcessor, start: float, seconds: float, fakes: bool) -> list[Result]:
        out, t = [], start
        while t < start + seconds:
            for i, principal in enumerate(PRINCIPALS):
                caller, callee = linked(rng, t + i, 20, 20)
                send(processor, principal, caller, t + i)
                send(processor, principal, callee, t + i + 0.5)
            if fakes:
                fake = request("cart", [rng.lognormvariate(2.0, 0.3) for _ in range(4)], now_s=t + 2.5, rng=rng)
                for span in fake.resource_spans[0].scope_spans[0].spans:
                    span.kind = SERVER
                out.append(send(processor, "k0", fake, t + 2.5))
            clock.now += 5
            t += 5
        return out

    first = make(store, clock)
    rounds(first, T0, 240, fakes=False)
    caught = rounds(first, T0 + 240, 60, fakes=True)
    assert caught[-1].quarantine is not None
    first.close()
    assert "lineage" in decode(store.values["test:forgery:v1:s:acme/cart"])

    restarted = make(store, clock)
    after = rounds(restarted, T0 + 300, 10, fakes=True)
    # Its orphan counts came back with the snapshot: no orphan_wait_s before the first fake is caught.
    assert after[0].quarantine is not None and "orphan_spans" in after[0].quarantine.fields["reasons"]


def test_a_restarted_worker_gets_its_metric_references_back() -> None:
    store, clock, rng = InMemorySnapshots(), Clock(), random.Random(7)

    def export(processor: ForgeryProcessor, principal: str, now_s: float, cpu: float) -> Result:
        req = metrics_request(now_s, cpu * rng.lognormvariate(0, 0.05), int((now_s - T0) * 50))
        return processor.process(Batch(signal=Signal.METRICS, request=req, batch_id=f"m-{principal}-{now_s}",
                                       tenant="acme", principal=principal, received_at_ns=int(now_s * NS)))

    first = make(store, clock)
    for i, principal in enumerate(PRINCIPALS):
        process(first, principal, "cart", T0 + i, rng)   # cart has accepted reporters: its snapshot is kept
    t = T0
    while t < T0 + 600:   # 60 readings per source: references frozen after 48
        for i, principal in enumerate(PRINCIPALS):
            export(first, principal, t + i, 0.4)
        clock.now += 10
        t += 10
    first.close()
    assert decode(store.values["test:forgery:v1:s:acme/cart"])["metrics"]

    restarted = make(store, clock)
    # Genuine exports right after the restart pass (a cumulative series' first point, averaging its
    # whole life, gives no reading); an outlier is judged at once against the restored references,
    # where a worker starting empty would need 16 batches of the source first.
    assert all(export(restarted, p, t + i, 0.4).quarantine is None for i, p in enumerate(PRINCIPALS[1:], 1))
    outlier = export(restarted, "k0", t + 5, 4.0)
    assert outlier.quarantine is not None and "metric_outlier" in outlier.quarantine.fields["reasons"]
