"""Fuzzing the decoders every stage runs on untrusted bytes: the envelope codec and OTLP decoding.

The only failures allowed are the documented ones (EnvelopeError, OtlpDecodeError), each with a
reason code; anything that decodes must serialise again. Examples per test: RAMPART_FUZZ_EXAMPLES
(200 by default; e.g. RAMPART_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/fuzz for a long run).
"""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from processors.otlp import OtlpDecodeError, decode_payload
from schemas.envelope import Envelope, EnvelopeError, PayloadFormat, Signal, decode, encode
from tests.fuzz.support import FUZZ, NOW, hang_guard, hostile_json, hostile_protobuf, mutated

ENVELOPE_FIELDS = st.fixed_dictionaries({
    "batch_id": st.text(max_size=40), "tenant": st.text(max_size=20), "principal": st.text(max_size=20),
    "signal": st.sampled_from(list(Signal)), "payload_format": st.sampled_from(list(PayloadFormat)),
    "received_at_ns": st.integers(-(2**63), 2**63 - 1), "gateway_id": st.text(max_size=10),
    "payload": st.binary(max_size=200), "stages": st.lists(st.text(max_size=10), max_size=4).map(tuple),
    "attributes": st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
    "key_id": st.text(max_size=10), "signature": st.binary(max_size=40),
})


@st.composite
def envelope_bytes(draw: st.DrawFn) -> bytes:
    fields: Any = draw(ENVELOPE_FIELDS)
    valid = encode(Envelope(**fields))
    choice = draw(st.sampled_from(["valid", "mutated", "random", "header_only"]))
    if choice == "valid":
        return valid
    if choice == "mutated":
        return draw(mutated(valid))
    if choice == "header_only":
        return valid[:10] + draw(st.binary(max_size=100))
    return draw(st.binary(max_size=200))


@FUZZ
@given(envelope_bytes())
def test_envelope_decoder_raises_only_envelope_errors(data: bytes) -> None:
    with hang_guard(10, "envelope decode"):
        try:
            envelope = decode(data)
        except EnvelopeError as exc:
            assert exc.reason in ("malformed_envelope", "truncated_envelope", "unknown_envelope_version")
            return
    assert decode(encode(envelope)) == envelope


@FUZZ
@given(ENVELOPE_FIELDS)
def test_every_envelope_survives_a_round_trip(fields: dict[str, Any]) -> None:
    envelope = Envelope(**fields)
    assert decode(encode(envelope)) == envelope


@FUZZ
@given(signal=st.sampled_from(list(Signal)), data=st.data())
def test_otlp_protobuf_decoding_raises_only_decode_errors(signal: Signal, data: st.DataObject) -> None:
    payload = data.draw(hostile_protobuf(signal))
    with hang_guard(20, "protobuf decode"):
        try:
            request = decode_payload(signal, PayloadFormat.OTLP_PROTO, payload)
        except OtlpDecodeError as exc:
            assert exc.reason in ("undecodable_payload", "too_many_items") and str(exc)
            return
        type(request).FromString(request.SerializeToString())


@FUZZ
@given(signal=st.sampled_from(list(Signal)), data=st.data())
def test_otlp_json_decoding_raises_only_decode_errors(signal: Signal, data: st.DataObject) -> None:
    payload = data.draw(hostile_json(signal))
    with hang_guard(20, "JSON decode"):
        try:
            request = decode_payload(signal, PayloadFormat.OTLP_JSON, payload)
        except OtlpDecodeError as exc:
            assert exc.reason in ("undecodable_payload", "too_many_items") and str(exc)
            return
        type(request).FromString(request.SerializeToString())


def test_envelope_with_every_field_at_its_extreme() -> None:
    envelope = Envelope(batch_id=str(uuid.uuid4()) * 100, tenant="\U0010ffff" * 50, principal="", signal=Signal.LOGS,
                        payload_format=PayloadFormat.OTLP_JSON, received_at_ns=-(2**63), gateway_id="g",
                        payload=bytes(1_000_000), stages=("s",) * 1000, attributes={str(i): "" for i in range(1000)})
    assert decode(encode(envelope)) == envelope
    assert decode(encode(Envelope(batch_id="", tenant="", principal="", signal=Signal.TRACES,
                                  payload_format=PayloadFormat.OTLP_PROTO, received_at_ns=NOW, gateway_id="",
                                  payload=b""))).payload == b""
