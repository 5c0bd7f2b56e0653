"""Processors by name: the built-in ones, plus any registered under the ``rampart.processors``
entry-point group by an installed package.

A third-party package adds one by declaring, in its pyproject.toml::

    [project.entry-points."rampart.processors"]
    my-processor = "my_package.module:build"

where ``build(config: RampartConfig, env: Mapping[str, str]) -> Processor``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points

from processors.base import Processor
from processors.dedup import DedupProcessor, RedisMarks
from processors.forgery import build as build_forgery
from processors.scrub import ScrubProcessor
from processors.validate import ValidateProcessor
from rampart.config import RampartConfig
from rampart.stores import redis_client

__all__ = ["ENTRY_POINT_GROUP", "UnknownProcessor", "available", "build"]

ENTRY_POINT_GROUP = "rampart.processors"

Factory = Callable[[RampartConfig, Mapping[str, str]], Processor]


def _dedup(config: RampartConfig, env: Mapping[str, str]) -> Processor:
    return DedupProcessor(config.dedup, RedisMarks(redis_client(config)), config.redis.key_prefix)


BUILT_IN: dict[str, Factory] = {
    "validate": lambda config, env: ValidateProcessor(config.validate),
    "scrub": lambda config, env: ScrubProcessor(config.scrub, env),
    "dedup": _dedup,
    "forgery": build_forgery,
}


class UnknownProcessor(ValueError):
    pass


def available() -> dict[str, Factory]:
    found: dict[str, Factory] = dict(BUILT_IN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.load())
    return found


def build(names: list[str], config: RampartConfig, env: Mapping[str, str]) -> list[Processor]:
    """Instantiate processors by name; an unknown name is an error that lists the known ones."""
    known = available()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UnknownProcessor(f"unknown processor {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return [known[n](config, env) for n in names]
