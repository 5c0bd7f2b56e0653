"""Fixtures shared by every test folder."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.support import services
from tests.support.backend import CapturingBackend
from tests.support.deployment import Deployment, deployments


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return services.require_kafka()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return services.require_redis()


@pytest.fixture(scope="session")
def prometheus_url() -> str:
    return services.require_prometheus()


@pytest.fixture(scope="session")
def jaeger_url() -> str:
    return services.require_jaeger()


@pytest.fixture
def unique_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test uses, so tests never see each other's data."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return f"test.{name}.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def deployment(kafka_bootstrap: str, redis_url: str, unique_prefix: str,
               tmp_path: pathlib.Path) -> Iterator[Deployment]:
    """An isolated deployment (own topics, Redis prefix, key ring) whose gateways stop after the test."""
    yield from deployments(kafka_bootstrap, redis_url, unique_prefix, tmp_path)


@pytest.fixture(scope="module")
def module_deployment(kafka_bootstrap: str, redis_url: str, request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Like ``deployment``, shared by the tests of one module (for gateways that many tests reuse)."""
    name = request.module.__name__.rsplit(".", 1)[-1][:30]
    yield from deployments(kafka_bootstrap, redis_url, f"test.{name}.{uuid.uuid4().hex[:8]}",
                           tmp_path_factory.mktemp(name))


@pytest.fixture
def backend() -> Iterator[CapturingBackend]:
    """A real OTLP/HTTP receiver on 127.0.0.1 whose answers the test controls."""
    server = CapturingBackend()
    yield server
    server.close()


@pytest.fixture
def redis_key_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix no other test uses; its keys are deleted after the test."""
    value = f"test:{uuid.uuid4().hex[:8]}:"
    yield value
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{value}*"):
        client.delete(key)
