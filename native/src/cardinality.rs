//! The forgery stage's attribute-value cardinality per (tenant, service, attribute key): a
//! HyperLogLog per window for `cardinality_cap`, a Bloom filter of known values for
//! `cardinality_novelty` (processors/forgery/cardinality.py states the rules), the least recently
//! used keys evicted beyond a bound.
//!
//! A batch's keys are all handled in one call: done key by key in Python, this was a fifth of the
//! stage's CPU with 100-span batches of four services. The steps are those of the Python
//! implementation it replaced, in the same order (each set of values in its Python iteration
//! order, so that the floating-point sums agree), which
//! tests/unit/processors/test_forgery_cardinality.py keeps as the model it must match exactly.

use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PySet, PyString};

const P: u32 = 10;
const REGISTERS: usize = 1 << P; // 1 KiB, ~3 % standard error
const BLOOM_BITS: u64 = 32_768;
const BLOOM_PROBES: u64 = 4;
/// A key is judged once this many of its batches were accepted (and it has a reference window).
const MIN_BATCHES: i64 = 8;
const NIL: usize = usize::MAX;

/// The low 64 bits of a Python int (Python's `value & (2**64 - 1)`).
fn low_bits(item: &Bound<'_, PyAny>) -> PyResult<u64> {
    // SAFETY: a valid object pointer, with the GIL held; for a non-int the call sets an error and
    // returns all ones.
    let value = unsafe { pyo3::ffi::PyLong_AsUnsignedLongLongMask(item.as_ptr()) };
    if value == u64::MAX {
        if let Some(err) = PyErr::take(item.py()) {
            return Err(err);
        }
    }
    Ok(value)
}

/// 2^-exponent, exactly (Python's `2.0 ** -exponent` for the ranks a register holds).
fn negative_power_of_two(exponent: u8) -> f64 {
    f64::from_bits((1023 - u64::from(exponent)) << 52)
}

/// Flajolet et al.'s HyperLogLog, keeping the harmonic sum and the count of empty registers up to
/// date so that an estimate is O(1).
struct HyperLogLog {
    registers: Box<[u8; REGISTERS]>,
    inv_sum: f64,
    zeros: i64,
}

impl HyperLogLog {
    fn new() -> Self {
        HyperLogLog { registers: Box::new([0; REGISTERS]), inv_sum: REGISTERS as f64, zeros: REGISTERS as i64 }
    }

    fn add(&mut self, h: u64) {
        let rank = (64 - P + 1 - (64 - (h >> P).leading_zeros())) as u8;
        let Some(old) = self.registers.get_mut((h & (REGISTERS as u64 - 1)) as usize) else { return };
        if rank > *old {
            self.inv_sum += negative_power_of_two(rank) - negative_power_of_two(*old);
            if *old == 0 {
                self.zeros -= 1;
            }
            *old = rank;
        }
    }

    fn estimate(&self) -> f64 {
        let m = REGISTERS as f64;
        let raw = 0.7213 / (1.0 + 1.079 / m) * m * m / self.inv_sum;
        if raw <= 2.5 * m && self.zeros != 0 {
            m * (m / self.zeros as f64).ln() // linear counting for small sets
        } else {
            raw
        }
    }
}

/// A Bloom filter with k probes by double hashing; 32 Kibit holds ~3,000 values at < 1 % false positives.
struct Bloom {
    bits: Box<[u8; (BLOOM_BITS / 8) as usize]>,
    count: i64, // values added (an upper bound on distinct values held)
}

fn probes(h: u64) -> impl Iterator<Item = u64> {
    let (h1, h2) = (h & 0xFFFF_FFFF, ((h >> 32) & 0xFFFF_FFFF) | 1);
    (0..BLOOM_PROBES).map(move |i| (h1 + i * h2) % BLOOM_BITS)
}

impl Bloom {
    fn new() -> Self {
        Bloom { bits: Box::new([0; (BLOOM_BITS / 8) as usize]), count: 0 }
    }

    fn holds(&self, h: u64) -> bool {
        probes(h).all(|q| self.bits.get((q >> 3) as usize).is_some_and(|b| b & (1 << (q & 7)) != 0))
    }

    fn add(&mut self, h: u64) {
        for q in probes(h) {
            if let Some(byte) = self.bits.get_mut((q >> 3) as usize) {
                *byte |= 1 << (q & 7);
            }
        }
        self.count += 1;
    }
}

struct KeyState {
    window_start: f64,
    current: HyperLogLog,
    reference: f64, // distinct values in the last window that was not over its cap (-1: none yet)
    known: Bloom,
    novelty: f64, // usual fraction of new values per batch (EWMA over accepted batches)
    batches: i64,
}

impl KeyState {
    fn new(window_start: f64, reference: f64) -> Self {
        KeyState { window_start, current: HyperLogLog::new(), reference, known: Bloom::new(), novelty: 1.0, batches: 0 }
    }
}

/// One key held: its state, its place in the recency list and a generation that tells a reused
/// slot from the key a batch saw in it.
struct Slot {
    tenant: String,
    service: String,
    key: String,
    state: KeyState,
    older: usize,
    newer: usize,
    used: u64, // when last observed (or restored): the recency order, for snapshots
    generation: u64,
}

/// What a batch's key brought, kept for [`CardinalityTracker::accept`].
struct Pending {
    slot: usize,
    generation: u64,
    fresh: Vec<u64>, // hashes the Bloom filter did not hold (none when it is full)
    distinct: usize,
}

/// What `observe` saw of one batch, for `accept` if the batch turns out clean.
#[pyclass(module = "rampart_native")]
pub struct Observed {
    pending: Vec<Pending>,
}

type Finding<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, &'static str, usize, usize, f64, f64, f64);

#[pyclass(module = "rampart_native")]
pub struct CardinalityTracker {
    window_s: f64,
    floor: f64,
    growth: f64,
    min_novel: usize,
    max_keys: usize,
    bloom_capacity: i64,
    novelty_fraction: f64,
    repetitive: f64,
    novelty_ewma: f64,
    /// tenant -> service -> attribute key -> slot
    index: HashMap<String, HashMap<String, HashMap<String, usize>>>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    oldest: usize,
    newest: usize,
    held: usize,
    clock: u64,
}

impl CardinalityTracker {
    fn cap(&self, state: &KeyState) -> f64 {
        self.floor.max(self.growth * state.reference.max(0.0))
    }

    fn unlink(&mut self, slot: usize) {
        let (older, newer) = match self.slots.get(slot) {
            Some(s) => (s.older, s.newer),
            None => return,
        };
        match self.slots.get_mut(older) {
            Some(s) => s.newer = newer,
            None => self.oldest = newer,
        }
        match self.slots.get_mut(newer) {
            Some(s) => s.older = older,
            None => self.newest = older,
        }
    }

    fn push_newest(&mut self, slot: usize) {
        self.clock += 1;
        let (previous, clock) = (self.newest, self.clock);
        if let Some(s) = self.slots.get_mut(slot) {
            s.older = previous;
            s.newer = NIL;
            s.used = clock;
        }
        match self.slots.get_mut(previous) {
            Some(s) => s.newer = slot,
            None => self.oldest = slot,
        }
        self.newest = slot;
    }

    fn find(&self, tenant: &str, service: &str, key: &str) -> Option<usize> {
        self.index.get(tenant)?.get(service)?.get(key).copied()
    }

    /// A new key, the most recently used; the least recently used goes beyond `max_keys`.
    fn insert(&mut self, tenant: &str, service: &str, key: &str, state: KeyState) -> usize {
        let slot = Slot {
            tenant: tenant.to_owned(),
            service: service.to_owned(),
            key: key.to_owned(),
            state,
            older: NIL,
            newer: NIL,
            used: 0,
            generation: 0,
        };
        let at = match self.free.pop() {
            Some(at) => {
                if let Some(old) = self.slots.get_mut(at) {
                    *old = Slot { generation: old.generation, ..slot };
                }
                at
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.index
            .entry(tenant.to_owned())
            .or_default()
            .entry(service.to_owned())
            .or_default()
            .insert(key.to_owned(), at);
        self.push_newest(at);
        self.held += 1;
        if self.held > self.max_keys {
            self.evict(self.oldest);
        }
        at
    }

    fn evict(&mut self, slot: usize) {
        self.unlink(slot);
        if let Some(s) = self.slots.get_mut(slot) {
            s.generation += 1; // what a batch saw in this slot is gone
        }
        if let Some(s) = self.slots.get(slot) {
            if let Some(services) = self.index.get_mut(&s.tenant) {
                if let Some(keys) = services.get_mut(&s.service) {
                    keys.remove(&s.key);
                    if keys.is_empty() {
                        services.remove(&s.service);
                    }
                }
                if services.is_empty() {
                    self.index.remove(&s.tenant);
                }
            }
        }
        self.free.push(slot);
        self.held -= 1;
    }

    /// The key's state, most recently used now, its window rolled if it is over.
    fn touch(&mut self, tenant: &str, service: &str, key: &str, now_s: f64) -> usize {
        let at = match self.find(tenant, service, key) {
            Some(at) => {
                self.unlink(at);
                self.push_newest(at);
                at
            }
            None => self.insert(tenant, service, key, KeyState::new(now_s, -1.0)),
        };
        if let Some(slot) = self.slots.get(at) {
            if now_s - slot.state.window_start >= self.window_s {
                let estimate = slot.state.current.estimate();
                let keep = slot.state.reference < 0.0 || estimate <= self.cap(&slot.state);
                if let Some(slot) = self.slots.get_mut(at) {
                    // The first window sets the reference; after that only a window that stayed
                    // under its cap does: an explosion cannot raise the bar for the next window.
                    if keep {
                        slot.state.reference = estimate;
                    }
                    slot.state.current = HyperLogLog::new();
                    slot.state.window_start = now_s;
                }
            }
        }
        at
    }
}

#[pymethods]
impl CardinalityTracker {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (*, window_s, floor, growth, min_novel, max_keys, bloom_capacity, novelty_fraction,
                        repetitive, novelty_ewma))]
    fn new(window_s: f64, floor: f64, growth: f64, min_novel: usize, max_keys: usize, bloom_capacity: i64,
           novelty_fraction: f64, repetitive: f64, novelty_ewma: f64) -> PyResult<Self> {
        if max_keys == 0 {
            return Err(PyValueError::new_err("max_keys must be at least 1"));
        }
        Ok(CardinalityTracker {
            window_s,
            floor,
            growth,
            min_novel,
            max_keys,
            bloom_capacity,
            novelty_fraction,
            repetitive,
            novelty_ewma,
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            oldest: NIL,
            newest: NIL,
            held: 0,
            clock: 0,
        })
    }

    fn __len__(&self) -> usize {
        self.held
    }

    /// Count a batch's distinct value hashes per (service, key) of `tenant`; with `judge`, say which
    /// keys break a rule: (service, key, reason, novel, distinct, usual novelty, estimate, cap) each.
    fn observe<'py>(&mut self, tenant: &str, value_hashes: &Bound<'py, PyDict>, now_s: f64,
                    judge: bool) -> PyResult<(Vec<Finding<'py>>, Observed)> {
        let (mut findings, mut pending) = (Vec::new(), Vec::new());
        for (service_obj, keys) in value_hashes.iter() {
            let service = service_obj.cast::<PyString>()?.to_str()?.to_owned();
            for (key_obj, hashes) in keys.cast::<PyDict>()?.iter() {
                let hashes = hashes.cast::<PySet>()?;
                let at = self.touch(tenant, &service, key_obj.cast::<PyString>()?.to_str()?, now_s);
                let (min_novel, fraction, repetitive_below, capacity) =
                    (self.min_novel, self.novelty_fraction, self.repetitive, self.bloom_capacity);
                let cap = self.slots.get(at).map_or(0.0, |slot| self.cap(&slot.state));
                let Some(slot) = self.slots.get_mut(at) else { continue };
                let state = &mut slot.state;
                let usable = state.known.count < capacity;
                let mut fresh = Vec::new();
                for item in hashes.iter() {
                    let h = low_bits(&item)?;
                    state.current.add(h);
                    if usable && !state.known.holds(h) {
                        fresh.push(h);
                    }
                }
                let estimate = state.current.estimate();
                let (novel, distinct) = (fresh.len(), hashes.len());
                pending.push(Pending { slot: at, generation: slot.generation, fresh, distinct });
                if !judge || state.batches < MIN_BATCHES || state.reference < 0.0 {
                    // A key is judged once it has a reference window behind it (a new key gets one
                    // window's grace).
                    continue;
                }
                let repetitive = usable && state.novelty < repetitive_below;
                let reason = if repetitive && novel >= min_novel && novel as f64 >= fraction * distinct as f64 {
                    "cardinality_novelty"
                } else if estimate > cap && (!repetitive || novel as f64 >= 0.5 * distinct as f64) {
                    "cardinality_cap"
                } else {
                    continue;
                };
                findings.push((service_obj.clone(), key_obj.clone(), reason, novel, distinct, state.novelty, estimate,
                               cap));
            }
        }
        Ok((findings, Observed { pending }))
    }

    /// A batch judged clean teaches its keys: their new values become known, their novelty the usual.
    fn accept(&mut self, observed: &Observed) {
        let (capacity, ewma) = (self.bloom_capacity, self.novelty_ewma);
        for p in &observed.pending {
            // A key evicted since the batch was observed is not taught (its slot's generation moved on).
            let Some(slot) = self.slots.get_mut(p.slot).filter(|s| s.generation == p.generation) else { continue };
            let state = &mut slot.state;
            if p.distinct > 0 {
                let fraction = if state.known.count < capacity { p.fresh.len() as f64 / p.distinct as f64 } else { 1.0 };
                state.novelty += if state.batches >= MIN_BATCHES {
                    ewma * (fraction - state.novelty)
                } else {
                    (fraction - state.novelty) / (state.batches + 1) as f64
                };
            }
            state.batches += 1;
            for h in &p.fresh {
                if state.known.count >= capacity {
                    break;
                }
                state.known.add(*h);
            }
        }
    }

    /// The current window's distinct-value estimate of a key, if it is held.
    fn estimate(&self, tenant: &str, service: &str, key: &str) -> Option<f64> {
        self.find(tenant, service, key).and_then(|at| self.slots.get(at)).map(|slot| slot.state.current.estimate())
    }

    /// Each attribute key's reference (distinct values of its last clean window) for one service,
    /// least recently used first. Only the reference travels in a snapshot: the sketches hold
    /// `hash()` values, which are keyed per process.
    fn export_service<'py>(&self, py: Python<'py>, tenant: &str, service: &str) -> PyResult<Bound<'py, PyDict>> {
        let mut held: Vec<&Slot> = self
            .index
            .get(tenant)
            .and_then(|services| services.get(service))
            .map(|keys| keys.values().filter_map(|at| self.slots.get(*at)).collect())
            .unwrap_or_default();
        held.sort_by_key(|slot| slot.used);
        let out = PyDict::new(py);
        for slot in held.into_iter().filter(|slot| slot.state.reference >= 0.0) {
            out.set_item(&slot.key, slot.state.reference)?;
        }
        Ok(out)
    }

    /// Restore references for keys not held here. Each restored key starts a new window and learns
    /// its usual novelty again (8 clean batches) before it is judged, with the cap of its old reference.
    fn import_service(&mut self, tenant: &str, service: &str, data: &Bound<'_, PyDict>, now_s: f64) -> PyResult<()> {
        for (key, reference) in data.iter() {
            let key = key.str()?;
            let key = key.to_str()?;
            if self.find(tenant, service, key).is_some() {
                continue;
            }
            let reference: f64 = reference.extract()?;
            self.insert(tenant, service, key, KeyState::new(now_s, reference));
        }
        Ok(())
    }
}
