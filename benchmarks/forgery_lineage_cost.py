"""What the lineage index shared in Redis costs per span, beside the in-memory index, in one run.

    .venv/bin/python -m benchmarks.forgery_lineage_cost [--seconds 150] [--repeats 3] [--out /tmp/x.json]

The same seeded clean traffic (one tenant, four principals, batches of ~100 spans, as the evaluation's
"larger batches" cost figure) goes through one forgery processor with the in-memory index and one with
the index in the local Redis (everything else equal), alternately ``--repeats`` times; the medians of
processor wall time (Redis round trips included) and CPU time per span are reported, with the Redis
memory the shared index held at the end (MEMORY USAGE of its keys) per span id written.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

import redis

from benchmarks.forgery import scenario as scenarios
from benchmarks.forgery.run import Simulation
from benchmarks.forgery.split import REDIS_URL
from benchmarks.forgery.traffic import make_tenants
from benchmarks.forgery_eval import SCALES, config_for
from processors.forgery import ForgeryProcessor
from processors.forgery.shared_lineage import RedisParentIds


def one_run(shared: bool, seconds: float, seed: int, client: redis.Redis) -> dict[str, float]:
    rng = random.Random(seed)
    tenants = make_tenants(1, 4, 60.0, rng)
    scenario = scenarios.build(tenants, [], 600.0, seconds, seconds / 2, day_s=1800.0, rng=rng)
    prefix = f"bench:lineage-cost:{uuid.uuid4().hex[:8]}:"
    processor = ForgeryProcessor(config_for(SCALES["full"], tenants),
                                 lineage_index=RedisParentIds(client, prefix) if shared else None)
    outcome = Simulation(scenario, seed).run(processor)
    spans = outcome.spans.get("clean", 0)
    out = {"spans": float(spans), "wall_us_per_span": outcome.wall_ns.get("clean", 0) / max(spans, 1) / 1000,
           "cpu_us_per_span": outcome.cpu_ns.get("clean", 0) / max(spans, 1) / 1000,
           "batches": float(sum(r.signal == "traces" for r in outcome.records))}
    keys = list(client.scan_iter(f"{prefix}*"))
    if shared:
        ids = sum(int(client.scard(k)) for k in keys if b":i:" in k)
        used = sum(int(client.memory_usage(k) or 0) for k in keys)
        out.update({"redis_ids": float(ids), "redis_bytes": float(used), "redis_bytes_per_id": used / max(ids, 1)})
    for key in keys:
        client.delete(key)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.forgery_lineage_cost", *sys.argv[1:]], env)  # noqa: S606
    client = redis.Redis.from_url(REDIS_URL)
    runs: dict[str, list[dict[str, float]]] = {"memory": [], "redis": []}
    for _ in range(args.repeats):
        for mode in ("memory", "redis"):
            runs[mode].append(one_run(mode == "redis", args.seconds, args.seed, client))
    result: dict[str, Any] = {"seconds": args.seconds, "repeats": args.repeats, "seed": args.seed}
    for mode, rows in runs.items():
        result[mode] = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
        result[mode]["wall_us_per_span_runs"] = [round(r["wall_us_per_span"], 2) for r in rows]
    result["added_wall_us_per_span"] = round(result["redis"]["wall_us_per_span"] -
                                             result["memory"]["wall_us_per_span"], 2)
    result["added_cpu_us_per_span"] = round(result["redis"]["cpu_us_per_span"] -
                                            result["memory"]["cpu_us_per_span"], 2)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
