"""Consumer groups on faust-streaming, shared by stream stages and sinks.

faust owns consumption: the group, partition assignment, rebalancing, and commits. An event is
done when its handler returns, and faust commits only offsets below which every event is done, so
a handler that returns only after its work is safely elsewhere gives at-least-once delivery.
While a handler waits (backing off from an unavailable backend), its partition's buffer fills and
faust stops fetching for it: Kafka holds the backlog.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
from aiohttp import web
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Gauge

from rampart.admin import build_admin_app, split_listen
from rampart.config import KafkaConfig, RampartConfig
from rampart.kafka import consumer_properties
from rampart.oauth import OidcTokenProvider
from schemas.envelope import Signal

__all__ = ["ConsumerSpec", "Handler", "LagProbe", "faust_credentials", "run_consumer"]

_LAG_INTERVAL_S = 10.0

log = logging.getLogger(__name__)

# (signal, value, key, source "topic/partition/offset")
Handler = Callable[[Signal, bytes, bytes | None, str], Awaitable[None]]


@dataclass(frozen=True)
class ConsumerSpec:
    group_id: str
    inputs: dict[Signal, str]
    concurrency: int
    session_timeout_s: float
    admin_listen: str
    # On shutdown and rebalance, let records being processed finish first (fewer redeliveries). Off
    # where a record may wait indefinitely (a sink holding a batch for its tenant's budget): such a
    # record is simply not committed and is redelivered.
    wait_empty: bool = True


class LagProbe:
    """How far a group is behind: per topic, the high watermarks minus the group's committed offsets.

    It reads committed offsets without joining the group, so it never takes partitions from anyone.
    Blocking: call it from a thread.
    """

    def __init__(self, config: KafkaConfig, group_id: str, topics: list[str]) -> None:
        self._consumer = Consumer(consumer_properties(config, "rampart-lag-probe", group_id))
        self._topics = topics

    def measure(self) -> dict[str, int]:
        lag: dict[str, int] = {}
        metadata = self._consumer.list_topics(timeout=10)
        for topic in self._topics:
            found = metadata.topics.get(topic)
            if found is None:
                continue
            partitions = [TopicPartition(topic, p) for p in found.partitions]
            committed = {tp.partition: tp.offset for tp in self._consumer.committed(partitions, timeout=10)}
            total = 0
            for tp in partitions:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
                done = committed.get(tp.partition, -1)
                total += high - (done if done >= 0 else low)
            lag[topic] = max(0, total)
        return lag

    def close(self) -> None:
        self._consumer.close()


def faust_credentials(config: KafkaConfig) -> faust.types.auth.CredentialsT | None:
    """The same security settings librdkafka gets (rampart.kafka), in the form faust hands to aiokafka.

    ``kafka.extra`` holds librdkafka properties and has no aiokafka counterpart: it is not applied here.
    """
    protocol = config.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=config.ssl_ca_location)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if config.ssl_certificate_location and config.ssl_key_location:
            context.load_cert_chain(config.ssl_certificate_location, config.ssl_key_location,
                                    config.ssl_key_password.reveal() if config.ssl_key_password else None)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if config.sasl_mechanism == "OAUTHBEARER":
        return faust.OAuthCredentials(oauth_cb=OidcTokenProvider(config), ssl_context=context)
    # faust picks SASL_SSL when given a context and SASL_PLAINTEXT otherwise, as configured.
    return faust.SASLCredentials(
        username=config.sasl_username, password=config.sasl_password.reveal() if config.sasl_password else None,
        ssl_context=context, mechanism=config.sasl_mechanism)


def run_consumer(config: RampartConfig, spec: ConsumerSpec, handler: Handler, registry: CollectorRegistry,
                 ready: Callable[[], bool], on_start: Callable[[], object], tick: Callable[[], None]) -> None:
    """Run the group until SIGTERM/SIGINT: ``on_start`` once in the event loop, ``tick`` every 2 s."""
    servers = [f"kafka://{server.strip()}" for server in config.kafka.bootstrap_servers.split(",")]
    app = faust.App(
        spec.group_id, broker=servers, web_enabled=False, topic_allow_declare=False, topic_disable_leader=True,
        value_serializer="raw", key_serializer="raw", consumer_auto_offset_reset="earliest",
        broker_credentials=faust_credentials(config.kafka),
        consumer_max_fetch_size=config.kafka.max_message_bytes,
        producer_max_request_size=config.kafka.max_message_bytes,
        broker_commit_interval=1.0, stream_wait_empty=spec.wait_empty,
        broker_session_timeout=spec.session_timeout_s,
        broker_heartbeat_interval=max(1.0, spec.session_timeout_s / 10),
        datadir=f"/tmp/rampart-faust-{os.getpid()}",  # noqa: S108 - faust wants one; nothing is stored there
    )
    for signal, topic_name in spec.inputs.items():
        topic = app.topic(topic_name, value_type=bytes, value_serializer="raw", key_serializer="raw")
        app.agent(topic, name=f"{spec.group_id}.{signal.value}", concurrency=spec.concurrency)(
            _agent(handler, signal))

    lag_gauge = Gauge("rampart_consumer_lag_records", "Records on the input topic not yet committed by this "
                      "consumer group (all partitions): how far behind the group is.", ["group", "topic"],
                      registry=registry)
    probe = LagProbe(config.kafka, spec.group_id, list(spec.inputs.values()))

    async def admin() -> None:
        on_start()
        runner = web.AppRunner(build_admin_app(registry, ready), access_log=None, handle_signals=False)
        await runner.setup()
        host, port = split_listen(spec.admin_listen)
        await web.TCPSite(runner, host, port).start()
        log.info("%s: reading %s; admin %s", spec.group_id, ", ".join(spec.inputs.values()), spec.admin_listen)
        last_lag = 0.0
        while True:
            await asyncio.sleep(2)
            tick()
            if asyncio.get_running_loop().time() - last_lag >= _LAG_INTERVAL_S:
                last_lag = asyncio.get_running_loop().time()
                try:
                    for topic, records in (await asyncio.to_thread(probe.measure)).items():
                        lag_gauge.labels(spec.group_id, topic).set(records)
                except KafkaException as exc:
                    log.warning("cannot measure consumer lag: %s", exc)

    app.task(admin)
    faust.Worker(app, loglevel=config.logging.level.lower().replace("warning", "warn"), quiet=True,
                 redirect_stdouts=False).execute_from_commandline()


def _agent(handler: Handler, signal: Signal) -> Any:
    async def agent(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            await handler(signal, message.value, message.key, f"{message.topic}/{message.partition}/{message.offset}")

    return agent
