"""Fixtures shared by every test folder."""

from __future__ import annotations

import uuid

import pytest

from tests.support import services


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
