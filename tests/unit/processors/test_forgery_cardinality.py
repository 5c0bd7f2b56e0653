"""The forgery stage's native cardinality tracker against a Python model of the same rules.

The model is the Python implementation the native one replaced (processors/forgery/cardinality.py
states the rules): the native tracker must give the same findings, to the last bit of every
estimate, the same references in snapshots and the same evictions.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rampart_native import CardinalityTracker, Observed

from processors.forgery.cardinality import BLOOM_CAPACITY, NOVELTY_EWMA, NOVELTY_FRACTION, REPETITIVE


class ModelHyperLogLog:
    def __init__(self, p: int = 10) -> None:
        self.p, self.m = p, 1 << p
        self.registers = bytearray(self.m)
        self.inv_sum, self.zeros = float(self.m), self.m
        self.alpha_mm = 0.7213 / (1 + 1.079 / self.m) * self.m * self.m

    def add(self, h: int) -> None:
        h &= 0xFFFF_FFFF_FFFF_FFFF
        index, rank = h & (self.m - 1), (64 - self.p) - (h >> self.p).bit_length() + 1
        old = self.registers[index]
        if rank > old:
            self.registers[index] = rank
            self.inv_sum += 2.0 ** -rank - 2.0 ** -old
            self.zeros -= old == 0

    def estimate(self) -> float:
        raw = self.alpha_mm / self.inv_sum
        if raw <= 2.5 * self.m and self.zeros:
            return self.m * math.log(self.m / self.zeros)
        return raw


class ModelBloom:
    def __init__(self, bits: int = 32_768, k: int = 4) -> None:
        self.m, self.k, self.bits, self.count = bits, k, bytearray(bits // 8), 0

    def _probes(self, h: int) -> list[int]:
        h1, h2 = h & 0xFFFF_FFFF, ((h >> 32) & 0xFFFF_FFFF) | 1
        return [(h1 + i * h2) % self.m for i in range(self.k)]

    def __contains__(self, h: int) -> bool:
        return all(self.bits[p >> 3] & (1 << (p & 7)) for p in self._probes(h))

    def add(self, h: int) -> None:
        for p in self._probes(h):
            self.bits[p >> 3] |= 1 << (p & 7)
        self.count += 1


@dataclass
class _Key:
    window_start: float
    reference: float = -1.0
    current: ModelHyperLogLog = field(default_factory=ModelHyperLogLog)
    known: ModelBloom = field(default_factory=ModelBloom)
    novelty: float = 1.0
    batches: int = 0


Finding = tuple[str, str, str, int, int, float, float, float]
Values = dict[str, dict[str, set[int]]]


class ModelTracker:
    def __init__(self, *, window_s: float, floor: float, growth: float, min_novel: int, max_keys: int) -> None:
        self.window_s, self.floor, self.growth, self.min_novel, self.max_keys = \
            window_s, floor, growth, min_novel, max_keys
        self.keys: OrderedDict[tuple[str, str, str], _Key] = OrderedDict()

    def cap(self, state: _Key) -> float:
        return max(self.floor, self.growth * max(state.reference, 0.0))

    def _key(self, key: tuple[str, str, str], now: float) -> _Key:
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = _Key(window_start=now)
            if len(self.keys) > self.max_keys:
                self.keys.popitem(last=False)
        else:
            self.keys.move_to_end(key)
        if now - state.window_start >= self.window_s:
            estimate = state.current.estimate()
            if state.reference < 0 or estimate <= self.cap(state):
                state.reference = estimate
            state.current, state.window_start = ModelHyperLogLog(), now
        return state

    def observe(self, tenant: str, values: Values, now: float,
                judge: bool) -> tuple[list[Finding], list[tuple[tuple[str, str, str], list[int], int]]]:
        findings, pending = [], []
        for service, keys in values.items():
            for key, hashes in keys.items():
                full_key = (tenant, service, key)
                state = self._key(full_key, now)
                for h in hashes:
                    state.current.add(h)
                estimate = state.current.estimate()
                usable = state.known.count < BLOOM_CAPACITY
                fresh = [h for h in hashes if h & 0xFFFF_FFFF_FFFF_FFFF not in state.known] if usable else []
                novel, distinct = len(fresh), len(hashes)
                pending.append((full_key, fresh, distinct))
                if not judge or state.batches < 8 or state.reference < 0:
                    continue
                repetitive = usable and state.novelty < REPETITIVE
                cap = self.cap(state)
                if repetitive and novel >= self.min_novel and novel >= NOVELTY_FRACTION * distinct:
                    reason = "cardinality_novelty"
                elif estimate > cap and (not repetitive or novel >= 0.5 * distinct):
                    reason = "cardinality_cap"
                else:
                    continue
                findings.append((service, key, reason, novel, distinct, state.novelty, estimate, cap))
        return findings, pending

    def accept(self, pending: list[tuple[tuple[str, str, str], list[int], int]]) -> None:
        for full_key, fresh, distinct in pending:
            state = self.keys.get(full_key)
            if state is None:
                continue
            if distinct:
                fraction = len(fresh) / distinct if state.known.count < BLOOM_CAPACITY else 1.0
                state.novelty += NOVELTY_EWMA * (fraction - state.novelty) if state.batches >= 8 else \
                    (fraction - state.novelty) / (state.batches + 1)
            state.batches += 1
            for h in fresh:
                if state.known.count >= BLOOM_CAPACITY:
                    break
                state.known.add(h & 0xFFFF_FFFF_FFFF_FFFF)

    def export_service(self, tenant: str, service: str) -> dict[str, float]:
        return {k: state.reference for (t, s, k), state in self.keys.items()
                if t == tenant and s == service and state.reference >= 0}

    def import_service(self, tenant: str, service: str, data: dict[str, float], now: float) -> None:
        for key, reference in data.items():
            if (tenant, service, key) not in self.keys:
                self.keys[(tenant, service, key)] = _Key(window_start=now, reference=reference)
                if len(self.keys) > self.max_keys:
                    self.keys.popitem(last=False)


SETTINGS = {"window_s": 300.0, "floor": 6.0, "growth": 2.0, "min_novel": 3, "max_keys": 10}


def native(**overrides: float) -> CardinalityTracker:
    return CardinalityTracker(**{**SETTINGS, **overrides}, bloom_capacity=BLOOM_CAPACITY,  # type: ignore[arg-type]
                              novelty_fraction=NOVELTY_FRACTION, repetitive=REPETITIVE, novelty_ewma=NOVELTY_EWMA)


# A batch: (seconds since the last one, judge, accept, {service: {key: hashes}}). Few names and a
# small pool of values, so that keys come back, values repeat, windows roll and keys are evicted.
HASHES = st.one_of(st.integers(0, 40), st.integers(-(2**63), 2**63 - 1))
BATCH = st.tuples(st.sampled_from([0.0, 1.0, 40.0, 301.0]), st.booleans(), st.booleans(),
                  st.dictionaries(st.sampled_from(["cart", "shop", "api"]),
                                  st.dictionaries(st.sampled_from(["a", "b", "c", "d", "url"]),
                                                  st.sets(HASHES, max_size=12), max_size=4), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.lists(BATCH, max_size=60))
def test_native_tracker_is_the_model_to_the_bit(batches: list[tuple[float, bool, bool, Values]]) -> None:
    model, tracker, now = ModelTracker(**SETTINGS), native(), 1000.0  # type: ignore[arg-type]
    for step, judge, accept, values in batches:
        now += step
        expected, pending = model.observe("t", values, now, judge)
        found, observed = tracker.observe("t", values, now, judge)
        assert found == expected
        if accept:
            model.accept(pending)
            tracker.accept(observed)
        assert len(tracker) == len(model.keys)
    for service in ("cart", "shop", "api"):
        exported = tracker.export_service("t", service)
        assert list(exported.items()) == list(model.export_service("t", service).items())
        restored, model_restored = native(), ModelTracker(**SETTINGS)  # type: ignore[arg-type]
        restored.import_service("t", service, exported, now)
        model_restored.import_service("t", service, exported, now)
        assert restored.export_service("t", service) == model_restored.export_service("t", service)


def test_a_long_explosion_past_the_filter_and_the_key_bound() -> None:
    """Thousands of values per key (the Bloom filter fills up) and more keys than the bound."""
    rng = random.Random(3)
    model, tracker = ModelTracker(**{**SETTINGS, "max_keys": 20}), native(max_keys=20)  # type: ignore[arg-type]
    now = 0.0
    for batch in range(400):
        now += 5.0
        values = {"cart": {f"k{batch % 25}": {rng.getrandbits(64) - 2**63 for _ in range(rng.randrange(1, 60))},
                           "id": {rng.getrandbits(64) for _ in range(200)}}}
        expected, pending = model.observe("t", values, now, True)
        found, observed = tracker.observe("t", values, now, True)
        assert found == expected
        model.accept(pending)
        tracker.accept(observed)
    assert model.keys[("t", "cart", "id")].known.count == BLOOM_CAPACITY
    assert tracker.export_service("t", "cart") == model.export_service("t", "cart")


def test_a_key_evicted_before_accept_is_not_taught() -> None:
    tracker = native(max_keys=2)
    _, observed = tracker.observe("t", {"s": {"a": {1, 2}}}, 0.0, False)
    tracker.observe("t", {"s": {"b": {1}, "c": {2}}}, 0.0, False)   # "a" is the least recently used: out
    tracker.accept(observed)
    assert tracker.estimate("t", "s", "a") is None and len(tracker) == 2


def test_hyperloglog_estimates_within_a_few_percent() -> None:
    for distinct in (100, 5_000, 100_000):
        tracker = native(max_keys=10)
        values = [hash(f"value-{i}") for i in range(distinct)]
        for start in range(0, distinct, 1000):
            tracker.observe("t", {"s": {"k": set(values[start:start + 1000])}}, 0.0, False)
        assert tracker.estimate("t", "s", "k") == pytest.approx(distinct, rel=0.08)


def test_hyperloglog_ignores_repeats() -> None:
    tracker = native()
    for _ in range(50):
        tracker.observe("t", {"s": {"k": {hash(f"user-{i}") for i in range(300)}}}, 0.0, False)
    assert tracker.estimate("t", "s", "k") == pytest.approx(300, rel=0.08)


def test_bloom_filter_has_no_false_negatives_and_few_false_positives() -> None:
    bloom = ModelBloom()   # the native filter is this one bit for bit (above)
    for i in range(3_000):
        bloom.add(hash(f"in-{i}") & 0xFFFF_FFFF_FFFF_FFFF)
    assert all(hash(f"in-{i}") & 0xFFFF_FFFF_FFFF_FFFF in bloom for i in range(3_000))
    false_positives = sum(hash(f"out-{i}") & 0xFFFF_FFFF_FFFF_FFFF in bloom for i in range(10_000))
    assert false_positives < 200   # < 2 %


def test_what_is_not_a_batch_of_hash_sets_is_refused() -> None:
    tracker = native()
    with pytest.raises(TypeError):
        tracker.observe("t", {"s": {"k": ["not", "a", "set"]}}, 0.0, False)  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        tracker.observe("t", {"s": {"k": {"text"}}}, 0.0, False)  # type: ignore[arg-type]
    assert isinstance(tracker.observe("t", {}, 0.0, False)[1], Observed)
