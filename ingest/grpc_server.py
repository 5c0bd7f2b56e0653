"""OTLP/gRPC: the Export method of TraceService, MetricsService and LogsService.

Requests arrive as raw bytes (no protobuf decode: the handlers are registered without a
deserializer); gzip is undone by gRPC itself, bounded by the receive-size limit. Errors carry the
matching status code, and RESOURCE_EXHAUSTED/UNAVAILABLE carry a google.rpc.RetryInfo so that
OTLP exporters wait as told before retrying.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from ingest.apikeys import parse_credentials
from ingest.errors import IngestError
from ingest.gateway import Gateway
from rampart.config import TlsConfig
from schemas.envelope import PayloadFormat, Signal

__all__ = ["build_grpc_server"]

_SERVICES = {
    Signal.TRACES: "opentelemetry.proto.collector.trace.v1.TraceService",
    Signal.METRICS: "opentelemetry.proto.collector.metrics.v1.MetricsService",
    Signal.LOGS: "opentelemetry.proto.collector.logs.v1.LogsService",
}

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def _export_handler(gateway: Gateway, signal: Signal) -> Handler:
    async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started, received_at_ns = time.perf_counter(), time.time_ns()
        tenant, error = "", None
        try:
            with gateway.slot():
                metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
                key = gateway.authenticate(parse_credentials(metadata), signal, context.peer() or "")
                tenant = key.tenant
                await gateway.accept(key, signal, PayloadFormat.OTLP_PROTO, request, received_at_ns)
            return b""  # an empty Export*ServiceResponse: everything was accepted
        except IngestError as exc:
            error = exc
        finally:
            gateway.observe("grpc", signal, tenant, error, started)
        # Refused. gRPC keeps the AbortError that abort() raises (its RPC state holds it, and this
        # frame's context holds the RPC state): a reference cycle through this frame and, via the
        # error's traceback, every frame that saw the request. It kept each refused request's body
        # (up to the receive limit, unauthenticated requests included) until the cycle collector
        # ran: 40-60 MB per request. So abort outside the except block, once nothing here refers
        # to the request or the error any more.
        code, text, details = error.grpc_code, error.message, _status_details(error)
        del request, error
        await context.abort(code, text, trailing_metadata=details)
        raise AssertionError("unreachable: abort raises")

    return export


def _status_details(error: IngestError) -> tuple[tuple[str, bytes], ...]:
    if error.retry_after_s is None:
        return ()
    delay = duration_pb2.Duration(seconds=max(1, math.ceil(error.retry_after_s)))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=error.grpc_code.value[0], message=error.message, details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),)


def build_grpc_server(gateway: Gateway, listen: str, tls: TlsConfig, max_message_bytes: int) -> grpc.aio.Server:
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
    ])
    for signal, service in _SERVICES.items():
        handler = grpc.unary_unary_rpc_method_handler(_export_handler(gateway, signal))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Export": handler}),))
    if tls.cert_file and tls.key_file:
        with open(tls.key_file, "rb") as key_file, open(tls.cert_file, "rb") as cert_file:
            pair = (key_file.read(), cert_file.read())
        root = None
        if tls.client_ca_file:
            with open(tls.client_ca_file, "rb") as ca_file:
                root = ca_file.read()
        credentials = grpc.ssl_server_credentials([pair], root_certificates=root,
                                                  require_client_auth=root is not None)
        bound = server.add_secure_port(listen, credentials)
    else:
        bound = server.add_insecure_port(listen)
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {listen}")
    return server
