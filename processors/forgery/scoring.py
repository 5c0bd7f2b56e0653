"""Statistics that turn one batch of one source into evidence, and evidence into a score in [0, 1].

Latency: each span's rank among the peers' recent latencies (its PIT value u = F_peers(x)). Under
"this source reports the same operation as its peers", u is uniform, so the batch's mean rank has
mean 0.5 and standard deviation 1/sqrt(12 n): the Mann-Whitney test against a large reference. A
masking flood (fast spans while the service is slow) has ranks near 0. The one-sided KS distance
D+ = max(F_batch - F_peers) is computed on the same buckets and reported with it.

Errors: a one-sided binomial z of the batch's error count against the peers' recent error ratio
(fake healthy spans during an error burst have too few errors).

Each raw statistic is then made robust per source (median/MAD of its own recent accepted batches, in
sketches.RobustZ), so a source that is always a little faster than its peers is not flagged for it.
Evidence of one kind alone never quarantines: the masking signature is a disagreement with the
peers *and* a jump of the source's share of the volume (see combine).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from statistics import NormalDist

__all__ = ["VOLUME_WEIGHT", "RankStats", "combine", "error_z", "evidence", "rank_stats"]

_NORMAL = NormalDist()


def evidence(z: float, z_half: float) -> float:
    """A logistic map of a z-score: 0.5 at ``z_half``, ~0.9 at z_half + 2.2, ~0.1 at z_half - 2.2."""
    x = z - z_half
    if x > 30:
        return 1.0
    if x < -30:
        return 0.0
    return 1.0 / (1.0 + math.exp(-x))


VOLUME_WEIGHT = 0.7


def combine(disagreement: float, volume: float) -> float:
    """Masking needs both: the source sends more than its share *and* this batch disagrees with the
    peers. A weighted geometric mean (log-linear pooling) in which volume weighs more: once a source
    clearly sends a flood, a batch of it that is moderately too good is probably part of the flood;
    without a flood, even a batch that is very different from its peers scores at most
    e(volume)^0.7 (a deploy that makes one cluster faster is not a forgery)."""
    return float(math.pow(disagreement, 1.0 - VOLUME_WEIGHT) * math.pow(volume, VOLUME_WEIGHT))


class RankStats:
    __slots__ = ("ks_plus", "mean_rank", "n")

    def __init__(self, mean_rank: float, ks_plus: float, n: int) -> None:
        self.mean_rank = mean_rank
        self.ks_plus = ks_plus
        self.n = n

    def t(self, center: float) -> float:
        """Standardised mean rank relative to ``center`` (negative: faster than the peers)."""
        return (self.mean_rank - center) * math.sqrt(12.0 * self.n)


def rank_stats(counts: dict[int, int], n: int, indices: list[int], cumulative: list[float]) -> RankStats:
    """Mean PIT value and one-sided KS distance of a batch's bucketed latencies against a peer CDF."""
    total = cumulative[-1]
    rank_sum = 0.0
    ks_plus = 0.0
    seen = 0
    for index in sorted(counts):
        c = counts[index]
        pos = bisect_left(indices, index)
        below = cumulative[pos - 1] if pos > 0 else 0.0
        at = cumulative[pos] - below if pos < len(indices) and indices[pos] == index else 0.0
        rank_sum += c * (below + 0.5 * at)
        seen += c
        # F_batch(x) - F_peers(x) at this bucket's upper edge (ties go to both sides alike).
        gap = seen / n - (below + at) / total
        ks_plus = max(ks_plus, gap)
    return RankStats(rank_sum / (total * n), ks_plus, n)


def error_z(errors: int, n: int, peer_ratio: float) -> float | None:
    """How unlikely so few errors are if the batch had the peers' error ratio, as a one-sided z
    (positive: fewer errors than expected). Exact binomial (mid-p) lower tail, since the expected count is
    small (a few errors per batch) and the normal approximation understates it. None when too few
    errors are expected to tell anything."""
    if peer_ratio * n < 2.0 or peer_ratio >= 1.0:
        return None
    # Mid-p lower tail P(X < errors) + P(X = errors) / 2 for X ~ Binomial(n, peer_ratio), in log
    # space (the mid-p value is the usual correction for the conservativeness of discrete tails).
    log_q = math.log1p(-peer_ratio)
    log_ratio = math.log(peer_ratio) - log_q
    term = n * log_q                      # log P(X = 0)
    total = 0.0
    for k in range(1, min(errors, n) + 1):
        total += math.exp(term)
        term += math.log((n - k + 1) / k) + log_ratio
    total += 0.5 * math.exp(term)
    tail = min(max(total, 1e-300), 1.0 - 1e-16)
    return -_NORMAL.inv_cdf(tail)
