"""Protobuf's wire format read one level at a time, without decoding: the framing check names what
is wrong with a refused body this way, and the splitter cuts oversized requests between fields."""

from __future__ import annotations

from ingest.errors import InvalidArgument

__all__ = ["WireError", "read_field"]

_MAX_VARINT_BYTES = 10


class WireError(InvalidArgument):
    """The body breaks the wire format; ``problem`` says how ("truncated", "wire type 7", ...)."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"request body is not an OTLP protobuf message ({problem})")
        self.problem = problem


def read_field(data: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """(field number, wire type, start of the value, end of the field) of the field at ``pos``,
    which must end by ``end``."""
    tag, pos = _read_uvarint(data, pos, end)
    number, wire_type = tag >> 3, tag & 7
    if number == 0:
        raise WireError("field number 0")
    value_start = pos
    if wire_type == 2:
        length, pos = _read_uvarint(data, pos, end)
        value_start = pos
        pos += length
    elif wire_type == 0:
        _, pos = _read_uvarint(data, pos, end)
    elif wire_type == 1:
        pos += 8
    elif wire_type == 5:
        pos += 4
    else:
        raise WireError(f"wire type {wire_type}")
    if pos > end:
        raise WireError("truncated")
    return number, wire_type, value_start, pos


def _read_uvarint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    for i in range(pos, min(pos + _MAX_VARINT_BYTES, end)):
        byte = data[i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i + 1
        shift += 7
    raise WireError("truncated" if end - pos < _MAX_VARINT_BYTES else "bad varint")
