"""The change detectors on real, labelled series nobody here generated: the Turing Change Point
Detection benchmark series that river ships in its wheel (river.drift.datasets, annotated by several
people each).

Scoring follows that benchmark's F-measure (van den Burg and Williams, 2020): an alarm is a true
positive when it lies within ``MARGIN`` points of an annotated change (each change counts once);
precision is against the union of every annotator's changes, recall is averaged over annotators.
The delay is the number of points from a matched change to its alarm (negative: the alarm came
before the annotated point, within the margin). Multivariate series run one detector per column; an
alarm of any column counts, alarms closer than ``MARGIN`` to the previous one are merged.

The detector is processors.forgery.changes.ChangeDetector, the processor's CUSUM step with its
parameters (drift latency_z / 2, cap latency_z, limit 4 x latency_z) on robust z-scores; a
Page-Hinkley test on the same residuals is the same statistic. river's own PageHinkley (its
defaults: running mean, no robust scale) is run beside it as a reference from a maintained library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from processors.forgery.changes import ChangeDetector

MARGIN = 5


def _series(dataset: Any) -> list[list[float]]:
    """The dataset's target columns as lists of floats (missing values carried forward)."""
    columns: dict[str, list[float]] = {}
    for _, y in dataset:
        values = y if isinstance(y, dict) else {"value": y}
        for key, value in values.items():
            column = columns.setdefault(key, [])
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            column.append((column[-1] if column else 0.0) if missing else float(value))
    return list(columns.values())


def _alarms(columns: list[list[float]], make: Callable[[], Any], update: Callable[[Any, float], bool]) -> list[int]:
    found: set[int] = set()
    for column in columns:
        detector = make()
        found.update(i for i, x in enumerate(column) if update(detector, x))
    merged: list[int] = []
    for i in sorted(found):
        if not merged or i - merged[-1] > MARGIN:
            merged.append(i)
    return merged


def _match(alarms: list[int], changes: Iterable[int]) -> list[tuple[int, int]]:
    """(change, alarm) pairs: each change matched to the nearest unused alarm within the margin."""
    used: set[int] = set()
    pairs = []
    for change in sorted(set(changes)):
        near = [a for a in alarms if abs(a - change) <= MARGIN and a not in used]
        if near:
            alarm = min(near, key=lambda a: (abs(a - change), a))
            used.add(alarm)
            pairs.append((change, alarm))
    return pairs


def score(alarms: list[int], annotations: dict[str, list[int]]) -> dict[str, Any]:
    union = {c for changes in annotations.values() for c in changes}
    matched = _match(alarms, union)
    precision = len(matched) / len(alarms) if alarms else math.nan
    recalls = [len(_match(alarms, changes)) / len(changes) if changes else 1.0 for changes in annotations.values()]
    recall = sum(recalls) / len(recalls)
    f1 = 2 * precision * recall / (precision + recall) if alarms and precision + recall > 0 else 0.0
    delays = [alarm - change for change, alarm in matched]
    return {"alarms": len(alarms), "changes": len(union), "matched": len(matched),
            "precision": _r(precision), "recall": _r(recall), "f1": _r(f1),
            "mean_delay": _r(sum(delays) / len(delays)) if delays else None}


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 3)


def evaluate() -> dict[str, Any]:
    """Every annotated series river ships, every detector: the figures, or why there are none."""
    try:
        from river import drift  # noqa: PLC0415 - optional, benchmark-only dependency
        from river.drift import datasets  # noqa: PLC0415
    except ImportError:
        return {"skipped": "river is not installed (pip install -e '.[dev]')"}
    detectors: dict[str, tuple[Callable[[], Any], Callable[[Any, float], bool]]] = {
        "cusum (forgery)": (ChangeDetector, lambda d, x: d.update(x)),
        "river PageHinkley (reference)": (drift.PageHinkley, _river_update),
    }
    out: dict[str, Any] = {"margin": MARGIN, "series": {}, "overall": {}}
    totals: dict[str, list[dict[str, Any]]] = {name: [] for name in detectors}
    for cls in (datasets.AirlinePassengers, datasets.Apple, datasets.Bitcoin, datasets.BrentSpotPrice,
                datasets.Occupancy, datasets.RunLog, datasets.UKCoalEmploy):
        dataset = cls()
        columns = _series(dataset)
        per: dict[str, Any] = {"points": len(columns[0]), "columns": len(columns)}
        for name, (make, update) in detectors.items():
            result = score(_alarms(columns, make, update), dataset.annotations)
            per[name] = result
            totals[name].append(result)
        out["series"][cls.__name__] = per
    for name, results in totals.items():
        f1s = [r["f1"] for r in results]
        delays = [r["mean_delay"] for r in results if r["mean_delay"] is not None]
        out["overall"][name] = {
            "mean_precision": _r(_mean([r["precision"] for r in results if r["precision"] is not None])),
            "mean_recall": _r(_mean([r["recall"] for r in results])),
            "mean_f1": _r(_mean(f1s)),
            "mean_delay": _r(_mean(delays)) if delays else None}
    return out


def _river_update(detector: Any, x: float) -> bool:
    detector.update(x)
    return bool(detector.drift_detected)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def markdown(result: dict[str, Any]) -> list[str]:
    if "skipped" in result:
        return ["", f"Change detectors on labelled series: skipped ({result['skipped']})."]
    names = list(result["overall"])
    lines = ["", "Change detectors on the annotated change-point series river ships (Turing Change Point "
             f"Detection benchmark; margin {result['margin']} points; precision against all annotators' "
             "changes, recall averaged over annotators; delay in points after the annotated change):", "",
             "| series | points | annotated changes | " + " | ".join(f"{n}: P / R / F1 / delay" for n in names) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for series, per in result["series"].items():
        cells = []
        for n in names:
            r = per[n]
            cells.append(f"{_f(r['precision'])} / {_f(r['recall'])} / {_f(r['f1'])} / "
                         f"{'n/a' if r['mean_delay'] is None else r['mean_delay']} ({r['alarms']} alarms)")
        first = per[names[0]]
        lines.append(f"| {series} | {per['points']} x {per['columns']} | {first['changes']} | "
                     + " | ".join(cells) + " |")
    cells = [f"{_f(o['mean_precision'])} / {_f(o['mean_recall'])} / {_f(o['mean_f1'])} / "
             f"{'n/a' if o['mean_delay'] is None else o['mean_delay']}" for o in result["overall"].values()]
    lines.append("| mean | | | " + " | ".join(cells) + " |")
    return lines


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"
