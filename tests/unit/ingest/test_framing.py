"""The gateway's cheap outer-framing check accepts real OTLP and refuses garbage with 400."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ingest.errors import InvalidArgument
from ingest.framing import check_framing
from schemas.envelope import PayloadFormat


def request_bytes() -> bytes:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.name, span.trace_id, span.span_id = "op", b"\x01" * 16, b"\x02" * 8
    return request.SerializeToString()


def test_real_requests_pass() -> None:
    check_framing(PayloadFormat.OTLP_PROTO, request_bytes(), "traces")
    check_framing(PayloadFormat.OTLP_PROTO, b"", "traces")
    check_framing(PayloadFormat.OTLP_JSON, b' {"resourceSpans": []}\n', "traces")


@pytest.mark.parametrize("cut", [1, 2, 5, 10])
def test_truncated_protobuf_is_refused(cut: int) -> None:
    with pytest.raises(InvalidArgument, match="truncated"):
        check_framing(PayloadFormat.OTLP_PROTO, request_bytes()[:-cut], "traces")


@pytest.mark.parametrize(("body", "problem"), [(b"\x00\x01", "field number 0"), (b"\x0f", "wire type 7"),
                                               (b"\xff" * 11, "bad varint"), (b'{"json": 1}', "wire type 3")])
def test_garbage_protobuf_is_refused_with_what_is_wrong(body: bytes, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=f"not an OTLP traces protobuf message \\({problem}\\)"):
        check_framing(PayloadFormat.OTLP_PROTO, body, "traces")


@pytest.mark.parametrize("body", [b"", b"[]", b"null", b'"text"', b"{"])
def test_json_that_is_not_an_object_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidArgument, match="JSON object"):
        check_framing(PayloadFormat.OTLP_JSON, body, "logs")


@given(st.binary(max_size=200))
def test_never_raises_anything_but_invalid_argument(body: bytes) -> None:
    for fmt in PayloadFormat:
        with contextlib.suppress(InvalidArgument):
            check_framing(fmt, body, "traces")
