"""Lineage (orphan spans, caller/callee counts), small-batch replays and the change detector."""

from __future__ import annotations

import math
import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processors.forgery import ForgeryProcessor, Verdict
from processors.forgery.changes import ChangeDetector
from processors.forgery.lineage import LineageTracker
from rampart.config import ForgeryConfig
from tests.unit.processors.test_forgery import CONFIG, NS, PRINCIPALS, T0, request, send

SERVER, CLIENT = 2, 3


def linked(rng: random.Random, now: float, n: int, median_ms: float,
           parents_known: bool = True) -> tuple[ExportTraceServiceRequest, ExportTraceServiceRequest]:
    """A frontend batch of CLIENT spans calling cart, and the cart batch of their SERVER spans (whose
    parents are those client spans, or ids nobody reports when ``parents_known`` is false)."""
    caller, callee = ExportTraceServiceRequest(), ExportTraceServiceRequest()
    for req, service in ((caller, "frontend"), (callee, "cart")):
        req.resource_spans.add().resource.attributes.add(key="service.name").value.string_value = service
    calls = caller.resource_spans[0].scope_spans.add().spans
    served = callee.resource_spans[0].scope_spans.add().spans
    for _ in range(n):
        ms = rng.lognormvariate(math.log(median_ms), 0.4)
        end = int((now - 1 - rng.random()) * NS)
        trace_id, client_id = rng.randbytes(16), rng.randbytes(8)
        client = calls.add(trace_id=trace_id, span_id=client_id, parent_span_id=rng.randbytes(8), name="GET /cart",
                           kind=CLIENT, start_time_unix_nano=end - int(ms * 1.1e6), end_time_unix_nano=end)
        client.attributes.add(key="peer.service").value.string_value = "cart"
        served.add(trace_id=trace_id, span_id=rng.randbytes(8),
                   parent_span_id=client_id if parents_known else rng.randbytes(8), name="GET /cart", kind=SERVER,
                   start_time_unix_nano=end - int(ms * 1e6), end_time_unix_nano=end - 100_000)
    return caller, callee


def run_linked(processor: ForgeryProcessor, rng: random.Random, start: float, seconds: float, *,
               parents_known: bool = True, fake_every: int = 0) -> tuple[list[Verdict], list[Verdict]]:
    """Every principal sends its frontend and cart batches every 5 s; with ``fake_every``, k0 also
    sends a batch of fast cart spans nobody called every that many rounds. Returns (genuine cart
    verdicts, fake verdicts)."""
    genuine, fakes = [], []
    t, round_ = start, 0
    while t < start + seconds:
        for i, principal in enumerate(PRINCIPALS):
            caller, callee = linked(rng, t + i, 20, 20, parents_known)
            send(processor, principal, caller, t + i)
            genuine.append(send(processor, principal, callee, t + i + 0.5)[0])
        if fake_every and round_ % fake_every == 0:
            fake = request("cart", [rng.lognormvariate(math.log(8), 0.3) for _ in range(4)], now_s=t + 2.5, rng=rng)
            for span in fake.resource_spans[0].scope_spans[0].spans:
                span.kind = SERVER
            fakes.append(send(processor, "k0", fake, t + 2.5)[0])
        t += 5
        round_ += 1
    return genuine, fakes


def test_fake_spans_nobody_called_are_flagged_once_the_key_shows_an_excess_of_orphans() -> None:
    processor = ForgeryProcessor(CONFIG)
    rng = random.Random(21)
    run_linked(processor, rng, T0, 240)
    genuine, fakes = run_linked(processor, rng, T0 + 240, 180, fake_every=1)
    # The first fake batches wait orphan_wait_s to be known as orphans; then every one is caught.
    assert all(v.score >= 0.8 and "orphan_spans" in v.codes for v in fakes[6:])
    assert sum(v.score >= 0.8 for v in genuine) <= 1


def test_a_service_whose_callers_are_not_instrumented_is_not_flagged_for_its_orphans() -> None:
    processor = ForgeryProcessor(CONFIG)
    rng = random.Random(22)
    run_linked(processor, rng, T0, 240, parents_known=False)
    genuine, _ = run_linked(processor, rng, T0 + 240, 180, parents_known=False)
    assert not any("orphan_spans" in v.codes for v in genuine)


def test_server_spans_beyond_the_callers_client_spans_raise_the_calls_ratio() -> None:
    lineage = LineageTracker(wait_s=10.0, half_life_s=20.0, sample_every=1, max_ids=1000, max_sources=10)
    source = lineage.source("acme", "k0", "cart", 0.0)
    assert lineage.count_calls(source, 5, 5, 0.0) is None   # too few to say
    assert lineage.count_calls(source, 10, 10, 0.0) == 1.0
    ratio = lineage.count_calls(source, 6, 0, 0.0)
    assert ratio is not None and math.isclose(ratio, 21 / 15)


def test_a_small_restamped_replay_is_caught_by_its_durations() -> None:
    processor = ForgeryProcessor(ForgeryConfig(learning_s=60.0, replay_sample_every=1024))   # almost no digests
    rng = random.Random(23)
    original = request("cart", [12.3456789, 20.123456], now_s=T0 + 100, rng=rng)
    send(processor, "k1", original, T0 + 100, batch_id="b-1")
    other = request("cart", [12.3455, 20.123456], now_s=T0 + 105, rng=rng)   # one duration 1.9 µs apart
    assert "replay" not in send(processor, "k1", other, T0 + 105, batch_id="b-2")[0].codes
    replayed = ExportTraceServiceRequest.FromString(original.SerializeToString())
    for span in replayed.resource_spans[0].scope_spans[0].spans:
        span.span_id = rng.randbytes(8)
        span.start_time_unix_nano += 200 * NS
        span.end_time_unix_nano += 200 * NS
    assert "replay" in send(processor, "k2", replayed, T0 + 300, batch_id="b-3")[0].codes


def test_the_change_detector_finds_a_level_shift_and_not_noise() -> None:
    rng = random.Random(24)
    detector = ChangeDetector()
    series = [rng.gauss(10, 1) for _ in range(200)] + [rng.gauss(16, 1) for _ in range(50)]
    alarms = [i for i, x in enumerate(series) if detector.update(x)]
    assert alarms and 200 <= alarms[0] <= 215
    assert all(i >= 200 for i in alarms)
