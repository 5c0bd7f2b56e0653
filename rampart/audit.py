"""Security-relevant events, to the ``<prefix>.audit`` topic and to the log.

An event names what happened and to whom (tenant, principal = API key id), never a key, a
payload or a secret. Events are JSON, one per Kafka record, keyed by tenant.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from confluent_kafka import Producer

__all__ = ["AuditLog", "audit_record"]

log = logging.getLogger("rampart.audit")


def audit_record(event: str, component: str, instance: str, tenant: str = "", principal: str = "",
                 **fields: Any) -> dict[str, Any]:
    """One audit event as a JSON-ready mapping (the value of a record on the audit topic)."""
    return {"ts": time.time(), "event": event, "component": component, "instance": instance, "tenant": tenant,
            "principal": principal, **fields}


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
