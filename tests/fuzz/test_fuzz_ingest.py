"""Fuzzing the gateway's request handling in-process: content types, bounded gzip inflation, the
framing check and the splitting of oversized requests.

Every failure must be an IngestError with a status the client can act on (400, 413, 415); nothing
the stages can decode may be refused by the framing check; split parts must each fit and together
hold every item once, with its resource and scope. Examples per test: RAMPART_FUZZ_EXAMPLES (200 by
default).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import zlib
from typing import Any

import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import given
from hypothesis import strategies as st

from ingest.body import GzipInflater, payload_format_for
from ingest.errors import IngestError, InvalidArgument, PayloadTooLarge, UnsupportedMediaType
from ingest.framing import check_framing
from ingest.splitting import split_payload
from processors.otlp import REQUEST_TYPES
from schemas.envelope import PayloadFormat, Signal
from tests.fuzz.support import FUZZ, hang_guard, hostile_json, hostile_protobuf, mutated, otlp_json, requests

ALLOWED = (InvalidArgument, PayloadTooLarge)


@FUZZ
@given(st.one_of(st.none(), st.text(max_size=60), st.sampled_from([
    "application/x-protobuf", "application/json; charset=utf-8", "APPLICATION/PROTOBUF ;", "application/json\x00",
    "application/x-protobuf, application/json", ";", " application/json ; a=b"])))
def test_content_type_is_understood_or_refused_with_415(content_type: str | None) -> None:
    try:
        assert payload_format_for(content_type) in PayloadFormat
    except UnsupportedMediaType as exc:
        assert exc.http_status == 415 and "Content-Type" in exc.message


@st.composite
def gzip_bodies(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """(body, what it inflates to, or None when it is not valid gzip)."""
    members = draw(st.lists(st.binary(max_size=3000) | st.just(bytes(50_000)), min_size=1, max_size=3))
    body = b"".join(gzip.compress(m, compresslevel=draw(st.integers(0, 9))) for m in members)
    choice = draw(st.sampled_from(["valid", "mutated", "trailing", "raw_deflate", "random"]))
    if choice == "valid":
        return body, b"".join(members)
    if choice == "mutated":
        return draw(mutated(body)), None
    if choice == "trailing":
        return body + draw(st.binary(min_size=1, max_size=20)), None
    if choice == "raw_deflate":
        return zlib.compress(members[0]), None
    return draw(st.binary(max_size=300)), None


@FUZZ
@given(gzip_bodies(), st.integers(1, 70_000), st.integers(1, 5000))
def test_gzip_inflation_is_bounded_and_exact(case: tuple[bytes, bytes | None], limit: int, chunk: int) -> None:
    body, expected = case
    inflater = GzipInflater(limit)
    with hang_guard(10, "gzip inflation"):
        try:
            for i in range(0, len(body), chunk):
                inflater.feed(body[i:i + chunk])
                assert inflater.inflated_bytes <= limit + 1
            out = inflater.finish()
        except ALLOWED as exc:
            assert exc.http_status in (400, 413)
            if expected is not None:  # a valid body may only be refused for its size
                assert isinstance(exc, PayloadTooLarge) and len(expected) > limit
            return
    assert len(out) <= limit
    if expected is not None:
        assert out == expected


@FUZZ
@given(signal=st.sampled_from(list(Signal)), data=st.data())
def test_framing_refuses_only_with_400_and_never_what_the_stage_can_decode(signal: Signal,
                                                                           data: st.DataObject) -> None:
    payload = data.draw(hostile_protobuf(signal))
    with hang_guard(10, "framing check"):
        try:
            check_framing(PayloadFormat.OTLP_PROTO, payload, signal.value)
        except InvalidArgument as exc:
            assert exc.http_status == 400 and exc.message
            with pytest.raises(DecodeError):
                REQUEST_TYPES[signal].FromString(payload)
        with contextlib.suppress(InvalidArgument):
            check_framing(PayloadFormat.OTLP_JSON, payload, signal.value)


def _flatten(signal: Signal, request: Message) -> list[tuple[bytes, bytes, bytes]]:
    """(resource header, scope header, record) for every record: what splitting must preserve."""
    names = {Signal.TRACES: ("resource_spans", "scope_spans", "spans"),
             Signal.METRICS: ("resource_metrics", "scope_metrics", "metrics"),
             Signal.LOGS: ("resource_logs", "scope_logs", "log_records")}[signal]
    out = []
    for resource in getattr(request, names[0]):
        head = resource.resource.SerializeToString(deterministic=True) + resource.schema_url.encode()
        for scope in getattr(resource, names[1]):
            scope_head = scope.scope.SerializeToString(deterministic=True) + scope.schema_url.encode()
            out += [(head, scope_head, r.SerializeToString(deterministic=True)) for r in getattr(scope, names[2])]
    return sorted(out)


@FUZZ
@given(signal=st.sampled_from(list(Signal)), data=st.data())
def test_protobuf_split_parts_fit_and_keep_every_record_once(signal: Signal, data: st.DataObject) -> None:
    request = data.draw(requests(signal))
    payload = request.SerializeToString()
    max_bytes = data.draw(st.integers(40, max(40, len(payload))))
    with hang_guard(10, "protobuf split"):
        try:
            parts = split_payload(signal, PayloadFormat.OTLP_PROTO, payload, max_bytes)
        except PayloadTooLarge as exc:
            assert "exceeds" in exc.message
            return
    assert all(len(p) <= max_bytes for p in parts)
    decoded = [REQUEST_TYPES[signal].FromString(p) for p in parts]
    assert sorted(x for d in decoded for x in _flatten(signal, d)) == _flatten(signal, request)


@FUZZ
@given(signal=st.sampled_from(list(Signal)), data=st.data())
def test_splitting_hostile_bodies_fails_only_with_400_or_413(signal: Signal, data: st.DataObject) -> None:
    fmt = data.draw(st.sampled_from(list(PayloadFormat)))
    payload = data.draw(hostile_protobuf(signal) if fmt is PayloadFormat.OTLP_PROTO else hostile_json(signal))
    max_bytes = data.draw(st.integers(1, max(1, len(payload))))
    with hang_guard(10, "split"):
        try:
            parts = split_payload(signal, fmt, payload, max_bytes)
        except IngestError as exc:
            assert isinstance(exc, ALLOWED), exc
            return
    assert all(len(p) <= max_bytes for p in parts)


def _json_records(signal: Signal, document: Any) -> list[str]:
    names = {Signal.TRACES: ("resourceSpans", "scopeSpans", "spans"),
             Signal.METRICS: ("resourceMetrics", "scopeMetrics", "metrics"),
             Signal.LOGS: ("resourceLogs", "scopeLogs", "logRecords")}[signal]
    return sorted(json.dumps([r.get("resource"), s.get("scope"), item], sort_keys=True)
                  for r in document.get(names[0], []) for s in r.get(names[1], []) for item in s.get(names[2], []))


@FUZZ
@given(signal=st.sampled_from(list(Signal)), data=st.data())
def test_json_split_parts_fit_and_keep_every_record_once(signal: Signal, data: st.DataObject) -> None:
    document = otlp_json(data.draw(requests(signal)))
    payload = json.dumps(document).encode()
    max_bytes = data.draw(st.integers(40, max(40, len(payload))))
    with hang_guard(10, "JSON split"):
        try:
            parts = split_payload(signal, PayloadFormat.OTLP_JSON, payload, max_bytes)
        except PayloadTooLarge:
            return
    assert all(len(p) <= max_bytes for p in parts)
    assert sorted(x for p in parts for x in _json_records(signal, json.loads(p))) == _json_records(signal, document)
