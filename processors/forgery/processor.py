"""`forgery`: screen trace and metric batches sent with valid credentials for signs of forgery.

One pass over a trace batch gathers, per (service, span name), bucketed latencies and error counts,
plus span lags, replay digests of sampled spans, attribute-value hashes and the ids lineage.py needs
(callers' span ids, callees' parent ids, client spans per peer.service). Then:

1. hard rules (score 1.0, each with a reason): ``new_service``, ``timestamp_window``,
   ``timestamp_skew``, ``replay``, ``cardinality_cap``, ``cardinality_novelty``;
2. statistical evidence per (service, span name) against the *other* principals reporting the same
   operation: ``latency_masking`` (faster than the peers while sending more than its share) and
   ``error_masking`` (fewer errors than the peers while sending more than its share), and
   ``orphan_spans`` (the batch resembles the source's recent batches that no caller made);
3. actions by score: annotate, keep out of baselines, quarantine the batch as ``forgery_suspected``.

A batch an operator released from quarantine (``rampart quarantine release``: signed envelope attributes
``rampart.released_by`` and ``rampart.release_reason``, which no gateway ever sets) passes unscreened.
Baselines are snapshotted to Redis (processors/forgery/state.py). Metric batches are screened by
metric_peers.py (``metric_outlier``, ``metric_drift``); logs pass unscreened.

Only batches scoring below ``baseline_threshold`` teach the baselines, so a flood that is caught
cannot drag them along. The clock is the envelope's ``received_at`` (set by the gateway), never a
timestamp the client wrote. See docs/forgery.md.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from statistics import median
from typing import Any

from prometheus_client import CollectorRegistry
from rampart_native import TraceScan, scan_traces

from processors.base import Batch, Processor, Quarantine, RawBatch, Result
from processors.forgery.baselines import BaselineStore, Group, Source
from processors.forgery.cardinality import CardinalityTracker, Observed
from processors.forgery.changes import cusum_step
from processors.forgery.lineage import Calls, LineageTracker, SourceLineage, cell
from processors.forgery.metric_peers import MetricScreen
from processors.forgery.metrics import ForgeryMetrics
from processors.forgery.replay import ReplayIndex, content_digest, sampled
from processors.forgery.scoring import RankStats, combine, error_z, evidence, rank_stats
from processors.forgery.shared_lineage import ParentIds, RedisParentIds, SharedIndex
from processors.forgery.sketches import (
    INV_LOG_GAMMA,
    MAX_BUCKET,
    MAX_DURATION_NS,
    MIN_BUCKET,
    MIN_DURATION_NS,
    bucket_value_ns,
)
from processors.forgery.state import RedisSnapshots, SnapshotStore, StateKeeper, stage_client
from processors.otlp import count_items, resources
from rampart.config import ForgeryConfig, RampartConfig
from rampart.release import RELEASE_REASON
from schemas.envelope import PayloadFormat, Signal

__all__ = ["DROP_REASON", "INTEGRITY_REASONS", "INTEGRITY_SCORE", "ForgeryProcessor",
           "Verdict", "build", "lineage_shared"]

INTEGRITY_SCORE = "rampart.integrity.score"
INTEGRITY_REASONS = "rampart.integrity.reasons"
_INTEGRITY_PREFIX = "rampart.integrity."
DROP_REASON = "forgery_suspected"    # the quarantine reason
# Estimated bytes per entry of each kind of state, measured with tracemalloc (docs/forgery.md, "Metrics"):
# a group without its sources, a source (histogram, counters, four 64-value rings), a replay digest, a
# principal's lag ring; a cardinality key is native, counted instead: 1 KiB of HyperLogLog registers,
# 4 KiB of Bloom filter, its names and index entries (native/src/cardinality.rs).
_BYTES_PER_ENTRY = {"groups": 8_000, "sources": 20_000, "cardinality_keys": 5_400, "replay_digests": 85,
                    "principals": 2_500}
_GAUGES_EVERY_S = 5.0
_STATUS_ERROR = 2
_NS = 1_000_000_000
# A source needs this many accepted batches in a group before its statistics are scored, and the
# peers this much recent (decayed) span weight to compare against.
MIN_SOURCE_BATCHES = 16
MIN_PEER_WEIGHT = 30.0
_SHARE_ALPHA = 0.02
COMMON_MODE_S = 15.0
# The common mode (median of the other sources' "faster than usual" z) beyond which latency deciles
# are left out of the lineage likelihood (two standard deviations: clearly shared, not noise).
COMMON_MODE_CELLS = 2.0
# Statistical codes: they score by their evidence; every other code is a hard rule (score 1.0).
_SOFT_CODES = frozenset({"latency_masking", "error_masking", "orphan_spans"})
_SERVER, _CLIENT, _PRODUCER, _CONSUMER = 2, 3, 4, 5
_MAX_REASONS_CHARS = 1000


@dataclass(slots=True)
class _Ops:
    """One (service, span name) of the batch."""

    counts: dict[int, int] = field(default_factory=dict)   # latency bucket -> spans
    error_counts: dict[int, int] = field(default_factory=dict)   # latency bucket -> error spans
    n: int = 0
    errors: int = 0


@dataclass(slots=True)
class _View:
    ops: dict[tuple[str, str], _Ops] = field(default_factory=dict)
    value_hashes: dict[str, dict[str, set[int]]] = field(default_factory=dict)   # service -> key -> hash(value)s
    digests: list[int] = field(default_factory=list)
    lags_ns: list[int] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)
    span_ids: list[bytes] = field(default_factory=list)     # sampled caller span ids (lineage.py)
    parents: list[tuple[str, bytes]] = field(default_factory=list)   # sampled: service, parent span id
    server_parented: dict[str, int] = field(default_factory=dict)   # service -> SERVER spans with a parent
    calls: dict[str, int] = field(default_factory=dict)             # peer.service -> CLIENT spans naming it
    outside: int = 0
    spans: int = 0


@dataclass(slots=True)
class _Scored:
    """What scoring computed for one group, kept for the baseline update afterwards."""

    key: tuple[str, str, str]
    group: Group
    source: Source
    ops: _Ops
    share: float
    rank: RankStats | None = None
    latency_t: float | None = None
    error_t: float | None = None
    volume_z: float = 0.0
    steady: bool = True
    latency: float | None = None        # evidence: faster than the peers (robust z), when scored
    fewer_errors: float | None = None   # evidence: fewer errors than the peers (robust z), when scored


@dataclass
class Verdict:
    """The outcome of screening one batch: a score in [0, 1] and the reasons behind it."""

    score: float = 0.0
    reasons: list[str] = field(default_factory=list)   # "code: detail"
    codes: list[str] = field(default_factory=list)     # reason codes only, for counters
    learning: bool = False


@dataclass(slots=True)
class _Screened:
    """A batch clears() screened, for process() if the chain hands it the same batch decoded."""

    batch_id: str
    payload: bytes          # the very object: a redelivery of the batch is another one
    verdict: Verdict
    services: list[str]
    result: Result | None = None   # set when clears() cleared it (and did the accounting)


class ForgeryProcessor(Processor):
    name = "forgery"
    honours_release = True

    def __init__(self, config: ForgeryConfig, snapshots: SnapshotStore | None = None, redis_prefix: str = "rampart",
                 clock: Callable[[], float] = time.monotonic, background_saves: bool = True,
                 lineage_index: ParentIds | None = None) -> None:
        self._config = config
        self._clock = clock
        self._metrics: ForgeryMetrics | None = None
        self._gauges_at = -1e18
        self._store = BaselineStore(max_groups=config.max_groups,
                                    max_span_names_per_service=config.max_span_names_per_service,
                                    max_sources_per_group=config.max_principals_per_group,
                                    recent_half_life_s=config.recent_half_life_s,
                                    volume_half_life_s=config.volume_half_life_s)
        self._replays = ReplayIndex(config.replay_window_s, config.max_replay_digests)
        self._cardinality = CardinalityTracker(window_s=config.cardinality_window_s,
                                               floor=config.cardinality_floor, growth=config.cardinality_growth,
                                               min_novel=config.cardinality_min_novel,
                                               max_keys=config.max_cardinality_keys)
        self._metric_screen = MetricScreen(z=config.metric_z, min_ratio=config.metric_min_ratio,
                                           drift_ratio=config.metric_drift_ratio, drift_s=config.metric_drift_s,
                                           max_groups=config.max_groups,
                                           max_sources_per_group=config.max_principals_per_group,
                                           max_series=config.max_metric_series)
        # With a shared index (tenant_service keying) the parents are looked up in Redis, written by
        # whichever worker screened the caller (shared_lineage.py); otherwise in this process.
        shared = None if lineage_index is None else SharedIndex(
            lineage_index, wait_s=config.orphan_wait_s, max_lag_s=config.lineage_max_lag_s,
            sample_every=config.lineage_sample_every, max_ids=config.max_span_ids,
            retry_after_s=config.state.retry_after_s, report=self._lineage_event, clock=clock)
        self._lineage = LineageTracker(wait_s=config.orphan_wait_s, half_life_s=config.lineage_half_life_s,
                                       sample_every=config.lineage_sample_every, max_ids=config.max_span_ids,
                                       max_sources=config.max_groups, shared=shared, report=self._lineage_event)
        self._screened: _Screened | None = None
        self._keeper = None if snapshots is None else StateKeeper(
            config.state, snapshots, redis_prefix, self._store, self._cardinality, self._snapshot_event, clock,
            background=background_saves, max_units=config.max_groups, lineage=self._lineage,
            metrics=self._metric_screen)

    # ------------------------------------------------------------------ contract

    def process(self, batch: Batch) -> Result:
        if batch.signal is Signal.LOGS:
            result = Result()
            result.count("unscreened_batches")   # logs: not screened yet (docs/forgery.md)
            return result
        if batch.released_by is not None:  # an operator's release, verified by the chain
            return self._released(batch)
        screened, self._screened = self._screened, None
        if screened is not None and screened.batch_id == batch.batch_id and screened.payload is batch.raw_payload:
            # clears() screened this very batch already: it is screened, and teaches, once.
            if screened.result is not None:
                return screened.result
            verdict, services = screened.verdict, screened.services
        else:
            services = self._prepare(batch.tenant, batch.received_at_ns, lambda: _services(batch.request, batch.signal))
            verdict = self.screen_metrics(batch) if batch.signal is Signal.METRICS else self.screen(batch)
        result = self.act(batch, verdict)
        self._finish(batch.tenant, services, verdict, result)
        return result

    def clears(self, raw: RawBatch) -> Result | None:
        """The clean-batch fast path (Processor.clears): a trace batch screened from its native scan,
        cleared unless the verdict changes or sets aside the batch. Either way the verdict is kept, for
        :meth:`process` if the chain decodes this batch after all: a batch is screened only once."""
        self._screened = None
        if raw.signal is not Signal.TRACES or raw.released_by is not None:
            return None
        scan = raw.scan
        if scan.has_resource_key_prefix(_INTEGRITY_PREFIX):
            return None   # a client's integrity claim, which act() strips: a change
        services = self._prepare(raw.tenant, raw.received_at_ns, lambda: raw.services)
        view = self._view(scan, raw.received_at_ns)
        verdict = self._screen(raw.tenant, raw.principal, raw.batch_id, raw.received_at_ns, view)
        result = self._result(verdict)
        if result.quarantine is not None or self._annotates(verdict):
            self._screened = _Screened(raw.batch_id, raw.payload, verdict, services)
            return None
        self._finish(raw.tenant, services, verdict, result)
        self._screened = _Screened(raw.batch_id, raw.payload, verdict, services, result)
        return result

    def _prepare(self, tenant: str, received_at_ns: int, services: Callable[[], list[str]]) -> list[str]:
        """Load the snapshots of the batch's services not held yet; returns the services."""
        if self._keeper is None:
            return []
        names = services()
        self._keeper.prepare(tenant, names, received_at_ns / _NS)
        return names

    def _finish(self, tenant: str, services: list[str], verdict: Verdict, result: Result) -> None:
        if self._keeper is not None:
            self._keeper.touched(tenant, services)
            self._keeper.save_due()
        self._observe(tenant, verdict, result)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        self._metrics = ForgeryMetrics.create(registry)

    def close(self) -> None:
        """Write the snapshots still queued (a clean shutdown keeps the latest state)."""
        if self._keeper is not None:
            self._keeper.close()

    def screen_metrics(self, batch: Batch) -> Verdict:
        """Score a metrics batch: each source's values against its peers' median (metric_peers.py).
        Its readings teach the baselines only if nothing was found."""
        config = self._config
        now = batch.received_at_ns / _NS
        tenant_state = self._store.tenant(batch.tenant, now)
        warm = now - tenant_state.first_s >= config.learning_s
        verdict = Verdict(learning=not warm)
        findings, learn = self._metric_screen.screen(batch.tenant, batch.principal, batch.request, now, warm)
        for finding in findings:
            verdict.codes.append(finding.code)
            verdict.reasons.append(f"{finding.code}: {finding.detail}")
        if findings:
            verdict.score = 1.0
            self._metric_screen.flagged(learn)
        else:
            self._metric_screen.accept(learn, now)
        return verdict

    def screen(self, batch: Batch) -> Verdict:
        """Score a trace batch and let it teach the baselines if it scores low. Changes nothing in it."""
        return self._screen(batch.tenant, batch.principal, batch.batch_id, batch.received_at_ns, self._extract(batch))

    def _screen(self, tenant: str, principal: str, batch_id: str, now_ns: int, view: _View) -> Verdict:
        config = self._config
        now = now_ns / _NS
        tenant_state = self._store.tenant(tenant, now)
        warm = now - tenant_state.first_s >= config.learning_s
        verdict = Verdict(learning=not warm)
        if not view.spans:
            return verdict

        new_services = self._new_services(tenant, principal, view, warm, verdict)
        median_lag_s = self._timestamps(tenant, principal, view, warm, verdict)
        self._replay(batch_id, view, now, verdict)
        card = self._cardinality_rules(tenant, view, now, warm, verdict)
        calls_z, calls = self._calls(tenant, principal, view, now, warm)
        scored = self._statistics(tenant, principal, view, now, warm, verdict, calls_z)
        # A batch a hard rule already caught says nothing about what the source's other batches are.
        self._orphans(tenant, principal, view, now, warm, verdict, judged=not verdict.codes or all(
            c in _SOFT_CODES for c in verdict.codes))
        if verdict.codes and any(c not in _SOFT_CODES for c in verdict.codes):
            verdict.score = 1.0

        if verdict.score < config.baseline_threshold:
            self._learn(tenant, principal, tenant_state.reporters, new_services, median_lag_s, card, scored, now)
            for source, ratio in calls:
                source.calls_ratio.add(ratio)
            for service in {service for service, _ in view.ops}:
                self._lineage.source(tenant, principal, service, now).learn_share()
        else:
            for s in scored:
                s.source.flagged_since_frozen = True
        return verdict

    def act(self, batch: Batch, verdict: Verdict) -> Result:
        """Apply the configured actions for a verdict to its batch."""
        result = self._result(verdict)
        stripped = _strip_integrity_claims(batch)
        if stripped:
            # A client must not be able to pre-stamp its own data as screened and clean.
            result.count("integrity_claims_removed", stripped)
        annotate = self._annotates(verdict)
        if annotate:
            reasons = "; ".join(verdict.reasons)[:_MAX_REASONS_CHARS]
            for resource in resources(batch.request, batch.signal):
                attributes = resource.resource.attributes
                attributes.add(key=INTEGRITY_SCORE).value.double_value = round(verdict.score, 3)
                attributes.add(key=INTEGRITY_REASONS).value.string_value = reasons
            result.count("annotated_batches")
        if stripped or annotate:
            result.changed = count_items(batch.request, batch.signal)
        return result

    def _annotates(self, verdict: Verdict) -> bool:
        return verdict.score >= self._config.annotate_threshold and bool(verdict.reasons)

    def _result(self, verdict: Verdict) -> Result:
        """The counters of a verdict, and the quarantine its score calls for."""
        config = self._config
        result = Result()
        result.count("screened_batches")
        if verdict.learning:
            result.count("learning_batches")
        for code in verdict.codes:
            result.count(f"flag_{code}")
        if config.quarantine and verdict.score >= config.quarantine_threshold:
            # The whole batch is set aside as it arrived (the runtime adds the audit event): an operator
            # can review it and release it (`rampart quarantine`).
            detail = f"score {verdict.score:.2f}: " + "; ".join(verdict.reasons)
            result.quarantine = Quarantine(DROP_REASON, detail, {"score": f"{verdict.score:.3f}",
                                                                 "reasons": ",".join(sorted(set(verdict.codes)))})
            result.count("quarantined_batches")
        return result

    def memory_entries(self) -> dict[str, int]:
        """How much state is held, by kind (for the evaluation and the metrics)."""
        return {"groups": len(self._store.groups), "sources": sum(len(g.sources) for g in self._store.groups.values()),
                "principals": len(self._store.principals), "tenants": len(self._store.tenants),
                "cardinality_keys": len(self._cardinality), "replay_digests": len(self._replays),
                "evictions": self._store.evictions}

    # ------------------------------------------------------------------ operations

    def _released(self, batch: Batch) -> Result:
        """An operator released this batch from quarantine: it passes unscreened and teaches nothing (a
        release says "let it through", not "this is normal"; a new service is allow-listed in the config)."""
        result = Result()
        result.count("released_batches")
        stripped = _strip_integrity_claims(batch)
        if stripped:
            result.count("integrity_claims_removed", stripped)
            result.changed = count_items(batch.request, batch.signal)
        result.audit.append(("forgery_release_passed", {
            "batch_id": batch.batch_id, "released_by": batch.released_by or "",
            "release_reason": batch.attributes.get(RELEASE_REASON, "")}))
        if self._metrics is not None:
            self._metrics.actions.labels("released", batch.tenant).inc()
        return result

    def _observe(self, tenant: str, verdict: Verdict, result: Result) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        metrics.score.observe(verdict.score)
        for code in set(verdict.codes):
            metrics.flagged.labels(code, tenant).inc()
        action = "quarantined" if result.quarantine is not None else \
            "annotated" if "annotated_batches" in result.counts else "passed"
        metrics.actions.labels(action, tenant).inc()
        now = self._clock()
        if now - self._gauges_at >= _GAUGES_EVERY_S:
            self._gauges_at = now
            for kind, n in self.memory_entries().items():
                if kind != "evictions":
                    metrics.baseline_entries.labels(kind).set(n)
                if kind in _BYTES_PER_ENTRY:
                    metrics.state_bytes.labels(kind).set(n * _BYTES_PER_ENTRY[kind])

    def _snapshot_event(self, operation: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.snapshots.labels(operation, outcome).inc()

    def _lineage_event(self, outcome: str, n: int) -> None:
        if self._metrics is not None:
            self._metrics.lineage_index.labels(outcome).inc(n)

    # ------------------------------------------------------------------ one pass over the batch

    def _extract(self, batch: Batch) -> _View:
        """The batch's view: from the native summary of its protobuf bytes when it has them untouched
        and in the canonical form the native reader takes, else from the decoded request."""
        if batch.raw_payload is not None and batch.payload_format is PayloadFormat.OTLP_PROTO:
            scan = scan_traces(batch.raw_payload)
            if scan.clean:
                # The native reader takes only canonical encodings: unless this stage changes the
                # batch, the chain can send these bytes on as they are.
                batch.raw_canonical = True
                return self._view(scan, batch.received_at_ns)
        lowest, highest = self._window(batch.received_at_ns)
        return self._read(batch.request, batch.received_at_ns, lowest, highest, self._config.replay_sample_every,
                          self._lineage.local_sample_every)

    def _window(self, now_ns: int) -> tuple[int, int]:
        """The span end times a batch received at ``now_ns`` may have (timestamp_window)."""
        return now_ns - int(self._config.max_lag_s * _NS), now_ns + int(self._config.max_lead_s * _NS)

    def _view(self, scan: TraceScan, now_ns: int) -> _View:
        """The view from the native summary of a clean batch (native/src/forgery.rs)."""
        lowest, highest = self._window(now_ns)
        summary = scan.forgery_summary(now_ns, lowest, highest, self._config.replay_sample_every,
                                       self._lineage.local_sample_every, MIN_DURATION_NS, MAX_DURATION_NS,
                                       MIN_BUCKET, MAX_BUCKET, INV_LOG_GAMMA)
        return _View(ops={(service, name): _Ops(counts, error_counts, n, errors)
                          for service, name, counts, error_counts, n, errors in summary.ops},
                     value_hashes=summary.value_hashes, digests=summary.digests, lags_ns=summary.lags_ns,
                     durations=summary.durations, span_ids=summary.span_ids, parents=summary.parents,
                     server_parented=summary.server_parented, calls=summary.calls, outside=summary.outside,
                     spans=summary.spans)

    def _read(self, request: Any, now_ns: int, lowest: int, highest: int, every: int,  # noqa: PLR0915
              every_id: int) -> _View:
        """One pass over the decoded spans, in one loop (a call per span costs more; every attribute read
        once; locals for speed). native/src/forgery.rs gives the same view from the wire bytes: the two
        must agree exactly, down to the order of every dict and set."""
        view = _View()
        ops, digests, lags = view.ops, view.digests, view.lags_ns
        span_ids, parents, calls, durations = view.span_ids, view.parents, view.calls, view.durations
        log, ceil = math.log, math.ceil
        by_service: dict[str, dict[str, _Ops]] = {}   # service -> name -> its _Ops in ``ops`` (no tuple per span)
        values_by_service: dict[str, dict[str, set[str]]] = {}   # service -> key -> distinct values
        outside = spans = 0
        for rs in request.resource_spans:
            resource = [(kv.key, kv.value.string_value) for kv in rs.resource.attributes]   # read once
            service = next((value for key, value in resource if key == "service.name"), "")
            # Values per attribute key of this service (strings: they hash once, on insertion).
            values = values_by_service.setdefault(service, {})
            for key, value in resource:
                if value:
                    values.setdefault(key, set()).add(value)
            named = by_service.get(service)
            if named is None:
                named = by_service[service] = {}
            parented = 0
            for ss in rs.scope_spans:
                scope_spans = ss.spans
                spans += len(scope_spans)
                for span in scope_spans:
                    start, end = span.start_time_unix_nano, span.end_time_unix_nano
                    duration = end - start
                    durations.append(duration)
                    name = span.name
                    op = named.get(name)
                    if op is None:
                        op = named[name] = ops[(service, name)] = _Ops()
                    bucket = MIN_BUCKET if duration <= MIN_DURATION_NS else MAX_BUCKET if duration >= \
                        MAX_DURATION_NS else ceil(log(duration) * INV_LOG_GAMMA)
                    counts = op.counts
                    counts[bucket] = counts.get(bucket, 0) + 1
                    op.n += 1
                    status = span.status
                    error = status.code == _STATUS_ERROR
                    if error:
                        op.errors += 1
                        op.error_counts[bucket] = op.error_counts.get(bucket, 0) + 1
                    # Lineage (lineage.py): the ids of spans that call out (client, producer), and the
                    # parents of spans that were called (server, consumer), sampled by a keyed hash so
                    # that a forger cannot dodge the sample.
                    kind = span.kind
                    client = kind == _CLIENT
                    if client or kind == _PRODUCER:
                        sid = span.span_id
                        if every_id <= 1 or hash(sid) % every_id == 0:
                            span_ids.append(sid)
                    elif kind in (_SERVER, _CONSUMER) and (sid := span.parent_span_id):
                        parented += kind == _SERVER
                        if every_id <= 1 or hash(sid) % every_id == 0:
                            parents.append((service, sid))
                    lags.append(now_ns - end)
                    if end < lowest or end > highest:
                        outside += 1
                    # Replay digests for 1 in `every` spans, chosen by duration (see replay.py).
                    parts: list[tuple[str, Any]] | None = [] if sampled(duration, every) else None
                    for kv in span.attributes:
                        key = kv.key   # a new str at each read, hashed anew: read it once
                        value = kv.value.string_value
                        if value:
                            if client and key == "peer.service":
                                calls[value] = calls.get(value, 0) + 1
                            found = values.get(key)
                            if found is None:
                                values[key] = {value}
                            else:
                                found.add(value)
                            if parts is not None:
                                parts.append((key, value))
                        elif parts is not None:
                            parts.append((key, kv.value.SerializeToString()))
                    if parts is not None:
                        digests.append(content_digest(span, service, name, kind, duration, status, parts))
            if parented:
                view.server_parented[service] = view.server_parented.get(service, 0) + parented
        view.outside, view.spans = outside, spans
        # Hashed in the order of each set of values, as the native summary does (the order the
        # sketches see them in).
        view.value_hashes = {service: {key: {hash(v) for v in values} for key, values in keys.items()}
                             for service, keys in values_by_service.items()}
        return view

    # ------------------------------------------------------------------ hard rules

    def _new_services(self, tenant: str, principal: str, view: _View, warm: bool, verdict: Verdict) -> list[str]:
        reporters = self._store.tenant(tenant, 0.0).reporters
        new = sorted({service for service, _ in view.ops if principal not in reporters.get(service, ())})
        if not warm:
            return new
        allowed = set(self._config.allowed_new_services.get(f"{tenant}/{principal}", ())) | \
            set(self._config.allowed_new_services.get(f"{tenant}/*", ()))
        for service in new:
            if service not in allowed:
                verdict.codes.append("new_service")
                verdict.reasons.append(f"new_service: {principal!r} never reported service {service!r} before")
        return new

    def _timestamps(self, tenant: str, principal: str, view: _View, warm: bool, verdict: Verdict) -> float:
        config = self._config
        median_lag_s = median(view.lags_ns) / _NS
        if view.outside * 2 >= view.spans:
            verdict.codes.append("timestamp_window")
            verdict.reasons.append(f"timestamp_window: {view.outside} of {view.spans} spans end outside "
                                   f"[-{config.max_lag_s:g} s, +{config.max_lead_s:g} s] of receipt")
            return median_lag_s
        lag = self._store.principal(tenant, principal).lag
        if warm and len(lag) >= MIN_SOURCE_BATCHES:
            limit = max(config.max_skew_s, 6.0 * lag.spread)
            if abs(median_lag_s - lag.center) > limit:
                verdict.codes.append("timestamp_skew")
                verdict.reasons.append(f"timestamp_skew: median lag {median_lag_s:.1f} s, usually "
                                       f"{lag.center:.1f} s (limit ±{limit:.0f} s)")
        return median_lag_s

    def _replay(self, batch_id: str, view: _View, now: float, verdict: Verdict) -> None:
        batch_key = hash(batch_id)
        if view.digests:
            matched = self._replays.check_and_add(view.digests, batch_key, now)
            if matched >= self._config.replay_min_matches and matched * 2 >= len(view.digests):
                verdict.codes.append("replay")
                verdict.reasons.append(f"replay: {matched} of {len(view.digests)} sampled spans were seen before "
                                       "under another batch id (ids and timestamps aside)")
                return
        # A small batch has too few sampled digests to match replay_min_matches, but its whole set of
        # durations survives a re-stamping too. Only durations finer than a microsecond count: with
        # coarse clocks two genuine batches could share them.
        fine = sum(1 for d in view.durations if d % 1000)
        if fine >= 2:
            fingerprint = hash((tuple(sorted({service for service, _ in view.ops})), tuple(sorted(view.durations))))
            if self._replays.check_and_add([fingerprint], batch_key, now):
                verdict.codes.append("replay")
                verdict.reasons.append(f"replay: the same {len(view.durations)} span durations, to the nanosecond, "
                                       "were seen before under another batch id")

    def _cardinality_rules(self, tenant: str, view: _View, now: float, warm: bool, verdict: Verdict) -> Observed:
        findings, observed = self._cardinality.observe(tenant, view.value_hashes, now, judge=warm)
        for finding in findings:
            verdict.codes.append(finding.reason)
            verdict.reasons.append(f"{finding.reason}: {finding.service}: {finding.detail}")
        return observed

    # ------------------------------------------------------------------ statistics against peers

    def _statistics(self, tenant: str, principal: str, view: _View, now: float, warm: bool,
                    verdict: Verdict, calls_z: dict[str, float]) -> list[_Scored]:
        """Evidence per (service, span name) against the peers, pooled per service (a flood forges a
        service, spread over its operations): the batch scores its most suspicious service."""
        scored = [self._group_evidence(key, op, principal, now, warm)
                  for key, op in self._merge_ops(tenant, view).items()]
        by_service: dict[str, list[_Scored]] = {}
        for s in scored:
            if s.latency is not None:
                by_service.setdefault(s.key[1], []).append(s)
        config = self._config
        best, best_code = 0.0, ""
        best_reason: str | Callable[[], str] = ""
        for service, parts in by_service.items():
            # Stouffer's combination weighted by span counts for the content evidence; the volume
            # evidence of the operations is one and the same flood, so it is averaged, not added.
            total = sum(p.ops.n for p in parts)
            latency = sum(math.sqrt(p.ops.n) * (p.latency or 0.0) for p in parts) / math.sqrt(total)
            volume = sum(p.ops.n * p.volume_z for p in parts) / total
            # More server spans than the callers' client spans account for is an excess like a
            # larger share of the volume (lineage.py).
            volume = max(volume, calls_z.get(service, 0.0))
            e_volume = evidence(volume, config.volume_z)
            mask = combine(evidence(latency, config.latency_z), e_volume)
            if mask > best:
                # The reason is written only for the batch's final best, and only if it is reported.
                best, best_code = mask, "latency_masking"
                best_reason = partial(self._latency_reason, service, parts, latency, volume, now)
            with_errors = [p for p in parts if p.fewer_errors is not None]
            if with_errors:
                n_err = sum(p.ops.n for p in with_errors)
                fewer = sum(math.sqrt(p.ops.n) * (p.fewer_errors or 0.0) for p in with_errors) / math.sqrt(n_err)
                emask = combine(evidence(fewer, config.error_z), e_volume)
                if emask > best:
                    errors = sum(p.ops.errors for p in with_errors)
                    best, best_code = emask, "error_masking"
                    best_reason = (f"error_masking: {service}: {errors} errors in {n_err} spans, fewer than the peers' "
                                   f"ratio predicts (z {fewer:.1f}); share of volume above usual (z {volume:.1f})")
        if best >= config.annotate_threshold:
            verdict.codes.append(best_code)
            verdict.reasons.append(best_reason if isinstance(best_reason, str) else best_reason())
        verdict.score = max(verdict.score, best)
        return scored

    def _merge_ops(self, tenant: str, view: _View) -> dict[tuple[str, str, str], _Ops]:
        merged: dict[tuple[str, str, str], _Ops] = {}
        for (service, name), op in view.ops.items():
            key = (tenant, service, self._store.span_name(tenant, service, name))
            into = merged.get(key)
            if into is None:
                merged[key] = op
            else:   # span names past the cap share one group
                for b, c in op.counts.items():
                    into.counts[b] = into.counts.get(b, 0) + c
                for b, c in op.error_counts.items():
                    into.error_counts[b] = into.error_counts.get(b, 0) + c
                into.n += op.n
                into.errors += op.errors
        return merged

    def _group_evidence(self, key: tuple[str, str, str], op: _Ops, principal: str, now: float,
                        warm: bool) -> _Scored:
        """This source against its peers for one operation: volume share, latency rank, errors."""
        store, config = self._store, self._config
        group = store.group(key, now)
        source = store.source(group, principal, now)
        group.volume.add(op.n, now)
        source.volume.add(op.n, now)
        share = source.volume.value(now) / max(group.volume.value(now), 1e-9)
        s = _Scored(key, group, source, op, share)
        # Ranks are taken among everyone's recent accepted latencies (this source's own included: a
        # quarter or so of the reference, and only what it sent that was accepted), as long as the
        # others hold enough of them to be a reference.
        if group.everyone.weight_now(now) - source.recent.weight_now(now) < MIN_PEER_WEIGHT:
            return s
        indices, totals = group.latency_cdf(now)
        if not totals:
            return s
        s.rank = rank_stats(op.counts, op.n, indices, totals)
        s.latency_t = s.rank.t(source.rank_center())
        others_t = [o.last_t for o in group.sources.values()
                    if o is not source and now - o.last_latency_s <= COMMON_MODE_S]
        # While the whole group shifts (an incident starts or ends), a source's distance from the
        # peers' recent past says nothing about its usual scatter: such batches do not teach it.
        s.steady = not others_t or abs(median(others_t)) < 2.0
        source.last_t, source.last_latency, source.last_latency_s = s.latency_t, 0.0, now
        peer_spans = group.spans.value(now) - source.spans.value(now)
        if peer_spans >= MIN_PEER_WEIGHT:
            peer_ratio = max(group.errors.value(now) - source.errors.value(now), 0.0) / peer_spans
            s.error_t = error_z(op.errors, op.n, peer_ratio)
        if source.share_ref >= 0 and len(source.share_residual) >= MIN_SOURCE_BATCHES:
            # Against the source's own reference share, in units of its usual scatter.
            s.volume_z = (share - source.share_center()) / source.share_residual.spread
        if not warm or len(source.latency_t) < MIN_SOURCE_BATCHES:
            return s
        # Faster than the peers, in units of this source's usual scatter (positive = faster) ...
        latency = -s.latency_t / source.latency_t.spread
        source.last_latency = latency
        # ... less what the other sources show right now: when a slow service recovers, every
        # source is "faster than the peers' recent past" at once, and none of them is forging.
        latency -= max(0.0, _common_mode(group, source, now))
        # CUSUM of the (capped) evidence: many batches each a little too fast add up, so a flood cut
        # into small batches is still caught. The cap keeps a few strong batches (already caught on
        # their own) from charging it, or the source's genuine batches would be flagged after them.
        half, limit = config.latency_z / 2, 4 * config.latency_z
        source.latency_cusum, crossed = cusum_step(source.latency_cusum, latency, drift=half, cap=config.latency_z,
                                                   limit=limit)
        if crossed and latency > half:
            latency = max(latency, config.latency_z + 2.0)   # persistent: the CUSUM crossed its limit
        s.latency = latency
        if s.error_t is not None:
            # Fewer errors than the peers predict; once the source has a history, relative to its
            # usual (a source that always has fewer errors is not flagged for it), less the common mode.
            fewer = source.error_t.z(s.error_t) if len(source.error_t) >= MIN_SOURCE_BATCHES else s.error_t
            source.last_error, source.last_error_s = fewer, now
            s.fewer_errors = fewer - max(0.0, _common_mode(group, source, now, errors=True))
        return s

    # ------------------------------------------------------------------ lineage (lineage.py)

    def _calls(self, tenant: str, principal: str, view: _View, now: float,
               warm: bool) -> tuple[dict[str, float], list[tuple[SourceLineage, float]]]:
        """Client spans naming a callee and server spans of the callee, per principal: the robust z of
        their ratio against the source's usual, per service of the batch, and what to learn from it."""
        lineage = self._lineage
        for callee, n in view.calls.items():
            lineage.count_calls(lineage.source(tenant, principal, callee, now), 0, n, now)
        z: dict[str, float] = {}
        learn: list[tuple[SourceLineage, float]] = []
        for service, n in view.server_parented.items():
            source = lineage.source(tenant, principal, service, now)
            ratio = lineage.count_calls(source, n, 0, now)
            if ratio is None:
                continue
            learn.append((source, ratio))
            if warm and len(source.calls_ratio) >= MIN_SOURCE_BATCHES:
                z[service] = source.calls_ratio.z(ratio)
        return z, learn

    def _orphans(self, tenant: str, principal: str, view: _View, now: float, warm: bool, verdict: Verdict,
                 judged: bool) -> None:
        """Queue the batch's sampled parent ids for resolution, and score it against its source's
        orphans: ``orphan_spans`` when the source's batches lately had no caller more often than its
        peers' and this batch looks like them."""
        lineage, store = self._lineage, self._store
        # Services a batch flags as new do not advance the tenant's watermarks (shared_lineage.py).
        lineage.begin(tenant, [] if "new_service" in verdict.codes else list({s for s, _ in view.ops}),
                      view.span_ids, [h for _, h in view.parents] if judged else [], now,
                      Calls.of(principal, view.calls, view.server_parented) if lineage.shared else None)
        cdfs: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        recent_errors: dict[str, list[float]] = {}   # service -> everyone's recent [error spans, spans]
        for service, name in view.ops:
            group = store.groups.get((tenant, service, store.span_name(tenant, service, name)))
            if group is None:
                continue
            own = group.sources.get(principal)
            recent = recent_errors.setdefault(service, [0.0, 0.0])
            if own is not None and _common_mode(group, own, now, errors=True) > COMMON_MODE_CELLS:
                # Every source has fewer errors than the recent past (an error burst ending): errors
                # say nothing now, as fast says nothing while a slowdown ends.
                recent[1] = math.nan
            recent[0] += group.errors.value(now)
            recent[1] += group.spans.value(now)
            # While every source is clearly faster than the peers' recent past (a slow service
            # recovering), fast says nothing: the spans are placed by their errors only.
            if own is None or _common_mode(group, own, now) <= COMMON_MODE_CELLS:
                cdfs[(service, name)] = group.latency_cdf(now)
        checks: dict[str, list[bytes]] = {}
        for service, h in view.parents:
            checks.setdefault(service, []).append(h)
        best, best_reason = 0.0, ""
        for service in {service for service, _ in view.ops}:
            source = lineage.source(tenant, principal, service, now)
            service_checks = checks.get(service, []) if judged else []
            if not service_checks and (not warm or not lineage.may_be_contaminated(source)):
                continue   # nothing to queue and nothing to score: the cells are not needed
            cells: dict[int, int] = {}
            for (svc, name), op in view.ops.items():
                if svc != service:
                    continue
                cdf = cdfs.get((svc, name))
                for bucket, count in op.counts.items():
                    pit = _pit(cdf, bucket)
                    errors = op.error_counts.get(bucket, 0)
                    if count > errors:
                        c = cell(pit, False)
                        cells[c] = cells.get(c, 0) + count - errors
                    if errors:
                        c = cell(pit, True)
                        cells[c] = cells.get(c, 0) + errors
            seen, unseen = lineage.check(tenant, service, source, service_checks, cells, now)
            if not warm:
                continue
            error_spans, spans = recent_errors.get(service, (0.0, 0.0))
            found = lineage.contamination(tenant, service, source, cells, seen, unseen,
                                          None if math.isnan(spans) else (error_spans + 0.5) / (spans + 100.0), now)
            if found is not None and found.posterior > best:
                best = found.posterior
                best_reason = (f"orphan_spans: {service}: {found.share:.0%} of this key's recent batches had no "
                               f"caller (peers {found.peers:.0%}), and this batch resembles them (log likelihood "
                               f"ratio {found.log_lr:.1f}, posterior {found.posterior:.2f})")
        if best >= self._config.annotate_threshold:
            verdict.codes.append("orphan_spans")
            verdict.reasons.append(best_reason)
        verdict.score = max(verdict.score, best)

    @staticmethod
    def _latency_reason(service: str, parts: list[_Scored], latency: float, volume: float, now: float) -> str:
        top = max(parts, key=lambda p: p.ops.n)
        assert top.rank is not None
        batch_p50 = _quantile(top.ops.counts, top.ops.n, 0.5) / 1e6
        peers_p50 = top.group.everyone.quantile(0.5, now) / 1e6
        return (f"latency_masking: {service}: faster than its peers (z {latency:.1f}; {top.key[2]}: mean rank "
                f"{top.rank.mean_rank:.2f}, KS D+ {top.rank.ks_plus:.2f}, p50 {batch_p50:.1f} ms vs "
                f"{peers_p50:.1f} ms); share {top.share:.2f} vs usual {top.source.share_center():.2f} "
                f"(volume z {volume:.1f})")

    # ------------------------------------------------------------------ learning

    def _learn(self, tenant: str, principal: str, reporters: dict[str, set[str]], new_services: list[str],
               median_lag_s: float, card: Observed, scored: list[_Scored], now: float) -> None:
        for service in new_services:
            reporters.setdefault(service, set()).add(principal)
        self._store.principal(tenant, principal).lag.add(median_lag_s)
        self._cardinality.accept(card)
        for s in scored:
            group, source, op = s.group, s.source, s.ops
            group.everyone.add_counts(op.counts, now)
            source.recent.add_counts(op.counts, now)
            group.errors.add(op.errors, now)
            group.spans.add(op.n, now)
            source.errors.add(op.errors, now)
            source.spans.add(op.n, now)
            if s.rank is not None and s.latency_t is not None:
                if len(source.mean_rank) >= 8 and s.steady:   # t means something once there is a center
                    source.latency_t.add(s.latency_t)
                source.mean_rank.add(s.rank.mean_rank)
            if s.error_t is not None:
                source.error_t.add(s.error_t)
            if source.share_ref < 0:
                source.share_ref = s.share
            elif abs(s.volume_z) < self._config.volume_z:
                # An unusual share is not learned (quickly): a flood whose batches escape the
                # latency test must not become the new normal. It still creeps in at a tenth of the
                # rate, and never beyond MAX_SHARE_DRIFT of the frozen reference.
                source.share_residual.add(s.share - source.share_center())
                alpha = _SHARE_ALPHA if source.accepted_batches >= MIN_SOURCE_BATCHES else \
                    1.0 / (source.accepted_batches + 1)
                source.share_ref += alpha * (s.share - source.share_ref)
            else:
                source.share_ref += _SHARE_ALPHA / 10 * (s.share - source.share_ref)
            source.accepted_batches += 1
            source.maybe_freeze(now, 2 * MIN_SOURCE_BATCHES)


def _common_mode(group: Group, source: Source, now: float, errors: bool = False) -> float:
    """The median of the other sources' latest latency (or error) z, over those heard from in the
    last COMMON_MODE_S seconds (0 when none was)."""
    if errors:
        recent = [o.last_error for o in group.sources.values()
                  if o is not source and now - o.last_error_s <= COMMON_MODE_S]
    else:
        recent = [o.last_latency for o in group.sources.values()
                  if o is not source and now - o.last_latency_s <= COMMON_MODE_S]
    # Below one standard deviation the others' median is noise, not a shift everyone shares.
    common = median(recent) if recent else 0.0
    return common if common > 1.0 else 0.0


def _pit(cdf: tuple[list[int], list[float]] | None, bucket: int) -> float:
    """A latency bucket's mid-rank among the peers' (0.5 when there is no reference yet)."""
    if cdf is None or not cdf[1]:
        return 0.5
    indices, totals = cdf
    pos = bisect_left(indices, bucket)
    below = totals[pos - 1] if pos > 0 else 0.0
    at = totals[pos] - below if pos < len(indices) and indices[pos] == bucket else 0.0
    return (below + 0.5 * at) / totals[-1]


def _quantile(counts: dict[int, int], n: int, q: float) -> float:
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= q * n:
            return bucket_value_ns(index)
    return 0.0


def _strip_integrity_claims(batch: Batch) -> int:
    removed = 0
    for resource in resources(batch.request, batch.signal):
        attributes = resource.resource.attributes
        for i in range(len(attributes) - 1, -1, -1):
            if attributes[i].key.startswith(_INTEGRITY_PREFIX):
                del attributes[i]
                removed += 1
    return removed


def _services(request: Any, signal: Signal) -> list[str]:
    """The batch's service names (one look at each resource, not at its spans or points)."""
    services: dict[str, None] = {}
    for rs in resources(request, signal):
        service = ""
        for kv in rs.resource.attributes:
            if kv.key == "service.name":
                service = kv.value.string_value
                break
        services[service] = None
    return list(services)


def build(config: RampartConfig, env: Mapping[str, str]) -> Processor:
    """The factory processors/registry.py lists as the built-in ``forgery``."""
    state = config.forgery.state
    shared = lineage_shared(config)
    if not state.enabled and not shared:
        return ForgeryProcessor(config.forgery)
    # Its own Redis client, with the stage's short timeout and no retries: a slow Redis must not hold a batch up.
    client = stage_client(config)
    index = RedisParentIds(client, f"{config.redis.key_prefix}:{state.key_prefix}:lineage:v1:") if shared else None
    return ForgeryProcessor(config.forgery, RedisSnapshots(client) if state.enabled else None,
                            config.redis.key_prefix, lineage_index=index)


def lineage_shared(config: RampartConfig) -> bool:
    """Whether the lineage index is shared through Redis: ``forgery.lineage_index``, where ``auto``
    follows ``stages.keying`` (with tenant_service keying no worker sees both sides of a call)."""
    mode = config.forgery.lineage_index
    return mode == "redis" or (mode == "auto" and config.stages.keying == "tenant_service")

