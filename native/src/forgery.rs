//! The forgery stage's per-batch summary of a trace request (processors/forgery/processor.py,
//! `_extract`): one pass over the wire bytes instead of one protobuf object per attribute.
//!
//! The summary is made of the very Python objects the Python pass builds (dicts and sets filled in
//! the same order, digests from `hash()` of equal tuples), because the forgery rules depend on more
//! than their contents: HyperLogLog sums follow set iteration order (src/cardinality.rs), and the
//! state is keyed by the process's `hash()`. Only requests `trace::parse` calls clean are
//! summarised: they decode to exactly what is read here, and every sub-message's bytes are what
//! protobuf serialises for it.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PySet, PyString, PyTuple};

use crate::trace::{Index, ResourceRef};
use crate::wire::{Bad, Field, Fields, Slice, Value};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const SERVICE_NAME: &[u8] = b"service.name";
const PEER_SERVICE: &[u8] = b"peer.service";
const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const PRODUCER: i64 = 4;
const CONSUMER: i64 = 5;
const STATUS_ERROR: i64 = 2;
/// More latency buckets than this means settings no sketch uses; such a call is refused.
const MAX_BUCKETS: i64 = 1 << 16;

/// The pass's maps are keyed by attribute keys and values a client chose, several lookups per span:
/// SipHash was a sixth of the pass. This is a folded multiply (as in foldhash or aHash's fallback)
/// with per-call random seeds, which a client cannot aim collisions at without seeing its output.
#[derive(Clone, Copy)]
struct Seeds(u64, u64);

impl Seeds {
    fn new() -> Self {
        let state = RandomState::new();
        Seeds(state.hash_one(0u64) | 1, state.hash_one(1u64))
    }
}

struct Folded {
    state: u64,
    multiplier: u64,
}

fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for Folded {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // A marker keeps "ab" and "ab\0" apart even without the slice's length prefix.
            self.write_u64(u64::from_le_bytes(word) ^ (rest.len() as u64) << 59);
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.state = fold(self.state ^ word, self.multiplier);
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        fold(self.state, self.multiplier ^ 0x9E37_79B9_7F4A_7C15)
    }
}

impl BuildHasher for Seeds {
    type Hasher = Folded;

    fn build_hasher(&self) -> Folded {
        Folded { state: self.1, multiplier: self.0 }
    }
}

type Map<K, V> = HashMap<K, V, Seeds>;

/// What the Python pass takes from its configuration and the sketches module, passed in so that
/// both passes read one definition.
pub struct Settings {
    pub now_ns: i128,
    pub lowest_ns: i128,
    pub highest_ns: i128,
    pub replay_every: u64,
    pub lineage_every: i64,
    pub min_duration_ns: i128,
    pub max_duration_ns: i128,
    pub min_bucket: i64,
    pub max_bucket: i64,
    pub inv_log_gamma: f64,
}

/// The summary, as `_View` holds it (see processor.py).
#[pyclass(frozen, get_all, module = "rampart_native")]
pub struct ForgerySummary {
    /// (service, span name, {bucket: spans}, {bucket: error spans}, spans, error spans), in order of appearance.
    ops: Py<PyList>,
    /// service -> attribute key -> the hashes of its distinct non-empty string values.
    value_hashes: Py<PyDict>,
    digests: Py<PyList>,
    lags_ns: Py<PyList>,
    durations: Py<PyList>,
    span_ids: Py<PyList>,
    parents: Py<PyList>,
    server_parented: Py<PyDict>,
    calls: Py<PyDict>,
    outside: usize,
    spans: usize,
}

/// Spans per latency bucket in the order the buckets first appear (a Python dict's order).
struct Buckets {
    order: Vec<(i64, i64)>,
    /// Position in `order` of each bucket from the lowest, or u32::MAX.
    at: Vec<u32>,
}

impl Buckets {
    fn new(width: usize) -> Self {
        Buckets { order: Vec::new(), at: vec![u32::MAX; width] }
    }

    fn add(&mut self, offset: usize, bucket: i64) -> PyResult<()> {
        // A duration strictly between the extremes maps inside [min_bucket, max_bucket].
        let slot = self.at.get_mut(offset).ok_or_else(|| PyValueError::new_err("latency bucket out of range"))?;
        match self.order.get_mut(*slot as usize) {
            Some(entry) => entry.1 += 1,
            None => {
                *slot = u32::try_from(self.order.len()).unwrap_or(u32::MAX);
                self.order.push((bucket, 1));
            }
        }
        Ok(())
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (bucket, n) in &self.order {
            dict.set_item(bucket, n)?;
        }
        Ok(dict)
    }
}

struct Op<'py> {
    service: usize,
    name: Bound<'py, PyString>,
    counts: Buckets,
    errors_by_bucket: Option<Buckets>,
    n: i64,
    errors: i64,
}

struct Service<'a, 'py> {
    name: Bound<'py, PyString>,
    /// Each key's distinct non-empty string values, keys in order of appearance.
    keys: Vec<(Bound<'py, PyString>, Bound<'py, PySet>)>,
    sets: Map<&'a [u8], Bound<'py, PySet>>,
    /// Its place in `server_parented`, once it has one.
    parented_at: Option<usize>,
}

struct KeyValue<'a> {
    key: &'a [u8],
    /// The AnyValue's bytes (empty when the KeyValue has none).
    value: &'a [u8],
    /// Its string, if it holds a non-empty one.
    string: Option<&'a [u8]>,
}

/// The content of a message framed as one length-delimited field.
fn content(data: &[u8], whole: Slice) -> Result<Slice, Bad> {
    match Fields::new(data, whole).next() {
        Some(Ok(Field { value: Value::Len(slice), .. })) => Ok(slice),
        _ => Err("unexpected field framing"),
    }
}

fn key_value(data: &[u8], within: Slice) -> Result<KeyValue<'_>, Bad> {
    let mut kv = KeyValue { key: b"", value: b"", string: None };
    for field in Fields::new(data, within) {
        match field? {
            Field { number: 1, value: Value::Len(key), .. } => kv.key = key.of(data),
            Field { number: 2, value: Value::Len(value), .. } => {
                kv.value = value.of(data);
                if let Some(Ok(Field { number: 1, value: Value::Len(s), .. })) = Fields::new(data, value).next() {
                    kv.string = Some(s.of(data)).filter(|s| !s.is_empty());
                }
            }
            _ => return Err("unexpected field in KeyValue"),
        }
    }
    Ok(kv)
}

fn int32(value: u64) -> i64 {
    // An int32 field on the wire is sign-extended to 64 bits (trace.rs accepts nothing else).
    i64::from(value as u32 as i32)
}

fn int<'py>(py: Python<'py>, v: i128) -> PyResult<Bound<'py, PyAny>> {
    Ok(match i64::try_from(v) {
        Ok(small) => small.into_pyobject(py)?.into_any(),
        Err(_) => v.into_pyobject(py)?.into_any(),
    })
}

fn text<'py>(py: Python<'py>, raw: &[u8]) -> PyResult<Bound<'py, PyString>> {
    // trace::parse checked every string as UTF-8; this only keeps a bug from passing a wrong one.
    let s = std::str::from_utf8(raw).map_err(|_| PyValueError::new_err("invalid UTF-8 in a string"))?;
    Ok(PyString::new(py, s))
}

/// A resource's `service.name`: the first such attribute's string, "" if it has none or it is not a string.
pub fn service_name<'a>(data: &'a [u8], resource: &ResourceRef) -> Result<&'a [u8], Bad> {
    if let Some(whole) = resource.resource {
        for field in Fields::new(data, content(data, whole)?) {
            if let Field { number: 1, value: Value::Len(kv), .. } = field? {
                let kv = key_value(data, kv)?;
                if kv.key == SERVICE_NAME {
                    return Ok(kv.string.unwrap_or(b""));
                }
            }
        }
    }
    Ok(b"")
}

/// One span's fields the summary reads, into buffers reused from span to span.
#[derive(Default)]
struct Span<'a> {
    span_id: &'a [u8],
    parent: &'a [u8],
    name: &'a [u8],
    kind: i64,
    start: u64,
    end: u64,
    attributes: Vec<KeyValue<'a>>,
    events: Vec<Slice>,
    links: usize,
    code: i64,
    message: &'a [u8],
}

impl<'a> Span<'a> {
    fn read(&mut self, data: &'a [u8], within: Slice) -> Result<(), Bad> {
        let (mut attributes, mut events) = (std::mem::take(&mut self.attributes), std::mem::take(&mut self.events));
        attributes.clear();
        events.clear();
        *self = Span { attributes, events, ..Span::default() };
        for field in Fields::new(data, within) {
            let Field { number, value, .. } = field?;
            match (number, value) {
                (2, Value::Len(v)) => self.span_id = v.of(data),
                (4, Value::Len(v)) => self.parent = v.of(data),
                (5, Value::Len(v)) => self.name = v.of(data),
                (6, Value::Varint(v)) => self.kind = int32(v),
                (7, Value::Fixed64(v)) => self.start = v,
                (8, Value::Fixed64(v)) => self.end = v,
                (9, Value::Len(v)) => self.attributes.push(key_value(data, v)?),
                (11, Value::Len(v)) => self.events.push(v),
                (13, _) => self.links += 1,
                (15, Value::Len(status)) => {
                    for field in Fields::new(data, status) {
                        match field? {
                            Field { number: 2, value: Value::Len(m), .. } => self.message = m.of(data),
                            Field { number: 3, value: Value::Varint(c), .. } => self.code = int32(c),
                            _ => return Err("unexpected field in Status"),
                        }
                    }
                }
                (1 | 3 | 10 | 12 | 14 | 16, _) => {}
                _ => return Err("unexpected field in Span"),
            }
        }
        Ok(())
    }
}

/// An event's (name, time relative to the span's start, serialised event), as replay.py digests it.
fn event<'py>(py: Python<'py>, data: &[u8], within: Slice, start: u64) -> PyResult<Bound<'py, PyTuple>> {
    let (mut time, mut name): (u64, &[u8]) = (0, b"");
    for field in Fields::new(data, within) {
        match field.map_err(PyValueError::new_err)? {
            Field { number: 1, value: Value::Fixed64(t), .. } => time = t,
            Field { number: 2, value: Value::Len(n), .. } => name = n.of(data),
            _ => {}
        }
    }
    let relative = int(py, i128::from(time) - i128::from(start))?;
    PyTuple::new(py, [text(py, name)?.into_any(), relative, PyBytes::new(py, within.of(data)).into_any()])
}

/// (service, attribute key, string value).
type ValueKey<'a> = (usize, &'a [u8], &'a [u8]);

/// The pass's state: what it has made of the batch so far, and Python objects made once per batch.
struct Summarizer<'a, 'py> {
    py: Python<'py>,
    seeds: Seeds,
    data: &'a [u8],
    settings: &'a Settings,
    services: Vec<Service<'a, 'py>>,
    service_at: Map<&'a [u8], usize>,
    /// (service, key, non-empty string) -> (key, string): one lookup per attribute, and the pair a
    /// replay digest takes.
    pairs: Map<ValueKey<'a>, Bound<'py, PyTuple>>,
    /// (key, AnyValue bytes) -> (key, bytes) for the other values of sampled spans.
    others: Map<(&'a [u8], &'a [u8]), Bound<'py, PyTuple>>,
    strings: Map<&'a [u8], Bound<'py, PyString>>,
    ops: Vec<Op<'py>>,
    op_at: Map<(usize, &'a [u8]), usize>,
    calls: Vec<(&'a [u8], i64)>,
    call_at: Map<&'a [u8], usize>,
    server_parented: Vec<(usize, i64)>,
    digests: Bound<'py, PyList>,
    lags: Bound<'py, PyList>,
    durations: Bound<'py, PyList>,
    span_ids: Bound<'py, PyList>,
    parents: Bound<'py, PyList>,
    outside: usize,
}

impl<'a, 'py> Summarizer<'a, 'py> {
    fn string(&mut self, raw: &'a [u8]) -> PyResult<Bound<'py, PyString>> {
        if let Some(s) = self.strings.get(raw) {
            return Ok(s.clone());
        }
        let s = text(self.py, raw)?;
        self.strings.insert(raw, s.clone());
        Ok(s)
    }

    fn service(&mut self, name: &'a [u8]) -> PyResult<usize> {
        if let Some(at) = self.service_at.get(name) {
            return Ok(*at);
        }
        let service = Service { name: self.string(name)?, keys: Vec::new(), sets: Map::with_hasher(self.seeds),
                                parented_at: None };
        self.services.push(service);
        self.service_at.insert(name, self.services.len() - 1);
        Ok(self.services.len() - 1)
    }

    /// A non-empty string value under `key` for `service`: recorded, and returned as the (key, value) pair.
    fn value(&mut self, service: usize, key: &'a [u8], value: &'a [u8]) -> PyResult<Bound<'py, PyTuple>> {
        if let Some(pair) = self.pairs.get(&(service, key, value)) {
            return Ok(pair.clone());
        }
        let (key_str, value_str) = (self.string(key)?, self.string(value)?);
        let py = self.py;
        let entry = self.services.get_mut(service).ok_or_else(|| PyValueError::new_err("no such service"))?;
        let set = match entry.sets.get(key) {
            Some(set) => set.clone(),
            None => {
                let set = PySet::empty(py)?;
                entry.keys.push((key_str.clone(), set.clone()));
                entry.sets.insert(key, set.clone());
                set
            }
        };
        set.add(&value_str)?;
        let pair = PyTuple::new(py, [key_str, value_str])?;
        self.pairs.insert((service, key, value), pair.clone());
        Ok(pair)
    }

    fn other(&mut self, key: &'a [u8], value: &'a [u8]) -> PyResult<Bound<'py, PyTuple>> {
        if let Some(pair) = self.others.get(&(key, value)) {
            return Ok(pair.clone());
        }
        let pair = PyTuple::new(self.py, [self.string(key)?.into_any(), PyBytes::new(self.py, value).into_any()])?;
        self.others.insert((key, value), pair.clone());
        Ok(pair)
    }

    fn op(&mut self, service: usize, name: &'a [u8]) -> PyResult<usize> {
        if let Some(at) = self.op_at.get(&(service, name)) {
            return Ok(*at);
        }
        let width = usize::try_from(self.settings.max_bucket - self.settings.min_bucket + 1).unwrap_or(0);
        let name_str = self.string(name)?;
        self.ops.push(Op {
            service,
            name: name_str,
            counts: Buckets::new(width),
            errors_by_bucket: None,
            n: 0,
            errors: 0,
        });
        self.op_at.insert((service, name), self.ops.len() - 1);
        Ok(self.ops.len() - 1)
    }

    fn resource(&mut self, attributes: &[KeyValue<'a>]) -> PyResult<usize> {
        let name = attributes.iter().find(|kv| kv.key == SERVICE_NAME).and_then(|kv| kv.string).unwrap_or(b"");
        let service = self.service(name)?;
        for kv in attributes {
            if let Some(s) = kv.string {
                self.value(service, kv.key, s)?;
            }
        }
        Ok(service)
    }

    /// One span of `service`; true if it is a server span with a parent.
    fn span(&mut self, service: usize, s: &Span<'a>) -> PyResult<bool> {
        let (py, settings) = (self.py, self.settings);
        let duration = i128::from(s.end) - i128::from(s.start);
        let duration_int = int(py, duration)?;
        self.durations.append(&duration_int)?;
        let bucket = if duration <= settings.min_duration_ns {
            settings.min_bucket
        } else if duration >= settings.max_duration_ns {
            settings.max_bucket
        } else {
            // The Python pass's math.ceil(math.log(duration) * INV_LOG_GAMMA): both round the integer
            // to the nearest double and call the C library's log.
            ((duration as f64).ln() * settings.inv_log_gamma).ceil() as i64
        };
        let offset = usize::try_from(bucket - settings.min_bucket).unwrap_or(usize::MAX);
        let op_index = self.op(service, s.name)?;
        let op = self.ops.get_mut(op_index).ok_or_else(|| PyValueError::new_err("no such operation"))?;
        op.counts.add(offset, bucket)?;
        op.n += 1;
        if s.code == STATUS_ERROR {
            op.errors += 1;
            let width = op.counts.at.len();
            op.errors_by_bucket.get_or_insert_with(|| Buckets::new(width)).add(offset, bucket)?;
        }
        let client = s.kind == CLIENT;
        let mut server_parented = false;
        if client || s.kind == PRODUCER {
            let sid = PyBytes::new(py, s.span_id);
            if settings.lineage_every <= 1 || sid.hash()? as i64 % settings.lineage_every == 0 {
                self.span_ids.append(sid)?;
            }
        } else if (s.kind == SERVER || s.kind == CONSUMER) && !s.parent.is_empty() {
            server_parented = s.kind == SERVER;
            let sid = PyBytes::new(py, s.parent);
            if settings.lineage_every <= 1 || sid.hash()? as i64 % settings.lineage_every == 0 {
                let name = self.services.get(service).map(|entry| entry.name.clone());
                self.parents.append((name, sid))?;
            }
        }
        let end = i128::from(s.end);
        self.lags.append(int(py, settings.now_ns - end)?)?;
        if end < settings.lowest_ns || end > settings.highest_ns {
            self.outside += 1;
        }
        // replay.py's `sampled`: the same multiplicative hash of the duration, modulo 2^64.
        let sampled = settings.replay_every <= 1
            || ((duration as u64).wrapping_mul(GOLDEN) >> 40) % settings.replay_every == 0;
        let mut parts = Vec::new();
        for kv in &s.attributes {
            match kv.string {
                Some(value) => {
                    if client && kv.key == PEER_SERVICE {
                        self.call(value);
                    }
                    let pair = self.value(service, kv.key, value)?;
                    if sampled {
                        parts.push(pair);
                    }
                }
                None if sampled => parts.push(self.other(kv.key, kv.value)?),
                None => {}
            }
        }
        if sampled {
            let name = self.ops.get(op_index).map(|op| op.name.clone());
            self.digest(service, name, s, duration_int, parts)?;
        }
        Ok(server_parented)
    }

    /// Server spans with a parent, per service in the order services first had one (a Python dict's).
    fn parented(&mut self, service: usize, n: i64) {
        let Some(entry) = self.services.get_mut(service) else { return };
        match entry.parented_at.and_then(|at| self.server_parented.get_mut(at)) {
            Some(count) => count.1 += n,
            None => {
                entry.parented_at = Some(self.server_parented.len());
                self.server_parented.push((service, n));
            }
        }
    }

    fn call(&mut self, callee: &'a [u8]) {
        match self.call_at.get(callee).and_then(|at| self.calls.get_mut(*at)) {
            Some(entry) => entry.1 += 1,
            None => {
                self.call_at.insert(callee, self.calls.len());
                self.calls.push((callee, 1));
            }
        }
    }

    /// replay.py's `content_digest`: the hash of the same tuple.
    fn digest(&mut self, service: usize, name: Option<Bound<'py, PyString>>, s: &Span<'a>, duration: Bound<'py, PyAny>,
              parts: Vec<Bound<'py, PyTuple>>) -> PyResult<()> {
        let py = self.py;
        let events =
            s.events.iter().map(|e| event(py, self.data, *e, s.start)).collect::<PyResult<Vec<_>>>()?;
        let service = self.services.get(service).map(|entry| entry.name.clone().into_any());
        let digest = PyTuple::new(
            py,
            [
                service.into_pyobject(py)?.into_any(),
                name.into_pyobject(py)?.into_any(),
                s.kind.into_pyobject(py)?.into_any(),
                s.code.into_pyobject(py)?.into_any(),
                self.string(s.message)?.into_any(),
                PyTuple::new(py, parts)?.into_any(),
                PyBool::new(py, !s.parent.is_empty()).to_owned().into_any(),
                duration,
                PyTuple::new(py, events)?.into_any(),
                s.links.into_pyobject(py)?.into_any(),
            ],
        )?;
        self.digests.append(digest.hash()?)
    }

    fn finish(self, spans: usize) -> PyResult<ForgerySummary> {
        let py = self.py;
        let name_of = |service: usize| self.services.get(service).map(|entry| entry.name.clone());
        // The hashes of each key's values, taken in the order of the set of values itself: that
        // order (from the strings' hashes and insertion order) decides the order of the hashes set.
        let values = PyDict::new(py);
        for service in &self.services {
            let keys = PyDict::new(py);
            for (key, strings) in &service.keys {
                let hashes = PySet::empty(py)?;
                for value in strings.iter() {
                    hashes.add(value.hash()?)?;
                }
                keys.set_item(key, hashes)?;
            }
            values.set_item(&service.name, keys)?;
        }
        let ops = PyList::empty(py);
        for op in &self.ops {
            let errors = match &op.errors_by_bucket {
                Some(buckets) => buckets.to_dict(py)?,
                None => PyDict::new(py),
            };
            ops.append((name_of(op.service), &op.name, op.counts.to_dict(py)?, errors, op.n, op.errors))?;
        }
        let server_parented = PyDict::new(py);
        for (service, n) in &self.server_parented {
            server_parented.set_item(name_of(*service), n)?;
        }
        let calls = PyDict::new(py);
        for (callee, n) in &self.calls {
            calls.set_item(text(py, callee)?, n)?;
        }
        Ok(ForgerySummary {
            ops: ops.unbind(),
            value_hashes: values.unbind(),
            digests: self.digests.unbind(),
            lags_ns: self.lags.unbind(),
            durations: self.durations.unbind(),
            span_ids: self.span_ids.unbind(),
            parents: self.parents.unbind(),
            server_parented: server_parented.unbind(),
            calls: calls.unbind(),
            outside: self.outside,
            spans,
        })
    }
}

/// The summary of a request `trace::parse` accepted as `index`.
pub fn summarize(py: Python<'_>, data: &[u8], index: &Index, settings: &Settings) -> PyResult<ForgerySummary> {
    if settings.max_bucket < settings.min_bucket || settings.max_bucket - settings.min_bucket >= MAX_BUCKETS {
        return Err(PyValueError::new_err("latency buckets out of range"));
    }
    let bad = PyValueError::new_err;
    let seeds = Seeds::new();
    let expected_values = index.spans.len().saturating_mul(4).min(1 << 14);
    let mut summarizer = Summarizer {
        py,
        seeds,
        data,
        settings,
        services: Vec::new(),
        service_at: Map::with_hasher(seeds),
        // Sized for the usual distinct values per batch (within reason), so that the maps seldom grow.
        pairs: Map::with_capacity_and_hasher(expected_values, seeds),
        others: Map::with_hasher(seeds),
        strings: Map::with_capacity_and_hasher(expected_values, seeds),
        ops: Vec::new(),
        op_at: Map::with_hasher(seeds),
        calls: Vec::new(),
        call_at: Map::with_hasher(seeds),
        server_parented: Vec::new(),
        digests: PyList::empty(py),
        lags: PyList::empty(py),
        durations: PyList::empty(py),
        span_ids: PyList::empty(py),
        parents: PyList::empty(py),
        outside: 0,
    };
    let mut attributes = Vec::new();
    let mut span = Span::default();
    for resource in &index.resources {
        attributes.clear();
        if let Some(whole) = resource.resource {
            for field in Fields::new(data, content(data, whole).map_err(bad)?) {
                if let Field { number: 1, value: Value::Len(kv), .. } = field.map_err(bad)? {
                    attributes.push(key_value(data, kv).map_err(bad)?);
                }
            }
        }
        let service = summarizer.resource(&attributes)?;
        let mut parented = 0i64;
        for scope in index.scopes.get(resource.scopes.0..resource.scopes.1).unwrap_or(&[]) {
            for span_ref in index.spans.get(scope.spans.0..scope.spans.1).unwrap_or(&[]) {
                span.read(data, content(data, span_ref.whole).map_err(bad)?).map_err(bad)?;
                parented += i64::from(summarizer.span(service, &span)?);
            }
        }
        if parented > 0 {
            summarizer.parented(service, parented);
        }
    }
    summarizer.finish(index.spans.len())
}
