"""Dedup marks in the real Redis: one script call per batch, crash-safe, expiring after the window."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from processors.dedup import DedupProcessor, RedisMarks
from rampart.config import DedupConfig
from schemas.envelope import Signal
from tests.unit.processors.helpers import batch, traces

pytestmark = pytest.mark.integration


def run(processor: DedupProcessor, n: int, batch_id: str) -> list[str]:
    b = batch(Signal.TRACES, traces(n))
    b.batch_id = batch_id
    return [d.reason for d in processor.process(b).drops]


def test_marks_in_redis(redis_url: str, unique_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    processor = DedupProcessor(DedupConfig(window_s=1.0), RedisMarks(client), unique_prefix)
    first = str(uuid.uuid4())
    assert run(processor, 3, first) == []
    assert run(processor, 3, first) == []                                   # redelivered after a crash
    assert run(processor, 3, str(uuid.uuid4())) == ["duplicate_batch"] * 3   # a client's retry
    assert run(processor, 5, str(uuid.uuid4())) == ["duplicate_item"] * 3    # overlap
    keys = client.keys(f"{unique_prefix}:dedup:*")
    assert len(keys) == 1 + 5 + 1 and all(0 < client.pttl(k) <= 1000 for k in keys)
    time.sleep(1.2)
    assert run(processor, 3, str(uuid.uuid4())) == []                        # the window has passed
