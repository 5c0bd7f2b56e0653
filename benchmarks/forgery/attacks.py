"""Labelled attackers: each one holds a valid key of its tenant and sends forged batches of its kind.

An attacker exports like an SDK does (a batch every ``flush_s`` seconds), so its batches look like
any other in size and rhythm; only what they say is forged.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from benchmarks.forgery import metric_traffic
from benchmarks.forgery.scenario import Event
from benchmarks.forgery.traffic import (
    EPOCH_NS,
    NS,
    OPS,
    SERVER,
    Principal,
    RawSpan,
    World,
    build_request,
    latency_ns,
    poisson,
)
from schemas.envelope import Signal


@dataclass
class Emitted:
    """One batch as sent: who sent it, when it arrived, what it holds."""

    received_s: float
    tenant: str
    principal: str
    service: str
    request: Message
    server_ms: list[float] = field(default_factory=list)   # SERVER span durations (for the p99 figures)
    server_errors: int = 0
    signal: Signal = Signal.TRACES


@dataclass
class Captured:
    received_s: float
    principal: str
    service: str
    payload: bytes


class Context(Protocol):
    """What an attacker may know: the world (it sees the service it attacks), the real rate of a
    service's server spans, and batches it has captured off the wire earlier."""

    world: World
    def server_rate(self, tenant: str, service: str) -> float: ...
    def op_weights(self, tenant: str, service: str) -> list[tuple[str, float]]: ...
    def captured(self, tenant: str) -> deque[Captured]: ...
    def metric_truth(self, tenant: str, principal: str, service: str) -> tuple[float, float, float]: ...


class Attacker:
    flush_s = 5.0

    def __init__(self, event: Event, principal: Principal, ctx: Context, rng: random.Random) -> None:
        self.event = event
        self.principal = principal
        self.ctx = ctx
        self.rng = rng
        self._next_flush = event.start + rng.uniform(0, self.flush_s)
        self._pending: list[RawSpan] = []

    def tick(self, t: float) -> list[Emitted]:
        """Everything sent in [t, t + 1)."""
        if not self.event.active(t):
            return []
        self.produce(t)
        out = []
        while self._next_flush < t + 1:
            if self.event.active(self._next_flush):
                out += self.flush(self._next_flush)
            self._next_flush += self.flush_s
        return out

    def produce(self, t: float) -> None:
        """Make this second's forged spans (default: none)."""

    def flush(self, at: float) -> list[Emitted]:
        if not self._pending:
            return []
        spans, self._pending = self._pending, []
        service = self.event.service or "frontend"
        request = build_request(self.principal, service, spans, self.principal.hosts[0], self.clock_shift_ns())
        return [Emitted(at + 0.1, self.event.tenant, self.principal.name, service, request,
                        [(s.end_ns - s.start_ns) / 1e6 for s in spans if s.kind == SERVER],
                        sum(1 for s in spans if s.kind == SERVER and s.error))]

    def clock_shift_ns(self) -> int:
        return 0

    def fake_spans(self, t: float, count: int, latency_factor: float, error_ratio: float,
                   random_users: bool = False) -> None:
        rng = self.rng
        service = self.event.service or "frontend"
        weights = self.ctx.op_weights(self.event.tenant, service)
        names = [n for n, _ in weights]
        cumulative = list(_cumulative([w for _, w in weights]))
        users = self.ctx.world.users(self.event.tenant, t)
        for _ in range(count):
            name = rng.choices(names, cum_weights=cumulative)[0]
            op = OPS[f"{service}:{name}"]
            start = EPOCH_NS + int((t + rng.random()) * NS)
            duration = latency_ns(op, self.principal.speed * latency_factor, rng)
            if op.calls:   # the forger imitates the callee time a real span includes, roughly
                duration = int(duration * 1.25)
            user = rng.randbytes(6).hex() if random_users else f"user-{rng.randrange(users)}"
            attrs: tuple[tuple[str, str], ...] = (("http.request.method", name.split()[0]), ("http.route", name))
            if op.user:
                attrs += (("user.id", user),)
            self._pending.append(RawSpan(rng.randbytes(16), rng.randbytes(8), rng.randbytes(8), name, SERVER, start,
                                         start + duration, rng.random() < error_ratio, attrs))


def _cumulative(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for v in values:
        total += v
        out.append(total)
    return out


class MaskingFlood(Attacker):
    """During a real slowdown, fake fast, healthy spans: ``fraction`` of the service's volume."""

    def produce(self, t: float) -> None:
        fraction = self.event.params["fraction"]
        rate = self.ctx.server_rate(self.event.tenant, self.event.service or "") * fraction / (1 - fraction)
        self.fake_spans(t, poisson(rate, self.rng), 1.0, 0.0)   # as fast as before the incident


class ErrorMasking(Attacker):
    """During an error burst, fake spans with the current latency and no errors."""

    def produce(self, t: float) -> None:
        fraction = self.event.params["fraction"]
        service = self.event.service or ""
        rate = self.ctx.server_rate(self.event.tenant, service) * fraction / (1 - fraction)
        factor = self.ctx.world.latency_factor(self.event.tenant, self.principal.name, service, t)
        self.fake_spans(t, poisson(rate, self.rng), factor, 0.0)


class NewService(Attacker):
    """A key that never reported this service starts doing so, imitating its real reporters."""

    def produce(self, t: float) -> None:
        service = self.event.service or ""
        self.fake_spans(t, poisson(self.ctx.server_rate(self.event.tenant, service) / 4, self.rng), 1.0, 0.005)


class TimestampSkew(Attacker):
    """Plausible spans stamped minutes away from now (back-filling history, or pre-dating)."""

    def produce(self, t: float) -> None:
        service = self.event.service or ""
        factor = self.ctx.world.latency_factor(self.event.tenant, self.principal.name, service, t)
        self.fake_spans(t, poisson(self.ctx.server_rate(self.event.tenant, service) / 4, self.rng), factor, 0.005)

    def clock_shift_ns(self) -> int:
        return int(self.event.params["shift_s"] * NS)


class CardinalityExplosion(Attacker):
    """Spans whose user.id is a fresh random value every time (a cost attack on the backend's index)."""

    flush_s = 2.0

    def produce(self, t: float) -> None:
        self.fake_spans(t, poisson(20.0, self.rng), 1.0, 0.005, random_users=True)


class Replay(Attacker):
    """Re-sends batches captured off the wire 1-10 minutes earlier, as they were or re-stamped (new
    trace and span ids, every time shifted to now)."""

    def __init__(self, event: Event, principal: Principal, ctx: Context, rng: random.Random,
                 restamp: bool) -> None:
        super().__init__(event, principal, ctx, rng)
        self.restamp = restamp

    def flush(self, at: float) -> list[Emitted]:
        pool = [c for c in self.ctx.captured(self.event.tenant) if 60 <= at - c.received_s <= 600]
        if not pool:
            return []
        original = self.rng.choice(pool)
        request = ExportTraceServiceRequest.FromString(original.payload)
        if self.restamp:
            _restamp(request, int((at - original.received_s) * NS), self.rng)
        server = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans if s.kind == SERVER]
        return [Emitted(at + 0.1, self.event.tenant, original.principal, original.service, request,
                        [(s.end_time_unix_nano - s.start_time_unix_nano) / 1e6 for s in server],
                        sum(1 for s in server if s.status.code == 2))]


class MetricForger(Attacker):
    """Metric points of a series of its own (a host that does not exist) for one service, exported like
    an SDK's (cumulative), with the principal's true values times ``factor``."""

    flush_s = metric_traffic.EXPORT_S

    def __init__(self, event: Event, principal: Principal, ctx: Context, rng: random.Random) -> None:
        super().__init__(event, principal, ctx, rng)
        self._count = 0
        self._total_ms = 0.0

    def factor(self, at: float) -> float:
        raise NotImplementedError

    def flush(self, at: float) -> list[Emitted]:
        service = self.event.service or ""
        rate, mean_ms, cpu = self.ctx.metric_truth(self.event.tenant, self.principal.name, service)
        if rate <= 0:
            return []
        factor = self.factor(at)
        added = max(1, round(rate * self.flush_s))
        self._count += added
        self._total_ms += added * mean_ms * factor
        # Its process "started" one export before the attack, like any series already running.
        started = self.event.start - self.flush_s
        request = metric_traffic.build_request(service, f"{self.principal.hosts[0]}-x", started, at,
                                               self._count, self._total_ms, cpu * factor)
        return [Emitted(at + 0.1, self.event.tenant, self.principal.name, service, request, signal=Signal.METRICS)]


class MetricOutliers(MetricForger):
    """Spikes (or dips) of 4 to 20 times the truth: false alerts on demand, or hidden ones."""

    def factor(self, at: float) -> float:
        size = self.rng.uniform(4.0, 20.0)
        return size if self.rng.random() < 0.5 else 1.0 / size


class MetricDrift(MetricForger):
    """A "boiling frog": the reported latency creeps from the truth down to half of it over the attack,
    so that a real degradation later looks normal."""

    def factor(self, at: float) -> float:
        progress = min(max((at - self.event.start) / (self.event.end - self.event.start), 0.0), 1.0)
        return math.exp(math.log(0.5) * progress)


def _restamp(request: ExportTraceServiceRequest, shift_ns: int, rng: random.Random) -> None:
    traces: dict[bytes, bytes] = {}
    spans: dict[bytes, bytes] = {}
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                s.trace_id = traces.setdefault(s.trace_id, rng.randbytes(16))
                s.span_id = spans.setdefault(s.span_id, rng.randbytes(8))
                if s.parent_span_id:
                    s.parent_span_id = spans.setdefault(s.parent_span_id, rng.randbytes(8))
                s.start_time_unix_nano += shift_ns
                s.end_time_unix_nano += shift_ns


def make(event: Event, principals: dict[str, Principal], ctx: Context, rng: random.Random) -> Attacker:
    """The attacker for an attack event (its principal: the event's, or the tenant's first key)."""
    principal = principals[event.principal] if event.principal else next(iter(principals.values()))
    kind = event.kind
    if kind.startswith("masking_flood"):
        return MaskingFlood(event, principal, ctx, rng)
    if kind == "error_masking":
        return ErrorMasking(event, principal, ctx, rng)
    if kind == "new_service":
        return NewService(event, principal, ctx, rng)
    if kind == "timestamp_skew":
        return TimestampSkew(event, principal, ctx, rng)
    if kind == "cardinality_explosion":
        return CardinalityExplosion(event, principal, ctx, rng)
    if kind in ("replay_exact", "replay_restamped"):
        return Replay(event, principal, ctx, rng, restamp=kind == "replay_restamped")
    if kind == "metric_outliers":
        return MetricOutliers(event, principal, ctx, rng)
    if kind == "metric_drift":
        return MetricDrift(event, principal, ctx, rng)
    raise ValueError(f"no attacker for {kind!r}")


__all__ = ["Attacker", "Captured", "Context", "Emitted", "make"]
