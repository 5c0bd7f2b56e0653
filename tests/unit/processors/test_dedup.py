"""Dedup semantics with the in-memory mark store (the Redis store is exercised in tests/integration)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest

from processors.base import ProcessorUnavailable
from processors.dedup import DedupProcessor, InMemoryMarks, MarkStore
from rampart.config import DedupConfig
from schemas.envelope import Signal
from tests.unit.processors.helpers import batch, logs, metrics, traces


def dedup(store: MarkStore | None = None, policy: str = "pass") -> DedupProcessor:
    return DedupProcessor(DedupConfig(redis_failure_policy=policy), store or InMemoryMarks(),  # type: ignore[arg-type]
                          "test")


def run(processor: DedupProcessor, signal: Signal, request: object, batch_id: str, tenant: str = "acme") -> list[str]:
    b = batch(signal, request, tenant=tenant)
    b.batch_id = batch_id
    return [d.reason for d in processor.process(b).drops]


def test_a_retried_batch_is_dropped_once_and_only_once() -> None:
    processor = dedup()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert run(processor, Signal.TRACES, traces(3), first) == []
    assert run(processor, Signal.TRACES, traces(3), second) == ["duplicate_batch"] * 3


def test_redelivery_of_the_same_batch_is_not_its_own_duplicate() -> None:
    processor = dedup()
    batch_id = str(uuid.uuid4())
    assert run(processor, Signal.TRACES, traces(3), batch_id) == []
    assert run(processor, Signal.TRACES, traces(3), batch_id) == []  # the worker crashed before its ack


def test_overlapping_batches_lose_only_the_overlap() -> None:
    processor = dedup()
    assert run(processor, Signal.TRACES, traces(2), str(uuid.uuid4())) == []
    assert run(processor, Signal.TRACES, traces(4), str(uuid.uuid4())) == ["duplicate_item", "duplicate_item"]


def test_tenants_do_not_share_marks() -> None:
    processor = dedup()
    assert run(processor, Signal.TRACES, traces(2), str(uuid.uuid4()), tenant="a") == []
    assert run(processor, Signal.TRACES, traces(2), str(uuid.uuid4()), tenant="b") == []


def test_logs_and_metric_points_by_identity() -> None:
    processor = dedup()
    assert run(processor, Signal.LOGS, logs(3), str(uuid.uuid4())) == []
    assert run(processor, Signal.LOGS, logs(4), str(uuid.uuid4())) == ["duplicate_item"] * 3
    assert run(processor, Signal.METRICS, metrics(), str(uuid.uuid4())) == []
    changed = metrics()
    changed.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].as_int = 6
    assert run(processor, Signal.METRICS, changed, str(uuid.uuid4())) == ["duplicate_item"]


class _Down(MarkStore):
    def mark(self, keys: Sequence[bytes], batch_id: bytes, ttl_ms: int) -> list[bool]:
        raise ConnectionError("redis is down")


def test_store_down_with_policy_pass_lets_the_batch_through_with_an_audit_event() -> None:
    b = batch(Signal.TRACES, traces(2))
    result = dedup(_Down()).process(b)
    assert not result.drops and result.counts == {"unchecked_batches": 1}
    assert result.audit[0][0] == "dedup_unchecked"


def test_store_down_with_policy_pause_raises_for_the_runtime_to_retry() -> None:
    with pytest.raises(ProcessorUnavailable) as info:
        dedup(_Down(), policy="pause").process(batch(Signal.TRACES, traces(2)))
    assert info.value.retriable
