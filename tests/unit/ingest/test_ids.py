"""Batch and request ids: random version-4 UUIDs, none repeated, also across refills of the pool."""

from __future__ import annotations

import itertools
import uuid

from ingest.gateway import _random_uuids


def test_ids_are_distinct_random_version_4_uuids() -> None:
    ids = list(itertools.islice(_random_uuids(), 1000))  # about four refills of the random pool
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # All four variant digits occur: the variant keeps two random bits, as uuid.uuid4() does.
    assert {text[19] for text in ids} == set("89ab")
