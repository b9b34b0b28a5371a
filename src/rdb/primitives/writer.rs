//! Encoding the primitives: [`Writer`], the counterpart of the reader. Writing cannot fail;
//! which RDB version can read what was written is the caller's concern.

use super::*;

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
