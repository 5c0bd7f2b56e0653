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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
from aiohttp import web
from prometheus_client import CollectorRegistry

from rampart.admin import build_admin_app, split_listen
from rampart.config import RampartConfig
from schemas.envelope import Signal

__all__ = ["ConsumerSpec", "Handler", "run_consumer"]

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


def run_consumer(config: RampartConfig, spec: ConsumerSpec, handler: Handler, registry: CollectorRegistry,
                 ready: Callable[[], bool], on_start: Callable[[], object], tick: Callable[[], None]) -> None:
    """Run the group until SIGTERM/SIGINT: ``on_start`` once in the event loop, ``tick`` every 2 s."""
    servers = [f"kafka://{server.strip()}" for server in config.kafka.bootstrap_servers.split(",")]
    app = faust.App(
        spec.group_id, broker=servers, web_enabled=False, topic_allow_declare=False, topic_disable_leader=True,
        value_serializer="raw", key_serializer="raw", consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=config.kafka.max_message_bytes,
        producer_max_request_size=config.kafka.max_message_bytes,
        broker_commit_interval=1.0, stream_wait_empty=True,
        broker_session_timeout=spec.session_timeout_s,
        broker_heartbeat_interval=max(1.0, spec.session_timeout_s / 10),
        datadir=f"/tmp/rampart-faust-{os.getpid()}",  # noqa: S108 - faust wants one; nothing is stored there
    )
    for signal, topic_name in spec.inputs.items():
        topic = app.topic(topic_name, value_type=bytes, value_serializer="raw", key_serializer="raw")
        app.agent(topic, name=f"{spec.group_id}.{signal.value}", concurrency=spec.concurrency)(
            _agent(handler, signal))

    async def admin() -> None:
        on_start()
        runner = web.AppRunner(build_admin_app(registry, ready), access_log=None, handle_signals=False)
        await runner.setup()
        host, port = split_listen(spec.admin_listen)
        await web.TCPSite(runner, host, port).start()
        log.info("%s: reading %s; admin %s", spec.group_id, ", ".join(spec.inputs.values()), spec.admin_listen)
        while True:
            await asyncio.sleep(2)
            tick()

    app.task(admin)
    faust.Worker(app, loglevel=config.logging.level.lower().replace("warning", "warn"), quiet=True,
                 redirect_stdouts=False).execute_from_commandline()


def _agent(handler: Handler, signal: Signal) -> Any:
    async def agent(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            await handler(signal, message.value, message.key, f"{message.topic}/{message.partition}/{message.offset}")

    return agent
