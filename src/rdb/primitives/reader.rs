//! Decoding the primitives: [`Reader`], a cursor over a byte slice that never reads past it,
//! never allocates more than the bytes that are there, and names the byte offset and what was
//! being read in every error. A failed read leaves the position unchanged, so a streaming
//! caller can wait for more bytes and try again.

use super::*;

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
