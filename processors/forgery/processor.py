"""`forgery`: screen trace batches sent with valid credentials for signs of forgery.

One pass over the batch gathers, per (service, span name), bucketed latencies and error counts, plus
span lags, replay digests of sampled spans and attribute-value hashes. Then:

1. hard rules (score 1.0, each with a reason): ``new_service``, ``timestamp_window``,
   ``timestamp_skew``, ``replay``, ``cardinality_cap``, ``cardinality_novelty``;
2. statistical evidence per (service, span name) against the *other* principals reporting the same
   operation: ``latency_masking`` (faster than the peers while sending more than its share) and
   ``error_masking`` (fewer errors than the peers while sending more than its share);
3. actions by score: annotate, keep out of baselines, drop as ``forgery_suspected``.

Only batches scoring below ``baseline_threshold`` teach the baselines, so a flood that is caught
cannot drag them along. The clock is the envelope's ``received_at`` (set by the gateway), never a
timestamp the client wrote. See docs/forgery.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processors.base import Batch, Processor, Result
from processors.forgery.baselines import BaselineStore, Group, Source
from processors.forgery.cardinality import CardinalityTracker, KeyVerdict
from processors.forgery.replay import ReplayIndex, content_digest, sampled
from processors.forgery.scoring import RankStats, combine, error_z, evidence, rank_stats
from processors.forgery.sketches import (
    INV_LOG_GAMMA,
    MAX_BUCKET,
    MAX_DURATION_NS,
    MIN_BUCKET,
    MIN_DURATION_NS,
    bucket_value_ns,
)
from processors.otlp import walk
from rampart.config import ForgeryConfig, RampartConfig
from schemas.envelope import Signal

__all__ = ["DROP_REASON", "INTEGRITY_REASONS", "INTEGRITY_SCORE", "ForgeryProcessor", "Verdict", "build"]

INTEGRITY_SCORE = "rampart.integrity.score"
INTEGRITY_REASONS = "rampart.integrity.reasons"
_INTEGRITY_PREFIX = "rampart.integrity."
DROP_REASON = "forgery_suspected"
_STATUS_ERROR = 2
_NS = 1_000_000_000
# A source needs this many accepted batches in a group before its statistics are scored, and the
# peers this much recent (decayed) span weight to compare against.
MIN_SOURCE_BATCHES = 16
MIN_PEER_WEIGHT = 30.0
_SHARE_ALPHA = 0.02
COMMON_MODE_S = 15.0
_MAX_REASONS_CHARS = 1000


@dataclass(slots=True)
class _Ops:
    """One (service, span name) of the batch."""

    counts: dict[int, int] = field(default_factory=dict)   # latency bucket -> spans
    n: int = 0
    errors: int = 0


@dataclass(slots=True)
class _View:
    ops: dict[tuple[str, str], _Ops] = field(default_factory=dict)
    values: dict[str, dict[str, set[str]]] = field(default_factory=dict)   # service -> key -> values
    digests: list[int] = field(default_factory=list)
    lags_ns: list[int] = field(default_factory=list)
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


class ForgeryProcessor(Processor):
    name = "forgery"

    def __init__(self, config: ForgeryConfig) -> None:
        self._config = config
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

    # ------------------------------------------------------------------ contract

    def process(self, batch: Batch) -> Result:
        if batch.signal is not Signal.TRACES:
            result = Result()
            result.count("unscreened_batches")   # metrics and logs: not screened yet (docs/forgery.md)
            return result
        return self.act(batch, self.screen(batch))

    def screen(self, batch: Batch) -> Verdict:
        """Score a trace batch and let it teach the baselines if it scores low. Changes nothing in it."""
        config = self._config
        now_ns = batch.received_at_ns
        now = now_ns / _NS
        tenant, principal = batch.tenant, batch.principal
        tenant_state = self._store.tenant(tenant, now)
        warm = now - tenant_state.first_s >= config.learning_s
        view = self._extract(batch.request, now_ns)
        verdict = Verdict(learning=not warm)
        if not view.spans:
            return verdict

        new_services = self._new_services(tenant, principal, view, warm, verdict)
        median_lag_s = self._timestamps(tenant, principal, view, warm, verdict)
        self._replay(batch.batch_id, view, now, verdict)
        card = self._cardinality_rules(tenant, view, now, warm, verdict)
        scored = self._statistics(tenant, principal, view, now, warm, verdict)
        if verdict.codes and any(c not in ("latency_masking", "error_masking") for c in verdict.codes):
            verdict.score = 1.0

        if verdict.score < config.baseline_threshold:
            self._learn(tenant, principal, tenant_state.reporters, new_services, median_lag_s, card, scored, now)
        else:
            for s in scored:
                s.source.flagged_since_frozen = True
        return verdict

    def act(self, batch: Batch, verdict: Verdict) -> Result:
        """Apply the configured actions for a verdict to its batch."""
        config = self._config
        result = Result()
        result.count("screened_batches")
        if verdict.learning:
            result.count("learning_batches")
        stripped = _strip_integrity_claims(batch)
        if stripped:
            # A client must not be able to pre-stamp its own data as screened and clean.
            result.count("integrity_claims_removed", stripped)
        for code in verdict.codes:
            result.count(f"flag_{code}")
        if verdict.score >= config.annotate_threshold and verdict.reasons:
            reasons = "; ".join(verdict.reasons)[:_MAX_REASONS_CHARS]
            for rs in batch.request.resource_spans:   # type: ignore[attr-defined]
                attributes = rs.resource.attributes
                attributes.add(key=INTEGRITY_SCORE).value.double_value = round(verdict.score, 3)
                attributes.add(key=INTEGRITY_REASONS).value.string_value = reasons
                result.changed += sum(len(ss.spans) for ss in rs.scope_spans)
            result.count("annotated_batches")
        if config.quarantine and verdict.score >= config.quarantine_threshold:
            detail = f"score {verdict.score:.2f}: " + "; ".join(verdict.reasons)
            for ref in walk(batch.request, batch.signal):
                result.drop(ref, DROP_REASON, detail)
            result.count("quarantined_batches")
            result.audit.append((DROP_REASON, {"batch_id": batch.batch_id, "score": f"{verdict.score:.3f}",
                                               "reasons": ",".join(sorted(set(verdict.codes)))}))
        return result

    def memory_entries(self) -> dict[str, int]:
        """How much state is held, by kind (for the evaluation and for future metrics)."""
        return {"groups": len(self._store.groups), "sources": sum(len(g.sources) for g in self._store.groups.values()),
                "principals": len(self._store.principals), "cardinality_keys": len(self._cardinality),
                "replay_digests": len(self._replays), "evictions": self._store.evictions}

    # ------------------------------------------------------------------ one pass over the batch

    def _extract(self, request: Any, now_ns: int) -> _View:
        """One pass over the spans: the hot loop (every attribute read once; locals for speed)."""
        view = _View()
        ops, digests, lags = view.ops, view.digests, view.lags_ns
        lowest = now_ns - int(self._config.max_lag_s * _NS)
        highest = now_ns + int(self._config.max_lead_s * _NS)
        every = self._config.replay_sample_every
        log, ceil = math.log, math.ceil
        outside = spans = 0
        for rs in request.resource_spans:
            service = ""
            for kv in rs.resource.attributes:
                if kv.key == "service.name":
                    service = kv.value.string_value
                    break
            # Values per attribute key of this service (strings: they hash once, on insertion).
            values = view.values.setdefault(service, {})
            for kv in rs.resource.attributes:
                if kv.value.string_value:
                    values.setdefault(kv.key, set()).add(kv.value.string_value)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    start, end = span.start_time_unix_nano, span.end_time_unix_nano
                    duration = end - start
                    name = span.name
                    op = ops.get((service, name))
                    if op is None:
                        op = ops[(service, name)] = _Ops()
                    bucket = MIN_BUCKET if duration <= MIN_DURATION_NS else MAX_BUCKET if duration >= \
                        MAX_DURATION_NS else ceil(log(duration) * INV_LOG_GAMMA)
                    counts = op.counts
                    counts[bucket] = counts.get(bucket, 0) + 1
                    op.n += 1
                    status = span.status
                    if status.code == _STATUS_ERROR:
                        op.errors += 1
                    lags.append(now_ns - end)
                    if end < lowest or end > highest:
                        outside += 1
                    # Replay digests for 1 in `every` spans, chosen by duration (see replay.py).
                    parts: list[tuple[str, Any]] | None = [] if sampled(duration, every) else None
                    for kv in span.attributes:
                        value = kv.value.string_value
                        if value:
                            found = values.get(kv.key)
                            if found is None:
                                values[kv.key] = {value}
                            else:
                                found.add(value)
                            if parts is not None:
                                parts.append((kv.key, value))
                        elif parts is not None:
                            parts.append((kv.key, kv.value.SerializeToString()))
                    if parts is not None:
                        digests.append(content_digest(span, service, name, duration, status, parts))
                    spans += 1
        view.outside, view.spans = outside, spans
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
        if not view.digests:
            return
        matched = self._replays.check_and_add(view.digests, hash(batch_id), now)
        if matched >= self._config.replay_min_matches and matched * 2 >= len(view.digests):
            verdict.codes.append("replay")
            verdict.reasons.append(f"replay: {matched} of {len(view.digests)} sampled spans were seen before "
                                   "under another batch id (ids and timestamps aside)")

    def _cardinality_rules(self, tenant: str, view: _View, now: float, warm: bool,
                           verdict: Verdict) -> list[tuple[tuple[str, str, str], KeyVerdict]]:
        out = []
        for service, keys in view.values.items():
            for key, values in keys.items():
                full_key = (tenant, service, key)
                hashes = {hash(v) for v in values}   # str caches its hash: no second SipHash pass
                result = self._cardinality.observe(full_key, hashes, now, judge=warm)
                if result.reason:
                    verdict.codes.append(result.reason)
                    verdict.reasons.append(f"{result.reason}: {service}: {result.detail}")
                out.append((full_key, result))
        return out

    # ------------------------------------------------------------------ statistics against peers

    def _statistics(self, tenant: str, principal: str, view: _View, now: float, warm: bool,
                    verdict: Verdict) -> list[_Scored]:
        """Evidence per (service, span name) against the peers, pooled per service (a flood forges a
        service, spread over its operations): the batch scores its most suspicious service."""
        scored = [self._group_evidence(key, op, principal, now, warm)
                  for key, op in self._merge_ops(tenant, view).items()]
        by_service: dict[str, list[_Scored]] = {}
        for s in scored:
            if s.latency is not None:
                by_service.setdefault(s.key[1], []).append(s)
        config = self._config
        best, best_reason, best_code = 0.0, "", ""
        for service, parts in by_service.items():
            # Stouffer's combination weighted by span counts for the content evidence; the volume
            # evidence of the operations is one and the same flood, so it is averaged, not added.
            total = sum(p.ops.n for p in parts)
            latency = sum(math.sqrt(p.ops.n) * (p.latency or 0.0) for p in parts) / math.sqrt(total)
            volume = sum(p.ops.n * p.volume_z for p in parts) / total
            e_volume = evidence(volume, config.volume_z)
            mask = combine(evidence(latency, config.latency_z), e_volume)
            if mask > best:
                best, best_code = mask, "latency_masking"
                best_reason = self._latency_reason(service, parts, latency, volume, now)
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
            verdict.reasons.append(best_reason)
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
        source.latency_cusum = min(max(0.0, source.latency_cusum + min(latency, config.latency_z) - half), 2 * limit)
        if source.latency_cusum > limit and latency > half:
            latency = max(latency, config.latency_z + 2.0)   # persistent: the CUSUM crossed its limit
        s.latency = latency
        if s.error_t is not None:
            # Fewer errors than the peers predict; once the source has a history, relative to its
            # usual (a source that always has fewer errors is not flagged for it), less the common mode.
            fewer = source.error_t.z(s.error_t) if len(source.error_t) >= MIN_SOURCE_BATCHES else s.error_t
            source.last_error, source.last_error_s = fewer, now
            s.fewer_errors = fewer - max(0.0, _common_mode(group, source, now, errors=True))
        return s

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
               median_lag_s: float, card: list[tuple[tuple[str, str, str], KeyVerdict]],
               scored: list[_Scored], now: float) -> None:
        for service in new_services:
            reporters.setdefault(service, set()).add(principal)
        self._store.principal(tenant, principal).lag.add(median_lag_s)
        for key, result in card:
            self._cardinality.accept(key, result)
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


def _quantile(counts: dict[int, int], n: int, q: float) -> float:
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= q * n:
            return bucket_value_ns(index)
    return 0.0


def _strip_integrity_claims(batch: Batch) -> int:
    removed = 0
    request: ExportTraceServiceRequest = batch.request  # type: ignore[assignment]
    for rs in request.resource_spans:
        attributes = rs.resource.attributes
        for i in range(len(attributes) - 1, -1, -1):
            if attributes[i].key.startswith(_INTEGRITY_PREFIX):
                del attributes[i]
                removed += 1
    return removed


def build(config: RampartConfig, env: Mapping[str, str]) -> Processor:
    """The factory processors/registry.py lists as the built-in ``forgery``."""
    return ForgeryProcessor(config.forgery)

