"""The forgery stage's sketches and statistics, each against what it must compute."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.forgery.replay import ReplayIndex, sampled
from processors.forgery.scoring import combine, error_z, evidence, rank_stats
from processors.forgery.sketches import (
    ALPHA,
    DecayedCount,
    DecayedHistogram,
    RobustZ,
    bucket_index,
    cumulative,
)


def test_decayed_count_halves_every_half_life() -> None:
    count = DecayedCount(half_life_s=10.0, now_s=1000.0)
    count.add(100.0, 1000.0)
    assert count.value(1010.0) == pytest.approx(50.0)
    assert count.value(1030.0) == pytest.approx(12.5)


def test_decayed_values_survive_rebasing_far_into_the_future() -> None:
    count = DecayedCount(half_life_s=1.0, now_s=0.0)
    histogram = DecayedHistogram(half_life_s=1.0, now_s=0.0)
    for t in range(0, 5000, 50):   # thousands of half-lives: would overflow without rebasing
        count.add(1.0, float(t))
        histogram.add_counts({bucket_index(1_000_000): 1}, float(t))
    assert count.value(4950.0) == pytest.approx(1.0, rel=1e-6)
    assert histogram.weight_now(4950.0) == pytest.approx(1.0, rel=1e-6)


def test_histogram_quantiles_within_relative_accuracy() -> None:
    rng = random.Random(3)
    values = [int(rng.lognormvariate(math.log(30e6), 0.6)) for _ in range(20_000)]
    histogram = DecayedHistogram(half_life_s=1e9, now_s=0.0)
    counts: dict[int, int] = {}
    for v in values:
        counts[bucket_index(v)] = counts.get(bucket_index(v), 0) + 1
    histogram.add_counts(counts, 0.0)
    values.sort()
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert histogram.quantile(q, 0.0) == pytest.approx(exact, rel=2 * ALPHA)


def test_cumulative_is_sorted_and_ends_at_the_total() -> None:
    histogram = DecayedHistogram(half_life_s=10.0, now_s=0.0)
    histogram.add_counts({bucket_index(5_000_000): 3, bucket_index(1_000_000): 1}, 0.0)
    indices, totals = cumulative(histogram, 10.0)
    assert indices == sorted(indices)
    assert totals[-1] == pytest.approx(2.0)   # 4 spans, one half-life later


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=90))
def test_robust_z_center_and_spread_are_statistics_median_and_mad(values: list[float]) -> None:
    if len(values) > 16:   # it refreshes on each of the first 16 additions, then on every 8th: end on one
        values = values[: 16 + 8 * ((len(values) - 16) // 8)]
    series = RobustZ(size=64, floor=0.0)
    for x in values:
        series.add(x)
    kept = values[-64:]
    assert series.center == statistics.median(kept)
    assert series.spread == 1.4826 * statistics.median(abs(v - statistics.median(kept)) for v in kept)


def test_robust_z_uses_median_and_mad() -> None:
    series = RobustZ(size=64, floor=0.0)
    for x in [10.0, 11.0, 9.0, 10.0, 10.5, 9.5, 1000.0]:   # one outlier does not move it
        series.add(x)
    assert series.center == pytest.approx(10.0)
    assert series.z(10.0 + 1.4826 * 0.5 * 4) == pytest.approx(4.0)


def test_replay_sampling_depends_on_duration_only_and_keeps_about_one_in_n() -> None:
    durations = range(1_000_000, 1_000_000 + 40_000 * 1000, 1000)   # microsecond clocks too
    kept = sum(sampled(d, 4) for d in durations)
    assert 0.2 < kept / 40_000 < 0.3
    assert all(sampled(d, 1) for d in range(100))


def test_replay_index_tells_other_batches_from_redelivery_and_forgets_after_the_window() -> None:
    index = ReplayIndex(window_s=100.0, max_entries=1_000)
    assert index.check_and_add([1, 2, 3], batch_key=10, now_s=0.0) == 0
    assert index.check_and_add([1, 2, 3], batch_key=10, now_s=1.0) == 0   # the same batch again
    assert index.check_and_add([1, 2, 4], batch_key=11, now_s=2.0) == 2
    assert index.check_and_add([1, 2], batch_key=12, now_s=300.0) == 0    # expired


def test_replay_index_is_bounded() -> None:
    index = ReplayIndex(window_s=1000.0, max_entries=1_000)
    for t in range(100):
        index.check_and_add(list(range(t * 100, t * 100 + 100)), batch_key=t, now_s=float(t * 10))
    assert len(index) <= 1_100


def test_rank_stats_of_faster_and_equal_batches() -> None:
    def counts(durations_ms: range, each: int) -> dict[int, int]:
        out: dict[int, int] = {}
        for d in durations_ms:
            out[bucket_index(d * 1_000_000)] = out.get(bucket_index(d * 1_000_000), 0) + each
        return out

    peers = DecayedHistogram(half_life_s=1e9, now_s=0.0)
    peers.add_counts(counts(range(20, 200, 5), 10), 0.0)
    indices, totals = cumulative(peers, 0.0)
    fast = rank_stats({bucket_index(5_000_000): 30}, 30, indices, totals)
    assert fast.mean_rank == 0.0 and fast.ks_plus == pytest.approx(1.0)
    assert fast.t(0.5) == pytest.approx(-0.5 * math.sqrt(12 * 30))
    same = rank_stats(counts(range(20, 200, 5), 1), 36, indices, totals)
    assert same.mean_rank == pytest.approx(0.5, abs=0.02)


def test_error_z_is_an_exact_mid_p_tail() -> None:
    assert error_z(0, 22, 0.2) == pytest.approx(2.68, abs=0.01)   # 0.5 * 0.8^22 = 0.0037
    assert abs(error_z(4, 20, 0.2) or 9) < 0.2                    # as many errors as expected
    assert error_z(0, 10, 0.01) is None                           # nothing to tell from 0.1 expected


def test_evidence_and_combination() -> None:
    assert evidence(3.0, 3.0) == pytest.approx(0.5)
    assert evidence(100.0, 3.0) == 1.0 and evidence(-100.0, 3.0) == 0.0
    assert combine(1.0, 1.0) == pytest.approx(1.0)
    assert combine(1.0, evidence(0.0, 3.0)) < 0.2    # no flood: a very different batch is not enough
    assert combine(evidence(4.0, 3.5), 1.0) > 0.8    # a clear flood: a moderately too good batch is
