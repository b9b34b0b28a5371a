//! The compact blob formats: ziplist, listpack, intset and zipmap.
//!
//! Small lists, sets, sorted sets and hashes live in memory as one contiguous buffer instead of
//! a pointer structure, and an RDB file stores that buffer as-is, inside an RDB string (which may
//! be LZF-compressed: decompress first, see
//! [`Reader::read_blob`](super::primitives::Reader::read_blob)). Each format is self-delimiting
//! and self-checking enough to validate without trusting any count in it.
//!
//! | format | used by (RDB type ids) | era |
//! |---|---|---|
//! | zipmap ([`zipmap`]) | 9 hash | Redis 2.4 |
//! | intset ([`intset`]) | 11 set of integers | Redis 2.4 – today |
//! | ziplist ([`ziplist`]) | 10 list, 12 zset, 13 hash, 14 quicklist nodes | Redis 2.4 – 6.2 |
//! | listpack ([`listpack`]) | 16 hash, 17 zset, 18 quicklist nodes, 20 set, 25 hash with TTLs, stream nodes | Redis 5.0 (streams), 7.0+ |
//!
//! Ziplists and listpacks hold a sequence of [`Entry`]s, each a string or an integer (a string
//! that is the canonical decimal text of an integer is stored as the integer). A zset stores
//! member, score, member, score…; a hash field, value, field, value…
//!
//! Offsets in errors count from the start of the blob.
//!
//! Each format has a file of its own, whose doc comment draws its layout.

use std::borrow::Cow;

use super::error::{RdbError, Result};
use super::primitives::parse_i64;

pub mod intset;
pub mod listpack;
pub mod ziplist;
pub mod zipmap;
pub use intset::*;
pub use listpack::*;
pub use ziplist::*;
pub use zipmap::*;

#[cfg(test)]
mod tests;

/// One element of a ziplist or listpack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry<'a> {
    /// A string, borrowed from the blob.
    Bytes(&'a [u8]),
    /// An integer (whose text form is the element's value).
    Int(i64),
}

impl<'a> Entry<'a> {
    /// The element's bytes (the decimal text, for an integer).
    pub fn to_bytes(&self) -> Cow<'a, [u8]> {
        match *self {
            Entry::Bytes(b) => Cow::Borrowed(b),
            Entry::Int(i) => Cow::Owned(i.to_string().into_bytes()),
        }
    }

    /// The element as an integer: an integer entry, or a string in canonical integer form.
    pub fn as_int(&self) -> Option<i64> {
        match *self {
            Entry::Bytes(b) => parse_i64(b),
            Entry::Int(i) => Some(i),
        }
    }
}

impl<'a> From<&'a [u8]> for Entry<'a> {
    fn from(b: &'a [u8]) -> Self {
        Entry::Bytes(b)
    }
}

impl From<i64> for Entry<'_> {
    fn from(i: i64) -> Self {
        Entry::Int(i)
    }
}

/// The "count unknown" value of the 16-bit element counts.
const COUNT_UNKNOWN: u16 = u16::MAX;
const END: u8 = 0xFF;

fn invalid(at: usize, context: &'static str, reason: impl Into<Cow<'static, str>>) -> RdbError {
    RdbError::invalid(at as u64, context, reason)
}

/// `blob[at..at + n]`, provided it ends at or before `limit`.
fn take<'a>(
    blob: &'a [u8],
    at: usize,
    n: usize,
    limit: usize,
    context: &'static str,
) -> Result<&'a [u8]> {
    match at.checked_add(n) {
        Some(end) if end <= limit => Ok(&blob[at..end]),
        _ => Err(invalid(
            at,
            context,
            format!(
                "needs {n} byte(s), but only {} are left before the end marker",
                limit.saturating_sub(at)
            ),
        )),
    }
}

fn le_int(bytes: &[u8]) -> i64 {
    // Sign-extend a little-endian two's complement integer of 1..=8 bytes.
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    let shift = 64 - 8 * bytes.len() as u32;
    (i64::from_le_bytes(buf) << shift) >> shift
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Checks a u16-count header against the entries actually found.
fn check_count(declared: u16, found: usize, at: usize, context: &'static str) -> Result<()> {
    if declared != COUNT_UNKNOWN && declared as usize != found {
        return Err(invalid(
            at,
            context,
            format!("header says {declared} entries, found {found}"),
        ));
    }
    Ok(())
}
