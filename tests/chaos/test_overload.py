"""Sustained overload at three times the measured capacity: the gateway sheds the excess with 429/503
(never a 500, never a crash), its memory stays bounded, and afterwards everything it acknowledged
arrives.

Capacity here is what the gateway acknowledges to clients pushing as hard as they can, with the
tenant's rate limit set low (20 requests/s of 50 spans) and ``max_in_flight`` at 8. Without a limit the
gateway takes hundreds of thousands of spans/s (README, Performance), far more than the OpenTelemetry
SDK in the test process can make on the two cores it shares with the gateway, Kafka and the workers:
the test would measure its own client. With the limit, the test can offer three times what is accepted,
and the pipeline can drain what was accepted within the test's time.

Durations follow RAMPART_CHAOS_SCALE: 20 s of overload at the default 1 (CI), 60 s with
``RAMPART_CHAOS_SCALE=3 make test`` (or ``RAMPART_CHAOS_SCALE=3 .venv/bin/pytest tests/chaos``).
RAMPART_CHAOS_REPORT=benchmarks/results/chaos.md appends every table there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.chaos.harness import (
    MB,
    Pipeline,
    Sampler,
    Stream,
    account,
    assert_exact,
    label_values,
    report,
    scaled,
    settle,
)

pytestmark = pytest.mark.e2e

SPANS_PER_EXPORT = 50
LIMITS = {"RAMPART__GATEWAY__RATE_LIMIT__REQUESTS_PER_S": "20", "RAMPART__GATEWAY__RATE_LIMIT__BURST_REQUESTS": "20",
          "RAMPART__GATEWAY__MAX_IN_FLIGHT": "8"}
OVERLOAD_CLIENTS = 12
RSS_GROWTH_LIMIT = 64 * MB
RSS_LIMIT = 300 * MB
SHED = {"429", "503"}


def test_sustained_overload_is_shed(make_pipeline: Callable[..., Pipeline]) -> None:
    pipeline = make_pipeline("overload", ("validate,scrub,dedup",)).start(gateways=[LIMITS])
    gateway = pipeline.member("gateway").process
    assert gateway.proc is not None
    urls = pipeline.gateway_urls()
    # A 1 s timeout: the exporter does not wait out a Retry-After (at least 1 s), so every export is one
    # request, answered or shed.
    probe = Stream(urls, pipeline.token, clients=4, exports_per_s=1000, spans_per_export=SPANS_PER_EXPORT,
                   timeout_s=1.0, service="chaos-capacity")
    with Sampler(pipeline) as sampler:
        probe.start()
        try:
            time.sleep(1)  # the bucket's burst is spent by now
            since = time.monotonic()
            time.sleep(3)
            capacity = probe.acknowledged_between(since, time.monotonic()) / (time.monotonic() - since)
        finally:
            probe.stop()
        offered_per_s = 3 * capacity / SPANS_PER_EXPORT  # exports/s
        overload = Stream(urls, pipeline.token, clients=OVERLOAD_CLIENTS,
                          exports_per_s=offered_per_s / OVERLOAD_CLIENTS, spans_per_export=SPANS_PER_EXPORT,
                          timeout_s=1.0, service="chaos-overload")
        rss_before = sampler.rss_between("gateway", 0, time.monotonic())
        overload.run_for(scaled(20))
        alive = gateway.proc.poll() is None
        waited = settle([probe, overload], pipeline.backend, sampler, timeout_s=120)
    result = account([probe, overload], pipeline.backend)
    seconds = overload.stopped_at - overload.started_at
    answers = overload.statuses()
    requests = sum(answers.values())
    accepted = overload.acknowledged_between(overload.started_at, overload.stopped_at + 1)
    rss_during = sampler.rss_between("gateway", overload.started_at, overload.stopped_at)
    growth = max(rss_during) - min(rss_before)
    codes = label_values(gateway.metrics(), "rampart_gateway_requests_total", "code")
    notes = [f"capacity measured: {capacity:.0f} spans/s acknowledged (4 clients as fast as they can); offered "
             f"{requests * SPANS_PER_EXPORT / seconds:.0f} spans/s ({requests / seconds:.0f} requests/s) for "
             f"{seconds:.0f} s, acknowledged {accepted / seconds:.0f} spans/s",
             f"answers during the overload: {dict(answers)}; codes the gateway counted: {sorted(codes)}",
             f"gateway RSS {min(rss_before) / MB:.0f} MB before, at most {max(rss_during) / MB:.0f} MB during "
             f"(growth {growth / MB:.0f} MB, limit {RSS_GROWTH_LIMIT / MB:.0f} MB); everything acknowledged "
             f"arrived {waited:.0f} s after the overload"]
    report("Sustained overload at 3x capacity", result, sampler, notes)
    assert alive, f"the gateway exited during the overload:\n{gateway.log()[-3000:]}"
    assert requests >= 2.4 * capacity / SPANS_PER_EXPORT * seconds, "the test did not manage to offer 3x capacity"
    assert set(answers) <= {"200", *SHED}, f"answers other than 200/429/503: {dict(answers)}"
    assert sum(answers[c] for c in SHED) > 0, "nothing was shed"
    assert codes <= {"200", *SHED}, f"the gateway answered {sorted(codes)}"
    assert growth <= RSS_GROWTH_LIMIT and max(rss_during) <= RSS_LIMIT
    assert_exact(result, max_duplicates=0)

