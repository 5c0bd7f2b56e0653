"""The sink runtime: a consumer group per sink on the clean topics (rampart/streaming.py).

Per record: verify the envelope (anything unverifiable goes to quarantine, as in every stage), put
the tenant on every resource, export through the shared retry engine, and return only when the
backend accepted the batch or the batch sits in ``<prefix>.dlq.<sink>`` with the backend's answer.
Only then may the record be committed: at-least-once delivery to the backend, made effectively once
for redeliveries by remembering accepted batch ids (sinks/delivered.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError

from processors.chain import passed_stages
from processors.otlp import OtlpDecodeError, count_items, decode_payload, resources
from rampart.audit import audit_record, quarantine_records
from rampart.config import RampartConfig
from rampart.keyring import KeyRing, KeyringError, SignatureError, load_keyring
from rampart.publisher import Publisher, PublishError, Record, publish_until_acknowledged
from rampart.stores import async_redis_client
from rampart.streaming import ConsumerSpec, run_consumer
from rampart.topics import TopicNames
from schemas.envelope import Envelope, EnvelopeError, Signal, decode
from sinks.base import ExportError, ExportRequest, PermanentExportError, Sink
from sinks.batching import ExportBatcher
from sinks.budget import ExportBudgets
from sinks.delivered import DeliveredMarks
from sinks.otlp import OtlpHttpSink, SinkSetupError
from sinks.otlp_grpc import OtlpGrpcSink
from sinks.prometheus import PrometheusRemoteWriteSink
from sinks.retry import CircuitBreaker, RetryPolicy, deliver

__all__ = ["SinkMetrics", "build_sink", "export_request", "run_sink", "tenant_attribute"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SinkMetrics(NamedTuple):
    batches: Counter
    items: Counter
    retries: Counter
    left_out: Counter
    over_budget: Counter
    circuit_open: Gauge
    export_seconds: Histogram
    end_to_end_seconds: Histogram
    kafka_reachable: Gauge
    delivered_marks_unavailable: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> SinkMetrics:
        return cls(
            batches=Counter("rampart_sink_batches", "Batches by outcome: exported, dead_lettered (refused for "
                            "good, in the DLQ topic), quarantined (failed verification), already_delivered "
                            "(redelivered after the backend had accepted it: skipped).",
                            ["sink", "signal", "outcome"], registry=registry),
            items=Counter("rampart_sink_exported_items", "Spans, metric points or log records the backend "
                          "accepted.", ["sink", "signal"], registry=registry),
            retries=Counter("rampart_sink_retries", "Export attempts that failed retryably and were retried.",
                            ["sink", "signal"], registry=registry),
            left_out=Counter("rampart_sink_left_out_items", "Items the backend's format cannot represent, "
                             "left out of an export (e.g. delta temporality for Prometheus), by reason.",
                             ["sink", "signal", "reason"], registry=registry),
            over_budget=Counter("rampart_sink_over_budget", "Times a batch found its tenant over its export "
                                "budget (held back or dead-lettered, by sinks.budget_policy).",
                                ["sink", "signal", "tenant"], registry=registry),
            circuit_open=Gauge("rampart_sink_circuit_open", "1 while the circuit breaker keeps calls away from "
                               "a failing backend.", ["sink"], registry=registry),
            export_seconds=Histogram("rampart_sink_export_seconds", "From first attempt to acceptance "
                                     "(retries included).", ["sink", "signal"], buckets=_LATENCY_BUCKETS_S,
                                     registry=registry),
            end_to_end_seconds=Histogram("rampart_sink_end_to_end_seconds", "From the gateway's receipt of the "
                                         "request to the backend's acceptance.", ["sink", "signal"],
                                         buckets=_LATENCY_BUCKETS_S, registry=registry),
            kafka_reachable=Gauge("rampart_sink_kafka_reachable", "1 while this sink's producer reaches Kafka.",
                                  registry=registry),
            delivered_marks_unavailable=Counter(
                "rampart_sink_delivered_marks_unavailable", "Times Redis could not be asked or told which batches "
                "the backend already accepted (the batch was exported anyway: a duplicate is possible).", ["sink"],
                registry=registry),
        )


def export_request(signal: Signal, envelope: Envelope, tenant_attribute: str) -> ExportRequest:
    """The envelope's payload with the tenant set on every resource (whatever the data claimed)."""
    request = decode_payload(signal, envelope.payload_format, envelope.payload)
    for resource in resources(request, signal):
        attributes = resource.resource.attributes
        for i in range(len(attributes) - 1, -1, -1):
            if attributes[i].key == tenant_attribute:
                del attributes[i]
        attributes.add(key=tenant_attribute).value.string_value = envelope.tenant
    return ExportRequest(signal, envelope.tenant, request.SerializeToString(),
                         count_items(request, signal), envelope.batch_id)


def tenant_attribute(name: str, config: RampartConfig) -> str:
    """The resource attribute sink ``name`` writes the tenant into (each sink has its own setting)."""
    return config.sinks.prometheus.tenant_attribute if name == "prometheus" else config.sinks.otlp.tenant_attribute


def build_sink(name: str, config: RampartConfig, env: Mapping[str, str]) -> Sink:
    if name == "otlp":
        if config.sinks.otlp.protocol == "grpc":
            return OtlpGrpcSink(config.sinks.otlp, env)
        return OtlpHttpSink(config.sinks.otlp, env)
    if name == "prometheus":
        return PrometheusRemoteWriteSink(config.sinks.prometheus, env)
    raise SinkSetupError(f"unknown sink {name!r} (known: otlp, prometheus)")


class _SinkWorker:
    def __init__(self, config: RampartConfig, sink: Sink, keyring: KeyRing, registry: CollectorRegistry,
                 budgets: ExportBudgets | None, delivered: DeliveredMarks | None = None) -> None:
        self._config = config
        self._sink = sink
        self._keyring = keyring
        self._topics = TopicNames(config.topics.prefix)
        self._instance = f"{socket.gethostname()}-{os.getpid()}"
        self.registry = registry
        self.metrics = SinkMetrics.create(registry)
        self._policy = RetryPolicy(config.sinks.initial_backoff_s, config.sinks.max_backoff_s)
        self._breaker = CircuitBreaker(config.sinks.circuit_failure_threshold, config.sinks.circuit_open_s)
        self._budgets = budgets
        self._delivered = delivered
        self._required_stages = ("gateway", *config.stages.pipeline)
        self._tenant_attribute = tenant_attribute(sink.name, config)
        self._in_flight: dict[str, asyncio.Future[bool]] = {}  # batch id -> exported?
        self._batcher: ExportBatcher | None = None  # created in the running loop
        self.publisher: Publisher | None = None

    def publisher_started(self) -> Publisher:
        if self.publisher is None:
            self.publisher = Publisher(self._config.kafka, f"rampart-sink-{self._sink.name}-{os.getpid()}",
                                       asyncio.get_running_loop(), ack_timeout_s=30.0)
        return self.publisher

    def ready(self) -> bool:
        return self.publisher is not None and self.publisher.kafka_reachable

    def tick(self) -> None:
        self.metrics.circuit_open.labels(self._sink.name).set(1 if self._breaker.is_open else 0)
        self.metrics.kafka_reachable.set(1 if self.ready() else 0)

    async def handle(self, signal: Signal, value: bytes, key: bytes | None, source: str) -> None:
        name = self._sink.name
        try:
            envelope = self._keyring.open(decode(value))
            if not passed_stages(envelope.stages, self._required_stages):
                # Genuine but not through the whole pipeline (e.g. a raw envelope copied onto a clean
                # topic): it would reach the backend unvalidated and unscrubbed.
                raise SignatureError("skipped_stages", f"envelope has passed {', '.join(envelope.stages)}; "
                                                       f"a sink needs {', '.join(self._required_stages)}")
            request = export_request(signal, envelope, self._tenant_attribute)
        except (EnvelopeError, SignatureError, OtlpDecodeError) as exc:
            reason = getattr(exc, "reason", "malformed_envelope")
            await self._publish(quarantine_records(self._topics, signal, value, key, source, reason, str(exc),
                                                   f"sink.{name}", self._instance))
            self.metrics.batches.labels(name, signal.value, "quarantined").inc()
            return
        done = await self._claim(envelope.batch_id)
        if done is None:
            self.metrics.batches.labels(name, signal.value, "already_delivered").inc()
            return
        exported = False
        try:
            exported = await self._export(signal, envelope, request, value, key, source)
        finally:
            del self._in_flight[envelope.batch_id]
            done.set_result(exported)

    async def _claim(self, batch_id: str) -> asyncio.Future[bool] | None:
        """None if the backend has this batch already or a copy of it got through moments ago; else a
        future this export resolves (True once exported), for copies that arrive meanwhile to wait on.

        Copies of one batch arrive close together after a stage's redelivery (same key, same
        partition): the second waits for the first and is skipped if the first got through.
        """
        while (earlier := self._in_flight.get(batch_id)) is not None:
            if await asyncio.shield(earlier):
                return None
        # Registered before the first await, so a copy arriving meanwhile finds it.
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._in_flight[batch_id] = done
        if await self._already_delivered(batch_id):
            del self._in_flight[batch_id]
            done.set_result(True)
            return None
        return done

    async def _export(self, signal: Signal, envelope: Envelope, request: ExportRequest, value: bytes,
                      key: bytes | None, source: str) -> bool:
        """Export one batch (or put it in the DLQ); True once the backend has accepted it."""
        name = self._sink.name
        if not await self._within_budget(request, value, key, source):
            return False
        started = time.perf_counter()
        try:
            left_out = await self._batcher_started().submit(request)
        except PermanentExportError as exc:
            log.warning("%s refused batch %s for good: %s", name, envelope.batch_id, exc)
            await self._publish(self._dead_letter(value, key, source, exc))
            self.metrics.batches.labels(name, signal.value, "dead_lettered").inc()
            return False
        for reason, n in (left_out or {}).items():
            self.metrics.left_out.labels(name, signal.value, reason).inc(n)
            log.warning("%s left out %d items it cannot represent: %s", name, n, reason)
        await self._mark_delivered(envelope.batch_id)
        self.metrics.batches.labels(name, signal.value, "exported").inc()
        self.metrics.items.labels(name, signal.value).inc(request.items)
        self.metrics.export_seconds.labels(name, signal.value).observe(time.perf_counter() - started)
        self.metrics.end_to_end_seconds.labels(name, signal.value).observe(
            max(0.0, (time.time_ns() - envelope.received_at_ns) / 1e9))
        return True

    async def _already_delivered(self, batch_id: str) -> bool:
        if self._delivered is None:
            return False
        try:
            return await self._delivered.already_delivered(batch_id)
        except (RedisError, OSError) as exc:
            self.metrics.delivered_marks_unavailable.labels(self._sink.name).inc()
            log.warning("delivered-batch marks unavailable (%s): exporting, a duplicate is possible",
                        type(exc).__name__)
            return False

    async def _mark_delivered(self, batch_id: str) -> None:
        if self._delivered is None:
            return
        try:
            await self._delivered.mark(batch_id)
        except (RedisError, OSError) as exc:
            self.metrics.delivered_marks_unavailable.labels(self._sink.name).inc()
            log.warning("cannot mark batch %s delivered (%s): a redelivery would export it again", batch_id,
                        type(exc).__name__)

    def _batcher_started(self) -> ExportBatcher:
        if self._batcher is None:
            async def export(request: ExportRequest) -> Mapping[str, int] | None:
                return await deliver(self._sink, request, self._policy, self._breaker, self._on_retry(request.signal))

            sinks = self._config.sinks
            records = 1 if self._sink.name == "prometheus" else sinks.batch_max_records
            # The batcher holds the export slots; held batches wait before it, so they never take one.
            self._batcher = ExportBatcher(export, sinks.concurrency, records, sinks.batch_max_bytes,
                                          sinks.batch_max_wait_ms / 1000)
        return self._batcher

    async def _within_budget(self, request: ExportRequest, value: bytes, key: bytes | None, source: str) -> bool:
        """Wait for, or (policy dead_letter) divert, a batch over its tenant's export budget."""
        if self._budgets is None or not self._budgets.limited(request.tenant):
            return True
        name, signal = self._sink.name, request.signal.value
        audited = False
        while True:
            try:
                wait = await self._budgets.take(request.tenant, len(request.payload))
            except (RedisError, OSError) as exc:
                log.warning("export budget unavailable (%s); exporting without it", type(exc).__name__)
                return True
            if wait == 0:
                return True
            self.metrics.over_budget.labels(name, signal, request.tenant).inc()
            if not audited:
                audited = True
                event = audit_record("export_budget_exceeded", f"sink.{name}", self._instance, request.tenant,
                                     policy=self._config.sinks.budget_policy, batch_id=request.batch_id)
                await self._publish([Record(self._topics.audit(), json.dumps(event, sort_keys=True).encode(),
                                            request.tenant.encode())])
            if self._config.sinks.budget_policy == "dead_letter":
                await self._publish(self._dead_letter(value, key, source, PermanentExportError(
                    f"tenant {request.tenant} is over its export budget", None, "")))
                self.metrics.batches.labels(name, signal, "dead_lettered").inc()
                return False
            await asyncio.sleep(min(wait, 5.0))

    def _on_retry(self, signal: Signal) -> Callable[[ExportError, float], None]:
        def note(exc: ExportError, delay: float) -> None:
            self.metrics.retries.labels(self._sink.name, signal.value).inc()
            log.warning("%s export failed (%s); retrying in %.1fs", self._sink.name, exc, delay)
        return note

    def _dead_letter(self, value: bytes, key: bytes | None, source: str, exc: ExportError) -> list[Record]:
        headers = [("rampart.dlq.sink", self._sink.name.encode()), ("rampart.dlq.reason", str(exc)[:500].encode()),
                   ("rampart.dlq.answer", exc.answer[:500].encode()), ("rampart.dlq.source", source.encode())]
        return [Record(self._topics.dlq(self._sink.name), value, key, None, headers)]

    async def _publish(self, records: list[Record]) -> None:
        def note(exc: PublishError) -> None:
            log.warning("%s: Kafka did not acknowledge, retrying: %s", self._sink.name, exc)

        await publish_until_acknowledged(self.publisher_started(), records, note)


def run_sink(config: RampartConfig, env: Mapping[str, str], name: str) -> None:
    """Run sink ``name`` as consumer group ``<prefix>.sink.<name>`` until SIGTERM/SIGINT."""
    try:
        keyring = load_keyring(config.keyring, env)
    except KeyringError as exc:
        raise SinkSetupError(str(exc)) from None
    sink = build_sink(name, config, env)
    signals = sink.signals
    topics = TopicNames(config.topics.prefix)
    budgets = None
    if config.sinks.budgets:
        budgets = ExportBudgets(async_redis_client(config), config.redis.key_prefix, name, config.sinks.budgets)
    delivered = None
    if config.sinks.delivered_ttl_s > 0:
        delivered = DeliveredMarks(async_redis_client(config), config.redis.key_prefix, name,
                                   config.sinks.delivered_ttl_s)
    worker = _SinkWorker(config, sink, keyring, CollectorRegistry(), budgets, delivered)
    # Remote write refuses a sample older than one it already has for the series, so the Prometheus sink
    # exports one record at a time, in partition order.
    # Room for a full batch per export slot, so that records can be combined, and for one more that fills
    # while every slot is busy, ready to leave as soon as one frees.
    concurrency = 1 if name == "prometheus" else (config.sinks.concurrency + 1) * config.sinks.batch_max_records
    holds = budgets is not None and config.sinks.budget_policy == "hold"
    if holds and name != "prometheus":
        concurrency += config.sinks.max_held_batches  # room for held batches beside the exporting ones
    spec = ConsumerSpec(f"{config.topics.prefix}.sink.{name}", {s: topics.clean(s) for s in signals},
                        concurrency, config.sinks.session_timeout_s, config.sinks.admin_listen, wait_empty=not holds)
    run_consumer(config, spec, worker.handle, worker.registry, worker.ready, worker.publisher_started, worker.tick)
