"""Rampart side by side with its peer, an OpenTelemetry Collector built here from one release's modules
(benchmarks/peer/, `scripts/build-peer`), on the same machine, in the same run, on the same load.

(a) gateway: OTLP/HTTP protobuf in -> Kafka out, the client's 200 only after Kafka's acks=all
    acknowledgement. `rampart gateway` against the collector's otlp receiver -> kafka exporter
    (benchmarks/peer/gateway.yaml). Closed loop of concurrent clients over the same pre-generated
    bodies (100 and 1000 spans per request), then both at one common open-loop rate for latency.
(b) stage chain: Kafka in -> processing -> out, on the same payloads preloaded into a topic.
    `rampart worker --stages validate,scrub,dedup` (raw -> clean; and with
    `rampart sink otlp` behind it) against kafka receiver -> redaction -> OTLP/HTTP out
    (benchmarks/peer/stages.yaml) and -> Kafka out (stages-kafka.yaml).

Each server side is pinned to CPU 1 (GOMAXPROCS=1 for the collector), the load generator, the
capturing OTLP receiver and this script to CPU 0; Kafka and Redis float on both. Reported per side:
spans/s, CPU seconds per million spans (utime+stime of the process tree from /proc), p50/p99
latency, peak RSS (VmHWM), and the Rampart/peer ratios, as benchmarks/results/peer.{json,md,png}.

    .venv/bin/python -m benchmarks.peer_bench [--quick] [--repeats N] [--skip gateway|stages]

It runs scripts/build-peer first (a no-op once built). A default run takes 6 to 9 minutes on this
machine, --quick about 1.5.

Needs the local services (`make services`) and matplotlib for the chart (a benchmark-only extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from benchmarks.otlp_load import shift_to_now
from benchmarks.stages_bench import CLEAN, DIRTY
from benchmarks.stages_bench import requests as trace_requests
from rampart.keyring import KeyRing
from schemas.envelope import Envelope, PayloadFormat, Signal, encode
from tests.support.deployment import Deployment, RampartProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PEER_DIR = Path(__file__).resolve().parent / "peer"
PEER_BIN = ROOT / ".cache" / "bin" / "rampart-peer-otelcol"
KAFKA = "127.0.0.1:9092"
REDIS = "redis://127.0.0.1:6379/0"
TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOAD_CPU = 1, 0
PARTITIONS = 6
QUIET = {"RAMPART__LOGGING__LEVEL": "WARNING"}
UNLIMITED = {"RAMPART__GATEWAY__RATE_LIMIT__REQUESTS_PER_S": "1000000",
             "RAMPART__GATEWAY__RATE_LIMIT__BURST_REQUESTS": "1000000",
             "RAMPART__GATEWAY__RATE_LIMIT__BYTES_PER_S": "1e12",
             "RAMPART__GATEWAY__RATE_LIMIT__BURST_BYTES": "1e12"}


def say(message: str) -> None:
    print(f"[peer-bench] {message}", flush=True)


# ---------------------------------------------------------------- processes and /proc

def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of each process tree, plus what its reaped children used (cutime+cstime)."""
    total = 0
    for root in pids:
        for pid in tree(root):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / TICKS


def infrastructure_pids() -> dict[str, list[int]]:
    """Kafka's and Redis' processes as scripts/services started them (pid files), for their CPU share."""
    out: dict[str, list[int]] = {}
    for name in ("kafka", "redis"):
        with contextlib.suppress(OSError, ValueError):
            out[name] = [int((ROOT / ".cache" / "run" / f"{name}.pid").read_text().split()[0])]
    return out


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat), to see how full the machine was."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICKS


def _status_kb(pid: int, name: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    return 0


def peak_rss_mb(pids: list[int]) -> float:
    """Largest VmHWM of any one process of the trees (the goal is per process)."""
    return max((_status_kb(p, "VmHWM:") for root in pids for p in tree(root)), default=0) / 1024


def reset_peak_rss(pids: list[int]) -> None:
    for root in pids:
        for pid in tree(root):
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")


@contextlib.contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """Processes started inside inherit this CPU set (fork copies the calling thread's mask)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class PeerProcess:
    """One rampart-peer-otelcol process with the given config files and environment."""

    def __init__(self, configs: list[str], env: dict[str, str], log_path: Path, cores: int = 1) -> None:
        self.args = [str(PEER_BIN)] + [a for c in configs for a in ("--config", str(PEER_DIR / c))]
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("PEER_")}, **env,
                    "GOMAXPROCS": str(cores)}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool] | None = None, timeout_s: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        deadline = time.monotonic() + timeout_s
        while ready is not None and not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"peer did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def new_deployment(tmp: Path) -> Deployment:
    """A Rampart deployment with its own topics, Redis prefix and key ring (in its own folder)."""
    prefix = f"peerbench.{uuid.uuid4().hex[:8]}"
    folder = tmp / prefix
    folder.mkdir()
    return Deployment(prefix, KAFKA, REDIS, folder, partitions=PARTITIONS)


def http_answers(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        request = urllib.request.Request(url, data=b"", method="POST",  # noqa: S310 - loopback only
                                         headers={"Content-Type": "application/x-protobuf"})
        try:
            with urllib.request.urlopen(request, timeout=1) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except OSError:
            return False
    return probe


# ---------------------------------------------------------------- load

def make_bodies(spans: int, count: int, dirty: bool, seed: int) -> list[bytes]:
    """``count`` distinct OTLP/HTTP protobuf bodies (so dedup drops nothing); with ``dirty`` 5 % of
    span attributes carry a secret (e-mail, card number, bearer JWT, URL password, password=)."""
    out = []
    for request in trace_requests(spans, count, DIRTY if dirty else CLEAN, seed):
        shift_to_now(request)
        out.append(request.SerializeToString())
    return out


@dataclass
class LoadResult:
    seconds: float
    requests: int
    errors: dict[str, int]
    latencies: list[float]
    loadgen_cpu_s: float


async def drive(url: str, bodies: list[bytes], seconds: float, concurrency: int, rate: float | None,
                headers: dict[str, str]) -> LoadResult:
    """Closed loop of ``concurrency`` clients, or open loop at ``rate`` requests/s."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(1 << 62))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(64, concurrency * 2))) as session:
        async def one() -> None:
            body = bodies[next(counter) % len(bodies)]
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    outcome = str(resp.status)
            except aiohttp.ClientError as exc:
                outcome = type(exc).__name__
            if outcome == "200":
                latencies.append(time.perf_counter() - started)
            else:
                errors[outcome] = errors.get(outcome, 0) + 1

        async def closed(until: float) -> None:
            while time.perf_counter() < until:
                await one()

        warm_until = time.perf_counter() + 1.0
        await asyncio.gather(*(closed(warm_until) for _ in range(min(4, concurrency))))
        latencies.clear()
        errors.clear()
        own0, start = time.process_time(), time.perf_counter()
        if rate is None:
            await asyncio.gather(*(closed(start + seconds) for _ in range(concurrency)))
        else:
            tasks: set[asyncio.Task[None]] = set()
            next_at = start
            while next_at < start + seconds:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += 1.0 / rate
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return LoadResult(elapsed, len(latencies), errors, latencies, time.process_time() - own0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values) or [float("nan")]
    return ordered[int(q * (len(ordered) - 1))]


# ---------------------------------------------------------------- (a) gateway

@dataclass
class GatewayRun:
    side: str
    spans_per_request: int
    mode: str                      # throughput (closed loop) | latency (open loop, common rate)
    repeat: int
    requests: int
    seconds: float
    spans_per_s: float
    cpu_s_per_million_spans: float
    server_cpu_utilisation: float
    p50_ms: float
    p99_ms: float
    peak_rss_mb: float
    loadgen_cpu_utilisation: float
    errors: dict[str, int]
    target_rps: float | None = None


def measure_gateway(side: str, url: str, pids: list[int], bodies: list[bytes], spans: int, mode: str,
                    repeat: int, seconds: float, concurrency: int, rate: float | None,
                    headers: dict[str, str]) -> GatewayRun:
    reset_peak_rss(pids)
    cpu0 = cpu_seconds(pids)
    box: dict[str, LoadResult] = {}

    def load() -> None:
        box["r"] = asyncio.run(drive(url, bodies, seconds, concurrency, rate, headers))

    # The warm-up second of drive() falls inside the CPU window: subtract it by measuring the
    # server's CPU from just after it, sampled by a timer.
    marks: list[float] = []
    timer = threading.Timer(1.0, lambda: marks.append(cpu_seconds(pids)))
    timer.start()
    load()
    timer.join()
    cpu = cpu_seconds(pids) - (marks[0] if marks else cpu0)
    r = box["r"]
    total_spans = r.requests * spans
    return GatewayRun(
        side=side, spans_per_request=spans, mode=mode, repeat=repeat, requests=r.requests,
        seconds=round(r.seconds, 2), spans_per_s=round(total_spans / r.seconds),
        cpu_s_per_million_spans=round(cpu / max(1, total_spans) * 1e6, 3),
        server_cpu_utilisation=round(cpu / r.seconds, 2),
        p50_ms=round(percentile(r.latencies, 0.5) * 1000, 2), p99_ms=round(percentile(r.latencies, 0.99) * 1000, 2),
        peak_rss_mb=round(peak_rss_mb(pids), 1), loadgen_cpu_utilisation=round(r.loadgen_cpu_s / r.seconds, 2),
        errors=r.errors, target_rps=round(rate, 1) if rate else None)


def admin() -> AdminClient:
    return AdminClient({"bootstrap.servers": KAFKA, "log_level": 4})


def create_topics(names: list[str]) -> None:
    client = admin()  # kept alive until the futures complete
    futures = client.create_topics([NewTopic(n, PARTITIONS, 1, config={"max.message.bytes": "10485760"})
                                   for n in names])
    for future in futures.values():
        future.result(30)


def delete_topics(names: list[str]) -> None:
    client = admin()
    for future in client.delete_topics(names, request_timeout=30).values():
        with contextlib.suppress(Exception):
            future.result(30)


def run_gateways(args: argparse.Namespace, sizes: list[int], bodies: dict[int, list[bytes]], tmp: Path
                 ) -> list[GatewayRun]:
    runs: list[GatewayRun] = []
    deployment = new_deployment(tmp)
    peer_topic, batch_topic = f"{deployment.prefix}.peer.traces", f"{deployment.prefix}.peer-batch.traces"
    create_topics([peer_topic, batch_topic])
    peers: list[PeerProcess] = []
    try:
        with pinned({SERVER_CPU}):
            gateway = deployment.start_gateway(**UNLIMITED, **QUIET)
            urls: dict[str, str] = {"rampart": f"{gateway.http_url}/v1/traces"}
            pids: dict[str, list[int]] = {"rampart": [gateway.proc.pid if gateway.proc else 0]}
            for name, config, topic in (("peer", "gateway.yaml", peer_topic),
                                        ("peer+batch", "gateway-batch.yaml", batch_topic)):
                if name == "peer+batch" and not args.with_batch:
                    continue
                port = free_port()
                peer = PeerProcess([config], {"PEER_HTTP_ENDPOINT": f"127.0.0.1:{port}", "PEER_KAFKA_BROKERS": KAFKA,
                                              "PEER_TOPIC": topic}, tmp / f"{name}.log")
                peer.start(http_answers(f"http://127.0.0.1:{port}/v1/traces"))
                peers.append(peer)
                urls[name], pids[name] = f"http://127.0.0.1:{port}/v1/traces", [peer.pid]
        _, token = deployment.api_key()
        # Identical requests to both sides; the collector ignores the key header.
        headers = {"Content-Type": "application/x-protobuf", "x-api-key": token}
        for spans in sizes:
            for repeat in range(args.repeats):
                for side in ("rampart", "peer"):
                    say(f"(a) {side}, {spans} spans/request, throughput {args.duration:g}s "
                        f"(repeat {repeat + 1}/{args.repeats}) ...")
                    run = measure_gateway(side, urls[side], pids[side], bodies[spans], spans, "throughput", repeat,
                                          args.duration, args.concurrency, None, headers)
                    runs.append(run)
                    say(f"    {run.spans_per_s:,.0f} spans/s, {run.cpu_s_per_million_spans} CPU s/1M spans, "
                        f"server CPU {run.server_cpu_utilisation:.0%}, load-gen CPU {run.loadgen_cpu_utilisation:.0%}, "
                        f"p99 {run.p99_ms} ms, RSS {run.peak_rss_mb} MB, errors {run.errors or 'none'}")
            if "peer+batch" in urls:
                say(f"(a) peer+batch (reference), {spans} spans/request, throughput {args.duration:g}s ...")
                run = measure_gateway("peer+batch", urls["peer+batch"], pids["peer+batch"], bodies[spans], spans,
                                      "throughput", 0, args.duration, args.concurrency, None, headers)
                runs.append(run)
                say(f"    {run.spans_per_s:,.0f} spans/s, {run.cpu_s_per_million_spans} CPU s/1M spans")
            # Half the slowest throughput run of either side: a rate both sustain on this shared machine.
            slowest = min(r.spans_per_s for r in runs if r.side in ("rampart", "peer") and r.spans_per_request
                          == spans and r.mode == "throughput")
            rate = max(1.0, slowest / 2 / spans)
            for repeat, side in [(r, side) for r in range(args.repeats) for side in ("rampart", "peer")]:
                say(f"(a) {side}, {spans} spans/request, latency at {rate:.0f} req/s (half the slowest run) "
                    f"(repeat {repeat + 1}/{args.repeats}) ...")
                run = measure_gateway(side, urls[side], pids[side], bodies[spans], spans, "latency", repeat,
                                      args.latency_duration, args.concurrency, rate, headers)
                runs.append(run)
                say(f"    p50 {run.p50_ms} ms, p99 {run.p99_ms} ms, {run.cpu_s_per_million_spans} CPU s/1M spans")
    finally:
        for peer in peers:
            peer.stop()
        deployment.stop_all()
        delete_topics([peer_topic, batch_topic])
    return runs


# ---------------------------------------------------------------- (b) stage chain

class SpanCounter:
    """An OTLP/HTTP traces receiver that only counts the spans it is sent (gzip or not)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans = self.requests = 0
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        ready.set()
        self._loop.run_forever()

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/traces", self._traces)

    async def _traces(self, request: web.Request) -> web.Response:
        parsed = ExportTraceServiceRequest.FromString(await request.read())  # aiohttp undoes the gzip
        self.spans += sum(len(ss.spans) for rs in parsed.resource_spans for ss in rs.scope_spans)
        self.requests += 1
        return web.Response(body=b"", content_type="application/x-protobuf")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


_ITEMS_IN = re.compile(r'^rampart_stage_items_total\{[^}]*direction="in"[^}]*\} (\S+)$', re.M)


def worker_items(workers: Sequence[RampartProcess]) -> int:
    total = 0.0
    for worker in workers:
        with contextlib.suppress(OSError):
            total += sum(float(v) for v in _ITEMS_IN.findall(worker.metrics()))
    return int(total)


@contextlib.contextmanager
def topic_records(topic: str) -> Iterator[Callable[[], int]]:
    """Records on ``topic`` now (the sum of its partitions' high watermarks)."""
    consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": f"peerbench-probe-{uuid.uuid4().hex[:6]}",
                         "log_level": 4})
    try:
        yield lambda: sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                          for p in range(PARTITIONS))
    finally:
        consumer.close()


def preload(topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": KAFKA, "compression.type": "lz4", "linger.ms": 5, "acks": "all",
                         "enable.idempotence": True, "message.max.bytes": 10485760, "log_level": 4})
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, value=value, key=uuid.uuid4().bytes, partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0, f"could not preload {topic}"


def envelopes(bodies: list[bytes], ring: KeyRing) -> list[bytes]:
    """The same payloads as the gateway would publish them: signed envelopes."""
    now = time.time_ns()
    return [encode(ring.sign(Envelope(batch_id=str(uuid.uuid4()), tenant="acme", principal="bench",
                                      signal=Signal.TRACES, payload_format=PayloadFormat.OTLP_PROTO,
                                      received_at_ns=now, gateway_id="peer-bench", payload=b, stages=("gateway",))))
            for b in bodies]


def wait_for_group(group_id: str, topic: str, members: int, timeout_s: float = 90.0) -> None:
    """Until ``group_id`` is stable with ``members`` members that own every partition of ``topic``,
    so the load then arrives at consumers that are all up and will not rebalance while they drain."""
    client = admin()
    deadline = time.monotonic() + timeout_s
    state = "unknown"
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            found = client.describe_consumer_groups([group_id], request_timeout=10)[group_id].result(timeout=15)
            state = found.state.name
            owned = sorted(tp.partition for m in found.members for tp in m.assignment.topic_partitions
                           if tp.topic == topic)
            if state == "STABLE" and len(found.members) >= members and owned == list(range(PARTITIONS)):
                return
        time.sleep(0.3)
    raise RuntimeError(f"consumer group {group_id} not stable with {members} member(s) on {topic} (last: {state})")


@dataclass
class DrainRun:
    side: str                      # rampart-worker, rampart-worker+sink, peer-otlp, peer-kafka, ...
    spans_per_batch: int
    traffic: str
    batches: int
    spans: int
    processes: int
    cpus: int
    seconds: float
    spans_per_s: float
    cpu_s_per_million_spans: float
    cpu_utilisation: float
    peak_rss_mb: float
    complete: bool
    samples: int = 0
    # Over the same window, in cores: what Kafka and Redis used, and everything the machine did.
    kafka_cores: float = 0.0
    redis_cores: float = 0.0
    machine_cores: float = 0.0


@dataclass
class DrainWatch:
    """What sample_drain saw between the first and the last progress: seconds, the side's CPU seconds,
    spans, and the CPU seconds of Kafka, Redis and the whole machine."""

    seconds: float = 0.0
    cpu_s: float = 0.0
    spans: int = 0
    complete: bool = False
    samples: int = 0
    kafka_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    machine_cpu_s: float = 0.0


def sample_drain(side: str, pids: list[int], progress: Callable[[], int], total: int, timeout_s: float,
                 interval_s: float = 0.1, stall_s: float = 20.0) -> DrainWatch:
    """Watch a drain between the first and the last progress seen, so start-up before the first
    output and idle time after the last one are left out. Gives up after ``timeout_s``, or
    ``stall_s`` without progress once output has started (then the run is marked incomplete, and its
    rate and CPU are those of the part that did drain)."""
    infra = infrastructure_pids()
    Point = tuple[float, float, int, float, float, float]  # time, side CPU, spans, kafka, redis, machine
    first: Point | None = None
    last: Point | None = None
    samples, deadline, last_said = 0, time.monotonic() + timeout_s, 0.0
    while time.monotonic() < deadline:
        now, cpu, done = time.perf_counter(), cpu_seconds(pids), progress()
        point = (now, cpu, done, cpu_seconds(infra.get("kafka", [])), cpu_seconds(infra.get("redis", [])),
                 machine_busy_s())
        samples += 1
        if done > 0 and first is None:
            first = point
        if first is not None and (last is None or done > last[2]):
            last = point
        if now - last_said > 5:
            say(f"    {side}: {done:,}/{total:,} spans")
            last_said = now
        if done >= total:
            break
        if last is not None and now - last[0] > stall_s:
            say(f"    {side}: no progress for {stall_s:g}s, giving up")
            break
        time.sleep(interval_s)
    if first is None or last is None or last[2] == first[2]:
        return DrainWatch(samples=samples)
    return DrainWatch(last[0] - first[0], last[1] - first[1], last[2] - first[2], last[2] >= total, samples,
                      last[3] - first[3], last[4] - first[4], last[5] - first[5])


def drain_rampart(side: str, workers: int, with_sink: bool, cpus: set[int], values: list[bytes], spans: int,
                  traffic: str, tmp: Path, timeout_s: float, stages: str = "validate,scrub,dedup") -> DrainRun:
    deployment = new_deployment(tmp)
    counter = SpanCounter() if with_sink else None
    total = len(values) * spans
    raw = deployment.topics.raw(Signal.TRACES)
    try:
        signed = envelopes(values, deployment.verifier())
        with pinned(cpus):
            started: list[RampartProcess] = [deployment.start_worker(stages, **QUIET)
                                             for _ in range(workers)]
            if counter is not None:
                started.append(deployment.start_sink("otlp", RAMPART__SINKS__OTLP__ENDPOINT=counter.endpoint, **QUIET))
        pids = [p.proc.pid for p in started if p.proc is not None]
        stage_workers = started[:workers]
        wait_for_group(deployment.stage_group(stages), raw, workers)
        if counter is not None:
            wait_for_group(f"{deployment.prefix}.sink.otlp", deployment.topics.clean(Signal.TRACES), 1)
        preload(raw, signed)
        progress: Callable[[], int] = (lambda: counter.spans) if counter is not None else (
            lambda: worker_items(stage_workers))
        watch = sample_drain(side, pids, progress, total, timeout_s)
        rss = peak_rss_mb(pids)
    finally:
        deployment.stop_all()
        if counter is not None:
            counter.close()
    return _drain_run(side, spans, traffic, len(values), total, len(pids), len(cpus), watch, rss)


def drain_peer(side: str, config: str, cpus: set[int], values: list[bytes], spans: int, traffic: str, tmp: Path,
               timeout_s: float) -> DrainRun:
    prefix = f"peerbench.{uuid.uuid4().hex[:8]}"
    topic, output = f"{prefix}.peer.in", f"{prefix}.peer.out"
    create_topics([topic, output])
    counter = SpanCounter() if config == "stages.yaml" else None
    total = len(values) * spans
    peer = PeerProcess([config, "redaction.yaml"], {
        "PEER_KAFKA_BROKERS": KAFKA, "PEER_TOPIC": topic, "PEER_OUTPUT_TOPIC": output, "PEER_GROUP": f"{prefix}.peer",
        "PEER_OTLP_ENDPOINT": f"{counter.endpoint}/v1/traces" if counter else "http://127.0.0.1:9/v1/traces"},
        tmp / f"{side}.log", cores=len(cpus))
    try:
        with pinned(cpus):
            peer.start()
        wait_for_group(f"{prefix}.peer", topic, 1)
        preload(topic, values)
        with topic_records(output) as records:
            progress: Callable[[], int] = (lambda: counter.spans) if counter is not None else (
                lambda: records() * spans)
            watch = sample_drain(side, [peer.pid], progress, total, timeout_s)
        rss = peak_rss_mb([peer.pid])
    finally:
        peer.stop()
        if counter is not None:
            counter.close()
        delete_topics([topic, output])
    return _drain_run(side, spans, traffic, len(values), total, 1, len(cpus), watch, rss)


def _drain_run(side: str, spans: int, traffic: str, batches: int, total: int, processes: int, cpus: int,
               watch: DrainWatch, rss: float) -> DrainRun:
    seconds, done = watch.seconds, watch.spans

    def cores(cpu_s: float) -> float:
        return round(cpu_s / seconds, 2) if seconds else 0.0

    run = DrainRun(side=side, spans_per_batch=spans, traffic=traffic, batches=batches, spans=total,
                   processes=processes, cpus=cpus, seconds=round(seconds, 2),
                   spans_per_s=round(done / seconds) if seconds else 0.0,
                   cpu_s_per_million_spans=round(watch.cpu_s / done * 1e6, 3) if done else 0.0,
                   cpu_utilisation=cores(watch.cpu_s), peak_rss_mb=round(rss, 1), complete=watch.complete,
                   samples=watch.samples, kafka_cores=cores(watch.kafka_cpu_s), redis_cores=cores(watch.redis_cpu_s),
                   machine_cores=cores(watch.machine_cpu_s))
    say(f"    {side}: {run.spans_per_s:,.0f} spans/s, {run.cpu_s_per_million_spans} CPU s/1M spans, "
        f"CPU {run.cpu_utilisation:.0%} of {cpus} core(s), RSS {run.peak_rss_mb} MB; meanwhile Kafka "
        f"{run.kafka_cores:.0%}, Redis {run.redis_cores:.0%}, the machine {run.machine_cores:.0%} of a core"
        f"{'' if watch.complete else ' (INCOMPLETE)'}")
    return run


@dataclass(frozen=True)
class StageSide:
    """One contestant of (b): Rampart workers (optionally with the OTLP sink) or a peer config."""

    name: str
    cpus: frozenset[int]
    workers: int = 0               # Rampart stage workers; 0: the peer
    sink: bool = False
    peer_config: str = ""

    def drain(self, values: list[bytes], spans: int, traffic: str, tmp: Path, timeout_s: float) -> DrainRun:
        if self.workers:
            return drain_rampart(self.name, self.workers, self.sink, set(self.cpus), values, spans, traffic, tmp,
                                 timeout_s)
        return drain_peer(self.name, self.peer_config, set(self.cpus), values, spans, traffic, tmp, timeout_s)


ONE = frozenset({SERVER_CPU})
STAGE_SIDES = [
    StageSide("rampart-worker", ONE, workers=1),
    StageSide("peer-kafka", ONE, peer_config="stages-kafka.yaml"),
    StageSide("peer-otlp", ONE, peer_config="stages.yaml"),
    StageSide("rampart-worker+sink", ONE, workers=1, sink=True),
]
QUICK_STAGE_SIDES = STAGE_SIDES[:3]


def run_stages(args: argparse.Namespace, plan: list[tuple[int, str]], tmp: Path) -> list[DrainRun]:
    """Each load once per side, the two sides of the headline ratio (rampart-worker, peer-kafka)
    ``--stage-repeats`` times, alternating, so both see the same moments of a shared machine."""
    runs: list[DrainRun] = []
    core, rest = STAGE_SIDES[:2], (QUICK_STAGE_SIDES if args.quick else STAGE_SIDES)[2:]
    for spans, traffic in plan:
        batches = max(4, args.stage_spans // spans)
        say(f"(b) {spans} spans/batch, {traffic}: generating {batches} distinct batches ...")
        values = make_bodies(spans, batches, traffic != "clean", seed=spans + (7 if traffic != "clean" else 0))
        order = [(side, r) for r in range(args.stage_repeats) for side in core] + [(side, 0) for side in rest]
        for side, repeat in order:
            say(f"(b) {side.name}, {spans} spans/batch, {traffic}: draining {batches * spans:,} spans"
                f"{f' (repeat {repeat + 1}/{args.stage_repeats})' if side in core else ''} ...")
            runs.append(side.drain(values, spans, traffic, tmp, args.drain_timeout))
    return runs


# ---------------------------------------------------------------- summary, ratios, outputs

def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def gateway_summary(runs: list[GatewayRun], sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for spans in sizes:
        row: dict[str, Any] = {"spans_per_request": spans}
        for side in ("rampart", "peer", "peer+batch"):
            thr = [r for r in runs if r.side == side and r.spans_per_request == spans and r.mode == "throughput"]
            lat = [r for r in runs if r.side == side and r.spans_per_request == spans and r.mode == "latency"]
            if not thr:
                continue
            cpu = _median([r.cpu_s_per_million_spans for r in thr])
            row[side] = {
                "spans_per_s": _median([r.spans_per_s for r in thr]),
                "cpu_s_per_million_spans": cpu,
                "spans_per_cpu_s": round(1e6 / cpu) if cpu else None,
                "server_cpu_utilisation": _median([r.server_cpu_utilisation for r in thr]),
                "p50_ms_saturated": _median([r.p50_ms for r in thr]),
                "p99_ms_saturated": _median([r.p99_ms for r in thr]),
                "p50_ms_common_rate": _median([r.p50_ms for r in lat]),
                "p99_ms_common_rate": _median([r.p99_ms for r in lat]),
                "common_rate_rps": lat[0].target_rps if lat else None,
                "peak_rss_mb": _median([r.peak_rss_mb for r in thr]),
                "peak_rss_mb_max": max(r.peak_rss_mb for r in thr), "repeats": len(thr),
                "errors": sum(sum(r.errors.values()) for r in thr)}
        r, p = row.get("rampart"), row.get("peer")
        if r and p:
            row["ratio"] = {"spans_per_cpu_s": _ratio(r["spans_per_cpu_s"], p["spans_per_cpu_s"]),
                            "spans_per_s": _ratio(r["spans_per_s"], p["spans_per_s"]),
                            "p50_common_rate": _ratio(r["p50_ms_common_rate"], p["p50_ms_common_rate"]),
                            "p99_common_rate": _ratio(r["p99_ms_common_rate"], p["p99_ms_common_rate"]),
                            "peak_rss": _ratio(r["peak_rss_mb"], p["peak_rss_mb"])}
        rows.append(row)
    return rows


def _side_summary(runs: list[DrainRun]) -> dict[str, Any]:
    """Medians over the repeats of one side on one load."""
    cpu = _median([r.cpu_s_per_million_spans for r in runs if r.cpu_s_per_million_spans])
    return {"processes": runs[0].processes, "cpus": runs[0].cpus, "spans": runs[0].spans, "repeats": len(runs),
            "complete": all(r.complete for r in runs),
            "spans_per_s": _median([r.spans_per_s for r in runs if r.complete]),
            "cpu_s_per_million_spans": cpu, "spans_per_cpu_s": round(1e6 / cpu) if cpu else None,
            "cpu_utilisation": _median([r.cpu_utilisation for r in runs]),
            "kafka_cores": _median([r.kafka_cores for r in runs]),
            "redis_cores": _median([r.redis_cores for r in runs]),
            "machine_cores": _median([r.machine_cores for r in runs]),
            "peak_rss_mb": _median([r.peak_rss_mb for r in runs]), "peak_rss_mb_max": max(r.peak_rss_mb for r in runs)}


def stage_summary(runs: list[DrainRun]) -> list[dict[str, Any]]:
    rows = []
    for spans, traffic in dict.fromkeys((r.spans_per_batch, r.traffic) for r in runs):
        names = dict.fromkeys(r.side for r in runs if r.spans_per_batch == spans and r.traffic == traffic)
        g = {name: _side_summary([r for r in runs if (r.spans_per_batch, r.traffic, r.side) == (spans, traffic, name)])
             for name in names}

        def get(side: str, key: str, table: dict[str, dict[str, Any]] = g) -> float | None:
            value = table.get(side, {}).get(key)
            return float(value) if value else None

        rows.append({
            "spans_per_batch": spans, "traffic": traffic, "sides": g,
            "ratio": {
                "worker_vs_peer_kafka_spans_per_cpu_s": _ratio(get("rampart-worker", "spans_per_cpu_s"),
                                                               get("peer-kafka", "spans_per_cpu_s")),
                "worker_vs_peer_otlp_spans_per_cpu_s": _ratio(get("rampart-worker", "spans_per_cpu_s"),
                                                              get("peer-otlp", "spans_per_cpu_s")),
                "worker_sink_vs_peer_otlp_spans_per_cpu_s": _ratio(get("rampart-worker+sink", "spans_per_cpu_s"),
                                                                   get("peer-otlp", "spans_per_cpu_s")),
                "worker_vs_peer_kafka_peak_rss": _ratio(get("rampart-worker", "peak_rss_mb"),
                                                        get("peer-kafka", "peak_rss_mb")),
            }})
    return rows


def versions() -> dict[str, str]:
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT).stdout.strip()  # noqa: S603
        except OSError:
            return "unknown"
    import confluent_kafka  # noqa: PLC0415 - only for its version

    commit = out("git", "rev-parse", "--short=12", "HEAD")
    diff = subprocess.run(["git", "diff", "HEAD"], capture_output=True, check=False, cwd=ROOT).stdout  # noqa: S607
    dirty = f" + uncommitted changes (git diff HEAD sha256 {hashlib.sha256(diff).hexdigest()[:12]})" if diff else ""
    gomod = (PEER_DIR / "go.mod").read_text()
    franz = re.search(r"github.com/twmb/franz-go (v\S+)", gomod)
    built_with = re.search(r"go\d+\.\d+(?:\.\d+)?", out("go", "version", str(PEER_BIN)))
    return {
        "rampart_commit": commit + dirty,
        "python": platform.python_version(),
        "librdkafka": confluent_kafka.libversion()[0],
        "peer": out(str(PEER_BIN), "--version"),
        "collector_core": "go.opentelemetry.io/collector v0.165.0 (pdata v1.71.0)",
        "collector_contrib": "kafkaexporter, kafkareceiver, redactionprocessor v0.165.1",
        "franz_go": franz.group(1) if franz else "unknown",
        "go": built_with.group(0) if built_with else "unknown",
        "kafka_broker": "Apache Kafka 4.1.1 (scripts/services), single node",
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def markdown(meta: dict[str, Any], gateway: list[dict[str, Any]], stages: list[dict[str, Any]]) -> str:
    v = meta["versions"]
    lines = [f"# Rampart vs OpenTelemetry Collector ({meta['when']}, {meta['machine']['cores']} cores)", "",
             f"Rampart {v['rampart_commit']} on Python {v['python']} (librdkafka {v['librdkafka']}); peer "
             f"`{v['peer']}`: {v['collector_core']}, contrib {v['collector_contrib']}, franz-go {v['franz_go']}, "
             f"built with {v['go']}; {v['kafka_broker']}.", "", meta["setup"], "",
             "## (a) Gateway: OTLP/HTTP protobuf in, Kafka (acks=all) out, 200 after the ack", "",
             f"Closed loop, {meta['concurrency']} clients, {meta['duration_s']:g} s per run, median of "
             f"{meta['repeats']} runs per side; latency also at one common open-loop rate (half the slowest "
             "throughput run of either side), same number of runs. `peer+batch` is the collector with the batch "
             "processor (answers before Kafka has the data): reference only. Peak RSS: median of the runs' VmHWM.",
             "",
             "| spans/req | side | spans/s | CPU s / 1M spans | spans per CPU-s | server CPU | p50 / p99 ms saturated "
             "| p50 / p99 ms at common rate | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for row in gateway:
        for side in ("rampart", "peer", "peer+batch"):
            s = row.get(side)
            if not s:
                continue
            lines.append(f"| {row['spans_per_request']} | {side} | {_fmt(s['spans_per_s'])} | "
                         f"{s['cpu_s_per_million_spans']} | {_fmt(s['spans_per_cpu_s'])} | "
                         f"{s['server_cpu_utilisation']:.0%} | {s['p50_ms_saturated']} / {s['p99_ms_saturated']} | "
                         f"{_fmt(s['p50_ms_common_rate'])} / {_fmt(s['p99_ms_common_rate'])} "
                         f"@ {_fmt(s['common_rate_rps'])} req/s | {s['peak_rss_mb']} |")
    lines += ["", "## (b) Stage chain: Kafka in, processing, out", "",
              "Consumers started and their group stable first, then the distinct batches produced at once to a "
              "6-partition topic; rate and CPU between the first and the last output seen; medians where repeated. "
              "`rampart-worker`: validate+scrub+dedup fused, raw -> clean (verify, decode, encode, re-sign, re-key "
              "by trace id, dedup marks in Redis). `peer-kafka`: kafka receiver -> redaction -> kafka exporter. "
              "`peer-otlp`: -> OTLP/HTTP exporter (gzip) to a span counter. `rampart-worker+sink`: worker and "
              "`rampart sink otlp` sharing the one core. "
              "Scaling (2 workers against 1) has its own, longer drains: benchmarks/scaling_bench.py, "
              "results/stage-scaling.md. Kafka, Redis and machine: the cores they (and everything running on "
              "the machine) kept busy over the same window.", "",
              "| spans/batch | traffic | side | processes / cores | spans x runs | spans/s | CPU s / 1M spans | "
              "spans per CPU-s | CPU used | Kafka / Redis / machine (cores) | peak RSS MB (per process) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in stages:
        for name, s in row["sides"].items():
            lines.append(f"| {row['spans_per_batch']} | {row['traffic']} | {name} | {s['processes']} / {s['cpus']} | "
                         f"{s['spans']:,} x {s['repeats']} | {_fmt(s['spans_per_s'])}"
                         f"{'' if s['complete'] else ' (incomplete)'} | {s['cpu_s_per_million_spans']} | "
                         f"{_fmt(s['spans_per_cpu_s'])} | {s['cpu_utilisation']:.0%} | "
                         f"{s['kafka_cores']:.2f} / {s['redis_cores']:.2f} / {s['machine_cores']:.2f} | "
                         f"{s['peak_rss_mb']} |")
    lines += ["", "## Ratios Rampart / peer and the goals of issue #9", "",
              "| what | load | Rampart / peer | goal |", "|---|---|---|---|"]
    for row in gateway:
        r = row.get("ratio", {})
        lines.append(f"| gateway spans per CPU-second | {row['spans_per_request']} spans/req | "
                     f"{_fmt(r.get('spans_per_cpu_s'))} | >= 2 |")
        lines.append(f"| gateway peak RSS | {row['spans_per_request']} spans/req | {_fmt(r.get('peak_rss'))} | <= 2 |")
        lines.append(f"| gateway p99 at common rate | {row['spans_per_request']} spans/req | "
                     f"{_fmt(r.get('p99_common_rate'))} | - |")
    for row in stages:
        r, load = row["ratio"], f"{row['spans_per_batch']} spans/batch, {row['traffic']}"
        lines.append(f"| stage chain spans per CPU-second (worker vs peer-kafka) | {load} | "
                     f"{_fmt(r['worker_vs_peer_kafka_spans_per_cpu_s'])} | >= 0.5 |")
        lines.append(f"| stage chain + sink vs peer-otlp, spans per CPU-second | {load} | "
                     f"{_fmt(r['worker_sink_vs_peer_otlp_spans_per_cpu_s'])} | - |")
        lines.append(f"| stage worker peak RSS (vs peer-kafka) | {load} | {_fmt(r['worker_vs_peer_kafka_peak_rss'])} "
                     "| <= 2 |")
    lines += ["", "## What does not mirror exactly", ""] + [f"- {n}" for n in meta["differences"]]
    return "\n".join(lines) + "\n"


def chart(path: Path, gateway: list[dict[str, Any]], stages: list[dict[str, Any]]) -> bool:
    try:
        import matplotlib as mpl  # noqa: PLC0415 - a benchmark-only dependency, optional
        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        from matplotlib.ticker import StrMethodFormatter  # noqa: PLC0415
    except ImportError:
        say("matplotlib not installed: no chart (pip install matplotlib)")
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))

    def bars(ax: Any, labels: list[str], rampart: list[float], peer: list[float], title: str, ylabel: str,
             goal: str) -> None:
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], rampart, 0.4, label="Rampart", color="#c0392b")
        ax.bar([x + 0.2 for x in xs], peer, 0.4, label="OTel Collector", color="#2c7fb8")
        for x, (a, b) in enumerate(zip(rampart, peer, strict=True)):
            if a and b:
                ax.annotate(f"{a / b:.2f}x", (x, max(a, b)), ha="center", va="bottom", fontsize=9)
        ax.set_xticks(list(xs), labels, fontsize=8)
        ax.set_title(f"{title}\n{goal}", fontsize=10)
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}" if max(rampart + peer, default=0) > 10
                                                        else "{x:,.1f}"))
        ax.margins(y=0.15)
        ax.legend(fontsize=8)

    def side(row: dict[str, Any], name: str, key: str) -> float:
        return float(row["sides"].get(name, {}).get(key) or 0)

    gw = [row for row in gateway if "peer" in row and "rampart" in row]
    g_labels = [f"{row['spans_per_request']} spans/req" for row in gw]
    s_labels = [f"{row['spans_per_batch']}/batch\n{row['traffic']}" for row in stages]
    bars(axes[0], g_labels, [row["rampart"]["spans_per_cpu_s"] or 0 for row in gw],
         [row["peer"]["spans_per_cpu_s"] or 0 for row in gw],
         "(a) gateway: spans per CPU-second", "spans / CPU-s", "goal: Rampart/peer >= 2x")
    bars(axes[1], s_labels, [side(r, "rampart-worker", "spans_per_cpu_s") for r in stages],
         [side(r, "peer-kafka", "spans_per_cpu_s") for r in stages],
         "(b) stage chain, Kafka -> Kafka: spans per CPU-second", "spans / CPU-s", "goal: Rampart/peer >= 0.5x")
    bars(axes[2], [f"gateway\n{row['spans_per_request']}/req" for row in gw]
         + [f"worker\n{row['spans_per_batch']}/batch\n{row['traffic']}" for row in stages],
         [row["rampart"]["peak_rss_mb"] for row in gw] + [side(r, "rampart-worker", "peak_rss_mb") for r in stages],
         [row["peer"]["peak_rss_mb"] for row in gw] + [side(r, "peer-kafka", "peak_rss_mb") for r in stages],
         "peak RSS per process", "MB", "goal: Rampart/peer <= 2x")
    fig.suptitle("Rampart vs OpenTelemetry Collector: same machine, same load, same run, one core each "
                 "(benchmarks/peer_bench.py)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


DIFFERENCES = [
    "Gateway: Rampart authenticates the API key and rate-limits per tenant in Redis (tokens leased ahead: "
    "at most one script call per tenant per gateway.rate_limit.lease_s, 0.1 s by default), wraps the body in "
    "an HMAC-signed envelope and does not decode it; the collector decodes the "
    "protobuf into pdata and re-encodes it for Kafka, with no authentication or rate limit. Both answer 200 "
    "only after Kafka's acks=all acknowledgement (the peer runs without the batch processor and with the "
    "exporter's queue off; `peer+batch` shows the usual deployment, which answers before Kafka has the data).",
    "Producers: both idempotent, acks=all, lz4, 5 ms linger, one record per request (librdkafka in Rampart, "
    "franz-go in the collector). Record keys differ (Rampart: batch id; collector: none, sticky partitioner).",
    "Stage chain: Rampart verifies the signature, validates every item (ids, timestamps, limits), scrubs, "
    "marks every span in Redis for dedup (Redis' CPU is not counted), re-keys the output by trace id (up to one "
    "record per output partition per input) and re-signs; the collector only decodes, redacts and "
    "re-encodes. No collector component does validate, dedup or signatures.",
    "Redaction rules: Go's RE2 has no look-around and the processor has no per-match check, so the card "
    "rule has no Luhn check, url_password and secret_param mask a few more characters, sensitive keys are "
    "masked instead of dropped, and SQL literals are handled by the processor's SQL obfuscator (only where "
    "db.system is set on client/server spans). The processor runs every blocked regex on every string "
    "attribute; Rampart screens the raw payload first and runs one combined regex only where a rule could "
    "match. The processor does not look at span/event names or link attributes; Rampart does.",
    "Output of (b): `peer-kafka` writes Kafka like the Rampart worker; `peer-otlp` exports OTLP/HTTP, which "
    "in Rampart is the sink's job (`rampart-worker+sink`). Offsets: both commit only after the output is "
    "acknowledged (message_marking.after; exporter queue off).",
    "Pinning: each side's processes are pinned to CPU 1 (collector GOMAXPROCS=1), the load generator, span "
    "counter and this script to CPU 0; Kafka, Redis and other users of this shared machine are not pinned "
    "and take time from both cores, so spans/s moves between runs more than CPU per span does.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about 2 minutes: fewer and shorter runs")
    parser.add_argument("--duration", type=float, default=None, help="seconds per gateway run (default 6; quick 4)")
    parser.add_argument("--latency-duration", type=float, default=None, help="seconds per latency run")
    parser.add_argument("--repeats", type=int, default=None, help="gateway runs per side and size (default 3)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients for the gateway")
    parser.add_argument("--stage-spans", type=int, default=None, help="spans per stage-chain drain")
    parser.add_argument("--stage-repeats", type=int, default=None,
                        help="runs of rampart-worker and peer-kafka per stage load (default 2; quick 1)")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="give up a drain after this")
    parser.add_argument("--with-batch", action=argparse.BooleanOptionalAction, default=None,
                        help="also measure the collector with the batch processor (reference)")
    parser.add_argument("--skip", choices=["gateway", "stages"], action="append", default=[])
    parser.add_argument("--out", default=str(RESULTS / "peer"), help="output path without extension")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (4.0 if quick else 6.0)
    args.latency_duration = args.latency_duration or (3.0 if quick else 4.0)
    args.repeats = args.repeats or (1 if quick else 3)
    args.stage_spans = args.stage_spans or (40_000 if quick else 60_000)
    args.stage_repeats = args.stage_repeats or (1 if quick else 2)
    args.with_batch = (not quick) if args.with_batch is None else args.with_batch
    sizes = [1000, 100]
    stage_plan = [(1000, "5% to scrub")] if quick else [(1000, "5% to scrub"), (1000, "clean"), (100, "5% to scrub")]

    build = subprocess.run([str(ROOT / "scripts" / "build-peer")], check=False)  # noqa: S603
    if build.returncode != 0:
        return build.returncode
    os.sched_setaffinity(0, {LOAD_CPU})
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rampart-peer-bench-"))
    say(f"logs in {tmp}; this process and the load on CPU {LOAD_CPU}, the side under test on CPU {SERVER_CPU}")
    gateway_runs: list[GatewayRun] = []
    stage_runs: list[DrainRun] = []
    if "gateway" not in args.skip:
        say("(a) generating request bodies ...")
        bodies = {spans: make_bodies(spans, 16, dirty=False, seed=spans) for spans in sizes}
        gateway_runs = run_gateways(args, sizes, bodies, tmp)
    if "stages" not in args.skip:
        stage_runs = run_stages(args, stage_plan, tmp)
    gateway, stages = gateway_summary(gateway_runs, sizes), stage_summary(stage_runs)
    meta: dict[str, Any] = {
        "benchmark": "peer", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
        "versions": versions(), "quick": quick, "duration_s": args.duration, "repeats": args.repeats,
        "concurrency": args.concurrency, "stage_spans": args.stage_spans, "stage_repeats": args.stage_repeats,
        "wall_seconds": round(time.monotonic() - started),
        "setup": "The side under test is pinned to CPU 1 (one core each; the collector with GOMAXPROCS=1), the "
                 "load generator and this script to CPU 0; the single-node Kafka and Redis run unpinned on this "
                 "shared 2-core machine. CPU is utime+stime of the side's processes from /proc; peak RSS is the "
                 "largest VmHWM of one process.",
        "differences": DIFFERENCES,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({**meta, "gateway": gateway, "stages": stages,
                                               "runs": {"gateway": [asdict(r) for r in gateway_runs],
                                                        "stages": [asdict(r) for r in stage_runs]}}, indent=2) + "\n")
    text = markdown(meta, gateway, stages)
    Path(f"{out}.md").write_text(text)
    drew = chart(Path(f"{out}.png"), gateway, stages)
    print(text)
    say(f"wrote {out}.json, {out}.md{', ' + str(out) + '.png' if drew else ''} in {meta['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
