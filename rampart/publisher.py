"""Produce envelopes to Kafka from asyncio code and wait for the broker's acknowledgement.

librdkafka does the network work in its own threads; one poll thread here serves delivery
reports and hands each to the event loop, so a request coroutine can await its own batch.
The producer's queue is bounded: when Kafka is slow or down the queue fills, and the gateway
answers 503 instead of buffering without limit.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from rampart.config import KafkaConfig
from rampart.kafka import producer_properties

__all__ = ["PublishError", "Publisher", "Record", "RecordTooLarge", "publish_until_acknowledged", "retry_delay_s"]

log = logging.getLogger(__name__)

_HEALTH_CHECK_INTERVAL_S = 5.0
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class Record:
    """One record to produce."""

    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None


class PublishError(Exception):
    """Kafka did not take a record (in time). Retrying later can succeed."""

    retriable = True


class RecordTooLarge(PublishError):
    """The record exceeds the Kafka record limit; retrying cannot help."""

    retriable = False


class Publisher:
    def __init__(self, config: KafkaConfig, client_id: str, loop: asyncio.AbstractEventLoop,
                 ack_timeout_s: float, queue_max_bytes: int = 256 * 1024 * 1024) -> None:
        self._loop = loop
        self._ack_timeout_s = ack_timeout_s
        self.producer = Producer(producer_properties(
            config, client_id,
            **{"queue.buffering.max.kbytes": queue_max_bytes // 1024, "error_cb": self._on_error}))
        self._stop = threading.Event()
        # Delivery reports of one poll, handed to the event loop together: waking the loop once per
        # record cost about 5 % of the gateway's CPU with 100-span requests.
        self._reports: list[tuple[asyncio.Future[KafkaError | None], KafkaError | None]] = []
        self.kafka_reachable = False
        self._last_check = 0.0
        self._thread = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
        self._thread.start()

    async def publish(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None,
                      headers: list[tuple[str, bytes]] | None = None) -> None:
        """Return once Kafka has acknowledged the record (acks=all); raise PublishError otherwise."""
        future: asyncio.Future[KafkaError | None] = self._loop.create_future()

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if threading.current_thread() is self._thread:  # inside the poll loop's producer.poll()
                self._reports.append((future, err))
            else:  # served by flush() on close, in the closing thread
                self._loop.call_soon_threadsafe(_resolve_all, [(future, err)])

        extra: dict[str, Any] = {}
        if partition is not None:
            extra["partition"] = partition
        if headers:
            extra["headers"] = headers
        try:
            self.producer.produce(topic, value=value, key=key, on_delivery=delivered, **extra)
        except BufferError:
            raise PublishError("Kafka is not keeping up (producer queue full)") from None
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                raise RecordTooLarge("record exceeds the Kafka record limit") from None
            raise PublishError(f"Kafka refused the record ({_name(error)})") from None
        # A plain timer rather than asyncio.timeout(), which cost 6 µs a record (a quarter of the
        # produce call's cost); the report of a timed-out record finds its future already done.
        expiry = self._loop.call_later(self._ack_timeout_s, _expire, future)
        try:
            err = await future
        finally:
            expiry.cancel()
        if err is not None:
            raise PublishError(f"Kafka did not take the record ({_name(err)})")

    def queue_length(self) -> int:
        return len(self.producer)

    def close(self, timeout_s: float = 10.0) -> int:
        """Deliver what is queued (up to ``timeout_s``), stop polling; returns records left undelivered."""
        left = self.producer.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout=2)
        return left

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)
            if self._reports:
                reports, self._reports = self._reports, []
                self._loop.call_soon_threadsafe(_resolve_all, reports)
            now = time.monotonic()
            interval = _HEALTH_CHECK_INTERVAL_S if self.kafka_reachable else 1.0
            if now - self._last_check >= interval:
                self._last_check = now
                self._check_reachable()

    def _check_reachable(self) -> None:
        try:
            metadata = self.producer.list_topics(timeout=2)
            reachable = bool(metadata.brokers)
        except KafkaException:
            reachable = False
        if reachable != self.kafka_reachable:
            log.log(logging.INFO if reachable else logging.WARNING, "Kafka is %s",
                    "reachable" if reachable else "unreachable")
        self.kafka_reachable = reachable

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.kafka_reachable = False
        log.warning("Kafka client error: %s", err.name())


def retry_delay_s(attempt: int) -> float:
    """Backoff for the n-th retry of an internal dependency (Kafka, Redis): 0.2 s growing to 5 s, jittered."""
    return _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)] * (0.5 + random.random())  # noqa: S311 - jitter


async def publish_until_acknowledged(publisher: Publisher, records: list[Record],
                                     on_retry: Callable[[PublishError], None]) -> None:
    """Produce all ``records`` and wait for Kafka to acknowledge every one, retrying with backoff for as
    long as it takes: a consumer calls this before letting its input be committed."""
    attempt = 0
    while True:
        try:
            await asyncio.gather(*(publisher.publish(r.topic, r.key, r.value, r.partition, r.headers) for r in records))
            return
        except PublishError as exc:
            on_retry(exc)
            await asyncio.sleep(retry_delay_s(attempt))
            attempt += 1


def _expire(future: asyncio.Future[KafkaError | None]) -> None:
    if not future.done():
        future.set_exception(PublishError("Kafka did not acknowledge in time"))


def _resolve_all(reports: list[tuple[asyncio.Future[KafkaError | None], KafkaError | None]]) -> None:
    for future, err in reports:
        if not future.done():  # (its publish may have timed out)
            future.set_result(err)


def _name(error: object) -> str:
    return error.name() if isinstance(error, KafkaError) else type(error).__name__
