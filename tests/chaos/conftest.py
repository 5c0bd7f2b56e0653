"""Fixtures of the chaos tests: isolated deployments with enough partitions for two members per
group, and pipelines around a capturing backend whose processes are all stopped at once afterwards."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.chaos.harness import PARTITIONS, STAGES, Pipeline
from tests.support.backend import CapturingBackend
from tests.support.deployment import Deployment, deployments

PipelineFactory = Callable[..., Pipeline]


@pytest.fixture
def make_pipeline(kafka_bootstrap: str, redis_url: str, tmp_path: pathlib.Path) -> Iterator[PipelineFactory]:
    """Pipelines for one test, each with its own deployment and backend (a test may need two, side by
    side: e.g. one configured to fail open and one to fail closed)."""
    made: list[tuple[Pipeline, Iterator[Deployment]]] = []

    def make(name: str = "p", workers: tuple[str, ...] | None = None) -> Pipeline:
        folder = tmp_path / name
        folder.mkdir()
        holder = deployments(kafka_bootstrap, redis_url, f"test.chaos-{name}.{uuid.uuid4().hex[:8]}", folder,
                             PARTITIONS)
        deployment = next(holder)
        backend = CapturingBackend()
        backend.keep_requests = False  # the account needs only the span ids it counts
        pipeline = Pipeline(deployment, backend) if workers is None else Pipeline(deployment, backend, workers)
        made.append((pipeline, holder))
        return pipeline

    yield make
    for pipeline, holder in made:
        pipeline.stop()
        pipeline.backend.close()
        next(holder, None)  # the deployment's own teardown: stop what is left, delete its topics


@pytest.fixture(scope="module")
def shared_pipeline(kafka_bootstrap: str, redis_url: str, request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """One pipeline for the tests of a module (not started: the module's fixture starts it as it needs),
    so that each test pays for its fault, not for starting ten processes. Its workers are the module's
    ``WORKERS`` (default: one group per stage)."""
    name = request.module.__name__.rsplit(".", 1)[-1][:30]
    backend = CapturingBackend()
    backend.keep_requests = False
    for deployment in deployments(kafka_bootstrap, redis_url, f"test.{name}.{uuid.uuid4().hex[:8]}",
                                  tmp_path_factory.mktemp(name), PARTITIONS):
        pipeline = Pipeline(deployment, backend, getattr(request.module, "WORKERS", STAGES))
        yield pipeline
        pipeline.stop()
    backend.close()
