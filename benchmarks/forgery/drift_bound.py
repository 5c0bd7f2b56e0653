"""How early can ANY detector see the evaluation's `metric_drift` attack? A bound from the noise.

    .venv/bin/python -m benchmarks.forgery.drift_bound [--seed 7] [--duration 3600] [--out /tmp/drift_bound.json]

The attack (attacks.MetricDrift) reports one principal's ``search`` latency as its truth times
0.5 ** progress over 7 minutes, in a series of its own. This runs the evaluation's own generator
(run.Simulation at the full scale's tenants and load, no events but the forger, its factor held at 1:
nobody attacks), records every ``search`` metric and trace batch instead of screening it, and measures
the scatter of the log-ratio each information set gives a detector for the forged series:

- peers:      its interval mean (sum/count deltas) against the median of the other principals' latest
              readings, as processors/forgery/metric_peers.py takes it;
- cpu peers:  the same for the CPU gauge, which the forger scales by the same factor;
- traces:     its mean against the principal's own SERVER spans that ended in the interval (the forged
              series, a copy of the last genuine window, and the genuine series itself);
- traces 10%: the same with 10 % head sampling of the traces;
- sibling:    against the principal's genuine series' latest reading (an artefact: the simulated forger
              copies that very reading);
- mixes: inverse-variance mixes of those (the forgery moves each by the same log factor).

Spread: MAD * 1.4826 of one batch, and of the mean of k consecutive batches (so correlation counts).
With Gaussian noise of that spread and a threshold for 1 false positive per 1,000 clean batches, it
gives when the test could first fire (its mean reaches the threshold) and the share of the attack's
batches from then on, for one batch, the best window of k, and the Neyman-Pearson test that knows the
drift's start and slope (nothing does better). Last, what a peers-only window test can do if it must
let the scenario's rolling deploy pass.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from bisect import bisect_right
from collections import defaultdict
from pathlib import Path
from statistics import NormalDist, median
from typing import Any, cast

import numpy as np
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from benchmarks.forgery import attacks, metric_traffic
from benchmarks.forgery import scenario as scenarios
from benchmarks.forgery.run import Simulation
from benchmarks.forgery.traffic import EPOCH_NS, NS, SERVER, make_tenants
from benchmarks.forgery_eval import SCALES
from processors.forgery.metric_peers import MIN_EVENTS, MIN_PEERS, PEER_MAX_AGE_S
from schemas.envelope import Signal

FP_PER_BATCH = 1e-3            # the limit: 1 false positive per 1,000 clean batches
Z = NormalDist().inv_cdf(1 - FP_PER_BATCH / 2)   # two-sided: a forger may drift either way
Z_CONFOUNDER = NormalDist().inv_cdf(1 - 5e-3 / 2)   # the 5 per 1,000 confounder batches
SAMPLING = 0.1
MAX_K = 42                     # windows up to the attack's whole length
DAY_S = 1800.0                 # as forgery_eval.evaluate builds its scenario
MAD_TO_SIGMA = 1.4826
DEPLOY_LEAD_S = 120.0        # scenario._event: rolling deploys' per-cluster offsets, uniform(0, 120) s
DEPTH = abs(math.log(0.5))   # attacks.MetricDrift: the truth times 0.5 ** progress


class _NullForger(attacks.MetricForger):
    """The drift's forger with its factor held at 1: its series exactly as the attack starts it."""

    def factor(self, at: float) -> float:
        return 1.0


class _Recorder(Simulation):
    """The evaluation's simulation with every batch of the attacked service recorded, not screened."""

    def __init__(self, scenario: scenarios.Scenario, seed: int, service: str) -> None:
        super().__init__(scenario, seed)
        self._attackers = [_NullForger(a.event, a.principal, a.ctx, a.rng) for a in self._attackers]
        self.service = service
        self.points: list[dict[str, Any]] = []
        self.spans: dict[tuple[str, str], list[tuple[float, float, bool]]] = defaultdict(list)

    def _screen(self, processor: Any, emitted: attacks.Emitted, label: str, event: Any, outcome: Any) -> None:
        if emitted.service != self.service:
            return
        if emitted.signal is Signal.METRICS:
            self._point(emitted, label)
            return
        for rs in cast(ExportTraceServiceRequest, emitted.request).resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    if s.kind == SERVER:
                        # Head sampling keeps whole traces by trace id, as TraceIdRatioBased does.
                        sampled = int.from_bytes(s.trace_id[8:], "big") < SAMPLING * 2 ** 64
                        self.spans[(emitted.tenant, emitted.principal)].append(
                            ((s.end_time_unix_nano - EPOCH_NS) / NS,
                             (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6, sampled))

    def _point(self, emitted: attacks.Emitted, label: str) -> None:
        for rs in cast(ExportMetricsServiceRequest, emitted.request).resource_metrics:
            host = next(kv.value.string_value for kv in rs.resource.attributes if kv.key == "host.name")
            metrics = {m.name: m for sm in rs.scope_metrics for m in sm.metrics}
            h = metrics[metric_traffic.DURATION].histogram.data_points[0]
            self.points.append({"at": emitted.received_s, "tenant": emitted.tenant, "principal": emitted.principal,
                                "forged": label == "attack", "host": host, "start_ns": h.start_time_unix_nano,
                                "time_ns": h.time_unix_nano, "count": h.count, "sum": h.sum,
                                "cpu": metrics[metric_traffic.CPU].gauge.data_points[0].as_double})


class _NoProcessor:
    def memory_entries(self) -> dict[str, int]:
        return {}


def simulate(seed: int, duration_s: float) -> tuple[_Recorder, scenarios.Event, float]:
    scale = SCALES["full"]
    rng = random.Random(seed)
    tenants = make_tenants(scale.tenants, scale.principals, scale.roots_per_s, rng)
    # The attack and a benign deploy exactly as the scenario makes them (their service, key, length, factor).
    drift = scenarios._event("metric_drift", tenants[0], 0.0, scale.slot_s, rng)[0]
    deploy = scenarios._event("deploy_speedup", tenants[0], 0.0, scale.slot_s, rng)[0]
    events = [scenarios.Event("metric_drift", t.name, 60.0, duration_s, drift.service, t.principals[0].name, tail_s=0)
              for t in tenants]
    for n, e in enumerate(events):
        e.id = n
    world = scenarios.Scenario(tenants, events, duration_s, DAY_S, scale.learning_s)
    recorder = _Recorder(world, seed, drift.service or "")
    recorder.run(_NoProcessor())   # type: ignore[arg-type]
    return recorder, drift, deploy.params["factor"]


def residuals(rec: _Recorder) -> dict[str, dict[str, list[float]]]:
    """Information set -> tenant -> the log-ratios of the attacked principal's series it tests, in time
    order (a batch that gives that set no reading is left out)."""
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    last: dict[tuple[str, str], tuple[int, float, float]] = {}
    latest: dict[tuple[str, str], tuple[float, float, float]] = {}   # genuine (tenant, principal) -> at, mean, cpu
    attacked = {p["tenant"]: p["principal"] for p in rec.points if p["forged"]}
    spans = {k: sorted(v) for k, v in rec.spans.items()}
    ends = {k: [end for end, _, _ in v] for k, v in spans.items()}
    for p in sorted(rec.points, key=lambda p: p["at"]):
        key = (p["tenant"], p["host"])
        previous = last.get(key, (p["start_ns"], 0.0, 0.0))
        if previous[0] < p["start_ns"]:
            previous = (p["start_ns"], 0.0, 0.0)
        last[key] = (p["time_ns"], p["count"], p["sum"])
        d_count = p["count"] - previous[1]
        if d_count < MIN_EVENTS:     # the processor takes no reading from so few events either
            continue
        mean = (p["sum"] - previous[2]) / d_count
        source = (p["tenant"], p["principal"])
        if p["principal"] != attacked.get(p["tenant"]) or not p["forged"]:
            latest[source] = (p["at"], mean, p["cpu"])
        if p["principal"] != attacked.get(p["tenant"]):
            continue
        row: dict[str, float] = {}
        which = "forged" if p["forged"] else "genuine"
        # Its own SERVER spans that ended within the interval the point covers.
        t0, t1 = (previous[0] - EPOCH_NS) / NS, (p["time_ns"] - EPOCH_NS) / NS
        lo, hi = bisect_right(ends.get(source, []), t0), bisect_right(ends.get(source, []), t1)
        own = [(d, s) for _, d, s in spans.get(source, [])[lo:hi]]
        if own:
            row[f"traces, {which} series"] = math.log(mean / (sum(d for d, _ in own) / len(own)))
        sampled = [d for d, s in own if s]
        if sampled:
            row[f"traces 10%, {which}"] = math.log(mean / (sum(sampled) / len(sampled)))
        if p["forged"]:
            peers = [v for (tenant, principal), v in latest.items()
                     if tenant == p["tenant"] and principal != p["principal"] and p["at"] - v[0] <= PEER_MAX_AGE_S]
            if len(peers) >= MIN_PEERS:
                row["peers"] = math.log(mean / median(v[1] for v in peers))
                row["cpu peers"] = math.log(p["cpu"] / median(v[2] for v in peers))
            if source in latest:
                row["sibling (artefact)"] = math.log(mean / latest[source][1])
        rows[p["tenant"]].append(row)
    out: dict[str, dict[str, list[float]]] = defaultdict(dict)
    names = sorted({name for tenant_rows in rows.values() for row in tenant_rows for name in row}, key=_ORDER.index)
    for tenant, tenant_rows in rows.items():
        for name in names:
            out[name][tenant] = [row[name] for row in tenant_rows if name in row]
    # The forgery moves every set's log-ratio by the same log factor: an inverse-variance mix of two is a test too.
    for name, parts in _COMBINED.items():
        weight = {part: spreads(out[part])[0] ** -2 for part in parts}
        for tenant, tenant_rows in rows.items():
            center = {part: median(out[part][tenant]) for part in parts}
            out[name][tenant] = [sum(weight[q] * (row[q] - center[q]) for q in parts) / sum(weight.values())
                                 for row in tenant_rows if all(q in row for q in parts)]
    return out


_COMBINED = {"peers + traces 10%": ("peers", "traces 10%, forged"),
             "peers + cpu + traces 10%": ("peers", "cpu peers", "traces 10%, forged")}
_ORDER = ["peers", "cpu peers", "traces, forged series", "traces, genuine series", "traces 10%, forged",
          "traces 10%, genuine", "sibling (artefact)"]


def _centered(by_tenant: dict[str, list[float]]) -> list[np.ndarray]:
    # Each series about its own median: a cluster may run a little hotter, and a detector learns that.
    return [np.asarray(v) - np.median(v) for v in by_tenant.values() if v]


def _robust(values: np.ndarray) -> float:
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values)))) if len(values) >= 10 else math.nan


def spreads(by_tenant: dict[str, list[float]]) -> list[float]:
    """Robust spread of the mean of k consecutive residuals, k = 1..MAX_K, pooled over the tenants."""
    series = _centered(by_tenant)
    return [_robust(np.concatenate([np.convolve(v, np.ones(k) / k, "valid") for v in series if len(v) >= k] or
                                   [np.empty(0)]))
            for k in range(1, MAX_K + 1)]


def _curve(attack_s: float, export_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The attack's batch times after its start and their |log factor|."""
    times = export_s / 2 + export_s * np.arange(round(attack_s / export_s))   # the first export: within 10 s
    return times, DEPTH * np.minimum(times / attack_s, 1.0)


def _windows(dev: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean deviation of the window of k batches ending at each attack batch, and the window's length:
    the forged series has no batches before the attack, so its early windows are shorter (and noisier)."""
    w = np.minimum(k, np.arange(len(dev)) + 1)
    return np.array([dev[i - w[i] + 1:i + 1].mean() for i in range(len(dev))]), w


def _first(times: np.ndarray, signal: np.ndarray, threshold: np.ndarray) -> dict[str, Any]:
    fired = np.nonzero(signal >= threshold)[0]
    first = int(fired[0]) if len(fired) else None
    return {"delay_s": float(times[first]) if first is not None else None,
            "recall_after_delay": (len(times) - first) / len(times) if first is not None else 0.0}


def tail(by_tenant: dict[str, list[float]], k: int, sigma_k: float) -> float:
    """Clean windows of k batches beyond Z sigma_k, per 1,000 (1 if the noise were Gaussian): a check on
    the Gaussian assumption, which flatters the detector when the tails are heavier."""
    means = np.concatenate([np.convolve(v, np.ones(k) / k, "valid") for v in _centered(by_tenant) if len(v) >= k])
    return float(np.mean(np.abs(means - np.median(means)) > Z * sigma_k) * 1000)


def bound(by_tenant: dict[str, list[float]], sigma: list[float], attack_s: float, export_s: float) -> dict[str, Any]:
    """Earliest fire time (the test statistic's mean reaches its threshold: a coin flip) and batch-level
    recall, for one batch, the best window of k batches, and the oracle matched filter."""
    times, dev = _curve(attack_s, export_s)
    n = len(times)
    phi = np.vectorize(NormalDist().cdf)

    def summary(signal: np.ndarray, noise: np.ndarray, **extra: Any) -> dict[str, Any]:
        return {**extra, **_first(times, signal, Z * noise), "expected_recall": float(np.mean(phi(signal / noise - Z)))}

    windows = []
    for k in range(1, MAX_K + 1):
        signal, w = _windows(dev, k)
        noise = np.maximum([sigma[x - 1] for x in w], 1e-9)
        if not np.isnan(noise).any():
            windows.append(summary(signal, noise, k=k))
    best = max(windows, key=lambda r: r["expected_recall"])
    # Knowing when the drift starts and its slope, the best test of all (Neyman-Pearson, Gaussian noise) is
    # d' C^-1 x with C the noise's covariance over the batches so far: its mean/scatter is sqrt(d' C^-1 d).
    # C: the measured robust spread and the series' autocorrelation (stationary), so that correlated or
    # anticorrelated noise counts as it is. No detector at this false-positive rate does better, batch by batch.
    series = [np.clip(v, -5 * sigma[0], 5 * sigma[0]) for v in _centered(by_tenant)]   # outliers out of C
    lags = np.arange(n)
    gamma = np.array([sum(float(v[:len(v) - h] @ v[h:]) for v in series if len(v) > h) for h in lags])
    rho = gamma / gamma[0]
    cov = max(sigma[0], 1e-9) ** 2 * rho[np.abs(lags[:, None] - lags[None, :])]
    snr = np.array([math.sqrt(dev[:i + 1] @ np.linalg.pinv(cov[:i + 1, :i + 1], hermitian=True) @ dev[:i + 1])
                    for i in range(n)])
    oracle = summary(snr, np.ones(n))
    return {"single": windows[0], "best_window": best, "oracle": oracle}


def deploy_tolerant(sigma: list[float], attack_s: float, export_s: float, factor: float) -> dict[str, Any]:
    """Peers only, a window of k batches that must let a rolling deploy pass. The deploy (scenario: each
    cluster switches within 0-120 s of the others) moves one cluster by |log factor| against its peers'
    median for up to DEPLOY_LEAD_S, so the window's threshold must be above what that puts in it,
    |log factor| * min(1, lead / window); "floor" ignores noise (no such detector fires earlier), "noisy"
    adds Z_CONFOUNDER of the window's noise (the issue's 5 per 1,000 confounder batches) and keeps the clean
    batches' Z."""
    times, dev = _curve(attack_s, export_s)
    gap, out = abs(math.log(factor)), {}
    for case in ("floor", "noisy"):
        candidates = []
        for k in range(1, MAX_K + 1):
            signal, w = _windows(dev, k)
            noise = np.array([sigma[x - 1] for x in w])
            threshold = gap * np.minimum(1.0, DEPLOY_LEAD_S / (w * export_s))
            if case == "noisy":
                threshold = np.maximum(threshold + Z_CONFOUNDER * noise, Z * noise)
            result = {"k": k, **_first(times, signal, threshold)}
            if result["delay_s"] is not None:
                candidates.append(result)
        out[case] = min(candidates, key=lambda r: r["delay_s"]) if candidates else {"delay_s": None}
    return out


def show(r: dict[str, Any]) -> str:
    return f"{r['delay_s'] or '-':>5} s {r['recall_after_delay']:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--duration", type=float, default=2 * DAY_S,
                        help="simulated seconds of null traffic (default: two daily cycles)")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "drift_bound.json"),
                        help="JSON results (default: /tmp/drift_bound.json)")
    args = parser.parse_args(argv)
    started = time.process_time()
    rec, drift, deploy_factor = simulate(args.seed, args.duration)
    attack_s, export_s = drift.end - drift.start, metric_traffic.EXPORT_S
    n = round(attack_s / export_s)
    results: dict[str, Any] = {"seed": args.seed, "duration_s": args.duration, "service": drift.service,
                               "attack_s": attack_s, "export_s": export_s, "attack_batches": n,
                               "fp_per_batch": FP_PER_BATCH, "z": Z, "sets": {}}
    print(f"seed {args.seed}: {args.duration:.0f} s of null traffic, {len(rec.scenario.tenants)} tenants, the forged "
          f"'{drift.service}' series at factor 1; the attack: {n} batches over {attack_s:.0f} s; threshold "
          f"{Z:.2f} sigma (two-sided, {FP_PER_BATCH:g} false positives per batch), noise Gaussian with the robust "
          "spread")
    print("delay: when the test's mean reaches its threshold (detected half the time); recall: share of the attack's"
          " batches from then on (E: expected recall); tails: clean batches (windows) beyond the threshold per"
          " 1,000, 1 if Gaussian")
    header = (f"{'information':<26}{'batches':>8}{'sigma_1':>9}{'sigma_8':>9}{'ratio':>7}   {'1 batch':<16}"
              f"{'best window':<30}{'oracle (knows start, slope)':<28}{'tails: 1  best k':<16}")
    print(header + "\n" + "-" * len(header))
    for name, by_tenant in residuals(rec).items():
        sigma = spreads(by_tenant)
        b = bound(by_tenant, sigma, attack_s, export_s)
        tails = {"1": tail(by_tenant, 1, sigma[0]), "best_k": tail(by_tenant, b["best_window"]["k"],
                                                                     sigma[b["best_window"]["k"] - 1])}
        results["sets"][name] = {"batches": sum(map(len, by_tenant.values())), "sigma_k": sigma,
                                 "tail_per_1000": tails, **b}
        single, best, oracle = b["single"], b["best_window"], b["oracle"]
        # ratio: sigma_8 * sqrt(8) / sigma_1, 1 for independent batches (<1: anticorrelated, >1: correlated)
        print(f"{name:<26}{results['sets'][name]['batches']:>8}{sigma[0]:>9.3f}{sigma[7]:>9.3f}"
              f"{sigma[7] * math.sqrt(8) / sigma[0]:>7.2f}   {show(single):<16}"
              f"{'k=' + str(best['k']):<5} {show(best)} E {best['expected_recall']:.2f}      "
              f"{show(oracle)} E {oracle['expected_recall']:.2f}   {tails['1']:>4.1f} {tails['best_k']:>5.1f}")
    # Recall 0.95 leaves 2 of the 42 batches to miss, and 30 s is the third batch: what noise that needs.
    third = DEPTH * (export_s / 2 + 2 * export_s) / attack_s
    results["goal"] = {"third_batch_log_gap": third, "sigma_for_coin_flip": third / Z,
                       "sigma_for_95pc": third / (Z + NormalDist().inv_cdf(0.95))}
    print(f"the goal (recall 0.95, 30 s) needs the third batch (x{math.exp(-third):.3f}, |log| {third:.3f}) caught: a "
          f"per-batch sigma of {third / Z:.4f} for a coin flip, {results['goal']['sigma_for_95pc']:.4f} for 95 %")
    # A rolling deploy moves one cluster against its peers for a while, genuinely: what a peers-only test
    # that lets it pass can still do.
    tolerant = deploy_tolerant(results["sets"]["peers"]["sigma_k"], attack_s, export_s, deploy_factor)
    results["deploy_tolerant_peers"] = {"deploy_factor": deploy_factor, "lead_s": DEPLOY_LEAD_S, **tolerant}
    print(f"peers only, letting a rolling deploy (x{deploy_factor}, one cluster up to {DEPLOY_LEAD_S:.0f} s ahead) "
          f"pass: " + "; ".join(f"{case} k={r.get('k')} {show(r)}" if r["delay_s"] else f"{case} never"
                                for case, r in tolerant.items()))
    print(f"CPU {time.process_time() - started:.0f} s")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
