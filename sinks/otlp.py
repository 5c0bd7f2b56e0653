"""OTLP/HTTP (protobuf) export to any OTLP backend; Jaeger v2 is the reference."""

from __future__ import annotations

import gzip
import ssl
from collections.abc import Mapping

import aiohttp

from rampart.config import OtlpSinkConfig
from rampart.settings import ConfigError, env_secret
from schemas.envelope import Signal
from sinks.base import ExportRequest, PermanentExportError, RetryableExportError, Sink

__all__ = ["OtlpHttpSink", "SinkSetupError"]

# The OTLP specification's retryable answers; every other error status is final.
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
_ANSWER_BYTES = 500


class SinkSetupError(ValueError):
    pass


def headers_from(static: Mapping[str, str], from_env: Mapping[str, str], env: Mapping[str, str],
                 section: str) -> dict[str, str]:
    """Configured headers plus those whose values come from environment variables (credentials)."""
    headers = dict(static)
    for header, variable in from_env.items():
        try:
            value = env_secret(env, variable)
        except ConfigError as exc:
            raise SinkSetupError(str(exc)) from None
        if not value:
            raise SinkSetupError(f"{section}.headers_from_env.{header}: environment variable {variable} is not set")
        headers[header] = value
    return headers


def configured_signals(config: OtlpSinkConfig) -> list[Signal]:
    try:
        return [Signal(s) for s in config.signals]
    except ValueError:
        raise SinkSetupError(f"sinks.otlp.signals: {list(config.signals)} (signals are traces, metrics, "
                             "logs)") from None


class OtlpHttpSink(Sink):
    name = "otlp"

    def __init__(self, config: OtlpSinkConfig, env: Mapping[str, str]) -> None:
        self._config = config
        self._headers = {"Content-Type": "application/x-protobuf",
                         **headers_from(config.headers, config.headers_from_env, env, "sinks.otlp")}
        if config.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        self._ssl: ssl.SSLContext | bool = True  # the system's trust store
        if config.ca_file:
            self._ssl = ssl.create_default_context(cafile=config.ca_file)
        self._session: aiohttp.ClientSession | None = None

    @property
    def signals(self) -> list[Signal]:
        return configured_signals(self._config)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._config.timeout_s))
        return self._session

    async def export(self, request: ExportRequest) -> None:
        url = f"{self._config.endpoint.rstrip('/')}/v1/{request.signal.value}"
        headers = dict(self._headers)
        if self._config.tenant_header:
            headers[self._config.tenant_header] = request.tenant
        body = gzip.compress(request.payload, compresslevel=5) if self._config.compression == "gzip" \
            else request.payload
        try:
            async with self._client().post(url, data=body, headers=headers, ssl=self._ssl) as response:
                answer = (await response.read())[:_ANSWER_BYTES]
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RetryableExportError(f"{url}: {type(exc).__name__}") from None
        if 200 <= status < 300:
            return
        text = answer.decode("utf-8", "replace")
        if status in RETRYABLE_STATUS:
            raise RetryableExportError(f"{url} answered {status}", retry_after, text)
        raise PermanentExportError(f"{url} answered {status}", None, text)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
