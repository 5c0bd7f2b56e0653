//! Protocol-buffers wire format, read strictly: every read is bounds-checked and anything a
//! canonical encoder (upb, which the Python path re-encodes with) would not have written is an
//! error, so that a batch this reader accepts re-encodes to exactly its own bytes.

/// Why a payload is not taken by the fast path (a short, stable description).
pub type Bad = &'static str;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    pub start: usize,
    pub end: usize,
}

impl Slice {
    pub fn len(self) -> usize {
        self.end - self.start
    }

    pub fn of(self, data: &[u8]) -> &[u8] {
        // Every Slice is made by `Fields` inside its buffer; `get` keeps even a bug from reading out of it.
        data.get(self.start..self.end).unwrap_or(&[])
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Value {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(Slice),
}

#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub number: u32,
    pub value: Value,
    /// The whole field on the wire, tag included (what a subset copies verbatim).
    pub whole: Slice,
}

/// The fields of one message, in wire order.
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8], within: Slice) -> Self {
        let end = within.end.min(buf.len());
        Fields { buf, pos: within.start.min(end), end }
    }

    fn byte(&mut self) -> Result<u8, Bad> {
        if self.pos >= self.end {
            return Err("truncated field");
        }
        let byte = *self.buf.get(self.pos).ok_or("truncated field")?;
        self.pos += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, Bad> {
        let mut value: u64 = 0;
        for i in 0..10u32 {
            let byte = self.byte()?;
            if i == 9 && byte > 1 {
                return Err("varint overflows 64 bits");
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                // A trailing zero byte is a longer encoding than needed: valid, but not canonical.
                if i > 0 && byte == 0 {
                    return Err("non-minimal varint");
                }
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes")
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Bad> {
        let stop = self.pos.checked_add(N).ok_or("truncated fixed-size field")?;
        if stop > self.end {
            return Err("truncated fixed-size field");
        }
        let bytes: [u8; N] = self
            .buf
            .get(self.pos..stop)
            .and_then(|s| s.try_into().ok())
            .ok_or("truncated fixed-size field")?;
        self.pos = stop;
        Ok(bytes)
    }

    fn field(&mut self) -> Result<Field, Bad> {
        let start = self.pos;
        let tag = self.varint()?;
        let number = u32::try_from(tag >> 3).map_err(|_| "field number out of range")?;
        if number == 0 || number > 0x1fff_ffff {
            return Err("field number out of range");
        }
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.fixed::<8>()?)),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
                let begin = self.pos;
                let stop = begin.checked_add(len).ok_or("length out of range")?;
                if stop > self.end {
                    return Err("length runs past its message");
                }
                self.pos = stop;
                Value::Len(Slice { start: begin, end: stop })
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.fixed::<4>()?)),
            _ => return Err("group or invalid wire type"),
        };
        Ok(Field { number, value, whole: Slice { start, end: self.pos } })
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<Field, Bad>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            // Stop after the first error: the rest of the message cannot be framed.
            self.pos = self.end;
        }
        Some(field)
    }
}

/// Canonical field order: ascending numbers, a repeated field's elements next to each other.
/// (protobuf merges or keeps the last of a repeated singular field; such input is not taken.)
pub struct Order {
    last: u32,
}

impl Order {
    pub fn new() -> Self {
        Order { last: 0 }
    }

    pub fn check(&mut self, number: u32, repeated: bool) -> Result<(), Bad> {
        if number > self.last || (repeated && number == self.last) {
            self.last = number;
            Ok(())
        } else if number == self.last {
            Err("a singular field appears twice")
        } else {
            Err("fields out of canonical order")
        }
    }
}

pub fn len_of(value: Value) -> Result<Slice, Bad> {
    match value {
        Value::Len(slice) => Ok(slice),
        _ => Err("wrong wire type for a length-delimited field"),
    }
}

/// A proto3 string or bytes field without presence: canonical encoders leave an empty one out.
pub fn implicit_len(value: Value) -> Result<Slice, Bad> {
    let slice = len_of(value)?;
    if slice.len() == 0 {
        return Err("empty implicit field on the wire");
    }
    Ok(slice)
}

pub fn utf8(data: &[u8], slice: Slice) -> Result<(), Bad> {
    std::str::from_utf8(slice.of(data)).map(|_| ()).map_err(|_| "invalid UTF-8 in a string")
}

pub fn implicit_fixed64(value: Value) -> Result<u64, Bad> {
    match value {
        Value::Fixed64(0) => Err("zero implicit field on the wire"),
        Value::Fixed64(v) => Ok(v),
        _ => Err("wrong wire type for a fixed64 field"),
    }
}

pub fn implicit_fixed32(value: Value) -> Result<u32, Bad> {
    match value {
        Value::Fixed32(0) => Err("zero implicit field on the wire"),
        Value::Fixed32(v) => Ok(v),
        _ => Err("wrong wire type for a fixed32 field"),
    }
}

pub fn implicit_uint32(value: Value) -> Result<(), Bad> {
    match value {
        Value::Varint(0) => Err("zero implicit field on the wire"),
        // A larger value decodes truncated and so would not re-encode as itself.
        Value::Varint(v) if v > u64::from(u32::MAX) => Err("uint32 out of range"),
        Value::Varint(_) => Ok(()),
        _ => Err("wrong wire type for a varint field"),
    }
}

pub fn implicit_enum(value: Value) -> Result<(), Bad> {
    match value {
        Value::Varint(0) => Err("zero implicit field on the wire"),
        // int32 on the wire is sign-extended to 64 bits; anything else is truncated on decoding.
        Value::Varint(v) if v != (v as u32 as i32 as i64 as u64) => Err("enum out of int32 range"),
        Value::Varint(_) => Ok(()),
        _ => Err("wrong wire type for a varint field"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(buf: &[u8]) -> Vec<Result<Field, Bad>> {
        Fields::new(buf, Slice { start: 0, end: buf.len() }).collect()
    }

    #[test]
    fn reads_each_wire_type() {
        let buf = [0x08, 0x96, 0x01, 0x11, 1, 0, 0, 0, 0, 0, 0, 0, 0x1a, 0x02, b'h', b'i', 0x25, 2, 0, 0, 0];
        let fields: Vec<Field> = all(&buf).into_iter().map(Result::unwrap).collect();
        assert!(matches!(fields[0].value, Value::Varint(150)));
        assert!(matches!(fields[1].value, Value::Fixed64(1)));
        assert!(matches!(fields[2].value, Value::Len(Slice { start: 14, end: 16 })));
        assert!(matches!(fields[3].value, Value::Fixed32(2)));
        assert_eq!(fields[2].whole, Slice { start: 12, end: 16 });
    }

    #[test]
    fn refuses_what_is_not_canonical_or_in_bounds() {
        for bad in [
            &[0x08, 0x80, 0x00][..],                 // non-minimal varint
            &[0x0a, 0x05, 1, 2],                     // length past the end
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            &[0x0b],                                 // group start
            &[0x00, 0x01],                           // field 0
            &[0x11, 1, 2, 3],                        // truncated fixed64
            &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
        ] {
            assert!(all(bad).iter().any(Result::is_err), "{bad:?}");
        }
    }

    #[test]
    fn order_allows_repeats_only_for_repeated_fields() {
        let mut order = Order::new();
        assert!(order.check(1, true).is_ok());
        assert!(order.check(1, true).is_ok());
        assert!(order.check(2, false).is_ok());
        assert!(order.check(2, false).is_err());
        assert!(order.check(1, true).is_err());
    }
}
