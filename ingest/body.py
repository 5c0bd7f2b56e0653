"""Request bodies: content types, encodings and bounded decompression.

Decompression stops as soon as the output would pass the limit, so a gzip bomb costs at most the
limit in memory and the time to inflate that much, never its full expansion.
"""

from __future__ import annotations

import zlib

from ingest.errors import InvalidArgument, PayloadTooLarge, UnsupportedMediaType
from schemas.envelope import PayloadFormat

__all__ = ["GzipInflater", "payload_format_for"]

_CONTENT_TYPES = {
    "application/x-protobuf": PayloadFormat.OTLP_PROTO,
    "application/protobuf": PayloadFormat.OTLP_PROTO,
    "application/json": PayloadFormat.OTLP_JSON,
}


def payload_format_for(content_type: str | None) -> PayloadFormat:
    """The payload format for an HTTP Content-Type (parameters such as charset are ignored)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    fmt = _CONTENT_TYPES.get(media)
    if fmt is None:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {media or '(none)'!r}: use application/x-protobuf or application/json")
    return fmt


class GzipInflater:
    """Feed compressed chunks; get the whole inflated body or PayloadTooLarge past ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        data = chunk
        while data:
            if self._inflater.eof:
                # Another gzip member follows: RFC 1952 lets a body hold several, which concatenate
                # (what `cat a.gz b.gz` and Python's gzip module produce). Everything after the first
                # member used to be ignored, answering 200 for data that was never kept; trailing
                # bytes that are not gzip are refused now.
                self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            try:
                out = self._inflater.decompress(data, self._limit - self._size + 1)
            except zlib.error:
                raise InvalidArgument("request body is not valid gzip data") from None
            self._take(out)
            data = self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail

    @property
    def inflated_bytes(self) -> int:
        """How much has been inflated so far (never more than the limit plus one byte)."""
        return self._size

    def finish(self) -> bytes:
        try:
            self._take(self._inflater.flush())
        except zlib.error:
            raise InvalidArgument("request body is not valid gzip data") from None
        if not self._inflater.eof:
            raise InvalidArgument("gzip request body is truncated")
        return b"".join(self._parts)

    def _take(self, out: bytes) -> None:
        self._size += len(out)
        if self._size > self._limit:
            raise PayloadTooLarge(f"request body inflates to more than {self._limit} bytes")
        if out:
            self._parts.append(out)
