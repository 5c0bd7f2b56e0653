"""Replay detection: content digests of spans with their ids and timestamps left out, remembered for a
window under the batch that first carried them.

(An event's own timestamp is digested relative to its span's start, and its serialised form is
digested as is: a re-stamper that shifts event times too is caught only through the other fields.)

A replay re-sends spans that were accepted before, exactly or "re-stamped" with fresh trace/span ids
and shifted timestamps. Either way the span's content (service, name, kind, attributes, status,
events relative to the start, duration) is unchanged, so its digest is too.

Memory is bounded two ways: only spans whose *duration* hashes into a 1-in-``sample_every`` class are
remembered (content-defined sampling: a replayed span is sampled exactly when its original was, so
detection keeps its power while memory shrinks ``sample_every`` times), and the index holds at most
``max_entries`` digests in time slots that expire whole.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

__all__ = ["ReplayIndex", "content_digest", "sampled"]

_GOLDEN = 0x9E37_79B9_7F4A_7C15
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF


def sampled(duration_ns: int, sample_every: int) -> bool:
    """Whether a span of this duration is one whose digest is remembered (a multiplicative hash, so
    clocks with microsecond or millisecond resolution still spread over every class)."""
    if sample_every <= 1:
        return True
    return (((duration_ns * _GOLDEN) & _MASK64) >> 40) % sample_every == 0


def content_digest(span: Span, service: str, name: str, kind: int, duration_ns: int, status: Status,
                   attributes: list[tuple[str, Any]]) -> int:
    """A digest of what the span says, without what a replayer would re-stamp (trace, span and
    parent ids, start and end): service, name, kind, status, attributes (as the caller read them,
    in order), whether it has a parent, its duration, and its events relative to its start. The
    caller passes what it already read of the span (name, kind, status): each read costs."""
    events: tuple[Any, ...] = ()
    span_events = span.events
    if span_events:
        start = span.start_time_unix_nano
        events = tuple((e.name, e.time_unix_nano - start, e.SerializeToString(deterministic=True))
                       for e in span_events)
    return hash((service, name, kind, status.code, status.message, tuple(attributes),
                 bool(span.parent_span_id), duration_ns, events, len(span.links)))


class ReplayIndex:
    """Digest -> the batch that first carried it, for ``window_s`` seconds, at most ``max_entries``."""

    def __init__(self, window_s: float, max_entries: int, slots: int = 16) -> None:
        self._slot_s = window_s / slots
        self._slots = slots
        self._max_entries = max_entries
        self._owner: dict[int, int] = {}
        self._ring: deque[tuple[int, list[int]]] = deque()   # (slot number, digests added in it)

    def __len__(self) -> int:
        return len(self._owner)

    def check_and_add(self, digests: list[int], batch_key: int, now_s: float) -> int:
        """How many of ``digests`` were first seen under another batch; then remember the new ones."""
        self._expire(now_s)
        owner = self._owner
        matched = 0
        fresh: list[int] = []
        for digest in digests:
            first = owner.get(digest)
            if first is None:
                owner[digest] = batch_key
                fresh.append(digest)
            elif first != batch_key:
                matched += 1
        if fresh:
            slot = int(now_s / self._slot_s)
            if self._ring and self._ring[-1][0] == slot:
                self._ring[-1][1].extend(fresh)
            else:
                self._ring.append((slot, fresh))
        while len(owner) > self._max_entries and len(self._ring) > 1:
            self._drop_oldest()
        return matched

    def _expire(self, now_s: float) -> None:
        oldest_kept = int(now_s / self._slot_s) - self._slots
        while self._ring and self._ring[0][0] < oldest_kept:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, digests = self._ring.popleft()
        for digest in digests:
            self._owner.pop(digest, None)
