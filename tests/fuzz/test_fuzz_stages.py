"""Fuzzing every processor through the stage chain, as a worker runs it on a raw-topic record.

Whatever the record holds (a valid, mutated or spliced OTLP payload in protobuf or JSON, or a
damaged envelope), handling it must not raise or hang: the outcome is a quarantine record with a
reason, or outputs plus reject records whose reasons account for every dropped item, all signed.
Examples per test: RAMPART_FUZZ_EXAMPLES (200 by default).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.envelope import PayloadFormat, Signal
from tests.fuzz.support import FUZZ, chain, check_outcome, envelope, hang_guard, hostile_json, hostile_protobuf, mutated

STAGES = [["validate"], ["scrub"], ["dedup"], ["validate", "scrub", "dedup"]]


@st.composite
def raw_records(draw: st.DrawFn, signal: Signal) -> bytes:
    """A raw-topic record for ``signal``: a signed envelope around a hostile payload, or a damaged one."""
    fmt = draw(st.sampled_from(list(PayloadFormat)))
    payload = draw(hostile_protobuf(signal) if fmt is PayloadFormat.OTLP_PROTO else hostile_json(signal))
    value = envelope(payload, signal, fmt)
    if draw(st.integers(0, 9)) == 0:  # now and then the envelope itself is damaged
        value = draw(mutated(value))
    return value


@pytest.mark.parametrize("stages", STAGES, ids="+".join)
@FUZZ
@given(signal=st.sampled_from(list(Signal)), data=st.data())
def test_every_record_ends_as_output_reject_or_quarantine_with_a_reason(stages: list[str], signal: Signal,
                                                                       data: st.DataObject) -> None:
    value = data.draw(raw_records(signal))
    stage = chain(stages, keying=data.draw(st.sampled_from(["trace_id", "tenant_service", "gateway"])))
    with hang_guard(30, "+".join(stages)):
        outcome = stage.handle(signal, value, b"key", "fz.raw/0/1")
        check_outcome(outcome, signal)
        again = stage.handle(signal, value, b"key", "fz.raw/0/1")  # a redelivery is handled the same way
    assert again.quarantine_reason == outcome.quarantine_reason
    if "dedup" not in stages:
        assert [r.topic for r in again.records] == [r.topic for r in outcome.records]


@FUZZ
@given(signal=st.sampled_from(list(Signal)), data=st.data())
def test_a_record_on_the_wrong_topic_is_quarantined(signal: Signal, data: st.DataObject) -> None:
    other = data.draw(st.sampled_from([s for s in Signal if s is not signal]))
    value = envelope(data.draw(hostile_protobuf(other)), other)
    outcome = chain(["validate", "scrub", "dedup"]).handle(signal, value, None, "fz.raw/0/2")
    assert outcome.quarantine_reason == "signal_mismatch"
    check_outcome(outcome, signal)
