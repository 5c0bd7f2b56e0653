"""Screening of metric batches: each source's values against the median of its peers.

A *metric group* is (tenant, service.name, metric name); a *source* is one principal reporting into
it. Each data point becomes one *reading* comparable across sources:

- gauge: its value;
- sum: its rate per second over the interval it covers (the difference from the series' previous
  point for cumulative sums, or from its start time for the first one; a drop is a counter reset and
  gives no reading);
- histogram, exponential histogram, summary: the mean of the interval (difference of sum over
  difference of count, likewise).

A batch's reading for a group is the median of its points' readings. Its *residual* is
log(reading / median of the other sources' latest readings), so it is free of the service's own
changes (a load spike or an incident moves every source, and so the peers' median, alike). Each
source's residuals are made robust against its own history (median/MAD of its accepted batches: one
cluster may always run a little hotter). Two rules, each with its reason:

- ``metric_outlier``: the residual is farther than ``z`` of the source's usual scatter from its usual
  *and* at least ``min_ratio`` times off its peers (smaller gaps are what deploys and hardware do);
- ``metric_drift``: a series' mean residual over the last ``drift_s`` seconds is at least
  ``drift_ratio`` times (and ``z`` standard errors) away from the source's *frozen* reference. The
  reference is taken after learning and re-taken every hour only when nothing of the source was
  flagged, so a slow "boiling frog" drift cannot drag it along; ``drift_s`` must be well longer than a
  rolling deploy, during which one cluster differs from the others for a while, genuinely.

Only readings of batches that were not flagged teach a source's baseline. State is bounded: groups,
sources per group and series are least recently used first out.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from processors.forgery.lru import touch
from processors.forgery.sketches import RobustZ

__all__ = ["MetricFinding", "MetricScreen", "readings"]

_NS = 1_000_000_000
PEER_MAX_AGE_S = 60.0        # a peer's latest reading counts this long
MIN_PEERS = 2
MIN_SOURCE_BATCHES = 16
# The frozen reference is a median of this many readings (its own error, about 1.25 sigma / sqrt(n),
# must stay well below the drift it is to reveal).
FREEZE_AFTER = 48
_MEDIAN_VARIANCE = math.pi / 2     # variance of a sample median, in sigma^2 / n, for normal data
# A histogram's mean or a sum's rate over fewer events than this is mostly counting noise: no reading.
MIN_EVENTS = 10
REFERENCE_REFRESH_S = 3600.0
# A cumulative series' first point seen gives a reading only if the series started at most this long
# before it (a process that just started); otherwise its previous point is needed.
FIRST_INTERVAL_MAX_S = 120.0


@dataclass(slots=True)
class _Point:
    time_ns: int
    count: float      # a sum's value, or a histogram's count
    total: float      # a histogram's sum (0 for sums)


@dataclass(slots=True)
class _Source:
    latest: float = 0.0
    latest_s: float = -1e18
    residual: RobustZ = field(default_factory=lambda: RobustZ(floor=0.02))
    frozen_center: float = math.nan
    frozen_spread: float = math.nan
    frozen_at: float = 0.0
    flagged_since_frozen: bool = False


    def to_dict(self) -> dict[str, Any]:
        """For a snapshot (processors/forgery/state.py); NaN (no frozen reference yet) as null."""
        def number(x: float) -> float | None:
            return None if math.isnan(x) else x
        return {"latest": [self.latest, self.latest_s], "residual": self.residual.to_dict(),
                "frozen": [number(self.frozen_center), number(self.frozen_spread), self.frozen_at,
                           self.flagged_since_frozen]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Source:
        center, spread, at, flagged = data["frozen"]
        return cls(float(data["latest"][0]), float(data["latest"][1]), RobustZ.from_dict(data["residual"]),
                   math.nan if center is None else float(center), math.nan if spread is None else float(spread),
                   float(at), bool(flagged))


@dataclass(slots=True)
class _Group:
    sources: OrderedDict[str, _Source] = field(default_factory=OrderedDict)


@dataclass(frozen=True, slots=True)
class MetricFinding:
    code: str       # metric_outlier | metric_drift
    detail: str


def readings(request: Any, previous: OrderedDict[tuple[Any, ...], _Point], prefix: tuple[str, ...],
             max_series: int) -> dict[tuple[str, str], dict[tuple[Any, ...], list[float]]]:
    """(service, metric) -> series key -> readings of one metrics request. ``previous`` holds each
    cumulative series' last point (keyed by ``prefix`` + the series), bounded to ``max_series``."""
    out: dict[tuple[str, str], dict[tuple[Any, ...], list[float]]] = {}
    for rm in request.resource_metrics:
        service = ""
        resource: list[tuple[str, str]] = []
        for kv in rm.resource.attributes:
            if kv.key == "service.name":
                service = kv.value.string_value
            else:
                resource.append((kv.key, kv.value.string_value))
        resource_key = tuple(resource)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                data = getattr(metric, kind)
                # Summaries carry no temporality: OTLP defines them as cumulative.
                cumulative = kind == "summary" or (kind != "gauge" and data.aggregation_temporality == 2)
                series_map = out.setdefault((service, metric.name), {})
                for point in data.data_points:
                    attrs = tuple((kv.key, kv.value.string_value) for kv in point.attributes)
                    series = (resource_key, attrs)
                    value = _reading(kind, point, cumulative, previous, (*prefix, service, metric.name, series))
                    if value is not None:
                        series_map.setdefault(series, []).append(value)
                while len(previous) > max_series:
                    previous.popitem(last=False)
    return out


def _reading(kind: str, point: Any, cumulative: bool, previous: OrderedDict[tuple[Any, ...], _Point],
             key: tuple[Any, ...]) -> float | None:
    if kind == "gauge":
        return float(point.as_double if point.WhichOneof("value") == "as_double" else point.as_int)
    if kind == "sum":
        count = float(point.as_double if point.WhichOneof("value") == "as_double" else point.as_int)
        total = 0.0
    else:
        count, total = float(point.count), float(point.sum)
    now = point.time_unix_nano
    if not cumulative:
        span_s = (now - point.start_time_unix_nano) / _NS
        if count < MIN_EVENTS or span_s <= 0:
            return None
        return count / span_s if kind == "sum" else total / count
    last = previous.get(key)
    previous[key] = _Point(now, count, total)
    previous.move_to_end(key)
    if last is None or last.time_ns < point.start_time_unix_nano:
        # The series' first point (or the first after a restart): the interval since its start, if
        # that is recent. A series that started long ago and that this worker has not seen before (it
        # restarted, or gained the service) would give its whole life's average: no reading until its
        # next point.
        if now - point.start_time_unix_nano > FIRST_INTERVAL_MAX_S * _NS:
            return None
        last = _Point(point.start_time_unix_nano, 0.0, 0.0)
    d_count, d_total = count - last.count, total - last.total
    span_s = (now - last.time_ns) / _NS
    if d_count < MIN_EVENTS or span_s <= 0:
        return None   # a counter reset, a point out of order or too few events: no reading
    if kind == "sum":
        return float(d_count / span_s)
    return float(d_total / d_count)


class MetricScreen:
    def __init__(self, *, z: float, min_ratio: float, drift_ratio: float, drift_s: float, max_groups: int,
                 max_sources_per_group: int, max_series: int) -> None:
        self._z = z
        self._min_gap = math.log(min_ratio)
        self._drift_gap = math.log(drift_ratio)
        self._drift_s = drift_s
        self._max_groups = max_groups
        self._max_sources = max_sources_per_group
        self._max_series = max_series
        self.groups: OrderedDict[tuple[str, str, str], _Group] = OrderedDict()
        self.previous: OrderedDict[tuple[Any, ...], _Point] = OrderedDict()
        # series -> its recent (time, residual), for the drift test
        self._windows: OrderedDict[tuple[Any, ...], deque[tuple[float, float]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.groups)

    def screen(self, tenant: str, principal: str, request: Any, now_s: float,
               judge: bool) -> tuple[list[MetricFinding], list[tuple[_Source, float, float]]]:
        """Findings for one metrics batch, and what it would teach (source, reading, residual) if accepted."""
        findings: list[MetricFinding] = []
        learn: list[tuple[_Source, float, float]] = []
        by_metric = readings(request, self.previous, (tenant, principal), self._max_series)
        for (service, name), series_map in by_metric.items():
            values = [v for vs in series_map.values() for v in vs]
            if not values:
                continue
            group = self._group((tenant, service, name))
            source = self._source(group, principal)
            reading = median(values)
            peers = [s.latest for p, s in group.sources.items()
                     if p != principal and now_s - s.latest_s <= PEER_MAX_AGE_S and s.latest > 0]
            if len(peers) < MIN_PEERS or reading <= 0:
                learn.append((source, reading, math.nan))
                continue
            peer_median = median(peers)
            residual = math.log(reading / peer_median)
            learn.append((source, reading, residual))
            if not judge or len(source.residual) < MIN_SOURCE_BATCHES:
                continue
            gap = abs(residual - source.residual.center)
            if gap >= self._min_gap and gap >= self._z * source.residual.spread:
                findings.append(MetricFinding("metric_outlier", (
                    f"{service}/{name}: {reading:.4g} is {math.exp(residual):.3g}x its peers' median {peer_median:.4g} "
                    f"(usually {math.exp(source.residual.center):.3g}x)")))
                continue
            if not math.isnan(source.frozen_center):
                finding = self._drift(tenant, principal, service, name, series_map, peer_median, source, now_s)
                if finding is not None:
                    findings.append(finding)
        return findings, learn

    def _drift(self, tenant: str, principal: str, service: str, name: str,
               series_map: dict[tuple[Any, ...], list[float]], peer_median: float, source: _Source,
               now_s: float) -> MetricFinding | None:
        """The mean residual of each series over the last ``drift_s`` against the frozen reference:
        averaging takes the counting noise out (its scatter shrinks with the square root of the number
        of readings), and a window longer than a rolling deploy keeps a cluster that changed a little
        ahead of the others from counting as a drift."""
        worst: MetricFinding | None = None
        for series, values in series_map.items():
            reading = median(values)
            if reading <= 0:
                continue
            key = (tenant, principal, service, name, series)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = deque()
                while len(self._windows) > self._max_series:
                    self._windows.popitem(last=False)
            else:
                self._windows.move_to_end(key)
            window.append((now_s, math.log(reading / peer_median)))
            while window and window[0][0] < now_s - self._drift_s:
                window.popleft()
            if now_s - window[0][0] < 0.8 * self._drift_s:
                continue   # not enough history for this series yet
            mean = sum(r for _, r in window) / len(window)
            # The standard error of the window's mean and of the frozen median it is compared with
            # (a median of n values scatters about 1.25 sigma / sqrt(n)).
            error = source.frozen_spread * math.sqrt(1.0 / len(window) + _MEDIAN_VARIANCE / FREEZE_AFTER)
            limit = max(self._drift_gap, self._z * error)
            if abs(mean - source.frozen_center) >= limit:
                worst = MetricFinding("metric_drift", (
                    f"{service}/{name}: {math.exp(mean):.3g}x its peers' median on average over the last "
                    f"{now_s - window[0][0]:.0f} s, against {math.exp(source.frozen_center):.3g}x when its "
                    "reference was taken"))
        return worst

    def accept(self, learn: list[tuple[_Source, float, float]], now_s: float) -> None:
        """A batch that was not flagged: its readings become the sources' latest, its residuals teach."""
        for source, reading, residual in learn:
            source.latest, source.latest_s = reading, now_s
            if math.isnan(residual):
                continue
            source.residual.add(residual)
            refresh = now_s - source.frozen_at >= REFERENCE_REFRESH_S and not source.flagged_since_frozen
            if len(source.residual) >= FREEZE_AFTER and (math.isnan(source.frozen_center) or refresh):
                source.frozen_center, source.frozen_spread = source.residual.center, source.residual.spread
                source.frozen_at, source.flagged_since_frozen = now_s, False

    @staticmethod
    def flagged(learn: list[tuple[_Source, float, float]]) -> None:
        for source, _, _ in learn:
            source.flagged_since_frozen = True

    def export_service(self, tenant: str, service: str) -> list[list[Any]]:
        """For a snapshot of one (tenant, service): each metric group's sources (latest reading, usual
        residuals, frozen reference). Series' last points and drift windows are not kept: after a
        restore each series gives a reading from its second point on, and a drift is judged once a
        window has filled again."""
        return [[name, [[principal, source.to_dict()] for principal, source in group.sources.items()]]
                for (t, s, name), group in self.groups.items() if t == tenant and s == service]

    def import_service(self, tenant: str, service: str, data: list[list[Any]]) -> None:
        """Merge a snapshot: sources held here already are kept as they are (they are newer)."""
        for name, sources in data:
            group = self._group((tenant, service, str(name)))
            for principal, source in sources:
                if str(principal) not in group.sources:
                    restored = _Source.from_dict(source)
                    touch(group.sources, str(principal), lambda: restored, self._max_sources)  # noqa: B023

    def _group(self, key: tuple[str, str, str]) -> _Group:
        return touch(self.groups, key, _Group, self._max_groups)[0]

    def _source(self, group: _Group, principal: str) -> _Source:
        return touch(group.sources, principal, _Source, self._max_sources)[0]
