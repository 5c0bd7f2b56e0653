"""Attribute-value cardinality per (tenant, service, attribute key): a HyperLogLog per window for the
cap, a Bloom filter of known values for per-batch novelty.

Two rules come out of it:

- ``cardinality_cap``: the key's distinct values in the current window exceed
  max(floor, growth x the last clean window's). Which batches caused it: those whose values are
  mostly new (for keys with a Bloom filter), or every batch carrying the key (for keys that never
  repeat, e.g. request ids, where "new" cannot be told from normal).
- ``cardinality_novelty``: a usually repetitive key (its batches normally bring few new values)
  arrives in a batch with at least ``min_novel`` values never seen, making up 80 % of it. This
  catches an explosion in its first batch, before the window's count gets anywhere near the cap.

Only the hashes of values are kept, never the values.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from processors.forgery.sketches import BloomFilter, HyperLogLog

__all__ = ["CardinalityTracker", "KeyVerdict"]

BLOOM_CAPACITY = 3_000          # values a 32 Kibit filter holds at < 1 % false positives
NOVELTY_FRACTION = 0.8          # share of a batch's values that must be new for cardinality_novelty
REPETITIVE = 0.3                # a key is "repetitive" while its batches' usual novelty stays below this
_NOVELTY_EWMA = 0.05


@dataclass(slots=True)
class _Key:
    window_start: float
    current: HyperLogLog = field(default_factory=HyperLogLog)
    reference: float = -1.0           # distinct values in the last window that was not over its cap
    known: BloomFilter = field(default_factory=BloomFilter)
    novelty: float = 1.0              # usual fraction of new values per batch (EWMA over accepted batches)
    batches: int = 0


class KeyVerdict(NamedTuple):   # a NamedTuple: as immutable as a frozen dataclass, a third of its cost to make
    reason: str           # "" when nothing is wrong
    detail: str
    estimate: float
    novel: frozenset[int]   # hashes not in the filter (empty when the filter is full)
    distinct: int


class CardinalityTracker:
    def __init__(self, *, window_s: float, floor: int, growth: float, min_novel: int, max_keys: int) -> None:
        self._window_s = window_s
        self._floor = floor
        self._growth = growth
        self._min_novel = min_novel
        self._max_keys = max_keys
        self._keys: OrderedDict[tuple[str, str, str], _Key] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def _key(self, key: tuple[str, str, str], now_s: float) -> _Key:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key(window_start=now_s)
            if len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        if now_s - state.window_start >= self._window_s:
            self._roll(state, now_s)
        return state

    def _roll(self, state: _Key, now_s: float) -> None:
        estimate = state.current.estimate()
        if state.reference < 0 or estimate <= self.cap(state):
            # The first window sets the reference; after that only a window that stayed under its
            # cap does: an explosion cannot raise the bar for the next window.
            state.reference = estimate
        state.current = HyperLogLog()
        state.window_start = now_s

    def cap(self, state: _Key) -> float:
        return max(float(self._floor), self._growth * max(state.reference, 0.0))

    def observe(self, key: tuple[str, str, str], hashes: set[int], now_s: float, judge: bool) -> KeyVerdict:
        """Count a batch's distinct value hashes for one key; with ``judge``, say whether they break a rule."""
        state = self._key(key, now_s)
        current = state.current
        current.add_hashes(hashes)
        estimate = current.estimate()
        bloom_usable = state.known.count < BLOOM_CAPACITY
        fresh = state.known.missing(hashes) if bloom_usable else frozenset()
        novel = len(fresh)
        distinct = len(hashes)
        if not judge or state.batches < 8 or state.reference < 0:
            # A key is judged once it has a reference window behind it (a new key gets one window's grace).
            return KeyVerdict("", "", estimate, fresh, distinct)
        repetitive = bloom_usable and state.novelty < REPETITIVE
        if repetitive and novel >= self._min_novel and novel >= NOVELTY_FRACTION * distinct:
            return KeyVerdict("cardinality_novelty", f"{key[2]}: {novel} of {distinct} values never seen "
                              f"(usually {state.novelty:.0%} new)", estimate, fresh, distinct)
        cap = self.cap(state)
        if estimate > cap and (not repetitive or novel >= 0.5 * distinct):
            return KeyVerdict("cardinality_cap", f"{key[2]}: ~{estimate:.0f} distinct values this window, "
                              f"cap {cap:.0f}", estimate, fresh, distinct)
        return KeyVerdict("", "", estimate, fresh, distinct)

    def accept(self, key: tuple[str, str, str], verdict: KeyVerdict) -> None:
        """A batch judged clean teaches the key: its new values become known, its novelty the usual."""
        state = self._keys.get(key)
        if state is None:
            return
        if verdict.distinct:
            fraction = len(verdict.novel) / verdict.distinct if state.known.count < BLOOM_CAPACITY else 1.0
            state.novelty += _NOVELTY_EWMA * (fraction - state.novelty) if state.batches >= 8 else \
                (fraction - state.novelty) / (state.batches + 1)
        state.batches += 1
        state.known.add_hashes(verdict.novel, BLOOM_CAPACITY)

    # ------------------------------------------------------------------ snapshots (processors/forgery/state.py)

    def export_service(self, tenant: str, service: str) -> dict[str, float]:
        """Each attribute key's reference (distinct values of its last clean window) for one service.

        Only the reference travels: the HyperLogLog and the Bloom filter hold ``hash()`` values, which
        are keyed per process, so they mean nothing to another process.
        """
        return {key: state.reference for (t, s, key), state in self._keys.items()
                if t == tenant and s == service and state.reference >= 0}

    def import_service(self, tenant: str, service: str, data: dict[str, float], now_s: float) -> None:
        """Restore references for keys not held here. Each restored key starts a new window and learns its
        usual novelty again (8 clean batches) before it is judged, with the cap of its old reference."""
        for key, reference in data.items():
            full_key = (tenant, service, str(key))
            if full_key in self._keys:
                continue
            self._keys[full_key] = _Key(window_start=now_s, reference=float(reference))
            if len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
