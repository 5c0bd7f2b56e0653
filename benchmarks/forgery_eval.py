"""Labelled evaluation of the forgery processor on seeded multi-tenant traffic.

    .venv/bin/python -m benchmarks.forgery_eval [--quick] [--seed 7] [--other-seed 11]

Generates traffic (benchmarks/forgery/traffic.py), benign confounders and attacks
(benchmarks/forgery/scenario.py, attacks.py), drives processors.forgery.ForgeryProcessor batch by
batch (no Kafka) and writes benchmarks/results/forgery.{json,md} (forgery-quick.* with --quick)
plus a PNG of one masking attack when matplotlib is installed. ``--other-seed`` runs the same
evaluation on a second seed and reports its per-attack figures and goals beside the first (a check
that nothing was tuned to one seed). The change detector also runs on the annotated change-point
series river ships (benchmarks/forgery/changepoints.py), when river is installed.

Python's string hashing is salted per process; the run re-executes itself with PYTHONHASHSEED=0 so
that the same seed gives the same figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from benchmarks.forgery import changepoints, report
from benchmarks.forgery import scenario as scenarios
from benchmarks.forgery.run import Simulation
from benchmarks.forgery.split import SplitWorkers
from benchmarks.forgery.traffic import make_tenants
from processors.forgery import ForgeryProcessor
from rampart.config import ForgeryConfig

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Scale:
    name: str
    tenants: int
    principals: int
    roots_per_s: float
    slot_s: float
    warm_s: float
    learning_s: float
    kinds: tuple[str, ...]


ALL_KINDS = scenarios.ATTACKS + scenarios.CONFOUNDERS
SCALES = {
    "full": Scale("full", 3, 4, 12.0, 600.0, 600.0, 300.0, ALL_KINDS),
    "quick": Scale("quick", 3, 4, 8.0, 420.0, 600.0, 300.0, ALL_KINDS),
    # For the test suite: one masking flood and one confounder, a few seconds of CPU.
    "tiny": Scale("tiny", 1, 4, 10.0, 480.0, 450.0, 200.0, ("masking_flood_30",)),
}


def config_for(scale: Scale, tenants: list[Any]) -> ForgeryConfig:
    # The allow-list the "new allowed service" confounder rolls out through.
    allowed = {f"{t.name}/{t.principals[1].name}": (scenarios.NEW_SERVICE,) for t in tenants}
    return ForgeryConfig(learning_s=scale.learning_s, allowed_new_services=allowed)


def evaluate(scale: Scale, seed: int, split: str | None = None) -> tuple[dict[str, Any], Any, Any, ForgeryConfig]:
    """One run; ``split`` ("shared" or "memory") screens each service in its own processor, as
    tenant_service keying spreads them over workers, with or without the lineage index in Redis."""
    rng = random.Random(seed)
    tenants = make_tenants(scale.tenants, scale.principals, scale.roots_per_s, rng)
    scenario = scenarios.build(tenants, list(scale.kinds), scale.slot_s, scale.warm_s, scale.learning_s,
                               day_s=1800.0, rng=rng)
    config = config_for(scale, tenants)
    if split is None:
        outcome = Simulation(scenario, seed).run(ForgeryProcessor(config))
    else:
        workers = SplitWorkers(config, shared=split == "shared")
        try:
            outcome = Simulation(scenario, seed).run(cast(ForgeryProcessor, workers))
        finally:
            workers.close()
    summary = report.summarise(scenario, outcome, config.quarantine_threshold, config.annotate_threshold)
    spans = max(outcome.spans.get("clean", 0), 1)
    summary["cost"]["clean_wall_us_per_span"] = round(outcome.wall_ns.get("clean", 0) / spans / 1000, 2)
    return summary, scenario, outcome, config


def cost_on_larger_batches(seconds: float, roots_per_s: float, seed: int) -> dict[str, float]:
    """Processor CPU per span on clean traffic whose batches are several times larger than the
    evaluation's (per-batch work weighs less): one tenant, four principals, no events."""
    rng = random.Random(seed)
    tenants = make_tenants(1, 4, roots_per_s, rng)
    scenario = scenarios.build(tenants, [], 600.0, seconds, seconds / 2, day_s=1800.0, rng=rng)
    processor = ForgeryProcessor(config_for(SCALES["full"], tenants))
    outcome = Simulation(scenario, seed).run(processor)
    spans, cpu_ns = outcome.spans.get("clean", 0), outcome.cpu_ns.get("clean", 0)
    us = cpu_ns / max(spans, 1) / 1000
    trace_batches = sum(r.signal == "traces" for r in outcome.records)
    return {"spans": spans, "mean_spans_per_batch": round(spans / max(trace_batches, 1), 1),
            "us_per_span": round(us, 2), "spans_per_s_per_core": round(1e6 / us) if us else 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run (about a minute)")
    parser.add_argument("--scale", choices=sorted(SCALES), help="full (default), quick or tiny")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--other-seed", type=int, help="also run this seed and report its goals beside")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--split", choices=("shared", "memory"),
                        help="one processor per service (tenant_service keying), sharing the lineage index in "
                             "the local Redis (shared) or not (memory); results get a -split-<mode> suffix")
    args = parser.parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.forgery_eval", *sys.argv[1:]], env)  # noqa: S606
    scale = SCALES[args.scale or ("quick" if args.quick else "full")]
    started = time.monotonic()
    summary, scenario, outcome, config = evaluate(scale, args.seed, args.split)
    if scale.name != "tiny" and args.split is None:
        summary["cost"]["larger_batches"] = cost_on_larger_batches(300.0 if scale.name == "full" else 150.0,
                                                                   60.0, args.seed)
        summary["goals"] = report.goals(summary)
        summary["change_points"] = changepoints.evaluate()
    if args.other_seed is not None:
        other, _, _, _ = evaluate(scale, args.other_seed, args.split)
        summary["other_seed"] = report.seed_digest(other, args.other_seed)
    wall = time.monotonic() - started
    suffix = ("" if scale.name == "full" else f"-{scale.name}") + (f"-split-{args.split}" if args.split else "")
    args.out.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python -m benchmarks.forgery_eval" + (f" --scale {scale.name}" if scale.name != "full" else "")
    if args.split:
        command += f" --split {args.split}"
    if args.seed != 7:
        command += f" --seed {args.seed}"
    if args.other_seed is not None:
        command += f" --other-seed {args.other_seed}"
    meta = {"command": command,
            "seed": args.seed, "scale": scale.name, "tenants": scale.tenants, "principals": scale.principals,
            "duration_s": scenario.duration_s, "wall_s": wall, "threshold": config.quarantine_threshold,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    plotted = report.plot(outcome, scenario, config.quarantine_threshold, str(args.out / f"forgery{suffix}.png"))
    (args.out / f"forgery{suffix}.json").write_text(json.dumps({"meta": meta, **summary}, indent=2) + "\n")
    text = report.markdown(summary, meta)
    if plotted:
        text += f"\n![masking flood](forgery{suffix}.png)\n"
    (args.out / f"forgery{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
