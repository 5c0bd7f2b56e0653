"""Gateway benchmark: realistic OTLP trace batches over HTTP and gRPC into one `rampart gateway` process,
acknowledged by the real local Kafka.

For each scenario (transport x spans per request x gzip) it first drives the gateway as hard as a
closed loop of concurrent clients can (throughput), then at half that rate with an open loop
(latency). It reports requests/s, spans/s, MB/s on the wire, p50/p99 latency, the gateway's CPU
seconds per million spans and its peak RSS, as JSON and as a Markdown table.

    .venv/bin/python -m benchmarks.gateway_bench [--duration 10] [--quick]

Needs the local services (`make services`). Everything runs on this machine: the load generator,
the gateway and Kafka share its cores, and the table says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from benchmarks.otlp_load import bodies
from tests.support.deployment import Deployment, GatewayProcess

RESULTS = Path(__file__).resolve().parent / "results"
TICKS = os.sysconf("SC_CLK_TCK")
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@dataclass
class Result:
    transport: str
    spans_per_request: int
    gzip: bool
    mode: str
    target_rps: float | None
    seconds: float
    requests: int
    errors: dict[str, int]
    requests_per_s: float
    spans_per_s: float
    wire_mb_per_s: float
    p50_ms: float
    p99_ms: float
    gateway_cpu_s_per_million_spans: float
    gateway_cpu_utilisation: float
    gateway_peak_rss_mb: float
    loadgen_cpu_utilisation: float


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Load:
    """Sends pre-built bodies to one gateway over one transport and records latencies."""

    def __init__(self, gateway: GatewayProcess, transport: str, token: str, payloads: list[bytes],
                 gzip_on: bool) -> None:
        self.gateway, self.transport, self.token, self.payloads, self.gzip_on = (
            gateway, transport, token, payloads, gzip_on)
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.sent_bytes = 0
        self._i = 0

    def _next(self) -> bytes:
        self._i += 1
        return self.payloads[self._i % len(self.payloads)]

    async def __aenter__(self) -> Load:
        if self.transport == "http":
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64),
                                                  auto_decompress=False)
            self._headers = {"Content-Type": "application/x-protobuf", "x-api-key": self.token}
            if self.gzip_on:
                self._headers["Content-Encoding"] = "gzip"
        else:
            self._channel = grpc.aio.insecure_channel(self.gateway.grpc_target, options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024)])
            self._export = self._channel.unary_unary(TRACE_EXPORT)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self.transport == "http":
            await self._session.close()
        else:
            await self._channel.close()

    async def send_one(self) -> None:
        body = self._next()
        started = time.perf_counter()
        try:
            if self.transport == "http":
                async with self._session.post(f"{self.gateway.http_url}/v1/traces", data=body,
                                              headers=self._headers) as resp:
                    await resp.read()
                    outcome = str(resp.status)
            else:
                await self._export(body, metadata=(("x-api-key", self.token),), timeout=30,
                                   compression=grpc.Compression.Gzip if self.gzip_on else None)
                outcome = "200"
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code().name
        except aiohttp.ClientError as exc:
            outcome = type(exc).__name__
        if outcome == "200":
            self.latencies.append(time.perf_counter() - started)
            self.sent_bytes += len(body)
        else:
            self.errors[outcome] = self.errors.get(outcome, 0) + 1

    async def closed_loop(self, concurrency: int, seconds: float) -> None:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                await self.send_one()

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def open_loop(self, rate: float, seconds: float) -> None:
        start = time.perf_counter()
        end, interval, tasks = start + seconds, 1.0 / rate, set()
        next_at = start
        while next_at < end:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.send_one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
        await asyncio.gather(*tasks)


async def run(gateway: GatewayProcess, token: str, transport: str, spans: int, gzip_on: bool, mode: str,
              seconds: float, concurrency: int, rate: float | None) -> Result:
    payloads = bodies(spans, 16, seed=spans, compress=gzip_on and transport == "http")
    if transport == "grpc" and gzip_on:
        payloads = bodies(spans, 16, seed=spans, compress=False)
    pid = gateway.proc.pid if gateway.proc else 0
    async with Load(gateway, transport, token, payloads, gzip_on) as load:
        await load.closed_loop(2, 1.0)  # warm up connections and caches
        load.latencies.clear()
        load.errors.clear()
        load.sent_bytes = 0
        reset_peak_rss(pid)
        cpu0, own0, t0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
        if mode == "throughput":
            await load.closed_loop(concurrency, seconds)
        else:
            assert rate is not None
            await load.open_loop(rate, seconds)
        elapsed = time.perf_counter() - t0
        cpu, own = cpu_seconds(pid) - cpu0, time.process_time() - own0
    ok = len(load.latencies)
    lat = sorted(load.latencies) or [0.0]
    return Result(
        transport=transport, spans_per_request=spans, gzip=gzip_on, mode=mode, target_rps=rate,
        seconds=round(elapsed, 2), requests=ok, errors=load.errors,
        requests_per_s=round(ok / elapsed, 1), spans_per_s=round(ok * spans / elapsed),
        wire_mb_per_s=round(load.sent_bytes / elapsed / 1e6, 2),
        p50_ms=round(statistics.median(lat) * 1000, 2), p99_ms=round(lat[int(0.99 * (len(lat) - 1))] * 1000, 2),
        gateway_cpu_s_per_million_spans=round(cpu / max(1, ok * spans) * 1e6, 2),
        gateway_cpu_utilisation=round(cpu / elapsed, 2), gateway_peak_rss_mb=round(peak_rss_mb(pid), 1),
        loadgen_cpu_utilisation=round(own / elapsed, 2))


def table(results: list[Result]) -> str:
    head = ("| transport | spans/req | gzip | mode | req/s | spans/s | body MB/s | p50 ms | p99 ms | "
            "gateway CPU s / 1M spans | gateway CPU | gateway peak RSS MB | load-gen CPU | errors |")
    rows = [head, "|" + "---|" * 14]
    for r in results:
        mode = r.mode if r.target_rps is None else f"{r.mode} @ {r.target_rps:.0f} req/s"
        rows.append(f"| {r.transport} | {r.spans_per_request} | {'on' if r.gzip else 'off'} | {mode} | "
                    f"{r.requests_per_s:,.0f} | {r.spans_per_s:,.0f} | {r.wire_mb_per_s} | {r.p50_ms} | {r.p99_ms} | "
                    f"{r.gateway_cpu_s_per_million_spans} | {r.gateway_cpu_utilisation:.0%} | "
                    f"{r.gateway_peak_rss_mb} | {r.loadgen_cpu_utilisation:.0%} | {r.errors or '-'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients in throughput mode")
    parser.add_argument("--quick", action="store_true", help="only HTTP and gRPC with 1000 spans, gzip off")
    parser.add_argument("--out", default=str(RESULTS / "gateway"), help="output path without extension")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="rampart-bench-"))
    deployment = Deployment(f"bench.{uuid.uuid4().hex[:8]}", "127.0.0.1:9092", "redis://127.0.0.1:6379/0", tmp)
    unlimited = {"RAMPART__GATEWAY__RATE_LIMIT__REQUESTS_PER_S": "1000000",
                 "RAMPART__GATEWAY__RATE_LIMIT__BURST_REQUESTS": "1000000",
                 "RAMPART__GATEWAY__RATE_LIMIT__BYTES_PER_S": "1e12",
                 "RAMPART__GATEWAY__RATE_LIMIT__BURST_BYTES": "1e12",
                 "RAMPART__LOGGING__LEVEL": "WARNING"}
    results: list[Result] = []
    try:
        gateway = deployment.start_gateway(**unlimited)
        _, token = deployment.api_key()
        scenarios = [(t, s, g) for t in ("http", "grpc") for s in (100, 1000) for g in (False, True)]
        if args.quick:
            scenarios = [(t, 1000, False) for t in ("http", "grpc")]
        for transport, spans, gzip_on in scenarios:
            label = f"{transport} {spans} spans gzip={'on' if gzip_on else 'off'}"
            print(f"[bench] {label}: throughput for {args.duration:g}s ...", flush=True)
            best = asyncio.run(run(gateway, token, transport, spans, gzip_on, "throughput", args.duration,
                                   args.concurrency, None))
            results.append(best)
            print(f"[bench]   {best.spans_per_s:,} spans/s, p99 {best.p99_ms} ms, errors {best.errors or 'none'}",
                  flush=True)
            half = max(1.0, best.requests_per_s / 2)
            print(f"[bench] {label}: latency at {half:.0f} req/s for {args.duration:g}s ...", flush=True)
            latency = asyncio.run(run(gateway, token, transport, spans, gzip_on, "half-load", args.duration,
                                      args.concurrency, half))
            results.append(latency)
            print(f"[bench]   p50 {latency.p50_ms} ms, p99 {latency.p99_ms} ms", flush=True)
    finally:
        deployment.stop_all()

    meta: dict[str, Any] = {
        "benchmark": "gateway", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "setup": "load generator, one gateway process and a single-node Kafka share this machine's cores; "
                 "each request waits for Kafka's acks=all acknowledgement",
        "duration_s": args.duration, "concurrency": args.concurrency,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({**meta, "results": [asdict(r) for r in results]}, indent=2))
    text = f"# Gateway benchmark ({meta['when']}, {meta['machine']['cores']} cores)\n\n{meta['setup']}.\n\n"
    Path(f"{args.out}.md").write_text(text + table(results) + "\n")
    print(table(results))
    print(f"[bench] wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
