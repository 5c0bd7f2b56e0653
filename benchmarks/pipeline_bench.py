"""End-to-end benchmark: gateway -> fused validate+scrub+dedup worker(s) -> OTLP sink -> an OTLP/HTTP
receiver, all real processes on this machine with the local Kafka and Redis.

At each target rate it sends realistic trace batches for a while (open loop), and measures for each
acknowledged batch the time from the gateway's 200 to the moment the receiver has all of its spans.
Reports achieved throughput, p50/p99 end-to-end latency and what had not arrived by the end. A batch
that has not fully arrived when the drain time is up counts as infinitely late in the percentiles
(leaving it out would make a run that loses data look faster); JSON writes such a figure as null.

    .venv/bin/python -m benchmarks.pipeline_bench [--rates 5000,10000,20000] [--seconds 20] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from benchmarks.otlp_load import shift_to_now, trace_request
from tests.support.backend import CapturingBackend
from tests.support.deployment import Deployment

RESULTS = Path(__file__).resolve().parent / "results"
SPANS_PER_BATCH = 500


@dataclass
class Row:
    target_spans_per_s: int
    workers: int
    seconds: float
    batches_acked: int
    batches_refused: int     # answered other than 200, or the connection failed: not counted as sent
    batches_incomplete: int  # acknowledged, but not every span had arrived by the end of the drain
    spans_acked: int
    spans_delivered: int
    delivered_spans_per_s: float
    p50_s: float
    p99_s: float
    max_s: float


async def send(url: str, token: str, bodies: list[tuple[bytes, list[bytes]]], rate: float, seconds: float
               ) -> tuple[list[tuple[float, list[bytes]]], int]:
    """Open loop at ``rate`` batches/s; returns (ack time, span ids) per acknowledged batch, and how many
    batches were refused or failed."""
    acked: list[tuple[float, list[bytes]]] = []
    refused = 0
    headers = {"Content-Type": "application/x-protobuf", "x-api-key": token}
    async with aiohttp.ClientSession() as session:
        async def one(body: bytes, ids: list[bytes]) -> None:
            nonlocal refused
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, OSError):
                ok = False  # a run under overload may see these; counted, not fatal
            if ok:
                acked.append((time.time(), ids))
            else:
                refused += 1

        tasks = set()
        start = time.perf_counter()
        for i, (body, ids) in enumerate(bodies):
            at = start + i / rate
            if at - start > seconds:
                break
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(body, ids))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return acked, refused


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (NaN for an empty one)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latencies(acked: list[tuple[float, list[bytes]]], arrivals: dict[bytes, float]) -> list[float]:
    """Seconds from each batch's acknowledgement to its last span's arrival, ascending; infinite for a batch
    not fully arrived."""
    out = []
    for ack_time, ids in acked:
        arrived = [arrivals.get(i) for i in ids]
        # Clamped at 0: the receiver may note a span a moment before the load generator's loop gets to
        # the gateway's answer.
        out.append(math.inf if None in arrived else max(0.0, max(a for a in arrived if a is not None) - ack_time))
    return sorted(out)


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def build_bodies(count: int, rng: random.Random) -> list[tuple[bytes, list[bytes]]]:
    """Serialized requests with timestamps near now (so validate's age window keeps them) and their span ids."""
    bodies = []
    for _ in range(count):
        request = trace_request(SPANS_PER_BATCH, rng)
        shift_to_now(request)
        ids = [s.trace_id + s.span_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        bodies.append((request.SerializeToString(), ids))
    return bodies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="5000,10000,20000", help="target spans/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load per rate")
    parser.add_argument("--workers", type=int, default=1, help="fused stage worker processes")
    parser.add_argument("--drain-s", type=float, default=60.0, help="how long to wait for stragglers")
    parser.add_argument("--out", default=str(RESULTS / "pipeline"), help="output path without extension")
    args = parser.parse_args(argv)

    rows: list[Row] = []
    for rate in [int(r) for r in args.rates.split(",")]:
        backend = CapturingBackend()
        backend.keep_requests = False
        deployment = Deployment(f"bench.{uuid.uuid4().hex[:8]}", "127.0.0.1:9092", "redis://127.0.0.1:6379/0",
                                Path(tempfile.mkdtemp(prefix="rampart-bench-")), partitions=6)
        try:
            quiet = {"RAMPART__LOGGING__LEVEL": "WARNING"}
            for _ in range(args.workers):
                deployment.start_worker("validate,scrub,dedup", **quiet)
            deployment.start_sink("otlp", RAMPART__SINKS__OTLP__ENDPOINT=backend.endpoint, **quiet)
            gateway = deployment.start_gateway(RAMPART__GATEWAY__RATE_LIMIT__REQUESTS_PER_S="100000",
                                               RAMPART__GATEWAY__RATE_LIMIT__BURST_REQUESTS="100000",
                                               RAMPART__GATEWAY__RATE_LIMIT__BYTES_PER_S="1e12",
                                               RAMPART__GATEWAY__RATE_LIMIT__BURST_BYTES="1e12", **quiet)
            _, token = deployment.api_key()
            batches = int(rate / SPANS_PER_BATCH * args.seconds) + 1
            print(f"[bench] {rate} spans/s: building {batches} batches ...", flush=True)
            bodies = build_bodies(batches, random.Random(rate))
            print(f"[bench] {rate} spans/s: sending for {args.seconds:g}s ...", flush=True)
            started = time.time()
            acked, refused = asyncio.run(send(f"{gateway.http_url}/v1/traces", token, bodies,
                                              rate / SPANS_PER_BATCH, args.seconds))
            wanted = {i for _, ids in acked for i in ids}
            deadline = time.monotonic() + args.drain_s
            while time.monotonic() < deadline and not wanted <= backend.arrivals.keys():
                time.sleep(0.5)
            # The receiver's thread may still be adding stragglers: a copy (taken at once under the GIL) is
            # what every figure below is computed from, so none of them changes under the computation.
            arrivals = dict(backend.arrivals)
            lat = latencies(acked, arrivals)
            delivered = len(wanted & arrivals.keys())
            elapsed = max(arrivals.values(), default=started) - started
            rows.append(Row(rate, args.workers, round(elapsed, 1), len(acked), refused,
                            sum(1 for x in lat if math.isinf(x)), len(wanted), delivered,
                            round(delivered / elapsed) if elapsed > 0 else 0,
                            round(statistics.median(lat), 3) if lat else math.nan,
                            round(percentile(lat, 0.99), 3), round(lat[-1], 3) if lat else math.nan))
            print(f"[bench]   {rows[-1]}", flush=True)
        finally:
            deployment.stop_all()
            backend.close()

    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = {"benchmark": "pipeline", "when": when, "cores": os.cpu_count(), "spans_per_batch": SPANS_PER_BATCH,
            "setup": "gateway, fused stage worker(s), OTLP sink, receiver, Kafka, Redis and the load generator "
                     "share this machine; latency is gateway acknowledgement to receiver arrival of a batch's "
                     "last span"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    results = [{k: _json_number(v) if isinstance(v, float) else v for k, v in asdict(r).items()} for r in rows]
    Path(f"{args.out}.json").write_text(json.dumps({**meta, "results": results}, indent=2))
    table = ["| target spans/s | workers | spans acked | delivered | batches refused / incomplete | delivered spans/s "
             "| p50 s | p99 s | max s |",
             "|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r.target_spans_per_s:,} | {r.workers} | {r.spans_acked:,} | {r.spans_delivered:,} | "
              f"{r.batches_refused} / {r.batches_incomplete} | {r.delivered_spans_per_s:,} | {r.p50_s} | {r.p99_s} "
              f"| {r.max_s} |" for r in rows]
    Path(f"{args.out}.md").write_text(f"# Pipeline benchmark ({when}, {meta['cores']} cores)\n\n{meta['setup']}.\n\n"
                                      + "\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
