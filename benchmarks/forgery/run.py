"""Drive the forgery processor with a scenario's batches, second by second, and record every verdict.

No Kafka: each batch becomes a processors.base.Batch as the stage runtime would build it (the
envelope's tenant, principal, batch id and received-at), goes through ``screen`` and ``act``, and
its score, reasons and label are kept. CPU time of the processor is measured per batch.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from benchmarks.forgery import attacks, metric_traffic
from benchmarks.forgery.attacks import Captured, Emitted
from benchmarks.forgery.scenario import MASKED_SERVICE, Event, Scenario, ScenarioWorld
from benchmarks.forgery.traffic import (
    EPOCH_NS,
    NS,
    OPS,
    ROOTS,
    SERVER,
    Principal,
    RawSpan,
    TraceMaker,
    build_request,
    poisson,
)
from processors.base import Batch
from processors.forgery import ForgeryProcessor
from processors.otlp import count_items
from schemas.envelope import Signal

FLUSH_S = 5.0
EXTRA_ROOTS_PER_S = 2.0


@dataclass
class Record:
    t: float
    tenant: str
    principal: str
    service: str
    label: str            # clean | confounder | attack | legit_during_attack
    event: str            # the event's kind ("" when clean)
    event_id: int         # -1 when clean
    spans: int            # spans, or metric data points
    score: float
    codes: tuple[str, ...]
    reasons: tuple[str, ...] = ()
    signal: str = "traces"


@dataclass
class ServiceSample:
    """SERVER spans of the attacked service during an attack on it, for the observed-p99 figures."""

    event_id: int
    t: float
    durations_ms: list[float]
    errors: int
    real: bool
    score: float


@dataclass
class Outcome:
    records: list[Record] = field(default_factory=list)
    samples: list[ServiceSample] = field(default_factory=list)
    cpu_ns: dict[str, int] = field(default_factory=dict)      # label -> processor CPU ns
    wall_ns: dict[str, int] = field(default_factory=dict)     # label -> processor wall ns (Redis waits too)
    spans: dict[str, int] = field(default_factory=dict)       # label -> spans screened
    memory: dict[str, int] = field(default_factory=dict)


@dataclass
class _Queue:
    principal: Principal
    service: str
    phase: float
    pending: dict[int, list[RawSpan]] = field(default_factory=dict)


class Simulation:
    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self.world = ScenarioWorld(scenario)
        self.rng = random.Random(seed)
        self._maker = TraceMaker(self.world, random.Random(seed + 1), scenario.day_s)
        self._queues: dict[tuple[str, str, str], _Queue] = {}
        self._rates: dict[tuple[str, str], float] = {}
        self._op_counts: dict[tuple[str, str], dict[str, int]] = {}
        self._captured: dict[str, deque[Captured]] = {t.name: deque(maxlen=400) for t in scenario.tenants}
        self._processes: dict[tuple[str, str, str], metric_traffic.Process] = {}
        self._truth: dict[tuple[str, str, str], tuple[float, float, float]] = {}
        self._resets = [e for e in scenario.events if e.kind == "counter_reset"]
        # Metrics draw from their own generator: the trace traffic of a seed stays what it was.
        self._metric_rng = random.Random(seed + 2)
        principals = {p.name: p for t in scenario.tenants for p in t.principals}
        by_tenant = {t.name: {p.name: p for p in t.principals} for t in scenario.tenants}
        self._attackers = [attacks.make(e, by_tenant[e.tenant], self, random.Random(seed + 100 + e.id))
                           for e in scenario.events if e.is_attack]
        self._principals = principals
        self._attack_events = [e for e in scenario.events if e.is_attack]
        self._other_events = [e for e in scenario.events if not e.is_attack]

    # -------------------------------------------------------------- attacks.Context

    def server_rate(self, tenant: str, service: str) -> float:
        return self._rates.get((tenant, service), 0.0)

    def op_weights(self, tenant: str, service: str) -> list[tuple[str, float]]:
        counts = self._op_counts.get((tenant, service)) or \
            {o.name: 1 for o in OPS.values() if o.service == service}
        return [(name, float(c)) for name, c in sorted(counts.items())]

    def captured(self, tenant: str) -> deque[Captured]:
        return self._captured[tenant]

    def metric_truth(self, tenant: str, principal: str, service: str) -> tuple[float, float, float]:
        """(requests per second, mean duration ms, CPU utilisation) of the principal's last genuine export."""
        return self._truth.get((tenant, principal, service), (0.0, 0.0, 0.0))

    # -------------------------------------------------------------- the run

    def run(self, processor: ForgeryProcessor) -> Outcome:
        outcome = Outcome()
        roots = [r for r, _ in ROOTS]
        root_weights = list(_cumulative([w for _, w in ROOTS]))
        rng = self.rng
        for tick in range(int(self.scenario.duration_s)):
            t = float(tick)
            emitted: list[tuple[Emitted, str, Event | None]] = []
            server_counts: dict[tuple[str, str], int] = {}
            for tenant in self.scenario.tenants:
                load = tenant.roots_per_s * self.world.rate_factor(tenant.name, t)
                for p in tenant.principals:
                    for _ in range(poisson(load, rng)):
                        root = rng.choices(roots, cum_weights=root_weights)[0]
                        self._trace(p, root, t, server_counts)
                    for _ in self.world.extra_services(tenant.name, p.name, t):
                        for _ in range(poisson(EXTRA_ROOTS_PER_S, rng)):
                            self._trace(p, "recommendations:GET /recs", t, server_counts)
            for key, count in server_counts.items():
                self._rates[key] = 0.9 * self._rates.get(key, float(count)) + 0.1 * count
            for queue in self._queues.values():
                emitted += self._flush(queue, t)
            for process_key, process in self._processes.items():
                emitted += self._export_metrics(process_key, process, t)
            for attacker in self._attackers:
                emitted += [(e, "attack", attacker.event) for e in attacker.tick(t)]
            emitted.sort(key=lambda x: x[0].received_s)
            for item in emitted:
                self._screen(processor, *item, outcome)
        outcome.memory = processor.memory_entries()
        return outcome

    def _trace(self, p: Principal, root: str, t: float, server_counts: dict[tuple[str, str], int]) -> None:
        start_ns = EPOCH_NS + int((t + self.rng.random()) * NS)
        for service, spans in self._maker.trace(p, root, start_ns, t).items():
            key = (p.tenant, p.name, service)
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(p, service, self.rng.uniform(0, FLUSH_S))
            counts = self._op_counts.setdefault((p.tenant, service), {})
            process = self._processes.get(key)
            if process is None:
                phase = self._metric_rng.uniform(0, metric_traffic.EXPORT_S)
                process = self._processes[key] = metric_traffic.Process(0.0, phase)
            for s in spans:
                if s.kind == SERVER:
                    process.observe((s.end_ns - s.start_ns) / 1e6)
                index = math.ceil(((s.end_ns - EPOCH_NS) / NS - queue.phase) / FLUSH_S)
                queue.pending.setdefault(index, []).append(s)
                if s.kind == SERVER:
                    server_counts[(p.tenant, service)] = server_counts.get((p.tenant, service), 0) + 1
                    counts[s.name] = counts.get(s.name, 0) + 1

    def _flush(self, queue: _Queue, t: float) -> list[tuple[Emitted, str, Event | None]]:
        out: list[tuple[Emitted, str, Event | None]] = []
        index = math.ceil((t - queue.phase) / FLUSH_S)
        while queue.phase + index * FLUSH_S < t + 1:
            spans = queue.pending.pop(index, None)
            at = queue.phase + index * FLUSH_S
            index += 1
            if not spans or at < 0:
                continue
            p, service = queue.principal, queue.service
            offset = int(self.world.clock_offset_s(p.tenant, p.name, at) * NS)
            host = p.hosts[sum(map(ord, service)) % len(p.hosts)]
            request = build_request(p, service, spans, host, offset)
            label, event = self._label(p.tenant, p.name, service, at)
            if label == "clean" and self.rng.random() < 0.2:
                self._captured[p.tenant].append(Captured(at, p.name, service, request.SerializeToString()))
            server = [s for s in spans if s.kind == SERVER]
            out.append((Emitted(at + self.rng.uniform(0.05, 0.3), p.tenant, p.name, service, request,
                                [(s.end_ns - s.start_ns) / 1e6 for s in server], sum(1 for s in server if s.error)),
                        label, event))
        return out

    def _export_metrics(self, key: tuple[str, str, str], process: metric_traffic.Process,
                        t: float) -> list[tuple[Emitted, str, Event | None]]:
        """The process's metric export due in [t, t + 1), if any."""
        tenant, principal, service = key
        at = process.phase + metric_traffic.EXPORT_S * math.ceil((t - process.phase) / metric_traffic.EXPORT_S)
        if not t <= at < t + 1:
            return []
        for e in self._resets:
            if (e.tenant, e.principal, e.service) == key and e.start <= at < e.start + metric_traffic.EXPORT_S:
                process.restart(at)   # the restarted process starts counting from zero
        cpu = process.gauge()
        if process.window_count:
            self._truth[key] = (process.window_count / metric_traffic.EXPORT_S,
                                process.window_ms / process.window_count, cpu)
        process.window_count, process.window_ms = 0, 0.0
        if not process.count:
            return []
        p = self._principals[principal]
        host = p.hosts[sum(map(ord, service)) % len(p.hosts)]
        request = metric_traffic.build_request(service, host, process.started_s, at, process.count, process.total_ms,
                                               cpu)
        label, event = self._label(tenant, principal, service, at)
        return [(Emitted(at + self._metric_rng.uniform(0.05, 0.3), tenant, principal, service, request,
                         signal=Signal.METRICS), label, event)]

    def _label(self, tenant: str, principal: str, service: str, t: float) -> tuple[str, Event | None]:
        for e in self._attack_events:
            if e.tenant == tenant and e.start <= t < e.end + 60:
                return "legit_during_attack", e
        for e in self._other_events:
            if e.touches(tenant, principal, service, t):
                return "confounder", e
        return "clean", None

    def _screen(self, processor: ForgeryProcessor, emitted: Emitted, label: str,
                event: Event | None, outcome: Outcome) -> None:
        batch_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
        traces = emitted.signal is Signal.TRACES
        # Trace batches carry their bytes, as a stage hands them over (the processor reads those natively).
        batch = Batch(signal=emitted.signal, request=emitted.request, batch_id=batch_id,
                      tenant=emitted.tenant, principal=emitted.principal,
                      received_at_ns=EPOCH_NS + int(emitted.received_s * NS),
                      raw_payload=emitted.request.SerializeToString() if traces else None)
        items = count_items(emitted.request, emitted.signal)
        started, started_wall = time.process_time_ns(), time.perf_counter_ns()
        verdict = processor.screen(batch) if traces else processor.screen_metrics(batch)
        processor.act(batch, verdict)
        elapsed = time.process_time_ns() - started
        if traces:   # the cost per span is measured on trace batches
            outcome.cpu_ns[label] = outcome.cpu_ns.get(label, 0) + elapsed
            outcome.wall_ns[label] = outcome.wall_ns.get(label, 0) + time.perf_counter_ns() - started_wall
            outcome.spans[label] = outcome.spans.get(label, 0) + items
        outcome.records.append(Record(emitted.received_s, emitted.tenant, emitted.principal, emitted.service, label,
                                      event.kind if event else "", event.id if event else -1, items, verdict.score,
                                      tuple(sorted(set(verdict.codes))), tuple(verdict.reasons),
                                      emitted.signal.value))
        if traces and emitted.service == MASKED_SERVICE:
            for e in self._attack_events:
                if (e.tenant == emitted.tenant and e.kind.startswith(("masking_flood", "error_masking"))
                        and e.start <= emitted.received_s < e.end):
                    outcome.samples.append(ServiceSample(e.id, emitted.received_s, emitted.server_ms,
                                                         emitted.server_errors, label != "attack", verdict.score))


def _cumulative(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for v in values:
        total += v
        out.append(total)
    return out
