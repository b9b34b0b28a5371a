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

/// A cursor over a byte slice that decodes RDB primitives.
///
/// Every method takes a `context` naming what is being read; it appears in errors together
/// with the byte offset. Offsets are `base + position`, where `base` (0 unless given to
/// [`Reader::with_base`]) is where the slice starts in the whole stream. A failed read leaves
/// the position unchanged.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`; offsets in errors count from `buf`'s start.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            base: 0,
        }
    }

    /// A reader at the start of `buf`, which begins at byte `base` of a larger stream.
    pub fn with_base(buf: &'a [u8], base: u64) -> Self {
        Reader { buf, pos: 0, base }
    }

    /// How many bytes have been consumed.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The offset of the next byte in the whole stream (`base + position`).
    pub fn offset(&self) -> u64 {
        self.base.saturating_add(self.pos as u64)
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The bytes not consumed yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// The bytes consumed so far (from the start of the slice).
    pub fn consumed(&self) -> &'a [u8] {
        &self.buf[..self.pos]
    }

    /// A safe capacity for a collection of `count` items that each take at least
    /// `min_item_bytes` of input: `count` capped by what the remaining bytes can hold, so a
    /// corrupt count cannot make the caller allocate more than the input justifies.
    pub fn capacity_hint(&self, count: u64, min_item_bytes: usize) -> usize {
        let fit = self.remaining() / min_item_bytes.max(1);
        usize::try_from(count).map_or(fit, |c| c.min(fit))
    }

    fn truncated(&self, context: &'static str, needed: usize) -> RdbError {
        RdbError::truncated(
            self.offset(),
            context,
            needed as u64,
            self.remaining() as u64,
        )
    }

    /// An [`RdbError::Invalid`] at the current offset (for callers building on this reader).
    pub fn invalid(&self, context: &'static str, reason: impl Into<Cow<'static, str>>) -> RdbError {
        RdbError::invalid(self.offset(), context, reason)
    }

    /// The next byte, without consuming it.
    pub fn peek_u8(&self, context: &'static str) -> Result<u8> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.truncated(context, 1))
    }

    /// Consumes `n` bytes and borrows them.
    pub fn read_bytes(&mut self, n: usize, context: &'static str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.truncated(context, n));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    /// Consumes `n` bytes, given as a u64 (a length read from the input).
    pub fn read_bytes_u64(&mut self, n: u64, context: &'static str) -> Result<&'a [u8]> {
        match usize::try_from(n) {
            Ok(n) => self.read_bytes(n, context),
            Err(_) => Err(RdbError::truncated(
                self.offset(),
                context,
                n,
                self.remaining() as u64,
            )),
        }
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize, context: &'static str) -> Result<()> {
        self.read_bytes(n, context).map(drop)
    }

    /// Consumes exactly `N` bytes into an array.
    pub fn read_array<const N: usize>(&mut self, context: &'static str) -> Result<[u8; N]> {
        let bytes = self.read_bytes(N, context)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// One byte.
    pub fn read_u8(&mut self, context: &'static str) -> Result<u8> {
        let b = self.peek_u8(context)?;
        self.pos += 1;
        Ok(b)
    }

    /// u16, little-endian.
    pub fn read_u16_le(&mut self, context: &'static str) -> Result<u16> {
        self.read_array(context).map(u16::from_le_bytes)
    }

    /// u32, little-endian.
    pub fn read_u32_le(&mut self, context: &'static str) -> Result<u32> {
        self.read_array(context).map(u32::from_le_bytes)
    }

    /// u64, little-endian.
    pub fn read_u64_le(&mut self, context: &'static str) -> Result<u64> {
        self.read_array(context).map(u64::from_le_bytes)
    }

    /// i32, little-endian.
    pub fn read_i32_le(&mut self, context: &'static str) -> Result<i32> {
        self.read_array(context).map(i32::from_le_bytes)
    }

    /// i64, little-endian.
    pub fn read_i64_le(&mut self, context: &'static str) -> Result<i64> {
        self.read_array(context).map(i64::from_le_bytes)
    }

    /// u32, big-endian (32-bit lengths, ziplist string lengths).
    pub fn read_u32_be(&mut self, context: &'static str) -> Result<u32> {
        self.read_array(context).map(u32::from_be_bytes)
    }

    /// u64, big-endian (64-bit lengths, stream IDs).
    pub fn read_u64_be(&mut self, context: &'static str) -> Result<u64> {
        self.read_array(context).map(u64::from_be_bytes)
    }

    /// IEEE-754 binary32, little-endian (module floats).
    pub fn read_f32_le(&mut self, context: &'static str) -> Result<f32> {
        self.read_array(context).map(f32::from_le_bytes)
    }

    /// IEEE-754 binary64, little-endian (ZSET_2 scores, module doubles).
    pub fn read_f64_le(&mut self, context: &'static str) -> Result<f64> {
        self.read_array(context).map(f64::from_le_bytes)
    }

    /// An absolute time in milliseconds: 8 bytes, little-endian (EXPIRETIME_MS and friends).
    pub fn read_millis(&mut self, context: &'static str) -> Result<i64> {
        self.read_i64_le(context)
    }

    /// An absolute time in seconds: 4 bytes, little-endian (the old EXPIRETIME opcode).
    pub fn read_seconds(&mut self, context: &'static str) -> Result<i32> {
        self.read_i32_le(context)
    }

    /// A length-encoded prefix: a plain length or a special string encoding.
    pub fn read_length(&mut self, context: &'static str) -> Result<Length> {
        let start = self.offset();
        let mut r = self.clone();
        let first = r.read_u8(context)?;
        let length = match first >> 6 {
            0 => Length::Plain((first & 0x3f) as u64),
            1 => {
                let low = r.read_u8(context)?;
                Length::Plain((((first & 0x3f) as u64) << 8) | low as u64)
            }
            3 => Length::Special(match first & 0x3f {
                0 => SpecialEncoding::Int8,
                1 => SpecialEncoding::Int16,
                2 => SpecialEncoding::Int32,
                3 => SpecialEncoding::Lzf,
                _ => {
                    return Err(RdbError::invalid(
                        start,
                        context,
                        format!("unknown special string encoding {first:#04x}"),
                    ));
                }
            }),
            _ => match first {
                LEN_32BIT => Length::Plain(r.read_u32_be(context)? as u64),
                LEN_64BIT => Length::Plain(r.read_u64_be(context)?),
                _ => {
                    return Err(RdbError::invalid(
                        start,
                        context,
                        format!("unknown length encoding {first:#04x}"),
                    ));
                }
            },
        };
        *self = r;
        Ok(length)
    }

    /// A plain length (a count or a size); a special string encoding here is an error.
    pub fn read_len(&mut self, context: &'static str) -> Result<u64> {
        let start = self.offset();
        let mut r = self.clone();
        match r.read_length(context)? {
            Length::Plain(n) => {
                *self = r;
                Ok(n)
            }
            Length::Special(enc) => Err(RdbError::invalid(
                start,
                context,
                format!(
                    "expected a length, found the string encoding byte {:#04x}",
                    enc.tag()
                ),
            )),
        }
    }

    /// A string in any of its encodings. Plain strings are borrowed from the input, integers are
    /// returned as [`RdbString::Int`], LZF strings are decompressed.
    pub fn read_string(&mut self, context: &'static str) -> Result<RdbString<'a>> {
        let mut r = self.clone();
        let s = match r.read_length(context)? {
            Length::Plain(n) => RdbString::Bytes(Cow::Borrowed(r.read_bytes_u64(n, context)?)),
            Length::Special(SpecialEncoding::Int8) => {
                RdbString::Int(r.read_u8(context)? as i8 as i64)
            }
            Length::Special(SpecialEncoding::Int16) => {
                RdbString::Int(i16::from_le_bytes(r.read_array(context)?) as i64)
            }
            Length::Special(SpecialEncoding::Int32) => {
                RdbString::Int(r.read_i32_le(context)? as i64)
            }
            Length::Special(SpecialEncoding::Lzf) => {
                RdbString::Bytes(Cow::Owned(r.read_lzf_body(context)?))
            }
        };
        *self = r;
        Ok(s)
    }

    /// After the `0xC3` byte: `<len clen> <len ulen> <clen bytes>`, decompressed.
    fn read_lzf_body(&mut self, context: &'static str) -> Result<Vec<u8>> {
        let clen = self.read_len(context)?;
        let ulen_at = self.offset();
        let ulen = self.read_len(context)?;
        let data_at = self.offset();
        let compressed = self.read_bytes_u64(clen, context)?;
        let ulen = usize::try_from(ulen).map_err(|_| {
            RdbError::invalid(
                ulen_at,
                context,
                format!("uncompressed size {ulen} is too large"),
            )
        })?;
        lzf::decompress(compressed, ulen).map_err(|e| e.rebased(data_at))
    }

    /// A string used as a blob (ziplist, listpack, intset, zipmap, stream node key): its bytes,
    /// decompressed if needed. (An integer-encoded blob is turned into its text, as Redis'
    /// "plain" loading does, though no writer produces one.)
    pub fn read_blob(&mut self, context: &'static str) -> Result<Cow<'a, [u8]>> {
        self.read_string(context).map(RdbString::into_bytes)
    }

    /// Skips a string without decompressing it.
    pub fn skip_string(&mut self, context: &'static str) -> Result<()> {
        let mut r = self.clone();
        match r.read_length(context)? {
            Length::Plain(n) => {
                r.read_bytes_u64(n, context)?;
            }
            Length::Special(SpecialEncoding::Int8) => r.skip(1, context)?,
            Length::Special(SpecialEncoding::Int16) => r.skip(2, context)?,
            Length::Special(SpecialEncoding::Int32) => r.skip(4, context)?,
            Length::Special(SpecialEncoding::Lzf) => {
                let clen = r.read_len(context)?;
                r.read_len(context)?;
                r.read_bytes_u64(clen, context)?;
            }
        }
        *self = r;
        Ok(())
    }

    /// A *string double* (old ZSET scores): a length byte, then that much ASCII text; lengths
    /// 253/254/255 are NaN/+inf/-inf without text.
    pub fn read_string_double(&mut self, context: &'static str) -> Result<f64> {
        let mut r = self.clone();
        let len = r.read_u8(context)?;
        let value = match len {
            DOUBLE_NAN => f64::NAN,
            DOUBLE_POS_INF => f64::INFINITY,
            DOUBLE_NEG_INF => f64::NEG_INFINITY,
            _ => {
                let text_at = r.offset();
                let text = r.read_bytes(len as usize, context)?;
                std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.parse::<f64>().ok())
                    .ok_or_else(|| {
                        RdbError::invalid(
                            text_at,
                            context,
                            format!("{:?} is not a number", String::from_utf8_lossy(text)),
                        )
                    })?
            }
        };
        *self = r;
        Ok(value)
    }
}

/// An output buffer that encodes RDB primitives; the counterpart of [`Reader`].
///
/// Writing cannot fail: every value has an encoding. (Which RDB version can *read* it is the
/// caller's concern: 64-bit lengths need RDB ≥ 8.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer::default()
    }

    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// A writer that appends to `buf`.
    pub fn from_vec(buf: Vec<u8>) -> Self {
        Writer { buf }
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// The number of bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The written bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    /// One byte.
    pub fn write_u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Raw bytes, as they are.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// u16, little-endian.
    pub fn write_u16_le(&mut self, v: u16) {
        self.write_bytes(&v.to_le_bytes());
    }

    /// u32, little-endian.
    pub fn write_u32_le(&mut self, v: u32) {
        self.write_bytes(&v.to_le_bytes());
    }

    /// u64, little-endian.
    pub fn write_u64_le(&mut self, v: u64) {
        self.write_bytes(&v.to_le_bytes());
    }

    /// i32, little-endian.
    pub fn write_i32_le(&mut self, v: i32) {
        self.write_bytes(&v.to_le_bytes());
    }

    /// i64, little-endian.
    pub fn write_i64_le(&mut self, v: i64) {
        self.write_bytes(&v.to_le_bytes());
    }

    /// u32, big-endian.
    pub fn write_u32_be(&mut self, v: u32) {
        self.write_bytes(&v.to_be_bytes());
    }

    /// u64, big-endian.
    pub fn write_u64_be(&mut self, v: u64) {
        self.write_bytes(&v.to_be_bytes());
    }

    /// IEEE-754 binary32, little-endian.
    pub fn write_f32_le(&mut self, v: f32) {
        self.write_bytes(&v.to_le_bytes());
    }

    /// IEEE-754 binary64, little-endian.
    pub fn write_f64_le(&mut self, v: f64) {
        self.write_bytes(&v.to_le_bytes());
    }

    /// An absolute time in milliseconds (8 bytes, little-endian).
    pub fn write_millis(&mut self, ms: i64) {
        self.write_i64_le(ms);
    }

    /// An absolute time in seconds (4 bytes, little-endian).
    pub fn write_seconds(&mut self, s: i32) {
        self.write_i32_le(s);
    }

    /// A length in its shortest form (the 9-byte form, used above `u32::MAX`, needs RDB ≥ 8).
    pub fn write_len(&mut self, n: u64) {
        if n < 1 << 6 {
            self.write_u8(n as u8);
        } else if n < 1 << 14 {
            self.write_u8(0x40 | (n >> 8) as u8);
            self.write_u8(n as u8);
        } else if let Ok(n) = u32::try_from(n) {
            self.write_u8(LEN_32BIT);
            self.write_u32_be(n);
        } else {
            self.write_u8(LEN_64BIT);
            self.write_u64_be(n);
        }
    }

    /// A string as Redis writes it with `rdbcompression no`: integer-encoded when it is the
    /// canonical text of an i32-range integer of at most 11 characters, else plain.
    pub fn write_string(&mut self, s: &[u8]) {
        if !self.try_write_int_encoded(s) {
            self.write_raw_string(s);
        }
    }

    /// A string as Redis writes it with `rdbcompression yes`: integer-encoded if possible, else
    /// LZF-compressed when it is over 20 bytes and that saves at least 4, else plain.
    pub fn write_string_compressed(&mut self, s: &[u8]) {
        if self.try_write_int_encoded(s) {
            return;
        }
        if s.len() > MIN_COMPRESS_LEN {
            if let Some(compressed) = lzf::compress_if_smaller(s) {
                self.write_lzf_string(s.len(), &compressed);
                return;
            }
        }
        self.write_raw_string(s);
    }

    /// The LZF form, from data already compressed (`uncompressed_len` is the original size).
    pub fn write_lzf_string(&mut self, uncompressed_len: usize, compressed: &[u8]) {
        self.write_u8(SpecialEncoding::Lzf.tag());
        self.write_len(compressed.len() as u64);
        self.write_len(uncompressed_len as u64);
        self.write_bytes(compressed);
    }

    /// A plain string, never integer-encoded or compressed: length, then the bytes.
    pub fn write_raw_string(&mut self, s: &[u8]) {
        self.write_len(s.len() as u64);
        self.write_bytes(s);
    }

    /// An integer as a string: the special integer form when it fits in an i32, otherwise its
    /// decimal text as a plain string (as Redis' `rdbSaveLongLongAsStringObject`).
    pub fn write_int_string(&mut self, v: i64) {
        if let Ok(v) = i8::try_from(v) {
            self.write_u8(SpecialEncoding::Int8.tag());
            self.write_u8(v as u8);
        } else if let Ok(v) = i16::try_from(v) {
            self.write_u8(SpecialEncoding::Int16.tag());
            self.write_bytes(&v.to_le_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.write_u8(SpecialEncoding::Int32.tag());
            self.write_i32_le(v);
        } else {
            self.write_raw_string(v.to_string().as_bytes());
        }
    }

    fn try_write_int_encoded(&mut self, s: &[u8]) -> bool {
        if s.len() > MAX_INT_STRING_LEN {
            return false;
        }
        match parse_i64(s) {
            Some(v) if i32::try_from(v).is_ok() => {
                self.write_int_string(v);
                true
            }
            _ => false,
        }
    }

    /// A *string double*: NaN and infinities as the length bytes 253/254/255, other values as
    /// text that parses back to exactly the same `f64`.
    pub fn write_string_double(&mut self, v: f64) {
        if v.is_nan() {
            self.write_u8(DOUBLE_NAN);
        } else if v.is_infinite() {
            self.write_u8(if v > 0.0 {
                DOUBLE_POS_INF
            } else {
                DOUBLE_NEG_INF
            });
        } else {
            // Rust's shortest round-trip form; the exponent form keeps huge and tiny values
            // short (the length must fit in one byte below 253). Both are valid `strtod` input.
            let mut text = v.to_string();
            if text.len() > 24 {
                text = format!("{v:e}");
            }
            self.write_u8(text.len() as u8);
            self.write_bytes(text.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut w = Writer::new();
        f(&mut w);
        w.into_inner()
    }

    #[test]
    fn length_forms() {
        assert_eq!(written(|w| w.write_len(0)), [0x00]);
        assert_eq!(written(|w| w.write_len(63)), [0x3f]);
        assert_eq!(written(|w| w.write_len(64)), [0x40, 0x40]);
        assert_eq!(written(|w| w.write_len(700)), [0x42, 0xbc]);
        assert_eq!(written(|w| w.write_len(16383)), [0x7f, 0xff]);
        assert_eq!(
            written(|w| w.write_len(16384)),
            [0x80, 0x00, 0x00, 0x40, 0x00]
        );
        assert_eq!(
            written(|w| w.write_len(u32::MAX as u64)),
            [0x80, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(
            written(|w| w.write_len(1 << 32)),
            [0x81, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        // Non-minimal forms are accepted.
        assert_eq!(Reader::new(&[0x80, 0, 0, 0, 5]).read_len("n").unwrap(), 5);
        assert_eq!(Reader::new(&[0x40, 0x05]).read_len("n").unwrap(), 5);
        assert_eq!(
            Reader::new(&[0x81, 0, 0, 0, 0, 0, 0, 0, 5])
                .read_len("n")
                .unwrap(),
            5
        );
    }

    #[test]
    fn length_errors() {
        let e = Reader::new(&[0x82]).read_len("set size").unwrap_err();
        assert_eq!(
            e,
            RdbError::invalid(0, "set size", "unknown length encoding 0x82")
        );
        let e = Reader::new(&[0xc4]).read_length("key").unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown special string encoding 0xc4")
        );
        let e = Reader::new(&[0xc0, 1]).read_len("count").unwrap_err();
        assert!(e.to_string().contains("expected a length"), "{e}");
        let e = Reader::with_base(&[0x80, 1, 2], 1000)
            .read_len("count")
            .unwrap_err();
        assert_eq!(e, RdbError::truncated(1001, "count", 4, 2));
        let mut r = Reader::new(&[0x41]);
        assert!(r.read_len("count").unwrap_err().is_truncated());
        assert_eq!(r.position(), 0, "a failed read does not move the reader");
        assert!(
            Reader::new(&[])
                .read_len("count")
                .unwrap_err()
                .is_truncated()
        );
    }

    #[test]
    fn string_forms() {
        // Plain.
        let mut r = Reader::new(b"\x03foo\x00");
        assert_eq!(
            r.read_string("s").unwrap(),
            RdbString::Bytes(Cow::Borrowed(b"foo"))
        );
        assert_eq!(r.read_string("s").unwrap().to_bytes().as_ref(), b"");
        assert!(r.is_empty());
        // Integers: 0xc0 i8, 0xc1 i16 LE, 0xc2 i32 LE.
        let mut r = Reader::new(&[
            0xc0, 0x7b, 0xc0, 0xff, 0xc1, 0x39, 0x30, 0xc2, 0x87, 0xd6, 0x12, 0x00,
        ]);
        assert_eq!(r.read_string("s").unwrap(), RdbString::Int(123));
        assert_eq!(r.read_string("s").unwrap().to_bytes().as_ref(), b"-1");
        assert_eq!(r.read_string("s").unwrap(), RdbString::Int(12345));
        assert_eq!(r.read_string("s").unwrap(), RdbString::Int(1_234_567));
        // LZF: "aaaaaaaaaa" = literal 'a' + reference (distance 1, 9 bytes).
        let mut r = Reader::new(&[0xc3, 0x05, 0x0a, 0x00, b'a', 0xe0, 0x00, 0x00]);
        assert_eq!(r.read_blob("s").unwrap().as_ref(), b"aaaaaaaaaa");
        // The writer's choices.
        assert_eq!(written(|w| w.write_string(b"123")), [0xc0, 0x7b]);
        assert_eq!(written(|w| w.write_string(b"-129")), [0xc1, 0x7f, 0xff]);
        assert_eq!(written(|w| w.write_string(b"0123")), b"\x040123");
        assert_eq!(written(|w| w.write_string(b"-0")), b"\x02-0");
        assert_eq!(
            written(|w| w.write_string(b"2147483648")),
            b"\x0a2147483648"
        );
        assert_eq!(
            written(|w| w.write_string(b"-2147483648")),
            [0xc2, 0x00, 0x00, 0x00, 0x80]
        );
        assert_eq!(
            written(|w| w.write_int_string(1 << 40)),
            b"\x0d1099511627776"
        );
        let long = vec![b'x'; 100];
        let c = written(|w| w.write_string_compressed(&long));
        assert_eq!(c[0], 0xc3);
        assert!(c.len() < 20);
        assert_eq!(Reader::new(&c).read_blob("s").unwrap().as_ref(), &long[..]);
        // Short or incompressible strings stay plain.
        assert_eq!(
            written(|w| w.write_string_compressed(b"aaaaaaaaaa")),
            b"\x0aaaaaaaaaaa"
        );
    }

    #[test]
    fn string_errors() {
        let e = Reader::new(b"\x05ab").read_string("key").unwrap_err();
        assert_eq!(e, RdbError::truncated(1, "key", 5, 2));
        let e = Reader::new(&[0xc1, 0x01]).read_string("key").unwrap_err();
        assert!(e.is_truncated());
        // LZF with a declared size that doesn't match, at the right offset.
        let e = Reader::with_base(&[0xc3, 0x02, 0x05, 0x00, b'a'], 10)
            .read_string("value")
            .unwrap_err();
        assert_eq!(e.offset(), Some(15));
        // LZF with an absurd uncompressed size is refused without allocating.
        let e = Reader::new(&[
            0xc3, 0x02, 0x81, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, b'a',
        ])
        .read_string("value")
        .unwrap_err();
        assert!(e.to_string().contains("impossible"), "{e}");
        // A 64-bit string length beyond the input is just truncation.
        let e = Reader::new(&[0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
            .read_string("value")
            .unwrap_err();
        assert!(e.is_truncated());
    }

    #[test]
    fn skip_string_matches_read_string() {
        let mut w = Writer::new();
        w.write_string(b"plain");
        w.write_string(b"-5");
        w.write_string(b"30000");
        w.write_string(b"100000");
        w.write_string_compressed(&[b'z'; 64]);
        let bytes = w.into_inner();
        let (mut a, mut b) = (Reader::new(&bytes), Reader::new(&bytes));
        while !a.is_empty() {
            a.read_string("s").unwrap();
            b.skip_string("s").unwrap();
            assert_eq!(a.position(), b.position());
        }
    }

    #[test]
    fn string_doubles() {
        for (bytes, v) in [
            (&b"\xfd"[..], f64::NAN),
            (b"\xfe", f64::INFINITY),
            (b"\xff", f64::NEG_INFINITY),
            (b"\x031.5", 1.5),
            (b"\x05-1e+3", -1000.0),
            (b"\x130.10000000000000001", 0.1),
        ] {
            let got = Reader::new(bytes).read_string_double("score").unwrap();
            assert!(got == v || (got.is_nan() && v.is_nan()), "{bytes:?}");
        }
        assert_eq!(written(|w| w.write_string_double(1.5)), b"\x031.5");
        assert_eq!(
            written(|w| w.write_string_double(f64::NEG_INFINITY)),
            b"\xff"
        );
        let e = Reader::new(b"\x03abc")
            .read_string_double("score")
            .unwrap_err();
        assert_eq!(e.offset(), Some(1));
        assert!(
            Reader::new(b"\x09")
                .read_string_double("score")
                .unwrap_err()
                .is_truncated()
        );
        let w = written(|w| w.write_string_double(1e300));
        assert!(w.len() < 30, "{w:?}");
    }

    #[test]
    fn fixed_width_and_times() {
        let bytes = written(|w| {
            w.write_u16_le(0x0102);
            w.write_u32_le(0x01020304);
            w.write_u64_le(0x0102030405060708);
            w.write_u32_be(0x01020304);
            w.write_u64_be(7);
            w.write_millis(1_700_000_000_123);
            w.write_seconds(-5);
            w.write_f64_le(2.5);
            w.write_f32_le(-0.5);
        });
        assert_eq!(&bytes[..2], [0x02, 0x01]);
        assert_eq!(&bytes[14..18], [1, 2, 3, 4]);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.read_u16_le("x").unwrap(), 0x0102);
        assert_eq!(r.read_u32_le("x").unwrap(), 0x01020304);
        assert_eq!(r.read_u64_le("x").unwrap(), 0x0102030405060708);
        assert_eq!(r.read_u32_be("x").unwrap(), 0x01020304);
        assert_eq!(r.read_u64_be("x").unwrap(), 7);
        assert_eq!(r.read_millis("x").unwrap(), 1_700_000_000_123);
        assert_eq!(r.read_seconds("x").unwrap(), -5);
        assert_eq!(r.read_f64_le("x").unwrap(), 2.5);
        assert_eq!(r.read_f32_le("x").unwrap(), -0.5);
        assert!(r.is_empty());
        assert_eq!(r.consumed().len(), bytes.len());
        assert!(r.read_u8("x").unwrap_err().is_truncated());
    }

    #[test]
    fn strict_integers() {
        for ok in [
            "0",
            "1",
            "-1",
            "9223372036854775807",
            "-9223372036854775808",
            "120",
        ] {
            assert_eq!(parse_i64(ok.as_bytes()), Some(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "",
            "-",
            "-0",
            "00",
            "01",
            "+1",
            " 1",
            "1 ",
            "1a",
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
        ] {
            assert_eq!(parse_i64(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(RdbString::Int(-120).len(), 4);
        assert_eq!(RdbString::Int(i64::MIN).len(), 20);
        assert!(!RdbString::Int(0).is_empty());
        assert!(RdbString::Bytes(Cow::Borrowed(b"")).is_empty());
        assert_eq!(RdbString::Bytes(Cow::Borrowed(b"42")).as_int(), Some(42));
    }

    #[test]
    fn capacity_hint_is_bounded_by_input() {
        let r = Reader::new(&[0; 10]);
        assert_eq!(r.capacity_hint(u64::MAX, 2), 5);
        assert_eq!(r.capacity_hint(3, 2), 3);
        assert_eq!(r.capacity_hint(100, 0), 10);
    }

    proptest! {
        #[test]
        fn lengths_round_trip(n in any::<u64>(), small in 0u64..20000) {
            for n in [n, small, n >> 32] {
                let bytes = written(|w| w.write_len(n));
                let mut r = Reader::new(&bytes);
                prop_assert_eq!(r.read_len("n").unwrap(), n);
                prop_assert!(r.is_empty());
            }
        }

        #[test]
        fn strings_round_trip(s in proptest::collection::vec(any::<u8>(), 0..400), repeat in 1usize..4) {
            let s = s.repeat(repeat);
            for compressed in [false, true] {
                let bytes = written(|w| if compressed { w.write_string_compressed(&s) } else { w.write_string(&s) });
                let mut r = Reader::new(&bytes);
                let got = r.read_string("s").unwrap().into_bytes();
                prop_assert_eq!(got.as_ref(), &s[..]);
                prop_assert!(r.is_empty());
            }
        }

        #[test]
        fn integer_strings_round_trip(v in any::<i64>(), small in -70000i64..70000) {
            for v in [v, small] {
                let text = v.to_string();
                let bytes = written(|w| w.write_string(text.as_bytes()));
                let s = Reader::new(&bytes).read_string("s").unwrap();
                let got = s.to_bytes();
                prop_assert_eq!(got.as_ref(), text.as_bytes());
                prop_assert_eq!(s.as_int(), Some(v));
                prop_assert_eq!(s.len(), text.len());
                let bytes = written(|w| w.write_int_string(v));
                prop_assert_eq!(Reader::new(&bytes).read_string("s").unwrap().as_int(), Some(v));
                prop_assert_eq!(parse_i64(text.as_bytes()), Some(v));
            }
        }

        #[test]
        fn doubles_round_trip(bits in any::<u64>()) {
            let v = f64::from_bits(bits);
            let bytes = written(|w| w.write_string_double(v));
            let got = Reader::new(&bytes).read_string_double("d").unwrap();
            prop_assert!(got.to_bits() == v.to_bits() || (got.is_nan() && v.is_nan()));
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut r = Reader::new(&data);
            while !r.is_empty() {
                let before = r.position();
                let ok = match data[before] % 4 {
                    0 => r.read_string("s").is_ok(),
                    1 => r.read_len("n").is_ok(),
                    2 => r.read_string_double("d").is_ok(),
                    _ => r.skip_string("s").is_ok(),
                };
                if !ok {
                    prop_assert_eq!(r.position(), before);
                    r.skip(1, "x").unwrap();
                }
            }
        }
    }
}
