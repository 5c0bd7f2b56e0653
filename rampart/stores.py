"""Redis clients built from the config, in one place: gateway key registry and rate limits, dedup
marks, export budgets and the CLI all connect the same way."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from rampart.config import RampartConfig

__all__ = ["async_redis_client", "redis_client"]


def _options(config: RampartConfig) -> dict[str, object]:
    timeout = config.redis.socket_timeout_s
    return {"password": config.redis.password.reveal() if config.redis.password else None,
            "socket_timeout": timeout, "socket_connect_timeout": timeout}


def redis_client(config: RampartConfig) -> redis.Redis:
    return redis.Redis.from_url(config.redis.url, **_options(config))


def async_redis_client(config: RampartConfig) -> aioredis.Redis:
    return aioredis.Redis.from_url(config.redis.url, **_options(config))  # type: ignore[arg-type]
