"""Oversized requests split into complete OTLP requests that each fit and together hold everything once."""

from __future__ import annotations

import json

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ingest.errors import InvalidArgument, PayloadTooLarge
from ingest.splitting import split_payload
from schemas.envelope import PayloadFormat, Signal


def traces(resources: int, scopes: int, spans: int, name_len: int = 40) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for r in range(resources):
        rs = request.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = f"svc-{r}"
        for s in range(scopes):
            ss = rs.scope_spans.add()
            ss.scope.name = f"scope-{s}"
            for i in range(spans):
                span = ss.spans.add()
                span.name = f"{r}-{s}-{i}-".ljust(name_len, "x")
                span.trace_id, span.span_id = bytes([r + 1]) * 16, i.to_bytes(8, "big")
    return request


def span_names(request: ExportTraceServiceRequest) -> list[tuple[str, str, str]]:
    return [(rs.resource.attributes[0].value.string_value, ss.scope.name, sp.name)
            for rs in request.resource_spans for ss in rs.scope_spans for sp in ss.spans]


def test_small_payload_is_returned_as_is() -> None:
    data = traces(1, 1, 3).SerializeToString()
    assert split_payload(Signal.TRACES, PayloadFormat.OTLP_PROTO, data, 10_000) == [data]


@pytest.mark.parametrize(("resources", "scopes", "spans", "limit"), [
    (10, 1, 10, 2_000),   # whole resources fit: split between them
    (1, 10, 10, 2_000),   # one resource too big: split between its scopes
    (1, 1, 200, 2_000),   # one scope too big: split between its spans
    (3, 4, 50, 5_000),
])
def test_protobuf_parts_fit_and_keep_everything(resources: int, scopes: int, spans: int, limit: int) -> None:
    request = traces(resources, scopes, spans)
    parts = split_payload(Signal.TRACES, PayloadFormat.OTLP_PROTO, request.SerializeToString(), limit)
    assert len(parts) > 1 and all(len(p) <= limit for p in parts)
    decoded = [ExportTraceServiceRequest.FromString(p) for p in parts]
    assert sorted(n for d in decoded for n in span_names(d)) == sorted(span_names(request))


def test_json_parts_fit_and_keep_everything() -> None:
    request = traces(3, 2, 30)
    body = json.dumps(MessageToDict(request)).encode()
    parts = split_payload(Signal.TRACES, PayloadFormat.OTLP_JSON, body, 3_000)
    assert len(parts) > 1 and all(len(p) <= 3_000 for p in parts)
    names = [sp["name"] for p in parts for rs in json.loads(p)["resourceSpans"] for ss in rs["scopeSpans"]
             for sp in ss["spans"]]
    assert sorted(names) == sorted(n for _, _, n in span_names(request))
    assert all(rs["resource"]["attributes"] for p in parts for rs in json.loads(p)["resourceSpans"])


def test_logs_split_too() -> None:
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for i in range(300):
        records.add().body.string_value = f"log line {i} " * 3
    parts = split_payload(Signal.LOGS, PayloadFormat.OTLP_PROTO, request.SerializeToString(), 2_000)
    total = sum(len(ExportLogsServiceRequest.FromString(p).resource_logs[0].scope_logs[0].log_records)
                for p in parts)
    assert total == 300


def test_a_single_record_larger_than_the_limit_is_413() -> None:
    request = traces(1, 1, 2, name_len=5_000)
    with pytest.raises(PayloadTooLarge, match="single record"):
        split_payload(Signal.TRACES, PayloadFormat.OTLP_PROTO, request.SerializeToString(), 2_000)


def test_undecodable_oversized_payloads_are_400() -> None:
    with pytest.raises(InvalidArgument):
        split_payload(Signal.TRACES, PayloadFormat.OTLP_PROTO, b"\xff" * 5000, 1000)
    with pytest.raises(InvalidArgument):
        split_payload(Signal.TRACES, PayloadFormat.OTLP_JSON, b"{" * 5000, 1000)
