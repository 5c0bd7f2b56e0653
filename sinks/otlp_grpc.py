"""OTLP/gRPC export: the Export call of the signal's collector service, with the payload as is."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.rpc import error_details_pb2, status_pb2

from rampart.config import OtlpSinkConfig
from schemas.envelope import Signal
from sinks.base import ExportRequest, PermanentExportError, RetryableExportError, Sink
from sinks.otlp import configured_signals, headers_from

__all__ = ["OtlpGrpcSink"]

_METHODS = {
    Signal.TRACES: "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    Signal.METRICS: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    Signal.LOGS: "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
# The OTLP specification's retryable gRPC codes.
RETRYABLE_CODES = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
                             grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
                             grpc.StatusCode.RESOURCE_EXHAUSTED})


class OtlpGrpcSink(Sink):
    name = "otlp"

    def __init__(self, config: OtlpSinkConfig, env: Mapping[str, str]) -> None:
        self._config = config
        target = config.endpoint.removeprefix("http://").removeprefix("https://").rstrip("/")
        self._target = target
        headers = headers_from(config.headers, config.headers_from_env, env, "sinks.otlp")
        self._metadata = {k.lower(): v for k, v in headers.items()}  # gRPC metadata keys are lower case
        self._secure = config.endpoint.startswith("https://") or config.ca_file is not None
        self._channel: grpc.aio.Channel | None = None

    @property
    def signals(self) -> list[Signal]:
        return configured_signals(self._config)

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
            if self._secure:
                roots = None
                if self._config.ca_file:
                    with open(self._config.ca_file, "rb") as f:
                        roots = f.read()
                self._channel = grpc.aio.secure_channel(self._target, grpc.ssl_channel_credentials(roots), options)
            else:
                self._channel = grpc.aio.insecure_channel(self._target, options)
        return self._channel

    async def export(self, request: ExportRequest) -> None:
        metadata = dict(self._metadata)
        if self._config.tenant_header:
            metadata[self._config.tenant_header.lower()] = request.tenant
        call = self._open().unary_unary(_METHODS[request.signal])
        compression = grpc.Compression.Gzip if self._config.compression == "gzip" else grpc.Compression.NoCompression
        try:
            await call(request.payload, metadata=tuple(metadata.items()), timeout=self._config.timeout_s,
                       compression=compression)
        except grpc.aio.AioRpcError as exc:
            detail = f"{self._target} answered {exc.code().name}"
            if exc.code() in RETRYABLE_CODES:
                raise RetryableExportError(detail, _retry_delay(exc), exc.details() or "") from None
            raise PermanentExportError(detail, None, exc.details() or "") from None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None
