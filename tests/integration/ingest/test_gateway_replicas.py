"""Several gateway replicas behind one load balancer act as one: shared limits, shared revocation."""

from __future__ import annotations

import time

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from tests.integration.ingest import otlp_data
from tests.support.deployment import Deployment, GatewayProcess, post

pytestmark = pytest.mark.integration

TRACES = encode_spans(otlp_data.spans(3)).SerializeToString()


def send(gateway: GatewayProcess, token: str) -> int:
    return post(f"{gateway.http_url}/v1/traces", TRACES,
                {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {token}"})[0]


def test_tenant_limit_holds_across_two_gateways(deployment: Deployment) -> None:
    limits = {"RAMPART__GATEWAY__TENANT_RATE_LIMITS__SHARED__REQUESTS_PER_S": "0.05",
              "RAMPART__GATEWAY__TENANT_RATE_LIMITS__SHARED__BURST_REQUESTS": "6"}
    a, b = deployment.start_gateway(**limits), deployment.start_gateway(**limits)
    _, token = deployment.api_key(tenant="shared")
    started = time.monotonic()
    answers = [(gw, send(gw, token)) for _ in range(8) for gw in (a, b)]
    elapsed = time.monotonic() - started
    accepted = [gw for gw, status in answers if status == 200]
    # Each replica alone would accept 6; together they accept the tenant's 6 (plus what refilled meanwhile).
    assert 6 <= len(accepted) <= 6 + int(elapsed * 0.05) + 1
    assert {status for _, status in answers} == {200, 429}
    assert any(gw is a for gw in accepted) and any(gw is b for gw in accepted)
    assert any(gw is a and s == 429 for gw, s in answers) and any(gw is b and s == 429 for gw, s in answers)


def test_revocation_reaches_every_replica_within_the_refresh_interval(deployment: Deployment) -> None:
    # apikey_refresh_interval_s is 0.5 s in tests (the default is 2 s): the documented bound.
    a, b = deployment.start_gateway(), deployment.start_gateway()
    key_id, token = deployment.api_key()
    assert send(a, token) == 200 and send(b, token) == 200
    deployment.registry.revoke(key_id)
    revoked_at = time.monotonic()
    pending = {a, b}
    while pending and time.monotonic() - revoked_at < 5.0:
        pending = {gw for gw in pending if send(gw, token) != 401}
        time.sleep(0.05)
    assert not pending, "a replica still accepted the revoked key 5 s after revocation"


def test_other_tenants_are_not_slowed_by_a_throttled_one(deployment: Deployment) -> None:
    gateway = deployment.start_gateway(RAMPART__GATEWAY__TENANT_RATE_LIMITS__NOISY__REQUESTS_PER_S="0.01",
                                       RAMPART__GATEWAY__TENANT_RATE_LIMITS__NOISY__BURST_REQUESTS="1")
    _, noisy = deployment.api_key(tenant="noisy")
    _, quiet = deployment.api_key(tenant="quiet")
    assert [send(gateway, noisy) for _ in range(3)] == [200, 429, 429]
    assert [send(gateway, quiet) for _ in range(3)] == [200, 200, 200]
