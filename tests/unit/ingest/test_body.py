"""Content types and bounded gzip inflation."""

from __future__ import annotations

import gzip
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.body import GzipInflater, payload_format_for
from ingest.errors import InvalidArgument, PayloadTooLarge, UnsupportedMediaType
from schemas.envelope import PayloadFormat


@pytest.mark.parametrize(("content_type", "expected"), [
    ("application/x-protobuf", PayloadFormat.OTLP_PROTO),
    ("application/protobuf", PayloadFormat.OTLP_PROTO),
    ("Application/JSON; charset=utf-8", PayloadFormat.OTLP_JSON),
])
def test_supported_content_types(content_type: str, expected: PayloadFormat) -> None:
    assert payload_format_for(content_type) is expected


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/grpc", "multipart/form-data"])
def test_unsupported_content_types(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        payload_format_for(content_type)


def inflate(data: bytes, limit: int, chunk: int = 4096) -> bytes:
    inflater = GzipInflater(limit)
    for i in range(0, len(data), chunk):
        inflater.feed(data[i:i + chunk])
    return inflater.finish()


@given(st.binary(max_size=20_000), st.integers(min_value=1, max_value=5000))
def test_inflates_anything_within_the_limit(data: bytes, chunk: int) -> None:
    assert inflate(gzip.compress(data), limit=20_000, chunk=chunk) == data


def test_bomb_stops_at_the_limit_without_inflating_everything() -> None:
    bomb = gzip.compress(bytes(64 * 1024 * 1024))
    inflater = GzipInflater(1024 * 1024)
    with pytest.raises(PayloadTooLarge, match="inflates to more than 1048576 bytes"):
        inflater.feed(bomb)
    # It stopped at the limit: the inflater never produced (much) more than the limit.
    assert inflater.inflated_bytes <= 1024 * 1024 + 1


def test_exactly_the_limit_passes() -> None:
    assert len(inflate(gzip.compress(bytes(1000)), limit=1000)) == 1000
    with pytest.raises(PayloadTooLarge):
        inflate(gzip.compress(bytes(1001)), limit=1000)


def test_garbage_and_truncation_are_invalid() -> None:
    with pytest.raises(InvalidArgument, match="not valid gzip"):
        inflate(os.urandom(100), limit=1000)
    with pytest.raises(InvalidArgument, match="truncated"):
        inflate(gzip.compress(os.urandom(5000))[:-20], limit=10_000)
