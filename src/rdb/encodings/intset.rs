//! The intset encoding.
//!
//! ```text
//! <encoding: u32 LE = 2, 4 or 8> <length: u32 LE> <length × int of that many bytes, LE>
//! ```
//!
//! The integers are signed, sorted strictly ascending, all stored at the width of the widest
//! (Redis widens an intset when a wider value arrives and never narrows it). The blob size is
//! exactly `8 + length × encoding`.
//!

use super::*;

const IS_CTX: &str = "intset";
const IS_HEADER: usize = 8;

/// A validated view of an intset blob (no copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intset<'a> {
    width: usize,
    data: &'a [u8],
}

impl<'a> Intset<'a> {
    /// Validates `blob`: a known width, a size that matches the length, strictly ascending
    /// values.
    pub fn parse(blob: &'a [u8]) -> Result<Self> {
        if blob.len() < IS_HEADER {
            return Err(invalid(
                0,
                IS_CTX,
                format!("{} byte(s) is too short for an intset", blob.len()),
            ));
        }
        let width = le_u32(blob);
        if !matches!(width, 2 | 4 | 8) {
            return Err(invalid(
                0,
                IS_CTX,
                format!("element width {width} is not 2, 4 or 8"),
            ));
        }
        let width = width as usize;
        let len = le_u32(&blob[4..]) as u64;
        let data = &blob[IS_HEADER..];
        if len.checked_mul(width as u64) != Some(data.len() as u64) {
            return Err(invalid(
                4,
                IS_CTX,
                format!(
                    "{len} elements of {width} bytes do not fill the {} byte(s) present",
                    data.len()
                ),
            ));
        }
        let set = Intset { width, data };
        let mut prev: Option<i64> = None;
        for (i, v) in set.iter().enumerate() {
            if prev.is_some_and(|p| p >= v) {
                return Err(invalid(
                    IS_HEADER + i * width,
                    IS_CTX,
                    format!("element {v} is not above the previous one"),
                ));
            }
            prev = Some(v);
        }
        Ok(set)
    }

    /// Bytes per element: 2, 4 or 8.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.width
    }

    /// True if there are no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The element at `index`.
    pub fn get(&self, index: usize) -> Option<i64> {
        let start = index.checked_mul(self.width)?;
        self.data
            .get(start..start.checked_add(self.width)?)
            .map(le_int)
    }

    /// The elements in ascending order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = i64> + 'a {
        self.data.chunks_exact(self.width).map(le_int)
    }

    /// The elements as a vector.
    pub fn to_vec(&self) -> Vec<i64> {
        self.iter().collect()
    }
}

/// Encodes a set of integers as an intset: sorted, duplicates dropped, at the smallest width
/// that holds every value.
pub fn encode_intset(values: impl IntoIterator<Item = i64>) -> Result<Vec<u8>> {
    let mut values: Vec<i64> = values.into_iter().collect();
    values.sort_unstable();
    values.dedup();
    let len = u32::try_from(values.len())
        .map_err(|_| RdbError::too_large(IS_CTX, values.len() as u64, u32::MAX as u64))?;
    let fits = |lo: i64, hi: i64| {
        values.first().is_none_or(|&v| v >= lo) && values.last().is_none_or(|&v| v <= hi)
    };
    let width: usize = if fits(i16::MIN as i64, i16::MAX as i64) {
        2
    } else if fits(i32::MIN as i64, i32::MAX as i64) {
        4
    } else {
        8
    };
    let mut out = Vec::with_capacity(IS_HEADER + values.len() * width);
    out.extend_from_slice(&(width as u32).to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes()[..width]);
    }
    Ok(out)
}
