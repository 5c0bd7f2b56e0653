"""A small seeded run of the labelled evaluation (benchmarks/forgery_eval.py): the figures are
computed and the 30 % masking flood is caught. No speed is asserted (benchmarks measure speed)."""

from __future__ import annotations

from benchmarks.forgery import report
from benchmarks.forgery_eval import SCALES, evaluate


def test_tiny_evaluation_computes_its_figures_and_catches_the_masking_flood() -> None:
    summary, scenario, _, config = evaluate(SCALES["tiny"], seed=7)
    flood = summary["attacks"]["masking_flood_30"]
    assert flood["attack_batches"] >= 20
    assert flood["recall"] >= 0.8 and flood["precision"] >= 0.8
    assert flood["delay_s"][0] is not None and flood["delay_s"][0] <= 60
    service = flood["service"]
    assert service["p99_error_with"] < service["p99_error_without"]
    assert summary["clean"]["batches"] > 300 and summary["clean"]["fp_per_1000"] <= 5
    # Metric batches are screened alongside the traces, and clean ones pass.
    by_signal = summary["clean"]["by_signal"]
    assert by_signal["metrics"]["batches"] > 50 and by_signal["metrics"]["flagged"] == 0
    assert summary["cost"]["clean_us_per_span"] > 0
    assert set(summary["goals"]) >= {"recall_0.95_per_attack", "fp_clean_le_1_per_1000", "delay_le_30s"}
    meta = {"command": "test", "seed": 7, "scale": "tiny", "tenants": 1, "principals": 4,
            "duration_s": scenario.duration_s, "wall_s": 0.0, "threshold": config.quarantine_threshold,
            "machine": "test"}
    text = report.markdown(summary, meta)
    assert "| masking_flood_30 |" in text and "| clean, metrics batches only |" in text
