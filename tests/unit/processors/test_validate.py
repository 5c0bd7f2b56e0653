"""Every validation rule drops exactly what it should, with its reason, and nothing else."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.otlp import OtlpDecodeError, decode_payload
from processors.validate import ValidateProcessor, valid_tracestate
from rampart.config import ValidateConfig
from schemas.envelope import PayloadFormat, Signal
from tests.unit.processors.helpers import NOW, batch, logs, metrics, traces

VALIDATE = ValidateProcessor(ValidateConfig())


def reasons(signal: Signal, request: Any) -> list[str]:
    return [d.reason for d in VALIDATE.process(batch(signal, request)).drops]


def test_a_good_span_is_kept() -> None:
    assert reasons(Signal.TRACES, traces(3)) == []


@pytest.mark.parametrize(("fields", "reason"), [
    ({"trace_id": bytes(16)}, "invalid_trace_id"),
    ({"trace_id": b"\x01" * 8}, "invalid_trace_id"),
    ({"span_id": bytes(8)}, "invalid_span_id"),
    ({"span_id": b"\x01" * 16}, "invalid_span_id"),
    ({"parent_span_id": b"\x01" * 4}, "invalid_parent_span_id"),
    ({"end_time_unix_nano": NOW - 2000}, "end_before_start"),
    ({"start_time_unix_nano": NOW - 25 * 3600 * 10**9}, "too_old"),
    ({"start_time_unix_nano": NOW + 3600 * 10**9, "end_time_unix_nano": NOW + 3601 * 10**9}, "in_future"),
    ({"name": "x" * 2000}, "name_too_long"),
    ({"trace_state": "Bad Key=1"}, "invalid_tracestate"),
])
def test_span_rules(fields: dict[str, Any], reason: str) -> None:
    assert reasons(Signal.TRACES, traces(1, **fields)) == [reason]


def test_near_misses_are_kept() -> None:
    kept = traces(1, parent_span_id=b"", trace_state="rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
                  start_time_unix_nano=NOW - 23 * 3600 * 10**9, end_time_unix_nano=NOW + 200 * 10**9)
    assert reasons(Signal.TRACES, kept) == []


def test_counts_and_lengths() -> None:
    request = traces(4)
    spans = request.resource_spans[0].scope_spans[0].spans
    for i in range(129):
        spans[0].attributes.add(key=f"k{i}").value.int_value = i
    spans[1].attributes.add(key="big").value.string_value = "x" * (32 * 1024 + 1)
    for _ in range(129):
        spans[2].events.add(name="e", time_unix_nano=NOW)
    spans[3].attributes.add(key="k" * 2000).value.int_value = 1
    assert reasons(Signal.TRACES, request) == ["too_many_attributes", "value_too_long", "too_many_events",
                                               "attribute_key_too_long"]


def test_deep_values_are_refused_without_recursion() -> None:
    request = traces(1)
    value = request.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="deep").value
    for _ in range(20):
        value = value.kvlist_value.values.add(key="k").value
    value.string_value = "bottom"
    assert reasons(Signal.TRACES, request) == ["value_too_deep"]


def test_links_are_checked() -> None:
    request = traces(2)
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 3)
    spans[1].links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, trace_state="=nokey")
    assert reasons(Signal.TRACES, request) == ["invalid_link", "invalid_tracestate"]


@pytest.mark.parametrize(("state", "valid"), [
    ("", True), ("a=1", True), ("tenant@vendor=x", True), ("a=1, b=2", True),
    ("A=1", False), ("a=", False), ("a=1,b", False), ("a=b=c", False), (",".join(f"k{i}=v" for i in range(33)), False),
])
def test_tracestate_syntax(state: str, valid: bool) -> None:
    assert valid_tracestate(state) is valid


def test_metric_rules() -> None:
    assert reasons(Signal.METRICS, metrics()) == []
    request = metrics()
    request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].as_int = -1
    hist = request.resource_metrics[0].scope_metrics[0].metrics[1].histogram.data_points
    hist.add(count=3, bucket_counts=[1, 2], explicit_bounds=[0.1, 1.0], time_unix_nano=NOW)
    hist.add(count=5, bucket_counts=[1, 1, 1], explicit_bounds=[0.1, 1.0], time_unix_nano=NOW)
    hist.add(count=3, bucket_counts=[1, 1, 1], explicit_bounds=[1.0, 0.1], time_unix_nano=NOW)
    assert reasons(Signal.METRICS, request) == ["negative_monotonic_sum", "histogram_bucket_mismatch",
                                                "histogram_count_mismatch", "histogram_bounds_unsorted"]


def test_negative_delta_or_non_monotonic_sums_are_fine() -> None:
    request = metrics()
    metric = request.resource_metrics[0].scope_metrics[0].metrics[0]
    metric.sum.is_monotonic = False
    metric.sum.data_points[0].as_int = -5
    assert reasons(Signal.METRICS, request) == []


def test_log_rules() -> None:
    request = logs(3)
    records = request.resource_logs[0].scope_logs[0].log_records
    records[1].severity_number = 25
    records[2].time_unix_nano = NOW + 10**13
    assert reasons(Signal.LOGS, request) == ["invalid_severity", "in_future"]


def test_log_without_timestamp_is_fine() -> None:
    request = logs(1)
    request.resource_logs[0].scope_logs[0].log_records[0].time_unix_nano = 0
    assert reasons(Signal.LOGS, request) == []


@pytest.mark.parametrize("action", ["overwrite", "drop"])
def test_tenant_claims_in_resources_are_never_trusted(action: str) -> None:
    request = traces(1)
    request.resource_spans[0].resource.attributes.add(key="tenant.id").value.string_value = "someone-else"
    processor = ValidateProcessor(ValidateConfig(tenant_key_action=action))  # type: ignore[arg-type]
    result = processor.process(batch(Signal.TRACES, request, tenant="acme"))
    assert result.changed == 1 and not result.drops
    attributes = {kv.key: kv.value.string_value for kv in request.resource_spans[0].resource.attributes}
    assert attributes.get("tenant.id") == ("acme" if action == "overwrite" else None)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from(list(Signal)))
def test_validation_never_raises_on_arbitrary_input(data: bytes, signal: Signal) -> None:
    with contextlib.suppress(OtlpDecodeError):
        request = decode_payload(signal, PayloadFormat.OTLP_PROTO, data)
        VALIDATE.process(batch(signal, request))


@given(trace_id=st.binary(max_size=20), span_id=st.binary(max_size=12), start=st.integers(0, 2**64 - 1),
       end=st.integers(0, 2**64 - 1), state=st.text(max_size=40), name=st.text(max_size=50))
def test_validation_never_raises_on_arbitrary_spans(trace_id: bytes, span_id: bytes, start: int, end: int,
                                                   state: str, name: str) -> None:
    request = traces(1, trace_id=trace_id, span_id=span_id, start_time_unix_nano=start, end_time_unix_nano=end,
                     trace_state=state, name=name)
    result = VALIDATE.process(batch(Signal.TRACES, request))
    assert len(result.drops) <= 1
