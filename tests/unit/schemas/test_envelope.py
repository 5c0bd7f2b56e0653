"""The envelope codec: every field survives a round trip; bad bytes give a specific error."""

from __future__ import annotations

import contextlib
import io
import struct

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import envelope as env_mod
from schemas.envelope import (
    Envelope,
    EnvelopeError,
    MalformedEnvelope,
    PayloadFormat,
    Signal,
    TruncatedEnvelope,
    UnknownEnvelopeVersion,
    decode,
    encode,
)


def sample(**changes: object) -> Envelope:
    fields: dict[str, object] = dict(
        batch_id="5b0f7a4e-0000-4000-8000-000000000001", tenant="acme", principal="key-01",
        signal=Signal.METRICS, payload_format=PayloadFormat.OTLP_JSON, received_at_ns=1_764_000_000_123_456_789,
        gateway_id="gw-a", payload=b"\x00\x01otlp\xff", stages=("gateway", "validate"),
        attributes={"part": "1/2", "ü": "✓"}, key_id="gateway-1", signature=b"\x07" * 32)
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    original = sample()
    assert decode(encode(original)) == original


@pytest.mark.parametrize("signal", list(Signal))
@pytest.mark.parametrize("fmt", list(PayloadFormat))
def test_round_trip_every_enum_value(signal: Signal, fmt: PayloadFormat) -> None:
    original = sample(signal=signal, payload_format=fmt)
    assert decode(encode(original)) == original


def test_message_starts_with_single_object_marker_and_fingerprint() -> None:
    data = encode(sample())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == env_mod.KNOWN_VERSIONS[env_mod.CURRENT_VERSION].fingerprint


@given(
    batch_id=st.text(max_size=40), tenant=st.text(max_size=40), principal=st.text(max_size=20),
    received=st.integers(min_value=-(2**63), max_value=2**63 - 1), payload=st.binary(max_size=300),
    stages=st.lists(st.text(max_size=10), max_size=5),
    attributes=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5),
)
def test_round_trip_arbitrary_values(batch_id: str, tenant: str, principal: str, received: int, payload: bytes,
                                     stages: list[str], attributes: dict[str, str]) -> None:
    original = sample(batch_id=batch_id, tenant=tenant, principal=principal, received_at_ns=received,
                      payload=payload, stages=tuple(stages), attributes=attributes)
    assert decode(encode(original)) == original
    assert encode(original) == fastavro_encoding(original)


def fastavro_encoding(envelope: Envelope) -> bytes:
    """The envelope as fastavro's generic writer encodes it with the schema file: what the codec's
    hand-written encoder must reproduce byte for byte."""
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + env_mod.KNOWN_VERSIONS[env_mod.CURRENT_VERSION].fingerprint)
    record = {"batch_id": envelope.batch_id, "tenant": envelope.tenant, "principal": envelope.principal,
              "signal": envelope.signal.name, "payload_format": envelope.payload_format.name,
              "received_at_ns": envelope.received_at_ns, "gateway_id": envelope.gateway_id,
              "stages": list(envelope.stages), "attributes": dict(envelope.attributes), "key_id": envelope.key_id,
              "signature": envelope.signature, "payload": envelope.payload}
    fastavro.schemaless_writer(buf, env_mod.KNOWN_VERSIONS[env_mod.CURRENT_VERSION].schema, record)
    return buf.getvalue()


@pytest.mark.parametrize("signal", list(Signal))
@pytest.mark.parametrize("payload_format", list(PayloadFormat))
def test_every_enum_value_and_empty_collections_encode_as_fastavro_does(signal: Signal,
                                                                         payload_format: PayloadFormat) -> None:
    for envelope in (sample(signal=signal, payload_format=payload_format),
                     sample(signal=signal, payload_format=payload_format, stages=(), attributes={}, signature=b"",
                            payload=b"x" * 70_000, received_at_ns=0)):
        assert encode(envelope) == fastavro_encoding(envelope)
        assert decode(encode(envelope)) == envelope


def test_every_truncation_is_a_truncated_envelope() -> None:
    data = encode(sample())
    for length in range(len(data)):
        with pytest.raises(TruncatedEnvelope):
            decode(data[:length])


def test_unknown_fingerprint_names_the_known_versions() -> None:
    data = bytearray(encode(sample()))
    data[2:10] = struct.pack("<Q", 0x1234)
    with pytest.raises(UnknownEnvelopeVersion, match=r"not one this worker knows \(known: v1"):
        decode(bytes(data))


def test_wrong_marker_is_malformed() -> None:
    with pytest.raises(MalformedEnvelope, match="marker"):
        decode(b'{"json": "not an envelope"}')


def test_trailing_bytes_are_malformed() -> None:
    with pytest.raises(MalformedEnvelope, match="unexpected bytes"):
        decode(encode(sample()) + b"extra")


def test_bad_enum_index_is_malformed() -> None:
    # Field order: batch_id, tenant, principal (strings), then the signal enum index.
    good = encode(sample(batch_id="", tenant="", principal=""))
    bad = good[:13] + b"\x0a" + good[14:]  # enum index 5 (zig-zag 10) does not exist
    with pytest.raises(EnvelopeError):
        decode(bad)


@given(st.binary(max_size=400))
def test_garbage_after_a_valid_header_never_crashes(tail: bytes) -> None:
    header = env_mod.MAGIC + env_mod.KNOWN_VERSIONS[env_mod.CURRENT_VERSION].fingerprint
    try:
        decode(header + tail)
    except EnvelopeError as exc:
        assert exc.reason in {"truncated_envelope", "malformed_envelope"}


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        decode(data)

