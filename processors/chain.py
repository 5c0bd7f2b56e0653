"""One stage's work on one Kafka record, independent of how records are consumed.

verify (and decrypt) -> decode once -> run the processors -> encode once -> (encrypt and) sign -> the
records to produce.
Everything that leaves a stage is described here as a :class:`rampart.publisher.Record`: the output envelope(s),
reject records for dropped items, a quarantine record for a message that cannot be trusted or read,
and audit events. The runtime produces them all and commits the input only once Kafka has
acknowledged every one.
"""

from __future__ import annotations

import json
import logging
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from google.protobuf.message import Message

from processors.base import Batch, Drop, Processor, Quarantine, RawBatch, Result
from processors.otlp import (
    ItemRef,
    OtlpDecodeError,
    count_entries,
    count_items,
    decode_payload,
    prune_empty,
    remove,
    subset,
    walk,
)
from rampart.audit import audit_record, quarantine_records
from rampart.keyring import KeyRing, SignatureError, is_encrypted
from rampart.publisher import Record
from rampart.release import ReleaseError, ReleaseKeys
from rampart.topics import TopicNames
from schemas.envelope import Envelope, EnvelopeError, PayloadFormat, Signal, decode, encode

__all__ = ["MAX_ENTRIES_PER_RECORD", "ChainOutcome", "Keying", "StageChain", "passed_stages"]

log = logging.getLogger(__name__)

Keying = str  # "gateway" | "trace_id" | "tenant_service"
_MAX_DETAIL = 500
_PART_NAMESPACE = uuid.UUID(int=0)
# A record holding more resources, scopes, metrics and items than this is quarantined, not
# processed. Every item costs the processors ~500 bytes and ~20 µs of Python, and the record size
# alone does not bound their number: a 10 MB record of 4.9 million empty log records took 108 s
# and 2.8 GB. Real records of that size hold a few hundred thousand at most.
MAX_ENTRIES_PER_RECORD = 1_000_000


def passed_stages(stages: tuple[str, ...], required: tuple[str, ...]) -> bool:
    """Whether ``required`` appear in ``stages`` in this order (other stages may sit between them)."""
    remaining = iter(stages)
    return all(stage in remaining for stage in required)


@dataclass
class ChainOutcome:
    records: list[Record] = field(default_factory=list)
    quarantine_reason: str | None = None
    items_in: int = 0
    items_out: int = 0
    changed: dict[str, int] = field(default_factory=dict)                 # processor -> items changed
    dropped: dict[tuple[str, str], int] = field(default_factory=dict)     # (processor, reason) -> items
    counts: dict[tuple[str, str], int] = field(default_factory=dict)      # (processor, counter) -> n
    fast_path_batches: int = 0    # 1 if every processor cleared the batch undecoded (see Processor.clears)


class StageChain:
    def __init__(self, *, names: list[str], processors: list[Processor], keyring: KeyRing, topics: TopicNames,
                 output_topic: Callable[[Signal], str], keying: Keying, output_partitions: Callable[[Signal], int],
                 instance: str, encrypt_unscrubbed: bool = False, required_before: tuple[str, ...] = (),
                 fast_path: bool = True, release_keys: ReleaseKeys | None = None) -> None:
        self.names = names
        self._processors = processors
        self._keyring = keyring
        self._topics = topics
        self._output_topic = output_topic
        self._keying = keying
        self._output_partitions = output_partitions
        self._instance = instance
        self._component = "+".join(names)
        self._encrypt_unscrubbed = encrypt_unscrubbed
        # Stages an input must have passed already: a genuine gateway envelope copied by hand past
        # validate or scrub (onto a later topic) verifies, but must not skip them.
        self._required_before = required_before
        # The clean-batch fast path needs every processor to answer clears(); otherwise it would only
        # cost the early ones' work (a Redis round trip for dedup) before decoding anyway.
        self._fast_path = fast_path and all(type(p).clears is not Processor.clears for p in processors)
        # Releases matter only where a processor honours them; elsewhere their attributes just travel on.
        self._release_keys = (release_keys or ReleaseKeys({})) if any(p.honours_release for p in processors) \
            else None

    def handle(self, signal: Signal, value: bytes, key: bytes | None, source: str) -> ChainOutcome:
        """What to produce for one input record. Raises ProcessorUnavailable (retry later) and nothing else."""
        outcome = ChainOutcome()
        try:
            sealed = decode(value)
            envelope = self._keyring.open(sealed)
            if envelope.signal is not signal:
                raise _Untrusted("signal_mismatch", f"a {envelope.signal.value} envelope on a {signal.value} topic")
            if not passed_stages(envelope.stages, self._required_before):
                raise _Untrusted("skipped_stages", f"envelope has passed {', '.join(envelope.stages)}; "
                                                   f"{', '.join(self._required_before)} must come first")
            released_by = self._release_keys.check(envelope) if self._release_keys is not None else None
            cleared = self._cleared(envelope, released_by)
            if cleared is None:
                request = decode_payload(signal, envelope.payload_format, envelope.payload)
                if count_entries(request, signal, MAX_ENTRIES_PER_RECORD) > MAX_ENTRIES_PER_RECORD:
                    raise _Untrusted("too_many_items", f"more than {MAX_ENTRIES_PER_RECORD} resources, scopes, "
                                                       "metrics and items in one record")
        except (EnvelopeError, SignatureError, OtlpDecodeError, ReleaseError, _Untrusted) as exc:
            reason = getattr(exc, "reason", "malformed_envelope")
            self._quarantine(outcome, signal, value, key, source, reason, str(exc))
            return outcome

        # Data that came encrypted stays encrypted until it is scrubbed, whatever this stage's own setting.
        encrypt = self._encrypt_unscrubbed or is_encrypted(sealed)
        kept = self._kept_placement(signal, key, source)
        if cleared is not None:
            self._fast_outcome(outcome, envelope, kept, encrypt, *cleared)
            return outcome
        batch = Batch(signal=signal, request=request, batch_id=envelope.batch_id, tenant=envelope.tenant,
                      principal=envelope.principal, received_at_ns=envelope.received_at_ns,
                      attributes=envelope.attributes, raw_payload=envelope.payload,
                      payload_format=envelope.payload_format, released_by=released_by)
        outcome.items_in = count_items(request, signal)
        for processor in self._processors:
            result = processor.process(batch)
            batch.raw_payload = None if result.changed or result.drops else batch.raw_payload
            if result.changed:
                outcome.changed[processor.name] = outcome.changed.get(processor.name, 0) + result.changed
            for counter, n in result.counts.items():
                outcome.counts[(processor.name, counter)] = outcome.counts.get((processor.name, counter), 0) + n
            for event, fields in result.audit:
                self._audit(outcome, event, envelope, **fields)
            if result.quarantine is not None:
                self._set_aside(outcome, signal, value, key, source, envelope, processor.name, result.quarantine)
                return outcome
            if result.drops:
                self._reject(outcome, envelope, processor.name, result.drops, encrypt)
                remove([d.ref for d in result.drops])
        prune_empty(request, signal)
        outcome.items_out = count_items(request, signal)
        if outcome.items_out:
            encoded = batch.raw_payload if batch.raw_canonical else None
            outcome.records += self._outputs(envelope, request, kept, encrypt, encoded)
        return outcome

    def _kept_placement(self, signal: Signal, key: bytes | None, source: str) -> tuple[bytes | None, int | None]:
        """(key, partition) for an output that keeps the input's placement.

        A keyed input keeps its key. An unkeyed one was placed by partition (trace_id keying upstream)
        and keeps that partition: left to the producer it would land anywhere, scattering a trace's
        spans again, and the copies of a redelivered batch would reach different partitions, hence
        different sink replicas that could both export them before either marks it delivered.
        """
        if key is not None:
            return key, None
        parts = source.rsplit("/", 2)  # "topic/partition/offset" (Kafka topic names hold no "/")
        if len(parts) != 3 or not parts[1].isdigit():
            return None, None
        return None, int(parts[1]) % self._output_partitions(signal)

    # ------------------------------------------------------------ the clean-batch fast path

    def _cleared(self, envelope: Envelope, released_by: str | None) -> tuple[RawBatch, list[Result]] | None:
        """Every processor's result if each clears the undecoded batch (Processor.clears), else None.

        Only OTLP protobuf traces the native scan fully understands qualify, under tenant_service
        keying only those of one service (more would need splitting by resource); anything else,
        including a record over the entry limit, takes the Python path, which gives the exact reasons.
        """
        if (not self._fast_path or envelope.signal is not Signal.TRACES
                or envelope.payload_format is not PayloadFormat.OTLP_PROTO):
            return None
        raw = RawBatch(signal=envelope.signal, batch_id=envelope.batch_id, tenant=envelope.tenant,
                       principal=envelope.principal, received_at_ns=envelope.received_at_ns, payload=envelope.payload,
                       released_by=released_by)
        if not raw.scan.clean or not raw.scan.spans or raw.scan.entries > MAX_ENTRIES_PER_RECORD:
            return None
        if self._keying == "tenant_service" and len(raw.services) != 1:
            return None
        results = []
        for processor in self._processors:
            result = processor.clears(raw)
            if result is None or result.changed or result.drops or result.quarantine is not None:
                return None
            results.append(result)
        return raw, results

    def _fast_outcome(self, outcome: ChainOutcome, envelope: Envelope, kept: tuple[bytes | None, int | None],
                      encrypt: bool, raw: RawBatch, results: list[Result]) -> None:
        """What the Python path gives for a batch nothing changes: the counters, the audit events and the
        input's own payload (a clean scan re-encodes to exactly its bytes) or the native split of it."""
        outcome.fast_path_batches = 1
        outcome.items_in = outcome.items_out = raw.scan.spans
        for processor, result in zip(self._processors, results, strict=True):
            for counter, n in result.counts.items():
                outcome.counts[(processor.name, counter)] = outcome.counts.get((processor.name, counter), 0) + n
            for event, fields in result.audit:
                self._audit(outcome, event, envelope, **fields)
        topic = self._output_topic(envelope.signal)
        if self._keying == "tenant_service":
            (service,) = raw.services
            outcome.records.append(self._record(topic, envelope, encrypt, envelope.payload, "",
                                                f"{envelope.tenant}/{service}".encode(), None))
            return
        if self._keying != "trace_id":
            outcome.records.append(self._record(topic, envelope, encrypt, envelope.payload, "", *kept))
            return
        for partition, part in raw.scan.split(self._output_partitions(envelope.signal)):
            outcome.records.append(self._record(topic, envelope, encrypt, envelope.payload if part is None else part,
                                                "" if part is None else f"p{partition}", None, partition))

    # ------------------------------------------------------------ outputs

    def _outputs(self, envelope: Envelope, request: Message, kept: tuple[bytes | None, int | None],
                 encrypt: bool, encoded: bytes | None) -> list[Record]:
        """The records for a processed request; ``encoded`` is its encoding when already known."""
        signal = envelope.signal

        def whole() -> bytes:
            return encoded if encoded is not None else request.SerializeToString()

        topic = self._output_topic(signal)
        if self._keying == "trace_id" and signal is Signal.TRACES:
            partitions = self._output_partitions(signal)
            groups: dict[int, list[ItemRef]] = {}
            for ref in walk(request, signal):
                groups.setdefault(zlib.crc32(ref.item.trace_id) % partitions, []).append(ref)
            if len(groups) == 1:
                (partition,) = groups
                return [self._record(topic, envelope, encrypt, whole(), "", None, partition)]
            return [self._record(topic, envelope, encrypt, subset(signal, refs).SerializeToString(), f"p{partition}",
                                 None, partition) for partition, refs in sorted(groups.items())]
        if self._keying == "tenant_service" or (self._keying == "trace_id" and signal is Signal.METRICS):
            # (Metrics have no trace id; keeping a service's series on one partition keeps them in order.)
            by_service: dict[str, list[ItemRef]] = {}
            for ref in walk(request, signal):
                service = next((kv.value.string_value for kv in ref.resource.resource.attributes
                                if kv.key == "service.name"), "")
                by_service.setdefault(service, []).append(ref)
            if len(by_service) == 1:
                (service,) = by_service
                service_key = f"{envelope.tenant}/{service}".encode()
                return [self._record(topic, envelope, encrypt, whole(), "", service_key, None)]
            return [self._record(topic, envelope, encrypt, subset(signal, refs).SerializeToString(), f"s:{service}",
                                 f"{envelope.tenant}/{service}".encode(), None) for service, refs in by_service.items()]
        return [self._record(topic, envelope, encrypt, whole(), "", *kept)]

    def _record(self, topic: str, envelope: Envelope, encrypt: bool, payload: bytes, part: str,
                key: bytes | None, partition: int | None) -> Record:
        # A part's batch id is derived, not random: a redelivered input yields the same ids, which
        # is what lets dedup recognise a redelivery as itself.
        batch_id = str(uuid.uuid5(_PART_NAMESPACE, f"{envelope.batch_id}/{part}")) if part else envelope.batch_id
        out = replace(envelope, batch_id=batch_id, payload=payload,
                      payload_format=PayloadFormat.OTLP_PROTO, stages=(*envelope.stages, *self.names),
                      key_id=self._keyring.signing_key_id or "", signature=b"")
        sealed = self._keyring.seal(out, encrypt=encrypt and "scrub" not in out.stages)
        return Record(topic, encode(sealed), key, partition)

    def _reject(self, outcome: ChainOutcome, envelope: Envelope, processor: str, drops: list[Drop],
                encrypt: bool) -> None:
        # Rejected items are what validate and scrub took out, before scrubbing or because of it: they
        # stay encrypted whenever the input was (or the policy says so), even after the scrub stage.
        by_reason: dict[str, list[Drop]] = {}
        for drop in drops:
            by_reason.setdefault(drop.reason, []).append(drop)
        signal = envelope.signal
        for reason, group in by_reason.items():
            outcome.dropped[(processor, reason)] = outcome.dropped.get((processor, reason), 0) + len(group)
            attributes = {**envelope.attributes, "rampart.reject.stage": processor, "rampart.reject.reason": reason,
                          "rampart.reject.detail": group[0].detail[:_MAX_DETAIL],
                          "rampart.reject.count": str(len(group)), "rampart.reject.source_batch_id": envelope.batch_id}
            rejected = replace(envelope, batch_id=str(uuid.uuid5(_PART_NAMESPACE, f"{envelope.batch_id}/reject/"
                                                                                   f"{processor}/{reason}")),
                               payload=subset(signal, [d.ref for d in group]).SerializeToString(),
                               payload_format=PayloadFormat.OTLP_PROTO, attributes=attributes,
                               stages=(*envelope.stages, processor), key_id="", signature=b"")
            outcome.records.append(Record(self._topics.rejected(signal),
                                          encode(self._keyring.seal(rejected, encrypt=encrypt)),
                                          envelope.tenant.encode()))

    def _quarantine(self, outcome: ChainOutcome, signal: Signal, value: bytes, key: bytes | None, source: str,
                    reason: str, detail: str) -> None:
        outcome.quarantine_reason = reason
        outcome.records += quarantine_records(self._topics, signal, value, key, source, reason, detail,
                                              self._component, self._instance)

    def _set_aside(self, outcome: ChainOutcome, signal: Signal, value: bytes, key: bytes | None, source: str,
                   envelope: Envelope, processor: str, request: Quarantine) -> None:
        """A processor's quarantine: the input record as it arrived (signed, so `rampart quarantine release`
        can verify and re-publish it) replaces every output; reject records of earlier processors are
        withdrawn too, since a release runs the whole chain on the record again. Audit events stay."""
        audit_topic = self._topics.audit()
        outcome.records = [r for r in outcome.records if r.topic == audit_topic]
        outcome.dropped.clear()
        outcome.items_out = 0
        outcome.quarantine_reason = request.reason
        fields = {**request.fields, "batch_id": envelope.batch_id, "processor": processor}
        outcome.records += quarantine_records(self._topics, signal, value, key, source, request.reason,
                                              request.detail, self._component, self._instance,
                                              tenant=envelope.tenant, principal=envelope.principal, fields=fields)

    def _audit(self, outcome: ChainOutcome, event: str, envelope: Envelope, **fields: str) -> None:
        record = audit_record(event, self._component, self._instance, envelope.tenant, envelope.principal, **fields)
        outcome.records.append(Record(self._topics.audit(), json.dumps(record, sort_keys=True).encode(),
                                         envelope.tenant.encode()))


class _Untrusted(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
