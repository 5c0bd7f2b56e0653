"""`rampart quarantine list|show|release`: review what the pipeline set aside, and release what an
operator judges genuine.

A quarantine record is the input record of the stage that set it aside, untouched (so still signed),
with the why in headers (``rampart.quarantine.reason``, ``.detail``, ``.stage``, ``.source``, ``.at``
and, for a processor's quarantine, ``.score``, ``.reasons``, ``.batch_id``). Records are named
``<signal>/<partition>/<offset>`` on ``<prefix>.quarantine.<signal>``.

Releasing re-publishes the batch, re-signed by this command's key ring with the envelope attributes
``rampart.released_by``, ``rampart.release_reason`` and the operator's Ed25519 release signature
(rampart/release.py: only an operator key listed in ``keyring.release_keys`` can release), on the
topic of the first stage it has not passed (taken from its signed ``stages``, never from a header):
the stages before forgery see it again (dedup recognises its own batch id) and forgery lets it pass
unscreened. Only what a processor set aside for a reason an operator can judge is releasable
(:data:`RELEASABLE`); a record that failed its signature, could not be read or broke the stage order
stays where it is. Each release is remembered in Redis (so one batch is not released twice by
mistake) and is an audit event.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from processors.forgery.processor import DROP_REASON
from processors.otlp import OtlpDecodeError, decode_payload, walk
from rampart.audit import audit_record
from rampart.config import RampartConfig
from rampart.kafka import consumer, producer
from rampart.keyring import KeyRing, SignatureError, is_encrypted
from rampart.release import OperatorKey, ReleaseKeys, sign_release
from rampart.stores import redis_client
from rampart.topics import TopicNames
from schemas.envelope import Envelope, EnvelopeError, Signal, decode, encode

__all__ = ["NOT_RELEASABLE", "RELEASABLE", "NotReleasable", "QuarantineError", "QuarantinedRecord", "Release",
           "as_json", "describe", "list_records", "parse_since", "read_record", "release", "summarise", "table"]

# Reasons whose batches an operator may release, and why the others are not releasable.
RELEASABLE = frozenset({DROP_REASON})
NOT_RELEASABLE = {
    "bad_signature": "its signature does not match: it was altered or forged, and releasing it would launder it",
    "missing_signature": "it carries no signature: nothing says who wrote it",
    "unknown_key_id": "it is signed with a key this pipeline does not hold: nothing says who wrote it",
    "decryption_failed": "its payload does not decrypt: it cannot be read, let alone checked",
    "unknown_cipher": "its payload is encrypted in a way this pipeline does not read",
    "unknown_encryption_key": "its payload is encrypted with a key this pipeline does not hold",
    "malformed_envelope": "it is not a Rampart envelope this version can read",
    "signal_mismatch": "it arrived on another signal's topic: publish it on the right topic instead",
    "skipped_stages": "it skipped stages it must pass: the sender must publish it where the pipeline starts",
    "too_many_items": "it is too large for a stage to process at all",
    "bad_release": "it claimed a release whose operator signature did not verify: release the original record",
}
_PREFIX = "rampart.quarantine."
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_READ_TIMEOUT_S = 10.0


class QuarantineError(Exception):
    """The command cannot do what was asked (no such record, Kafka or Redis unreachable, ...)."""


class NotReleasable(QuarantineError):
    pass


@dataclass
class QuarantinedRecord:
    id: str                        # <signal>/<partition>/<offset>
    signal: Signal
    partition: int
    offset: int
    at_s: float                    # when it was set aside
    headers: dict[str, str]
    key: bytes | None
    value: bytes
    envelope: Envelope | None = None     # decoded; trust it only if ``verified``
    verified: bool = False
    problem: str = ""                    # why it is not verified

    @property
    def reason(self) -> str:
        return self.headers.get(_PREFIX + "reason", "")

    def header(self, name: str) -> str:
        return self.headers.get(_PREFIX + name, "")

    def metadata(self) -> dict[str, Any]:
        """What ``list`` prints: never payload content. Tenant and principal only from a verified envelope."""
        envelope = self.envelope if self.verified else None
        return {"id": self.id, "time": _iso(self.at_s), "signal": self.signal.value,
                "tenant": envelope.tenant if envelope else "", "principal": envelope.principal if envelope else "",
                "batch_id": envelope.batch_id if envelope else "", "reason": self.reason,
                "score": self.header("score"), "reasons": self.header("reasons"), "detail": self.header("detail"),
                "stage": self.header("stage"), "source": self.header("source"), "verified": self.verified,
                "releasable": self.reason in RELEASABLE and self.verified,
                "encrypted": bool(self.envelope and is_encrypted(self.envelope)),
                "stages": list(envelope.stages) if envelope else []}


def parse_since(text: str, now_s: float | None = None) -> float:
    """``30m``, ``2h``, ``7d`` (ago) or an ISO 8601 time, as epoch seconds; ValueError otherwise."""
    now_s = time.time() if now_s is None else now_s
    match = _SINCE.match(text)
    if match:
        return now_s - float(match[1]) * _UNITS_S[match[2]]
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since takes 30m, 2h, 7d or an ISO 8601 time, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def list_records(config: RampartConfig, keyring: KeyRing | None, signals: Sequence[Signal], *,
                 reason: str | None = None, tenant: str | None = None, since_s: float | None = None
                 ) -> list[QuarantinedRecord]:
    """Every record on the quarantine topics of ``signals`` (up to their end now), oldest first per topic."""
    found = []
    for record in _scan(config, keyring, signals, since_s):
        if reason is not None and record.reason != reason:
            continue
        if tenant is not None and not (record.verified and record.envelope and record.envelope.tenant == tenant):
            continue
        if since_s is not None and record.at_s < since_s:
            continue
        found.append(record)
    return found


def read_record(config: RampartConfig, keyring: KeyRing | None, record_id: str) -> QuarantinedRecord:
    signal, partition, offset = _parse_id(record_id)
    topic = TopicNames(config.topics.prefix).quarantine(signal)
    c = _consumer(config)
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + _READ_TIMEOUT_S
        while time.monotonic() < deadline:
            message = c.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                raise QuarantineError(f"cannot read {topic}: {error.str()}")
            if message.offset() == offset:
                return _record(signal, message, keyring)
            break
    finally:
        c.close()
    raise QuarantineError(f"no record {record_id} on {topic} (expired, or never there)")


def summarise(record: QuarantinedRecord, keyring: KeyRing | None, values: bool) -> dict[str, Any]:
    """A readable summary of a verified record's payload: items per service and per name, error counts,
    attribute keys. Attribute values only with ``values``, and never for a payload that was encrypted
    (it was set aside before scrub could run)."""
    if not record.verified or record.envelope is None or keyring is None:
        return {"payload": f"not shown: the envelope is not verified ({record.problem})"}
    sealed = record.envelope
    encrypted = is_encrypted(sealed)
    try:
        opened = keyring.open(sealed)
        request = decode_payload(record.signal, opened.payload_format, opened.payload)
    except SignatureError as exc:
        return {"payload": f"not shown: {exc}"}
    except OtlpDecodeError as exc:
        return {"payload": f"not shown: it does not decode ({exc})"}
    per_service: Counter[str] = Counter()
    per_name: Counter[tuple[str, str]] = Counter()
    errors: Counter[str] = Counter()
    attribute_keys: Counter[str] = Counter()
    shown_values: dict[str, list[str]] = {}
    for ref in walk(request, record.signal):
        service = next((kv.value.string_value for kv in ref.resource.resource.attributes if kv.key == "service.name"),
                       "")
        per_service[service] += 1
        item = ref.item
        name = ref.metric.name if ref.metric is not None else getattr(item, "name", "")
        per_name[(service, name)] += 1
        if record.signal is Signal.TRACES and item.status.code == 2:
            errors[service] += 1
        for kv in item.attributes:
            attribute_keys[kv.key] += 1
            if values and not encrypted and len(shown_values.setdefault(kv.key, [])) < 5:
                text = kv.value.string_value or str(kv.value).strip()
                if text not in shown_values[kv.key]:
                    shown_values[kv.key].append(text)
    summary: dict[str, Any] = {
        "items_per_service": dict(per_service.most_common()),
        "items_per_name": [{"service": s, "name": n, "items": c} for (s, n), c in per_name.most_common(20)],
        "attribute_keys": dict(attribute_keys.most_common(30)),
    }
    if record.signal is Signal.TRACES:
        summary["errors_per_service"] = {s: errors.get(s, 0) for s in per_service}
    if values and encrypted:
        summary["attribute_values"] = "not shown: the payload was encrypted (set aside before scrub)"
    elif values:
        summary["attribute_values"] = {k: v for k, v in shown_values.items() if v}
        if "scrub" not in sealed.stages:
            summary["warning"] = "this batch was set aside before scrub: values may hold secrets"
    return summary


@dataclass(frozen=True)
class Release:
    record_id: str
    batch_id: str
    tenant: str
    topic: str


def release(config: RampartConfig, keyring: KeyRing, record_id: str, *, reason: str, operator_key: OperatorKey,
            user: str, force: bool = False, marks: redis.Redis | None = None) -> Release:
    """Re-publish one quarantined batch into the pipeline with a release signed by ``operator_key``
    (run by the OS user ``user``); audited."""
    if keyring.signing_key_id is None:
        raise QuarantineError("releasing re-signs the batch: the key ring has no signing key "
                              "(set keyring.signing_key_id)")
    known = config.keyring.release_keys.get(operator_key.key_id)
    if known is None or known.strip() != operator_key.public_text():
        raise QuarantineError(f"operator key {operator_key.key_id!r} is not in keyring.release_keys of "
                              f"{config.source} with this public key, so the pipeline would refuse the release: add "
                              f"`{operator_key.key_id}: {operator_key.public_text()}` there (and roll it out) first")
    record = read_record(config, keyring, record_id)
    if record.reason not in RELEASABLE:
        why = NOT_RELEASABLE.get(record.reason, "only batches a processor set aside for forgery are releasable")
        raise NotReleasable(f"{record_id} was quarantined for {record.reason or 'no stated reason'}: {why}")
    if not record.verified or record.envelope is None:
        raise NotReleasable(f"{record_id} does not verify with this key ring ({record.problem}): it cannot be "
                            "released")
    sealed = record.envelope
    topic = _target_topic(config, sealed)
    marks = marks if marks is not None else _marks(config)
    mark_key = f"{config.redis.key_prefix}:quarantine:released:{record_id}:{sealed.batch_id}"
    try:
        first = marks.set(mark_key, operator_key.key_id, nx=True, ex=int(config.topics.retention_ms / 1000))
    except redis.RedisError as exc:
        raise QuarantineError(f"Redis at {config.redis.url} did not answer, so the release cannot be recorded: "
                              f"{exc}") from None
    if not first and not force:
        raise NotReleasable(f"{record_id} was released before (by {_text(marks.get(mark_key))}); "
                            "--force releases it again")
    opened = keyring.open(sealed)
    attributes = {**opened.attributes, **sign_release(operator_key, opened, reason=reason,
                                                      released_at=f"{time.time():.3f}", record_id=record_id)}
    ReleaseKeys(config.keyring.release_keys).check(replace(opened, attributes=attributes))  # as the stage will
    released = keyring.seal(replace(opened, attributes=attributes, key_id="", signature=b""),
                            encrypt=is_encrypted(sealed))
    event = audit_record("quarantine_released", "cli", socket.gethostname(), sealed.tenant, sealed.principal,
                         operator=operator_key.key_id, user=user, record=record_id, batch_id=sealed.batch_id,
                         reason=record.reason,
                         release_reason=reason, topic=topic, signal=record.signal.value)
    out = producer(config.kafka, "rampart-quarantine", **{"delivery.timeout.ms": 15_000})
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    out.produce(topic, encode(released), key=record.key, on_delivery=delivered)
    out.produce(TopicNames(config.topics.prefix).audit(), json.dumps(event, sort_keys=True).encode(),
                key=sealed.tenant.encode(), on_delivery=delivered)
    if out.flush(20) or failures:
        marks.delete(mark_key)
        raise QuarantineError(f"Kafka at {config.kafka.bootstrap_servers} did not take the release: "
                              f"{'; '.join(failures) or 'timed out'} (nothing was recorded as released)")
    return Release(record_id, sealed.batch_id, sealed.tenant, topic)


# ------------------------------------------------------------------ reading the topics

def _consumer(config: RampartConfig) -> Consumer:
    # Assigned, never subscribed and never committing: reading the quarantine does not move anyone's offsets.
    return consumer(config.kafka, "rampart-quarantine", f"{config.topics.prefix}.quarantine-review",
                    **{"enable.partition.eof": True})


def _scan(config: RampartConfig, keyring: KeyRing | None, signals: Sequence[Signal],
          since_s: float | None) -> Iterator[QuarantinedRecord]:
    topics = TopicNames(config.topics.prefix)
    c = _consumer(config)
    try:
        for signal in signals:
            topic = topics.quarantine(signal)
            metadata = c.list_topics(topic, timeout=_READ_TIMEOUT_S).topics.get(topic)
            if metadata is None or metadata.error is not None:
                continue
            starts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
            if since_s is not None:
                # The first offset at or after that time per partition; -1 where nothing is that recent.
                starts = [tp for tp in c.offsets_for_times([TopicPartition(topic, p, int(since_s * 1000))
                                                            for p in metadata.partitions], timeout=_READ_TIMEOUT_S)
                          if tp.offset >= 0]
            ends = {}
            for tp in starts:
                low, high = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=_READ_TIMEOUT_S)
                if high > max(low, tp.offset):
                    ends[tp.partition] = high
            if not ends:
                continue
            c.assign([tp for tp in starts if tp.partition in ends])
            deadline = time.monotonic() + _READ_TIMEOUT_S
            while ends and time.monotonic() < deadline:
                message = c.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                partition = message.partition()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF and partition is not None:
                        ends.pop(partition, None)
                        continue
                    raise QuarantineError(f"cannot read {topic}: {error.str()}")
                assert partition is not None
                deadline = time.monotonic() + _READ_TIMEOUT_S
                offset = message.offset()
                if offset is not None and offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
                yield _record(signal, message, keyring)
            c.unassign()
    finally:
        c.close()


def _record(signal: Signal, message: Any, keyring: KeyRing | None) -> QuarantinedRecord:
    headers = {name: raw.decode(errors="replace") for name, raw in (message.headers() or []) if raw is not None}
    _, timestamp_ms = message.timestamp()
    at_s = float(headers.get(_PREFIX + "at") or timestamp_ms / 1000)
    record = QuarantinedRecord(f"{signal.value}/{message.partition()}/{message.offset()}", signal,
                               message.partition(), message.offset(), at_s, headers, message.key(),
                               message.value() or b"")
    try:
        record.envelope = decode(record.value)
    except EnvelopeError as exc:
        record.problem = f"not an envelope: {exc}"
        return record
    if keyring is None:
        record.problem = "no key ring to verify it with"
        return record
    try:
        keyring.verify(record.envelope)
        record.verified = record.envelope.signal is signal
        record.problem = "" if record.verified else "an envelope of another signal"
    except SignatureError as exc:
        record.problem = str(exc)
    return record


def _parse_id(record_id: str) -> tuple[Signal, int, int]:
    parts = record_id.split("/")
    try:
        signal, partition, offset = Signal(parts[0]), int(parts[1]), int(parts[2])
        if len(parts) != 3 or partition < 0 or offset < 0:
            raise ValueError(record_id)
    except (ValueError, IndexError):
        raise QuarantineError(f"a record id is <signal>/<partition>/<offset> as `quarantine list` shows it, "
                              f"e.g. traces/0/12; got {record_id!r}") from None
    return signal, partition, offset


def _target_topic(config: RampartConfig, envelope: Envelope) -> str:
    """The topic of the first stage the batch has not passed, from its signed ``stages``."""
    topics = TopicNames(config.topics.prefix)
    last = envelope.stages[-1] if envelope.stages else ""
    if last == "gateway":
        return topics.raw(envelope.signal)
    pipeline = list(config.stages.pipeline)
    if last in pipeline[:-1]:
        return topics.after(last, envelope.signal)
    raise NotReleasable(f"the batch has passed {', '.join(envelope.stages) or 'no stage'}: no stage of "
                        f"stages.pipeline ({', '.join(pipeline)}) comes next")


def _marks(config: RampartConfig) -> redis.Redis:
    return redis_client(config)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "someone")


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(records: Sequence[QuarantinedRecord]) -> list[str]:
    """``list`` as aligned text lines."""
    lines = [f"{'ID':18} {'TIME':20} {'TENANT':14} {'PRINCIPAL':18} {'REASON':20} {'SCORE':6} RELEASABLE"]
    for record in records:
        m = record.metadata()
        tenant = m["tenant"] or "(unverified)"
        lines.append(f"{m['id']:18} {m['time']:20} {tenant:14} {m['principal'] or '-':18} {m['reason']:20} "
                     f"{m['score'] or '-':6} {'yes' if m['releasable'] else 'no'}")
    return lines


def as_json(records: Sequence[QuarantinedRecord]) -> str:
    return json.dumps([r.metadata() for r in records], indent=2)


def describe(record: QuarantinedRecord, summary: Mapping[str, Any]) -> str:
    """``show`` as readable text: the metadata, why it is (not) releasable, then the payload summary."""
    m = record.metadata()
    lines = [f"{k:11} {v}" for k, v in m.items() if k not in ("releasable",) and v not in ("", [])]
    if m["releasable"]:
        lines.append("releasable  yes: `rampart quarantine release " + record.id + " --reason ...`")
    else:
        why = NOT_RELEASABLE.get(record.reason, "") if record.reason not in RELEASABLE else record.problem
        lines.append(f"releasable  no: {why or 'only batches a processor set aside for forgery are releasable'}")
    lines.append("payload:")
    lines += ["  " + line for line in json.dumps(summary, indent=2).splitlines()]
    return "\n".join(lines)
