"""Sink benchmark: spans/s and metric points/s exported by ONE sink process, its CPU seconds per million
and its peak RSS (issue #6).

For each case a fresh deployment (own topic prefix, created with the project's topic tooling, own key
ring and Redis prefix) gets its clean topic filled with signed envelopes exactly as the last stage
writes them: client batches are wrapped and signed as the gateway does, then passed through the
stage chain's own output code (processors.chain.StageChain: re-encode, re-key by trace id for traces
or by tenant/service for metrics over the 6 partitions, stages gateway+validate+scrub+dedup, signed
with the worker's key). The processors themselves are not run: the generated data is clean and would
leave them unchanged. Then one `rampart sink otlp` (traces) or `rampart sink prometheus` (metrics)
starts, with the shipped sink settings, and drains the backlog into:

  receiver    a counting receiver in this process on 127.0.0.1: OTLP/HTTP traces decoded and their
              spans counted; remote-write requests snappy-decoded and their samples counted
  jaeger      the local Jaeger, OTLP/HTTP on 127.0.0.1:14318 (traces)
  prometheus  the local Prometheus, http://127.0.0.1:9090/api/v1/write (metrics)

What is counted: for traces, spans; for metrics, OTLP data points (what the sink counts as exported
items) and the Prometheus samples they become (every bucket, _sum and _count of a histogram point is
a sample, plus one target_info sample per resource). Rates and CPU are taken between the first and
the last poll (every 0.2 s) at which the sink's `rampart_sink_exported_items_total` had grown, so the
sink's start-up and idle tail are left out; CPU is utime+stime of the sink process from /proc; peak
RSS its VmHWM. Results go to benchmarks/results/sinks.{json,md}.

    .venv/bin/python -m benchmarks.sinks_bench [--quick] [--no-real] [--spans N] [--points N]

A default run takes about 4 minutes on this 2-core machine, --quick under 1 (receiver only). Needs the
local services (`make services`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cramjam
from aiohttp import web
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from benchmarks.otlp_load import metrics_request, shift_to_now, trace_request
from benchmarks.peer_bench import SpanCounter, cpu_seconds, peak_rss_mb
from processors.chain import StageChain
from rampart.config import KeyringConfig, StagesConfig
from rampart.kafka import producer
from rampart.keyring import KeyRing, load_keyring
from schemas.envelope import Envelope, PayloadFormat, Signal, encode
from tests.support.deployment import Deployment, RampartProcess

RESULTS = Path(__file__).resolve().parent / "results"
KAFKA = "127.0.0.1:9092"
REDIS = "redis://127.0.0.1:6379/0"
PARTITIONS = 6
QUIET = {"RAMPART__LOGGING__LEVEL": "WARNING"}
BACKENDS = {"jaeger": "http://127.0.0.1:14318", "prometheus": "http://127.0.0.1:9090/api/v1/write"}
SINK_OF = {Signal.TRACES: "otlp", Signal.METRICS: "prometheus"}
POLL_S = 0.2


def say(message: str) -> None:
    print(f"[sinks-bench] {message}", flush=True)


def _write_request_class() -> Any:
    """Just enough of prometheus.WriteRequest to count samples and exemplars: labels stay unparsed (unknown
    fields), so the C protobuf parser does the work and the receiver keeps up with the sink."""
    file = descriptor_pb2.FileDescriptorProto(name="sinks_bench_remote_write.proto", package="sinksbench")
    sample = file.message_type.add(name="Sample")
    sample.field.add(name="value", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE)
    sample.field.add(name="timestamp", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64)
    series = file.message_type.add(name="TimeSeries")
    series.field.add(name="samples", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                     type_name=".sinksbench.Sample", label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    series.field.add(name="exemplars", number=3, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                     label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    write = file.message_type.add(name="WriteRequest")
    write.field.add(name="timeseries", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                    type_name=".sinksbench.TimeSeries", label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sinksbench.WriteRequest"))


WriteRequest = _write_request_class()


class CountingReceiver(SpanCounter):
    """Also takes Prometheus remote writes and counts their samples and exemplars.
    (tests.support.backend.CapturingBackend keeps every span id and takes only traces.)"""

    def __init__(self) -> None:
        self.samples = self.exemplars = 0
        super().__init__()

    def _add_routes(self, app: web.Application) -> None:
        super()._add_routes(app)
        app.router.add_post("/api/v1/write", self._remote_write)

    async def _remote_write(self, request: web.Request) -> web.Response:
        # Remote write frames its snappy without the stream format's framing: raw blocks.
        parsed = WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(await request.read())))
        self.samples += sum(len(ts.samples) for ts in parsed.timeseries)
        self.exemplars += sum(len(ts.exemplars) for ts in parsed.timeseries)
        self.requests += 1
        return web.Response(status=204)


# ---------------------------------------------------------------- load: client batches -> clean topic

def trace_bodies(spans: int, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        request = trace_request(spans, rng)
        shift_to_now(request)
        out.append(request.SerializeToString())
    return out


def metric_bodies(points: int, count: int, seed: int) -> list[bytes]:
    """``count`` successive exports of the same series, spread over the last ten minutes (oldest first), so
    Prometheus takes every sample in order; a new service.instance.id per call gives new series."""
    rng = random.Random(seed)
    instance = uuid.uuid4().hex[:8]
    now = time.time_ns()
    step = 600 * 10**9 // count
    first = now - 600 * 10**9
    return [metrics_request(points, i, first + i * step, first - 3600 * 10**9, instance, rng).SerializeToString()
            for i in range(count)]


def clean_records(deployment: Deployment, signal: Signal, bodies: list[bytes]) -> list[Any]:
    """The records the last stage would produce from these client batches (rampart.publisher.Record)."""
    gateway = deployment.verifier()  # signs with the gateway's key, as `rampart gateway` would
    worker: KeyRing = load_keyring(KeyringConfig(file=deployment.keyring_file, signing_key_id="worker-1"), {})
    stages = StagesConfig()
    chain = StageChain(names=list(stages.pipeline), processors=[], keyring=worker, topics=deployment.topics,
                       output_topic=deployment.topics.clean, keying=stages.keying,
                       output_partitions=lambda _signal: PARTITIONS, instance="sinks-bench")
    raw = deployment.topics.raw(signal)
    records = []
    for body in bodies:
        envelope = gateway.sign(Envelope(batch_id=str(uuid.uuid4()), tenant="acme", principal="bench", signal=signal,
                                         payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=time.time_ns(),
                                         gateway_id="sinks-bench", payload=body, stages=("gateway",)))
        outcome = chain.handle(signal, encode(envelope), None, raw)
        if outcome.quarantine_reason is not None or not outcome.records:
            raise RuntimeError(f"the stage chain did not pass a generated batch: {outcome.quarantine_reason}")
        records += outcome.records
    return records


def prefill(deployment: Deployment, records: list[Any]) -> None:
    """Produce the records with the project's producer settings, to the partition or by the key the stage chose."""
    out = producer(deployment.kafka, "sinks-bench")
    for record in records:
        where = {"partition": record.partition} if record.partition is not None else {}
        while True:
            try:
                out.produce(record.topic, value=record.value, key=record.key, **where)
                break
            except BufferError:
                out.poll(0.1)
        out.poll(0)
    if out.flush(120) != 0:
        raise RuntimeError("could not fill the clean topic")


# ---------------------------------------------------------------- one run

_EXPORTED = re.compile(r'^rampart_sink_exported_items_total\{[^}]*\} (\S+)$', re.M)
_BATCHES = re.compile(r'^rampart_sink_batches_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$', re.M)


@dataclass
class Run:
    signal: str
    sink: str
    backend: str
    items_per_client_batch: int     # spans or data points per request as a client sent it to the gateway
    client_batches: int
    clean_records: int              # envelopes on the clean topic after the stage's re-keying
    items: int                      # spans or OTLP data points in them
    exported: int                   # as counted by the sink in the measured window
    seconds: float
    items_per_s: float
    cpu_s_per_million_items: float
    cpu_utilisation: float
    peak_rss_mb: float
    complete: bool
    outcomes: dict[str, int]        # the sink's batches by outcome (exported, dead_lettered, quarantined, ...)
    receiver_requests: int | None = None
    items_per_export: float | None = None
    samples: int | None = None      # metrics: Prometheus samples the receiver got in the window
    samples_per_s: float | None = None
    cpu_s_per_million_samples: float | None = None
    exemplars: int | None = None


def sink_counts(metrics: str) -> tuple[int, dict[str, int]]:
    outcomes: dict[str, int] = {}
    for outcome, value in _BATCHES.findall(metrics):
        outcomes[outcome] = outcomes.get(outcome, 0) + int(float(value))
    return int(sum(float(v) for v in _EXPORTED.findall(metrics))), outcomes


Mark = tuple[float, float, int, int]  # (time, sink CPU seconds, items exported, samples received)


def watch(sink: RampartProcess, pids: list[int], receiver: CountingReceiver | None, total_items: int,
          timeout_s: float, stall_s: float) -> tuple[Mark | None, Mark | None]:
    """Poll the sink until it has exported ``total_items``, made no progress for ``stall_s`` or ``timeout_s``
    is up: the first poll at which it had exported something and the last at which that had grown."""
    first: Mark | None = None
    last: Mark | None = None
    deadline, said = time.monotonic() + timeout_s, 0.0
    while time.monotonic() < deadline:
        exported, _ = sink_counts(sink.metrics())
        mark = (time.perf_counter(), cpu_seconds(pids), exported, receiver.samples if receiver else 0)
        if exported > 0 and first is None:
            first = mark
        if first is not None and (last is None or exported > last[2]):
            last = mark
        if mark[0] - said > 5:
            say(f"    {exported:,}/{total_items:,} exported")
            said = mark[0]
        if exported >= total_items or (last is not None and mark[0] - last[0] > stall_s):
            break
        time.sleep(POLL_S)
    return first, last


def run_case(signal: Signal, backend: str, size: int, bodies: list[bytes], total_items: int, tmp: Path,
             timeout_s: float, stall_s: float = 20.0) -> Run:
    sink_name = SINK_OF[signal]
    prefix = f"sinksbench.{uuid.uuid4().hex[:8]}"
    folder = tmp / prefix
    folder.mkdir()
    deployment = Deployment(prefix, KAFKA, REDIS, folder, partitions=PARTITIONS)
    receiver = CountingReceiver() if backend == "receiver" else None
    try:
        records = clean_records(deployment, signal, bodies)
        say(f"  {len(bodies)} client batches -> {len(records)} clean records on {deployment.topics.clean(signal)}")
        prefill(deployment, records)
        endpoint = receiver.endpoint if receiver is not None else BACKENDS[backend]
        if sink_name == "otlp":
            config = {"RAMPART__SINKS__OTLP__ENDPOINT": endpoint}
        else:
            config = {"RAMPART__SINKS__PROMETHEUS__ENDPOINT": f"{endpoint}/api/v1/write" if receiver else endpoint}
        sink = deployment.start_sink(sink_name, **config, **QUIET)
        assert sink.proc is not None
        pids = [sink.proc.pid]
        first, last = watch(sink, pids, receiver, total_items, timeout_s, stall_s)
        _, outcomes = sink_counts(sink.metrics())
        rss = peak_rss_mb(pids)
    finally:
        deployment.stop_all()
        if receiver is not None:
            receiver.close()
    seconds = last[0] - first[0] if first and last else 0.0
    cpu = last[1] - first[1] if first and last else 0.0
    done = last[2] - first[2] if first and last else 0
    run = Run(signal=signal.value, sink=sink_name, backend=backend, items_per_client_batch=size,
              client_batches=len(bodies), clean_records=len(records), items=total_items, exported=done,
              seconds=round(seconds, 2), items_per_s=round(done / seconds) if seconds else 0.0,
              cpu_s_per_million_items=round(cpu / done * 1e6, 2) if done else 0.0,
              cpu_utilisation=round(cpu / seconds, 2) if seconds else 0.0, peak_rss_mb=round(rss, 1),
              complete=bool(last and last[2] >= total_items), outcomes=outcomes)
    if receiver is not None:
        run.receiver_requests = receiver.requests
        run.items_per_export = round((receiver.spans if signal is Signal.TRACES else total_items)
                                     / max(1, receiver.requests), 1)
        if signal is Signal.METRICS and first and last:
            samples = last[3] - first[3]
            run.samples, run.exemplars = samples, receiver.exemplars
            run.samples_per_s = round(samples / seconds) if seconds else 0.0
            run.cpu_s_per_million_samples = round(cpu / samples * 1e6, 2) if samples else 0.0
        elif receiver.spans != total_items:
            run.complete = False
    unit = "spans" if signal is Signal.TRACES else "points"
    say(f"    {run.items_per_s:,.0f} {unit}/s"
        f"{f', {run.samples_per_s:,.0f} samples/s' if run.samples_per_s else ''}, "
        f"{run.cpu_s_per_million_items} CPU s/1M {unit}, CPU {run.cpu_utilisation:.0%}, RSS {run.peak_rss_mb} MB, "
        f"batches {outcomes}{'' if run.complete else ' (INCOMPLETE)'}")
    return run


# ---------------------------------------------------------------- outputs

def markdown(meta: dict[str, Any], runs: list[Run]) -> str:
    lines = [f"# Sink benchmark ({meta['when']}, {meta['machine']['cores']} cores{', quick' if meta['quick'] else ''})",
             "", meta["method"], "",
             "| signal / sink | backend | items per client batch | clean records (items each) | items per export "
             "| exported/s | Prometheus samples/s | CPU s / 1M items | CPU s / 1M samples | sink CPU | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        unit = "spans" if r.signal == "traces" else "points"
        flag = "" if r.complete else " (incomplete)"
        bad = {k: v for k, v in r.outcomes.items() if k != "exported" and v}
        lines.append(
            f"| {r.signal} / `{r.sink}` | {r.backend} | {r.items_per_client_batch:,} {unit} | "
            f"{r.clean_records:,} ({r.items / max(1, r.clean_records):,.0f}) | "
            f"{'-' if r.items_per_export is None else f'{r.items_per_export:,.0f}'} | "
            f"**{r.items_per_s:,.0f} {unit}/s**{flag} | "
            f"{'-' if r.samples_per_s is None else f'{r.samples_per_s:,.0f}'} | {r.cpu_s_per_million_items} | "
            f"{'-' if r.cpu_s_per_million_samples is None else r.cpu_s_per_million_samples} | "
            f"{r.cpu_utilisation:.0%} | {r.peak_rss_mb}{f' (batches {bad})' if bad else ''} |")
    return "\n".join([*lines, "", *[f"- {n}" for n in meta["notes"]]]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="about a minute: 30,000 spans and 20,000 points per run, receiver only")
    parser.add_argument("--spans", type=int, default=None, help="spans per trace run (default 400,000)")
    parser.add_argument("--points", type=int, default=None, help="OTLP data points per metrics run (default 150,000)")
    parser.add_argument("--real", action=argparse.BooleanOptionalAction, default=None,
                        help="also export the 1000-item batches to the local Jaeger and Prometheus "
                             "(default: on, off with --quick)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up a run after this many seconds")
    parser.add_argument("--out", default=str(RESULTS / "sinks"), help="output path without extension")
    args = parser.parse_args(argv)
    spans = args.spans or (30_000 if args.quick else 400_000)
    points = args.points or (20_000 if args.quick else 150_000)
    real = (not args.quick) if args.real is None else args.real

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rampart-sinks-bench-"))
    say(f"logs in {tmp}")
    runs: list[Run] = []
    plan = [(Signal.TRACES, 1000, spans), (Signal.TRACES, 100, spans),
            (Signal.METRICS, 1000, points), (Signal.METRICS, 100, points)]
    for signal, size, total in plan:
        count = max(1, total // size)
        unit = "spans" if signal is Signal.TRACES else "points"
        say(f"{signal.value}, {size} {unit} per client batch: generating {count} batches ...")
        backends = ["receiver"]
        if real and size == 1000:
            backends.append("jaeger" if signal is Signal.TRACES else "prometheus")
        bodies = trace_bodies(size, count, seed=size) if signal is Signal.TRACES else []
        for backend in backends:
            if signal is Signal.METRICS:
                # Fresh series with recent timestamps per run: Prometheus refuses a sample older than the
                # one it has for a series.
                bodies = metric_bodies(size, count, seed=size)
            say(f"{signal.value} -> `rampart sink {SINK_OF[signal]}` -> {backend}, {count * size:,} {unit} ...")
            runs.append(run_case(signal, backend, size, bodies, count * size, tmp, args.timeout))

    meta: dict[str, Any] = {
        "benchmark": "sinks", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick,
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "load_average_at_end": os.getloadavg()},
        "wall_seconds": round(time.monotonic() - started),
        "method": (
            "One sink process drains a clean topic (6 partitions) pre-filled with signed envelopes exactly as the "
            "last stage writes them (the stage chain's own output code re-keys each client batch: traces by trace "
            "id over the 6 partitions, so a 1000-span batch becomes ~6 records; metrics by tenant/service, 4 "
            "services per batch). Shipped sink settings: up to 16 records combined per OTLP export, 4 exports in "
            "flight, gzip; the Prometheus sink one record per remote write, in order; delivered-batch marks in "
            "Redis. Rates and CPU between the first and the last 0.2 s poll at which the sink's exported-items "
            "counter grew. `receiver`: a counting receiver in the benchmark process (spans decoded; remote-write "
            "samples snappy-decoded and counted); `jaeger` / `prometheus`: the local services. Items are spans "
            "for traces and OTLP data points for metrics; samples are the Prometheus samples those points became."),
        "notes": [
            "Metrics batches: per service about 40 % request-duration histograms (10 bounds, 11 buckets, one "
            "exemplar each), 30 % monotonic counters, 15 % non-monotonic sums, 15 % gauges, all cumulative; a "
            "histogram point becomes 13 samples, so 1 point is about 5.8 samples on average.",
            "CPU is utime+stime of the sink process from /proc; peak RSS its VmHWM. Kafka, Redis, the receiver "
            "(or Jaeger/Prometheus) and other work on this shared 2-core machine run beside the sink, so "
            "rates move between runs more than CPU per item does.",
            "The stage processors are not run while filling the topic (the generated data is clean, they would "
            "leave it unchanged); their output framing, keys, partitions and signatures are the chain's own.",
        ],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({**meta, "runs": [asdict(r) for r in runs]}, indent=2) + "\n")
    text = markdown(meta, runs)
    Path(f"{out}.md").write_text(text)
    print(text)
    say(f"wrote {out}.json and {out}.md in {meta['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
