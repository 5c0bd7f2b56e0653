//! `rampart_native`: the stream stages' clean-batch fast path (see docs/stages.md, "Fast path").
//!
//! `scan_traces(payload)` parses an OTLP trace request once; the Python processors then ask the
//! scan what they need (`processors/fastpath.py`). Nothing here decides an outcome: a scan only
//! answers questions, and any payload it does not fully understand is `clean == False`, which
//! sends the batch down the Python path.
//!
//! The forgery stage reads its per-batch summary from a scan too (`forgery_summary`, src/forgery.rs),
//! and keeps its attribute-value cardinality here (`CardinalityTracker`, src/cardinality.rs).

mod cardinality;
mod forgery;
mod screen;
mod split;
mod trace;
mod wire;

use std::collections::HashSet;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::forgery::{ForgerySummary, Settings};
use crate::trace::{parse, Index};
use crate::wire::Slice;

/// One parsed trace request. Every query raises ValueError unless `clean`.
#[pyclass(frozen, module = "rampart_native")]
struct TraceScan {
    data: Vec<u8>,
    index: Result<Index, &'static str>,
}

impl TraceScan {
    fn index(&self) -> PyResult<&Index> {
        self.index.as_ref().map_err(|reason| PyValueError::new_err(format!("not a clean batch: {reason}")))
    }

    fn str_of(&self, slice: Slice) -> &str {
        // Every string slice was checked as UTF-8 by the parse.
        std::str::from_utf8(slice.of(&self.data)).unwrap_or("")
    }
}

#[pymethods]
impl TraceScan {
    #[getter]
    fn clean(&self) -> bool {
        self.index.is_ok()
    }

    /// Why the batch is not clean ("" if it is).
    #[getter]
    fn reason(&self) -> &'static str {
        self.index.as_ref().err().copied().unwrap_or("")
    }

    #[getter]
    fn spans(&self) -> PyResult<usize> {
        Ok(self.index()?.spans.len())
    }

    /// Resources, scopes and spans together (what the chain's entry limit counts).
    #[getter]
    fn entries(&self) -> PyResult<usize> {
        let index = self.index()?;
        Ok(index.resources.len() + index.scopes.len() + index.spans.len())
    }

    /// Whether every span, event, link, resource and scope passes validate's limits; the
    /// timestamps must lie in `[low, high]`. (Trace states are checked in Python: `tracestates`.)
    #[allow(clippy::too_many_arguments)]
    fn validate(&self, max_attributes: usize, max_events: usize, max_links: usize, max_name_bytes: usize,
                max_string_bytes: usize, max_value_depth: u32, low: u64, high: u64) -> PyResult<bool> {
        let f = &self.index()?.facts;
        Ok(!f.bad_span_ids
            && !f.bad_link_ids
            && !f.end_before_start
            && f.min_time >= low
            && f.max_time <= high
            && f.max_events <= max_events
            && f.max_links <= max_links
            && f.max_name <= max_name_bytes
            && f.max_key <= max_name_bytes
            && f.max_attributes <= max_attributes
            && f.max_string <= max_string_bytes
            && f.max_bytes <= max_string_bytes
            && (f.max_container_level == 0 || f.max_container_level < max_value_depth))
    }

    /// The distinct trace states of spans and links (empty ones are not on the wire).
    fn tracestates(&self) -> PyResult<Vec<&str>> {
        let index = self.index()?;
        let mut seen = HashSet::new();
        Ok(index.tracestates.iter().map(|s| self.str_of(*s)).filter(|s| seen.insert(*s)).collect())
    }

    /// For each resource attribute whose key is in `keys`: its string value, or None if it is not a string.
    fn claims(&self, keys: Vec<String>) -> PyResult<Vec<Option<&str>>> {
        let index = self.index()?;
        Ok(index
            .claims
            .iter()
            .filter(|c| keys.iter().any(|k| k.as_bytes() == c.key.of(&self.data)))
            .map(|c| c.string.map(|s| self.str_of(s)))
            .collect())
    }

    /// The distinct non-empty strings scrub would scan (attribute string values of resources,
    /// spans, events and links, nested ones included; span and event names), grouped by the key
    /// they sit under: first every key not in `keyed` (and names), then one list per `keyed` key.
    fn texts(&self, keyed: Vec<String>) -> PyResult<Vec<Vec<&str>>> {
        let index = self.index()?;
        let mut groups: Vec<Vec<&str>> = vec![Vec::new(); keyed.len() + 1];
        let mut seen: HashSet<(usize, &[u8])> = HashSet::new();
        for text in &index.texts {
            let key = text.key.map(|k| k.of(&self.data)).unwrap_or(b"");
            let group = keyed.iter().position(|k| k.as_bytes() == key).map_or(0, |i| i + 1);
            if seen.insert((group, text.text.of(&self.data))) {
                if let Some(list) = groups.get_mut(group) {
                    list.push(self.str_of(text.text));
                }
            }
        }
        Ok(groups)
    }

    /// The distinct attribute keys scrub's sensitive-key test looks at (nested ones included).
    fn attribute_keys(&self) -> PyResult<Vec<&str>> {
        let index = self.index()?;
        let mut seen = HashSet::new();
        Ok(index.keys.iter().map(|k| self.str_of(*k)).filter(|k| seen.insert(*k)).collect())
    }

    /// Each resource's `service.name` (its first, if a string; else ""), distinct, in order: the
    /// keys of `tenant_service` keying.
    fn services(&self) -> PyResult<Vec<&str>> {
        let index = self.index()?;
        let mut seen = HashSet::new();
        let mut services = Vec::new();
        for resource in &index.resources {
            let name = forgery::service_name(&self.data, resource).map_err(PyValueError::new_err)?;
            if seen.insert(name) {
                services.push(std::str::from_utf8(name).unwrap_or(""));
            }
        }
        Ok(services)
    }

    /// Whether any resource attribute's key starts with `prefix`.
    fn has_resource_key_prefix(&self, prefix: &str) -> PyResult<bool> {
        let index = self.index()?;
        Ok(index.claims.iter().any(|c| c.key.of(&self.data).starts_with(prefix.as_bytes())))
    }

    /// The forgery stage's summary of the batch (src/forgery.rs; processors/forgery/processor.py).
    #[allow(clippy::too_many_arguments)]
    fn forgery_summary(&self, py: Python<'_>, now_ns: i128, lowest_ns: i128, highest_ns: i128, replay_every: u64,
                       lineage_every: i64, min_duration_ns: i128, max_duration_ns: i128, min_bucket: i64,
                       max_bucket: i64, inv_log_gamma: f64) -> PyResult<ForgerySummary> {
        let settings = Settings { now_ns, lowest_ns, highest_ns, replay_every, lineage_every, min_duration_ns,
                                  max_duration_ns, min_bucket, max_bucket, inv_log_gamma };
        forgery::summarize(py, &self.data, self.index()?, &settings)
    }

    /// `prefix + trace_id + span_id` for every span, in order (dedup's item keys).
    fn dedup_keys<'py>(&self, py: Python<'py>, prefix: &[u8]) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let index = self.index()?;
        let mut key = Vec::with_capacity(prefix.len() + 24);
        Ok(index
            .spans
            .iter()
            .map(|span| {
                key.clear();
                key.extend_from_slice(prefix);
                key.extend_from_slice(span.trace_id.of(&self.data));
                key.extend_from_slice(span.span_id.of(&self.data));
                PyBytes::new(py, &key)
            })
            .collect())
    }

    /// The request split by `crc32(trace_id) % partitions`: (partition, payload) in partition
    /// order; the payload is None when every span falls in one partition (the input as it is).
    fn split<'py>(&self, py: Python<'py>, partitions: u32) -> PyResult<Vec<(u32, Option<Bound<'py, PyBytes>>)>> {
        let index = self.index()?;
        if partitions == 0 {
            return Err(PyValueError::new_err("partitions must be at least 1"));
        }
        let parts = split::partitions(&self.data, index, partitions);
        let mut distinct: Vec<u32> = parts.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() == 1 {
            return Ok(distinct.into_iter().map(|p| (p, None)).collect());
        }
        Ok(distinct
            .into_iter()
            .map(|p| (p, Some(PyBytes::new(py, &split::subset(&self.data, index, &parts, p)))))
            .collect())
    }
}

/// Byte needles (scrub's screens), each searched exactly or ignoring ASCII case.
#[pyclass(frozen, module = "rampart_native")]
struct Needles {
    inner: screen::Needles,
}

#[pymethods]
impl Needles {
    #[new]
    fn new(needles: Vec<(Vec<u8>, bool)>) -> Self {
        Needles { inner: screen::Needles::new(&needles) }
    }

    /// For each needle, in order, whether it occurs in `payload`.
    fn found(&self, payload: &[u8]) -> Vec<bool> {
        self.inner.found(payload)
    }
}

/// Eight digits in a row, or four digits, a space or dash and four digits (the card screen).
#[pyfunction]
fn card_screen(payload: &[u8]) -> bool {
    screen::card(payload)
}

/// Parse an OTLP ExportTraceServiceRequest; never raises for bad bytes (they make it not clean).
#[pyfunction]
fn scan_traces(payload: &[u8]) -> TraceScan {
    TraceScan { data: payload.to_vec(), index: parse(payload) }
}

#[pymodule]
fn rampart_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TraceScan>()?;
    m.add_class::<Needles>()?;
    m.add_class::<ForgerySummary>()?;
    m.add_class::<cardinality::CardinalityTracker>()?;
    m.add_class::<cardinality::Observed>()?;
    m.add_function(wrap_pyfunction!(scan_traces, m)?)?;
    m.add_function(wrap_pyfunction!(card_screen, m)?)?;
    Ok(())
}
