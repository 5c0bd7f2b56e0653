"""Stage benchmark: spans/s per core and CPU per million spans for each processor alone and for the
fused chain, on clean traffic and on traffic where 5 % of attributes hold something to scrub, with
100- and 1000-span batches; plus a profile summary of the fused chain.

It measures the per-record work of a stage (verify, decode once, processors, encode once, sign),
in one process on one core, with dedup's marks in the real local Redis; Kafka transport is not
included (the gateway and end-to-end benchmarks cover it).

    .venv/bin/python -m benchmarks.stages_bench [--batches 40]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import secrets
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import redis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from benchmarks.otlp_load import trace_request
from processors.base import Processor
from processors.chain import StageChain
from processors.dedup import DedupProcessor, RedisMarks
from processors.scrub import ScrubProcessor
from processors.validate import ValidateProcessor
from rampart.config import DedupConfig, ScrubConfig, ValidateConfig
from rampart.keyring import KeyRing, generate_key
from rampart.topics import TopicNames
from schemas.envelope import Envelope, PayloadFormat, Signal, encode

RESULTS = Path(__file__).resolve().parent / "results"
SECRETS = ["jane.doe@example.com", "4111 1111 1111 1111", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
           "https://admin:hunter2@db.internal/x", "/login?user=bob&password=hunter2"]


@dataclass
class Row:
    stage: str
    traffic: str
    spans_per_batch: int
    spans: int
    cpu_seconds: float
    spans_per_s_per_core: float
    cpu_s_per_million_spans: float


def requests(spans: int, count: int, dirty: bool, seed: int) -> list[ExportTraceServiceRequest]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        request = trace_request(spans, rng)
        if dirty:  # 5 % of attributes get a secret in their value
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        for kv in span.attributes:
                            if rng.random() < 0.05:
                                kv.value.string_value = f"{kv.value.string_value} {rng.choice(SECRETS)}"
        out.append(request)
    return out


def envelopes(reqs: list[ExportTraceServiceRequest], ring: KeyRing, received_at_ns: int,
              encrypt: bool = False) -> list[bytes]:
    return [encode(ring.seal(Envelope(batch_id=str(uuid.uuid4()), tenant="bench", principal="k", signal=Signal.TRACES,
                                      payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=received_at_ns,
                                      gateway_id="gw", payload=r.SerializeToString(), stages=("gateway",)),
                             encrypt=encrypt))
            for r in reqs]


def measure(chain: StageChain, values: list[bytes]) -> float:
    started = time.process_time()
    for value in values:
        chain.handle(Signal.TRACES, value, None, "bench")
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=40, help="batches per measurement (default 40)")
    parser.add_argument("--out", default=str(RESULTS / "stages"), help="output path without extension")
    args = parser.parse_args(argv)

    gateway_key = generate_key()
    payload_key = {"enc": secrets.token_bytes(32)}
    gateway_ring = KeyRing({"gw": gateway_key}, "gw", payload_key, "enc")
    worker_ring = KeyRing({"gw": gateway_key, "worker": generate_key()}, "worker", payload_key, "enc")
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    client.ping()
    received = 1_764_000_000_500_000_000  # the generator's timestamps lie just before this

    def chain(names: list[str], processors: list[Processor], encrypt: bool = False) -> StageChain:
        return StageChain(names=names, processors=processors, keyring=worker_ring, topics=TopicNames("bench"),
                          output_topic=TopicNames("bench").clean, keying="gateway",
                          output_partitions=lambda _s: 6, instance="bench", encrypt_unscrubbed=encrypt)

    def dedup() -> DedupProcessor:
        return DedupProcessor(DedupConfig(), RedisMarks(client), f"bench-{uuid.uuid4().hex[:8]}")

    rows: list[Row] = []
    profile_text = ""
    for spans in (100, 1000):
        batches = max(4, args.batches * (1000 // spans) // 10) if spans == 100 else args.batches
        for traffic in ("clean", "5% to scrub"):
            reqs = requests(spans, batches, traffic != "clean", seed=spans)
            values = envelopes(reqs, gateway_ring, received)
            encrypted = envelopes(reqs, gateway_ring, received, encrypt=True)
            stages: list[tuple[str, list[Processor]]] = [
                ("verify+decode+encode+sign", []),
                # Encryption at rest (keyring.encrypt_unscrubbed): the same hop with AES-256-GCM both ways.
                ("verify+decrypt+decode+encode+encrypt+sign", []),
                ("validate", [ValidateProcessor(ValidateConfig())]),
                ("scrub", [ScrubProcessor(ScrubConfig(), {})]),
                ("dedup (Redis)", [dedup()]),
                ("validate+scrub+dedup (fused)", [ValidateProcessor(ValidateConfig()),
                                                  ScrubProcessor(ScrubConfig(), {}), dedup()]),
            ]
            for name, processors in stages:
                print(f"[bench] {spans} spans/batch, {traffic}: {name} ...", flush=True)
                with_encryption = "decrypt" in name
                c = chain([p.name for p in processors] or ["none"], processors, encrypt=with_encryption)
                inputs = encrypted if with_encryption else values
                measure(c, inputs[:2])  # warm up
                cpu = measure(c, inputs)
                total = spans * len(values)
                rows.append(Row(name, traffic, spans, total, round(cpu, 3), round(total / cpu),
                                round(cpu / total * 1e6, 2)))
                print(f"[bench]   {rows[-1].spans_per_s_per_core:,} spans/s per core", flush=True)
            if spans == 1000 and traffic == "clean":
                fused = chain(["validate", "scrub", "dedup"], [ValidateProcessor(ValidateConfig()),
                                                               ScrubProcessor(ScrubConfig(), {}), dedup()])
                profiler = cProfile.Profile()
                profiler.enable()
                measure(fused, values)
                profiler.disable()
                buffer = io.StringIO()
                pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(12)
                profile_text = buffer.getvalue()

    meta = {"benchmark": "stages", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
            "method": "process CPU time of StageChain.handle over pre-built signed envelopes, one core; "
                      "dedup marks in the local Redis (its round trips count as wall time, not CPU here)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({**meta, "results": [asdict(r) for r in rows]}, indent=2))
    table = ["| stage | traffic | spans/batch | spans/s per core | CPU s / 1M spans |", "|---|---|---|---|---|"]
    table += [f"| {r.stage} | {r.traffic} | {r.spans_per_batch} | {r.spans_per_s_per_core:,} | "
              f"{r.cpu_s_per_million_spans} |" for r in rows]
    top = "\n".join(line for line in profile_text.splitlines() if line.strip())[:4000]
    Path(f"{args.out}.md").write_text(f"# Stage benchmark ({meta['when']})\n\n{meta['method']}.\n\n"
                                      + "\n".join(table) + "\n\n## Where the fused chain's time goes "
                                      f"(1000-span clean batches, cProfile, top 12 by own time)\n\n```\n{top}\n```\n")
    print("\n".join(table))
    print(f"[bench] wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
