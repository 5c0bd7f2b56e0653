"""OTLP/HTTP: POST /v1/traces, /v1/metrics, /v1/logs, protobuf or JSON, optionally gzip.

Answers follow the OTLP specification: 200 with an empty Export*ServiceResponse in the request's
encoding, or an error status with a google.rpc.Status body naming the problem, and Retry-After
on 429 and 503.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from google.rpc import status_pb2

from ingest.apikeys import parse_credentials
from ingest.body import GzipInflater, payload_format_for
from ingest.errors import IngestError, InvalidArgument, PayloadTooLarge, UnsupportedMediaType
from ingest.gateway import Gateway
from schemas.envelope import PayloadFormat, Signal

__all__ = ["build_http_server"]

_CHUNK_BYTES = 256 * 1024
_PROTO = "application/x-protobuf"
_JSON = "application/json"
_SIGNALS_BY_PATH = {f"/v1/{signal.value}": signal for signal in Signal}


class _RequestTimeout(IngestError):
    http_status = 408
    reason = "request_timeout"


class _ExpectationFailed(IngestError):
    http_status = 417
    reason = "expectation_failed"


class HttpFrontEnd:
    def __init__(self, gateway: Gateway, max_request_bytes: int, max_decompressed_bytes: int,
                 request_timeout_s: float) -> None:
        self._gateway = gateway
        self._max_request_bytes = max_request_bytes
        self._max_decompressed_bytes = max_decompressed_bytes
        self._request_timeout_s = request_timeout_s

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        # aiohttp's low-level server, without its application layer (router, middlewares, request
        # objects with routing state): 10 % less CPU per 100-span request. The three routes need no router.
        signal = _SIGNALS_BY_PATH.get(request.path)
        if signal is None:
            return web.Response(status=404, text=f"no OTLP endpoint at {request.path[:100]!r}: "
                                                 "POST to /v1/traces, /v1/metrics or /v1/logs")
        if request.method != "POST":
            return web.Response(status=405, text="OTLP export requests are POST", headers={"Allow": "POST"})
        return await self.export(request, signal)

    async def export(self, request: web.BaseRequest, signal: Signal) -> web.StreamResponse:
        started, received_at_ns = time.perf_counter(), time.time_ns()
        answer_format = _answer_format(request.headers.get("Content-Type"))
        tenant, error = "", None
        try:
            with self._gateway.slot():
                token = parse_credentials(request.headers)  # case-insensitive mapping
                key = self._gateway.authenticate(token, signal, request.remote or "")
                tenant = key.tenant
                payload_format = payload_format_for(request.headers.get("Content-Type"))
                payload = await self._read_body(request)
                await self._gateway.accept(key, signal, payload_format, payload, received_at_ns)
            return web.Response(body=b"" if answer_format is PayloadFormat.OTLP_PROTO else b"{}",
                                content_type=_content_type(answer_format))
        except IngestError as exc:
            error = exc
            return _error_response(exc, answer_format)
        finally:
            self._gateway.observe("http", signal, tenant, error, started)
            # The error's traceback holds the frames that raised it, and this one holds the error:
            # a reference cycle that kept the body read so far (up to the inflated-size limit, per
            # refused request) alive until the cycle collector ran. Ten gzip bombs in a row left
            # 900 MB resident. Dropping the reference frees it all at once.
            error = None

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("gzip", "identity", ""):
            raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}: use gzip or none")
        if request.content_length is not None and request.content_length > self._max_request_bytes:
            raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds the limit of "
                                  f"{self._max_request_bytes}")
        expect = request.headers.get("Expect")
        if expect is not None and request.version >= HttpVersion11:
            if expect.strip().lower() != "100-continue":
                raise _ExpectationFailed(f"unsupported Expect {expect!r}: only 100-continue is")
            # Only now, with the client authenticated and the declared size within the limit, is the
            # body worth receiving.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # (the answer's size counts from here)
        inflater = GzipInflater(self._max_decompressed_bytes) if encoding == "gzip" else None
        parts: list[bytes] = []
        received = 0

        def take(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)
            if received > self._max_request_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {self._max_request_bytes} bytes")
            if inflater is not None:
                inflater.feed(chunk)
            else:
                parts.append(chunk)

        content = request.content
        try:
            if content.is_eof():
                # The whole body arrived with the headers (usual for small requests): nothing to wait
                # for, so no deadline to arm.
                take(content.read_nowait())
            else:
                async with asyncio.timeout(self._request_timeout_s):
                    async for chunk in content.iter_chunked(_CHUNK_BYTES):
                        take(chunk)
        except TimeoutError:
            raise _RequestTimeout(f"request body not received within {self._request_timeout_s}s") from None
        except (ConnectionError, HttpProcessingError) as exc:
            # The client closed the connection mid-body, or its chunked framing broke. These used to
            # escape the handler: logged as an ERROR with a traceback (any client could fill the log)
            # and counted as 200 in rampart_gateway_requests_total.
            raise InvalidArgument(f"request body incomplete ({type(exc).__name__})") from None
        return inflater.finish() if inflater is not None else b"".join(parts)


def _answer_format(content_type: str | None) -> PayloadFormat:
    try:
        return payload_format_for(content_type)
    except UnsupportedMediaType:
        return PayloadFormat.OTLP_PROTO


def _content_type(fmt: PayloadFormat) -> str:
    return _JSON if fmt is PayloadFormat.OTLP_JSON else _PROTO


def _error_response(error: IngestError, fmt: PayloadFormat) -> web.Response:
    code = error.grpc_code.value[0]
    if fmt is PayloadFormat.OTLP_JSON:
        body = json.dumps({"code": code, "message": error.message}).encode()
    else:
        body = status_pb2.Status(code=code, message=error.message).SerializeToString()
    headers = {}
    if error.retry_after_s is not None and error.http_status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    return web.Response(status=error.http_status, body=body, content_type=_content_type(fmt), headers=headers)


def build_http_server(gateway: Gateway, max_request_bytes: int, max_decompressed_bytes: int,
                      request_timeout_s: float) -> web.Server:
    front = HttpFrontEnd(gateway, max_request_bytes, max_decompressed_bytes, request_timeout_s)
    return web.Server(front.handle, auto_decompress=False, access_log=None,
                      # A connection must deliver its request line and headers within
                      # request_timeout_s of opening (or of the previous answer), and an idle one is
                      # closed after it. aiohttp's default (3630 s) let a slow-loris client that
                      # trickles its headers hold a connection for an hour; the body has its own
                      # deadline (408).
                      keepalive_timeout=request_timeout_s)
