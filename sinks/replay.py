"""`rampart dlq replay`: send dead-lettered batches to the backend again, once the cause is fixed.

Reads ``<prefix>.dlq.<sink>`` as consumer group ``<prefix>.dlq-replay.<sink>`` up to the end it had
when the command started, verifies each envelope, exports it through the sink with the usual retry
engine and commits each record once the backend has accepted it. A batch the backend refuses again
stops the replay (nothing after it is skipped), so it can be fixed and replayed again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import TopicPartition

from rampart.config import RampartConfig
from rampart.kafka import consumer
from rampart.keyring import SignatureError, load_keyring
from rampart.topics import TopicNames
from schemas.envelope import EnvelopeError, decode
from sinks.base import PermanentExportError
from sinks.retry import CircuitBreaker, RetryPolicy, deliver
from sinks.runtime import build_sink, export_request, tenant_attribute

__all__ = ["ReplayReport", "replay"]


@dataclass
class ReplayReport:
    delivered: int = 0
    unreadable: int = 0
    refused: str | None = None  # the backend's answer that stopped the replay


def replay(config: RampartConfig, env: Mapping[str, str], sink_name: str, progress: bool = True) -> ReplayReport:
    topic = TopicNames(config.topics.prefix).dlq(sink_name)
    keyring = load_keyring(config.keyring, env)
    sink = build_sink(sink_name, config, env)
    c = consumer(config.kafka, "rampart-dlq-replay", f"{config.topics.prefix}.dlq-replay.{sink_name}")
    report = ReplayReport()
    try:
        partitions = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
        committed = {tp.partition: tp.offset for tp in c.committed(partitions, timeout=10)}
        remaining = {p for p, end in ends.items() if max(committed[p], 0) < end}
        c.subscribe([topic])
        loop = asyncio.new_event_loop()
        policy = RetryPolicy(config.sinks.initial_backoff_s, config.sinks.max_backoff_s)
        breaker = CircuitBreaker(config.sinks.circuit_failure_threshold, config.sinks.circuit_open_s)
        while remaining:
            message = c.poll(1.0)
            if message is None or message.error() is not None:
                continue
            partition, offset, value = message.partition(), message.offset(), message.value()
            assert partition is not None and offset is not None and value is not None  # set on real messages
            try:
                envelope = keyring.open(decode(value))
                request = export_request(envelope.signal, envelope, tenant_attribute(sink_name, config))
                loop.run_until_complete(deliver(sink, request, policy, breaker, lambda _e, _d: None))
                report.delivered += 1
            except (EnvelopeError, SignatureError, ValueError):
                report.unreadable += 1  # not ours to resend; it stays in the DLQ topic for inspection
            except PermanentExportError as exc:
                report.refused = f"{exc} {exc.answer}".strip()
                break
            c.commit(message=message, asynchronous=False)
            if progress:
                print(f"replayed {topic}/{partition}/{offset}", flush=True)
            if offset + 1 >= ends[partition]:
                remaining.discard(partition)
        loop.run_until_complete(sink.close())
        loop.close()
    finally:
        c.close()
    return report
