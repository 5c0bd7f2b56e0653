"""Security-relevant events, to the ``<prefix>.audit`` topic and to the log.

An event names what happened and to whom (tenant, principal = API key id), never a key, a
payload or a secret. Events are JSON, one per Kafka record, keyed by tenant.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Producer

from rampart.publisher import Record
from rampart.topics import TopicNames
from schemas.envelope import Signal

__all__ = ["AuditLog", "audit_record", "quarantine_records"]

_MAX_DETAIL = 500

log = logging.getLogger("rampart.audit")


def audit_record(event: str, component: str, instance: str, tenant: str = "", principal: str = "",
                 **fields: Any) -> dict[str, Any]:
    """One audit event as a JSON-ready mapping (the value of a record on the audit topic)."""
    return {"ts": time.time(), "event": event, "component": component, "instance": instance, "tenant": tenant,
            "principal": principal, **fields}


def quarantine_records(topics: TopicNames, signal: Signal, value: bytes, key: bytes | None, source: str,
                       reason: str, detail: str, component: str, instance: str, *, tenant: str = "",
                       principal: str = "", fields: Mapping[str, str] | None = None) -> list[Record]:
    """What every consumer produces for a record it cannot trust or read, or that a processor set aside:
    the record untouched on the quarantine topic, its reason in headers (``rampart quarantine`` and
    operators read them), and a ``quarantined`` audit event.

    ``tenant``, ``principal`` and ``fields`` are given only for a record whose envelope verified (a
    processor's quarantine); each field becomes a ``rampart.quarantine.<name>`` header and an event field.
    """
    detail = detail[:_MAX_DETAIL]
    extra = {name: text[:_MAX_DETAIL] for name, text in (fields or {}).items()}
    headers = [("rampart.quarantine.reason", reason.encode()), ("rampart.quarantine.detail", detail.encode()),
               ("rampart.quarantine.stage", component.encode()), ("rampart.quarantine.source", source.encode()),
               ("rampart.quarantine.at", f"{time.time():.3f}".encode())]
    headers += [(f"rampart.quarantine.{name}", text.encode()) for name, text in extra.items()]
    event = audit_record("quarantined", component, instance, tenant, principal, reason=reason, detail=detail,
                         signal=signal.value, source=source, **extra)
    log.warning("quarantined a record from %s: %s", source, reason)
    return [Record(topics.quarantine(signal), value, key, None, headers),
            Record(topics.audit(), json.dumps(event, sort_keys=True).encode(), tenant.encode() or None)]


class AuditLog:
    def __init__(self, sink: Producer, topic: str, component: str, instance: str) -> None:
        self._sink = sink
        self._topic = topic
        self._component = component
        self._instance = instance
        self.failures = 0

    def emit(self, event: str, *, tenant: str = "", principal: str = "", **fields: Any) -> None:
        record = audit_record(event, self._component, self._instance, tenant, principal, **fields)
        log.warning("audit %s", event, extra={"audit": record})
        try:
            self._sink.produce(self._topic, json.dumps(record, sort_keys=True).encode(),
                               key=tenant.encode() or None, on_delivery=self._delivered)
        except (BufferError, ValueError, RuntimeError) as exc:
            self.failures += 1
            log.error("audit event %s could not be queued for Kafka: %s", event, type(exc).__name__)

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failures += 1
            log.error("audit event was not delivered to Kafka: %s", err)
