"""A real OTLP/HTTP receiver for tests, on 127.0.0.1, whose answer the test controls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.deployment import free_port


class CapturingBackend:
    """Accepts OTLP/HTTP traces (gzip or not) and keeps them, or answers ``status`` while it is set."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status: int | None = None      # answer this instead of 200 while set
        self.answer = "payload refused by test backend"
        self.received: list[ExportTraceServiceRequest] = []
        self.arrivals: dict[bytes, float] = {}  # span (trace id + span id) -> when it first arrived
        self.keep_requests = True
        self.refused = 0
        self.copies: Counter[bytes] = Counter()  # span (trace id + span id) -> how many times it arrived
        self.delay_s = 0.0                       # answer this much later (a slow backend) while set
        self.requests = 0                        # requests received, whatever the answer
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp undoes Content-Encoding: gzip
        self.requests += 1
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        if self.status is not None:
            self.refused += 1
            return web.Response(status=self.status, text=self.answer)
        request = ExportTraceServiceRequest.FromString(body)
        now = time.time()
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self.arrivals.setdefault(span.trace_id + span.span_id, now)
                    self.copies[span.trace_id + span.span_id] += 1
        if self.keep_requests:
            self.received.append(request)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
