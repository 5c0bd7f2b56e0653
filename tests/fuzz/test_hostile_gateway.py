"""Hostile requests against a real gateway process: each gets a clean 4xx with a message that names
the problem (or, for payloads the gateway does not decode, is accepted and left to the stages), the
process stays alive, keeps serving other clients, and its memory stays bounded.

Memory is the gateway's peak resident set (VmHWM, reset through /proc/<pid>/clear_refs before each
case) compared with its resident set before the case. Raw framing (smuggling, slow clients) goes
over plain sockets. The last tests fuzz raw HTTP requests and gRPC bodies against the live process
(RAMPART_FUZZ_EXAMPLES, 200 by default).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.rpc import status_pb2
from hypothesis import given
from hypothesis import strategies as st

from schemas.envelope import Signal
from tests.data.hostile import corpus
from tests.fuzz.support import FUZZ, mutated
from tests.support.deployment import Deployment, GatewayProcess, post

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
MEMORY_BOUND = 300 * MiB
REQUEST_TIMEOUT_S = 2
TRACES = corpus.traces(corpus.span())


@pytest.fixture(scope="module")
def gateway(module_deployment: Deployment) -> GatewayProcess:
    # Default size limits (16 MiB bodies, 64 MiB inflated, 10 MiB Kafka records); a short request
    # timeout so that slow clients are cut off quickly.
    return module_deployment.start_gateway(RAMPART__GATEWAY__REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S))


@pytest.fixture(scope="module")
def token(module_deployment: Deployment, gateway: GatewayProcess) -> str:
    return module_deployment.api_key()[1]


@pytest.fixture(scope="module")
def smuggler(module_deployment: Deployment, gateway: GatewayProcess) -> str:
    """The key behind requests that try to smuggle a second one: nothing of its tenant may reach Kafka."""
    return module_deployment.api_key(tenant="smuggler")[1]


def headers(token: str, content_type: str = "application/x-protobuf", **extra: str) -> dict[str, str]:
    return {"Content-Type": content_type, "x-api-key": token, **extra}


def message(body: bytes) -> str:
    try:
        return str(json.loads(body)["message"])
    except ValueError:
        return str(status_pb2.Status.FromString(body).message)


def serves(gateway: GatewayProcess, token: str) -> bool:
    """The gateway is alive and a normal request succeeds."""
    assert gateway.proc is not None and gateway.proc.poll() is None, "the gateway process died"
    return post(f"{gateway.http_url}/v1/traces", TRACES, headers(token))[0] == 200


def memory(gateway: GatewayProcess, field: str) -> int:
    assert gateway.proc is not None
    with open(f"/proc/{gateway.proc.pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


@contextlib.contextmanager
def bounded_memory(gateway: GatewayProcess, bound: int = MEMORY_BOUND) -> Iterator[None]:
    """The gateway's peak RSS during the block may exceed its RSS before by at most ``bound``."""
    assert gateway.proc is not None
    with open(f"/proc/{gateway.proc.pid}/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current RSS
    before = memory(gateway, "VmRSS")
    yield
    grown = memory(gateway, "VmHWM") - before
    print(f"gateway peak RSS grew by {grown / MiB:.0f} MiB")
    assert grown < bound, f"gateway peak RSS grew by {grown / MiB:.0f} MiB"


def raw_exchange(gateway: GatewayProcess, data: bytes, timeout_s: float = 10, hang_up: bool = False) -> bytes:
    """Send raw bytes on a new connection and read until the server closes it (or goes quiet);
    ``hang_up``: close our sending side once everything is sent, as a client that gives up does."""
    with socket.create_connection(("127.0.0.1", gateway.http_port)) as s:
        s.settimeout(timeout_s)
        with contextlib.suppress(OSError):
            s.sendall(data)
            if hang_up:
                s.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                answer += chunk
        return answer


def statuses(answer: bytes) -> list[int]:
    """The status of each response in ``answer``, read head by head (bodies skipped by Content-Length)."""
    found, pos = [], 0
    while (end := answer.find(b"\r\n\r\n", pos)) >= 0 and answer.startswith(b"HTTP/1.", pos):
        head = answer[pos:end].split(b"\r\n")
        found.append(int(head[0].split()[1]))
        length = next((int(line.split(b":", 1)[1]) for line in head[1:]
                       if line.lower().startswith(b"content-length:")), 0)
        pos = end + 4 + length
    return found


def request_head(token: str, path: str = "/v1/traces", extra: str = "", version: str = "1.1") -> str:
    return (f"POST {path} HTTP/{version}\r\nHost: gw\r\nContent-Type: application/x-protobuf\r\n"
            f"x-api-key: {token}\r\n{extra}")


# ---------------------------------------------------------------- size and memory

def test_gzip_bomb_is_refused_while_inflating_with_bounded_memory(gateway: GatewayProcess, token: str) -> None:
    bomb = corpus.gzip_bomb(1024 * MiB)  # 1 GiB of zeros in about 1 MiB
    with bounded_memory(gateway):
        status, _, body = post(f"{gateway.http_url}/v1/traces", bomb, headers(token, **{"Content-Encoding": "gzip"}))
    assert status == 413 and message(body) == "request body inflates to more than 67108864 bytes"
    assert serves(gateway, token)


def test_grpc_gzip_bomb_is_refused_with_bounded_memory(gateway: GatewayProcess, token: str) -> None:
    with bounded_memory(gateway), grpc.insecure_channel(gateway.grpc_target) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError) as info:  # 256 MiB of zeros, gzip-compressed by the client
            export(bytes(256 * MiB), metadata=(("x-api-key", token),), timeout=60, compression=grpc.Compression.Gzip)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert serves(gateway, token)


def test_refused_requests_do_not_pile_up_in_memory(gateway: GatewayProcess, token: str) -> None:
    # Found by this corpus: a refused request's body stayed in a reference cycle (the error, its
    # traceback, the handler's frame; over gRPC also the RPC state) until the cycle collector ran.
    # Ten gzip bombs left 900 MB resident; unauthenticated 40 MB gRPC requests 40-60 MB each.
    bomb = corpus.gzip_bomb(256 * MiB)
    big = b"\x0a\x05" + bytes(40 * MiB)
    gzip_headers = headers(token, **{"Content-Encoding": "gzip"})
    with grpc.insecure_channel(gateway.grpc_target, options=[("grpc.max_send_message_length", -1)]) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")

        def refused_grpc(key: str) -> grpc.StatusCode:
            with pytest.raises(grpc.RpcError) as info:
                export(big, metadata=(("x-api-key", key),), timeout=30)
            return info.value.code()

        assert post(f"{gateway.http_url}/v1/traces", bomb, gzip_headers)[0] == 413  # warm up both paths
        assert refused_grpc("rpk_nonsense") is grpc.StatusCode.UNAUTHENTICATED
        before = memory(gateway, "VmRSS")
        for _ in range(8):
            assert post(f"{gateway.http_url}/v1/traces", bomb, gzip_headers)[0] == 413
        after_http = memory(gateway, "VmRSS")
        for key in ["rpk_nonsense", token] * 4:
            assert refused_grpc(key) in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)
        after_grpc = memory(gateway, "VmRSS")
    print(f"resident after 8 bombs: {(after_http - before) / MiB:+.0f} MiB, "
          f"after 8 refused gRPC requests: {(after_grpc - after_http) / MiB:+.0f} MiB")
    assert after_http - before < 100 * MiB
    assert after_grpc - after_http < 200 * MiB
    assert serves(gateway, token)


def test_100_mb_body_is_refused_by_its_length_or_while_reading(gateway: GatewayProcess, token: str) -> None:
    body = corpus.huge_string_span(100 * MiB)
    with bounded_memory(gateway):
        # Refused by its Content-Length, before the body is read (the first MiB is sent).
        with socket.create_connection(("127.0.0.1", gateway.http_port)) as s:
            s.sendall(request_head(token, extra=f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:MiB])
            s.settimeout(10)
            announced = s.recv(65536)
        assert statuses(announced) == [413] and b"exceeds the limit of 16777216" in announced
        chunked = raw_exchange(gateway, request_head(token, extra="Transfer-Encoding: chunked\r\n\r\n").encode()
                               + b"".join(b"%x\r\n%s\r\n" % (MiB, body[i:i + MiB]) for i in range(0, len(body), MiB))
                               + b"0\r\n\r\n", timeout_s=30, hang_up=True)
    assert statuses(chunked) == [413] and b"exceeds the limit of 16777216 bytes" in chunked
    assert serves(gateway, token)


def test_100_mb_string_gzipped_is_refused_while_inflating(gateway: GatewayProcess, token: str) -> None:
    compressed = corpus.gzip_members(corpus.huge_string_span(100 * MiB))
    assert len(compressed) < MiB
    with bounded_memory(gateway):
        status, _, body = post(f"{gateway.http_url}/v1/traces", compressed,
                               headers(token, **{"Content-Encoding": "gzip"}))
    assert status == 413 and "inflates to more than" in message(body)
    assert serves(gateway, token)


def test_a_million_attributes_are_accepted_undecoded_and_two_million_refused(module_deployment: Deployment,
                                                                            gateway: GatewayProcess,
                                                                            token: str) -> None:
    with bounded_memory(gateway):
        # 7 MB: fits a Kafka record, so the gateway signs it as it is; validate rejects the span.
        assert post(f"{gateway.http_url}/v1/traces", corpus.many_attributes(1_000_000), headers(token))[0] == 200
        # 14 MB in one span: too big for a record and cannot be split.
        status, _, body = post(f"{gateway.http_url}/v1/traces", corpus.many_attributes(2_000_000), headers(token))
    assert status == 413 and "a single record of 14000" in message(body)
    assert serves(gateway, token)


def test_millions_of_tiny_items_do_not_stall_other_clients(gateway: GatewayProcess, token: str) -> None:
    # Found by this corpus: 16 MiB of empty resources held the event loop for 21 s (the framing
    # check) and then 99 s and 5.4 GB (splitting); every other client waited.
    payload = corpus.empty_resources(8 * MiB)
    answer: list[int] = []
    latencies = []
    with bounded_memory(gateway):
        big = threading.Thread(target=lambda: answer.append(
            post(f"{gateway.http_url}/v1/traces", payload, headers(token))[0]))
        big.start()
        while big.is_alive():
            started = time.monotonic()
            assert serves(gateway, token)
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
        big.join()
    assert answer == [200]
    assert max(latencies) < 5, latencies  # hang detection, not a speed test


# ---------------------------------------------------------------- what the gateway leaves to the stages

@pytest.mark.parametrize("payload", [
    corpus.deep_attribute_span(5000), corpus.invalid_utf8_span(), corpus.truncated_inside(),
    corpus.wrong_wire_types(), corpus.zero_ids(), corpus.timestamps(0, 2**64 - 1),
], ids=["nested_5000", "invalid_utf8", "truncated_inside", "wrong_wire_types", "zero_ids", "timestamps"])
def test_payloads_the_gateway_does_not_decode_are_signed_as_they_came(module_deployment: Deployment,
                                                                     gateway: GatewayProcess, token: str,
                                                                     payload: bytes) -> None:
    # The gateway only checks the outer framing; tests/fuzz/test_hostile_stages.py shows what the
    # stages make of each of these (quarantine or reject, with the reason).
    assert post(f"{gateway.http_url}/v1/logs", payload, headers(token))[0] == 200
    assert any(e.payload == payload for e in module_deployment.read_envelopes_any(Signal.LOGS))


@pytest.mark.parametrize(("content_type", "body", "status", "text"), [
    ("application/grpc", TRACES, 415, "unsupported Content-Type 'application/grpc'"),
    ("", TRACES, 415, "unsupported Content-Type '(none)'"),
    ("multipart/form-data; boundary=x", TRACES, 415, "unsupported Content-Type 'multipart/form-data'"),
    ("application/json", TRACES, 400, "not an OTLP traces JSON object"),
    ("application/x-protobuf", b'{"resourceSpans": []}', 400, "not an OTLP traces protobuf message"),
    ("application/x-protobuf; charset=binary", TRACES, 200, ""),
], ids=["grpc", "none", "multipart", "json_with_protobuf_body", "protobuf_with_json_body", "parameters_ignored"])
def test_content_types(gateway: GatewayProcess, token: str, content_type: str, body: bytes, status: int,
                       text: str) -> None:
    answer_status, _, answer = post(f"{gateway.http_url}/v1/traces", body, headers(token, content_type))
    assert answer_status == status
    assert text in (message(answer) if status != 200 else "")


def test_gzip_with_several_members_is_inflated_whole_and_trailing_garbage_refused(
        module_deployment: Deployment, gateway: GatewayProcess, token: str) -> None:
    # Found by this corpus: everything after the first gzip member was dropped silently (200).
    first, second = corpus.traces(corpus.span(name="first")), corpus.traces(corpus.span(name="second"))
    gzip_headers = headers(token, **{"Content-Encoding": "gzip"})
    assert post(f"{gateway.http_url}/v1/metrics", corpus.gzip_members(first, second), gzip_headers)[0] == 200
    assert any(e.payload == first + second for e in module_deployment.read_envelopes_any(Signal.METRICS))
    status, _, body = post(f"{gateway.http_url}/v1/traces", corpus.gzip_members(first) + b"garbage", gzip_headers)
    assert status == 400 and message(body) == "request body is not valid gzip data"


# ---------------------------------------------------------------- oversized JSON (the split path)

def _big_json(inner: bytes) -> bytes:
    return b'{"resourceSpans": [' + inner + b"]}" + b" " * (11 * MiB)  # past the 10 MiB record limit


@pytest.mark.parametrize(("body", "status", "text"), [
    # Found by this corpus: these two answered 500 (RecursionError, AttributeError escaping).
    (_big_json(b"[" * 100_000 + b"]" * 100_000), 400, "not valid OTLP traces JSON"),
    (b'{"resourceSpans": [1, "' + b"x" * (11 * MiB) + b'"]}', 400,
     "an entry that should hold scopeSpans is not an object"),
    (_big_json(b'{"scopeSpans": [], "scopeSpans": []}'), 400, "not valid OTLP traces JSON"),
    # 15 MB of empty objects: 38 s and 426 MB to split before; refused before decoding now.
    (b'{"resourceSpans": [' + b"{}," * (5 * MiB) + b"{}]}", 413, "too large to split here"),
], ids=["nested_100000", "resources_not_objects", "duplicate_keys", "empty_objects"])
def test_oversized_json_is_refused_cleanly(gateway: GatewayProcess, token: str, body: bytes, status: int,
                                          text: str) -> None:
    with bounded_memory(gateway):
        answer_status, _, answer = post(f"{gateway.http_url}/v1/traces", body, headers(token, "application/json"))
    assert answer_status == status and text in message(answer)
    assert serves(gateway, token)


# ---------------------------------------------------------------- request smuggling and framing

SMUGGLED = "POST /v1/logs HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-protobuf\r\nx-api-key: {token}\r\n" \
           "Content-Length: {length}\r\n\r\n"

FRAMING: dict[str, Callable[[str], bytes]] = {
    "content_length_and_chunked": lambda t: (
        request_head(t, extra="Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        + SMUGGLED.format(token=t, length=len(TRACES))).encode() + TRACES,
    "chunked_and_content_length": lambda t: (
        request_head(t, extra="Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n")
        + SMUGGLED.format(token=t, length=len(TRACES))).encode() + TRACES,
    "two_content_lengths": lambda t: request_head(
        t, extra=f"Content-Length: {len(TRACES)}\r\nContent-Length: 3\r\n\r\n").encode() + TRACES,
    "content_length_list": lambda t: request_head(
        t, extra=f"Content-Length: {len(TRACES)}, {len(TRACES)}\r\n\r\n").encode() + TRACES,
    "transfer_encoding_xchunked": lambda t: request_head(t, extra="Transfer-Encoding: xchunked\r\n\r\n").encode(),
    "transfer_encoding_chunked_identity": lambda t: request_head(
        t, extra="Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n").encode(),
    "transfer_encoding_twice": lambda t: request_head(
        t, extra="Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n").encode(),
    "space_before_colon": lambda t: request_head(t, extra="Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n").encode(),
    "vertical_tab_in_value": lambda t: request_head(
        t, extra="Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n").encode(),
    "chunk_size_overflow": lambda t: request_head(
        t, extra="Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nab\r\n0\r\n\r\n").encode(),
    "negative_chunk_size": lambda t: request_head(
        t, extra="Transfer-Encoding: chunked\r\n\r\n-5\r\nab\r\n0\r\n\r\n").encode(),
    "negative_content_length": lambda t: request_head(t, extra="Content-Length: -1\r\n\r\n").encode(),
    "content_length_with_plus": lambda t: request_head(
        t, extra=f"Content-Length: +{len(TRACES)}\r\n\r\n").encode() + TRACES,
    "content_length_overflow": lambda t: request_head(
        t, extra="Content-Length: 99999999999999999999999\r\n\r\n").encode(),
    "obsolete_line_folding": lambda t: request_head(
        t, extra=f"X-A: a\r\n b\r\nContent-Length: {len(TRACES)}\r\n\r\n").encode() + TRACES,
    "nul_in_header_value": lambda t: request_head(
        t, extra=f"X-A: a\x00b\r\nContent-Length: {len(TRACES)}\r\n\r\n").encode() + TRACES,
    "bare_line_feeds": lambda t: request_head(t, extra=f"Content-Length: {len(TRACES)}\r\n\r\n")
    .replace("\r\n", "\n").encode() + TRACES,
    "body_without_length": lambda t: request_head(t, extra="\r\n").encode() + TRACES,
    "http2_preface": lambda _t: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "200_headers": lambda t: request_head(t, extra="".join(f"X-{i}: a\r\n" for i in range(200)) + "\r\n").encode(),
    "100_kb_header": lambda t: request_head(t, extra=f"X-A: {'a' * 100_000}\r\n\r\n").encode(),
    "100_kb_url": lambda t: request_head(t, path="/v1/traces?" + "a" * 100_000, extra="\r\n").encode(),
}


@pytest.mark.parametrize("case", list(FRAMING))
def test_ambiguous_or_broken_framing_gets_400_and_a_closed_connection(module_deployment: Deployment,
                                                                     gateway: GatewayProcess, token: str,
                                                                     smuggler: str, case: str) -> None:
    answer = raw_exchange(gateway, FRAMING[case](smuggler))
    # One answer, then the connection is closed: nothing after the broken request is read as another.
    assert statuses(answer) == [400], answer[:300]
    assert serves(gateway, token)
    assert not [e for e in module_deployment.read_envelopes_any(Signal.LOGS) if e.tenant == "smuggler"]


def test_bytes_after_an_http_1_0_request_are_refused_not_read_as_another(module_deployment: Deployment,
                                                                        gateway: GatewayProcess, token: str,
                                                                        smuggler: str) -> None:
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(TRACES), TRACES)
    answer = raw_exchange(gateway, request_head(smuggler, version="1.0", extra="Transfer-Encoding: chunked\r\n\r\n")
                          .encode() + body + SMUGGLED.format(token=smuggler, length=len(TRACES)).encode() + TRACES)
    assert statuses(answer) == [400] and b"Data after `Connection: close`" in answer
    assert serves(gateway, token)
    assert not [e for e in module_deployment.read_envelopes_any(Signal.LOGS) if e.tenant == "smuggler"]


def test_pipelined_requests_are_answered_in_order_on_one_connection(gateway: GatewayProcess, token: str) -> None:
    one = request_head(token, extra=f"Content-Length: {len(TRACES)}\r\n\r\n").encode() + TRACES
    unknown = request_head(token, path="/v1/profiles", extra="Content-Length: 0\r\n\r\n").encode()
    last = request_head(token, extra=f"Content-Length: {len(TRACES)}\r\nConnection: close\r\n\r\n").encode()
    answer = raw_exchange(gateway, one * 3 + unknown + one + last + TRACES)
    assert statuses(answer) == [200, 200, 200, 404, 200, 200], answer[:300]


def test_large_requests_one_after_another_on_one_connection(gateway: GatewayProcess, token: str) -> None:
    # Found by the benchmark: the end of a large body, read together with nothing after it, was
    # counted towards the next request's 64 KiB of headers, and that request was refused.
    big = corpus.huge_string_span(400 * 1024)
    one = request_head(token, extra=f"Content-Length: {len(big)}\r\n\r\n").encode() + big
    with socket.create_connection(("127.0.0.1", gateway.http_port)) as s:
        s.settimeout(10)
        answers = []
        for _ in range(5):
            s.sendall(one)
            answer = b""
            while b"\r\n\r\n" not in answer and (chunk := s.recv(65536)):
                answer += chunk
            answers += statuses(answer)
    assert answers == [200] * 5


def test_a_client_that_hangs_up_mid_body_is_counted_as_refused(gateway: GatewayProcess, token: str) -> None:
    # Found by this corpus: the read error escaped the handler (an ERROR log line with a traceback
    # per request) and the request was counted as code 200.
    def count(code: str) -> float:
        prefix = f'rampart_gateway_requests_total{{code="{code}",signal="traces",tenant="acme",transport="http"}}'
        return sum(float(line.rsplit(" ", 1)[1]) for line in gateway.metrics().splitlines()
                   if line.startswith(prefix))

    ok, refused, log_start = count("200"), count("400"), len(gateway.log())
    for extra, body in (("Content-Length: 1000\r\n\r\n", b"\x0a" * 10),
                        ("Transfer-Encoding: chunked\r\n\r\n", b"5\r\nab")):
        with socket.create_connection(("127.0.0.1", gateway.http_port)) as s:
            s.sendall(request_head(token, extra=extra).encode() + body)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            assert s.recv(4096) == b""
    deadline = time.monotonic() + 5
    while count("400") < refused + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count("400") == refused + 2 and count("200") == ok
    assert "Error handling request" not in gateway.log()[log_start:]


def test_unknown_expectation_gets_417(gateway: GatewayProcess, token: str) -> None:
    answer = raw_exchange(gateway, request_head(token, extra=f"Expect: 999-weird\r\nContent-Length: {len(TRACES)}"
                                                            "\r\nConnection: close\r\n\r\n").encode() + TRACES)
    assert statuses(answer) == [417]


def test_100_continue_only_for_an_authenticated_client(gateway: GatewayProcess, token: str) -> None:
    # A client that asks before sending its body gets "go ahead" only once its key checks out; one
    # with a bad key gets its 401 without the gateway ever asking for the body.
    def ask(key: str) -> tuple[bytes, socket.socket]:
        s = socket.create_connection(("127.0.0.1", gateway.http_port))
        s.settimeout(10)
        s.sendall(request_head(key, extra=f"Expect: 100-continue\r\nContent-Length: {len(TRACES)}\r\n"
                                          "Connection: close\r\n\r\n").encode())
        return s.recv(65536), s

    first, s = ask(token)
    with s:
        assert statuses(first) == [100], first[:200]
        s.sendall(TRACES)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert statuses(answer) == [200], answer[:200]
    first, s = ask("rpk_0000000000000000_not-a-key")
    with s:
        assert statuses(first) == [401], first[:200]


# ---------------------------------------------------------------- slow clients

def test_slow_loris_clients_are_cut_off_and_others_are_served(gateway: GatewayProcess, token: str) -> None:
    # Found by this corpus: a client trickling its headers kept its connection for aiohttp's default
    # keep-alive timeout, an hour; headers now have request_timeout_s, like the body (408).
    header_tricklers = [socket.create_connection(("127.0.0.1", gateway.http_port)) for _ in range(100)]
    body_tricklers = [socket.create_connection(("127.0.0.1", gateway.http_port)) for _ in range(20)]
    silent = [socket.create_connection(("127.0.0.1", gateway.http_port)) for _ in range(20)]
    head = request_head(token, extra="Content-Length: 100000\r\n\r\n").encode()
    started = time.monotonic()
    try:
        for s in body_tricklers:
            s.sendall(head + b"\x0a")
        for round_ in range(3 * REQUEST_TIMEOUT_S * 2):
            for s in header_tricklers:
                with contextlib.suppress(OSError):
                    s.send(head[round_:round_ + 1])
            for s in body_tricklers:
                with contextlib.suppress(OSError):
                    s.send(b"\x00")
            assert serves(gateway, token)  # others are served all along
            time.sleep(0.5)
        for s in header_tricklers + silent:  # cut off without an answer (they never sent a request)
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1024) == b""
        for s in body_tricklers:
            s.settimeout(5)
            assert s.recv(4096).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 30
    finally:
        for s in header_tricklers + body_tricklers + silent:
            s.close()
    assert serves(gateway, token)


# ---------------------------------------------------------------- fuzzing the live process

HTTP_STATUSES = {200, 400, 401, 403, 404, 405, 408, 413, 414, 415, 417, 431, 501, 505}


@st.composite
def raw_requests(draw: st.DrawFn, token: str) -> bytes:
    body = draw(st.sampled_from([TRACES, b"", b"{}", corpus.gzip_members(TRACES)]))
    head = request_head(token, path=draw(st.sampled_from(["/v1/traces", "/v1/logs", "/v1/x", "/"])),
                        extra=draw(st.sampled_from(["", "Content-Encoding: gzip\r\n", "Connection: close\r\n"]))
                        + f"Content-Length: {len(body)}\r\n\r\n")
    return draw(mutated(head.encode() + body))


@FUZZ
@given(data=st.data())
def test_fuzzed_http_requests_get_an_answer_never_a_500(gateway: GatewayProcess, token: str,
                                                       data: st.DataObject) -> None:
    request = data.draw(raw_requests(token))
    # A request the server is still waiting on after 0.5 s (a body shorter than announced) is left
    # there: the slow-client tests cover what happens to those.
    answer = raw_exchange(gateway, request, timeout_s=0.5, hang_up=data.draw(st.booleans()))
    assert set(statuses(answer)) <= HTTP_STATUSES, answer[:300]
    assert gateway.proc is not None and gateway.proc.poll() is None


@FUZZ
@given(data=st.data())
def test_fuzzed_grpc_bodies_get_ok_or_invalid_argument(gateway: GatewayProcess, token: str,
                                                      data: st.DataObject) -> None:
    body = data.draw(st.one_of(st.binary(max_size=200), mutated(TRACES), mutated(corpus.deep_attribute_span(40))))
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        try:
            export(body, metadata=(("x-api-key", token),), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
    assert gateway.proc is not None and gateway.proc.poll() is None
