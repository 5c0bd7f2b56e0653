"""The Kafka envelope: its model, its Avro codec and the canonical bytes its signature covers.

Wire format (Avro single-object encoding, from the Avro specification): the two marker bytes
``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema, then the record
in Avro binary. The fingerprint tells a reader which schema version wrote the message, so old and
new workers can share topics during an upgrade; a fingerprint the reader does not know is refused
with :class:`UnknownEnvelopeVersion` instead of being misread.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

__all__ = [
    "CURRENT_VERSION",
    "KNOWN_VERSIONS",
    "Envelope",
    "EnvelopeError",
    "MalformedEnvelope",
    "PayloadFormat",
    "Signal",
    "TruncatedEnvelope",
    "UnknownEnvelopeVersion",
    "decode",
    "encode",
]

MAGIC = b"\xc3\x01"
_HEADER_LEN = len(MAGIC) + 8


class Signal(StrEnum):
    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"


class PayloadFormat(StrEnum):
    OTLP_PROTO = "otlp_proto"
    OTLP_JSON = "otlp_json"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One signed OTLP batch. ``key_id`` and ``signature`` are filled in by the key ring."""

    batch_id: str
    tenant: str
    principal: str
    signal: Signal
    payload_format: PayloadFormat
    received_at_ns: int
    gateway_id: str
    payload: bytes
    stages: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    key_id: str = ""
    signature: bytes = b""

    def signed_header(self) -> bytes:
        """Canonical bytes of every field except ``payload`` and ``signature``.

        The signature is HMAC(key, signed_header() + payload). Every field is length-prefixed,
        so no two different envelopes share an encoding; the leading domain string binds the
        signature to this format (a later version that adds fields appends them only when they
        differ from their defaults, so version-1 signatures stay valid).
        """
        out = bytearray(b"rampart.envelope.v1\x00")
        for text in (self.batch_id, self.tenant, self.principal, self.signal.value,
                     self.payload_format.value):
            _put_text(out, text)
        out += struct.pack(">q", self.received_at_ns)
        _put_text(out, self.gateway_id)
        out += struct.pack(">I", len(self.stages))
        for stage in self.stages:
            _put_text(out, stage)
        out += struct.pack(">I", len(self.attributes))
        for key in sorted(self.attributes):
            _put_text(out, key)
            _put_text(out, self.attributes[key])
        _put_text(out, self.key_id)
        out += struct.pack(">Q", len(self.payload))
        return bytes(out)


def _put_text(out: bytearray, text: str) -> None:
    data = text.encode("utf-8")
    out += struct.pack(">I", len(data))
    out += data


class EnvelopeError(ValueError):
    """A Kafka message is not a readable envelope. ``reason`` is a short stable code for metrics
    and quarantine records; the message says what exactly is wrong."""

    reason = "malformed_envelope"


class TruncatedEnvelope(EnvelopeError):
    reason = "truncated_envelope"


class UnknownEnvelopeVersion(EnvelopeError):
    reason = "unknown_envelope_version"


class MalformedEnvelope(EnvelopeError):
    reason = "malformed_envelope"


@dataclass(frozen=True)
class _Version:
    number: int
    schema: Any
    fingerprint: bytes


def _load_version(number: int) -> _Version:
    text = resources.files("schemas").joinpath(f"envelope_v{number}.avsc").read_text(encoding="utf-8")
    raw = json.loads(text)
    parsed = fastavro.parse_schema(raw)
    digest = int(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"), 16)
    return _Version(number, parsed, struct.pack("<Q", digest))


KNOWN_VERSIONS: dict[int, _Version] = {v.number: v for v in (_load_version(1),)}
CURRENT_VERSION = max(KNOWN_VERSIONS)
_BY_FINGERPRINT = {v.fingerprint: v for v in KNOWN_VERSIONS.values()}
_CURRENT = KNOWN_VERSIONS[CURRENT_VERSION]


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope with the current schema version.

    Written by hand for version 1's fixed schema (Avro binary: zig-zag varints, length-prefixed
    strings and bytes, one block per array and map) because every gateway request and every stage
    output pays for it: fastavro's generic writer cost 7 % of a 100-span gateway request, this a
    third of that. A test checks it byte for byte against fastavro's encoding of the schema file.
    """
    out = [MAGIC, _CURRENT.fingerprint]
    for text in (envelope.batch_id, envelope.tenant, envelope.principal):
        _avro_text(out, text)
    out.append(_SIGNAL_CODES[envelope.signal.name])
    out.append(_FORMAT_CODES[envelope.payload_format.name])
    out.append(_avro_long(envelope.received_at_ns))
    _avro_text(out, envelope.gateway_id)
    if envelope.stages:
        out.append(_avro_long(len(envelope.stages)))
        for stage in envelope.stages:
            _avro_text(out, stage)
    out.append(b"\x00")
    if envelope.attributes:
        out.append(_avro_long(len(envelope.attributes)))
        for key, value in envelope.attributes.items():
            _avro_text(out, key)
            _avro_text(out, value)
    out.append(b"\x00")
    _avro_text(out, envelope.key_id)
    for data in (envelope.signature, envelope.payload):
        out.append(_avro_long(len(data)))
        out.append(data)
    return b"".join(out)


def _enum_codes(field_name: str) -> dict[str, bytes]:
    (field_schema,) = (f["type"] for f in _CURRENT.schema["fields"] if f["name"] == field_name)
    return {symbol: _avro_long(index) for index, symbol in enumerate(field_schema["symbols"])}


def _avro_long(n: int) -> bytes:
    if 0 <= n < 64:  # string lengths, counts: one byte, precomputed
        return _ONE_BYTE_LONGS[n]
    zigzag = (n << 1) ^ (n >> 63)
    out = bytearray()
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


_ONE_BYTE_LONGS = tuple(bytes([n << 1]) for n in range(64))


def _avro_text(out: list[bytes], text: str) -> None:
    data = text.encode("utf-8")
    out.append(_avro_long(len(data)))
    out.append(data)


_SIGNAL_CODES = _enum_codes("signal")
_FORMAT_CODES = _enum_codes("payload_format")


def decode(data: bytes) -> Envelope:
    """Parse bytes from Kafka into an Envelope. Raises a specific EnvelopeError, never anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEnvelope(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER_LEN:
        if MAGIC.startswith(data[:2]):
            raise TruncatedEnvelope(f"message is {len(data)} bytes, shorter than the {_HEADER_LEN}-byte header")
        raise MalformedEnvelope("message does not start with the envelope marker C3 01")
    if data[:2] != MAGIC:
        raise MalformedEnvelope(f"message does not start with the envelope marker C3 01 (got {data[:2].hex()})")
    version = _BY_FINGERPRINT.get(data[2:_HEADER_LEN])
    if version is None:
        known = ", ".join(f"v{v.number} ({v.fingerprint.hex()})" for v in KNOWN_VERSIONS.values())
        raise UnknownEnvelopeVersion(
            f"envelope schema fingerprint {data[2:_HEADER_LEN].hex()} is not one this worker knows "
            f"(known: {known}); upgrade this worker")
    body = io.BytesIO(data)
    body.seek(_HEADER_LEN)
    try:
        record = fastavro.schemaless_reader(body, version.schema, _CURRENT.schema)
    except EOFError:
        raise TruncatedEnvelope("message ends before the envelope record is complete") from None
    except IndexError as exc:
        # fastavro's compiled reader reports a varint cut short as indexing past the buffer.
        if "string index" in str(exc):
            raise TruncatedEnvelope("message ends before the envelope record is complete") from None
        raise MalformedEnvelope(f"envelope record does not match schema v{version.number}: IndexError") from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any decoder failure is a malformed message
        raise MalformedEnvelope(f"envelope record does not match schema v{version.number}: "
                                f"{type(exc).__name__}") from None
    if not isinstance(record, dict):
        raise MalformedEnvelope("envelope record is not a record")
    if body.tell() != len(data):
        raise MalformedEnvelope(f"{len(data) - body.tell()} unexpected bytes after the envelope record")
    try:
        return Envelope(
            batch_id=record["batch_id"],
            tenant=record["tenant"],
            principal=record["principal"],
            signal=Signal[record["signal"]],
            payload_format=PayloadFormat[record["payload_format"]],
            received_at_ns=record["received_at_ns"],
            gateway_id=record["gateway_id"],
            stages=tuple(record["stages"]),
            attributes=record["attributes"],
            key_id=record["key_id"],
            signature=record["signature"],
            payload=record["payload"],
        )
    except KeyError as exc:
        raise MalformedEnvelope(f"envelope record lacks or misnames field {exc.args[0]!r}") from None
