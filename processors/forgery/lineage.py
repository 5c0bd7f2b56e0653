"""Caller/callee lineage: server spans whose parent never appears (orphans), and client/server span
counts between caller and callee.

A genuine SERVER span with a parent was called by someone: its parent (usually the caller's CLIENT
span) reaches the pipeline too, a few seconds before or after it (each SDK flushes on its own
schedule). A forger who adds fake spans to a service with a valid key invents parent ids that never
appear, unless it also forges the callers' spans, and their callers', up to a root. So:

- ``SpanIds`` remembers the span ids seen recently (1 in ``sample_every``, chosen by a keyed hash of
  the id, so a child is checked exactly when its parent would have been remembered); under
  tenant_service keying, where a callee's worker never sees its callers' spans, the ids live in Redis
  for every worker instead (shared_lineage.py), and so do the caller/callee counts;
- each sampled parent id of a batch waits ``wait_s`` in a queue; then it is resolved: its parent was
  seen (at arrival or since) or it is an orphan. A batch whose checked spans are all orphans is an
  *orphaned batch*;
- per source (tenant, principal, service): decayed counts of orphaned and resolved batches, and of
  resolved spans by *cell* (latency decile against the peers x error or not), orphans and the others
  apart. That is what the source's orphans look like, next to what its genuine spans look like;
- ``contamination``: the share of the source's batches that were orphaned, beyond its peers' share,
  is the prior that a batch of it is forged; the batch's spans, cell by cell, give the likelihood
  ratio "like its orphans" against "like its other spans"; the posterior is the evidence. A service
  whose callers are not instrumented has orphans from every source alike (no excess, no prior); a
  deploy that makes one cluster faster has no orphans at all.

Caller/callee counts: per (tenant, principal, callee service), CLIENT spans that name the callee in
``peer.service`` against SERVER spans of the callee that have a parent. Their ratio is steady for a
source (calls to uninstrumented callees, sampling, retries all stay what they were); a flood of
server spans nobody called raises it. The processor turns it into a robust z against the source's
usual ratio.

Python's ``hash()`` of an id is SipHash keyed per process: a forger cannot choose parent ids that
fall outside the sampled class without knowing the key (the shared index samples with a key kept in
Redis, the same in every worker). Lineage counts are part of the (tenant, service) snapshots (state.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from processors.forgery.lru import touch
from processors.forgery.shared_lineage import Exchange, SharedIndex
from processors.forgery.sketches import RobustZ

__all__ = ["CELLS", "Calls", "Contamination", "Decayed", "LineageTracker", "SourceLineage", "SpanIds", "cell",
           "sampled_id"]

# Latency deciles against the peers x (ok, error): 20 cells.
_DECILES = 10
CELLS = 2 * _DECILES
_SMOOTHING = 0.5            # pseudo-count per cell (Laplace): an unseen cell is possible, not impossible
_SHRINK = 4.0               # pseudo-spans pulling the orphans' cell distribution toward the others'
_MAX_LOG_LR = 30.0          # bounds the batch's log likelihood ratio (a very long batch cannot saturate floats)
# P(parent already seen at arrival) for a forged span: its parent never appears, but a forger may
# forge a parent for a few, so not zero.
_SEEN_IF_FORGED = 0.02   # of a forged batch, that a parent was already seen on arrival
_USUAL_ALPHA = 0.02
# Peers need this many resolved batches (decayed) to be a reference: a service with one source has none.
MIN_PEER_BATCHES = 5.0
# Decayed orphaned batches below this are no evidence at all (one orphaned batch decays below 1 at once).
MIN_ORPHANED = 0.5
# Shared mode: children waiting for their parents, all tenants together (oldest dropped undecided beyond).
_MAX_WAITING = 200_000


def sampled_id(h: int, every: int) -> bool:
    return every <= 1 or h % every == 0


def cell(pit: float, error: bool) -> int:
    """The cell of a span: its latency decile among the peers' (PIT value) and whether it failed."""
    decile = min(int(pit * _DECILES), _DECILES - 1)
    return decile + (_DECILES if error else 0)


class Decayed:
    """A few counts that fade together with one half-life (one timestamp for all of them)."""

    __slots__ = ("_at", "_inv_h", "values")

    def __init__(self, size: int, half_life_s: float, now_s: float) -> None:
        self.values = [0.0] * size
        self._inv_h = 1.0 / half_life_s
        self._at = now_s

    def decay_to(self, now_s: float) -> None:
        if now_s > self._at:
            factor = math.exp2(-(now_s - self._at) * self._inv_h)
            self.values = [v * factor for v in self.values]
            self._at = now_s

    def add(self, index: int, amount: float, now_s: float) -> None:
        self.decay_to(now_s)
        self.values[index] += amount

    def to_list(self) -> list[float]:
        """For a snapshot: its time, then its values (the half-life comes from the config)."""
        return [self._at, *self.values]

    @classmethod
    def from_list(cls, data: list[float], size: int, half_life_s: float) -> Decayed:
        if len(data) != size + 1:
            raise ValueError(f"expected {size + 1} numbers, got {len(data)}")
        out = cls(size, half_life_s, float(data[0]))
        out.values = [float(v) for v in data[1:]]
        return out


class SpanIds:
    """Span ids seen in the last ``window_s`` seconds (time slots that expire whole), at most
    ``max_entries``: the index of one worker that sees every span of a trace."""

    def __init__(self, window_s: float, max_entries: int, slots: int = 8) -> None:
        self._slot_s = window_s / slots
        self._slots = slots
        self._max_entries = max_entries
        self._seen: set[bytes] = set()
        self._ring: deque[tuple[int, list[bytes]]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, h: bytes) -> bool:
        return h in self._seen

    def add(self, ids: list[bytes], now_s: float) -> None:
        oldest_kept = int(now_s / self._slot_s) - self._slots
        while self._ring and self._ring[0][0] < oldest_kept:
            self._drop_oldest()
        if not ids:
            return
        self._seen.update(ids)
        slot = int(now_s / self._slot_s)
        if self._ring and self._ring[-1][0] == slot:
            self._ring[-1][1].extend(ids)
        else:
            self._ring.append((slot, list(ids)))
        while len(self._seen) > self._max_entries and len(self._ring) > 1:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, ids = self._ring.popleft()
        self._seen.difference_update(ids)


@dataclass(slots=True)
class SourceLineage:
    """One (tenant, principal, service): how often its batches turned out orphaned, and what its
    orphan and its other spans look like."""

    batches: Decayed                # [orphaned, resolved and not orphaned]
    orphans: Decayed                # resolved orphan spans by cell
    others: Decayed                 # resolved spans with a parent seen, by cell
    seen: Decayed                   # resolved batches that were not orphaned: [a parent already seen on
    # arrival, none] (the order of a caller's and a callee's flushes is a property of the batch, not of
    # each span)
    calls_ratio: RobustZ = field(default_factory=lambda: RobustZ(floor=0.05))   # server / client spans
    server_calls: float = 0.0       # decayed SERVER spans with a parent, into this service ...
    client_calls: float = 0.0       # ... and CLIENT spans naming it (peer.service), same principal
    calls_at: float = 0.0
    usual_share: float = -1.0       # its usual orphaned-batch share, learned from accepted batches only

    def learn_share(self) -> None:
        """An accepted batch teaches the source's usual orphaned-batch share (slowly: a source whose
        callers are not instrumented keeps its orphans without being flagged for them)."""
        orphaned, total = self.orphan_share()
        if total < 1.0:
            return
        share = orphaned / total
        if self.usual_share < 0:
            self.usual_share = share
            return
        # A share well above the usual creeps in at a tenth of the speed: the genuine batches of a key
        # that also floods are accepted, and must not teach it that orphans are normal for it.
        alpha = _USUAL_ALPHA if share <= self.usual_share + 0.1 else _USUAL_ALPHA / 10
        self.usual_share += alpha * (share - self.usual_share)

    def orphan_share(self) -> tuple[float, float]:
        """(orphaned batches, resolved batches), decayed."""
        orphaned, fine = self.batches.values
        return orphaned, orphaned + fine

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches.to_list(), "orphans": self.orphans.to_list(),
                "others": self.others.to_list(), "seen": self.seen.to_list(), "calls_ratio": self.calls_ratio.to_dict(),
                "calls": [self.calls_at, self.server_calls, self.client_calls], "usual_share": self.usual_share}

    @classmethod
    def from_dict(cls, data: dict[str, Any], half_life_s: float) -> SourceLineage:
        calls_at, server, client = (float(v) for v in data["calls"])
        return cls(Decayed.from_list(data["batches"], 2, half_life_s),
                   Decayed.from_list(data["orphans"], CELLS, half_life_s),
                   Decayed.from_list(data["others"], CELLS, half_life_s),
                   Decayed.from_list(data["seen"], 2, half_life_s), RobustZ.from_dict(data["calls_ratio"]),
                   server, client, calls_at, float(data["usual_share"]))


@dataclass(slots=True)
class _Pending:
    due_s: float
    source: SourceLineage
    service_key: tuple[str, str]
    checks: list[tuple[bytes, bool]]   # (parent id, seen at arrival)
    cells: dict[int, int]              # every span of the batch (this service), by cell
    arrival_s: float = 0.0
    blind: bool = False                # the shared index could not be asked: undecided, never an orphan


@dataclass(slots=True)
class Calls:
    """A batch's caller/callee counts for the shared index: ("c", principal, callee) for its client
    spans naming a callee (peer.service), ("s", principal, service) for its server spans with a parent."""

    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)

    @classmethod
    def of(cls, principal: str, clients: dict[str, int], servers: dict[str, int]) -> Calls:
        counts = {("c", principal, callee): n for callee, n in clients.items()}
        counts.update({("s", principal, service): n for service, n in servers.items()})
        return cls(counts)


@dataclass(frozen=True, slots=True)
class Contamination:
    posterior: float        # P(this batch is like the source's orphans), given its excess of them
    excess: float           # orphaned-batch share beyond the peers'
    share: float            # the source's orphaned-batch share
    peers: float            # its peers'
    log_lr: float


class LineageTracker:
    """Orphans and caller/callee counts per source. The parent index is this process's memory
    (``SpanIds``: trace_id keying or a single worker) or, with ``shared``, the index every worker writes
    to in Redis (shared_lineage.py: tenant_service keying, where callers and callees are screened by
    different workers)."""

    def __init__(self, *, wait_s: float, half_life_s: float, sample_every: int,
                 max_ids: int, max_sources: int, shared: SharedIndex | None = None,
                 report: Callable[[str, int], None] | None = None) -> None:
        self.wait_s = wait_s
        self.sample_every = sample_every
        self._half_life_s = half_life_s
        self._max_sources = max_sources
        # A parent may arrive up to about wait_s before its child, and is looked for until wait_s after.
        self.ids = SpanIds(3 * wait_s, max_ids)
        self._pending: deque[_Pending] = deque()
        self.sources: OrderedDict[tuple[str, str, str], SourceLineage] = OrderedDict()
        # (tenant, service) -> every source's [orphaned, resolved] batches together, for the peers
        self._services: dict[tuple[str, str], Decayed] = {}
        self._shared = shared
        self._report = report or (lambda outcome, n: None)
        # Shared mode: each tenant's children waiting for their parents; the parents found for the
        # batch being screened (None: the index could not be asked); per tenant, until when children
        # are undecided because writes may have been lost while Redis did not answer.
        self._waiting: dict[str, deque[_Pending]] = {}
        self._waiting_count = 0
        self._arrival: set[bytes] | None = set()
        self._blind_until: dict[str, float] = {}
        self._owned: OrderedDict[tuple[str, str], None] = OrderedDict()   # (tenant, service) this worker screens

    @property
    def shared(self) -> bool:
        return self._shared is not None

    @property
    def local_sample_every(self) -> int:
        """The sampling the batch's pass applies (Python's per-process ``hash()``); the shared index
        samples with a key every worker shares instead, so it gets every id."""
        return 1 if self._shared is not None else self.sample_every

    def __len__(self) -> int:
        return len(self.sources)

    def source(self, tenant: str, principal: str, service: str, now_s: float) -> SourceLineage:
        h = self._half_life_s
        state, _ = touch(self.sources, (tenant, principal, service), lambda: SourceLineage(
            Decayed(2, h, now_s), Decayed(CELLS, h, now_s), Decayed(CELLS, h, now_s), Decayed(2, h, now_s),
            calls_at=now_s), self._max_sources)
        return state

    def _service(self, tenant: str, service: str, now_s: float) -> Decayed:
        key = (tenant, service)
        state = self._services.get(key)
        if state is None:
            state = self._services[key] = Decayed(2, self._half_life_s, now_s)
        return state

    def export_service(self, tenant: str, service: str) -> dict[str, Any]:
        """For a snapshot of one (tenant, service): each source's orphan and call counts, and the peers'
        orphaned batches. Children still waiting for their parents are not kept."""
        peers = self._services.get((tenant, service))
        return {"sources": [[principal, state.to_dict()] for (t, principal, s), state in self.sources.items()
                            if t == tenant and s == service],
                "peers": peers.to_list() if peers is not None else None}

    def import_service(self, tenant: str, service: str, data: dict[str, Any]) -> None:
        """Merge a snapshot: what is held here already is kept as it is (it is newer), unless it learned
        nothing yet (a caller's batch counted its client spans into the callee's source before the
        callee's snapshot was loaded)."""
        h = self._half_life_s
        for principal, state in data["sources"]:
            key = (tenant, str(principal), service)
            held = self.sources.get(key)
            if held is None:
                restored = SourceLineage.from_dict(state, h)
                touch(self.sources, key, lambda: restored, self._max_sources)  # noqa: B023 - called at once
            elif not any(held.batches.values) and not len(held.calls_ratio):
                self.sources[key] = SourceLineage.from_dict(state, h)
        if data["peers"] is not None and (tenant, service) not in self._services:
            self._services[(tenant, service)] = Decayed.from_list(data["peers"], 2, h)

    def begin(self, tenant: str, services: list[str], span_ids: list[bytes], parents: list[bytes],
              now_s: float, calls: Calls | None = None) -> None:
        """Before a batch's parents are checked: resolve the children whose wait is over, and remember
        the batch's caller span ids (a parent in the same batch counts as seen). ``parents`` are the ids
        ``check`` will be given (the shared index looks them up in the same round trip); ``services`` are
        the batch's services that advance the tenant's watermarks. ``calls`` (shared index only): the
        batch's client spans per callee and server spans per service, added up in Redis per bucket (the
        in-memory mode counts them through ``count_calls``)."""
        if self._shared is None:
            self.resolve(now_s)
            self.ids.add(span_ids, now_s)
            return
        self._exchange(self._shared, tenant, services, span_ids, parents, now_s, calls)

    def remember(self, span_ids: list[bytes], now_s: float) -> None:
        """Remember a batch's sampled span ids in this process's index."""
        self.ids.add(span_ids, now_s)

    def check(self, tenant: str, service: str, source: SourceLineage, checks: list[bytes], cells: dict[int, int],
              now_s: float) -> tuple[int, int]:
        """Queue a batch's sampled parent ids for resolution in ``wait_s``, with the cells of all its
        spans (fakes come in whole batches: an orphaned batch tells what all of its spans look like);
        returns how many parents were already seen on arrival and how many not."""
        if self._shared is not None:
            return self._check_shared(self._shared, tenant, service, source, checks, cells, now_s)
        if not checks:
            return 0, 0
        ids = self.ids
        queued = [(h, h in ids) for h in checks]
        self._pending.append(_Pending(now_s + self.wait_s, source, (tenant, service), queued, cells, now_s))
        seen = sum(1 for _, at_arrival in queued if at_arrival)
        return seen, len(queued) - seen

    def resolve(self, now_s: float) -> None:
        """Decide the queued parent ids whose wait is over: seen by now, or orphans."""
        pending, ids = self._pending, self.ids
        while pending and pending[0].due_s <= now_s:
            item = pending.popleft()
            self._decide(item, [at_arrival or h in ids for h, at_arrival in item.checks], now_s)

    def _decide(self, item: _Pending, found: list[bool], now_s: float) -> None:
        source = item.source
        orphaned = not any(found)
        if not orphaned:
            source.seen.add(0 if any(at_arrival for _, at_arrival in item.checks) else 1, 1.0, now_s)
        into = source.orphans if orphaned else source.others
        for c, count in item.cells.items():
            into.add(c, count, now_s)
        index = 0 if orphaned else 1   # [orphaned, not]
        source.batches.add(index, 1.0, now_s)
        self._service(*item.service_key, now_s).add(index, 1.0, now_s)

    # ------------------------------------------------------------------ shared index (shared_lineage.py)

    def _exchange(self, shared: SharedIndex, tenant: str, services: list[str], span_ids: list[bytes],
                  parents: list[bytes], now_s: float, calls: Calls | None) -> None:
        for service in services:
            touch(self._owned, (tenant, service), lambda: None, self._max_sources)
        waiting = self._waiting.get(tenant)
        due: list[_Pending] = []
        while waiting and waiting[0].due_s <= now_s:
            item = waiting[0]
            late = item.due_s + shared.max_lag_s <= now_s
            if not item.blind and not late and not shared.resolvable(tenant, item.due_s):
                break   # a writer of the tenant has not reached this child's due time yet
            waiting.popleft()
            self._waiting_count -= 1
            if item.blind or late:
                self._report("undecided", 1)
            else:
                due.append(item)
        writes = shared.keep(span_ids)
        asked = shared.keep(parents) if parents else []
        answer = None
        if writes is None or asked is None:
            asked = []
        else:
            queries: list[tuple[int, int, list[bytes]]] = []
            if asked:
                queries.append((*shared.span(now_s), asked))
            for item in due:
                queries.append((*shared.span(item.arrival_s), [h for h, at_arrival in item.checks if not at_arrival]))
            reads = shared.reads_due(tenant, now_s)
            answer = shared.exchange(Exchange(tenant, shared.bucket(now_s), writes, dict.fromkeys(services, now_s),
                                              queries, calls.counts if calls is not None else {}, reads))
            if answer is not None:
                self._add_shared_calls(tenant, reads, answer.calls, shared)
        if answer is None:
            # Writes of this worker may be lost: the parents of children around now cannot be known.
            self._arrival = None
            self._blind_until[tenant] = now_s + 3 * self.wait_s
            for item in waiting or ():
                item.blind = True
            for _ in due:
                self._report("undecided", 1)
            return
        flags = answer.found
        pos = len(asked)
        self._arrival = {h for h, f in zip(asked, flags[:pos], strict=True) if f}
        for item in due:
            found = []
            for _, at_arrival in item.checks:
                if at_arrival:
                    found.append(True)
                else:
                    found.append(flags[pos])
                    pos += 1
            self._decide(item, found, now_s)

    def _add_shared_calls(self, tenant: str, reads: list[int], counts: list[dict[tuple[str, str, str], int]],
                          shared: SharedIndex) -> None:
        """Call counts of finished buckets, from every worker, into the sources of this worker's services
        (both sides alike one bucket late, so their ratio is not skewed by the delay)."""
        owned = self._owned
        for bucket, read in zip(reads, counts, strict=True):
            at = shared.bucket_end(bucket)
            for (kind, principal, service), n in read.items():
                if (tenant, service) in owned:
                    source = self.source(tenant, principal, service, at)
                    self._add_calls(source, n if kind == "s" else 0, n if kind == "c" else 0, at)

    def _check_shared(self, shared: SharedIndex, tenant: str, service: str, source: SourceLineage,
                      checks: list[bytes], cells: dict[int, int], now_s: float) -> tuple[int, int]:
        kept = shared.keep(checks) if checks else []
        if not kept:
            return 0, 0
        arrival = self._arrival
        blind = arrival is None or now_s < self._blind_until.get(tenant, -1e18)
        queued = [(h, arrival is not None and h in arrival) for h in kept]
        waiting = self._waiting.setdefault(tenant, deque())
        waiting.append(_Pending(now_s + self.wait_s, source, (tenant, service), queued, cells, now_s, blind))
        self._waiting_count += 1
        if self._waiting_count > _MAX_WAITING:
            self._drop_oldest_waiting()
        if arrival is None:
            return 0, 0   # not known: the likelihood leaves the arrival order out
        seen = sum(1 for _, at_arrival in queued if at_arrival)
        return seen, len(queued) - seen

    def _drop_oldest_waiting(self) -> None:
        tenant = min((t for t, q in self._waiting.items() if q), key=lambda t: self._waiting[t][0].due_s)
        self._waiting[tenant].popleft()
        self._waiting_count -= 1
        self._report("undecided", 1)

    @staticmethod
    def may_be_contaminated(source: SourceLineage) -> bool:
        """False when ``contamination`` would certainly find nothing (a cheap test: the orphaned count
        only decays until the next resolution)."""
        return source.batches.values[0] >= MIN_ORPHANED

    def contamination(self, tenant: str, service: str, source: SourceLineage, cells: dict[int, int],
                      seen_at_arrival: int, unseen_at_arrival: int, peer_error_ratio: float | None,
                      now_s: float) -> Contamination | None:
        """The posterior that this batch belongs to the source's orphans; None when the source shows
        no excess of orphaned batches over its peers.

        The likelihood is taken in two parts: latency deciles against the source's other batches, and
        errors against the peers' error ratio *now* (an error burst that ends makes every genuine batch
        error-free, like the fakes that hid it: only the current ratio tells what a genuine batch has;
        None leaves errors out)."""
        source.batches.decay_to(now_s)
        orphaned, total = source.orphan_share()
        if orphaned < MIN_ORPHANED or total <= 0:
            return None
        everyone = self._service(tenant, service, now_s)
        everyone.decay_to(now_s)
        peer_orphaned = max(everyone.values[0] - orphaned, 0.0)
        peer_total = max(everyone.values[0] + everyone.values[1] - total, 0.0)
        share = orphaned / total
        if peer_total < MIN_PEER_BATCHES:
            return None
        peers = (peer_orphaned + 0.5) / (peer_total + 1.0)
        # Beyond the peers' share and beyond the source's own usual (its callers may not be instrumented).
        excess = share - max(peers, source.usual_share)
        if excess <= 0:
            return None
        source.orphans.decay_to(now_s)
        source.others.decay_to(now_s)
        orphan_cells, other_cells = source.orphans.values, source.others.values
        orphan_deciles = [orphan_cells[d] + orphan_cells[d + _DECILES] for d in range(_DECILES)]
        other_deciles = [other_cells[d] + other_cells[d + _DECILES] for d in range(_DECILES)]
        n_total = sum(other_deciles) + _SMOOTHING * _DECILES
        o_total = sum(orphan_deciles) + _SHRINK
        # The orphans' error share, shrunk toward the peers' ratio like the deciles below.
        orphan_errors = sum(orphan_cells[_DECILES:])
        p = min(max(peer_error_ratio if peer_error_ratio is not None else 0.5, 1e-3), 1 - 1e-3)
        g_error = (orphan_errors + _SHRINK * p) / o_total if peer_error_ratio is not None else p
        log_lr = 0.0
        for c, count in cells.items():
            d = c % _DECILES
            f = (other_deciles[d] + _SMOOTHING) / n_total
            # The orphans' distribution is shrunk toward the others': until there are orphans to
            # tell otherwise, they look like everything else (likelihood ratio 1).
            g = (orphan_deciles[d] + _SHRINK * f) / o_total
            log_lr += count * math.log(g / f)
            log_lr += count * (math.log(g_error / p) if c >= _DECILES else math.log((1 - g_error) / (1 - p)))
        if seen_at_arrival or unseen_at_arrival:
            source.seen.decay_to(now_s)
            some, none = source.seen.values
            p_seen = (some + 0.5) / (some + none + 1.0)   # a genuine batch has a parent seen on arrival
            if seen_at_arrival:
                log_lr += math.log(_SEEN_IF_FORGED / p_seen)
            else:
                log_lr += math.log((1 - _SEEN_IF_FORGED) / max(1 - p_seen, 1e-3))
        log_lr = min(max(log_lr, -_MAX_LOG_LR), _MAX_LOG_LR)
        log_odds = math.log(excess / (1 - excess)) + log_lr if excess < 1 else _MAX_LOG_LR
        posterior = 1.0 / (1.0 + math.exp(-log_odds)) if log_odds > -_MAX_LOG_LR else 0.0
        return Contamination(posterior, excess, share, peers, log_lr)

    def count_calls(self, source: SourceLineage, server: int, client: int, now_s: float) -> float | None:
        """Add a batch's server spans with a parent (into the source's service) and client spans naming
        it (from any service of the principal); the ratio server/client now, when both are known. With
        the shared index the counts come through Redis instead (``begin``): only the ratio is returned."""
        if self._shared is None:
            self._add_calls(source, server, client, now_s)
        if source.client_calls < 10.0 or source.server_calls < 10.0:
            return None
        return source.server_calls / source.client_calls

    def _add_calls(self, source: SourceLineage, server: int, client: int, now_s: float) -> None:
        factor = math.exp2(-(now_s - source.calls_at) / self._half_life_s) if now_s > source.calls_at else 1.0
        source.server_calls = source.server_calls * factor + server
        source.client_calls = source.client_calls * factor + client
        source.calls_at = max(now_s, source.calls_at)
