"""The hostile-input corpus through the stage chain, in-process: what the gateway accepts without
decoding must end, in the stages, as a reject record or a quarantine record with a reason, never as
an exception, and within a (generous) time.

The chain is the fused validate+scrub+dedup one a worker runs by default; scrub alone is also run
on the inputs that once made its expressions take quadratic time.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from functools import partial

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processors.chain import ChainOutcome
from schemas.envelope import PayloadFormat, Signal, decode
from tests.data.hostile import corpus
from tests.fuzz.support import NOW, TOPICS, chain, check_outcome, envelope, hang_guard

PROTO, JSON = PayloadFormat.OTLP_PROTO, PayloadFormat.OTLP_JSON


def run(payload: bytes, signal: Signal = Signal.TRACES, fmt: PayloadFormat = PROTO,
        stages: tuple[str, ...] = ("validate", "scrub", "dedup"), guard_s: int = 60) -> ChainOutcome:
    with hang_guard(guard_s, "stage chain"):
        outcome = chain(list(stages)).handle(signal, envelope(payload, signal, fmt), b"k", "fz.raw/0/7")
        check_outcome(outcome, signal)
    return outcome


def rejected(outcome: ChainOutcome) -> dict[str, str]:
    """reason -> detail of every reject record."""
    out = {}
    for record in outcome.records:
        if record.topic.startswith(f"{TOPICS.prefix}.rejected."):
            attributes = decode(record.value).attributes
            out[attributes["rampart.reject.reason"]] = attributes["rampart.reject.detail"]
    return out


def kept_spans(outcome: ChainOutcome) -> list[object]:
    return [span for r in outcome.records if r.topic == TOPICS.clean(Signal.TRACES)
            for rs in ExportTraceServiceRequest.FromString(decode(r.value).payload).resource_spans
            for ss in rs.scope_spans for span in ss.spans]


QUARANTINED: dict[str, tuple[Callable[[], bytes], PayloadFormat, str]] = {
    "anyvalue_nested_5000_levels": (lambda: corpus.deep_attribute_span(5000), PROTO, "undecodable_payload"),
    "json_anyvalue_nested_5000_levels": (lambda: corpus.deep_json(5000), JSON, "undecodable_payload"),
    "json_anyvalue_nested_200_levels": (lambda: corpus.deep_json(200), JSON, "undecodable_payload"),
    "invalid_utf8_in_a_name": (corpus.invalid_utf8_span, PROTO, "undecodable_payload"),
    "invalid_utf8_json": (lambda: corpus.json_traces(corpus.json_span()).replace(b'"op"', b'"\xff\xfe"'), JSON,
                          "undecodable_payload"),
    "protobuf_truncated_inside": (corpus.truncated_inside, PROTO, "undecodable_payload"),
    "protobuf_garbage": (lambda: b"\x0a\x05\xff\xff\xff\xff\xff", PROTO, "undecodable_payload"),
    "json_duplicate_trace_id": (lambda: corpus.json_duplicate_keys("00" * 16, "ab" * 16), JSON,
                                "undecodable_payload"),
    "json_duplicate_resource_lists": (corpus.json_duplicate_resource_lists, JSON, "undecodable_payload"),
    **{f"json_wrong_type_{name}": (partial(bytes, body), JSON, "undecodable_payload")
       for name, body in corpus.JSON_WRONG_TYPES.items()},
    **{f"json_number_{name}": (partial(bytes, body), JSON, "undecodable_payload")
       for name, body in corpus.JSON_HUGE_NUMBERS.items()},
    # Found while writing these tests: millions of tiny items in one record (108 s, 2.8 GB before).
    "five_million_empty_resources": (lambda: corpus.empty_resources(5_000_000), PROTO, "too_many_items"),
    "json_three_million_empty_log_records": (lambda: corpus.empty_json_log_records(3_000_000), JSON,
                                             "too_many_items"),
}


@pytest.mark.parametrize("case", list(QUARANTINED))
def test_unreadable_payloads_are_quarantined_with_the_reason(case: str) -> None:
    build, fmt, reason = QUARANTINED[case]
    signal = Signal.LOGS if "log_records" in case else Signal.TRACES
    outcome = run(build(), signal, fmt)
    assert outcome.quarantine_reason == reason


def test_millions_of_empty_log_records_are_quarantined() -> None:
    outcome = run(corpus.empty_log_records(1_100_000), Signal.LOGS)
    assert outcome.quarantine_reason == "too_many_items"


@pytest.mark.parametrize(("case", "payload", "reasons"), [
    ("anyvalue_nested_20_levels", corpus.deep_attribute_span(20), {"value_too_deep"}),
    ("all_zero_ids", corpus.zero_ids(), {"invalid_trace_id", "invalid_span_id"}),
    ("wrong_wire_types", corpus.wrong_wire_types(), {"invalid_trace_id"}),
    ("start_and_end_zero", corpus.timestamps(0, 0), {"too_old"}),
    ("end_at_uint64_max", corpus.timestamps(NOW, 2**64 - 1), {"in_future"}),
    ("both_at_uint64_max", corpus.timestamps(2**64 - 1, 2**64 - 1), {"in_future"}),
    ("end_before_start", corpus.timestamps(NOW, NOW - 1), {"end_before_start"}),
    ("event_name_of_a_megabyte", corpus.traces(corpus.span() + corpus.field(11, b"\x09" + NOW.to_bytes(8, "little")
                                                                 + corpus.field(2, b"e" * 2**20))),
     {"name_too_long"}),
], ids=lambda v: v if isinstance(v, str) else "-")
def test_bad_items_become_reject_records_with_reasons(case: str, payload: bytes, reasons: set[str]) -> None:
    outcome = run(payload)
    assert outcome.quarantine_reason is None
    assert set(rejected(outcome)) == reasons
    assert not kept_spans(outcome)


def test_a_million_attributes_on_a_span() -> None:
    outcome = run(corpus.many_attributes(1_000_000))
    assert rejected(outcome) == {"too_many_attributes": "1000000 attributes, limit 128"}


def test_a_million_attributes_on_a_resource_take_its_items_with_it() -> None:
    # Found by this corpus: resource attributes were never checked, and dedup serialised the
    # resource once per item (20 s for 2,000 log records under 100,000 attributes).
    outcome = run(corpus.many_attributes(1_000_000, on="resource"))
    assert rejected(outcome) == {"too_many_attributes": "resource: 1000000 attributes, limit 128"}
    logs = run(corpus.many_resource_attributes_logs(200_000, 5_000), Signal.LOGS, guard_s=30)
    assert set(rejected(logs)) == {"too_many_attributes"} and logs.items_out == 0


def test_a_100_mb_string() -> None:
    outcome = run(corpus.huge_string_span(100 * 1024 * 1024), guard_s=120)
    assert rejected(outcome) == {"value_too_long": "a string value is longer than 32768 bytes"}


def test_json_duplicate_keys_are_refused_whichever_value_comes_last() -> None:
    for first, last in (("ab" * 16, "00" * 16), ("00" * 16, "ab" * 16)):
        outcome = run(corpus.json_duplicate_keys(first, last), fmt=JSON)
        assert outcome.quarantine_reason == "undecodable_payload"
        detail = dict(next(r for r in outcome.records if r.topic.startswith("fz.quarantine")).headers or [])
        assert b"duplicate key 'traceId'" in detail["rampart.quarantine.detail"]


def test_json_numbers_that_fit_are_kept() -> None:
    outcome = run(corpus.json_traces(corpus.json_span(startTimeUnixNano=NOW - 1000, endTimeUnixNano=str(NOW))),
                  fmt=JSON)
    assert len(kept_spans(outcome)) == 1


def test_histogram_bounds_that_are_nan_are_refused() -> None:
    request = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "h", "histogram": {
        "aggregationTemporality": 2, "dataPoints": [{"timeUnixNano": str(NOW), "count": "2",
                                                     "bucketCounts": ["1", "1"], "explicitBounds": ["NaN"]}]}}]}]}]}
    outcome = run(json.dumps(request).encode(), Signal.METRICS, JSON)
    assert set(rejected(outcome)) == {"histogram_bounds_unsorted"}


def test_fields_the_schema_does_not_know_do_not_carry_secrets_past_scrub() -> None:
    # Found by this corpus: an unknown field (a newer SDK's, or a client's own) was passed on as
    # raw bytes that no scrub rule looked into.
    outcome = run(corpus.unknown_field_with_secret())
    (span,) = kept_spans(outcome)
    assert b"jane.doe@example.com" not in span.SerializeToString()  # type: ignore[attr-defined]
    assert all(b"jane.doe" not in r.value for r in outcome.records if r.topic == TOPICS.clean(Signal.TRACES))


@pytest.mark.parametrize("value", [
    "1." * 16384, "a" * 32768, "eyJ" * 10922, "a@" * 16384, ("a" * 64 + "@") * 500, "://a:" * 6553,
    "?token=" * 4681, "'" * 32768, "1 " * 16384, "-----BEGIN PRIVATE KEY-----" * 1213, "[REDACTED" * 3640,
], ids=lambda v: repr(v[:12]))
def test_scrub_expressions_take_linear_time(value: str) -> None:
    # 100 values of 32 KiB each (validate's limit) that made the e-mail expression take 1.7 s each
    # and the JWT one 0.5 s before (quadratic backtracking); all of them now take milliseconds.
    outcome = run(corpus.redos_span(value), stages=("scrub",), guard_s=20)
    assert outcome.quarantine_reason is None and outcome.items_out == 1


def test_email_and_jwt_are_still_found_next_to_each_other() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    text = f"b@1b.bb1@xx.ax a@b.cc_x@y.zz id_token={token} Bearer:{token}"
    payload = corpus.traces(corpus.span() + corpus.field(9, corpus.attribute(b"t", corpus.string_value(text.encode()))))
    (span,) = kept_spans(run(payload, stages=("scrub",)))
    value = span.attributes[0].value.string_value  # type: ignore[attr-defined]
    assert "@" not in value and "eyJ" not in value, value


def test_log_records_with_hostile_bodies_and_severities() -> None:
    fields = [corpus.field(5, corpus.deep_value(20)),                 # body nested 20 levels
              corpus.field(5, corpus.string_value(b"x" * 40_000)),    # body over 32 KiB
              b"\x10" + corpus.uvarint(2**64 - 1)]                    # severity_number -1 (a 10-byte varint)
    records = b"".join(corpus.field(2, b"\x09" + NOW.to_bytes(8, "little") + f) for f in fields)
    outcome = run(corpus.field(1, corpus.field(2, records)), Signal.LOGS)
    assert set(rejected(outcome)) == {"value_too_deep", "value_too_long", "invalid_severity"}


def test_base64_ids_in_json_are_refused_not_misread() -> None:
    # OTLP/JSON ids are hex; protobuf's own JSON mapping (base64) must not slip through as other ids.
    outcome = run(corpus.json_traces(corpus.json_span(traceId=base64.b64encode(corpus.TRACE_ID).decode())), fmt=JSON)
    assert outcome.quarantine_reason == "undecodable_payload"
