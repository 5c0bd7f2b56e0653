"""Horizontal scaling on the real broker.

One worker per stage (validate, scrub, dedup: three consumer groups) runs under a steady OTLP/HTTP
load. The scrub group then grows to two and three workers, and one of them is killed with SIGKILL.
After each change the test shows, from the group coordinator's own description, that the
partitions spread over every live member (and that the survivors own them all after the kill), and
measures how many spans/s the scrub group processed with that many replicas. At the end every span
the gateway acknowledged is on the clean topic exactly once per batch id (a killed worker's
uncommitted records are redelivered with the same batch ids), and nothing was rejected.

The throughput per replica count goes to ``benchmarks/results/scaling.{json,md}``; it is a benchmark
printout, not an assertion: the machine has two cores that the gateway, the workers, Kafka, Redis
and the load generator share.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.otlp_load import trace_request
from rampart.streaming import LagProbe
from schemas.envelope import Envelope, Signal, decode
from tests.support.deployment import Deployment, WorkerProcess, deployments, post, read_raw

pytestmark = pytest.mark.e2e

PARTITIONS = 6  # three workers own two each
SCALED = "scrub"  # the heaviest stage per span (docs/stages.md, "Performance today")
SPANS_PER_REQUEST = 200
LOAD_SPANS_PER_S = 9_000  # more than one scrub worker handles on this machine, so a backlog builds
PHASE_S = 12.0
SESSION_TIMEOUT_S = 6  # how long the group waits before giving a killed worker's partitions away
WORKER_ENV = {"RAMPART__STAGES__SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S), "RAMPART__LOGGING__LEVEL": "WARNING"}
UNLIMITED = {"RAMPART__GATEWAY__RATE_LIMIT__REQUESTS_PER_S": "100000",
             "RAMPART__GATEWAY__RATE_LIMIT__BURST_REQUESTS": "100000",
             "RAMPART__GATEWAY__RATE_LIMIT__BYTES_PER_S": "1e12", "RAMPART__GATEWAY__RATE_LIMIT__BURST_BYTES": "1e12",
             "RAMPART__LOGGING__LEVEL": "WARNING"}
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.fixture
def deployment(kafka_bootstrap: str, redis_url: str, unique_prefix: str, tmp_path: Path) -> Iterator[Deployment]:
    """The usual isolated deployment, with enough partitions for three workers of a group."""
    yield from deployments(kafka_bootstrap, redis_url, unique_prefix, tmp_path, partitions=PARTITIONS)


class SteadyLoad:
    """Posts OTLP/HTTP protobuf trace batches at a fixed rate; keeps every span the gateway acknowledged
    (and, apart, those of requests it did not: a 503 may come after Kafka took the batch after all).

    A few sender threads share the rate, so one slow answer does not hold the load back. Each
    request carries fresh span ids (a counter per sender, so never two alike) and fresh trace ids, so
    the trace-id keying spreads every batch over all partitions of the next topic.
    """

    def __init__(self, url: str, token: str, spans_per_s: float, senders: int = 3) -> None:
        self.url, self.token = url, token
        self.interval_s = senders * SPANS_PER_REQUEST / spans_per_s  # per sender
        self.acked: set[bytes] = set()
        self.unacked: set[bytes] = set()
        self.statuses: Counter[int] = Counter()
        self.halt = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send, args=(i,), daemon=True) for i in range(senders)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.halt.set()
        for thread in self._threads:
            thread.join(60)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def _send(self, sender: int) -> None:
        rng = random.Random(sender)
        request = trace_request(SPANS_PER_REQUEST, rng)
        spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        shift = time.time_ns() - min(s.start_time_unix_nano for s in spans)  # inside validate's age window
        for span in spans:
            span.start_time_unix_nano += shift
            span.end_time_unix_nano += shift
            for event in span.events:
                event.time_unix_nano += shift
        headers = {"Content-Type": "application/x-protobuf", "x-api-key": self.token}
        counter = sender << 48
        next_at = time.monotonic() + sender * self.interval_s / len(self._threads)
        while not self.halt.wait(max(0.0, next_at - time.monotonic())):
            ids = []
            for span in spans:
                counter += 1
                span.trace_id, span.span_id = rng.randbytes(16), struct.pack(">Q", counter)
                ids.append(span.trace_id + span.span_id)
            status = post(self.url, request.SerializeToString(), headers)[0]
            with self._lock:
                self.statuses[status] += 1
                (self.acked if status == 200 else self.unacked).update(ids)
            next_at = max(next_at + self.interval_s, time.monotonic() - 1.0)  # catch up at most 1 s


@dataclass
class Phase:
    """One row of the table: the scaled group with ``replicas`` live workers for ``seconds``."""

    replicas: int
    event: str
    settled_after_s: float
    seconds: float
    acked_spans_per_s: int
    processed_spans_per_s: int
    cpu_cores_of_group: float
    cpu_wait_of_group: float
    machine_busy_percent: int
    lag_records_at_end: int
    lag_of_every_group: dict[str, int]


def cpu_s(worker: WorkerProcess) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of the worker's threads so far (Linux /proc)."""
    assert worker.proc is not None
    on_cpu = waiting = 0
    for task in Path(f"/proc/{worker.proc.pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            ran, waited = (task / "schedstat").read_text().split()[:2]
            on_cpu, waiting = on_cpu + int(ran), waiting + int(waited)
    return on_cpu / 1e9, waiting / 1e9


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (Linux /proc/stat)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), sum(ticks) / os.sysconf("SC_CLK_TCK")


def spans_in(worker: WorkerProcess) -> float:
    """The worker's count of trace spans handled (its `rampart_stage_items_total{direction="in"}`)."""
    for family in text_string_to_metric_families(worker.metrics()):
        for sample in family.samples:
            if (sample.name == "rampart_stage_items_total" and sample.labels.get("direction") == "in"
                    and sample.labels.get("signal") == "traces"):
                return sample.value
    return 0.0


def wait_for_spread(deployment: Deployment, group: str, topic: str, members: int,
                    timeout_s: float = 60.0) -> tuple[float, dict[str, set[int]]]:
    """Wait until ``group`` is stable with exactly ``members`` members; return (seconds waited, assignment).

    Then asserts the spread: each member owns at least one partition of ``topic``, no partition is
    owned twice, and together they own all of them.
    """
    started = time.monotonic()
    state, owned = "", dict[str, set[int]]()
    while time.monotonic() - started < timeout_s:
        state, owned = deployment.group_assignment(group, topic)
        if state == "STABLE" and len(owned) == members:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"{group} did not settle on {members} members within {timeout_s}s: "
                             f"state {state}, assignment {owned}")
    waited = time.monotonic() - started
    assert all(owned.values()), f"a member of {group} owns no partition of {topic}: {owned}"
    every = sorted(p for partitions in owned.values() for p in partitions)
    assert every == list(range(PARTITIONS)), f"partitions of {topic} owned by {group}: {every}"
    print(f"[scaling] {members} member(s) after {waited:.1f}s: "
          + ", ".join(f"{sorted(partitions)}" for partitions in owned.values()), flush=True)
    return waited, owned


def measure(deployment: Deployment, load: SteadyLoad, workers: list[WorkerProcess], event: str,
            settled_after_s: float) -> Phase:
    """Run the load for PHASE_S with ``workers`` as the scaled group; their processing rate and lag."""
    spans_before, cpu_before = sum(spans_in(w) for w in workers), [cpu_s(w) for w in workers]
    busy_before, total_before = machine_busy_s()
    acked_before = load.acked_count()
    started = time.monotonic()
    time.sleep(PHASE_S)
    seconds = time.monotonic() - started
    processed = sum(spans_in(w) for w in workers) - spans_before
    cpu_after = [cpu_s(w) for w in workers]
    cores = sum(a[0] - b[0] for a, b in zip(cpu_after, cpu_before, strict=True)) / seconds
    cpu_wait = sum(a[1] - b[1] for a, b in zip(cpu_after, cpu_before, strict=True)) / seconds
    busy, total = machine_busy_s()
    machine_busy = (busy - busy_before) / (total - total_before)
    acked = load.acked_count() - acked_before
    lags = group_lags(deployment)
    phase = Phase(len(workers), event, round(settled_after_s, 1), round(seconds, 1), round(acked / seconds),
                  round(processed / seconds), round(cores, 2), round(cpu_wait, 2),
                  round(100 * machine_busy),
                  lags[SCALED], lags)
    print(f"[scaling] {phase}", flush=True)
    return phase


def group_lags(deployment: Deployment) -> dict[str, int]:
    """Per stage group: records on its trace input topic that it has not committed yet."""
    lags = {}
    for stage, topic in (("validate", deployment.topics.raw(Signal.TRACES)),
                         ("scrub", deployment.topics.after("validate", Signal.TRACES)),
                         ("dedup", deployment.topics.after("scrub", Signal.TRACES))):
        probe = LagProbe(deployment.kafka, deployment.stage_group(stage), [topic])
        try:
            lags[stage] = sum(probe.measure().values())
        finally:
            probe.close()
    return lags


def wait_until_drained(deployment: Deployment, timeout_s: float = 240.0) -> float:
    """Wait until every stage group has committed everything on its trace input topic; seconds waited."""
    started = time.monotonic()
    while any((lags := group_lags(deployment)).values()):
        assert time.monotonic() - started < timeout_s, f"not drained within {timeout_s}s: lags {lags}"
        time.sleep(1)
    return time.monotonic() - started


def span_ids(envelope: Envelope) -> list[bytes]:
    request = ExportTraceServiceRequest.FromString(envelope.payload)
    return [s.trace_id + s.span_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def write_table(phases: list[Phase], load: SteadyLoad, redelivered: int, drain_s: float) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    setup = (f"tests/e2e/test_scaling.py: gateway + one validate, one dedup and 1-3 {SCALED} workers (one consumer "
             f"group per stage, {PARTITIONS} partitions per topic) under a steady {LOAD_SPANS_PER_S:,} spans/s of "
             f"OTLP/HTTP protobuf ({SPANS_PER_REQUEST} spans/request), {PHASE_S:g} s per row, measured once the "
             f"group had settled; gateway, workers, Kafka, Redis and the load generator share {os.cpu_count()} "
             "cores with other jobs. 'settled after' is the time from starting (or SIGKILLing) a worker until "
             "the group coordinator reported the group stable with the new member count; 'processed' is the "
             f"{SCALED} group's spans handled per second (its workers' rampart_stage_items_total), 'CPU' the "
             "CPU time its processes used per second and 'wait' the time their threads were ready to run "
             "but waited for a core, 'machine busy' the share of all cores in use (every "
             "process on the machine); 'lag' the records on a group's input topic it had not committed at the "
             "end of the row")
    meta = {"benchmark": "scaling", "when": when, "cores": os.cpu_count(), "setup": setup,
            "spans_acked": len(load.acked), "gateway_answers": dict(load.statuses), "redelivered_span_copies":
            redelivered, "drain_s": round(drain_s, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps({**meta, "results": [asdict(p) for p in phases]}, indent=2)
                                          + "\n")
    table = [f"| {SCALED} replicas | event | settled after s | spans/s acked | spans/s processed by {SCALED} | "
             f"CPU of {SCALED} workers (cores) | their wait for a CPU (s/s) | machine busy | lag {SCALED} | "
             "lag validate | lag dedup |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {p.replicas} | {p.event} | {p.settled_after_s} | {p.acked_spans_per_s:,} | "
              f"{p.processed_spans_per_s:,} | {p.cpu_cores_of_group} | {p.cpu_wait_of_group} | "
              f"{p.machine_busy_percent} % | "
              f"{p.lag_records_at_end:,} | "
              f"{p.lag_of_every_group['validate']:,} | "
              f"{p.lag_of_every_group['dedup']:,} |" for p in phases]
    refused = sum(n for status, n in load.statuses.items() if status != 200)
    footer = (f"{len(load.acked):,} spans acknowledged ({refused} requests refused), all on the clean topic "
              f"exactly once per batch id ({redelivered:,} redelivered copies); drained {drain_s:.1f} s after "
              "the load stopped.")
    (RESULTS / "scaling.md").write_text(f"# Scaling benchmark ({when}, {os.cpu_count()} cores)\n\n{setup}.\n\n"
                                        + "\n".join(table) + f"\n\n{footer}\n")
    return "\n".join(table) + "\n" + footer


def test_a_stage_scales_out_and_survives_losing_a_worker(deployment: Deployment) -> None:
    gateway = deployment.start_gateway(**UNLIMITED)
    deployment.start_worker("validate", **WORKER_ENV)
    deployment.start_worker("dedup", **WORKER_ENV)
    scaled = [deployment.start_worker(SCALED, **WORKER_ENV)]
    _, token = deployment.api_key()
    group, topic = deployment.stage_group(SCALED), deployment.topics.after("validate", Signal.TRACES)

    load = SteadyLoad(f"{gateway.http_url}/v1/traces", token, LOAD_SPANS_PER_S)
    load.start()
    phases: list[Phase] = []
    try:
        waited, _ = wait_for_spread(deployment, group, topic, 1)
        phases.append(measure(deployment, load, scaled, "start", waited))
        for replicas in (2, 3):
            started = time.monotonic()
            scaled.append(deployment.start_worker(SCALED, **WORKER_ENV))
            _, before_kill = wait_for_spread(deployment, group, topic, replicas)
            phases.append(measure(deployment, load, scaled, "worker added", time.monotonic() - started))
        started = time.monotonic()
        scaled.pop(0).kill()
        _, survivors = wait_for_spread(deployment, group, topic, 2)
        assert set(survivors) < set(before_kill), "the members owning every partition are not the survivors"
        phases.append(measure(deployment, load, scaled, "one SIGKILLed", time.monotonic() - started))
    finally:
        load.stop()

    # 503 (Kafka slower to acknowledge than gateway.kafka_ack_timeout_ms) is the only refusal a busy machine may see
    assert load.acked and set(load.statuses) <= {200, 503}, f"gateway answers: {load.statuses}"
    drain_s = wait_until_drained(deployment)

    copies: Counter[bytes] = Counter()
    once_per_batch: Counter[bytes] = Counter()
    seen_batches: set[str] = set()
    clean = read_raw(deployment.kafka_bootstrap, deployment.topics.clean(Signal.TRACES), 120)
    for envelope in map(decode, clean):
        ids = span_ids(envelope)
        copies.update(ids)
        if envelope.batch_id not in seen_batches:  # a redelivered record keeps its batch id
            seen_batches.add(envelope.batch_id)
            once_per_batch.update(ids)
    missing = load.acked - set(copies)
    assert not missing, f"{len(missing)} of {len(load.acked)} acknowledged spans never reached the clean topic"
    assert set(once_per_batch) <= load.acked | load.unacked, "spans on the clean topic that nobody sent"
    twice = [span for span, n in once_per_batch.items() if n > 1]
    assert not twice, f"{len(twice)} spans under two different batch ids on the clean topic (dedup let them pass)"
    assert read_raw(deployment.kafka_bootstrap, deployment.topics.rejected(Signal.TRACES), 5) == []
    assert read_raw(deployment.kafka_bootstrap, deployment.topics.quarantine(Signal.TRACES), 5) == []

    print("\n" + write_table(phases, load, sum(copies.values()) - len(set(copies)), drain_s))
