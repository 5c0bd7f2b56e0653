"""The sink contract: export one OTLP request to a backend, or say precisely why not.

A sink never retries and never talks to Kafka. It raises :class:`RetryableExportError` when trying
again later can succeed (connection errors, timeouts, 429, 502, 503, 504), with ``retry_after_s``
when the backend said how long to wait, and :class:`PermanentExportError` when it cannot (any other
refusal), with the backend's answer. One retry engine (sinks/retry.py) serves every sink.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from schemas.envelope import Signal

__all__ = ["ExportError", "ExportRequest", "PermanentExportError", "RetryableExportError", "Sink"]


class ExportError(Exception):
    retriable: ClassVar[bool] = True

    def __init__(self, message: str, retry_after_s: float | None = None, answer: str = "") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.answer = answer  # what the backend said, shortened; for the DLQ record


class RetryableExportError(ExportError):
    retriable = True


class PermanentExportError(ExportError):
    retriable = False


@dataclass(frozen=True)
class ExportRequest:
    signal: Signal
    tenant: str
    payload: bytes       # an OTLP Export*ServiceRequest, protobuf
    items: int
    batch_id: str


class Sink(ABC):
    name: ClassVar[str]

    @property
    @abstractmethod
    def signals(self) -> list[Signal]:
        """The signals this sink exports (its consumer reads those clean topics)."""

    @abstractmethod
    async def export(self, request: ExportRequest) -> Mapping[str, int] | None:
        """Deliver ``request``; return only when the backend accepted it.

        Returns the items this sink could not represent and left out, by reason (e.g. delta
        temporality for Prometheus), or None when it sent everything.
        """

    async def close(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Release connections."""
