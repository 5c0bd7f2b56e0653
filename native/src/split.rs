//! Splitting a clean request by `crc32(trace_id) % partitions`, byte for byte as the Python path's
//! `subset()` followed by upb's serialisation would: resources and scopes in order of first use,
//! each with its `resource`/`scope` field present (empty if the input had none: `CopyFrom` sets
//! it), its schema URL, and the spans of the group verbatim.

use crate::trace::Index;
use crate::wire::Slice;

const fn crc32_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32: [u32; 256] = crc32_table();

/// CRC-32 (IEEE 802.3), the same as Python's `zlib.crc32`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for byte in data {
        c = CRC32[((c ^ u32::from(*byte)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    put_varint(out, body.len());
    out.extend_from_slice(body);
}

fn put_present(out: &mut Vec<u8>, data: &[u8], field: Option<Slice>) {
    match field {
        Some(whole) => out.extend_from_slice(whole.of(data)),
        None => out.extend_from_slice(&[0x0a, 0x00]),
    }
}

/// The partition of each span, in order.
pub fn partitions(data: &[u8], index: &Index, partitions: u32) -> Vec<u32> {
    index.spans.iter().map(|span| crc32(span.trace_id.of(data)) % partitions).collect()
}

/// The request holding only the spans whose partition is `part`.
pub fn subset(data: &[u8], index: &Index, parts: &[u32], part: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut scope_body = Vec::new();
    let mut resource_body = Vec::new();
    for resource in &index.resources {
        resource_body.clear();
        for scope in index.scopes.get(resource.scopes.0..resource.scopes.1).unwrap_or(&[]) {
            scope_body.clear();
            for i in scope.spans.0..scope.spans.1 {
                if let (Some(span), Some(p)) = (index.spans.get(i), parts.get(i)) {
                    if *p == part {
                        scope_body.extend_from_slice(span.whole.of(data));
                    }
                }
            }
            if scope_body.is_empty() {
                continue;
            }
            let mut body = Vec::with_capacity(scope_body.len() + 64);
            put_present(&mut body, data, scope.scope);
            body.extend_from_slice(&scope_body);
            if let Some(url) = scope.schema_url {
                body.extend_from_slice(url.of(data));
            }
            if resource_body.is_empty() {
                put_present(&mut resource_body, data, resource.resource);
            }
            put_message(&mut resource_body, 0x12, &body);
        }
        if resource_body.is_empty() {
            continue;
        }
        if let Some(url) = resource.schema_url {
            resource_body.extend_from_slice(url.of(data));
        }
        put_message(&mut out, 0x0a, &resource_body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::crc32;

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
