"""SIGKILL mid-stream, of a worker of each stage, of a sink and of a gateway.

Each test runs the whole pipeline (gateway -> validate -> scrub -> dedup -> OTLP sink -> a capturing
backend, every stage its own consumer group) under a steady stream from the OpenTelemetry SDK, kills
one process with SIGKILL, and ends with the exact account of tests/chaos/harness.py.

Durations follow RAMPART_CHAOS_SCALE (default 1, the CI size); ``RAMPART_CHAOS_SCALE=3 make test`` (or
``RAMPART_CHAOS_SCALE=3 .venv/bin/pytest tests/chaos``) runs the issue's full sizes; set
RAMPART_CHAOS_REPORT=benchmarks/results/chaos.md to append every table there.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.harness import (
    SESSION_TIMEOUT_S,
    Member,
    Pipeline,
    Sampler,
    Stream,
    account,
    assert_exact,
    backend_copies,
    metric,
    report,
    scaled,
    settle,
)
from tests.support.deployment import GatewayProcess

pytestmark = pytest.mark.e2e

SPANS_PER_EXPORT = 20
SINK_CONCURRENCY, SINK_BATCH_RECORDS = 4, 16  # the defaults (config/rampart.example.yaml)
ROLES = ("validate", "scrub", "dedup", "sink")


@pytest.fixture
def pipeline(shared_pipeline: Pipeline) -> Pipeline:
    """Two gateways and two processes of every group, started once for the module; each test kills one
    process (and replaces it) and counts only its own stream."""
    if not shared_pipeline.members:
        shared_pipeline.start(gateways=[{}, {}], replicas=dict.fromkeys(ROLES, 2))
    shared_pipeline.backend.copies.clear()  # the previous test has settled: nothing more arrives for it
    return shared_pipeline


def delivered_since(stream: Stream, pipeline: Pipeline, since: float) -> int:
    """Spans of exports acknowledged after ``since`` that the backend has now."""
    copies = backend_copies(pipeline.backend)
    with stream.lock:
        return sum(1 for e in stream.exports if e.ok and e.finished > since for i in e.ids if i in copies)


def kill_and_replace(pipeline: Pipeline, stream: Stream, role: str) -> tuple[Member, list[str]]:
    """Kill a ``role`` process while the stream runs; show that the other member took its partitions and
    carries the stream alone; start a replacement and wait until it owns partitions again."""
    victim, *_ = pipeline.live(role)
    group = victim.group
    topic = pipeline.groups()[group]
    pipeline.wait_for_members(group, topic, 2)
    time.sleep(scaled(2))
    victim.process.kill()
    killed_at = time.monotonic()
    pipeline.wait_for_members(group, topic, 1, timeout_s=SESSION_TIMEOUT_S + 30)
    took_over_s = time.monotonic() - killed_at
    alone_since = time.monotonic()
    deadline = alone_since + 30
    while delivered_since(stream, pipeline, alone_since) == 0:
        assert time.monotonic() < deadline, f"nothing acknowledged after the takeover reached the backend ({role})"
        time.sleep(0.2)
    replacement = pipeline.add(role)
    pipeline.wait_for_members(group, topic, 2)
    time.sleep(scaled(2))
    note = (f"{victim.name} killed (SIGKILL) {killed_at - stream.started_at:.1f} s into the stream; the other "
            f"member owned all partitions {took_over_s:.1f} s later and carried the stream alone; "
            f"{replacement.name} started and rejoined")
    return replacement, [note]


@pytest.mark.parametrize("stage", ["validate", "scrub", "dedup"])
def test_sigkill_of_a_stage_worker(pipeline: Pipeline, stage: str) -> None:
    stream = Stream(pipeline.gateway_urls(), pipeline.token, spans_per_export=SPANS_PER_EXPORT,
                    service=f"chaos-kill-{stage}")
    with Sampler(pipeline) as sampler:
        stream.start()
        try:
            replacement, notes = kill_and_replace(pipeline, stream, stage)
        finally:
            stream.stop()
        waited = settle(stream, pipeline.backend, sampler, timeout_s=120)
    result = account(stream, pipeline.backend)
    resumed = metric(replacement.process.metrics(), "rampart_stage_items_total", direction="in")
    skipped = sum(metric(m.process.metrics(), "rampart_sink_batches_total", outcome="already_delivered")
                  for m in pipeline.live("sink"))
    notes += [f"{replacement.name} took {resumed:.0f} spans; settled {waited:.0f} s after the stream stopped; the "
              f"sinks have skipped {skipped:.0f} redelivered batches so far (same batch id as one already exported)"]
    report(f"SIGKILL of a {stage} worker", result, sampler, notes)
    assert resumed > 0, f"{replacement.name} took no part of the stream"
    assert_exact(result, max_duplicates=0)


def test_sigkill_of_a_sink(pipeline: Pipeline) -> None:
    stream = Stream(pipeline.gateway_urls(), pipeline.token, spans_per_export=SPANS_PER_EXPORT,
                    service="chaos-kill-sink")
    with Sampler(pipeline) as sampler:
        stream.start()
        try:
            replacement, notes = kill_and_replace(pipeline, stream, "sink")
        finally:
            stream.stop()
        waited = settle(stream, pipeline.backend, sampler, timeout_s=120)
    result = account(stream, pipeline.backend)
    resumed = metric(replacement.process.metrics(), "rampart_sink_exported_items_total")
    # A sink exports up to `concurrency` combined exports of `batch_max_records` records at a time; the
    # backend may have accepted all of them when the sink died, before it marked or committed any.
    bound = SINK_CONCURRENCY * SINK_BATCH_RECORDS * SPANS_PER_EXPORT
    notes += [f"{replacement.name} exported {resumed:.0f} spans; settled {waited:.0f} s after the stream stopped",
              f"duplicates allowed: sinks.concurrency {SINK_CONCURRENCY} x batch_max_records {SINK_BATCH_RECORDS} "
              f"x {SPANS_PER_EXPORT} spans per record = {bound} (what may have been in flight at the kill)"]
    report("SIGKILL of a sink", result, sampler, notes)
    assert resumed > 0, f"{replacement.name} took no part of the stream"
    assert_exact(result, max_duplicates=bound)


def test_sigkill_of_a_gateway(pipeline: Pipeline) -> None:
    victim = pipeline.member("gateway")
    assert isinstance(victim.process, GatewayProcess)
    url = victim.process.http_url
    # Clients of the killed gateway see errors; their exporter gives up within 2 s and the client sends
    # the same spans to the other gateway, as it would through a load balancer.
    stream = Stream(pipeline.gateway_urls(), pipeline.token, clients=4, exports_per_s=8,
                    spans_per_export=SPANS_PER_EXPORT, timeout_s=2.0, failover_tries=3,
                    service="chaos-kill-gateway")
    with Sampler(pipeline) as sampler:
        stream.start()
        try:
            time.sleep(scaled(2))
            deadline = time.monotonic() + 10
            while stream.in_flight_to(url) == 0:  # kill it while it has requests to answer
                assert time.monotonic() < deadline, "no request to the gateway was ever in flight"
                time.sleep(0.001)
            in_flight = stream.in_flight_to(url)
            victim.process.kill()
            killed_at = time.monotonic()
            time.sleep(scaled(5))
        finally:
            stream.stop()
        waited = settle(stream, pipeline.backend, sampler, timeout_s=120)
    result = account(stream, pipeline.backend)
    errors = sum(n for status, n in stream.statuses(url, since=killed_at - 1).items() if status.startswith("none:"))
    retried = [e for e in stream.exports if e.tries > 1]
    notes = [f"gateway killed (SIGKILL) with {in_flight} request(s) in flight; {errors} requests to it failed "
             f"without an answer afterwards; {len(retried)} exports were sent again to gateway-2, "
             f"{sum(e.ok for e in retried)} of them acknowledged there",
             f"settled {waited:.0f} s after the stream stopped"]
    report("SIGKILL of a gateway", result, sampler, notes)
    assert errors > 0, "the clients of the killed gateway saw no error"
    assert any(e.ok for e in retried), "exports that failed on the killed gateway were not retried"
    assert_exact(result, max_duplicates=0)
