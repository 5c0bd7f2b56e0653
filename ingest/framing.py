"""A cheap safety check of a payload's outer framing, without decoding it.

The gateway does not decode payloads (the validate stage does, with reject records that name the
problem). It only checks what lets it answer 400 at once for bodies that cannot be OTLP at all:
for protobuf, that the top level is a sequence of well-formed field 1 (length-delimited) entries,
which is a walk over a few varints per resource; for JSON, that the body is one object.

The walk over the top level is done by the protobuf runtime's C decoder (parsing the body as a
message whose only field is ``bytes value = 1``: each resource is taken as opaque bytes, never
decoded). A walk in Python costs about 2.5 µs per field, and a hostile body of 16 MiB made of
8 million empty resources (``0a 00`` repeated) held the event loop, and so every other client, for
21 s; the C walk takes 0.2 s. The Python walk still runs on small refused bodies, only to say
precisely what is wrong.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from google.protobuf.wrappers_pb2 import BytesValue

from ingest.errors import InvalidArgument
from ingest.wire import WireError, read_field
from schemas.envelope import PayloadFormat

__all__ = ["check_framing"]

# Refused bodies up to this size are walked again in Python to name the problem (at most ~80 ms).
_DIAGNOSE_MAX_BYTES = 64 * 1024


def check_framing(payload_format: PayloadFormat, payload: bytes, signal_name: str) -> None:
    if payload_format is PayloadFormat.OTLP_JSON:
        stripped = payload.strip()
        if not (stripped.startswith(b"{") and stripped.endswith(b"}")):
            raise InvalidArgument(f"request body is not an OTLP {signal_name} JSON object")
        return
    _check_protobuf(payload, signal_name)


def _check_protobuf(data: bytes, signal_name: str) -> None:
    try:
        # Field 1 of an Export*ServiceRequest (the resources) as opaque bytes; any other field is
        # kept as an unknown field. This checks tags, varints, wire types and lengths at the top
        # level, as the walk below does, without decoding a single resource.
        BytesValue.FromString(data)
        return
    except DecodeError:
        pass
    if len(data) <= _DIAGNOSE_MAX_BYTES:
        _walk_protobuf(data, signal_name)  # raises with the precise problem
    raise InvalidArgument(f"request body is not an OTLP {signal_name} protobuf message (truncated or corrupt)")


def _walk_protobuf(data: bytes, signal_name: str) -> None:
    pos, end = 0, len(data)
    try:
        while pos < end:
            _, _, _, pos = read_field(data, pos, end)
    except WireError as exc:
        if exc.problem == "truncated":
            raise InvalidArgument(f"OTLP {signal_name} protobuf message is truncated") from None
        raise InvalidArgument(f"request body is not an OTLP {signal_name} protobuf message ({exc.problem})") from None
