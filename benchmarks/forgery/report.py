"""Figures from a simulation's records: per-attack precision/recall/F1 (batch level, no point
adjustment), detection delay, false positives per 1,000 clean and confounder batches, the attacked
service's observed p99 and error ratio with and without the detector, and which goals hold."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from benchmarks.forgery import changepoints
from benchmarks.forgery.run import Outcome, Record, ServiceSample
from benchmarks.forgery.scenario import ATTACKS, Event, Scenario

GOAL_RECALL = 0.95
GOAL_FP_CLEAN = 1.0       # per 1,000 clean batches
GOAL_FP_CONFOUNDER = 5.0  # per 1,000 confounder batches
GOAL_DELAY_S = 30.0
GOAL_P99_ERROR = 0.10     # relative, under the 30 % masking flood


def quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def per_1000(flagged: int, total: int) -> float:
    return round(1000.0 * flagged / total, 2) if total else math.nan


def summarise(scenario: Scenario, outcome: Outcome, threshold: float, annotate: float) -> dict[str, Any]:
    records = outcome.records
    events = {e.id: e for e in scenario.events}
    attacks: dict[str, Any] = {}
    for kind in ATTACKS:
        instances = [e for e in scenario.events if e.kind == kind]
        if instances:
            attacks[kind] = _attack(kind, instances, records, outcome.samples, threshold)
    by_label: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_label[r.label].append(r)
    clean = by_label["clean"]
    confounders: dict[str, dict[str, Any]] = {}
    for r in by_label["confounder"]:
        c = confounders.setdefault(r.event, {"batches": 0, "flagged": 0, "annotated": 0, "reasons": Counter()})
        c["batches"] += 1
        c["flagged"] += r.score >= threshold
        c["annotated"] += r.score >= annotate
        if r.score >= threshold:
            c["reasons"].update(r.codes)
    for c in confounders.values():
        c["fp_per_1000"] = per_1000(c["flagged"], c["batches"])
        c["reasons"] = dict(c["reasons"])
    conf_total = sum(c["batches"] for c in confounders.values())
    conf_flagged = sum(c["flagged"] for c in confounders.values())
    during = by_label["legit_during_attack"]
    clean_flagged = [r for r in clean if r.score >= threshold]
    cost_us = outcome.cpu_ns.get("clean", 0) / max(outcome.spans.get("clean", 1), 1) / 1000
    all_spans = sum(outcome.spans.values())
    summary: dict[str, Any] = {
        "batches": len(records),
        "spans": all_spans,
        "attacks": attacks,
        "clean": {"batches": len(clean), "flagged": len(clean_flagged),
                  "fp_per_1000": per_1000(len(clean_flagged), len(clean)),
                  "annotated_per_1000": per_1000(sum(r.score >= annotate for r in clean), len(clean)),
                  "reasons": dict(Counter(c for r in clean_flagged for c in r.codes)),
                  "examples": [f"t={r.t:.0f} {r.tenant} {r.principal} {r.service}: {r.reasons}"
                               for r in clean_flagged[:5]],
                  "by_signal": {signal: {"batches": sum(r.signal == signal for r in clean),
                                         "flagged": sum(r.signal == signal for r in clean_flagged)}
                                for signal in sorted({r.signal for r in clean})}},
        "confounders": {"batches": conf_total, "flagged": conf_flagged,
                        "fp_per_1000": per_1000(conf_flagged, conf_total), "by_kind": confounders},
        "legit_during_attacks": {"batches": len(during), "flagged": sum(r.score >= threshold for r in during),
                                 "fp_per_1000": per_1000(sum(r.score >= threshold for r in during), len(during))},
        "cost": {"clean_us_per_span": round(cost_us, 2),
                 "clean_spans_per_s_per_core": round(1e6 / cost_us) if cost_us else None,
                 "all_us_per_span": round(sum(outcome.cpu_ns.values()) / max(all_spans, 1) / 1000, 2)},
        "memory_entries": outcome.memory,
        "events": [{"id": e.id, "kind": e.kind, "tenant": e.tenant, "start_s": e.start, "end_s": e.end,
                    "service": e.service, "principal": e.principal} for e in events.values()],
    }
    summary["goals"] = goals(summary)
    return summary


def _attack(kind: str, instances: list[Event], records: list[Record], samples: list[ServiceSample],
            threshold: float) -> dict[str, Any]:
    ids = {e.id for e in instances}
    mine = [r for r in records if r.label == "attack" and r.event_id in ids]
    tp = sum(r.score >= threshold for r in mine)
    fp = sum(r.score >= threshold for r in records if r.label == "legit_during_attack" and r.event_id in ids)
    recall = tp / len(mine) if mine else math.nan
    precision = tp / (tp + fp) if tp + fp else math.nan
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    delays = []
    for e in instances:
        flagged = [r.t for r in mine if r.event_id == e.id and r.score >= threshold]
        delays.append(round(min(flagged) - e.start, 1) if flagged else None)
    out: dict[str, Any] = {
        "instances": len(instances), "attack_batches": len(mine), "detected": tp,
        "legit_flagged_during": fp, "precision": _r(precision), "recall": _r(recall), "f1": _r(f1),
        "delay_s": delays, "reasons": dict(Counter(c for r in mine if r.score >= threshold for c in r.codes)),
        "missed_examples": [f"t={r.t:.0f} spans={r.spans} score={r.score:.2f} {r.reasons}"
                            for r in mine if r.score < threshold][:3],
    }
    mine_samples = [s for s in samples if s.event_id in ids]
    if mine_samples:
        out["service"] = _service_figures(mine_samples, threshold)
    return out


def _service_figures(samples: list[ServiceSample], threshold: float) -> dict[str, float]:
    """The attacked service's p99 and error ratio over the attack: the truth (real spans only), what a
    backend would show without the detector (everything), and with it (what was not quarantined)."""
    def figures(chosen: list[ServiceSample]) -> tuple[float, float]:
        durations = [d for s in chosen for d in s.durations_ms]
        errors = sum(s.errors for s in chosen)
        return quantile(durations, 0.99), errors / len(durations) if durations else math.nan

    truth = figures([s for s in samples if s.real])
    without = figures(samples)
    with_detector = figures([s for s in samples if s.score < threshold])
    return {"p99_truth_ms": _r(truth[0]), "p99_without_ms": _r(without[0]), "p99_with_ms": _r(with_detector[0]),
            "p99_error_without": _r(abs(without[0] - truth[0]) / truth[0]),
            "p99_error_with": _r(abs(with_detector[0] - truth[0]) / truth[0]),
            "error_ratio_truth": _r(truth[1], 4), "error_ratio_without": _r(without[1], 4),
            "error_ratio_with": _r(with_detector[1], 4)}


def goals(summary: dict[str, Any]) -> dict[str, Any]:
    """Which of the issue's goals the figures meet."""
    attacks = summary["attacks"]
    recall = {k: a["recall"] is not None and a["recall"] >= GOAL_RECALL for k, a in attacks.items()}
    delay = {k: all(d is not None and d <= GOAL_DELAY_S for d in a["delay_s"]) for k, a in attacks.items()}
    masking = attacks.get("masking_flood_30", {}).get("service")
    return {
        "recall_0.95_per_attack": recall,
        "fp_clean_le_1_per_1000": summary["clean"]["fp_per_1000"] <= GOAL_FP_CLEAN,
        "fp_confounder_le_5_per_1000": summary["confounders"]["fp_per_1000"] <= GOAL_FP_CONFOUNDER,
        "delay_le_30s": delay,
        "p99_within_10pct_under_30pct_flood": masking is not None and masking["p99_error_with"] <= GOAL_P99_ERROR,
        "spans_per_s_per_core_ge_100000": max(summary["cost"]["clean_spans_per_s_per_core"] or 0,
                                              summary["cost"].get("larger_batches", {}).get("spans_per_s_per_core", 0))
        >= 100_000,
    }


def seed_digest(summary: dict[str, Any], seed: int) -> dict[str, Any]:
    """What another seed's run says, in brief: recall, precision and first delays per attack, false
    positives, and the goals (speed is measured by the main run only)."""
    digest = {"seed": seed,
              "attacks": {k: {"recall": a["recall"], "precision": a["precision"], "delay_s": a["delay_s"]}
                          for k, a in summary["attacks"].items()},
              "clean": {k: summary["clean"][k] for k in ("batches", "flagged", "fp_per_1000")},
              "confounders": {k: summary["confounders"][k] for k in ("batches", "flagged", "fp_per_1000")},
              "goals": {k: v for k, v in summary["goals"].items() if k != "spans_per_s_per_core_ge_100000"}}
    return digest


def _goal_lines(goals: dict[str, Any]) -> list[str]:
    lines = []
    for goal, held in goals.items():
        if isinstance(held, dict):
            failing = [k for k, v in held.items() if not v]
            lines.append(f"- {goal}: {'holds' if not failing else 'fails for ' + ', '.join(failing)}")
        else:
            lines.append(f"- {goal}: {'holds' if held else 'fails'}")
    return lines


def _r(x: float, digits: int = 3) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, digits)


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = ["# Forgery detection: labelled evaluation", "",
             f"`{meta['command']}` — seed {meta['seed']}, scale `{meta['scale']}`: {meta['tenants']} tenants x "
             f"{meta['principals']} principals, {meta['duration_s']:.0f} s of simulated time, "
             f"{summary['batches']:,} batches, {summary['spans']:,} spans; run took {meta['wall_s']:.0f} s on "
             f"{meta['machine']}.", "",
             f"A batch counts as detected when its score reaches the quarantine threshold "
             f"({meta['threshold']}). Precision counts legitimate batches flagged while the attack ran in the "
             "same tenant. No point adjustment: every attack batch counts.", "",
             "| attack | attack batches | detected | recall | precision | F1 | delay from start (s) | reasons |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind, a in summary["attacks"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(a["reasons"].items(), key=lambda x: -x[1]))
        delays = ", ".join("never" if d is None else f"{d:g}" for d in a["delay_s"])
        lines.append(f"| {kind} | {a['attack_batches']} | {a['detected']} | {_fmt(a['recall'])} | "
                     f"{_fmt(a['precision'])} | {_fmt(a['f1'])} | {delays} | {reasons} |")
    lines += ["", "False positives (batches flagged at the quarantine threshold):", "",
              "| traffic | batches | flagged | per 1,000 |", "| --- | --- | --- | --- |",
              f"| clean | {summary['clean']['batches']:,} | {summary['clean']['flagged']} | "
              f"{summary['clean']['fp_per_1000']} |",
              f"| all confounders | {summary['confounders']['batches']:,} | {summary['confounders']['flagged']} | "
              f"{summary['confounders']['fp_per_1000']} |"]
    for signal, c in summary["clean"].get("by_signal", {}).items():
        lines.append(f"| clean, {signal} batches only | {c['batches']:,} | {c['flagged']} | "
                     f"{per_1000(c['flagged'], c['batches'])} |")
    for kind, c in sorted(summary["confounders"]["by_kind"].items()):
        lines.append(f"| confounder: {kind} | {c['batches']:,} | {c['flagged']} | {c['fp_per_1000']} |")
    d = summary["legit_during_attacks"]
    lines += [f"| legitimate, during attacks | {d['batches']:,} | {d['flagged']} | {d['fp_per_1000']} |", "",
              "The attacked service (cart, SERVER spans) over each masking attack:", "",
              "| attack | p99 truth | p99 without detector | p99 with detector | error without / with | "
              "error ratio truth / without / with |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, a in summary["attacks"].items():
        s = a.get("service")
        if s:
            lines.append(f"| {kind} | {s['p99_truth_ms']} ms | {s['p99_without_ms']} ms | {s['p99_with_ms']} ms | "
                         f"{_pct(s['p99_error_without'])} / {_pct(s['p99_error_with'])} | "
                         f"{s['error_ratio_truth']} / {s['error_ratio_without']} / {s['error_ratio_with']} |")
    cost = summary["cost"]
    lines += ["", f"Cost: {cost['clean_us_per_span']} µs of processor CPU per span on clean traffic "
              f"({cost['clean_spans_per_s_per_core']:,} spans/s per core; all traffic {cost['all_us_per_span']} µs), "
              "measured with process CPU time inside this run on a shared 2-core machine."]
    larger = cost.get("larger_batches")
    if larger:
        lines[-1] += (f" On clean traffic with larger batches (mean {larger['mean_spans_per_batch']} spans): "
                      f"{larger['us_per_span']} µs per span ({larger['spans_per_s_per_core']:,} spans/s per core).")
    lines += ["", f"Goals (seed {meta['seed']}):", "", *_goal_lines(summary["goals"])]
    other = summary.get("other_seed")
    if other:
        lines += ["", f"Goals (seed {other['seed']}, same scale; speed is measured by the main run only):", ""]
        lines += _goal_lines(other["goals"])
        lines += ["", f"Seed {other['seed']} per attack (recall / precision / delay s): " + "; ".join(
            f"{k} {_fmt(a['recall'])} / {_fmt(a['precision'])} / "
            + ", ".join("never" if d is None else f"{d:g}" for d in a["delay_s"]) for k, a in other["attacks"].items())
            + f". False positives: clean {other['clean']['flagged']} of {other['clean']['batches']:,}, confounders "
            f"{other['confounders']['flagged']} of {other['confounders']['batches']:,}."]
    if "change_points" in summary:
        lines += changepoints.markdown(summary["change_points"])
    if summary["clean"]["examples"]:
        lines += ["", "Examples of flagged clean batches:", ""] + [f"- {x}" for x in summary["clean"]["examples"]]
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def plot(outcome: Outcome, scenario: Scenario, threshold: float, path: str) -> bool:
    """True p99 and observed p99 without / with the detector over one 30 % masking flood (PNG)."""
    try:
        import matplotlib  # noqa: PLC0415 - optional, benchmark-only dependency
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    event = next((e for e in scenario.events if e.kind == "masking_flood_30"), None)
    if event is None:
        return False
    samples = [s for s in outcome.samples if s.event_id == event.id]
    window = 20.0
    buckets: dict[int, list[ServiceSample]] = defaultdict(list)
    for s in samples:
        buckets[int((s.t - event.start) // window)].append(s)
    xs, truth, without, with_ = [], [], [], []
    for k in sorted(buckets):
        chosen = buckets[k]
        xs.append((k + 0.5) * window)
        truth.append(quantile([d for s in chosen if s.real for d in s.durations_ms], 0.99))
        without.append(quantile([d for s in chosen for d in s.durations_ms], 0.99))
        with_.append(quantile([d for s in chosen if s.score < threshold for d in s.durations_ms], 0.99))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(xs, truth, label="true p99 (real spans only)", color="black", linewidth=2)
    ax.plot(xs, without, label="observed p99, no detector", color="tab:red", linestyle="--")
    ax.plot(xs, with_, label="observed p99, detector quarantining", color="tab:green", linestyle=":")
    ax.set_xlabel(f"seconds since the attack started ({event.tenant}, service {event.service}, 20 s windows)")
    ax.set_ylabel("p99 latency of SERVER spans (ms)")
    ax.set_title("Latency-masking flood (30 % fake fast spans) during a real 3x slowdown")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
