"""Limits that protect the gateway: requests in flight, slow clients, and Redis going away."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from tests.integration.ingest import otlp_data
from tests.support.deployment import Deployment, GatewayProcess, post
from tests.support.proxy import CuttableProxy

pytestmark = pytest.mark.integration

TRACES = encode_spans(otlp_data.spans(3)).SerializeToString()


def send(gateway: GatewayProcess, token: str) -> tuple[int, dict[str, str], bytes]:
    return post(f"{gateway.http_url}/v1/traces", TRACES, {"Content-Type": "application/x-protobuf", "x-api-key": token})


def slow_client(gateway: GatewayProcess, token: str) -> socket.socket:
    """A client that sends its headers and 10 of the 1000 body bytes it announced, then waits."""
    s = socket.create_connection(("127.0.0.1", gateway.http_port))
    s.sendall(f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
              f"x-api-key: {token}\r\nContent-Length: 1000\r\n\r\n".encode() + b"\x0a" * 10)
    return s


def test_requests_beyond_max_in_flight_get_503(deployment: Deployment) -> None:
    gateway = deployment.start_gateway(RAMPART__GATEWAY__MAX_IN_FLIGHT="1")
    _, token = deployment.api_key()
    hog = slow_client(gateway, token)
    try:
        time.sleep(0.3)
        status, headers, _ = send(gateway, token)
        assert status == 503 and "Retry-After" in headers
    finally:
        hog.close()
    time.sleep(0.3)
    assert send(gateway, token)[0] == 200


def test_slow_body_is_cut_off_with_408(deployment: Deployment) -> None:
    gateway = deployment.start_gateway(RAMPART__GATEWAY__REQUEST_TIMEOUT_S="1")
    _, token = deployment.api_key()
    with slow_client(gateway, token) as s:
        s.settimeout(10)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408")
    assert send(gateway, token)[0] == 200  # other clients were served all along


@pytest.fixture
def redis_proxy() -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(6379)
    yield proxy
    proxy.close()


LEASE_TTL_S = 0.3


def gateway_behind(proxy: CuttableProxy, deployment: Deployment, policy: str) -> tuple[GatewayProcess, str]:
    """A gateway that reaches Redis only through ``proxy``, and a key it has loaded."""
    gateway = deployment.start_gateway(RAMPART__REDIS__URL=f"redis://127.0.0.1:{proxy.port}/0",
                                       RAMPART__REDIS__SOCKET_TIMEOUT_S="0.5",
                                       RAMPART__GATEWAY__REDIS_FAILURE_POLICY=policy,
                                       RAMPART__GATEWAY__RATE_LIMIT_LEASE_TTL_S=str(LEASE_TTL_S))
    _, token = deployment.api_key()
    assert send(gateway, token)[0] == 200
    return gateway, token


def cut_and_outlive_the_lease(proxy: CuttableProxy) -> None:
    """Cut Redis off, then wait until the rate-limit lease taken before the cut has expired: requests
    it covers were paid for while Redis answered, so the failure policy applies only after it."""
    proxy.cut()
    time.sleep(LEASE_TTL_S + 0.1)


def test_redis_outage_with_policy_open_lets_data_through_with_metric_and_audit(
        deployment: Deployment, redis_proxy: CuttableProxy) -> None:
    gateway, token = gateway_behind(redis_proxy, deployment, "open")
    cut_and_outlive_the_lease(redis_proxy)
    try:
        assert [send(gateway, token)[0] for _ in range(3)] == [200, 200, 200]  # the key cache still works
        assert 'rampart_gateway_ratelimit_redis_errors_total{policy="open"} 3.0' in gateway.metrics()
    finally:
        redis_proxy.restore()
    events = [json.loads(v) for v in deployment.read_audit()]
    assert any(e["event"] == "rate_limit_unchecked" for e in events)
    unchecked = [e for e in deployment.read_envelopes_any() if e.attributes.get("rampart.ratelimit") == "unchecked"]
    assert len(unchecked) == 3


def test_redis_outage_with_policy_closed_answers_503(deployment: Deployment, redis_proxy: CuttableProxy) -> None:
    gateway, token = gateway_behind(redis_proxy, deployment, "closed")
    cut_and_outlive_the_lease(redis_proxy)
    try:
        status, headers, _ = send(gateway, token)
        assert status == 503 and "Retry-After" in headers
    finally:
        redis_proxy.restore()
    deadline = time.monotonic() + 10
    while send(gateway, token)[0] != 200:
        assert time.monotonic() < deadline, "gateway did not recover after Redis came back"
        time.sleep(0.2)
