"""Two forgery processors, as two workers under ``stages.keying: tenant_service``: one screens the
callers (frontend), the other the callee (cart), and they share the lineage index in the real Redis.
A small flood of fake cart spans naming parents nobody reported is flagged ``orphan_spans``; the
genuine traffic is not. Without the shared index the same split sees nothing."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import cast

import pytest
import redis

from processors.base import Batch, Result
from processors.forgery import ForgeryProcessor, Verdict
from processors.forgery.shared_lineage import RedisParentIds
from processors.otlp import resources
from rampart.config import ForgeryConfig
from tests.unit.processors.test_forgery import CONFIG, T0
from tests.unit.processors.test_forgery_lineage import run_linked

pytestmark = pytest.mark.integration


class Split:
    """Routes each batch to the processor that owns its service, as tenant_service keying does."""

    def __init__(self, owners: dict[str, ForgeryProcessor]) -> None:
        self.owners = owners
        self.screened: dict[str, int] = dict.fromkeys(owners, 0)

    def _owner(self, batch: Batch) -> ForgeryProcessor:
        (resource,) = resources(batch.request, batch.signal)
        service = next(kv.value.string_value for kv in resource.resource.attributes if kv.key == "service.name")
        self.screened[service] += 1
        return self.owners[service]

    def screen(self, batch: Batch) -> Verdict:
        return self._owner(batch).screen(batch)

    def act(self, batch: Batch, verdict: Verdict) -> Result:
        return self.owners["cart"].act(batch, verdict)


@pytest.fixture
def prefix(redis_key_prefix: str) -> str:
    return redis_key_prefix


def split(config: ForgeryConfig, store: RedisParentIds | None) -> Split:
    return Split({"frontend": ForgeryProcessor(config, lineage_index=store),
                  "cart": ForgeryProcessor(config, lineage_index=store)})


def test_a_masking_flood_split_over_two_workers_is_caught_by_the_shared_index(redis_url: str, prefix: str) -> None:
    store = RedisParentIds(redis.Redis.from_url(redis_url), prefix)
    workers = split(CONFIG, store)
    rng = random.Random(21)
    warmup, _ = run_linked(cast(ForgeryProcessor, workers), rng, T0, 240)
    genuine, fakes = run_linked(cast(ForgeryProcessor, workers), rng, T0 + 240, 180, fake_every=1)
    assert workers.screened["frontend"] > 100 and workers.screened["cart"] > 100
    # The first fakes wait orphan_wait_s (and the callers' watermarks) to be known as orphans; then
    # every one is caught, as with one worker (tests/unit/processors/test_forgery_lineage.py).
    assert all(v.score >= 0.8 and "orphan_spans" in v.codes for v in fakes[6:])
    assert not any("orphan_spans" in v.codes for v in warmup)
    assert sum(v.score >= 0.8 for v in genuine) <= 1
    assert redis.Redis.from_url(redis_url).exists(f"{prefix}acme:w")


def test_the_same_split_without_the_shared_index_is_silent() -> None:
    workers = split(replace(CONFIG, lineage_index="memory"), None)
    rng = random.Random(21)
    run_linked(cast(ForgeryProcessor, workers), rng, T0, 240)
    _, fakes = run_linked(cast(ForgeryProcessor, workers), rng, T0 + 240, 180, fake_every=1)
    # Every genuine cart batch looks orphaned too (its callers are on the other worker): no excess.
    assert not any("orphan_spans" in v.codes for v in fakes)
