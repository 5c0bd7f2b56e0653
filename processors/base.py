"""The processor contract: a small, pure transformation of one decoded OTLP batch.

A processor receives a :class:`Batch` (the decoded request plus the envelope's metadata), may
change items in place, and returns a :class:`Result` that says what it changed and what it dropped,
each drop with a stable reason code. It never talks to Kafka and never raises for bad data: bad
data is a drop with a reason. The stage runtime does everything else (verify, decode, encode, sign,
produce, commit).

Writing one::

    class MyProcessor(Processor):
        name = "my-processor"

        def process(self, batch: Batch) -> Result:
            result = Result()
            for ref in walk(batch.request, batch.signal):
                if looks_wrong(ref.item):
                    result.drop(ref, "my_reason", "what exactly is wrong")
            return result

and register it under the ``rampart.processors`` entry-point group (see processors/registry.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from rampart_native import TraceScan, scan_traces

from processors.otlp import ItemRef
from schemas.envelope import PayloadFormat, Signal

__all__ = ["Batch", "Drop", "Processor", "ProcessorUnavailable", "Quarantine", "RawBatch", "Result"]


class ProcessorUnavailable(Exception):
    """A processor cannot do its work right now (its state store is down) and must not pass the
    batch unchecked: the runtime pauses and retries the same batch later. ``retriable`` by nature."""

    retriable = True


@dataclass
class Batch:
    """One decoded OTLP request and what the envelope says about it (all of it verified)."""

    signal: Signal
    request: Message
    batch_id: str
    tenant: str
    principal: str
    received_at_ns: int
    attributes: Mapping[str, str] = field(default_factory=dict)
    # The payload as the stage received it, for cheap screens before any item is looked at; None
    # once a processor changed or dropped anything.
    raw_payload: bytes | None = None
    # True when a processor's native parse found ``raw_payload`` to be exactly what encoding
    # ``request`` gives: while it is unchanged the chain sends it on instead of encoding again.
    raw_canonical: bool = False
    payload_format: PayloadFormat = PayloadFormat.OTLP_PROTO
    # The operator key id whose signed release brought this batch back from quarantine (verified by
    # the chain, rampart/release.py); set only in chains with a processor that honours releases.
    released_by: str | None = None


@dataclass
class RawBatch:
    """A verified OTLP protobuf trace batch before decoding: the envelope's metadata and the payload's
    wire bytes, with a native scan of them built on first use (see :meth:`Processor.clears`)."""

    signal: Signal
    batch_id: str
    tenant: str
    principal: str
    received_at_ns: int
    payload: bytes
    released_by: str | None = None   # as Batch.released_by

    @cached_property
    def scan(self) -> TraceScan:
        return scan_traces(self.payload)

    @cached_property
    def services(self) -> list[str]:
        """The resources' service names, distinct, in order (tenant_service keying's keys)."""
        return self.scan.services()


@dataclass(frozen=True)
class Drop:
    ref: ItemRef
    reason: str    # stable code for metrics and reject records, e.g. "invalid_trace_id"
    detail: str    # for people: what exactly was wrong


@dataclass(frozen=True)
class Quarantine:
    """A processor's request to set the whole input record aside for an operator (``rampart quarantine``)."""

    reason: str                                    # stable code, e.g. "forgery_suspected"
    detail: str                                    # for people
    # Extra facts for the operator (e.g. a score), as record headers ``rampart.quarantine.<name>`` and
    # audit-event fields. Never payload values or secrets.
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Result:
    """What one processor did to one batch: items it changed and items it dropped (with reasons).

    Every item it does not mention was kept as it was.
    """

    changed: int = 0
    drops: list[Drop] = field(default_factory=list)
    # Counters the processor wants exported, e.g. {"email": 3} matches per scrub rule.
    counts: dict[str, int] = field(default_factory=dict)
    # Security-relevant events for the audit topic: (event name, fields without secrets).
    audit: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    # Set when the whole batch must not go on: the runtime puts the input record, as it arrived (signed,
    # so it can be released later), on the quarantine topic instead of producing anything for it.
    quarantine: Quarantine | None = None

    def drop(self, ref: ItemRef, reason: str, detail: str) -> None:
        self.drops.append(Drop(ref, reason, detail))

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


class Processor(ABC):
    name: ClassVar[str]
    # A processor that quarantines whole batches on suspicion, and lets an operator's release through
    # (Batch.released_by), says so: its chain then checks every claimed release before it runs.
    honours_release: ClassVar[bool] = False

    @abstractmethod
    def process(self, batch: Batch) -> Result:
        """Inspect and possibly change ``batch.request`` in place; report changes and drops.

        Leave dropped items where they are: the runtime copies them into reject records and removes
        them before the next processor runs, so no processor sees what an earlier one dropped.
        """

    def clears(self, raw: RawBatch) -> Result | None:
        """The clean-batch fast path: the :class:`Result` that :meth:`process` would return for this
        batch if it can tell from the raw batch alone that it would change and drop nothing (only
        counters and audit events), else None (the default: this processor must see the decoded batch).

        The chain calls it only for a batch whose ``raw.scan.clean`` is true, and skips decoding and
        encoding when every processor of the chain clears the batch, so an answer other than None
        must be exactly what :meth:`process` would have said.
        """
        return None

    def register_metrics(self, registry: CollectorRegistry) -> None:  # noqa: B027 - optional hook, empty by design
        """Create metrics of the processor's own (beyond ``Result.counts``) in the worker's registry."""

    def close(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Finish background work (e.g. state being saved) when the worker stops."""
