"""Every refusal the OTLP specification defines, each produced by sending exactly that mistake."""

from __future__ import annotations

import gzip
import json
import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from schemas.envelope import Signal
from tests.integration.ingest import otlp_data
from tests.support.deployment import Deployment, GatewayProcess, post

pytestmark = pytest.mark.integration

PROTO = {"Content-Type": "application/x-protobuf"}
TRACES = encode_spans(otlp_data.spans(5)).SerializeToString()


@pytest.fixture(scope="module")
def gateway(module_deployment: Deployment) -> GatewayProcess:
    return module_deployment.start_gateway(
        RAMPART__GATEWAY__MAX_REQUEST_BYTES=str(256 * 1024),
        RAMPART__GATEWAY__MAX_DECOMPRESSED_BYTES=str(1024 * 1024),
        RAMPART__GATEWAY__TENANT_RATE_LIMITS__SLOW__REQUESTS_PER_S="0.01",
        RAMPART__GATEWAY__TENANT_RATE_LIMITS__SLOW__BURST_REQUESTS="2")


@pytest.fixture(scope="module")
def token(module_deployment: Deployment, gateway: GatewayProcess) -> str:
    return module_deployment.api_key()[1]


def auth(token: str, **extra: str) -> dict[str, str]:
    return {**PROTO, "Authorization": f"Bearer {token}", **extra}


def status_message(body: bytes) -> str:
    return status_pb2.Status.FromString(body).message


# ---------------------------------------------------------------- OTLP/HTTP

def test_400_truncated_protobuf(gateway: GatewayProcess, token: str) -> None:
    status, headers, body = post(f"{gateway.http_url}/v1/traces", TRACES[:-7], auth(token))
    assert status == 400 and headers["Content-Type"] == "application/x-protobuf"
    assert "truncated" in status_message(body)


def test_400_json_that_is_not_an_object(gateway: GatewayProcess, token: str) -> None:
    status, _, body = post(f"{gateway.http_url}/v1/logs", b"[1, 2, 3]",
                           auth(token, **{"Content-Type": "application/json"}))
    assert status == 400
    assert json.loads(body) == {"code": 3, "message": "request body is not an OTLP logs JSON object"}


def test_400_body_that_is_not_gzip(gateway: GatewayProcess, token: str) -> None:
    status, _, body = post(f"{gateway.http_url}/v1/traces", TRACES, auth(token, **{"Content-Encoding": "gzip"}))
    assert status == 400 and "not valid gzip" in status_message(body)


def test_401_without_a_key(gateway: GatewayProcess) -> None:
    status, _, body = post(f"{gateway.http_url}/v1/traces", TRACES, PROTO)
    assert status == 401 and "missing API key" in status_message(body)


def test_401_with_a_wrong_secret(gateway: GatewayProcess, token: str) -> None:
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    status, _, body = post(f"{gateway.http_url}/v1/traces", TRACES, auth(forged))
    assert status == 401 and status_message(body) == "invalid API key"


def test_401_with_a_malformed_key_and_basic_auth(gateway: GatewayProcess) -> None:
    assert post(f"{gateway.http_url}/v1/traces", TRACES, {**PROTO, "x-api-key": "hunter2"})[0] == 401
    assert post(f"{gateway.http_url}/v1/traces", TRACES, {**PROTO, "Authorization": "Basic dTpw"})[0] == 401


def test_401_with_a_revoked_key_and_an_audit_event(module_deployment: Deployment, gateway: GatewayProcess) -> None:
    key_id, token = module_deployment.api_key()
    assert post(f"{gateway.http_url}/v1/traces", TRACES, auth(token))[0] == 200
    module_deployment.registry.revoke(key_id)
    module_deployment.wait_for_key_table()
    status, _, body = post(f"{gateway.http_url}/v1/traces", TRACES, auth(token))
    assert status == 401 and "revoked" in status_message(body)
    # The gateway answers before its audit producer has delivered the event: give it a moment.
    deadline = time.monotonic() + 15
    events = [json.loads(v) for v in module_deployment.read_audit()]
    while not any(e["event"] == "revoked_key_use" and e["principal"] == key_id for e in events) \
            and time.monotonic() < deadline:
        time.sleep(0.3)
        events = [json.loads(v) for v in module_deployment.read_audit()]
    assert any(e["event"] == "revoked_key_use" and e["principal"] == key_id for e in events)
    # Never the secret: what follows the second "_" of rpk_<hex id>_<secret> (it may hold "_" itself,
    # so the part after the last one can be a letter or two that any event contains).
    assert not any(token.split("_", 2)[2] in json.dumps(e) for e in events)


def test_403_signal_the_key_may_not_send(module_deployment: Deployment, gateway: GatewayProcess) -> None:
    _, token = module_deployment.registry.create("acme", [Signal.METRICS], "metrics only")
    module_deployment.wait_for_key_table()
    status, _, body = post(f"{gateway.http_url}/v1/traces", TRACES, auth(token))
    assert status == 403 and status_message(body) == "this API key may not send traces (allowed: metrics)"


def test_404_unknown_path(gateway: GatewayProcess, token: str) -> None:
    assert post(f"{gateway.http_url}/v1/profiles", TRACES, auth(token))[0] == 404
    assert post(f"{gateway.http_url}/v2/traces", TRACES, auth(token))[0] == 404


def test_405_wrong_method(gateway: GatewayProcess, token: str) -> None:
    assert post(f"{gateway.http_url}/v1/traces", b"", auth(token), method="GET")[0] == 405


def test_413_body_larger_than_the_limit(gateway: GatewayProcess, token: str) -> None:
    status, _, body = post(f"{gateway.http_url}/v1/traces", b"\x0a" * (300 * 1024), auth(token))
    assert status == 413 and "exceeds the limit" in status_message(body)


def test_413_gzip_bomb_is_refused_while_inflating(gateway: GatewayProcess, token: str) -> None:
    bomb = gzip.compress(bytes(200 * 1024 * 1024), compresslevel=9)  # 200 MiB of zeros in ~200 KiB
    assert len(bomb) < 256 * 1024
    status, _, body = post(f"{gateway.http_url}/v1/traces", bomb, auth(token, **{"Content-Encoding": "gzip"}))
    assert status == 413 and "inflates to more than 1048576 bytes" in status_message(body)


def test_415_unsupported_content_type(gateway: GatewayProcess, token: str) -> None:
    status, _, body = post(f"{gateway.http_url}/v1/traces", TRACES, auth(token, **{"Content-Type": "text/plain"}))
    assert status == 415 and "unsupported Content-Type 'text/plain'" in status_message(body)


def test_415_unsupported_content_encoding(gateway: GatewayProcess, token: str) -> None:
    status, _, body = post(f"{gateway.http_url}/v1/traces", TRACES, auth(token, **{"Content-Encoding": "br"}))
    assert status == 415 and "Content-Encoding 'br'" in status_message(body)


def test_429_with_retry_after_when_the_tenant_is_over_its_limit(module_deployment: Deployment,
                                                                gateway: GatewayProcess) -> None:
    _, token = module_deployment.api_key(tenant="slow")
    answers = [post(f"{gateway.http_url}/v1/traces", TRACES, auth(token)) for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 429, 429]
    assert int(answers[2][1]["Retry-After"]) >= 1
    events = [json.loads(v) for v in module_deployment.read_audit()]
    assert any(e["event"] == "rate_limited" and e["tenant"] == "slow" for e in events)


def test_503_with_retry_after_when_kafka_does_not_acknowledge(module_deployment: Deployment) -> None:
    # Topics of another prefix that was never created: Kafka cannot take the batch, so nothing may be
    # acknowledged to the client.
    orphan = module_deployment.start_gateway(RAMPART__TOPICS__PREFIX="never.created",
                                             RAMPART__GATEWAY__KAFKA_ACK_TIMEOUT_MS="1000")
    _, token = module_deployment.api_key()
    status, headers, body = post(f"{orphan.http_url}/v1/traces", TRACES, auth(token))
    assert status == 503 and headers["Retry-After"] == "2"
    assert "did not acknowledge" in status_message(body)


# ---------------------------------------------------------------- OTLP/gRPC

def grpc_export(gateway: GatewayProcess, body: bytes, metadata: tuple[tuple[str, str], ...]) -> grpc.RpcError:
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError) as info:
            export(body, metadata=metadata, timeout=10)
    return info.value


def retry_delay_s(error: grpc.RpcError) -> int:
    details = dict(error.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    return info.retry_delay.seconds


def test_grpc_unauthenticated(gateway: GatewayProcess) -> None:
    error = grpc_export(gateway, TRACES, ())
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED and "missing API key" in error.details()


def test_grpc_permission_denied(module_deployment: Deployment, gateway: GatewayProcess) -> None:
    _, token = module_deployment.api_key(signals=(Signal.LOGS,))
    error = grpc_export(gateway, TRACES, (("authorization", f"Bearer {token}"),))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


def test_grpc_invalid_argument(gateway: GatewayProcess, token: str) -> None:
    error = grpc_export(gateway, TRACES[:-3], (("x-api-key", token),))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "truncated" in error.details()


def test_grpc_resource_exhausted_with_retry_info(module_deployment: Deployment, gateway: GatewayProcess) -> None:
    _, token = module_deployment.api_key(tenant="slow")
    errors = []
    for _ in range(4):
        with grpc.insecure_channel(gateway.grpc_target) as channel:
            export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            try:
                export(TRACES, metadata=(("x-api-key", token),), timeout=10)
            except grpc.RpcError as exc:
                errors.append(exc)
    assert errors and all(e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED for e in errors)
    assert retry_delay_s(errors[0]) >= 1


def test_grpc_unavailable_with_retry_info(module_deployment: Deployment) -> None:
    orphan = module_deployment.start_gateway(RAMPART__TOPICS__PREFIX="never.created",
                                             RAMPART__GATEWAY__KAFKA_ACK_TIMEOUT_MS="1000")
    _, token = module_deployment.api_key()
    error = grpc_export(orphan, TRACES, (("x-api-key", token),))
    assert error.code() is grpc.StatusCode.UNAVAILABLE and retry_delay_s(error) == 2


def test_grpc_message_inflating_past_the_limit_is_refused(gateway: GatewayProcess, token: str) -> None:
    # 8 MiB that gzip squeezes to a few KiB: gRPC must refuse it by its inflated size (limit 1 MiB here).
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError) as info:
            export(b"\x0a" * (8 * 1024 * 1024), metadata=(("x-api-key", token),), timeout=10,
                   compression=grpc.Compression.Gzip)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
