"""Bounded state tables: when a table is full, its least recently used entry goes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

__all__ = ["touch"]

K = TypeVar("K")
V = TypeVar("V")


def touch(table: OrderedDict[K, V], key: K, make: Callable[[], V], limit: int) -> tuple[V, tuple[K, V] | None]:
    """The entry for ``key`` (made if missing), now the most recently used; and the entry evicted to
    keep ``table`` within ``limit``, if one was."""
    value = table.get(key)
    if value is not None:
        table.move_to_end(key)
        return value, None
    value = table[key] = make()
    return value, (table.popitem(last=False) if len(table) > limit else None)
