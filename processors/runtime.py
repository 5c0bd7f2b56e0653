"""The stage runtime: a consumer group (rampart/streaming.py, on faust-streaming) around a
:class:`StageChain`, one group per stage or fused run of stages, so each scales by adding processes.

"Commit only after every output is acknowledged" holds because a record's handler returns only
once Kafka has acknowledged all of its outputs, and the group commits only records whose handler
returned.

Outputs go through Rampart's own confluent-kafka producer (idempotent, acks=all, the same size
limits as the gateway) rather than faust's, whose aiokafka producer is not idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from processors.base import ProcessorUnavailable
from processors.chain import ChainOutcome, StageChain
from processors.registry import build
from rampart.config import RampartConfig
from rampart.kafka import admin_client
from rampart.keyring import KeyringError, load_keyring
from rampart.publisher import Publisher, PublishError, publish_until_acknowledged, retry_delay_s
from rampart.release import ReleaseError, ReleaseKeys
from rampart.streaming import ConsumerSpec, run_consumer
from rampart.topics import TopicNames
from schemas.envelope import Signal

__all__ = ["StageMetrics", "WorkerSetupError", "plan_topics", "run_worker"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class WorkerSetupError(Exception):
    """The worker cannot start as asked (unknown stage, stages out of order, no signing key, ...)."""


@dataclass(frozen=True)
class TopicPlan:
    group_id: str
    input: dict[Signal, str]
    output: dict[Signal, str]


def plan_topics(config: RampartConfig, stages: list[str], input_template: str | None = None,
                output_template: str | None = None) -> TopicPlan:
    """Which topics a worker running ``stages`` reads and writes, and its consumer group.

    Stages of the configured pipeline must be consecutive; they read the topic after the stage
    before them (the raw topic for the first) and write the topic after the last of them (the clean
    topic for the pipeline's last stage). ``{signal}`` templates override both, for processors that
    join the pipeline as consumers of any topic.
    """
    topics = TopicNames(config.topics.prefix)
    pipeline = list(config.stages.pipeline)
    if input_template is None or output_template is None:
        if not all(s in pipeline for s in stages):
            outside = next(s for s in stages if s not in pipeline)
            raise WorkerSetupError(f"stage {outside!r} is not in stages.pipeline ({', '.join(pipeline)}); "
                                   "add it there or give --input and --output topics")
        first = pipeline.index(stages[0])
        if pipeline[first:first + len(stages)] != stages:
            raise WorkerSetupError(f"stages {','.join(stages)} are not consecutive in stages.pipeline "
                                   f"({', '.join(pipeline)})")
        last = first + len(stages) - 1
    inputs, outputs = {}, {}
    for signal in Signal:
        if input_template is not None:
            inputs[signal] = input_template.format(signal=signal.value)
        else:
            inputs[signal] = topics.raw(signal) if first == 0 else topics.after(pipeline[first - 1], signal)
        if output_template is not None:
            outputs[signal] = output_template.format(signal=signal.value)
        else:
            is_last = last == len(pipeline) - 1
            outputs[signal] = topics.clean(signal) if is_last else topics.after(pipeline[last], signal)
    return TopicPlan(f"{config.topics.prefix}.stage.{'+'.join(stages)}", inputs, outputs)


class StageMetrics(NamedTuple):
    records: Counter
    items: Counter
    dropped: Counter
    changed: Counter
    processor_events: Counter
    quarantined: Counter
    process_seconds: Histogram
    retries: Counter
    kafka_reachable: Gauge
    fast_path: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> StageMetrics:
        stage_signal = ["stage", "signal"]
        return cls(
            records=Counter("rampart_stage_records", "Input records handled, by outcome: passed (output "
                            "produced), emptied (every item dropped), quarantined.", [*stage_signal, "outcome"],
                            registry=registry),
            items=Counter("rampart_stage_items", "Spans, metric points or log records in and out.",
                          [*stage_signal, "direction"], registry=registry),
            dropped=Counter("rampart_stage_dropped_items", "Items dropped, by the processor and its reason "
                            "(each went to the rejected topic).", [*stage_signal, "processor", "reason"],
                            registry=registry),
            changed=Counter("rampart_stage_changed_items", "Items a processor changed (e.g. scrubbed).",
                            [*stage_signal, "processor"], registry=registry),
            processor_events=Counter("rampart_stage_processor_events", "Counters reported by processors, "
                                     "e.g. scrub matches per rule.", ["processor", "event"], registry=registry),
            quarantined=Counter("rampart_stage_quarantined_records", "Records that failed verification or "
                                "decoding, or that a processor set aside (forgery_suspected), by reason.",
                                [*stage_signal, "reason"], registry=registry),
            process_seconds=Histogram("rampart_stage_process_seconds", "Time to process one record, outputs "
                                      "acknowledged included.", stage_signal, buckets=_LATENCY_BUCKETS_S,
                                      registry=registry),
            retries=Counter("rampart_stage_retries", "Attempts repeated because a state store or Kafka was "
                            "unavailable.", ["stage", "cause"], registry=registry),
            kafka_reachable=Gauge("rampart_stage_kafka_reachable", "1 while this worker's producer reaches Kafka.",
                                  registry=registry),
            fast_path=Counter("rampart_stage_fast_path_batches", "Input records every processor cleared undecoded "
                              "(the clean-batch fast path); the others were decoded.", stage_signal, registry=registry),
        )

    def observe(self, stage: str, signal: Signal, outcome: ChainOutcome, seconds: float) -> None:
        s = signal.value
        if outcome.quarantine_reason is not None:
            self.records.labels(stage, s, "quarantined").inc()
            self.quarantined.labels(stage, s, outcome.quarantine_reason).inc()
        else:
            self.records.labels(stage, s, "passed" if outcome.items_out else "emptied").inc()
        self.items.labels(stage, s, "in").inc(outcome.items_in)
        self.items.labels(stage, s, "out").inc(outcome.items_out)
        for (processor, reason), n in outcome.dropped.items():
            self.dropped.labels(stage, s, processor, reason).inc(n)
        for processor, n in outcome.changed.items():
            self.changed.labels(stage, s, processor).inc(n)
        for (processor, event), n in outcome.counts.items():
            self.processor_events.labels(processor, event).inc(n)
        if outcome.fast_path_batches:
            self.fast_path.labels(stage, s).inc(outcome.fast_path_batches)
        self.process_seconds.labels(stage, s).observe(seconds)


class _Worker:
    """The state one worker process shares between its agents."""

    def __init__(self, config: RampartConfig, chain: StageChain, plan: TopicPlan, metrics: StageMetrics,
                 registry: CollectorRegistry) -> None:
        self.config = config
        self.chain = chain
        self.plan = plan
        self.metrics = metrics
        self.registry = registry
        self.stage = "+".join(chain.names)
        self.publisher: Publisher | None = None

    def publisher_started(self) -> Publisher:
        if self.publisher is None:
            self.publisher = Publisher(self.config.kafka, f"rampart-{self.stage}-{os.getpid()}",
                                       asyncio.get_running_loop(),
                                       ack_timeout_s=self.config.stages.kafka_ack_timeout_ms / 1000)
        return self.publisher

    async def handle(self, signal: Signal, value: bytes, key: bytes | None, source: str) -> None:
        """Process one record until every output is acknowledged; never gives up, never skips."""
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                outcome = self.chain.handle(signal, value, key, source)
                break
            except ProcessorUnavailable as exc:
                log.warning("retrying %s: %s", source, exc)
                self.metrics.retries.labels(self.stage, "state_store").inc()
                await asyncio.sleep(retry_delay_s(attempt))
                attempt += 1
        await publish_until_acknowledged(self.publisher_started(), outcome.records, self._kafka_retry)
        self.metrics.observe(self.stage, signal, outcome, time.perf_counter() - started)

    def _kafka_retry(self, exc: PublishError) -> None:
        log.warning("outputs not acknowledged, retrying: %s", exc)
        self.metrics.retries.labels(self.stage, "kafka").inc()

    def ready(self) -> bool:
        return self.publisher is not None and self.publisher.kafka_reachable


def run_worker(config: RampartConfig, env: Mapping[str, str], stages: list[str], signals: list[Signal],
               input_template: str | None = None, output_template: str | None = None) -> None:
    """Build the faust app for ``stages`` and run it until SIGTERM/SIGINT."""
    plan = plan_topics(config, stages, input_template, output_template)
    try:
        keyring = load_keyring(config.keyring, env)
    except KeyringError as exc:
        raise WorkerSetupError(str(exc)) from None
    if keyring.signing_key_id is None:
        raise WorkerSetupError("a worker re-signs what it emits: set keyring.signing_key_id")
    if config.keyring.encrypt_unscrubbed:
        try:
            keyring.require_encryption_key()  # for outputs not yet scrubbed and for rejected items
        except KeyringError as exc:
            raise WorkerSetupError(str(exc)) from None
    try:
        processors = build(stages, config, env)
    except ValueError as exc:
        raise WorkerSetupError(str(exc)) from None
    try:
        release_keys = ReleaseKeys(config.keyring.release_keys)
    except ReleaseError as exc:
        raise WorkerSetupError(f"{exc} ({config.source})") from None
    partitions = _partition_counts(config, plan)
    first_stage = stages[0] == config.stages.pipeline[0] and input_template is None
    chain = StageChain(names=stages, processors=processors, keyring=keyring,
                       topics=TopicNames(config.topics.prefix), output_topic=plan.output.__getitem__,
                       keying=config.stages.keying if first_stage else "gateway",
                       output_partitions=partitions.__getitem__, instance=f"{socket.gethostname()}-{os.getpid()}",
                       encrypt_unscrubbed=config.keyring.encrypt_unscrubbed,
                       required_before=_stages_before(config, stages) if input_template is None else (),
                       release_keys=release_keys)
    registry = CollectorRegistry()
    for processor in processors:
        processor.register_metrics(registry)
    worker = _Worker(config, chain, plan, StageMetrics.create(registry), registry)
    spec = ConsumerSpec(plan.group_id, {s: plan.input[s] for s in signals}, config.stages.concurrency,
                        config.stages.session_timeout_s, config.stages.admin_listen)
    log.info("worker %s writes %s", worker.stage, ", ".join(plan.output[s] for s in signals))
    try:
        run_consumer(config, spec, worker.handle, registry, worker.ready, worker.publisher_started,
                     lambda: worker.metrics.kafka_reachable.set(1 if worker.ready() else 0))
    finally:
        for processor in processors:
            processor.close()


def _stages_before(config: RampartConfig, stages: list[str]) -> tuple[str, ...]:
    pipeline = list(config.stages.pipeline)
    return ("gateway", *pipeline[:pipeline.index(stages[0])])


def _partition_counts(config: RampartConfig, plan: TopicPlan, wait_s: float = 30.0) -> dict[Signal, int]:
    """Partitions of each output topic. Topics created a moment ago may take a little while to show in
    the metadata, so missing ones are asked for again for up to ``wait_s`` before giving up."""
    admin = admin_client(config.kafka, "rampart-worker")
    deadline = time.monotonic() + wait_s
    while True:
        metadata = admin.list_topics(timeout=30)
        missing = [t for t in plan.output.values()
                   if metadata.topics.get(t) is None or metadata.topics[t].error is not None]
        if not missing:
            return {signal: len(metadata.topics[topic].partitions) for signal, topic in plan.output.items()}
        if time.monotonic() > deadline:
            raise WorkerSetupError(f"output topic {missing[0]} does not exist: run `rampart topics create`")
        time.sleep(1)
