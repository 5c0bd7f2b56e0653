"""Metric batches: each source's values against its peers' median (processors/forgery/metric_peers.py)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from processors.base import Batch
from processors.forgery import ForgeryProcessor, Verdict
from schemas.envelope import Signal
from tests.unit.processors.test_forgery import CONFIG, NS, PRINCIPALS, T0

Factor = Callable[[str, float], float]


def metrics_request(now_s: float, cpu: float, requests: int, started_s: float = T0) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="service.name").value.string_value = "cart"
    scope = rm.scope_metrics.add()
    gauge = scope.metrics.add(name="process.cpu.utilization")
    gauge.gauge.data_points.add(time_unix_nano=int(now_s * NS), as_double=cpu)
    total = scope.metrics.add(name="http.server.requests")
    total.sum.aggregation_temporality = 2
    total.sum.is_monotonic = True
    total.sum.data_points.add(start_time_unix_nano=int(started_s * NS), time_unix_nano=int(now_s * NS), as_int=requests)
    return req


def send(processor: ForgeryProcessor, principal: str, req: ExportMetricsServiceRequest, now_s: float) -> Verdict:
    batch = Batch(signal=Signal.METRICS, request=req, batch_id=f"{principal}-{now_s}", tenant="acme",
                  principal=principal, received_at_ns=int(now_s * NS))
    return processor.screen_metrics(batch)


def exports(processor: ForgeryProcessor, rng: random.Random, start: float, seconds: float,
            factor: Factor = lambda p, t: 1.0) -> dict[str, list[Verdict]]:
    """Every principal exports every 10 s: cpu about 0.4 times ``factor``, and 50 requests/s (cumulative)."""
    verdicts: dict[str, list[Verdict]] = {p: [] for p in PRINCIPALS}
    t = start
    while t < start + seconds:
        for i, principal in enumerate(PRINCIPALS):
            now = t + i
            req = metrics_request(now, 0.4 * factor(principal, now) * rng.lognormvariate(0, 0.05), int((now - T0) * 50))
            verdicts[principal].append(send(processor, principal, req, now))
        t += 10
    return verdicts


def test_an_outlier_is_flagged_and_a_change_every_source_shows_is_not() -> None:
    processor = ForgeryProcessor(CONFIG)
    rng = random.Random(31)
    exports(processor, rng, T0, 600)
    shared = exports(processor, rng, T0 + 600, 100, factor=lambda p, t: 2.5)   # a load spike: everyone
    assert not any(v.codes for vs in shared.values() for v in vs)
    spike = send(processor, "k0", metrics_request(T0 + 705, 4.0, 1_000_000, started_s=T0 + 695), T0 + 705)
    assert spike.score == 1.0 and "metric_outlier" in spike.codes


def test_a_slow_drift_is_caught_against_the_frozen_reference() -> None:
    processor = ForgeryProcessor(CONFIG)
    rng = random.Random(32)
    exports(processor, rng, T0, 600)

    def creeping(principal: str, t: float) -> float:   # k0 creeps down to half over 10 minutes
        return math.exp(math.log(0.5) * (t - T0 - 600) / 600) if principal == "k0" else 1.0

    drifting = exports(processor, rng, T0 + 600, 600, factor=creeping)
    assert any("metric_drift" in v.codes for v in drifting["k0"])
    assert not any("metric_drift" in v.codes for v in drifting["k0"][:12])   # the first minutes are noise
    assert not any(v.codes for p in ("k1", "k2", "k3") for v in drifting[p])


def test_a_counter_reset_gives_no_reading_and_no_flag() -> None:
    processor = ForgeryProcessor(CONFIG)
    rng = random.Random(33)
    exports(processor, rng, T0, 600)
    restarted = send(processor, "k0", metrics_request(T0 + 605, 0.4, 100, started_s=T0 + 603), T0 + 605)
    assert restarted.codes == []
