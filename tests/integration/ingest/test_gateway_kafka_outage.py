"""With the broker stopped the gateway answers 503, never 200; once it is back every acknowledged batch
is in Kafka. This test stops and restarts the shared local broker (scripts/services)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from schemas.envelope import Signal, decode
from tests.integration.ingest import otlp_data
from tests.support.deployment import ROOT, Deployment, GatewayProcess, post, read_raw

pytestmark = pytest.mark.integration


def services(*args: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "services"), *args], capture_output=True,
                            text=True, timeout=180, check=False)
    assert result.returncode == 0, f"scripts/services {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    if args[0] == "down":
        assert "stopped" in result.stdout, (
            "this test restarts the local Kafka and needs one started by scripts/services; "
            f"found another one:\n{result.stdout}")


def send(gateway: GatewayProcess, token: str, marker: str) -> int:
    request = encode_spans(otlp_data.spans(2, service=marker))
    return post(f"{gateway.http_url}/v1/traces", request.SerializeToString(),
                {"Content-Type": "application/x-protobuf", "x-api-key": token})[0]


def readyz(gateway: GatewayProcess) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.admin_port}/readyz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_broker_outage_gives_503_and_loses_nothing_acknowledged(deployment: Deployment) -> None:
    # The loop below sends as fast as 503s come back (over 500 requests/s once rate-limit tokens are
    # leased): a limit it cannot reach keeps this test about the outage, not about rate limiting.
    gateway = deployment.start_gateway(RAMPART__GATEWAY__KAFKA_ACK_TIMEOUT_MS="1500",
                                       RAMPART__GATEWAY__RATE_LIMIT__REQUESTS_PER_S="1000000",
                                       RAMPART__GATEWAY__RATE_LIMIT__BURST_REQUESTS="1000000")
    _, token = deployment.api_key()
    acknowledged = [f"before-{i}" for i in range(5) if send(gateway, token, f"before-{i}") == 200]
    assert len(acknowledged) == 5

    services("down", "kafka")
    try:
        during = []
        deadline = time.monotonic() + 10
        i = 0
        while time.monotonic() < deadline:
            status = send(gateway, token, f"during-{i}")
            during.append(status)
            if status == 200:
                acknowledged.append(f"during-{i}")
            i += 1
        assert during and set(during) == {503}, f"answers while Kafka was down: {sorted(set(during))}"
        assert readyz(gateway) == 503
    finally:
        services("up", "kafka")

    deadline = time.monotonic() + 60
    while send(gateway, token, "probe") != 200:
        assert time.monotonic() < deadline, "gateway did not recover within 60 s of the broker's return"
        time.sleep(0.5)
    acknowledged.append("probe")
    acknowledged += [f"after-{i}" for i in range(5) if send(gateway, token, f"after-{i}") == 200]
    assert readyz(gateway) == 200

    found = set()
    for value in read_raw(deployment.kafka_bootstrap, deployment.topics.raw(Signal.TRACES), 30):
        request = ExportTraceServiceRequest.FromString(decode(value).payload)
        for rs in request.resource_spans:
            found |= {a.value.string_value for a in rs.resource.attributes if a.key == "service.name"}
    missing = [m for m in acknowledged if m not in found]
    assert not missing, f"acknowledged but not in Kafka: {missing}"
