"""Signed envelopes through the real broker: produced by one client, consumed and verified by another group."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

from rampart.config import KafkaConfig, TopicsConfig
from rampart.kafka import admin_client, consumer, producer
from rampart.keyring import KeyRing, SignatureError, generate_key
from rampart.topics import TopicNames, create_topics
from schemas.envelope import Envelope, PayloadFormat, Signal, decode, encode

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka_config(kafka_bootstrap: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=kafka_bootstrap)


@pytest.fixture
def topics(kafka_config: KafkaConfig, unique_prefix: str) -> TopicNames:
    report = create_topics(admin_client(kafka_config, "test"), TopicsConfig(prefix=unique_prefix, partitions=3),
                           kafka_config.max_message_bytes)
    assert len(report.created) == 15 and report.existing == []
    return TopicNames(unique_prefix)


def envelope(payload: bytes = b"\x0a\x00") -> Envelope:
    return Envelope(batch_id=str(uuid.uuid4()), tenant="acme", principal="key-01", signal=Signal.TRACES,
                    payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=time.time_ns(), gateway_id="gw-test",
                    payload=payload, stages=("gateway",))


def produce_acknowledged(p: Producer, topic: str, value: bytes, key: bytes) -> None:
    reports: list[KafkaError | None] = []
    p.produce(topic, value=value, key=key, on_delivery=lambda err, _msg: reports.append(err))
    assert p.flush(30) == 0
    assert reports == [None], f"delivery failed: {reports}"


def consume_one(c: Consumer, topic: str) -> Message:
    c.subscribe([topic])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is not None and msg.error() is None:
            return msg
    pytest.fail(f"nothing arrived on {topic} within 30 s")


def test_signed_envelope_is_verified_by_another_consumer_group(kafka_config: KafkaConfig,
                                                               topics: TopicNames) -> None:
    gateway_key = generate_key()
    gateway_ring = KeyRing({"gateway-1": gateway_key}, "gateway-1")
    worker_ring = KeyRing({"gateway-1": gateway_key, "worker-1": generate_key()}, "worker-1")
    sent = gateway_ring.sign(envelope(b"\x0a\x04span"))
    produce_acknowledged(producer(kafka_config, "test-gateway"), topics.raw(Signal.TRACES), encode(sent), b"acme")

    c = consumer(kafka_config, "test-worker", group_id=f"{topics.prefix}.validate")
    try:
        msg = consume_one(c, topics.raw(Signal.TRACES))
        received = decode(msg.value())
        worker_ring.verify(received)
        assert received == sent
        c.commit(message=msg, asynchronous=False)
    finally:
        c.close()


def test_envelope_signed_with_unknown_key_is_refused_with_the_reason(kafka_config: KafkaConfig,
                                                                     topics: TopicNames) -> None:
    intruder = KeyRing({"intruder": generate_key()}, "intruder")
    worker_ring = KeyRing({"gateway-1": generate_key()}, None)
    produce_acknowledged(producer(kafka_config, "test-intruder"), topics.raw(Signal.TRACES),
                         encode(intruder.sign(envelope())), b"acme")

    c = consumer(kafka_config, "test-worker", group_id=f"{topics.prefix}.validate")
    try:
        received = decode(consume_one(c, topics.raw(Signal.TRACES)).value())
    finally:
        c.close()
    with pytest.raises(SignatureError, match="unknown key id 'intruder'") as info:
        worker_ring.verify(received)
    assert info.value.reason == "unknown_key_id"


def test_broker_accepts_an_8_mib_batch(kafka_config: KafkaConfig, topics: TopicNames) -> None:
    ring = KeyRing({"gateway-1": generate_key()}, "gateway-1")
    big = ring.sign(envelope(bytes(8 * 1024 * 1024)))
    produce_acknowledged(producer(kafka_config, "test-big", **{"compression.type": "none"}),
                         topics.raw(Signal.LOGS), encode(big), b"acme")
    c = consumer(kafka_config, "test-big", group_id=f"{topics.prefix}.big")
    try:
        received = decode(consume_one(c, topics.raw(Signal.LOGS)).value())
    finally:
        c.close()
    ring.verify(received)
    assert len(received.payload) == 8 * 1024 * 1024


def test_topic_creation_is_idempotent(kafka_config: KafkaConfig, topics: TopicNames) -> None:
    again = create_topics(admin_client(kafka_config, "test"), TopicsConfig(prefix=topics.prefix, partitions=3),
                          kafka_config.max_message_bytes)
    assert again.created == [] and len(again.existing) == 15
    metadata = admin_client(kafka_config, "test").list_topics(timeout=10)
    assert len(metadata.topics[topics.clean(Signal.METRICS)].partitions) == 3
