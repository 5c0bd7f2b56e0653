"""Seeded multi-tenant trace traffic for the forgery evaluation.

Each tenant runs the same small shop: a service graph with callers and callees (frontend -> cart,
search, checkout -> payments, inventory), lognormal own-latencies that add up along the call chain,
a daily load cycle compressed into ``day_s`` seconds, and several principals (API keys), each one
cluster running most of the services. Every (principal, service) exports a batch every ``flush_s``
seconds with the spans that *ended* since its last export, as an SDK's batch processor does.

What the world does at any instant (incidents, deploys, spikes, clock skew, a growing user base) is
asked of a :class:`World` the scenario provides, so the same generator serves clean traffic,
benign confounders and the legitimate side of every attack.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

NS = 1_000_000_000
EPOCH_NS = 1_764_000_000 * NS
SERVER, CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT


@dataclass(frozen=True)
class Op:
    service: str
    name: str
    median_ms: float
    sigma: float
    calls: tuple[tuple[str, float], ...] = ()   # (callee op id "service:name", probability)
    user: bool = False                           # carries user.id


def _ops() -> dict[str, Op]:
    ops = [
        Op("frontend", "GET /", 8, 0.4, (("search:GET /search", 0.5), ("cart:GET /cart", 0.4)), user=True),
        Op("frontend", "POST /checkout", 15, 0.4, (("checkout:POST /orders", 1.0),), user=True),
        Op("frontend", "GET /product/{id}", 6, 0.4, (("inventory:GET /stock", 0.7),), user=True),
        Op("search", "GET /search", 25, 0.5, (("inventory:GET /stock", 0.3),)),
        Op("cart", "GET /cart", 12, 0.45, (("inventory:GET /stock", 0.3),), user=True),
        Op("cart", "POST /cart/items", 18, 0.45, (), user=True),
        Op("checkout", "POST /orders", 40, 0.5, (("payments:POST /charge", 1.0), ("inventory:POST /reserve", 1.0)),
           user=True),
        Op("payments", "POST /charge", 120, 0.55),
        Op("inventory", "GET /stock", 5, 0.35),
        Op("inventory", "POST /reserve", 9, 0.4),
        Op("recommendations", "GET /recs", 30, 0.5),   # rolled out later, through an allow-list
    ]
    return {f"{o.service}:{o.name}": o for o in ops}


OPS = _ops()
ROOTS = (("frontend:GET /", 0.6), ("frontend:GET /product/{id}", 0.25), ("frontend:POST /checkout", 0.1),
         ("cart:POST /cart/items", 0.05))
SERVICES = tuple(sorted({o.service for o in OPS.values()} - {"recommendations"}))


class World(Protocol):
    """What the scenario says about the world at time t (seconds since the start)."""

    def latency_factor(self, tenant: str, principal: str, service: str, t: float) -> float: ...
    def error_ratio(self, tenant: str, service: str, t: float) -> float: ...
    def rate_factor(self, tenant: str, t: float) -> float: ...
    def clock_offset_s(self, tenant: str, principal: str, t: float) -> float: ...
    def users(self, tenant: str, t: float) -> int: ...
    def extra_services(self, tenant: str, principal: str, t: float) -> tuple[str, ...]: ...


@dataclass(slots=True)
class RawSpan:
    trace_id: bytes
    span_id: bytes
    parent: bytes
    name: str
    kind: int
    start_ns: int
    end_ns: int
    error: bool
    attrs: tuple[tuple[str, str], ...]


@dataclass
class Principal:
    tenant: str
    name: str
    services: tuple[str, ...]
    speed: float            # this cluster's systematic latency factor (hardware, region)
    hosts: tuple[str, ...]


@dataclass
class Tenant:
    name: str
    principals: list[Principal]
    roots_per_s: float      # per principal, at the daily mean


def make_tenants(count: int, principals: int, roots_per_s: float, rng: random.Random) -> list[Tenant]:
    tenants = []
    for i in range(count):
        name = f"tenant-{i}"
        members = []
        for j in range(principals):
            # The last principal of each tenant does not run search: it can later "start reporting" it.
            services = tuple(s for s in SERVICES if not (j == principals - 1 and s == "search"))
            members.append(Principal(name, f"key-{i}-{j}", services, rng.uniform(0.9, 1.1),
                                     tuple(f"ip-10-{i}-{j}-{h}" for h in range(3))))
        tenants.append(Tenant(name, members, roots_per_s))
    return tenants


def poisson(lam: float, rng: random.Random) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    threshold, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= threshold:
            return k
        k += 1


def latency_ns(op: Op, factor: float, rng: random.Random) -> int:
    return int(rng.lognormvariate(math.log(op.median_ms * 1e6 * factor), op.sigma))


@dataclass
class TraceMaker:
    """Builds one request's spans through the service graph."""

    world: World
    rng: random.Random
    day_s: float
    spans: dict[str, list[RawSpan]] = field(default_factory=dict)   # service -> spans of this trace

    def trace(self, p: Principal, root: str, start_ns: int, t: float) -> dict[str, list[RawSpan]]:
        self.spans = {}
        trace_id = self.rng.randbytes(16)
        user = f"user-{self.rng.randrange(max(1, self.world.users(p.tenant, t)))}"
        self._server(p, OPS[root], trace_id, b"", start_ns, t, user)
        return self.spans

    def _server(self, p: Principal, op: Op, trace_id: bytes, parent: bytes, start_ns: int, t: float,
                user: str) -> int:
        rng = self.rng
        span_id = rng.randbytes(8)
        own = latency_ns(op, p.speed * self.world.latency_factor(p.tenant, p.name, op.service, t), rng)
        cursor = start_ns + own // 2
        for callee_id, probability in op.calls:
            callee = OPS[callee_id]
            if rng.random() >= probability or callee.service not in p.services:
                continue
            client_id = rng.randbytes(8)
            net = int(rng.lognormvariate(math.log(0.4e6), 0.3))
            child_end = self._server(p, callee, trace_id, client_id, cursor + net // 2, t, user)
            client_end = child_end + net // 2
            self.spans.setdefault(op.service, []).append(RawSpan(
                trace_id, client_id, span_id, callee.name, CLIENT, cursor, client_end, False,
                (("peer.service", callee.service), ("http.request.method", callee.name.split()[0]))))
            cursor = client_end
        end = cursor + own - own // 2
        error = rng.random() < self.world.error_ratio(p.tenant, op.service, t)
        attrs: tuple[tuple[str, str], ...] = (("http.request.method", op.name.split()[0]), ("http.route", op.name))
        if op.user:
            attrs += (("user.id", user),)
        if op.service == "frontend":
            attrs += (("request.id", rng.randbytes(8).hex()),)
        self.spans.setdefault(op.service, []).append(
            RawSpan(trace_id, span_id, parent, op.name, SERVER, start_ns, end, error, attrs))
        return end


def build_request(p: Principal, service: str, spans: list[RawSpan], host: str,
                  clock_offset_ns: int = 0) -> ExportTraceServiceRequest:
    """One SDK export: one resource (the service on one host), one scope, its spans."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", service), _kv("service.version", "2.3.1"),
                                   _kv("host.name", host), _kv("cloud.region", "eu-west-1")])
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.shop"
    out = ss.spans
    for s in spans:
        span = out.add(trace_id=s.trace_id, span_id=s.span_id, parent_span_id=s.parent, name=s.name, kind=s.kind,
                       start_time_unix_nano=s.start_ns + clock_offset_ns, end_time_unix_nano=s.end_ns + clock_offset_ns)
        if s.error:
            span.status.code = Status.STATUS_CODE_ERROR
        span.attributes.extend([_kv(k, v) for k, v in s.attrs])
    return request


def _kv(key: str, value: str) -> KeyValue:
    kv = KeyValue(key=key)
    kv.value.string_value = value
    return kv


def daily_cycle(t: float, day_s: float) -> float:
    """Load relative to the daily mean: a trough at "night", a peak in the "afternoon"."""
    return 1.0 + 0.4 * math.sin(2 * math.pi * t / day_s - math.pi / 2)
