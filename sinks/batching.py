"""Combine records being exported at the same time into fewer, larger exports.

Several records of one (signal, tenant) in flight at once are merged into one export request (OTLP
requests of one type concatenate: the result holds every resource of each), up to a size limit or
until the oldest has waited long enough. Every caller still returns only when its own data was
accepted, so commit-after-acceptance holds per record. If the backend refuses a merged export for
good, each record is exported alone, so one bad batch cannot take others to the DLQ with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from sinks.base import ExportRequest, PermanentExportError

__all__ = ["ExportBatcher"]

Export = Callable[[ExportRequest], Awaitable[Mapping[str, int] | None]]


@dataclass
class _Open:
    requests: list[ExportRequest] = field(default_factory=list)
    futures: list[asyncio.Future[Mapping[str, int] | None]] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


class ExportBatcher:
    def __init__(self, export: Export, max_records: int, max_bytes: int, max_wait_s: float) -> None:
        self._export = export
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._max_wait_s = max_wait_s
        self._open: dict[tuple[str, str], _Open] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def submit(self, request: ExportRequest) -> Mapping[str, int] | None:
        """Export ``request`` (possibly with others); return when the backend accepted it."""
        if self._max_records <= 1:
            return await self._export(request)
        loop = asyncio.get_running_loop()
        key = (request.signal.value, request.tenant)
        batch = self._open.get(key)
        if batch is not None and batch.size + len(request.payload) > self._max_bytes:
            self._close(key)
            batch = None
        if batch is None:
            batch = self._open[key] = _Open()
            batch.timer = loop.call_later(self._max_wait_s, self._close, key)
        future: asyncio.Future[Mapping[str, int] | None] = loop.create_future()
        batch.requests.append(request)
        batch.futures.append(future)
        batch.size += len(request.payload)
        if len(batch.requests) >= self._max_records or batch.size >= self._max_bytes:
            self._close(key)
        return await future

    def _close(self, key: tuple[str, str]) -> None:
        batch = self._open.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)  # keep a reference until it is done
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: _Open) -> None:
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
                    future.set_exception(exc)
                return
            else:
                for i, future in enumerate(batch.futures):
                    future.set_result(result if i == 0 else None)  # what was left out, counted once
                return
        for request, future in zip(batch.requests, batch.futures, strict=True):
            try:
                future.set_result(await self._export(request))
            except Exception as exc:  # noqa: BLE001 - the caller's own outcome
                future.set_exception(exc)
