"""Wire the gateway together and run it until SIGTERM/SIGINT, then drain and stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
from collections.abc import Mapping

import redis
from aiohttp import web
from prometheus_client import CollectorRegistry

from ingest.apikeys import ApiKeyCache, ApiKeyRegistry
from ingest.gateway import Gateway
from ingest.grpc_server import build_grpc_server
from ingest.http_server import build_http_server
from ingest.metrics import GatewayMetrics
from ingest.ratelimit import RateLimiter
from ingest.tls import server_ssl_context
from rampart.admin import build_admin_app, split_listen
from rampart.audit import AuditLog
from rampart.config import RampartConfig
from rampart.keyring import KeyringError, load_keyring
from rampart.publisher import Publisher
from rampart.stores import async_redis_client, redis_client
from rampart.topics import TopicNames

__all__ = ["GatewayStartupError", "run_gateway"]

log = logging.getLogger(__name__)


class GatewayStartupError(Exception):
    """The gateway cannot start with this config (bad key ring, unreadable TLS files, port in use)."""


async def run_gateway(config: RampartConfig, env: Mapping[str, str]) -> None:
    gw = config.gateway
    gateway_id = gw.id or f"{socket.gethostname()}-{os.getpid()}"
    try:
        keyring = load_keyring(config.keyring, env)
        if keyring.signing_key_id is None:
            raise KeyringError("the gateway needs a signing key: set keyring.signing_key_id")
        if config.keyring.encrypt_unscrubbed:
            keyring.require_encryption_key()
        ssl_context = server_ssl_context(gw.tls)
    except (KeyringError, OSError, ssl.SSLError) as exc:
        raise GatewayStartupError(str(exc)) from None

    loop = asyncio.get_running_loop()
    registry = CollectorRegistry()
    metrics = GatewayMetrics.create(registry)
    sync_redis, async_redis = redis_client(config), async_redis_client(config)
    keys = ApiKeyCache(ApiKeyRegistry(sync_redis, config.redis.key_prefix))
    topics = TopicNames(config.topics.prefix)
    publisher = Publisher(config.kafka, f"rampart-gateway-{gateway_id}", loop,
                          ack_timeout_s=gw.kafka_ack_timeout_ms / 1000)
    gateway = Gateway(
        gateway_id=gateway_id, keyring=keyring, keys=keys,
        limiter=RateLimiter(async_redis, config.redis.key_prefix, gw.rate_limit, gw.tenant_rate_limits,
                            gw.redis_failure_policy, gw.rate_limit_lease_ttl_s),
        publisher=publisher, topics=topics, audit=AuditLog(publisher.producer, topics.audit(), "gateway", gateway_id),
        metrics=metrics, max_in_flight=gw.max_in_flight, max_message_bytes=config.kafka.max_message_bytes,
        retry_after_s=gw.retry_after_s, encrypt_payloads=config.keyring.encrypt_unscrubbed)

    refresher = asyncio.create_task(_refresh_keys(keys, metrics, gw.apikey_refresh_interval_s))
    http_server = build_http_server(gateway, gw.max_request_bytes, gw.max_decompressed_bytes, gw.request_timeout_s)
    admin_runner = web.AppRunner(build_admin_app(registry, gateway.ready), access_log=None, handle_signals=False)
    grpc_server = build_grpc_server(gateway, gw.grpc_listen, gw.tls, gw.max_decompressed_bytes)
    await admin_runner.setup()
    try:
        host, port = split_listen(gw.http_listen)
        await http_server.start(host, port, ssl_context)
        host, port = split_listen(gw.admin_listen)
        await web.TCPSite(admin_runner, host, port).start()
    except OSError as exc:
        await http_server.stop(0)
        await admin_runner.cleanup()
        publisher.close(0)
        raise GatewayStartupError(f"cannot listen: {exc.strerror}") from None
    await grpc_server.start()
    log.info("gateway %s listening: OTLP/HTTP %s, OTLP/gRPC %s, admin %s, TLS %s", gateway_id, gw.http_listen,
             gw.grpc_listen, gw.admin_listen,
             "off" if ssl_context is None else ("mutual" if gw.tls.client_ca_file else "on"))

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("gateway %s stopping: no new requests, draining those in flight", gateway_id)
    await grpc_server.stop(gw.shutdown_timeout_s)
    await http_server.stop(gw.shutdown_timeout_s)
    refresher.cancel()
    # Every request has its answer now; what is still queued belongs to requests already answered 503.
    left = await asyncio.to_thread(publisher.close, gw.shutdown_timeout_s)
    await admin_runner.cleanup()
    await async_redis.aclose()
    sync_redis.close()
    log.info("gateway %s stopped (%d records undelivered at exit)", gateway_id, left)


async def _refresh_keys(keys: ApiKeyCache, metrics: GatewayMetrics, interval_s: float) -> None:
    failing = False
    while True:
        try:
            if await asyncio.to_thread(keys.refresh):
                table = keys.table
                metrics.apikeys_loaded.set(len(table) if table is not None else 0)
                metrics.apikey_table_version.set(table.version if table is not None else 0)
                log.info("API-key registry loaded (version %s, %d keys)",
                         table.version if table else "-", len(table) if table else 0)
            failing = False
        except redis.RedisError as exc:
            metrics.apikey_refresh_errors.inc()
            if not failing:
                log.warning("cannot reload API keys from Redis (%s); keeping the last loaded set",
                            type(exc).__name__)
            failing = True
        await asyncio.sleep(interval_s)
