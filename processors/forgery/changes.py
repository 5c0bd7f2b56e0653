"""Change detection on robust residuals: the CUSUM step the processor runs on each source's latency
evidence, and the same detector on a plain series, so that it can be checked on labelled change
points nobody here generated (benchmarks/forgery/changepoints.py).

Both work on robust z-scores (median/MAD of the last accepted values, sketches.RobustZ): a series'
own scatter sets the scale, and values taken during an alarm do not teach the baseline.
"""

from __future__ import annotations

from processors.forgery.sketches import RobustZ

__all__ = ["ChangeDetector", "cusum_step"]


def cusum_step(total: float, z: float, *, drift: float, cap: float, limit: float) -> tuple[float, bool]:
    """One step of a one-sided CUSUM of z (increments capped at ``cap``, less ``drift``), held in
    [0, 2 x limit] so it also falls back quickly once the change is over; True when past ``limit``."""
    total = min(max(0.0, total + min(z, cap) - drift), 2 * limit)
    return total, total > limit


class ChangeDetector:
    """Two-sided CUSUM on a series with the processor's step. (Page-Hinkley on the same residuals is
    the same statistic: Page's recursion max(0, S + x - k) equals the cumulative sum less its running
    minimum.) After an alarm the baseline is learned again from the next ``warmup`` values: the series
    has a new level."""

    def __init__(self, *, drift: float = 1.75, cap: float = 3.5, limit: float = 14.0, warmup: int = 16,
                 window: int = 64) -> None:
        self._drift, self._cap, self._limit = drift, cap, limit
        self._warmup, self._window = warmup, window
        self._reset()

    def _reset(self) -> None:
        self._baseline = RobustZ(size=self._window, floor=1e-9)
        self._up = self._down = 0.0

    def update(self, x: float) -> bool:
        """Feed one value; True when it completes a change."""
        baseline = self._baseline
        if len(baseline) < self._warmup:
            baseline.add(x)
            return False
        z = baseline.z(x)
        self._up, up = cusum_step(self._up, z, drift=self._drift, cap=self._cap, limit=self._limit)
        self._down, down = cusum_step(self._down, -z, drift=self._drift, cap=self._cap, limit=self._limit)
        if up or down:
            self._reset()
            return True
        if abs(z) < self._cap:   # an outlier or a change in progress does not teach the baseline
            baseline.add(x)
        return False
