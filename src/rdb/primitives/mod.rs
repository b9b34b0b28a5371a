//! The primitive encodings every part of an RDB file is built from: fixed-width integers,
//! *lengths*, *strings*, doubles and times. [`Reader`] decodes them from a byte slice,
//! [`Writer`] encodes them into a `Vec<u8>`.
//!
//! # Lengths
//!
//! Counts and sizes use a variable-width *length encoding*. The two high bits of the first
//! byte say how long it is:
//!
//! ```text
//! 00xxxxxx                      6-bit value 0..=63                      (1 byte)
//! 01xxxxxx yyyyyyyy             14-bit value, big-endian: x is the high part (2 bytes)
//! 10000000 + 4 bytes            32-bit value, big-endian                (5 bytes)
//! 10000001 + 8 bytes            64-bit value, big-endian, RDB >= 8      (9 bytes)
//! 11xxxxxx                      not a length: a "special" string encoding, x below
//! 10xxxxxx (other)              corrupt
//! ```
//!
//! Writers pick the shortest form; readers accept any (Redis does). Note the **big-endian**
//! multi-byte forms: almost everything else in the format is little-endian.
//!
//! # Strings
//!
//! Keys, values, hash fields, set members, AUX fields, and the blobs of the compact encodings are
//! all *strings*: a length, then that many raw bytes. Where a length's first byte is `11xxxxxx`,
//! the low six bits select a special form instead:
//!
//! ```text
//! 0xC0 + i8                     the decimal text of an integer, stored as 1 byte
//! 0xC1 + i16 LE                 ... 2 bytes
//! 0xC2 + i32 LE                 ... 4 bytes
//! 0xC3 <len clen> <len ulen> <clen bytes>   LZF-compressed (see [`lzf`](super::lzf))
//! ```
//!
//! Redis integer-encodes a string only when it is at most 11 characters and is the canonical
//! decimal form of an integer in the i32 range ("12" yes; "012", "+12", "-0", " 12" no), so
//! decoding the integer back to text gives the original bytes. It compresses only with
//! `rdbcompression yes`, strings over 20 bytes, and savings of at least 4 bytes.
//!
//! # Numbers and times
//!
//! * EXPIRETIME (opcode 253): 4-byte seconds, little-endian ("native" order in old versions,
//!   which was little-endian on every machine that mattered).
//! * EXPIRETIME_MS (252), stream and hash-field times: 8-byte milliseconds, little-endian
//!   (guaranteed since RDB 9; host order before, i.e. little-endian in practice).
//! * Scores of ZSET_2 and module doubles: IEEE-754 binary64, little-endian. Module floats:
//!   binary32, little-endian.
//! * Scores of the old ZSET type (3): a *string double*, 1 length byte then ASCII text
//!   (`%.17g`), with the lengths 253, 254, 255 meaning NaN, +inf, -inf and carrying no text.
//!
//! # Safety against hostile input
//!
//! Every read checks that its bytes are present first and reports [`RdbError::Truncated`]
//! otherwise; nothing is allocated from a length before the bytes it describes were found (a
//! plain string is borrowed from the input, an LZF string's output is bounded by its compressed
//! size). A failed read leaves the reader where it was, so a streaming caller can retry the same
//! item once more bytes have arrived.

use std::borrow::Cow;

use super::error::{RdbError, Result};
use super::lzf;

mod reader;
mod writer;
pub use reader::*;
pub use writer::*;

#[cfg(test)]
mod tests;

/// First byte `0x80`: a 32-bit big-endian length follows.
const LEN_32BIT: u8 = 0x80;
/// First byte `0x81`: a 64-bit big-endian length follows (RDB ≥ 8).
const LEN_64BIT: u8 = 0x81;

/// String-double length bytes that stand for a value without text.
const DOUBLE_NAN: u8 = 253;
const DOUBLE_POS_INF: u8 = 254;
const DOUBLE_NEG_INF: u8 = 255;

/// Redis integer-encodes a string only up to this many characters.
const MAX_INT_STRING_LEN: usize = 11;
/// ... and LZF-compresses only strings longer than this.
const MIN_COMPRESS_LEN: usize = 20;

/// The "special" string encodings, selected by a length byte of the form `11xxxxxx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialEncoding {
    /// `0xC0`: an integer stored as 1 signed byte.
    Int8,
    /// `0xC1`: an integer stored as 2 bytes, little-endian.
    Int16,
    /// `0xC2`: an integer stored as 4 bytes, little-endian.
    Int32,
    /// `0xC3`: an LZF-compressed string.
    Lzf,
}

impl SpecialEncoding {
    /// The byte that announces this encoding.
    pub fn tag(self) -> u8 {
        0xC0 | match self {
            SpecialEncoding::Int8 => 0,
            SpecialEncoding::Int16 => 1,
            SpecialEncoding::Int32 => 2,
            SpecialEncoding::Lzf => 3,
        }
    }
}

/// What a length-encoded prefix announced: a plain length, or a special string encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// A length (or count).
    Plain(u64),
    /// A special string encoding (valid only where a string is expected).
    Special(SpecialEncoding),
}

/// A decoded RDB string.
///
/// Integer-encoded strings are kept as integers (the caller may want the number, and
/// converting it to text allocates); everything else is bytes, borrowed from the input unless it
/// had to be decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdbString<'a> {
    /// Raw bytes (borrowed) or decompressed bytes (owned).
    Bytes(Cow<'a, [u8]>),
    /// An integer-encoded string; its value as text is the decimal form of this number.
    Int(i64),
}

impl<'a> RdbString<'a> {
    /// The string's bytes (the decimal text, for an integer).
    pub fn to_bytes(&self) -> Cow<'_, [u8]> {
        match self {
            RdbString::Bytes(b) => Cow::Borrowed(b.as_ref()),
            RdbString::Int(i) => Cow::Owned(i.to_string().into_bytes()),
        }
    }

    /// The string's bytes, keeping the borrow from the input where there is one.
    pub fn into_bytes(self) -> Cow<'a, [u8]> {
        match self {
            RdbString::Bytes(b) => b,
            RdbString::Int(i) => Cow::Owned(i.to_string().into_bytes()),
        }
    }

    /// The string as an integer, if it is one in canonical decimal form (see [`parse_i64`]).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            RdbString::Bytes(b) => parse_i64(b),
            RdbString::Int(i) => Some(*i),
        }
    }

    /// The length of the string's bytes.
    pub fn len(&self) -> usize {
        match self {
            RdbString::Bytes(b) => b.len(),
            RdbString::Int(i) => decimal_len(*i),
        }
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Number of characters in the decimal form of `i`.
fn decimal_len(i: i64) -> usize {
    let mut n = if i < 0 { 2 } else { 1 };
    let mut v = i.unsigned_abs();
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

/// Parses `s` as an i64 only if it is the canonical decimal form of one: optional `-`, no
/// leading zeros (except "0" itself), no `+`, no spaces, no "-0", no overflow. This is Redis'
/// `string2ll` rule, which decides when a string may be stored as an integer (RDB strings,
/// ziplist and listpack entries), because then the text can be restored byte for byte.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] => return (!negative).then_some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
    }
    if negative {
        if v > i64::MIN.unsigned_abs() {
            return None;
        }
        Some((v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}
