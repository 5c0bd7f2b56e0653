"""OTLP/HTTP: POST /v1/traces, /v1/metrics, /v1/logs, protobuf or JSON, optionally gzip.

Answers follow the OTLP specification: 200 with an empty Export*ServiceResponse in the request's
encoding, or an error status with a google.rpc.Status body naming the problem, and Retry-After
on 429 and 503. The connections themselves are ingest/http_protocol.py's.
"""

from __future__ import annotations

import json
import math
import time

from google.rpc import status_pb2

from ingest.apikeys import parse_credentials
from ingest.body import GzipInflater, payload_format_for
from ingest.errors import IngestError, PayloadTooLarge, UnsupportedMediaType
from ingest.gateway import Gateway
from ingest.http_protocol import HttpServer, Request, Response
from schemas.envelope import PayloadFormat, Signal

__all__ = ["build_http_server"]

_PROTO = "application/x-protobuf"
_JSON = "application/json"
_SIGNALS_BY_PATH = {f"/v1/{signal.value}": signal for signal in Signal}


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

    async def handle(self, request: Request) -> Response:
        signal = _SIGNALS_BY_PATH.get(request.path)
        if signal is None:
            return Response(404, f"no OTLP endpoint at {request.path[:100]!r}: POST to /v1/traces, /v1/metrics "
                                 "or /v1/logs\n".encode())
        if request.method != "POST":
            return Response(405, b"OTLP export requests are POST\n", headers=(("Allow", "POST"),))
        return await self.export(request, signal)

    async def export(self, request: Request, signal: Signal) -> Response:
        started, received_at_ns = time.perf_counter(), time.time_ns()
        answer_format = _answer_format(request.headers.get("content-type"))
        tenant, error = "", None
        try:
            with self._gateway.slot():
                token = parse_credentials(request.headers)
                key = self._gateway.authenticate(token, signal, request.remote)
                tenant = key.tenant
                payload_format = payload_format_for(request.headers.get("content-type"))
                payload = await self._read_body(request)
                await self._gateway.accept(key, signal, payload_format, payload, received_at_ns)
            return Response(200, b"" if answer_format is PayloadFormat.OTLP_PROTO else b"{}",
                            _content_type(answer_format))
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

    async def _read_body(self, request: Request) -> bytes:
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("gzip", "identity", ""):
            raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}: use gzip or none")
        length = request.content_length
        if length is not None and length > self._max_request_bytes:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {self._max_request_bytes}")
        expect = request.headers.get("expect")
        if expect is not None and request.http_version == "1.1":
            if expect.strip().lower() != "100-continue":
                raise _ExpectationFailed(f"unsupported Expect {expect!r}: only 100-continue is")
            if not request.body.complete:
                # Only now, with the client authenticated and the declared size within the limit, is
                # the body worth receiving.
                request.send_continue()
        chunks = await request.body.read(self._request_timeout_s)
        if encoding == "gzip":
            inflater = GzipInflater(self._max_decompressed_bytes)
            for chunk in chunks:
                inflater.feed(chunk)
            return inflater.finish()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _answer_format(content_type: str | None) -> PayloadFormat:
    try:
        return payload_format_for(content_type)
    except UnsupportedMediaType:
        return PayloadFormat.OTLP_PROTO


def _content_type(fmt: PayloadFormat) -> str:
    return _JSON if fmt is PayloadFormat.OTLP_JSON else _PROTO


def _error_response(error: IngestError, fmt: PayloadFormat) -> Response:
    code = error.grpc_code.value[0]
    if fmt is PayloadFormat.OTLP_JSON:
        body = json.dumps({"code": code, "message": error.message}).encode()
    else:
        body = status_pb2.Status(code=code, message=error.message).SerializeToString()
    headers: tuple[tuple[str, str], ...] = ()
    if error.retry_after_s is not None and error.http_status in (429, 503):
        headers = (("Retry-After", str(max(1, math.ceil(error.retry_after_s)))),)
    return Response(error.http_status, body, _content_type(fmt), headers)


def build_http_server(gateway: Gateway, max_request_bytes: int, max_decompressed_bytes: int,
                      request_timeout_s: float) -> HttpServer:
    front = HttpFrontEnd(gateway, max_request_bytes, max_decompressed_bytes, request_timeout_s)
    return HttpServer(front.handle, request_timeout_s=request_timeout_s, max_body_bytes=max_request_bytes)
