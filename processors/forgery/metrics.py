"""The forgery stage's own metrics (docs/forgery.md, "Metrics"), declared together and built from the
worker's registry. Tenants label only the flag counter: they come from API keys an operator created, so
they are bounded; reasons are a fixed set of codes."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["SCORE_BUCKETS", "ForgeryMetrics"]

SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class ForgeryMetrics(NamedTuple):
    flagged: Counter
    score: Histogram
    actions: Counter
    baseline_entries: Gauge
    state_bytes: Gauge
    snapshots: Counter
    lineage_index: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ForgeryMetrics:
        return cls(
            flagged=Counter("rampart_forgery_flagged_batches", "Batches with a reason at or above the "
                            "annotate threshold, by reason code and tenant (a batch with two reasons counts "
                            "under each).", ["reason", "tenant"], registry=registry),
            score=Histogram("rampart_forgery_batch_score", "Score of each screened batch (0: like its "
                            "peers and its past, 1: a hard rule fired).", buckets=SCORE_BUCKETS, registry=registry),
            actions=Counter("rampart_forgery_batches", "Batches by what the stage did: passed, annotated, "
                            "quarantined, released (an operator's release, passed unscreened).",
                            ["action", "tenant"], registry=registry),
            baseline_entries=Gauge("rampart_forgery_baseline_entries", "State held, by kind: groups, sources, "
                                   "principals, tenants, cardinality_keys, replay_digests.", ["kind"],
                                   registry=registry),
            state_bytes=Gauge("rampart_forgery_state_bytes", "Estimated memory of the state, by kind (entries "
                              "times a measured size per entry; see docs/forgery.md).", ["kind"],
                              registry=registry),
            snapshots=Counter("rampart_forgery_snapshots", "Snapshot saves and loads to and from Redis, by "
                              "outcome: ok, missing (nothing saved yet), failed (Redis unreachable), invalid, "
                              "too_large, dropped (save queue full).", ["operation", "outcome"],
                              registry=registry),
            lineage_index=Counter("rampart_forgery_lineage_index", "Exchanges with the lineage index shared "
                                  "in Redis (tenant_service keying), by outcome: ok, failed (Redis unreachable or "
                                  "slow), skipped (left alone after a failure); and span ids capped (a bucket was "
                                  "full), and batches undecided (their parents could not be looked up).",
                                  ["outcome"], registry=registry),
        )
