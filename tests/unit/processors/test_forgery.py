"""The forgery processor, one rule and one signal at a time, on small hand-driven traffic."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import replace

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from processors.base import Batch, Result
from processors.forgery import DROP_REASON, INTEGRITY_REASONS, INTEGRITY_SCORE, ForgeryProcessor, Verdict
from processors.registry import build
from rampart.config import ForgeryConfig, RampartConfig
from schemas.envelope import Signal
from tests.unit.processors.helpers import batch, logs, metrics

NS = 1_000_000_000
T0 = 1_764_000_000   # seconds
PRINCIPALS = ("k0", "k1", "k2", "k3")
CONFIG = ForgeryConfig(learning_s=60.0)

Attrs = Callable[[int], dict[str, str]]


def request(service: str, durations_ms: list[float], *, now_s: float, errors: int = 0, lag_s: float = 1.0,
            attrs: Attrs | None = None, rng: random.Random | None = None,
            resource_attrs: dict[str, str] | None = None) -> ExportTraceServiceRequest:
    rng = rng or random.Random(0)
    out = ExportTraceServiceRequest()
    rs = out.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    for key, value in (resource_attrs or {}).items():
        rs.resource.attributes.add(key=key).value.string_value = value
    spans = rs.scope_spans.add().spans
    for i, ms in enumerate(durations_ms):
        end = int((now_s - lag_s - rng.random()) * NS)
        span = spans.add(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), parent_span_id=rng.randbytes(8),
                         name="GET /cart", kind=2, start_time_unix_nano=end - int(ms * 1e6), end_time_unix_nano=end)
        if i < errors:
            span.status.code = Status.STATUS_CODE_ERROR
        span.attributes.add(key="http.route").value.string_value = "/cart"
        for key, value in (attrs(i) if attrs else {}).items():
            span.attributes.add(key=key).value.string_value = value
    return out


def send(processor: ForgeryProcessor, principal: str, req: ExportTraceServiceRequest, now_s: float,
         batch_id: str | None = None, tenant: str = "acme") -> tuple[Verdict, Result]:
    b = Batch(signal=Signal.TRACES, request=req, batch_id=batch_id or f"{principal}-{now_s}-{id(req)}",
              tenant=tenant, principal=principal, received_at_ns=int(now_s * NS))
    verdict = processor.screen(b)
    return verdict, processor.act(b, verdict)


def latencies(rng: random.Random, n: int, median_ms: float) -> list[float]:
    return [rng.lognormvariate(math.log(median_ms), 0.4) for _ in range(n)]


def steady(processor: ForgeryProcessor, rng: random.Random, start: float, seconds: float, *,
           factor: Callable[[str, float], float] = lambda p, t: 1.0, error_ratio: float = 0.005,
           spans: int = 30) -> list[Verdict]:
    """Every principal sends one cart batch every 5 s (at its own phase); returns their verdicts."""
    verdicts = []
    t = start
    while t < start + seconds:
        for i, principal in enumerate(PRINCIPALS):
            now = t + i
            n = spans + rng.randrange(-5, 6)
            errors = sum(rng.random() < error_ratio for _ in range(n))
            req = request("cart", latencies(rng, n, 20 * factor(principal, now)), now_s=now, errors=errors, rng=rng)
            verdicts.append(send(processor, principal, req, now)[0])
        t += 5
    return verdicts


# ------------------------------------------------------------------ plumbing

def test_logs_pass_unscreened_and_metrics_are_screened() -> None:
    processor = ForgeryProcessor(CONFIG)
    result = processor.process(batch(Signal.LOGS, logs(2)))
    assert result.drops == [] and result.counts == {"unscreened_batches": 1}
    result = processor.process(batch(Signal.METRICS, metrics()))
    assert result.drops == [] and result.quarantine is None
    assert result.counts["screened_batches"] == 1 and result.counts["learning_batches"] == 1


def test_built_from_the_registry_by_name() -> None:
    (processor,) = build(["forgery"], RampartConfig(), {})
    assert isinstance(processor, ForgeryProcessor)


# ------------------------------------------------------------------ hard rules

def test_new_service_after_learning_is_quarantined_and_never_learned() -> None:
    processor = ForgeryProcessor(CONFIG)
    rng = random.Random(1)
    send(processor, "k1", request("cart", latencies(rng, 10, 20), now_s=T0), T0)
    send(processor, "k1", request("search", latencies(rng, 10, 20), now_s=T0 + 10), T0 + 10)   # learning
    for t in (T0 + 100, T0 + 105):
        verdict, result = send(processor, "k1", request("payments", latencies(rng, 10, 20), now_s=t), t)
        assert verdict.score == 1.0 and verdict.codes == ["new_service"]
        assert result.quarantine is not None and result.quarantine.reason == DROP_REASON and result.drops == []
        assert result.quarantine.fields["reasons"] == "new_service" and result.counts["flag_new_service"] == 1
    verdict, _ = send(processor, "k1", request("search", latencies(rng, 10, 20), now_s=T0 + 110), T0 + 110)
    assert verdict.score < 0.3   # learned while learning


def test_allow_listed_new_service_passes() -> None:
    processor = ForgeryProcessor(replace(CONFIG, allowed_new_services={"acme/k1": ("recommendations",)}))
    rng = random.Random(2)
    send(processor, "k1", request("cart", latencies(rng, 10, 20), now_s=T0), T0)
    verdict, result = send(processor, "k1", request("recommendations", latencies(rng, 10, 20), now_s=T0 + 100),
                           T0 + 100)
    assert verdict.codes == [] and result.drops == []
    other, _ = send(processor, "k2", request("recommendations", latencies(rng, 10, 20), now_s=T0 + 101), T0 + 101)
    assert other.codes == ["new_service"]   # the allow-list is per key


def test_spans_outside_the_time_window_are_flagged() -> None:
    processor = ForgeryProcessor(CONFIG)
    verdict, _ = send(processor, "k1", request("cart", [20.0] * 5, now_s=T0, lag_s=7200), T0)
    assert verdict.codes == ["timestamp_window"]
    verdict, _ = send(processor, "k1", request("cart", [20.0] * 5, now_s=T0, lag_s=-600), T0)
    assert verdict.codes == ["timestamp_window"]


def test_a_lag_far_from_the_principals_usual_is_skew_but_a_modest_clock_skew_is_not() -> None:
    processor = ForgeryProcessor(CONFIG)
    rng = random.Random(3)
    for i in range(30):
        send(processor, "k1", request("cart", latencies(rng, 10, 20), now_s=T0 + 5 * i, lag_s=2.0, rng=rng), T0 + 5 * i)
    now = T0 + 200
    modest, _ = send(processor, "k1", request("cart", latencies(rng, 10, 20), now_s=now, lag_s=-8.0, rng=rng), now)
    assert "timestamp_skew" not in modest.codes
    backdated, _ = send(processor, "k1", request("cart", latencies(rng, 10, 20), now_s=now + 5, lag_s=300, rng=rng),
                        now + 5)
    assert backdated.codes == ["timestamp_skew"]


def test_a_restamped_replay_is_flagged_and_a_redelivery_is_not() -> None:
    processor = ForgeryProcessor(CONFIG)
    rng = random.Random(4)
    original = request("cart", latencies(rng, 40, 20), now_s=T0 + 100, attrs=lambda i: {"user.id": f"u{i}"}, rng=rng)
    send(processor, "k1", original, T0 + 100, batch_id="b-1")
    again, _ = send(processor, "k1", ExportTraceServiceRequest.FromString(original.SerializeToString()), T0 + 101,
                    batch_id="b-1")
    assert "replay" not in again.codes   # the worker crashed before its ack: the same batch, not a replay
    restamped = ExportTraceServiceRequest.FromString(original.SerializeToString())
    for span in restamped.resource_spans[0].scope_spans[0].spans:
        span.trace_id, span.span_id = rng.randbytes(16), rng.randbytes(8)
        span.start_time_unix_nano += 300 * NS
        span.end_time_unix_nano += 300 * NS
    verdict, result = send(processor, "k2", restamped, T0 + 400, batch_id="b-2")
    assert "replay" in verdict.codes and result.quarantine is not None


def repetitive(i: int) -> dict[str, str]:
    return {"tier": ("gold", "silver", "bronze")[i % 3]}


def test_a_batch_of_never_seen_values_for_a_repetitive_key_is_flagged() -> None:
    processor = ForgeryProcessor(replace(CONFIG, cardinality_window_s=30.0))
    rng = random.Random(5)
    for i in range(30):
        send(processor, "k1", request("cart", latencies(rng, 20, 20), now_s=T0 + 5 * i, attrs=repetitive), T0 + 5 * i)
    now = T0 + 160
    normal, _ = send(processor, "k1", request("cart", latencies(rng, 20, 20), now_s=now, attrs=repetitive), now)
    assert normal.codes == []
    exploded, _ = send(processor, "k1", request("cart", latencies(rng, 40, 20), now_s=now + 5,
                                                attrs=lambda i: {"tier": rng.randbytes(6).hex()}), now + 5)
    assert exploded.codes == ["cardinality_novelty"]


def test_a_key_that_never_repeats_is_flagged_once_it_outgrows_its_cap() -> None:
    processor = ForgeryProcessor(replace(CONFIG, cardinality_window_s=30.0, cardinality_floor=10,
                                         cardinality_growth=10.0))
    rng = random.Random(6)

    def unique(i: int) -> dict[str, str]:
        return {"request.id": rng.randbytes(8).hex()}

    for i in range(30):   # ~10 new ids every 5 s: ~60 per window
        send(processor, "k1", request("cart", latencies(rng, 10, 20), now_s=T0 + 5 * i, attrs=unique), T0 + 5 * i)
    flagged = []
    for i in range(5):    # 300 new ids per batch: past 10 x 60 within a few batches
        now = T0 + 150 + i
        verdict, _ = send(processor, "k1", request("cart", latencies(rng, 300, 20), now_s=now, attrs=unique), now)
        flagged.append("cardinality_cap" in verdict.codes)
    assert flagged[0] is False and flagged[-1] is True


# ------------------------------------------------------------------ statistics against peers

def test_masking_flood_during_a_slowdown_is_flagged_and_the_real_traffic_passes() -> None:
    processor = ForgeryProcessor(CONFIG)
    rng = random.Random(7)
    steady(processor, rng, T0, 240)
    slow = steady(processor, rng, T0 + 240, 60, factor=lambda p, t: 3.0)   # a real incident, everyone sees it
    assert max(v.score for v in slow) < 0.8
    caught, legit = [], []
    for k in range(24):   # k0's key also sends fake fast spans: 30 % of the volume
        t = T0 + 300 + 5 * k
        legit += steady(processor, rng, t, 5, factor=lambda p, t: 3.0)
        fake = request("cart", latencies(rng, 40, 20), now_s=t + 2.5, rng=rng)
        caught.append(send(processor, "k0", fake, t + 2.5)[0])
    # The share of the volume takes a few batches to rise clearly above its usual (volume_half_life_s):
    # the first fake batches are annotated, not quarantined; from then on every one is caught.
    assert all(v.score >= 0.8 for v in caught[12:])
    assert all(v.codes == ["latency_masking"] for v in caught if v.score >= 0.3)
    assert sum(v.score >= 0.8 for v in legit) <= 1


def test_everyone_recovering_at_once_is_not_masking() -> None:
    processor = ForgeryProcessor(CONFIG)
    rng = random.Random(8)
    steady(processor, rng, T0, 240)
    steady(processor, rng, T0 + 240, 120, factor=lambda p, t: 3.0)
    recovered = steady(processor, rng, T0 + 360, 120)
    assert max(v.score for v in recovered) < 0.8


def test_one_cluster_deploying_a_speedup_is_not_masking() -> None:
    processor = ForgeryProcessor(CONFIG)
    rng = random.Random(9)
    steady(processor, rng, T0, 240)
    rollout = steady(processor, rng, T0 + 240, 180,
                     factor=lambda p, t: 0.6 if p == "k2" or (p == "k3" and t > T0 + 330) else 1.0)
    assert max(v.score for v in rollout) < 0.8


def test_fake_healthy_spans_during_an_error_burst_are_flagged() -> None:
    processor = ForgeryProcessor(CONFIG)
    rng = random.Random(10)
    steady(processor, rng, T0, 240)
    steady(processor, rng, T0 + 240, 30, error_ratio=0.2)
    caught, legit = [], []
    for k in range(24):
        t = T0 + 270 + 5 * k
        legit += steady(processor, rng, t, 5, error_ratio=0.2)
        fake = request("cart", latencies(rng, 40, 20), now_s=t + 2.5, rng=rng)   # no errors
        caught.append(send(processor, "k0", fake, t + 2.5)[0])
    assert sum(v.score >= 0.8 for v in caught) >= 16
    assert {c for v in caught if v.score >= 0.8 for c in v.codes} == {"error_masking"}
    assert sum(v.score >= 0.8 for v in legit) <= 2


# ------------------------------------------------------------------ actions and bounds

def test_annotation_without_quarantine_and_client_claims_are_stripped() -> None:
    processor = ForgeryProcessor(replace(CONFIG, quarantine=False))
    rng = random.Random(11)
    send(processor, "k1", request("cart", latencies(rng, 5, 20), now_s=T0), T0)
    claimed = request("cart", latencies(rng, 5, 20), now_s=T0 + 5, resource_attrs={INTEGRITY_SCORE: "0"})
    _, result = send(processor, "k1", claimed, T0 + 5)
    keys = [kv.key for kv in claimed.resource_spans[0].resource.attributes]
    assert INTEGRITY_SCORE not in keys and result.counts["integrity_claims_removed"] == 1
    forged = request("payments", latencies(rng, 5, 20), now_s=T0 + 100)
    _, result = send(processor, "k1", forged, T0 + 100)
    attributes = {kv.key: kv.value for kv in forged.resource_spans[0].resource.attributes}
    assert result.drops == [] and result.changed == 5
    assert attributes[INTEGRITY_SCORE].double_value == 1.0
    assert attributes[INTEGRITY_REASONS].string_value.startswith("new_service:")


def test_state_stays_within_its_bounds() -> None:
    processor = ForgeryProcessor(replace(CONFIG, max_groups=10, max_span_names_per_service=5))
    rng = random.Random(12)
    for i in range(40):
        req = request(f"svc-{i % 20}", latencies(rng, 5, 20), now_s=T0 + i)
        for j, span in enumerate(req.resource_spans[0].scope_spans[0].spans):
            span.name = f"op-{i}-{j}"
        send(processor, "k1", req, T0 + i)
    memory = processor.memory_entries()
    assert memory["groups"] <= 10 and memory["evictions"] > 0
