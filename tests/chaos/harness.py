"""What every chaos test shares: the deployment under test, a counted stream of spans from the
OpenTelemetry SDK, the sampling of memory and consumer lag while a fault is on, the exact account
at the end and its table.

The account (``Account``) compares three sets of span ids (trace id + span id):

- *acknowledged*: spans of an export for which the SDK's ``OTLPSpanExporter`` returned SUCCESS,
  i.e. the gateway answered 200 (after the exporter's own retries of 429/503/connection errors,
  within its timeout, and after the stream's fail-over to another gateway where a test asks for it);
- *refused*: every other span the stream offered; never counted as sent. A refused span may still
  arrive (a 503 answered because Kafka was late can be followed by Kafka taking the record after
  all): that is reported, not counted as a loss or a duplicate;
- what the capturing OTLP backend received, with the number of copies of each span.

``lost`` (acknowledged, never delivered) must be 0 in every test; ``duplicates`` (copies beyond the
first) are counted exactly and each test says how many it tolerates.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import redis
import requests
from confluent_kafka import Consumer, KafkaException, TopicPartition
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from rampart.config import KafkaConfig
from rampart.streaming import LagProbe
from schemas.envelope import Signal, decode
from tests.support.backend import CapturingBackend
from tests.support.deployment import (
    ROOT,
    Deployment,
    GatewayProcess,
    RampartProcess,
    SinkProcess,
    WorkerProcess,
)

SCALE_ENV = "RAMPART_CHAOS_SCALE"    # durations: 1 (default) is the CI size, 3 the full size
REPORT_ENV = "RAMPART_CHAOS_REPORT"  # a markdown file every table is appended to, if set
SESSION_TIMEOUT_S = 6  # how long a consumer group waits before giving a killed member's partitions away
PARTITIONS = 4
QUIET = {"RAMPART__LOGGING__LEVEL": "WARNING"}
FAST_FAILOVER = {"RAMPART__STAGES__SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
                 "RAMPART__SINKS__SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S)}
# Bounded retries, so that a backend back from an outage is called again within seconds, not 30 s.
SINK_RETRIES = {"RAMPART__SINKS__INITIAL_BACKOFF_S": "0.2", "RAMPART__SINKS__MAX_BACKOFF_S": "2",
                "RAMPART__SINKS__CIRCUIT_OPEN_S": "1"}
STAGES = ("validate", "scrub", "dedup")
MB = 1024 * 1024


def scale() -> float:
    return float(os.environ.get(SCALE_ENV, "1"))


def scaled(seconds: float) -> float:
    """A duration of the CI-sized run (scale 1), stretched by RAMPART_CHAOS_SCALE."""
    return seconds * scale()


def readyz(process: RampartProcess) -> int:
    """The HTTP status of a process's /readyz."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{process.admin_port}/readyz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (VmRSS in /proc), or None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` in a /metrics page."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def label_values(text: str, name: str, label: str) -> set[str]:
    """The values ``label`` takes among the samples called ``name`` in a /metrics page."""
    return {sample.labels[label] for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name and label in sample.labels}


def span_key(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id.to_bytes(16, "big") + context.span_id.to_bytes(8, "big")


# ------------------------------------------------------------------------------------------ the pipeline

class TracesWorker(WorkerProcess):
    """A stage worker for traces only (``--signals traces``), so its group's partitions are all ones
    that carry the stream: two members of a group always split the stream between them."""

    def __init__(self, deployment: Deployment, stages: str, overrides: Mapping[str, str]) -> None:
        super().__init__(deployment, stages, overrides)
        self.args = [*self.args, "--signals", "traces"]


@dataclass
class Member:
    """One process of the deployment under test, named for the tables (e.g. ``scrub-2``)."""

    name: str
    process: RampartProcess
    group: str = ""  # its consumer group; empty for a gateway


@dataclass
class Pipeline:
    """Gateways, stage workers and the OTLP sink into a capturing backend: the whole path, each role its
    own process, so that a fault can hit exactly one of them. ``workers`` are the ``--stages`` of each
    consumer group: by default one group per stage (validate, scrub, dedup); ``("validate,scrub,dedup",)``
    fuses them into one. Processes are named by role for the tables: ``scrub``, ``scrub-2``, ``sink``."""

    deployment: Deployment
    backend: CapturingBackend
    workers: tuple[str, ...] = STAGES
    members: list[Member] = field(default_factory=list)
    token: str = ""
    worker_env: dict[str, str] = field(default_factory=dict)
    sink_env: dict[str, str] = field(default_factory=dict)

    def groups(self) -> dict[str, str]:
        """Consumer group -> the topic it reads (traces)."""
        topics = self.deployment.topics
        out = {}
        for spec in self.workers:
            first = STAGES.index(spec.split(",")[0])
            out[self.deployment.stage_group(spec)] = (topics.raw(Signal.TRACES) if first == 0 else
                                                      topics.after(STAGES[first - 1], Signal.TRACES))
        out[f"{self.deployment.prefix}.sink.otlp"] = topics.clean(Signal.TRACES)
        return out

    def group_name(self, group: str) -> str:
        return "sink" if ".sink." in group else group.rsplit(".", 1)[-1]

    def start(self, gateways: list[dict[str, str]], replicas: Mapping[str, int] | None = None,
              worker_env: Mapping[str, str] | None = None, sink_env: Mapping[str, str] | None = None) -> Pipeline:
        """Start every process at once (each waits for its /readyz), then create the stream's API key.
        ``replicas`` maps a role (a ``workers`` entry, or ``sink``) to its number of processes (default 1)."""
        self.worker_env = {**QUIET, **FAST_FAILOVER, **(worker_env or {})}
        self.sink_env = {**QUIET, **FAST_FAILOVER, **SINK_RETRIES,
                         "RAMPART__SINKS__OTLP__ENDPOINT": self.backend.endpoint, **(sink_env or {})}
        replicas = dict(replicas or {})
        starters: list[Callable[[], Member]] = []
        for i, overrides in enumerate(gateways):
            starters.append(functools.partial(self.start_gateway, "gateway" if i == 0 else f"gateway-{i + 1}",
                                              overrides))
        for role in (*self.workers, "sink"):
            starters += [functools.partial(self.start_member, role, n + 1) for n in range(replicas.get(role, 1))]
        errors: list[BaseException] = []
        lock = threading.Lock()

        def run(starter: Callable[[], Member]) -> None:
            try:
                member = starter()
            except BaseException as exc:  # re-raised in the test's thread below
                errors.append(exc)
                return
            with lock:
                self.members.append(member)

        threads = [threading.Thread(target=run, args=(s,)) for s in starters]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        self.members.sort(key=lambda m: m.name)
        _, self.token = self.deployment.api_key()
        return self

    def start_gateway(self, name: str, overrides: Mapping[str, str]) -> Member:
        return Member(name, self.deployment.start_gateway(**QUIET, **overrides))

    def start_member(self, role: str, number: int) -> Member:
        """Start one more process of ``role`` (a ``workers`` entry or ``sink``); it joins its group."""
        name = (role.replace(",", "+") if "," in role else role) + ("" if number == 1 else f"-{number}")
        process: RampartProcess
        if role == "sink":
            process = SinkProcess(self.deployment, "otlp", self.sink_env)
            group = f"{self.deployment.prefix}.sink.otlp"
        else:
            process = TracesWorker(self.deployment, role, self.worker_env)
            group = self.deployment.stage_group(role)
        self.deployment.processes.append(process)
        process.start()
        return Member(name, process, group)

    def add(self, role: str) -> Member:
        """Start a further process of ``role`` (e.g. the replacement of a killed one)."""
        number = 1 + sum(1 for m in self.members if m.process.args[1:3] == self.role_args(role))
        member = self.start_member(role, number)
        self.members.append(member)
        return member

    def role_args(self, role: str) -> list[str]:
        return ["otlp"] if role == "sink" else ["--stages", role]

    def live(self, role: str) -> list[Member]:
        """The running processes of ``role``, first started first."""
        return [m for m in self.members if m.process.args[1:3] == self.role_args(role)
                and m.process.proc is not None and m.process.proc.poll() is None]

    def stop(self) -> None:
        """Stop every process at once (SIGTERM, then SIGKILL after 30 s), not one after the other."""
        threads = [threading.Thread(target=m.process.stop) for m in self.members]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def gateway_urls(self) -> list[str]:
        return [m.process.http_url for m in self.members if isinstance(m.process, GatewayProcess)]

    def wait_for_members(self, group: str, topic: str, members: int, timeout_s: float = 60.0) -> None:
        """Wait until ``group`` is stable with ``members`` members that each own partitions of ``topic``."""
        deadline = time.monotonic() + timeout_s
        state, owned = "", dict[str, set[int]]()
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaException):
                state, owned = self.deployment.group_assignment(group, topic)
                if state == "STABLE" and len(owned) == members and all(owned.values()):
                    return
            time.sleep(0.5)
        raise AssertionError(f"{group} did not settle on {members} members owning partitions of {topic} "
                             f"within {timeout_s}s: state {state}, assignment {owned}")


# ------------------------------------------------------------------------------------------ the stream

@dataclass
class Attempt:
    """One HTTP request the SDK's exporter made (it retries by itself)."""

    url: str
    started: float
    finished: float
    status: int | None  # None: no answer (connection refused or broken, timeout)
    error: str = ""


@dataclass
class Export:
    """One export of the stream: its spans and how it ended (after every retry)."""

    ids: list[bytes]
    started: float
    finished: float = 0.0
    ok: bool = False
    tries: int = 0


class CountingSession(requests.Session):
    """A requests session for the SDK exporter that notes every attempt and what the gateway answered."""

    def __init__(self, log: list[Attempt], lock: threading.Lock, in_flight: Counter[str]) -> None:
        super().__init__()
        self._log, self._lock, self._in_flight = log, lock, in_flight

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        where = url.decode() if isinstance(url, bytes) else url
        started = time.monotonic()
        with self._lock:
            self._in_flight[where] += 1
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.RequestException as exc:
            self._note(Attempt(where, started, time.monotonic(), None, type(exc).__name__))
            raise
        self._note(Attempt(where, started, time.monotonic(), response.status_code))
        return response

    def _note(self, attempt: Attempt) -> None:
        with self._lock:
            self._in_flight[attempt.url] -= 1
            self._log.append(attempt)


class Stream:
    """A steady, counted stream of spans made with the OpenTelemetry SDK and exported with its
    OTLP/HTTP exporter, from ``clients`` threads at ``exports_per_s`` each.

    Client ``i`` sends to gateway ``i % len(urls)``. With ``failover_tries`` > 1, an export whose
    exporter gave up is sent again, the same spans, to the next gateway (what a client behind a load
    balancer sees); its spans count as acknowledged if any try succeeded.
    """

    every: ClassVar[list[Stream]] = []  # every stream of this test run, for telling leftovers from strangers

    def __init__(self, urls: list[str], token: str, *, clients: int = 3, exports_per_s: float = 5.0,
                 spans_per_export: int = 20, timeout_s: float = 4.0, failover_tries: int = 1,
                 service: str = "chaos-shop") -> None:
        self.urls, self.token = urls, token
        self.clients, self.interval_s = clients, 1.0 / exports_per_s
        self.spans_per_export, self.timeout_s, self.failover_tries = spans_per_export, timeout_s, failover_tries
        self.service = service
        self.exports: list[Export] = []
        self.attempts: list[Attempt] = []
        self.in_flight: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.started_at = self.stopped_at = 0.0
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]
        Stream.every.append(self)

    def start(self) -> Stream:
        self.started_at = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.halt.set()
        for thread in self._threads:
            thread.join(self.timeout_s * self.failover_tries + 30)
        self.stopped_at = time.monotonic()

    def run_for(self, seconds: float) -> None:
        self.start()
        time.sleep(seconds)
        self.stop()

    def acknowledged_between(self, since: float, until: float) -> int:
        """Spans of exports acknowledged in [since, until)."""
        with self.lock:
            return sum(len(e.ids) for e in self.exports if e.ok and since <= e.finished < until)

    def acknowledged(self) -> set[bytes]:
        with self.lock:
            return {i for e in self.exports if e.ok for i in e.ids}

    def offered(self) -> set[bytes]:
        with self.lock:
            return {i for e in self.exports for i in e.ids}

    def in_flight_to(self, url: str) -> int:
        """Requests to the gateway at ``url`` sent and not answered yet."""
        with self.lock:
            return sum(n for where, n in self.in_flight.items() if where.startswith(url))

    def statuses(self, url: str | None = None, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        """Answers to the attempts that started in [since, until) (``none:<error>`` for no answer)."""
        with self.lock:
            return Counter(str(a.status) if a.status is not None else f"none:{a.error}" for a in self.attempts
                           if (url is None or a.url.startswith(url)) and since <= a.started < until)

    def _client(self, index: int) -> None:
        memory = InMemorySpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": self.service,
                                                            "service.instance.id": f"client-{index}"}))
        provider.add_span_processor(SimpleSpanProcessor(memory))
        tracer = provider.get_tracer("rampart.chaos", "1.0")
        exporters = [OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers={"x-api-key": self.token},
                                      timeout=self.timeout_s,
                                      session=CountingSession(self.attempts, self.lock, self.in_flight))
                     for url in self.urls]
        next_at = time.monotonic() + index * self.interval_s / self.clients
        number = 0
        while not self.halt.wait(max(0.0, next_at - time.monotonic())):
            for _ in range(self.spans_per_export):
                number += 1
                with tracer.start_as_current_span(f"GET /cart/{number % 7}",
                                                  attributes={"http.request.method": "GET", "client": index,
                                                              "http.response.status_code": 200}):
                    pass
            spans = memory.get_finished_spans()
            memory.clear()
            export = Export([span_key(s) for s in spans], time.monotonic())
            with self.lock:
                self.exports.append(export)
            for attempt in range(self.failover_tries):
                export.tries += 1
                target = exporters[(index + attempt) % len(exporters)]
                if target.export(spans) is SpanExportResult.SUCCESS:
                    export.ok = True
                    break
            export.finished = time.monotonic()
            next_at = max(next_at + self.interval_s, time.monotonic())  # steady: no burst to catch up
        provider.shutdown()
        for exporter in exporters:
            exporter.shutdown()


# ------------------------------------------------------------------------------------------ sampling

class Sampler:
    """Samples every member's resident memory (twice a second) and every group's consumer lag (each
    second, with the committed offsets read the way the runtime's own lag gauge reads them)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.rss: dict[str, list[tuple[float, int]]] = {}
        self.lag: dict[str, list[tuple[float, int]]] = {}
        self.halt = threading.Event()
        kafka = KafkaConfig(bootstrap_servers=pipeline.deployment.kafka_bootstrap)
        self._probes = {group: LagProbe(kafka, group, [topic]) for group, topic in pipeline.groups().items()}
        self._threads = [threading.Thread(target=self._sample_rss, daemon=True),
                         threading.Thread(target=self._sample_lag, daemon=True)]

    def __enter__(self) -> Sampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.halt.set()
        for thread in self._threads:
            thread.join(30)
        for probe in self._probes.values():
            with contextlib.suppress(KafkaException, RuntimeError):
                probe.close()

    def max_rss(self) -> dict[str, int]:
        return {name: max(v for _, v in samples) for name, samples in self.rss.items() if samples}

    def max_lag(self) -> dict[str, int]:
        return {self.pipeline.group_name(g): max((v for _, v in s), default=0) for g, s in self.lag.items()}

    def rss_between(self, name: str, since: float, until: float) -> list[int]:
        return [v for t, v in self.rss.get(name, []) if since <= t <= until]

    def lag_now(self) -> dict[str, int]:
        """A fresh measurement of every group's lag (raises KafkaException while Kafka is away)."""
        return {g: sum(probe.measure().values()) for g, probe in self._probes.items()}

    def _sample_rss(self) -> None:
        while not self.halt.wait(0.5):
            now = time.monotonic()
            for member in list(self.pipeline.members):
                proc = member.process.proc
                if proc is not None and (value := rss_bytes(proc.pid)) is not None:
                    self.rss.setdefault(member.name, []).append((now, value))

    def _sample_lag(self) -> None:
        probes = {g: LagProbe(KafkaConfig(bootstrap_servers=self.pipeline.deployment.kafka_bootstrap), g, [t])
                  for g, t in self.pipeline.groups().items()}
        try:
            while not self.halt.wait(1.0):
                for group, probe in probes.items():
                    with contextlib.suppress(KafkaException):
                        self.lag.setdefault(group, []).append((time.monotonic(), sum(probe.measure().values())))
        finally:
            for probe in probes.values():
                with contextlib.suppress(KafkaException, RuntimeError):
                    probe.close()


# ------------------------------------------------------------------------------------------ the account

def backend_copies(backend: CapturingBackend) -> dict[bytes, int]:
    """A consistent copy of what the backend counted so far (it counts in its own thread)."""
    for _ in range(10):
        with contextlib.suppress(RuntimeError):
            return dict(backend.copies)
    return dict(backend.copies)


@dataclass
class Account:
    sent: int
    acknowledged: int
    refused: int
    delivered: int
    duplicates: int
    lost: int
    refused_delivered: int
    unknown: int
    duplicated_spans: int
    duplicated_refused: int  # of the duplicated spans, those of exports the gateway did not acknowledge
    missing: list[bytes]
    duplicated: set[bytes] = field(default_factory=set)


def account(streams: Stream | Iterable[Stream], backend: CapturingBackend) -> Account:
    """The exact account of ``streams`` (one, or several sharing the backend) at the backend now."""
    streams = [streams] if isinstance(streams, Stream) else list(streams)
    acknowledged = set().union(*(s.acknowledged() for s in streams))
    offered = set().union(*(s.offered() for s in streams))
    copies = backend_copies(backend)
    delivered = {i for i in copies if i in offered}
    missing = sorted(acknowledged - delivered)
    refused = offered - acknowledged
    # Spans of an earlier test sharing the backend (one that failed before its pipeline drained) may
    # still arrive: they are neither this test's nor strangers.
    ever = set().union(*(s.offered() for s in Stream.every))
    duplicated = {i for i, n in copies.items() if n > 1 and i in offered}
    return Account(sent=len(offered), acknowledged=len(acknowledged), refused=len(refused),
                   delivered=len(delivered), duplicates=sum(copies[i] - 1 for i in duplicated),
                   lost=len(missing), refused_delivered=len(refused & delivered),
                   unknown=sum(1 for i in copies if i not in ever), duplicated_spans=len(duplicated),
                   duplicated_refused=len(duplicated & refused), missing=missing, duplicated=duplicated)


def settle(streams: Stream | Iterable[Stream], backend: CapturingBackend, sampler: Sampler,
           timeout_s: float) -> float:
    """Wait until every acknowledged span arrived and every group has committed everything (so nothing
    more can arrive, duplicates included); returns the seconds waited. Fails after ``timeout_s``."""
    streams = [streams] if isinstance(streams, Stream) else list(streams)
    started = time.monotonic()
    deadline = started + timeout_s
    acknowledged = set().union(*(s.acknowledged() for s in streams))
    lag: dict[str, int] = {}
    while time.monotonic() < deadline:
        if acknowledged <= backend_copies(backend).keys():
            with contextlib.suppress(KafkaException):
                lag = sampler.lag_now()
                if not any(lag.values()):
                    return time.monotonic() - started
        time.sleep(1.0)
    result = account(streams, backend)
    raise AssertionError(f"not settled within {timeout_s:.0f}s: {result.lost} of {result.acknowledged} "
                         f"acknowledged spans missing, consumer lag {lag}")


def clean_copies(pipeline: Pipeline, spans: set[bytes]) -> str:
    """Where the clean topic holds ``spans`` (those the backend got twice): how many records carry them,
    under how many batch ids, and how far apart (in offsets) the copies of one batch id are."""
    if not spans:
        return ""
    topic = pipeline.deployment.topics.clean(Signal.TRACES)
    consumer = Consumer({"bootstrap.servers": pipeline.deployment.kafka_bootstrap,
                         "group.id": f"chaos-reader-{time.time_ns()}", "enable.auto.commit": False})
    where: dict[str, list[tuple[int, int]]] = {}  # batch id -> (partition, offset) of each record
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        deadline = time.monotonic() + 30
        done = {p: ends[p] == 0 for p in partitions}
        while not all(done.values()) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            done[msg.partition()] = msg.offset() + 1 >= ends[msg.partition()]
            envelope = decode(msg.value())
            request = ExportTraceServiceRequest.FromString(envelope.payload)
            if any(s.trace_id + s.span_id in spans for rs in request.resource_spans for ss in rs.scope_spans
                   for s in ss.spans):
                where.setdefault(envelope.batch_id, []).append((msg.partition(), msg.offset()))
    finally:
        consumer.close()
    records = sum(len(v) for v in where.values())
    copied = [v for v in where.values() if len(v) > 1]
    gaps = [max(o for _, o in v) - min(o for _, o in v) for v in copied]
    split = sum(1 for v in copied if len({p for p, _ in v}) > 1)
    return (f"on the clean topic those spans are in {records} records under {len(where)} batch ids; "
            f"{len(gaps)} batch ids twice ({split} of them on different partitions), their copies "
            f"{min(gaps, default=0)}-{max(gaps, default=0)} offsets apart")


def table(title: str, result: Account, sampler: Sampler, notes: Iterable[str] = ()) -> str:
    lag = ", ".join(f"{g} {n}" for g, n in sampler.max_lag().items())
    rss = sampler.max_rss()
    lines = [f"### {title}", "",
             "| sent | acknowledged | refused | delivered | duplicates | lost | refused, delivered anyway | "
             "max lag (records) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| {result.sent} | {result.acknowledged} | {result.refused} | {result.delivered} | "
             f"{result.duplicates} | {result.lost} | {result.refused_delivered} | {lag} |", "",
             "| process | " + " | ".join(rss) + " |",
             "| --- | " + " | ".join("---" for _ in rss) + " |",
             "| max RSS (MB) | " + " | ".join(f"{v / MB:.0f}" for v in rss.values()) + " |"]
    if result.duplicates:
        notes = [*notes, f"duplicates: {result.duplicated_spans} spans arrived more than once, "
                         f"{result.duplicated_refused} of them from exports the gateway did not acknowledge"]
    lines += ["", *(f"- {note}" for note in notes)] if notes else []
    return "\n".join(lines) + "\n"


def report(title: str, result: Account, sampler: Sampler, notes: Iterable[str] = ()) -> None:
    """Print the run's table (and append it to $RAMPART_CHAOS_REPORT when set); for duplicates, where
    their copies are on the clean topic."""
    if result.duplicated:
        notes = [*notes, clean_copies(sampler.pipeline, result.duplicated)]
    text = table(f"{title} (scale {scale():g}, {time.strftime('%Y-%m-%d %H:%M')})", result, sampler, notes)
    print("\n" + text, flush=True)
    if path := os.environ.get(REPORT_ENV):
        with open(path, "a") as out:
            out.write(text + "\n")


def assert_exact(result: Account, max_duplicates: int = 0) -> None:
    """The account every chaos test ends with: nothing acknowledged lost, nothing unknown delivered, and
    no more duplicates than the test allows."""
    assert result.acknowledged > 0, "the stream was never acknowledged"
    assert result.lost == 0, (f"{result.lost} of {result.acknowledged} acknowledged spans never reached the "
                              f"backend, e.g. {[m.hex() for m in result.missing[:5]]}")
    assert result.unknown == 0, f"{result.unknown} spans at the backend were never sent"
    assert result.duplicates <= max_duplicates, (f"{result.duplicates} duplicate copies at the backend "
                                                 f"({result.duplicated_spans} spans), at most {max_duplicates} "
                                                 "allowed")


# ------------------------------------------------------------------------------------------ shared services

_OTHERS = re.compile(r"pytest|peer_bench|forgery_eval|stages_bench|pipeline_bench|gateway_bench|sinks_bench")


def _family() -> set[int]:
    """This process, its ancestors and its descendants: the runs that are ours."""
    ours = {os.getpid()}
    pid = os.getpid()
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        ours.add(pid)
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in ours and child not in ours and parent != 1:
                ours.add(child)
                grew = True
    return ours


def others_running() -> list[str]:
    """Command lines of test or benchmark runs that are not ours."""
    ours = _family()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if cmdline and _OTHERS.search(cmdline):
                found.append(f"{entry.name} {cmdline[:120]}")
    return found


def wait_until_alone(service: str, max_wait_s: float = 300.0) -> None:
    """Before stopping a shared service: wait (up to ``max_wait_s``) until no one else's test or benchmark
    runs, since stopping Kafka or Redis disturbs them. In CI nothing else runs and this returns at once."""
    deadline = time.monotonic() + max_wait_s
    said = 0.0
    while (others := others_running()) and time.monotonic() < deadline:
        if time.monotonic() - said > 30:
            said = time.monotonic()
            print(f"[chaos] waiting to stop the shared {service}: other runs are using it: {others}", flush=True)
        time.sleep(2)
    if others:
        print(f"[chaos] still not alone after {max_wait_s:.0f}s; stopping {service} anyway: {others}", flush=True)


def services(*args: str) -> str:
    """Run ``scripts/services`` (the local services' own script); its output."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "services"), *args], capture_output=True,
                            text=True, timeout=240, check=False)
    assert result.returncode == 0, f"scripts/services {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    if args[0] == "down":
        assert "stopped" in result.stdout, (
            f"this test stops and restarts the local {args[1]} and needs one started by scripts/services; "
            f"found another one:\n{result.stdout}")
    return result.stdout


@contextlib.contextmanager
def service_stopped(name: str, redis_url: str = "") -> Any:
    """Stop a shared service (kafka or redis) for the body of the ``with``; always start it again and
    wait until it answers. Yields a dict of times, monotonic and wall clock (``_wall``): ``down`` once it
    has stopped, and, once the body is done, ``up_started`` and ``up`` (answering again).

    The local Redis keeps nothing on disk (scripts/services), while a production Redis holds the
    API-key registry with persistence (docs/gateway.md). So for Redis a snapshot is saved just before
    the stop, loaded by the restarted server, and removed again afterwards.
    """
    wait_until_alone(name)
    snapshot = ROOT / ".cache" / "services" / "redis" / "dump.rdb"
    if name == "redis":
        client = redis.Redis.from_url(redis_url)
        client.save()
        client.close()
    services("down", name)
    times: dict[str, float] = {"down": time.monotonic(), "down_wall": time.time()}
    try:
        yield times
    finally:
        times["up_started"], times["up_started_wall"] = time.monotonic(), time.time()
        services("up", name)
        times["up"] = time.monotonic()
        if name == "redis":
            snapshot.unlink(missing_ok=True)
