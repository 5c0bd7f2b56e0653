"""Combine records being exported at the same time into fewer, larger exports, within the export slots.

Several records of one (signal, tenant) in flight at once are merged into one export request (OTLP
requests of one type concatenate: the result holds every resource of each), up to a size limit or
until the oldest has waited long enough. Every caller still returns only when its own data was
accepted, so commit-after-acceptance holds per record. If the backend refuses a merged export for
good, each record is exported alone, so one bad batch cannot take others to the DLQ with it.

The batcher owns the export slots (at most ``slots`` exports in flight). A batch whose oldest record
has waited ``max_wait_s`` leaves only when a slot can take it; until then it keeps filling up to the
size limits. Closing it on time while every slot is busy would only queue a small batch behind the
slots: against a slow backend that means many small requests, where waiting gives fewer, fuller ones.
A full batch waits for a slot as it is, and records that come meanwhile start a new one.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from sinks.base import ExportRequest, PermanentExportError

__all__ = ["ExportBatcher"]

Export = Callable[[ExportRequest], Awaitable[Mapping[str, int] | None]]


class Timer(Protocol):
    def cancel(self) -> None: ...


# (delay in seconds, callback) -> a handle that can be cancelled; the event loop's call_later by default.
CallLater = Callable[[float, Callable[[], None]], Timer]


@dataclass
class _Batch:
    key: tuple[str, str]
    order: int  # when it was opened, relative to the others: the oldest waiting batch leaves first
    requests: list[ExportRequest] = field(default_factory=list)
    futures: list[asyncio.Future[Mapping[str, int] | None]] = field(default_factory=list)
    size: int = 0
    due: bool = False  # its oldest record has waited max_wait_s
    timer: Timer | None = None


class ExportBatcher:
    def __init__(self, export: Export, slots: int, max_records: int, max_bytes: int, max_wait_s: float,
                 call_later: CallLater | None = None) -> None:
        self._export = export
        self._free_slots = slots
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._max_wait_s = max_wait_s
        self._call_later = call_later
        self._open: dict[tuple[str, str], _Batch] = {}  # still taking records, one per key
        self._full: list[_Batch] = []                    # closed for size, waiting for a slot
        self._order = itertools.count()
        self._sending: set[asyncio.Task[None]] = set()

    async def submit(self, request: ExportRequest) -> Mapping[str, int] | None:
        """Export ``request`` (possibly with others); return when the backend accepted it."""
        future: asyncio.Future[Mapping[str, int] | None] = asyncio.get_running_loop().create_future()
        key = (request.signal.value, request.tenant)
        batch = self._open.get(key)
        if batch is not None and batch.size + len(request.payload) > self._max_bytes:
            self._close_full(batch)
            batch = None
        if batch is None:
            batch = self._open[key] = _Batch(key, next(self._order))
        batch.requests.append(request)
        batch.futures.append(future)
        batch.size += len(request.payload)
        if len(batch.requests) >= self._max_records or batch.size >= self._max_bytes:
            self._close_full(batch)
        elif batch.timer is None:
            batch.timer = self._schedule(batch)
        self._dispatch()
        return await future

    def _schedule(self, batch: _Batch) -> Timer:
        def expired() -> None:
            batch.due = True
            self._dispatch()

        if self._call_later is not None:
            return self._call_later(self._max_wait_s, expired)
        return asyncio.get_running_loop().call_later(self._max_wait_s, expired)

    def _close_full(self, batch: _Batch) -> None:
        del self._open[batch.key]
        if batch.timer is not None:
            batch.timer.cancel()
        self._full.append(batch)

    def _dispatch(self) -> None:
        """Hand waiting batches to free slots: full ones and those that have waited long enough, oldest first."""
        while self._free_slots > 0:
            ready = [*self._full, *(b for b in self._open.values() if b.due)]
            if not ready:
                return
            batch = min(ready, key=lambda b: b.order)
            if self._open.get(batch.key) is batch:
                del self._open[batch.key]
            else:
                self._full.remove(batch)
            self._free_slots -= 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)  # keep a reference until it is done
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: _Batch) -> None:
        try:
            await self._send_in_slot(batch)
        finally:
            self._free_slots += 1
            self._dispatch()

    async def _send_in_slot(self, batch: _Batch) -> None:
        if len(batch.requests) > 1:
            first = batch.requests[0]
            merged = ExportRequest(first.signal, first.tenant, b"".join(r.payload for r in batch.requests),
                                   sum(r.items for r in batch.requests), first.batch_id)
            try:
                result = await self._export(merged)
            except PermanentExportError:
                pass  # one of them may be the culprit: export each alone, below
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller, who handles or raises it
                for future in batch.futures:
                    _settle(future, exception=exc)
                return
            else:
                for i, future in enumerate(batch.futures):
                    _settle(future, result if i == 0 else None)  # what was left out, counted once
                return
        for request, future in zip(batch.requests, batch.futures, strict=True):
            try:
                _settle(future, await self._export(request))
            except Exception as exc:  # noqa: BLE001 - the caller's own outcome
                _settle(future, exception=exc)


def _settle(future: asyncio.Future[Mapping[str, int] | None], result: Mapping[str, int] | None = None,
            exception: Exception | None = None) -> None:
    # A caller cancelled while its batch was out (a sink shutting down) must not stop the others' answers.
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
