"""The evaluation's timeline: benign confounders, real incidents and labelled attacks, per tenant.

Every event has a kind, a tenant, a time span and what it touches. The world (latency, errors,
load, clocks, user base, services) is derived from the events, and so are the labels of the
legitimate batches: a batch touched by a confounder is a *confounder batch*, one sent while an
attack runs in its tenant is a *legitimate batch during an attack*, anything else is *clean*.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from benchmarks.forgery.traffic import Tenant, daily_cycle

CONFOUNDERS = ("deploy_shift", "deploy_speedup", "traffic_spike", "new_allowed_service", "clock_skew",
               "cardinality_growth", "incident_slowdown", "incident_error_burst", "counter_reset")
ATTACKS = ("masking_flood_5", "masking_flood_30", "masking_flood_50", "error_masking", "new_service",
           "replay_exact", "replay_restamped", "timestamp_skew", "cardinality_explosion", "metric_outliers",
           "metric_drift")
METRIC_ATTACKS = ("metric_outliers", "metric_drift")
MASKED_SERVICE = "cart"
NEW_SERVICE = "recommendations"
BASE_ERROR_RATIO = 0.005
BASE_USERS = 300


@dataclass
class Event:
    kind: str
    tenant: str
    start: float
    end: float
    service: str | None = None          # None: every service
    principal: str | None = None        # None: every principal
    tail_s: float = 120.0               # how long after the end its batches still count as touched
    params: dict[str, float] = field(default_factory=dict)
    offsets: dict[str, float] = field(default_factory=dict)   # per-principal start offsets (rolling deploys)
    id: int = 0

    @property
    def is_attack(self) -> bool:
        return self.kind in ATTACKS

    def active(self, t: float) -> bool:
        return self.start <= t < self.end

    def touches(self, tenant: str, principal: str, service: str, t: float) -> bool:
        return (tenant == self.tenant and self.start <= t < self.end + self.tail_s
                and (self.service is None or self.service == service)
                and (self.principal is None or self.principal == principal))


@dataclass
class Scenario:
    tenants: list[Tenant]
    events: list[Event]
    duration_s: float
    day_s: float
    learning_s: float

    def by_tenant(self, tenant: str) -> list[Event]:
        return [e for e in self.events if e.tenant == tenant]


class ScenarioWorld:
    """The World protocol of traffic.py, answered from the scenario's events."""

    def __init__(self, scenario: Scenario) -> None:
        self._scenario = scenario
        self._events: dict[str, list[Event]] = {t.name: scenario.by_tenant(t.name) for t in scenario.tenants}

    def latency_factor(self, tenant: str, principal: str, service: str, t: float) -> float:
        factor = 1.0
        for e in self._events[tenant]:
            if e.service != service:
                continue
            if e.kind == "incident_slowdown" and e.active(t):
                factor *= e.params["factor"]
            elif e.kind in ("deploy_shift", "deploy_speedup"):
                # A rolling deploy: each principal's cluster switches at its own offset, and rolls back alike.
                offset = e.offsets.get(principal, 0.0)
                if e.start + offset <= t < e.end + offset:
                    factor *= e.params["factor"]
        return factor

    def error_ratio(self, tenant: str, service: str, t: float) -> float:
        for e in self._events[tenant]:
            if e.kind == "incident_error_burst" and e.service == service and e.active(t):
                return e.params["ratio"]
        return BASE_ERROR_RATIO

    def rate_factor(self, tenant: str, t: float) -> float:
        factor = daily_cycle(t, self._scenario.day_s)
        for e in self._events[tenant]:
            if e.kind == "traffic_spike" and e.active(t):
                factor *= e.params["factor"]
        return factor

    def clock_offset_s(self, tenant: str, principal: str, t: float) -> float:
        for e in self._events[tenant]:
            if e.kind == "clock_skew" and e.principal == principal and e.active(t):
                return e.params["offset_s"]
        return 0.0

    def users(self, tenant: str, t: float) -> int:
        for e in self._events[tenant]:
            if e.kind == "cardinality_growth" and t >= e.start:
                grown = min(1.0, (t - e.start) / (e.end - e.start))
                return int(BASE_USERS + grown * (e.params["users"] - BASE_USERS))
        return BASE_USERS

    def extra_services(self, tenant: str, principal: str, t: float) -> tuple[str, ...]:
        return tuple(NEW_SERVICE for e in self._events[tenant]
                     if e.kind == "new_allowed_service" and e.principal == principal and t >= e.start)


def build(tenants: list[Tenant], kinds: list[str], slot_s: float, warm_s: float, learning_s: float, day_s: float,
          rng: random.Random) -> Scenario:
    """Spread the events over the tenants, one per slot, each slot long enough for its effects to fade."""
    events: list[Event] = []
    slots: dict[str, int] = {t.name: 0 for t in tenants}
    for i, kind in enumerate(kinds):
        tenant = tenants[i % len(tenants)]
        start_slot = warm_s + slots[tenant.name] * slot_s
        slots[tenant.name] += 1
        events += _event(kind, tenant, start_slot, slot_s, rng)
    for n, e in enumerate(events):
        e.id = n
    duration = warm_s + max(slots.values()) * slot_s
    return Scenario(tenants, events, duration, day_s, learning_s)


def _event(kind: str, tenant: Tenant, slot: float, slot_s: float, rng: random.Random) -> list[Event]:
    name = tenant.name
    first, last = tenant.principals[0].name, tenant.principals[-1].name
    start, end = slot + 30, slot + slot_s * 0.75
    if kind.startswith("masking_flood"):
        # A real slowdown of the cart service; the attacker starts flooding a minute and a half in.
        fraction = int(kind.rsplit("_", 1)[1]) / 100
        return [Event("incident_slowdown", name, start, end, MASKED_SERVICE, params={"factor": 3.0}),
                Event(kind, name, start + 90, end - 30, MASKED_SERVICE, first, tail_s=0,
                      params={"fraction": fraction})]
    if kind == "error_masking":
        return [Event("incident_error_burst", name, start, end, MASKED_SERVICE, params={"ratio": 0.2}),
                Event(kind, name, start + 60, end - 30, MASKED_SERVICE, first, tail_s=0, params={"fraction": 0.3})]
    if kind == "new_service":
        return [Event(kind, name, start, end, "search", last, tail_s=0)]
    if kind in ("replay_exact", "replay_restamped"):
        return [Event(kind, name, start, end, None, None, tail_s=0)]
    if kind == "timestamp_skew":
        shift = rng.choice([-1200.0, -600.0, -180.0, 90.0, 240.0])
        return [Event(kind, name, start, end, MASKED_SERVICE, first, tail_s=0, params={"shift_s": shift})]
    if kind == "cardinality_explosion":
        return [Event(kind, name, start, end, MASKED_SERVICE, first, tail_s=0)]
    if kind == "deploy_shift":
        return [Event(kind, name, start, end, "search", None, params={"factor": 1.5},
                      offsets={p.name: rng.uniform(0, 120) for p in tenant.principals})]
    if kind == "deploy_speedup":
        # An optimisation rolled out cluster by cluster: each one, in turn, is faster than its peers.
        return [Event(kind, name, start, end, MASKED_SERVICE, None, params={"factor": 0.7},
                      offsets={p.name: rng.uniform(0, 120) for p in tenant.principals})]
    if kind == "traffic_spike":
        return [Event(kind, name, start, start + 180, None, None, params={"factor": 2.5})]
    if kind == "new_allowed_service":
        return [Event(kind, name, start, end, NEW_SERVICE, tenant.principals[1].name, tail_s=0)]
    if kind == "clock_skew":
        return [Event(kind, name, start, end, None, last, tail_s=0, params={"offset_s": rng.choice([-8.0, 8.0])})]
    if kind == "cardinality_growth":
        return [Event(kind, name, start, end, None, None, tail_s=300, params={"users": 3000})]
    if kind == "incident_slowdown":
        return [Event(kind, name, start, start + 300, MASKED_SERVICE, params={"factor": 3.0})]
    if kind in METRIC_ATTACKS:
        # Forged metric points from the first key: spikes on cart, a slow downward creep on search.
        return [Event(kind, name, start, end, "cart" if kind == "metric_outliers" else "search", first, tail_s=0)]
    if kind == "counter_reset":
        # One cluster's cart processes restart: every cumulative series starts again from zero.
        return [Event(kind, name, start, start + 30, MASKED_SERVICE, last, tail_s=120)]
    if kind == "incident_error_burst":
        return [Event(kind, name, start, start + 240, MASKED_SERVICE, params={"ratio": 0.2})]
    raise ValueError(f"unknown event kind {kind!r}")
