"""Stage benchmark: spans/s per core and CPU per million spans for each processor alone and for the
fused chain, on clean traffic and on traffic where 5 % of attributes hold something to scrub, with
100- and 1000-span batches; the fused chain with its clean-batch fast path (native, see
docs/stages.md) and without it, side by side, also on clean traffic whose spans carry a `url.full`
(which wakes url_password's screen); the forgery stage on both paths, also on batches of one service
as an SDK sends them (its cost follows the (service, span name) groups and attribute keys per
batch), and fused with the other three; plus profiles of the fused chain on both paths.

It measures the per-record work of a stage (verify, decode once, processors, encode once, sign),
in one process on one core with the worker's garbage-collector settings, with dedup's marks in the
real local Redis; Kafka transport is not included (the gateway and end-to-end benchmarks cover it).

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

from benchmarks.otlp_load import SERVICES, trace_request
from processors.base import Processor
from processors.chain import StageChain
from processors.dedup import DedupProcessor, RedisMarks
from processors.forgery.processor import ForgeryProcessor
from processors.forgery.state import RedisSnapshots
from processors.scrub import ScrubProcessor
from processors.validate import ValidateProcessor
from rampart.cli import collect_garbage_less_often
from rampart.config import DedupConfig, ForgeryConfig, ScrubConfig, ValidateConfig
from rampart.keyring import KeyRing, generate_key
from rampart.topics import TopicNames
from schemas.envelope import Envelope, PayloadFormat, Signal, encode

RESULTS = Path(__file__).resolve().parent / "results"
CLEAN, DIRTY, CLEAN_URLS = "clean", "5% to scrub", "clean, url.full in every span"
# An SDK's batch: one resource, so a sixth as many (service, span name) groups and a quarter as many
# (service, attribute key) pairs per span as the four-service batches of a collector (CLEAN).
CLEAN_ONE_SERVICE = "clean, one service per batch"
FUSED = "validate+scrub+dedup (fused)"
FORGERY = "forgery (past learning, Redis snapshots)"
FUSED_ALL = "validate+scrub+dedup+forgery (fused)"
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
    fast_path_batches: int = 0
    quarantined_batches: int = 0


def requests(spans: int, count: int, traffic: str, seed: int) -> list[ExportTraceServiceRequest]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        request = trace_request(spans, rng, services=1 if traffic == CLEAN_ONE_SERVICE else 4)
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    if traffic == CLEAN_URLS:  # clean, but "://" in every span: url_password's screen fires
                        route = next(kv.value.string_value for kv in span.attributes if kv.key == "url.path")
                        span.attributes.add(key="url.full").value.string_value = \
                            f"http://{rs.resource.attributes[0].value.string_value}.shop:8080{route}?x=1"
                    elif traffic == DIRTY:  # 5 % of attributes get a secret in their value
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


def measure(chain: StageChain, values: list[bytes]) -> tuple[float, int, int]:
    """CPU seconds to handle ``values``, how many took the fast path and how many were quarantined."""
    started, fast, quarantined = time.process_time(), 0, 0
    for value in values:
        outcome = chain.handle(Signal.TRACES, value, None, "bench")
        fast += outcome.fast_path_batches
        quarantined += outcome.quarantine_reason is not None
    return time.process_time() - started, fast, quarantined


def profile(chain: StageChain, values: list[bytes]) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    measure(chain, values)
    profiler.disable()
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(12)
    return "\n".join(line for line in buffer.getvalue().splitlines() if line.strip())[:4000]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=40,
                        help="1000-span batches per measurement, ten times as many of 100 spans (default 40)")
    parser.add_argument("--out", default=str(RESULTS / "stages"), help="output path without extension")
    args = parser.parse_args(argv)

    gateway_key = generate_key()
    payload_key = {"enc": secrets.token_bytes(32)}
    gateway_ring = KeyRing({"gw": gateway_key}, "gw", payload_key, "enc")
    worker_ring = KeyRing({"gw": gateway_key, "worker": generate_key()}, "worker", payload_key, "enc")
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    client.ping()
    received = 1_764_000_000_500_000_000  # the generator's timestamps lie just before this

    def chain(names: list[str], processors: list[Processor], encrypt: bool = False, fast: bool = False,
              keying: str = "gateway") -> StageChain:
        return StageChain(names=names, processors=processors, keyring=worker_ring, topics=TopicNames("bench"),
                          output_topic=TopicNames("bench").clean, keying=keying,
                          output_partitions=lambda _s: 6, instance="bench", encrypt_unscrubbed=encrypt,
                          fast_path=fast)

    def dedup() -> DedupProcessor:
        return DedupProcessor(DedupConfig(), RedisMarks(client), f"bench-{uuid.uuid4().hex[:8]}")

    def fused() -> list[Processor]:
        return [ValidateProcessor(ValidateConfig()), ScrubProcessor(ScrubConfig(), {}), dedup()]

    def forgery() -> ForgeryProcessor:
        # One principal sends everything here, so there are no peers to score against: this is mostly
        # the cost of the hard rules, the sketches and the lineage index. Its services are allow-listed,
        # so clean batches pass and teach, as they do past learning (without it every batch would be a
        # new service: flagged, quarantined, teaching nothing).
        config = ForgeryConfig(learning_s=0.0, allowed_new_services={"bench/k": tuple(SERVICES)})
        return ForgeryProcessor(config, RedisSnapshots(client), f"bench-{uuid.uuid4().hex[:8]}")

    rows: list[Row] = []
    profiles: dict[str, str] = {}
    collect_garbage_less_often()   # the cycle collector's settings `rampart worker` runs with
    for spans in (100, 1000):
        batches = args.batches * (1000 // spans)   # the same spans at both sizes: 100-span rows as steady
        for traffic in (CLEAN, DIRTY, CLEAN_URLS, CLEAN_ONE_SERVICE):
            reqs = requests(spans, batches, traffic, seed=spans)
            values = envelopes(reqs, gateway_ring, received)
            encrypted = envelopes(reqs, gateway_ring, received, encrypt=True)
            # (stage, processors, encrypt, fast path, keying); the single stages and the first fused
            # row are the Python path, the reference the fast path must match.
            stages: list[tuple[str, list[Processor], bool, bool, str]] = [
                ("verify+decode+encode+sign", [], False, False, "gateway"),
                # Encryption at rest (keyring.encrypt_unscrubbed): the same hop with AES-256-GCM both ways.
                ("verify+decrypt+decode+encode+encrypt+sign", [], True, False, "gateway"),
                ("validate", [ValidateProcessor(ValidateConfig())], False, False, "gateway"),
                ("scrub", [ScrubProcessor(ScrubConfig(), {})], False, False, "gateway"),
                ("dedup (Redis)", [dedup()], False, False, "gateway"),
            ] if traffic in (CLEAN, DIRTY) else []
            if traffic != CLEAN_URLS:
                stages += [(FORGERY, [forgery()], False, False, "gateway"),
                           (f"{FORGERY}, fast path", [forgery()], False, True, "gateway")]
            if traffic != CLEAN_ONE_SERVICE:
                stages += [
                    (FUSED, fused(), False, False, "gateway"),
                    (f"{FUSED}, fast path", fused(), False, True, "gateway"),
                    (f"{FUSED}, fast path, trace_id keying", fused(), False, True, "trace_id"),
                ]
            if traffic == CLEAN:
                stages.append((f"{FUSED_ALL}, fast path", [*fused(), forgery()], False, True, "gateway"))
            for name, processors, with_encryption, fast, keying in stages:
                print(f"[bench] {spans} spans/batch, {traffic}: {name} ...", flush=True)
                c = chain([p.name for p in processors] or ["none"], processors, with_encryption, fast, keying)
                inputs = encrypted if with_encryption else values
                measure(c, inputs[:2])  # warm up
                cpu, taken, held = measure(c, inputs)
                total = spans * len(values)
                rows.append(Row(name, traffic, spans, total, round(cpu, 3), round(total / cpu),
                                round(cpu / total * 1e6, 2), taken, held))
                print(f"[bench]   {rows[-1].spans_per_s_per_core:,} spans/s per core, fast path {taken}/{len(inputs)}, "
                      f"quarantined {held}", flush=True)
            if spans == 1000 and traffic == CLEAN:
                profiles["Python path"] = profile(chain(["validate", "scrub", "dedup"], fused()), values)
                profiles["fast path"] = profile(chain(["validate", "scrub", "dedup"], fused(), fast=True), values)

    meta = {"benchmark": "stages", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
            "method": "process CPU time of StageChain.handle over pre-built signed envelopes, one core, with "
                      "the worker's garbage-collector settings; "
                      "dedup marks in the local Redis (its round trips count as wall time, not CPU here); "
                      "rows marked \"fast path\" let the chain take its clean-batch fast path (native scan, no "
                      "decode or encode), the others run the Python path; the last column counts the batches "
                      "that took the fast path"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({**meta, "results": [asdict(r) for r in rows]}, indent=2))
    table = ["| stage | traffic | spans/batch | spans/s per core | CPU s / 1M spans | fast-path batches | "
             "quarantined batches |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r.stage} | {r.traffic} | {r.spans_per_batch} | {r.spans_per_s_per_core:,} | "
              f"{r.cpu_s_per_million_spans} | {r.fast_path_batches} | {r.quarantined_batches} |" for r in rows]
    sections = "".join(f"\n\n## Where the fused chain's time goes, {path} (1000-span clean batches, cProfile, "
                       f"top 12 by own time)\n\n```\n{text}\n```" for path, text in profiles.items())
    Path(f"{args.out}.md").write_text(f"# Stage benchmark ({meta['when']})\n\n{meta['method']}.\n\n"
                                      + "\n".join(table) + sections + "\n")
    print("\n".join(table))
    print(f"[bench] wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
