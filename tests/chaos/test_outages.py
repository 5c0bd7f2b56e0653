"""The shared Kafka broker, then Redis, stopped under a steady stream and started again.

These tests stop the machine's shared services with ``scripts/services down`` (and always start them
again, waiting until they answer): before stopping one they wait until no one else's test or
benchmark run is using it (tests/chaos/harness.py ``wait_until_alone``).

Durations follow RAMPART_CHAOS_SCALE: outages of 10 s at the default 1 (CI), 30 s with
``RAMPART_CHAOS_SCALE=3 make test`` (or ``RAMPART_CHAOS_SCALE=3 .venv/bin/pytest tests/chaos``), the
issue's size. RAMPART_CHAOS_REPORT=benchmarks/results/chaos.md appends every table there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from schemas.envelope import Signal
from tests.chaos.harness import (
    Pipeline,
    Sampler,
    Stream,
    account,
    assert_exact,
    backend_copies,
    metric,
    readyz,
    report,
    scaled,
    service_stopped,
    settle,
    wait_until_alone,
)

pytestmark = pytest.mark.e2e

FUSED = ("validate,scrub,dedup",)


def wait_for_acknowledgement_after(stream: Stream, since: float, timeout_s: float) -> float:
    """Seconds until an export that started after ``since`` is acknowledged (fails after ``timeout_s``)."""
    deadline = since + timeout_s
    while True:
        with stream.lock:
            if any(e.ok and e.started >= since for e in stream.exports):
                return time.monotonic() - since
        assert time.monotonic() < deadline, f"nothing was acknowledged within {timeout_s:.0f}s of the restart"
        time.sleep(0.2)


def redelivery_note(pipeline: Pipeline) -> str:
    skipped = sum(metric(m.process.metrics(), "rampart_sink_batches_total", outcome="already_delivered")
                  for m in pipeline.live("sink"))
    return f"the sink skipped {skipped:.0f} batches redelivered after it had exported them (same batch id)"


def test_kafka_broker_stopped_and_restarted(make_pipeline: Callable[..., Pipeline]) -> None:
    # A short acknowledgement timeout, so that a request taken just as the broker stops is answered
    # 503 well within the client's own timeout.
    pipeline = make_pipeline("kafka").start(gateways=[{"RAMPART__GATEWAY__KAFKA_ACK_TIMEOUT_MS": "1500"}])
    gateway = pipeline.member("gateway").process
    stream = Stream(pipeline.gateway_urls(), pipeline.token, timeout_s=4.0, service="chaos-kafka")
    outage_s = scaled(10)
    wait_until_alone("kafka")
    with Sampler(pipeline) as sampler:
        stream.start()
        try:
            time.sleep(scaled(3))
            with service_stopped("kafka") as times:
                time.sleep(outage_s / 2)
                ready_during = readyz(gateway)
                time.sleep(outage_s / 2)
            recovered_s = wait_for_acknowledgement_after(stream, times["up"], timeout_s=90)
            time.sleep(scaled(3))
        finally:
            stream.stop()
        waited = settle(stream, pipeline.backend, sampler, timeout_s=180)
    result = account(stream, pipeline.backend)
    during = stream.statuses(since=times["down"] + 0.5, until=times["up_started"])
    notes = [f"broker down {times['up_started'] - times['down']:.0f} s (plus {times['up'] - times['up_started']:.0f} s "
             f"to answer again); answers to requests sent meanwhile: {dict(during)}; /readyz {ready_during}",
             f"first acknowledgement {recovered_s:.1f} s after the broker answered again; settled {waited:.0f} s "
             "after the stream stopped", redelivery_note(pipeline)]
    report("Kafka broker stopped and restarted", result, sampler, notes)
    # Only 503: never a 200. (An exporter retrying a 503 after its Retry-After may run out of its own
    # deadline before the gateway's 1.5 s acknowledgement timeout: a client-side timeout, no answer.)
    assert during["503"] > 0 and set(during) <= {"503", "none:ReadTimeout"}, f"answers meanwhile: {dict(during)}"
    assert ready_during == 503
    assert_exact(result, max_duplicates=0)


def audit_events(pipeline: Pipeline) -> set[str]:
    return {json.loads(v)["event"] for v in pipeline.deployment.read_audit()}


def unchecked_envelopes(pipeline: Pipeline) -> int:
    return sum(1 for e in pipeline.deployment.read_envelopes_any(Signal.TRACES)
               if e.attributes.get("rampart.ratelimit") == "unchecked")


def test_redis_stopped_each_policy_as_documented(make_pipeline: Callable[..., Pipeline]) -> None:
    """Two deployments through one Redis outage: one fails open (gateway.redis_failure_policy open,
    dedup.redis_failure_policy pass: the defaults), one fails closed (closed, pause). The closed one
    has a second gateway that fails open, so data keeps reaching its dedup stage, which must pause."""
    opened = make_pipeline("redis-open", FUSED).start(gateways=[{"RAMPART__GATEWAY__REDIS_FAILURE_POLICY": "open"}],
                                                      worker_env={"RAMPART__DEDUP__REDIS_FAILURE_POLICY": "pass"})
    closed = make_pipeline("redis-closed", FUSED).start(
        gateways=[{"RAMPART__GATEWAY__REDIS_FAILURE_POLICY": "closed"},
                  {"RAMPART__GATEWAY__REDIS_FAILURE_POLICY": "open"}],
        worker_env={"RAMPART__DEDUP__REDIS_FAILURE_POLICY": "pause"})
    closed_url, feeder_url = closed.gateway_urls()
    streams = {"open": Stream(opened.gateway_urls(), opened.token, clients=2, service="chaos-redis-open"),
               "closed": Stream([closed_url], closed.token, clients=2, service="chaos-redis-closed"),
               "feeder": Stream([feeder_url], closed.token, clients=2, service="chaos-redis-feeder")}
    redis_url = opened.deployment.redis_url
    wait_until_alone("redis")
    with Sampler(opened) as open_sampler, Sampler(closed) as closed_sampler:
        for stream in streams.values():
            stream.start()
        try:
            time.sleep(scaled(3))
            with service_stopped("redis", redis_url) as times:
                time.sleep(scaled(10))
            time.sleep(scaled(3))
        finally:
            for stream in streams.values():
                stream.stop()
        settle(streams["open"], opened.backend, open_sampler, timeout_s=120)
        settle([streams["closed"], streams["feeder"]], closed.backend, closed_sampler, timeout_s=120)

    # A gateway spends tokens it leased from Redis before the outage for up to
    # gateway.rate_limit_lease_ttl_s (1 s): those requests were paid for and are answered 200.
    window = {"since": times["down"] + 1.5, "until": times["up_started"]}
    answers = {name: stream.statuses(**window) for name, stream in streams.items()}
    open_gateway = opened.member("gateway").process.metrics()
    closed_gateway = closed.member("gateway").process.metrics()
    open_worker = opened.live("validate,scrub,dedup")[0].process.metrics()
    closed_worker = closed.live("validate,scrub,dedup")[0].process.metrics()
    open_audit, closed_audit = audit_events(opened), audit_events(closed)
    # Fail open passes data through the outage: spans acknowledged meanwhile reached the backend meanwhile.
    arrivals = opened.backend.arrivals
    passed_during = sum(1 for e in streams["open"].exports if e.ok and e.started >= times["down"]
                        for i in e.ids if arrivals.get(i, float("inf")) < times["up_started_wall"])
    # Pause holds everything the feeder gateway took during the outage until Redis is back.
    arrivals = closed.backend.arrivals
    fed = [i for e in streams["feeder"].exports if e.ok and times["down"] <= e.started < times["up_started"]
           for i in e.ids]
    early = [i for i in fed if arrivals.get(i, float("inf")) < times["up_started_wall"]]
    figures = {
        "open: gateway unchecked requests": metric(open_gateway, "rampart_gateway_ratelimit_redis_errors_total",
                                                   policy="open"),
        "open: envelopes marked unchecked": unchecked_envelopes(opened),
        "open: dedup unchecked batches": metric(open_worker, "rampart_stage_processor_events_total",
                                                processor="dedup", event="unchecked_batches"),
        "open: spans delivered during the outage": passed_during,
        "closed: gateway refusals": metric(closed_gateway, "rampart_gateway_ratelimit_redis_errors_total",
                                           policy="closed"),
        "closed: dedup retries (state store)": metric(closed_worker, "rampart_stage_retries_total",
                                                      cause="state_store"),
        "closed: spans fed during the outage": len(fed),
        "closed: of them delivered before Redis was back": len(early),
    }
    results = {"open": account(streams["open"], opened.backend),
               "closed": account([streams["closed"], streams["feeder"]], closed.backend)}
    outage = (f"Redis down {times['up_started'] - times['down']:.0f} s; answers meanwhile: "
              + "; ".join(f"{name} {dict(a)}" for name, a in answers.items()))
    report("Redis stopped: fail open (gateway open, dedup pass)", results["open"], open_sampler,
           [outage, f"audit events: {sorted(open_audit)}",
            *(f"{k}: {v:.0f}" for k, v in figures.items() if k.startswith("open")), redelivery_note(opened)])
    report("Redis stopped: fail closed (gateway closed, dedup pause; a second gateway fails open)",
           results["closed"], closed_sampler,
           [outage, f"audit events: {sorted(closed_audit)}",
            *(f"{k}: {v:.0f}" for k, v in figures.items() if k.startswith("closed")), redelivery_note(closed)])

    # gateway.redis_failure_policy open: requests pass, counted, audited, envelopes marked.
    assert answers["open"] and set(answers["open"]) == {"200"}, answers["open"]
    assert figures["open: gateway unchecked requests"] > 0
    assert "rate_limit_unchecked" in open_audit
    assert figures["open: envelopes marked unchecked"] > 0
    # dedup.redis_failure_policy pass: batches pass unchecked, counted and audited, during the outage.
    assert figures["open: dedup unchecked batches"] > 0
    assert "dedup_unchecked" in open_audit
    assert figures["open: spans delivered during the outage"] > 0
    # gateway.redis_failure_policy closed: 503, never 200, counted.
    assert answers["closed"] and set(answers["closed"]) == {"503"}, answers["closed"]
    assert figures["closed: gateway refusals"] > 0
    # dedup.redis_failure_policy pause: nothing passes unchecked; the stage retries until Redis is back.
    assert answers["feeder"] and set(answers["feeder"]) == {"200"}, answers["feeder"]
    assert fed and not early, f"{len(early)} of {len(fed)} spans passed dedup while Redis was down"
    assert figures["closed: dedup retries (state store)"] > 0
    assert "dedup_unchecked" not in closed_audit
    assert metric(closed_worker, "rampart_stage_processor_events_total", processor="dedup",
                  event="unchecked_batches") == 0
    for result in results.values():
        assert_exact(result, max_duplicates=0)
    assert backend_copies(opened.backend) and backend_copies(closed.backend)
