"""The backend down, then slow, under a steady stream: the sink backs off, Kafka holds the backlog (the
sink's consumer lag grows, then drains), the sink's memory stays bounded, and nothing is lost.

The sink exports through a TCP proxy to a capturing OTLP backend; cutting the proxy makes the backend
unreachable (connections refused, those open broken). Durations follow RAMPART_CHAOS_SCALE: the
backend is down 20 s and slow for a 12 s stream at the default 1 (CI), down 60 s and slow for 36 s
with ``RAMPART_CHAOS_SCALE=3 make test`` (or ``RAMPART_CHAOS_SCALE=3 .venv/bin/pytest tests/chaos``).
RAMPART_CHAOS_REPORT=benchmarks/results/chaos.md appends every table there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.chaos.harness import (
    MB,
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
from tests.support.proxy import CuttableProxy

pytestmark = pytest.mark.e2e

WORKERS = ("validate,scrub,dedup",)  # the sink is what these tests are about: one fused stage group
SINK_CONCURRENCY, SINK_BATCH_RECORDS = 4, 16  # the defaults (config/rampart.example.yaml)
SPANS_PER_RECORD = 20  # Stream's spans_per_export
RSS_GROWTH_LIMIT = 64 * MB  # how much more the sink may hold while the backend is away or slow
RSS_LIMIT = 300 * MB


@pytest.fixture(scope="module")
def proxied(shared_pipeline: Pipeline) -> Iterator[tuple[Pipeline, CuttableProxy]]:
    proxy = CuttableProxy(shared_pipeline.backend.port)
    shared_pipeline.start(gateways=[{}], sink_env={"RAMPART__SINKS__OTLP__ENDPOINT": f"http://127.0.0.1:{proxy.port}"})
    yield shared_pipeline, proxy
    proxy.close()


@pytest.fixture
def pipeline(proxied: tuple[Pipeline, CuttableProxy]) -> Pipeline:
    proxied[0].backend.copies.clear()  # the previous test has settled: nothing more arrives for it
    return proxied[0]


def sink_figures(pipeline: Pipeline) -> tuple[float, float]:
    """(retries, already-delivered skips) of the sink so far."""
    text = pipeline.live("sink")[0].process.metrics()
    return (metric(text, "rampart_sink_retries_total"),
            metric(text, "rampart_sink_batches_total", outcome="already_delivered"))


def exported_records(pipeline: Pipeline) -> float:
    return metric(pipeline.live("sink")[0].process.metrics(), "rampart_sink_batches_total", outcome="exported")


def test_backend_down(pipeline: Pipeline, proxied: tuple[Pipeline, CuttableProxy]) -> None:
    proxy = proxied[1]
    down_s = scaled(20)
    stream = Stream(pipeline.gateway_urls(), pipeline.token, service="chaos-backend-down")
    with Sampler(pipeline) as sampler:
        stream.start()
        try:
            time.sleep(scaled(3))
            retries_before, _ = sink_figures(pipeline)
            proxy.cut()
            cut_at = time.monotonic()
            time.sleep(2)  # exports that were under way when it went down have failed by now
            arrived_early = sum(backend_copies(pipeline.backend).values())
            time.sleep(down_s - 2)
            arrived_late = sum(backend_copies(pipeline.backend).values())
            retries, _ = sink_figures(pipeline)
            retries -= retries_before
            proxy.restore()
            restored_at = time.monotonic()
            time.sleep(scaled(3))
        finally:
            stream.stop()
        waited = settle(stream, pipeline.backend, sampler, timeout_s=120)
    result = account(stream, pipeline.backend)
    lag = [v for t, v in sampler.lag[next(g for g in sampler.lag if ".sink." in g)] if cut_at <= t <= restored_at]
    rss_before = sampler.rss_between("sink", cut_at - 3, cut_at)
    rss_during = sampler.rss_between("sink", cut_at, restored_at + waited)
    growth = max(rss_during) - min(rss_before)
    # A failing slot waits at least half of max_backoff (2 s) once there, and the breaker opens after
    # 5 failures in a row: a sink that backs off makes about one call per slot per second at most.
    retry_bound = SINK_CONCURRENCY * (down_s + 10)
    _, skipped = sink_figures(pipeline)
    notes = [f"backend unreachable for {down_s:.0f} s: {retries:.0f} retries (bound {retry_bound:.0f}); "
             f"the sink's lag went from {lag[0] if lag else 0} to {max(lag, default=0)} records and drained "
             f"{waited:.0f} s after the stream stopped",
             f"sink RSS {min(rss_before) / MB:.0f} MB before, at most {max(rss_during) / MB:.0f} MB during and "
             f"after (growth {growth / MB:.0f} MB, limit {RSS_GROWTH_LIMIT / MB:.0f} MB)",
             f"the sink skipped {skipped:.0f} batches redelivered after it had exported them (same batch id)"]
    report("Backend down", result, sampler, notes)
    assert arrived_late == arrived_early, "spans arrived while the backend was unreachable"
    assert 0 < retries <= retry_bound, f"{retries} retries in {down_s} s: the sink should back off, not spin"
    assert lag and max(lag) > lag[0], f"the sink's lag did not grow while the backend was down: {lag}"
    assert growth <= RSS_GROWTH_LIMIT and max(rss_during) <= RSS_LIMIT
    # Exports under way at the cut may have reached the backend while their answers were lost: the sink
    # cannot know, and exports them again (at least once). At most what was in flight: concurrency x
    # records per export x spans per record.
    assert_exact(result, max_duplicates=SINK_CONCURRENCY * SINK_BATCH_RECORDS * SPANS_PER_RECORD)


def test_backend_slow(pipeline: Pipeline) -> None:
    """Every answer takes a second: the sink's four export slots carry fewer records per second than the
    stream brings (each export of 20 spans of 20 traces becomes about one record per partition, some 60
    records/s), so the backlog grows while the stream runs, and drains after it with the backend still
    slow. Nothing fails, so nothing is retried."""
    delay_s, slow_s = 1.0, scaled(12)
    stream = Stream(pipeline.gateway_urls(), pipeline.token, service="chaos-backend-slow")
    pipeline.backend.delay_s = delay_s
    try:
        with Sampler(pipeline) as sampler:
            stream.start()
            try:
                time.sleep(scaled(2))
                retries_before, _ = sink_figures(pipeline)
                exported_before = exported_records(pipeline)
                requests_before = pipeline.backend.requests
                slow_from = time.monotonic()
                time.sleep(slow_s)
            finally:
                stream.stop()
            waited = settle(stream, pipeline.backend, sampler, timeout_s=180)
            retries, skipped = sink_figures(pipeline)
            records = exported_records(pipeline) - exported_before
            requests = pipeline.backend.requests - requests_before
    finally:
        pipeline.backend.delay_s = 0
    result = account(stream, pipeline.backend)
    lag = [v for t, v in sampler.lag[next(g for g in sampler.lag if ".sink." in g)] if t >= slow_from]
    rss_before = sampler.rss_between("sink", 0, slow_from)
    rss_during = sampler.rss_between("sink", slow_from, float("inf"))
    growth = max(rss_during) - min(rss_before)
    notes = [f"every answer delayed {delay_s} s for the whole run; {retries - retries_before:.0f} retries; the "
             f"sink's lag rose to {max(lag, default=0)} records and drained {waited:.0f} s after the stream stopped; "
             f"{records:.0f} records went in {requests} exports ({records / max(1, requests):.1f} records each, "
             f"up to {SINK_BATCH_RECORDS} allowed)",
             f"sink RSS {min(rss_before) / MB:.0f} MB before, at most {max(rss_during) / MB:.0f} MB after "
             f"(growth {growth / MB:.0f} MB, limit {RSS_GROWTH_LIMIT / MB:.0f} MB)",
             f"the sink skipped {skipped:.0f} batches redelivered after it had exported them (same batch id)"]
    report("Backend slow", result, sampler, notes)
    assert max(lag, default=0) >= 50, f"the backlog did not build up behind the slow backend: {lag}"
    assert retries == retries_before, "a slow answer is not a failure: nothing should have been retried"
    assert growth <= RSS_GROWTH_LIMIT and max(rss_during) <= RSS_LIMIT
    assert_exact(result, max_duplicates=0)
