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

A key is judged once 8 of its batches were accepted and a window lies behind it. The state is native
(native/src/cardinality.rs; all of a batch's keys in one call): a HyperLogLog of 2^10 registers (~3 %
standard error) and a 32 Kibit Bloom filter per key, least recently used keys evicted beyond
``max_keys``. Only the hashes of values are kept, never the values: Python's ``hash()``, keyed per
process, so a client cannot aim values at one register or at the filter's bits.
"""

from __future__ import annotations

from typing import NamedTuple

from rampart_native import CardinalityTracker as _Native
from rampart_native import Observed

__all__ = ["CardinalityTracker", "Finding", "Observed"]

BLOOM_CAPACITY = 3_000          # values a 32 Kibit filter holds at < 1 % false positives
NOVELTY_FRACTION = 0.8          # share of a batch's values that must be new for cardinality_novelty
REPETITIVE = 0.3                # a key is "repetitive" while its batches' usual novelty stays below this
NOVELTY_EWMA = 0.05


class Finding(NamedTuple):
    service: str
    reason: str     # cardinality_cap | cardinality_novelty
    detail: str


class CardinalityTracker:
    def __init__(self, *, window_s: float, floor: int, growth: float, min_novel: int, max_keys: int) -> None:
        self._native = _Native(window_s=window_s, floor=float(floor), growth=growth, min_novel=min_novel,
                               max_keys=max_keys, bloom_capacity=BLOOM_CAPACITY, novelty_fraction=NOVELTY_FRACTION,
                               repetitive=REPETITIVE, novelty_ewma=NOVELTY_EWMA)

    def __len__(self) -> int:
        return len(self._native)

    def observe(self, tenant: str, value_hashes: dict[str, dict[str, set[int]]], now_s: float,
                judge: bool) -> tuple[list[Finding], Observed]:
        """Count a batch's distinct value hashes (service -> key -> hashes); with ``judge``, the keys
        that break a rule. What was observed teaches the keys only through :meth:`accept`."""
        found, observed = self._native.observe(tenant, value_hashes, now_s, judge)
        findings = []
        for service, key, reason, novel, distinct, novelty, estimate, cap in found:
            detail = (f"{key}: {novel} of {distinct} values never seen (usually {novelty:.0%} new)"
                      if reason == "cardinality_novelty" else
                      f"{key}: ~{estimate:.0f} distinct values this window, cap {cap:.0f}")
            findings.append(Finding(service, reason, detail))
        return findings, observed

    def accept(self, observed: Observed) -> None:
        """A batch judged clean teaches its keys: their new values become known, their novelty the usual."""
        self._native.accept(observed)

    # ------------------------------------------------------------------ snapshots (processors/forgery/state.py)

    def export_service(self, tenant: str, service: str) -> dict[str, float]:
        """Each attribute key's reference (distinct values of its last clean window) for one service.

        Only the reference travels: the HyperLogLog and the Bloom filter hold ``hash()`` values, which
        are keyed per process, so they mean nothing to another process.
        """
        return self._native.export_service(tenant, service)

    def import_service(self, tenant: str, service: str, data: dict[str, float], now_s: float) -> None:
        """Restore references for keys not held here. Each restored key starts a new window and learns its
        usual novelty again (8 clean batches) before it is judged, with the cap of its old reference."""
        self._native.import_service(tenant, service, data, now_s)
