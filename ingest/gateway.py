"""The protocol-independent core of the gateway: authenticate, limit, sign, publish, account.

The HTTP and gRPC front ends read requests and translate IngestError into their status codes;
everything that decides whether a batch is accepted happens here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from ingest.apikeys import ApiKey, ApiKeyCache, RevokedKey
from ingest.errors import IngestError, PayloadTooLarge, PermissionDenied, Throttled, Unauthenticated, Unavailable
from ingest.framing import check_framing
from ingest.metrics import GatewayMetrics
from ingest.ratelimit import RateLimiter
from ingest.splitting import split_payload
from rampart.audit import AuditLog
from rampart.keyring import KeyRing
from rampart.publisher import Publisher, PublishError, RecordTooLarge
from rampart.topics import TopicNames
from schemas.envelope import Envelope, PayloadFormat, Signal, encode

__all__ = ["Gateway"]

log = logging.getLogger(__name__)

# Room left in a Kafka record for the envelope's own fields around the payload.
_ENVELOPE_HEADROOM_BYTES = 64 * 1024
_THROTTLE_AUDIT_INTERVAL_S = 10.0


@dataclass
class _ThrottleWindow:
    last_emitted: float = 0.0
    suppressed: int = 0


class Gateway:
    def __init__(self, *, gateway_id: str, keyring: KeyRing, keys: ApiKeyCache, limiter: RateLimiter,
                 publisher: Publisher, topics: TopicNames, audit: AuditLog, metrics: GatewayMetrics,
                 max_in_flight: int, max_message_bytes: int, retry_after_s: float,
                 encrypt_payloads: bool = False) -> None:
        self.gateway_id = gateway_id
        self._encrypt_payloads = encrypt_payloads
        self._keyring = keyring
        self._keys = keys
        self._limiter = limiter
        self._publisher = publisher
        self._topics = topics
        self._audit = audit
        self.metrics = metrics
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._max_payload_bytes = max_message_bytes - _ENVELOPE_HEADROOM_BYTES
        self._retry_after_s = retry_after_s
        self._throttled: dict[str, _ThrottleWindow] = {}
        # Gauges read when scraped rather than set on every request; labelled children looked up once
        # per label set (prometheus_client validates and locks on every labels() call).
        metrics.in_flight.set_function(lambda: self._in_flight)
        metrics.kafka_queue.set_function(publisher.queue_length)
        metrics.kafka_reachable.set_function(lambda: 1 if publisher.kafka_reachable else 0)
        self._accepted_series: dict[tuple[Signal, str], tuple[Counter, Counter, Histogram]] = {}
        self._answered_series: dict[tuple[str, Signal, str, int], tuple[Counter, Histogram]] = {}
        # Splitting an oversized request takes up to a few seconds of Python for hostile payloads
        # (millions of tiny items) and memory for the parts: one at a time, off the event loop, so
        # other clients are served meanwhile and memory stays bounded.
        self._splitting = asyncio.Semaphore(1)
        self._ids = _random_uuids()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Admit one request or shed it with 503 when ``max_in_flight`` are already being handled."""
        if self._in_flight >= self._max_in_flight:
            raise Unavailable("gateway is at its concurrency limit", self._retry_after_s)
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    def ready(self) -> bool:
        return self._publisher.kafka_reachable and self._keys.table is not None

    def authenticate(self, token: str | None, signal: Signal, remote: str) -> ApiKey:
        """The API key behind ``token``, allowed to send ``signal``; auth failures are audited."""
        table = self._keys.table
        if table is None:
            raise Unavailable("API-key registry not loaded yet", self._retry_after_s)
        try:
            return table.authenticate(token, signal)
        except RevokedKey as exc:
            self._audit.emit("revoked_key_use", tenant=exc.key.tenant, principal=exc.key.key_id,
                             signal=signal.value, remote=remote)
            raise
        except Unauthenticated as exc:
            self._audit.emit("auth_failure", reason=exc.message, signal=signal.value, remote=remote,
                             principal=_key_id_of(token))
            raise
        except PermissionDenied as exc:
            self._audit.emit("permission_denied", reason=exc.message, signal=signal.value, remote=remote,
                             principal=_key_id_of(token))
            raise

    async def accept(self, key: ApiKey, signal: Signal, payload_format: PayloadFormat, payload: bytes,
                     received_at_ns: int) -> int:
        """Check, sign and publish one request's payload; returns once Kafka holds all of it.

        Returns the number of envelopes written. Raises IngestError when the batch is refused;
        nothing is acknowledged to the client unless every envelope was acknowledged by Kafka.
        """
        check_framing(payload_format, payload, signal.value)
        if not payload:
            return 0  # an empty export request is valid OTLP and carries nothing to keep
        rate_checked = await self._rate_limit(key, signal, len(payload))
        if not self._publisher.kafka_reachable:
            raise Unavailable("Kafka is unreachable", self._retry_after_s)
        if len(payload) <= self._max_payload_bytes:
            parts = [payload]
        else:
            async with self._splitting:
                parts = await asyncio.to_thread(split_payload, signal, payload_format, payload,
                                                self._max_payload_bytes)
        request_id = next(self._ids)
        envelopes = []
        for index, part in enumerate(parts):
            attributes = {"rampart.request_id": request_id}
            if len(parts) > 1:
                attributes["rampart.split"] = f"{index + 1}/{len(parts)}"
            if not rate_checked:
                attributes["rampart.ratelimit"] = "unchecked"
            # Made with the signing key's id, so signing needs no second copy of the envelope.
            envelope = Envelope(batch_id=next(self._ids), tenant=key.tenant, principal=key.key_id,
                                signal=signal, payload_format=payload_format, received_at_ns=received_at_ns,
                                gateway_id=self.gateway_id, payload=part, stages=("gateway",),
                                attributes=attributes, key_id=self._keyring.signing_key_id or "")
            envelopes.append(self._keyring.seal(envelope, encrypt=self._encrypt_payloads))
        topic = self._topics.raw(signal)
        # Metrics are cumulative series whose order matters downstream (Prometheus refuses an older
        # sample after a newer one), so one client's metrics stay on one partition; traces and logs
        # spread evenly by batch id.
        source_key = f"{key.tenant}/{key.key_id}".encode() if signal is Signal.METRICS else None
        try:
            if len(envelopes) == 1:  # the usual case: no task and gathering future for one record
                envelope = envelopes[0]
                await self._publisher.publish(topic, source_key or envelope.batch_id.encode(), encode(envelope))
            else:
                await asyncio.gather(*(self._publisher.publish(topic, source_key or e.batch_id.encode(), encode(e))
                                       for e in envelopes))
        except RecordTooLarge as exc:
            raise PayloadTooLarge(f"batch exceeds the Kafka record limit ({exc})") from None
        except PublishError as exc:
            raise Unavailable(f"{exc}", self._retry_after_s) from None
        series = self._accepted_series.get((signal, key.tenant))
        if series is None:
            series = self._accepted_series[(signal, key.tenant)] = (
                self.metrics.envelopes.labels(signal.value),
                self.metrics.received_bytes.labels(signal.value, key.tenant),
                self.metrics.request_size.labels(signal.value))
        series[0].inc(len(envelopes))
        series[1].inc(len(payload))
        series[2].observe(len(payload))
        return len(envelopes)

    def observe(self, transport: str, signal: Signal, tenant: str, error: IngestError | None,
                started: float) -> None:
        status = 200 if error is None else error.http_status
        series = self._answered_series.get((transport, signal, tenant, status))
        if series is None:
            # Bounded: tenants come from loaded API keys ("" before authentication), statuses are few.
            series = self._answered_series[(transport, signal, tenant, status)] = (
                self.metrics.requests.labels(transport, signal.value, tenant, str(status)),
                self.metrics.request_duration.labels(transport, signal.value))
        series[0].inc()
        series[1].observe(time.perf_counter() - started)

    async def _rate_limit(self, key: ApiKey, signal: Signal, size: int) -> bool:
        """True when the limiter decided; False when Redis was unreachable and the policy let it pass."""
        try:
            checked = await self._limiter.check(key.tenant, size)
        except Throttled:
            self._audit_sparingly("rate_limited", key, signal=signal.value)
            raise
        except Unavailable:
            self.metrics.ratelimit_redis_errors.labels("closed").inc()
            raise
        if not checked:
            self.metrics.ratelimit_redis_errors.labels("open").inc()
            self._audit_sparingly("rate_limit_unchecked", key,
                                  reason="Redis unreachable; policy open let requests through")
        return checked

    def _audit_sparingly(self, event: str, key: ApiKey, **fields: str) -> None:
        """Emit ``event`` for this tenant at most every 10 s, counting the ones held back meanwhile."""
        window = self._throttled.setdefault(f"{event}:{key.tenant}", _ThrottleWindow())
        now = time.monotonic()
        if now - window.last_emitted < _THROTTLE_AUDIT_INTERVAL_S:
            window.suppressed += 1
            return
        self._audit.emit(event, tenant=key.tenant, principal=key.key_id, suppressed_since_last=window.suppressed,
                         **fields)
        window.last_emitted, window.suppressed = now, 0


def _random_uuids() -> Iterator[str]:
    """Random (version 4) UUID strings for batch and request ids, their randomness drawn from the
    OS 4 KiB at a time: uuid.uuid4() makes a system call and a UUID object per id, which was 5 % of
    a 100-span request's CPU."""
    while True:
        pool = os.urandom(4096).hex()
        for i in range(0, len(pool), 32):
            h = pool[i:i + 32]
            yield f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _key_id_of(token: str | None) -> str:
    """The public key-id part of a presented token, for the audit trail (never the secret)."""
    if token and token.startswith("rpk_"):
        key_id = token[4:20]
        if all(c in "0123456789abcdef" for c in key_id):
            return key_id
    return ""
