//! One pass over an OTLP `ExportTraceServiceRequest` (opentelemetry-proto 1.x) into a flat index:
//! where each resource, scope and span sits, what validate's checks need (as extremes over the
//! batch), the strings scrub would scan and the ids dedup keys on. No allocation per field.
//!
//! The parse accepts only what it fully understands, so that "clean" can promise what the Python
//! path would see: the known fields with their wire types, valid UTF-8, canonical encoding (the
//! decoded message re-encodes to exactly these bytes, so byte screens on any part of it see the
//! same bytes as the Python path's screens), no unknown fields (which the Python path keeps or
//! discards), no field it does not look at (string-table indices, entity refs), no empty
//! resource or scope (which the Python path prunes), AnyValue nesting at most `MAX_LEVEL`.

use crate::wire::{
    implicit_enum, implicit_fixed32, implicit_fixed64, implicit_len, implicit_uint32, len_of, utf8, Bad, Field,
    Fields, Order, Slice, Value,
};

/// Deeper AnyValue nesting than this is left to the Python path (validate's default limit is far below).
const MAX_LEVEL: u32 = 64;

pub struct SpanRef {
    pub whole: Slice,
    pub trace_id: Slice,
    pub span_id: Slice,
}

pub struct ScopeRef {
    pub scope: Option<Slice>,
    pub schema_url: Option<Slice>,
    pub spans: (usize, usize),
}

pub struct ResourceRef {
    pub resource: Option<Slice>,
    pub schema_url: Option<Slice>,
    pub scopes: (usize, usize),
}

/// A resource attribute, for validate's tenant-claim check: its key and, if the value is a
/// string, that string.
pub struct Claim {
    pub key: Slice,
    pub string: Option<Slice>,
}

/// A string scrub would scan, with the attribute key it would scan it under (None: a name).
pub struct Text {
    pub key: Option<Slice>,
    pub text: Slice,
}

/// Extremes over the batch of everything validate checks per item.
#[derive(Default)]
pub struct Facts {
    pub bad_span_ids: bool,
    pub bad_link_ids: bool,
    pub end_before_start: bool,
    pub min_time: u64,
    pub max_time: u64,
    pub max_events: usize,
    pub max_links: usize,
    pub max_name: usize,
    pub max_key: usize,
    pub max_attributes: usize,
    pub max_string: usize,
    pub max_bytes: usize,
    /// Deepest level (1 = an attribute's own value) holding an array or key-value list; 0: none.
    pub max_container_level: u32,
}

#[derive(Default)]
pub struct Index {
    pub resources: Vec<ResourceRef>,
    pub scopes: Vec<ScopeRef>,
    pub spans: Vec<SpanRef>,
    pub claims: Vec<Claim>,
    pub texts: Vec<Text>,
    pub keys: Vec<Slice>,
    pub tracestates: Vec<Slice>,
    pub facts: Facts,
}

/// Where attributes sit decides who looks at them: scrub does not scan scope attributes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    Resource,
    Scope,
    Item,
}

struct Parser<'a> {
    data: &'a [u8],
    index: Index,
}

pub fn parse(data: &[u8]) -> Result<Index, Bad> {
    let mut parser = Parser { data, index: Index::default() };
    parser.index.facts.min_time = u64::MAX;
    let mut order = Order::new();
    for field in Fields::new(data, Slice { start: 0, end: data.len() }) {
        let field = field?;
        match field.number {
            1 => {
                order.check(1, true)?;
                parser.resource_spans(len_of(field.value)?)?;
            }
            _ => return Err("unknown field in the request"),
        }
    }
    Ok(parser.index)
}

impl<'a> Parser<'a> {
    fn fields(&self, within: Slice) -> Fields<'a> {
        Fields::new(self.data, within)
    }

    fn string(&self, value: Value) -> Result<Slice, Bad> {
        let slice = implicit_len(value)?;
        utf8(self.data, slice)?;
        Ok(slice)
    }

    fn resource_spans(&mut self, within: Slice) -> Result<(), Bad> {
        let mut order = Order::new();
        let (mut resource, mut schema_url) = (None, None);
        let first_scope = self.index.scopes.len();
        for field in self.fields(within) {
            let Field { number, value, whole } = field?;
            match number {
                1 => {
                    order.check(1, false)?;
                    self.resource(len_of(value)?)?;
                    resource = Some(whole);
                }
                2 => {
                    order.check(2, true)?;
                    self.scope_spans(len_of(value)?)?;
                }
                3 => {
                    order.check(3, false)?;
                    self.string(value)?;
                    schema_url = Some(whole);
                }
                _ => return Err("unknown field in ResourceSpans"),
            }
        }
        let scopes = (first_scope, self.index.scopes.len());
        if scopes.0 == scopes.1 {
            return Err("a resource without scopes");
        }
        self.index.resources.push(ResourceRef { resource, schema_url, scopes });
        Ok(())
    }

    fn resource(&mut self, within: Slice) -> Result<(), Bad> {
        let mut order = Order::new();
        let mut count = 0usize;
        for field in self.fields(within) {
            let Field { number, value, .. } = field?;
            match number {
                1 => {
                    order.check(1, true)?;
                    count += 1;
                    self.key_value(len_of(value)?, 1, Holder::Resource)?;
                }
                2 => {
                    order.check(2, false)?;
                    implicit_uint32(value)?;
                }
                _ => return Err("unknown or unsupported field in Resource"),
            }
        }
        self.index.facts.max_attributes = self.index.facts.max_attributes.max(count);
        Ok(())
    }

    fn scope_spans(&mut self, within: Slice) -> Result<(), Bad> {
        let mut order = Order::new();
        let (mut scope, mut schema_url) = (None, None);
        let first_span = self.index.spans.len();
        for field in self.fields(within) {
            let Field { number, value, whole } = field?;
            match number {
                1 => {
                    order.check(1, false)?;
                    self.scope(len_of(value)?)?;
                    scope = Some(whole);
                }
                2 => {
                    order.check(2, true)?;
                    self.span(len_of(value)?, whole)?;
                }
                3 => {
                    order.check(3, false)?;
                    self.string(value)?;
                    schema_url = Some(whole);
                }
                _ => return Err("unknown field in ScopeSpans"),
            }
        }
        let spans = (first_span, self.index.spans.len());
        if spans.0 == spans.1 {
            return Err("a scope without spans");
        }
        self.index.scopes.push(ScopeRef { scope, schema_url, spans });
        Ok(())
    }

    fn scope(&mut self, within: Slice) -> Result<(), Bad> {
        let mut order = Order::new();
        let mut count = 0usize;
        for field in self.fields(within) {
            let Field { number, value, .. } = field?;
            match number {
                1 | 2 => {
                    order.check(number, false)?;
                    self.string(value)?;
                }
                3 => {
                    order.check(3, true)?;
                    count += 1;
                    self.key_value(len_of(value)?, 1, Holder::Scope)?;
                }
                4 => {
                    order.check(4, false)?;
                    implicit_uint32(value)?;
                }
                _ => return Err("unknown field in InstrumentationScope"),
            }
        }
        self.index.facts.max_attributes = self.index.facts.max_attributes.max(count);
        Ok(())
    }

    fn span(&mut self, within: Slice, whole: Slice) -> Result<(), Bad> {
        let mut order = Order::new();
        let empty = Slice { start: within.start, end: within.start };
        let (mut trace_id, mut span_id, mut parent) = (empty, empty, empty);
        let (mut start, mut end) = (0u64, 0u64);
        let (mut attributes, mut events, mut links) = (0usize, 0usize, 0usize);
        for field in self.fields(within) {
            let Field { number, value, .. } = field?;
            match number {
                1 | 2 | 4 => {
                    order.check(number, false)?;
                    let id = implicit_len(value)?;
                    match number {
                        1 => trace_id = id,
                        2 => span_id = id,
                        _ => parent = id,
                    }
                }
                3 => {
                    order.check(3, false)?;
                    let state = self.string(value)?;
                    self.index.tracestates.push(state);
                }
                5 => {
                    order.check(5, false)?;
                    let name = self.string(value)?;
                    self.name(name);
                }
                6 => {
                    order.check(6, false)?;
                    implicit_enum(value)?;
                }
                7 => {
                    order.check(7, false)?;
                    start = implicit_fixed64(value)?;
                }
                8 => {
                    order.check(8, false)?;
                    end = implicit_fixed64(value)?;
                }
                9 => {
                    order.check(9, true)?;
                    attributes += 1;
                    self.key_value(len_of(value)?, 1, Holder::Item)?;
                }
                10 | 12 | 14 => {
                    order.check(number, false)?;
                    implicit_uint32(value)?;
                }
                11 => {
                    order.check(11, true)?;
                    events += 1;
                    self.event(len_of(value)?)?;
                }
                13 => {
                    order.check(13, true)?;
                    links += 1;
                    self.link(len_of(value)?)?;
                }
                15 => {
                    order.check(15, false)?;
                    self.status(len_of(value)?)?;
                }
                16 => {
                    order.check(16, false)?;
                    implicit_fixed32(value)?;
                }
                _ => return Err("unknown field in Span"),
            }
        }
        let data = self.data;
        let facts = &mut self.index.facts;
        facts.bad_span_ids |= trace_id.len() != 16
            || trace_id.of(data).iter().all(|b| *b == 0)
            || span_id.len() != 8
            || span_id.of(data).iter().all(|b| *b == 0)
            || (parent.len() != 0 && parent.len() != 8);
        facts.end_before_start |= end < start;
        facts.min_time = facts.min_time.min(start).min(end);
        facts.max_time = facts.max_time.max(start).max(end);
        facts.max_attributes = facts.max_attributes.max(attributes);
        facts.max_events = facts.max_events.max(events);
        facts.max_links = facts.max_links.max(links);
        self.index.spans.push(SpanRef { whole, trace_id, span_id });
        Ok(())
    }

    fn name(&mut self, name: Slice) {
        self.index.facts.max_name = self.index.facts.max_name.max(name.len());
        self.index.texts.push(Text { key: None, text: name });
    }

    fn event(&mut self, within: Slice) -> Result<(), Bad> {
        let mut order = Order::new();
        let (mut time, mut count) = (0u64, 0usize);
        for field in self.fields(within) {
            let Field { number, value, .. } = field?;
            match number {
                1 => {
                    order.check(1, false)?;
                    time = implicit_fixed64(value)?;
                }
                2 => {
                    order.check(2, false)?;
                    let name = self.string(value)?;
                    self.name(name);
                }
                3 => {
                    order.check(3, true)?;
                    count += 1;
                    self.key_value(len_of(value)?, 1, Holder::Item)?;
                }
                4 => {
                    order.check(4, false)?;
                    implicit_uint32(value)?;
                }
                _ => return Err("unknown field in Span.Event"),
            }
        }
        let facts = &mut self.index.facts;
        facts.min_time = facts.min_time.min(time);
        facts.max_time = facts.max_time.max(time);
        facts.max_attributes = facts.max_attributes.max(count);
        Ok(())
    }

    fn link(&mut self, within: Slice) -> Result<(), Bad> {
        let mut order = Order::new();
        let (mut trace_id, mut span_id, mut count) = (0usize, 0usize, 0usize);
        for field in self.fields(within) {
            let Field { number, value, .. } = field?;
            match number {
                1 | 2 => {
                    order.check(number, false)?;
                    let id = implicit_len(value)?.len();
                    if number == 1 {
                        trace_id = id;
                    } else {
                        span_id = id;
                    }
                }
                3 => {
                    order.check(3, false)?;
                    let state = self.string(value)?;
                    self.index.tracestates.push(state);
                }
                4 => {
                    order.check(4, true)?;
                    count += 1;
                    self.key_value(len_of(value)?, 1, Holder::Item)?;
                }
                5 => {
                    order.check(5, false)?;
                    implicit_uint32(value)?;
                }
                6 => {
                    order.check(6, false)?;
                    implicit_fixed32(value)?;
                }
                _ => return Err("unknown field in Span.Link"),
            }
        }
        let facts = &mut self.index.facts;
        facts.bad_link_ids |= trace_id != 16 || span_id != 8;
        facts.max_attributes = facts.max_attributes.max(count);
        Ok(())
    }

    fn status(&mut self, within: Slice) -> Result<(), Bad> {
        let mut order = Order::new();
        for field in self.fields(within) {
            let Field { number, value, .. } = field?;
            match number {
                2 => {
                    order.check(2, false)?;
                    self.string(value)?;
                }
                3 => {
                    order.check(3, false)?;
                    implicit_enum(value)?;
                }
                _ => return Err("unknown field in Status"),
            }
        }
        Ok(())
    }

    /// One KeyValue at `level` (1: an attribute of a resource, scope or item; deeper: in a kvlist).
    fn key_value(&mut self, within: Slice, level: u32, holder: Holder) -> Result<(), Bad> {
        let mut order = Order::new();
        let mut key = Slice { start: within.start, end: within.start };
        let mut value_at = None;
        for field in self.fields(within) {
            let Field { number, value, .. } = field?;
            match number {
                1 => {
                    order.check(1, false)?;
                    key = self.string(value)?;
                }
                2 => {
                    order.check(2, false)?;
                    value_at = Some(len_of(value)?);
                }
                _ => return Err("unknown or unsupported field in KeyValue"),
            }
        }
        if level == 1 {
            self.index.facts.max_key = self.index.facts.max_key.max(key.len());
        }
        if holder != Holder::Scope {
            self.index.keys.push(key);
        }
        let string = match value_at {
            Some(slice) => self.any_value(slice, level, key, holder)?,
            None => None,
        };
        if holder == Holder::Resource && level == 1 {
            self.index.claims.push(Claim { key, string });
        }
        Ok(())
    }

    /// One AnyValue; returns its string if it holds one (an empty string counts: it is set).
    fn any_value(&mut self, within: Slice, level: u32, key: Slice, holder: Holder) -> Result<Option<Slice>, Bad> {
        if level > MAX_LEVEL {
            return Err("values nested too deeply");
        }
        let mut order = Order::new();
        let mut string = None;
        let mut set = false;
        for field in self.fields(within) {
            let Field { number, value, .. } = field?;
            order.check(number, false)?;
            if set {
                return Err("two members of AnyValue's oneof");
            }
            set = true;
            match (number, value) {
                (1, Value::Len(slice)) => {
                    utf8(self.data, slice)?;
                    self.index.facts.max_string = self.index.facts.max_string.max(slice.len());
                    if holder != Holder::Scope && slice.len() > 0 {
                        self.index.texts.push(Text { key: Some(key), text: slice });
                    }
                    string = Some(slice);
                }
                // A bool re-encodes as 0 or 1, so any other value would not be canonical.
                (2, Value::Varint(0 | 1)) | (3, Value::Varint(_)) | (4, Value::Fixed64(_)) => {}
                (5 | 6, Value::Len(slice)) => {
                    let facts = &mut self.index.facts;
                    facts.max_container_level = facts.max_container_level.max(level);
                    self.container(slice, number == 6, level, key, holder)?;
                }
                (7, Value::Len(slice)) => {
                    self.index.facts.max_bytes = self.index.facts.max_bytes.max(slice.len());
                }
                _ => return Err("unknown, unsupported or mistyped field in AnyValue"),
            }
        }
        Ok(string)
    }

    /// An ArrayValue (its values keep the attribute's key, as scrub scans them) or a KeyValueList.
    fn container(&mut self, within: Slice, kvlist: bool, level: u32, key: Slice, holder: Holder) -> Result<(), Bad> {
        let mut order = Order::new();
        for field in self.fields(within) {
            let Field { number, value, .. } = field?;
            if number != 1 {
                return Err("unknown field in ArrayValue or KeyValueList");
            }
            order.check(1, true)?;
            let inner = len_of(value)?;
            let next = level.checked_add(1).ok_or("values nested too deeply")?;
            if kvlist {
                self.key_value(inner, next, holder)?;
            } else {
                self.any_value(inner, next, key, holder)?;
            }
        }
        Ok(())
    }
}
