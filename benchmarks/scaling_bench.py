"""Scaling of the stage chain: 2 worker processes against 1, next to the OpenTelemetry Collector on 2
cores against 1, draining the same backlog, with what Kafka, Redis and the machine used meanwhile.

    .venv/bin/python -m benchmarks.scaling_bench [--batches 300] [--rounds 2]

Issue #9 asks 2 workers for 1.8x one worker's throughput on this 2-core machine. The drains are long
(300 batches of 1000 spans with 5 % of attributes to scrub: 10-20 s each) because a short one is
dominated by its first and last moments, and the sides alternate round by round so that they see the
same moments of a shared machine. The workers are `rampart worker --stages validate,scrub,dedup`
(one pinned to CPU 1, or two on both cores); the peer is the collector of `make bench`
(kafka receiver -> redaction -> kafka exporter, GOMAXPROCS=1 on CPU 1 or 2 on both). The same
workers without dedup (`validate,scrub`) never wait for Redis: their ratio bounds what letting a worker
compute while it waits could give. Writes
benchmarks/results/stage-scaling.{json,md}. Needs the local services and the peer (scripts/build-peer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from benchmarks.peer_bench import (
    LOAD_CPU,
    RESULTS,
    SERVER_CPU,
    DrainRun,
    drain_peer,
    drain_rampart,
    make_bodies,
    say,
    versions,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=300, help="1000-span batches per drain (default 300)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the four sides (default 2)")
    parser.add_argument("--out", default=str(RESULTS / "stage-scaling"), help="output path without extension")
    args = parser.parse_args()
    spans, traffic = 1000, "5% to scrub"
    say(f"scaling: generating {args.batches} batches of {spans} spans ...")
    values = make_bodies(spans, args.batches, dirty=True, seed=spans + 7)
    tmp = Path(tempfile.mkdtemp())
    one, both = {SERVER_CPU}, {LOAD_CPU, SERVER_CPU}
    def rampart(workers: int, cpus: set[int], stages: str = "validate,scrub,dedup") -> Callable[[], DrainRun]:
        name = f"rampart, {workers} worker{'s' if workers > 1 else ''}" + ("" if "dedup" in stages else ", no dedup")
        return lambda: drain_rampart(name, workers, False, cpus, values, spans, traffic, tmp, 900, stages)

    def peer(cpus: set[int]) -> Callable[[], DrainRun]:
        name = f"peer, {len(cpus)} core{'s' if len(cpus) > 1 else ''}"
        return lambda: drain_peer(name, "stages-kafka.yaml", cpus, values, spans, traffic, tmp, 900)

    # Without dedup a worker never waits for Redis: the bound on what overlapping that wait could give.
    sides = [("rampart, 1 worker", rampart(1, one)), ("rampart, 2 workers", rampart(2, both)),
             ("peer, 1 core", peer(one)), ("peer, 2 cores", peer(both)),
             ("rampart, 1 worker, no dedup", rampart(1, one, "validate,scrub")),
             ("rampart, 2 workers, no dedup", rampart(2, both, "validate,scrub"))]
    runs: list[DrainRun] = []
    for round_no in range(args.rounds):
        for name, drain in sides:
            say(f"scaling: {name}, round {round_no + 1}/{args.rounds}: draining {args.batches * spans:,} spans ...")
            runs.append(drain())

    def median(side: str, key: str) -> float:
        return statistics.median(float(getattr(r, key)) for r in runs if r.side == side)

    def ratio(two: str, one: str) -> float:
        return round(median(two, "spans_per_s") / median(one, "spans_per_s"), 2)

    per_round = [round(runs[i + 1].spans_per_s / runs[i].spans_per_s, 2) for i in range(0, len(runs), len(sides))]
    ratios = {
        "rampart_2_workers_vs_1": ratio("rampart, 2 workers", "rampart, 1 worker"),
        "peer_2_cores_vs_1": ratio("peer, 2 cores", "peer, 1 core"),
        "rampart_no_dedup_2_workers_vs_1": ratio("rampart, 2 workers, no dedup", "rampart, 1 worker, no dedup"),
        "per_round": per_round,
    }
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"when": when, "versions": versions(), "ratios": ratios,
                                                    "runs": [asdict(r) for r in runs]}, indent=2))
    lines = [f"# Stage chain scaling, 2 processes (or cores) against 1 ({when})", "",
             f"`.venv/bin/python -m benchmarks.scaling_bench --batches {args.batches} --rounds {args.rounds}`: "
             f"{args.batches} batches of {spans} spans, 5 % of attributes to scrub, drained by each side in turn "
             f"per round. Rampart {versions()['rampart_commit']}. Cores: what the side, Kafka, Redis and the whole "
             "machine kept busy over the drain.", "",
             "| side | spans/s | CPU s / 1M spans | side's cores | Kafka / Redis / machine (cores) | seconds |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.side} | {r.spans_per_s:,.0f} | {r.cpu_s_per_million_spans} | {r.cpu_utilisation:.2f} | "
              f"{r.kafka_cores:.2f} / {r.redis_cores:.2f} / {r.machine_cores:.2f} | {r.seconds} |" for r in runs]
    lines += ["", f"Medians: Rampart 2 workers / 1 = **{ratios['rampart_2_workers_vs_1']}** (per round "
              f"{', '.join(str(r) for r in per_round)}; goal 1.8); the collector, 2 cores / 1 = "
              f"**{ratios['peer_2_cores_vs_1']}**; Rampart without dedup (no Redis round trips to wait for), "
              f"2 workers / 1 = **{ratios['rampart_no_dedup_2_workers_vs_1']}**."]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
