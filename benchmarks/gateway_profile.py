"""Where a gateway request's CPU goes: one `rampart gateway` under a closed loop of OTLP/HTTP
requests, its threads' CPU from /proc and its event loop sampled by py-spy, per request.

    .venv/bin/python -m benchmarks.gateway_profile [--spans 100] [--seconds 15]

Issue #9 asks the gateway for 2x the OpenTelemetry Collector's spans per CPU-second; with 100-span
requests the per-request costs decide it. This splits them into what any OTLP->Kafka gateway must pay
(HTTP parsing and answering, socket I/O, Kafka's compression and network thread) and what Rampart adds
(signature, envelope, checks), so the gap to the goal can be read off. Writes
benchmarks/results/gateway-profile.{json,md}. Needs the local services and py-spy (a dev dependency).
The gateway is pinned to CPU 1 and the load generator to CPU 0, as in `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.peer_bench import (
    LOAD_CPU,
    QUIET,
    RESULTS,
    SERVER_CPU,
    TICKS,
    UNLIMITED,
    drive,
    make_bodies,
    new_deployment,
    pinned,
    versions,
)

# Samples of the event loop's thread go to the first category whose marker appears in their stack,
# innermost frame first (so the signature inside the gateway's logic counts as signature).
CATEGORIES = [
    ("HMAC-SHA256 signature", ("KeyRing._mac", "hmac.py", "signed_header")),
    ("envelope encoding (Avro)", ("envelope.py",)),
    ("Kafka produce call (librdkafka enqueue)", ("Publisher.publish",)),
    ("OTLP framing check", ("framing.py",)),
    ("batch and request ids", ("_random_uuids",)),
    ("HTTP server (connection state, llhttp parsing, answers)", ("http_protocol.py", "httptools")),
    ("Rampart's request handling in Python (auth, rate limit, envelope object, metrics, control flow)",
     ("ingest/", "rampart/", "prometheus_client", "contextlib", "enum.py", "<string>")),
    ("event loop, socket I/O, garbage collection", ("",)),
]


def categorise(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, markers in CATEGORIES[:-1]:
            if any(marker in frame for marker in markers):
                return name
    return CATEGORIES[-1][0]


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (librdkafka names its threads rdk:...; Python's keep the process name)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        name = raw.split("(", 1)[1].rsplit(")", 1)[0]
        fields = raw.rsplit(")", 1)[1].split()
        kind = "librdkafka threads" if name.startswith("rdk:") else "event loop and other Python threads"
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return out


def event_loop_split(raw: Path, loop_us: float) -> tuple[list[dict[str, object]], int]:
    """The event loop thread's py-spy samples by category, with their share of its CPU per request."""
    samples: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any("run_forever" in f or "run_until_complete" in f or "uvloop" in f for f in frames):
            samples[categorise(frames)] += int(count)
    total = sum(samples.values()) or 1
    return [{"where": name, "share_of_event_loop": round(n / total, 3), "us_per_request": round(loop_us * n / total, 1)}
            for name, n in samples.most_common()], total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=100, help="spans per request (default 100)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the profiled load (default 15)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--out", default=str(RESULTS / "gateway-profile"), help="output path without extension")
    args = parser.parse_args()
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("gateway_profile: py-spy not found: make install (it is a dev dependency)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp())
    deployment = new_deployment(tmp)
    try:
        with pinned({SERVER_CPU}):
            gateway = deployment.start_gateway(**UNLIMITED, **QUIET)
        assert gateway.proc is not None
        pid = gateway.proc.pid
        _, token = deployment.api_key()
        headers = {"Content-Type": "application/x-protobuf", "x-api-key": token}
        bodies = make_bodies(args.spans, 16, dirty=False, seed=args.spans)
        os.sched_setaffinity(0, {LOAD_CPU})
        print(f"[profile] {args.spans} spans/request, {args.clients} clients, {args.seconds:g} s ...", flush=True)
        url = f"{gateway.http_url}/v1/traces"
        # CPU per request from a run without the sampler: py-spy shares the load generator's core, and
        # a slower load costs more per request (fewer requests per wake-up of the event loop).
        before = thread_cpu(pid)
        load = asyncio.run(drive(url, bodies, args.seconds, args.clients, None, headers))
        after = thread_cpu(pid)
        print(f"[profile] {load.requests:,} requests; now the sampled run ...", flush=True)
        raw = tmp / "samples.txt"
        sampler = subprocess.Popen([spy, "record", "-p", str(pid), "-f", "raw", "-o", str(raw), "-r", "200",  # noqa: S603
                                    "-d", str(int(args.seconds) + 2)], stdout=subprocess.DEVNULL)
        time.sleep(1)
        asyncio.run(drive(url, bodies, args.seconds, args.clients, None, headers))
        sampler.wait()
    finally:
        deployment.stop_all()
    requests = load.requests
    per_request_us = {k: (after[k] - before.get(k, 0.0)) / requests * 1e6 for k in after}
    loop_us = per_request_us.get("event loop and other Python threads", 0.0)
    rows, total = event_loop_split(raw, loop_us)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": versions(),
              "spans_per_request": args.spans, "clients": args.clients, "seconds": args.seconds,
              "requests": requests, "errors": load.errors,
              "cpu_us_per_request": {k: round(v, 1) for k, v in per_request_us.items()},
              "event_loop_samples": total, "event_loop": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Gateway CPU per request ({result['when']})", "",
             f"`.venv/bin/python -m benchmarks.gateway_profile --spans {args.spans}`: {requests:,} requests of "
             f"{args.spans} spans from {args.clients} clients in {args.seconds:g} s (errors: {load.errors or 'none'}); "
             f"Rampart {result['versions']['rampart_commit']}. Thread CPU from /proc in that run; the event "
             f"loop's split from {total:,} py-spy samples (200 Hz) of a second, identical run.", "",
             "| thread | CPU µs per request |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in sorted(per_request_us.items(), key=lambda kv: -kv[1])]
    lines += [f"| total | {sum(per_request_us.values()):.1f} |", "",
              "| event loop: where | share | µs per request |", "|---|---|---|"]
    lines += [f"| {r['where']} | {r['share_of_event_loop']:.1%} | {r['us_per_request']} |" for r in rows]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
