//! The per-value loops of the forgery stage's HyperLogLog and Bloom filter
//! (processors/forgery/sketches.py keeps their state and calls these on it): the same integer and
//! floating-point steps as the Python loops they replaced, value by value in the caller's order,
//! so that the state and the estimates come out bit for bit the same.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyFrozenSet};

/// The low 64 bits of each Python int, in iteration order (Python's `value & (2**64 - 1)`).
fn low_bits<'py>(hashes: &Bound<'py, PyAny>) -> PyResult<(Vec<u64>, Vec<Bound<'py, PyAny>>)> {
    let (mut bits, mut objects) = (Vec::new(), Vec::new());
    for item in hashes.try_iter()? {
        let item = item?;
        // SAFETY: a valid object pointer, with the GIL held; for a non-int the call sets an error
        // and returns all ones.
        let value = unsafe { pyo3::ffi::PyLong_AsUnsignedLongLongMask(item.as_ptr()) };
        if value == u64::MAX {
            if let Some(err) = PyErr::take(item.py()) {
                return Err(err);
            }
        }
        bits.push(value);
        objects.push(item);
    }
    Ok((bits, objects))
}

/// 2^-exponent, exactly (Python's `2.0 ** -exponent` for the ranks a register holds).
fn negative_power_of_two(exponent: u8) -> f64 {
    f64::from_bits((1023 - u64::from(exponent)) << 52)
}

fn with_bytes<T>(array: &Bound<'_, PyByteArray>, f: impl FnOnce(&mut [u8]) -> T) -> T {
    // SAFETY: no Python code runs while the slice lives (the hashes were read beforehand), so
    // nothing can resize or read the bytearray meanwhile.
    f(unsafe { array.as_bytes_mut() })
}

/// HyperLogLog.add_hashes: raise the registers; returns the new (sum of 2^-register, empty registers).
#[pyfunction]
pub fn hll_add(registers: &Bound<'_, PyByteArray>, p: u32, hashes: &Bound<'_, PyAny>, inv_sum: f64,
               zeros: i64) -> PyResult<(f64, i64)> {
    if !(1..=16).contains(&p) || registers.len() != 1 << p {
        return Err(PyValueError::new_err("registers do not match p"));
    }
    let (values, _) = low_bits(hashes)?;
    let (mut inv_sum, mut zeros) = (inv_sum, zeros);
    let mask = (1u64 << p) - 1;
    with_bytes(registers, |registers| {
        for h in values {
            let rank = (64 - p + 1 - (64 - (h >> p).leading_zeros())) as u8;
            let Some(old) = registers.get_mut((h & mask) as usize) else { continue };
            if rank > *old {
                inv_sum += negative_power_of_two(rank) - negative_power_of_two(*old);
                if *old == 0 {
                    zeros -= 1;
                }
                *old = rank;
            }
        }
    });
    Ok((inv_sum, zeros))
}

/// The probes of a Bloom filter of `m` bits for a hash: (h1 + i * h2) % m for i in 0..k.
fn probes(h: u64, m: u64, k: u32) -> impl Iterator<Item = u64> {
    let (h1, h2) = (h & 0xFFFF_FFFF, ((h >> 32) & 0xFFFF_FFFF) | 1);
    (0..u64::from(k)).map(move |i| (h1 + i * h2) % m)
}

fn bits_ok(bits: &Bound<'_, PyByteArray>, m: u64, k: u32) -> PyResult<()> {
    if m == 0 || bits.len() as u64 * 8 < m || k > 64 {
        return Err(PyValueError::new_err("filter bits do not match m"));
    }
    Ok(())
}

/// BloomFilter.missing: the hashes not (probably) held, as a frozenset filled in the given order.
#[pyfunction]
pub fn bloom_missing<'py>(bits: &Bound<'py, PyByteArray>, m: u64, k: u32,
                          hashes: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyFrozenSet>> {
    bits_ok(bits, m, k)?;
    let (values, objects) = low_bits(hashes)?;
    let held = with_bytes(bits, |bits| {
        values
            .iter()
            .map(|h| probes(*h, m, k).all(|q| bits.get((q >> 3) as usize).is_some_and(|b| b & (1 << (q & 7)) != 0)))
            .collect::<Vec<bool>>()
    });
    PyFrozenSet::new(bits.py(), objects.iter().zip(held).filter(|(_, held)| !held).map(|(h, _)| h))
}

/// BloomFilter.add_hashes: set each hash's bits, in order, while fewer than `limit` were added;
/// returns the new count.
#[pyfunction]
pub fn bloom_add(bits: &Bound<'_, PyByteArray>, m: u64, k: u32, hashes: &Bound<'_, PyAny>, count: i64,
                 limit: i64) -> PyResult<i64> {
    bits_ok(bits, m, k)?;
    let (values, _) = low_bits(hashes)?;
    let mut count = count;
    with_bytes(bits, |bits| {
        for h in values {
            if count >= limit {
                break;
            }
            for q in probes(h, m, k) {
                if let Some(byte) = bits.get_mut((q >> 3) as usize) {
                    *byte |= 1 << (q & 7);
                }
            }
            count += 1;
        }
    });
    Ok(count)
}
