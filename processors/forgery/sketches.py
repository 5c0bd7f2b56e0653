"""Bounded streaming sketches for the forgery stage, written here to stay small and cheap per item
(the HyperLogLog and Bloom filter of attribute-value cardinality are native: cardinality.py).

- :class:`DecayedHistogram`: DDSketch-style log buckets (relative accuracy ``alpha``) with forward
  exponential decay, so "the last minute" costs one dict per key instead of a ring of windows.
- :class:`DecayedCount`: the same decay for a single number (volume, error counts).
- :class:`RobustZ`: median/MAD over the last values of a series, to turn a raw statistic into a
  robust z-score that already accounts for how noisy this source normally is.
"""

from __future__ import annotations

import math
from collections import deque
from itertools import accumulate
from statistics import StatisticsError
from typing import Any

__all__ = ["DecayedCount", "DecayedHistogram", "RobustZ", "bucket_index", "cumulative"]

# Bucket boundaries grow by GAMMA = (1 + ALPHA) / (1 - ALPHA): any value is within ALPHA (5 %) of its
# bucket's representative. Durations are clamped to [1 µs, ~2.8 h], so a histogram never has more
# than ~230 buckets whatever it is fed.
ALPHA = 0.05
GAMMA = (1 + ALPHA) / (1 - ALPHA)
INV_LOG_GAMMA = 1.0 / math.log(GAMMA)
MIN_DURATION_NS = 1_000
MAX_DURATION_NS = 10_000 * 1_000_000_000
MIN_BUCKET = math.ceil(math.log(MIN_DURATION_NS) * INV_LOG_GAMMA)
MAX_BUCKET = math.ceil(math.log(MAX_DURATION_NS) * INV_LOG_GAMMA)
# Forward decay keeps weights 2^((t - t0) / h); past this exponent the stored values are rebased to
# a new t0 so floats never overflow (2^64 is far from the float limit, and rebasing is rare).
_REBASE_EXPONENT = 64.0


def bucket_index(duration_ns: int) -> int:
    """The log bucket of a duration (clamped to the histogram's range)."""
    if duration_ns <= MIN_DURATION_NS:
        return MIN_BUCKET
    if duration_ns >= MAX_DURATION_NS:
        return MAX_BUCKET
    return math.ceil(math.log(duration_ns) * INV_LOG_GAMMA)


def bucket_value_ns(index: int) -> float:
    """The representative duration of a bucket (DDSketch's midpoint estimate)."""
    return 2.0 * GAMMA ** index / (GAMMA + 1.0)


class _Decay:
    """Forward decay (Cormode et al., 2009): an update at time t adds w(t) = 2^((t - t0) / h); a read at
    time now divides by w(now). Updates are O(1); nothing is swept when time passes."""

    __slots__ = ("inv_h", "t0")

    def __init__(self, half_life_s: float, now_s: float) -> None:
        self.inv_h = 1.0 / half_life_s
        self.t0 = now_s

    def weight(self, now_s: float) -> float:
        return math.exp2((now_s - self.t0) * self.inv_h)

    def needs_rebase(self, now_s: float) -> bool:
        return (now_s - self.t0) * self.inv_h > _REBASE_EXPONENT


class DecayedCount:
    """A count whose old contributions fade with a half-life (e.g. spans of one source in the last minute)."""

    __slots__ = ("_decay", "_value")

    def __init__(self, half_life_s: float, now_s: float) -> None:
        self._decay = _Decay(half_life_s, now_s)
        self._value = 0.0

    # add and value inline _Decay's weight and needs_rebase (the same expressions): they run a few dozen
    # times per batch.
    def add(self, amount: float, now_s: float) -> None:
        decay = self._decay
        exponent = (now_s - decay.t0) * decay.inv_h
        if exponent > _REBASE_EXPONENT:
            self._value /= math.exp2(exponent)
            decay.t0 = now_s
            exponent = (now_s - decay.t0) * decay.inv_h
        self._value += amount * math.exp2(exponent)

    def value(self, now_s: float) -> float:
        decay = self._decay
        return self._value / math.exp2((now_s - decay.t0) * decay.inv_h)

    def to_dict(self) -> list[float]:
        """Compact state for a snapshot (processors/forgery/state.py); the half-life comes from the config."""
        return [self._decay.t0, self._value]

    @classmethod
    def from_dict(cls, data: list[float], half_life_s: float) -> DecayedCount:
        count = cls(half_life_s, float(data[0]))
        count._value = float(data[1])
        return count


class DecayedHistogram:
    """Latencies in log buckets with exponential forgetting: a sliding window without window slots.

    Memory is one dict entry per occupied bucket (at most ~230, typically 30-60 for one operation).
    """

    __slots__ = ("_decay", "buckets", "total")

    def __init__(self, half_life_s: float, now_s: float) -> None:
        self._decay = _Decay(half_life_s, now_s)
        self.buckets: dict[int, float] = {}
        self.total = 0.0   # in stored (t0) units

    def add_counts(self, counts: dict[int, int], now_s: float) -> None:
        """Add a batch's bucket counts at one instant."""
        if self._decay.needs_rebase(now_s):
            self._rebase(now_s)
        w = self._decay.weight(now_s)
        buckets = self.buckets
        n = 0
        for index, c in counts.items():
            buckets[index] = buckets.get(index, 0.0) + c * w
            n += c
        self.total += n * w

    def _rebase(self, now_s: float) -> None:
        scale = 1.0 / self._decay.weight(now_s)
        self.buckets = {i: c * scale for i, c in self.buckets.items() if c * scale > 1e-9}
        self.total *= scale
        self._decay.t0 = now_s

    def scale(self, now_s: float) -> float:
        """Multiply stored values by this to get their weight as of ``now_s``."""
        decay = self._decay
        return 1.0 / math.exp2((now_s - decay.t0) * decay.inv_h)

    def weight_now(self, now_s: float) -> float:
        decay = self._decay
        return self.total * (1.0 / math.exp2((now_s - decay.t0) * decay.inv_h))

    def quantile(self, q: float, now_s: float) -> float:
        """The q-quantile in nanoseconds (within ALPHA relative error of the data it holds); 0 when empty."""
        if self.total <= 0:
            return 0.0
        rank = q * self.total
        seen = 0.0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return bucket_value_ns(index)
        return bucket_value_ns(max(self.buckets))

    def to_dict(self) -> dict[str, Any]:
        """Compact state for a snapshot: t0, total and the buckets as a flat [index, weight, ...] list."""
        flat: list[float] = []
        for index, weight in self.buckets.items():
            flat += (index, weight)
        return {"t0": self._decay.t0, "n": self.total, "b": flat}

    @classmethod
    def from_dict(cls, data: dict[str, Any], half_life_s: float) -> DecayedHistogram:
        histogram = cls(half_life_s, float(data["t0"]))
        flat = data["b"]
        # Indices outside the clamped range cannot come from this code: a snapshot holding them is damaged.
        histogram.buckets = {int(i): float(w) for i, w in zip(flat[::2], flat[1::2], strict=True)
                             if MIN_BUCKET <= int(i) <= MAX_BUCKET}
        histogram.total = float(data["n"])
        return histogram


def cumulative(histogram: DecayedHistogram, now_s: float) -> tuple[list[int], list[float]]:
    """The histogram's distribution as (sorted bucket indices, cumulative weight at and below each),
    in weights as of ``now_s``."""
    scale = histogram.scale(now_s)
    buckets = histogram.buckets
    indices = sorted(buckets)
    # A running sum from 0.0, in index order: the same additions as a loop, done in C.
    return indices, list(accumulate([buckets[index] * scale for index in indices], initial=0.0))[1:]


class RobustZ:
    """Robust z-score of a value against the last ``size`` accepted values of the same series:
    (x - median) / max(1.4826 * MAD, floor). The median and MAD are recomputed every few additions,
    so a read is O(1) and an addition amortised O(size log size / 8)."""

    __slots__ = ("_floor", "_mad", "_median", "_since", "values")

    def __init__(self, size: int = 64, floor: float = 1.0) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self._floor = floor
        self._median = 0.0
        self._mad = 0.0
        self._since = 0

    def add(self, x: float) -> None:
        self.values.append(x)
        self._since += 1
        if self._since >= 8 or len(self.values) <= 16:
            self._refresh()

    def _refresh(self) -> None:
        # statistics.median's own arithmetic (middle value, or the mean of the two middle ones) on one
        # sort each, without its per-call overhead: this runs for every source of every accepted batch.
        self._since = 0
        ordered = sorted(self.values)
        n = len(ordered)
        if not n:
            raise StatisticsError("no median for empty data")
        i = n // 2
        center = self._median = ordered[i] if n % 2 else (ordered[i - 1] + ordered[i]) / 2
        deviations = sorted([abs(v - center) for v in ordered])
        self._mad = deviations[i] if n % 2 else (deviations[i - 1] + deviations[i]) / 2

    def __len__(self) -> int:
        return len(self.values)

    @property
    def center(self) -> float:
        return self._median

    @property
    def spread(self) -> float:
        return max(1.4826 * self._mad, self._floor)

    def z(self, x: float) -> float:
        return (x - self._median) / self.spread

    def to_dict(self) -> dict[str, Any]:
        """Compact state for a snapshot: its floor, its size and its values, oldest first."""
        return {"f": self._floor, "n": self.values.maxlen, "v": list(self.values)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RobustZ:
        robust = cls(size=int(data["n"]), floor=float(data["f"]))
        robust.values.extend(float(v) for v in data["v"])
        if robust.values:
            robust._refresh()
        return robust
