"""What the forgery stage remembers about each source, in-process and bounded.

A *group* is (tenant, service.name, span name); a *source* is one principal (API key id) reporting
into a group. Peers of a source are the other sources of its group: the detector asks whether one
source's data agrees with what the others report about the same operation *now*.

Everything here is least-recently-used bounded (groups, span names per service, sources per group),
so an attacker who invents service or span names cannot grow memory, only push out stale state.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from processors.forgery.lru import touch
from processors.forgery.sketches import DecayedCount, DecayedHistogram, RobustZ, cumulative

__all__ = ["BaselineStore", "Group", "PrincipalState", "Source", "TenantState"]

OTHER_SPAN_NAME = "~other"   # span names beyond a service's cap share one group
# Baselines that may move only this far from their frozen reference (see Source.center).
MAX_MEAN_RANK_DRIFT = 0.1
MAX_SHARE_DRIFT = 0.1
# A frozen reference is re-taken this often, and only from a source with no flag since the last one.
REFERENCE_REFRESH_S = 3600.0
CDF_MAX_AGE_S = 1.0
# Source fields saved as they are (their types are restored from the defaults).
_SOURCE_SCALARS = ("share_ref", "frozen_rank", "frozen_share", "frozen_at", "flagged_since_frozen", "latency_cusum",
                   "last_latency", "last_latency_s", "last_t", "last_error", "last_error_s", "accepted_batches",
                   "last_s")


@dataclass(slots=True)
class Source:
    """One principal within one group."""

    recent: DecayedHistogram        # latencies of its accepted (low-score) spans
    errors: DecayedCount            # accepted error spans ...
    spans: DecayedCount             # ... of accepted spans
    volume: DecayedCount            # every span that arrived, accepted or not (volume is what arrives)
    mean_rank: RobustZ = field(default_factory=lambda: RobustZ(floor=0.0))   # batch mean PIT vs peers
    latency_t: RobustZ = field(default_factory=RobustZ)     # its standardised residual
    error_t: RobustZ = field(default_factory=RobustZ)
    share_residual: RobustZ = field(default_factory=lambda: RobustZ(floor=0.01))
    share_ref: float = -1.0         # usual share of the group's volume (-1: not known yet)
    frozen_rank: float = -1.0       # frozen references (-1: not taken yet)
    frozen_share: float = -1.0
    frozen_at: float = 0.0
    flagged_since_frozen: bool = False
    latency_cusum: float = 0.0
    last_latency: float = 0.0       # its latest "faster than usual" z, for its peers' common mode
    last_latency_s: float = -1e18
    last_t: float = 0.0             # its latest raw standardised mean rank
    last_error: float = 0.0
    last_error_s: float = -1e18
    accepted_batches: int = 0
    last_s: float = 0.0

    def rank_center(self) -> float:
        """The source's usual mean rank against its peers, held within MAX_MEAN_RANK_DRIFT of the frozen
        reference: a source pushed slowly ("boiling frog") cannot drag its own baseline along."""
        if len(self.mean_rank) == 0:
            return 0.5   # what a source that agrees with its peers shows
        center = self.mean_rank.center
        if self.frozen_rank < 0:
            return center
        return min(max(center, self.frozen_rank - MAX_MEAN_RANK_DRIFT), self.frozen_rank + MAX_MEAN_RANK_DRIFT)

    def share_center(self) -> float:
        if self.frozen_share < 0:
            return self.share_ref
        return min(max(self.share_ref, self.frozen_share - MAX_SHARE_DRIFT), self.frozen_share + MAX_SHARE_DRIFT)

    def maybe_freeze(self, now_s: float, min_batches: int) -> None:
        """Take the frozen references once the source has a baseline for each, then re-take them every
        REFERENCE_REFRESH_S if nothing of it was flagged meanwhile."""
        refresh = now_s - self.frozen_at >= REFERENCE_REFRESH_S and not self.flagged_since_frozen
        took = False
        if len(self.mean_rank) >= min_batches and (self.frozen_rank < 0 or refresh):
            self.frozen_rank = self.mean_rank.center
            took = True
        if self.accepted_batches >= min_batches and self.share_ref >= 0 and (self.frozen_share < 0 or refresh):
            self.frozen_share = self.share_ref
            took = True
        if took:
            self.frozen_at = now_s
            self.flagged_since_frozen = False

    def to_dict(self) -> dict[str, Any]:
        """Everything the source has learned, for a snapshot (processors/forgery/state.py)."""
        return {"recent": self.recent.to_dict(), "errors": self.errors.to_dict(), "spans": self.spans.to_dict(),
                "volume": self.volume.to_dict(), "mean_rank": self.mean_rank.to_dict(),
                "latency_t": self.latency_t.to_dict(), "error_t": self.error_t.to_dict(),
                "share_residual": self.share_residual.to_dict(),
                "scalars": [getattr(self, name) for name in _SOURCE_SCALARS]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], recent_half_life_s: float, volume_half_life_s: float) -> Source:
        source = cls(DecayedHistogram.from_dict(data["recent"], recent_half_life_s),
                     DecayedCount.from_dict(data["errors"], recent_half_life_s),
                     DecayedCount.from_dict(data["spans"], recent_half_life_s),
                     DecayedCount.from_dict(data["volume"], volume_half_life_s),
                     mean_rank=RobustZ.from_dict(data["mean_rank"]), latency_t=RobustZ.from_dict(data["latency_t"]),
                     error_t=RobustZ.from_dict(data["error_t"]),
                     share_residual=RobustZ.from_dict(data["share_residual"]))
        for name, value in zip(_SOURCE_SCALARS, data["scalars"], strict=True):
            setattr(source, name, type(getattr(source, name))(value))
        return source


@dataclass(slots=True)
class Group:
    """(tenant, service, span name): every source's data together, and each source apart."""

    everyone: DecayedHistogram
    errors: DecayedCount
    spans: DecayedCount
    volume: DecayedCount
    sources: OrderedDict[str, Source] = field(default_factory=OrderedDict)
    # everyone's latency distribution, rebuilt at most every CDF_MAX_AGE_S (it moves slowly and
    # rebuilding it per batch was the costliest step of scoring)
    cdf: tuple[list[int], list[float]] = field(default_factory=lambda: ([], []))
    cdf_at: float = -1e18

    def latency_cdf(self, now_s: float) -> tuple[list[int], list[float]]:
        if now_s - self.cdf_at > CDF_MAX_AGE_S or now_s < self.cdf_at:
            self.cdf = cumulative(self.everyone, now_s)
            self.cdf_at = now_s
        return self.cdf

    def to_dict(self) -> dict[str, Any]:
        """The group and its sources (least recently seen first), for a snapshot; the CDF cache is rebuilt."""
        return {"everyone": self.everyone.to_dict(), "errors": self.errors.to_dict(), "spans": self.spans.to_dict(),
                "volume": self.volume.to_dict(),
                "sources": [[principal, source.to_dict()] for principal, source in self.sources.items()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], recent_half_life_s: float, volume_half_life_s: float) -> Group:
        group = cls(DecayedHistogram.from_dict(data["everyone"], recent_half_life_s),
                    DecayedCount.from_dict(data["errors"], recent_half_life_s),
                    DecayedCount.from_dict(data["spans"], recent_half_life_s),
                    DecayedCount.from_dict(data["volume"], volume_half_life_s))
        for principal, source in data["sources"]:
            group.sources[str(principal)] = Source.from_dict(source, recent_half_life_s, volume_half_life_s)
        return group


@dataclass(slots=True)
class PrincipalState:
    """One principal's timing habits (lag = received_at - span end)."""

    lag: RobustZ = field(default_factory=lambda: RobustZ(floor=1.0))


@dataclass(slots=True)
class TenantState:
    first_s: float
    # service -> principals seen reporting it (learned during learning, or accepted/allow-listed later)
    reporters: dict[str, set[str]] = field(default_factory=dict)


class BaselineStore:
    """Every group, principal and tenant, least recently used first out."""

    def __init__(self, *, max_groups: int, max_span_names_per_service: int, max_sources_per_group: int,
                 recent_half_life_s: float, volume_half_life_s: float) -> None:
        self._max_groups = max_groups
        self._max_names = max_span_names_per_service
        self._max_sources = max_sources_per_group
        self._recent_h = recent_half_life_s
        self._volume_h = volume_half_life_s
        self.groups: OrderedDict[tuple[str, str, str], Group] = OrderedDict()
        self._names: dict[tuple[str, str], OrderedDict[str, None]] = {}
        self.principals: OrderedDict[tuple[str, str], PrincipalState] = OrderedDict()
        self.tenants: dict[str, TenantState] = {}
        self.evictions = 0

    def tenant(self, tenant: str, now_s: float) -> TenantState:
        state = self.tenants.get(tenant)
        if state is None:
            state = self.tenants[tenant] = TenantState(first_s=now_s)
        return state

    def principal(self, tenant: str, principal: str) -> PrincipalState:
        state, evicted = touch(self.principals, (tenant, principal), PrincipalState, self._max_groups)
        if evicted is not None:
            self.evictions += 1
        return state

    def span_name(self, tenant: str, service: str, name: str) -> str:
        """The group name for a span name: itself while the service has room, else OTHER_SPAN_NAME."""
        names = self._names.setdefault((tenant, service), OrderedDict())
        if name in names:
            names.move_to_end(name)
            return name
        if len(names) >= self._max_names:
            return OTHER_SPAN_NAME
        names[name] = None
        return name

    def group(self, key: tuple[str, str, str], now_s: float) -> Group:
        group, evicted = touch(self.groups, key, lambda: Group(
            DecayedHistogram(self._recent_h, now_s), DecayedCount(self._recent_h, now_s),
            DecayedCount(self._recent_h, now_s), DecayedCount(self._volume_h, now_s)), self._max_groups)
        if evicted is not None:
            (tenant, service, name), _ = evicted
            names = self._names.get((tenant, service))
            if names is not None:
                names.pop(name, None)
            self.evictions += 1
        return group

    def source(self, group: Group, principal: str, now_s: float) -> Source:
        source, evicted = touch(group.sources, principal, lambda: Source(
            DecayedHistogram(self._recent_h, now_s), DecayedCount(self._recent_h, now_s),
            DecayedCount(self._recent_h, now_s), DecayedCount(self._volume_h, now_s)), self._max_sources)
        if evicted is not None:
            self.evictions += 1
        source.last_s = now_s
        return source

    # ------------------------------------------------------------------ snapshots (processors/forgery/state.py)

    def export_tenant(self, tenant: str) -> dict[str, Any] | None:
        """What the tenant as a whole has learned (its start and its principals' timing), or None if unknown."""
        state = self.tenants.get(tenant)
        if state is None:
            return None
        return {"first_s": state.first_s,
                "principals": [[principal, p.lag.to_dict()] for (t, principal), p in self.principals.items()
                               if t == tenant]}

    def import_tenant(self, tenant: str, data: dict[str, Any]) -> None:
        """Merge a tenant snapshot: the earlier start wins, principals already known here are kept."""
        first_s = float(data["first_s"])
        state = self.tenants.get(tenant)
        if state is None:
            self.tenants[tenant] = TenantState(first_s=first_s)
        else:
            state.first_s = min(state.first_s, first_s)
        for principal, lag in data["principals"]:
            key = (tenant, str(principal))
            if key not in self.principals:
                self.principal(*key).lag = RobustZ.from_dict(lag)

    def export_service(self, tenant: str, service: str) -> dict[str, Any]:
        """Every group of one (tenant, service), its span names and the principals known to report it."""
        names = list(self._names.get((tenant, service), ()))
        groups = []
        for name in (*names, OTHER_SPAN_NAME):
            group = self.groups.get((tenant, service, name))
            if group is not None:
                groups.append([name, group.to_dict()])
        tenant_state = self.tenants.get(tenant)
        reporters = sorted(tenant_state.reporters.get(service, ())) if tenant_state is not None else []
        return {"names": names, "groups": groups, "reporters": reporters}

    def import_service(self, tenant: str, service: str, data: dict[str, Any], now_s: float) -> None:
        """Merge a (tenant, service) snapshot: groups already held here are kept as they are, reporters are
        united, and the usual bounds apply (span names per service, groups)."""
        names = self._names.setdefault((tenant, service), OrderedDict())
        for name in data["names"]:
            if len(names) >= self._max_names:
                break
            names.setdefault(str(name), None)
        for name, group in data["groups"]:
            key = (tenant, service, str(name))
            if key in self.groups or (key[2] not in names and key[2] != OTHER_SPAN_NAME):
                continue
            # Restored because this service has data now: it joins as recently used, the oldest go.
            self.groups[key] = Group.from_dict(group, self._recent_h, self._volume_h)
            if len(self.groups) > self._max_groups:
                (old_tenant, old_service, old_name), _ = self.groups.popitem(last=False)
                self._names.get((old_tenant, old_service), OrderedDict()).pop(old_name, None)
                self.evictions += 1
        if data["reporters"]:
            self.tenant(tenant, now_s).reporters.setdefault(service, set()).update(str(p) for p in data["reporters"])
