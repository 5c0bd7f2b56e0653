"""Topic names of the pipeline and their idempotent creation.

Names follow DESIGN.md: ``<prefix>.raw.<signal>``, ``<prefix>.clean.<signal>``,
``<prefix>.rejected.<signal>``, ``<prefix>.quarantine.<signal>``, ``<prefix>.dlq.<sink>`` and
``<prefix>.audit``. The prefix is configurable, which is also how tests keep their data apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from rampart.config import TopicsConfig
from schemas.envelope import Signal

__all__ = ["HOP_NAMES", "TopicNames", "TopicReport", "create_topics"]

HOP_NAMES = {"validate": "validated", "scrub": "scrubbed", "dedup": "deduplicated", "forgery": "screened"}


@dataclass(frozen=True)
class TopicNames:
    prefix: str

    def raw(self, signal: Signal) -> str:
        return f"{self.prefix}.raw.{signal.value}"

    def clean(self, signal: Signal) -> str:
        return f"{self.prefix}.clean.{signal.value}"

    def rejected(self, signal: Signal) -> str:
        return f"{self.prefix}.rejected.{signal.value}"

    def quarantine(self, signal: Signal) -> str:
        return f"{self.prefix}.quarantine.{signal.value}"

    def dlq(self, sink: str) -> str:
        return f"{self.prefix}.dlq.{sink}"

    def audit(self) -> str:
        return f"{self.prefix}.audit"

    def after(self, stage: str, signal: Signal) -> str:
        """The topic between ``stage`` and the next one, when stages run as separate consumer groups."""
        return f"{self.prefix}.{HOP_NAMES.get(stage, 'after-' + stage)}.{signal.value}"

    def all(self, dlq_sinks: Iterable[str], pipeline: Sequence[str] = ()) -> list[str]:
        """Every topic of the pipeline (hop topics between the stages of ``pipeline`` included)."""
        names = []
        for signal in Signal:
            names += [self.raw(signal), self.clean(signal), self.rejected(signal), self.quarantine(signal)]
            names += [self.after(stage, signal) for stage in pipeline[:-1]]
        names += [self.dlq(sink) for sink in dlq_sinks]
        names.append(self.audit())
        return names


@dataclass(frozen=True)
class TopicReport:
    created: list[str]
    existing: list[str]


def create_topics(admin: AdminClient, config: TopicsConfig, max_message_bytes: int,
                  pipeline: Sequence[str] = (), timeout_s: float = 30.0) -> TopicReport:
    """Create every missing topic; topics that already exist are left as they are."""
    names = TopicNames(config.prefix).all(config.dlq_sinks, pipeline)
    topic_config = {"max.message.bytes": str(max_message_bytes), "retention.ms": str(config.retention_ms)}
    new = [NewTopic(name, num_partitions=config.partitions, replication_factor=config.replication_factor,
                    config=topic_config) for name in names]
    created, existing = [], []
    for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                existing.append(name)
            else:
                raise
    return TopicReport(sorted(created), sorted(existing))
