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
//! | [zipmap](#zipmap) | 9 hash | Redis 2.4 |
//! | [intset](#intset) | 11 set of integers | Redis 2.4 – today |
//! | [ziplist](#ziplist) | 10 list, 12 zset, 13 hash, 14 quicklist nodes | Redis 2.4 – 6.2 |
//! | [listpack](#listpack) | 16 hash, 17 zset, 18 quicklist nodes, 20 set, 25 hash with TTLs, stream nodes | Redis 5.0 (streams), 7.0+ |
//!
//! Ziplists and listpacks hold a sequence of [`Entry`]s, each a string or an integer (a string
//! that is the canonical decimal text of an integer is stored as the integer). A zset stores
//! member, score, member, score…; a hash field, value, field, value…
//!
//! Offsets in errors count from the start of the blob.
//!
//! # Ziplist
//!
//! ```text
//! <zlbytes: u32 LE> <zltail: u32 LE> <zllen: u16 LE> <entry>* <0xFF>
//! ```
//!
//! `zlbytes` is the blob's size, `zltail` the offset of the last entry (so Redis can pop from
//! the tail), `zllen` the number of entries, or 65535 for "too many, count them". Each entry is
//! `<prevlen><encoding>[<data>]`, where `prevlen` is the size of the previous entry (1 byte if it
//! is below 254, else `0xFE` + u32 LE; 0 for the first entry), so the list can be walked
//! backwards. The first byte of `encoding` says what follows:
//!
//! ```text
//! 00pppppp                  string of 0..=63 bytes
//! 01pppppp qqqqqqqq         string of up to 16383 bytes (14-bit length, big-endian!)
//! 10______ + u32 BE         string of up to 2^32-1 bytes
//! 0xC0 + i16 LE   0xD0 + i32 LE   0xE0 + i64 LE   0xF0 + i24 LE   0xFE + i8
//! 0xF1 ..= 0xFD             the integers 0 ..= 12 themselves, no data
//! ```
//!
//! Example from Redis' source, the list `["2", "5"]`:
//! `0f 00 00 00 | 0c 00 00 00 | 02 00 | 00 f3 | 02 f6 | ff`: 15 bytes, the tail entry at 12, two
//! entries; the first has prevlen 0 and the immediate 2 (`f3`), the second prevlen 2 and the
//! immediate 5 (`f6`).
//!
//! # Listpack
//!
//! ```text
//! <total_bytes: u32 LE> <num_elements: u16 LE> <entry>* <0xFF>
//! ```
//!
//! `num_elements` is 65535 when unknown. Each entry is `<encoding+data><backlen>`: unlike a
//! ziplist entry it carries its *own* size at its *end*, so the list can be walked backwards
//! from the terminator. The first byte of the encoding decides:
//!
//! ```text
//! 0xxxxxxx                  integer 0..=127
//! 10xxxxxx + data           string of 0..=63 bytes
//! 110xxxxx yyyyyyyy         13-bit signed integer -4096..=4095 (x high bits, two's complement)
//! 1110xxxx yyyyyyyy + data  string of up to 4095 bytes (12-bit length, x high bits)
//! 0xF0 + u32 LE + data      string of up to 2^32-1 bytes
//! 0xF1 + i16 LE   0xF2 + i24 LE   0xF3 + i32 LE   0xF4 + i64 LE
//! 0xFF                      end of the listpack
//! ```
//!
//! `backlen` is the size of encoding+data in 1 to 5 bytes, 7 bits per byte, read from its last
//! byte backwards: the last byte holds the lowest 7 bits, and every byte but the first has the
//! high bit set ("more bytes before me"). Its size follows from the value: 1 byte up to 127, 2
//! below 16383, 3 below 2097151, 4 below 268435455, else 5 (Redis' boundaries, which a forward
//! reader must reproduce to find the next entry).
//!
//! Example: the listpack `["a", 1000]` is
//! `0d 00 00 00 | 02 00 | 81 61 02 | c3 e8 02 | ff`: 13 bytes, 2 elements, a 1-byte string
//! `"a"` with backlen 2, the 13-bit integer `0x3e8` with backlen 2.
//!
//! # Intset
//!
//! ```text
//! <encoding: u32 LE = 2, 4 or 8> <length: u32 LE> <length × int of that many bytes, LE>
//! ```
//!
//! The integers are signed, sorted strictly ascending, all stored at the width of the widest
//! (Redis widens an intset when a wider value arrives and never narrows it). The blob size is
//! exactly `8 + length × encoding`.
//!
//! # Zipmap
//!
//! ```text
//! <zmlen: u8> (<len> key <len> <free: u8> value <free bytes of padding>)* <0xFF>
//! ```
//!
//! `zmlen` is the number of pairs, or 254/255 for "count them". Each `<len>` is one byte below
//! 254, else `0xFE` + u32 LE. `free` is slack left after a value that was overwritten by a
//! shorter one. Only Redis 2.4 wrote zipmaps (RDB 2, 3); every later server still loads them.

use std::borrow::Cow;

use super::error::{RdbError, Result};
use super::primitives::parse_i64;

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

// ------------------------------------------------------------------------------------------------
// Listpack
// ------------------------------------------------------------------------------------------------

const LP_CTX: &str = "listpack";
const LP_HEADER: usize = 6;

/// Bytes a listpack `backlen` takes for an entry of `len` bytes (Redis' boundaries).
fn lp_backlen_size(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..16383 => 2,
        16383..2097151 => 3,
        2097151..268435455 => 4,
        _ => 5,
    }
}

fn lp_push_backlen(out: &mut Vec<u8>, len: usize) {
    let size = lp_backlen_size(len);
    for i in (0..size).rev() {
        let group = ((len >> (7 * i)) & 127) as u8;
        // Every byte but the first (lowest address) flags that more bytes precede it.
        out.push(if i == size - 1 { group } else { group | 128 });
    }
}

/// A validating iterator over the entries of a listpack.
///
/// [`ListpackIter::new`] checks the header; each step checks one entry (encoding, bounds,
/// backlen); the end checks that the terminator is the last byte and that the element count
/// matches the header. After an error the iterator yields nothing more.
#[derive(Debug, Clone)]
pub struct ListpackIter<'a> {
    blob: &'a [u8],
    pos: usize,
    found: usize,
    declared: u16,
    done: bool,
}

impl<'a> ListpackIter<'a> {
    /// Checks the header of `blob` and starts at its first entry.
    pub fn new(blob: &'a [u8]) -> Result<Self> {
        if blob.len() < LP_HEADER + 1 {
            return Err(invalid(
                0,
                LP_CTX,
                format!("{} byte(s) is too short for a listpack", blob.len()),
            ));
        }
        let total = le_u32(blob);
        if total as u64 != blob.len() as u64 {
            return Err(invalid(
                0,
                LP_CTX,
                format!("header says {total} bytes, the blob has {}", blob.len()),
            ));
        }
        if blob[blob.len() - 1] != END {
            return Err(invalid(
                blob.len() - 1,
                LP_CTX,
                "last byte is not the 0xFF terminator",
            ));
        }
        Ok(ListpackIter {
            blob,
            pos: LP_HEADER,
            found: 0,
            declared: u16::from_le_bytes([blob[4], blob[5]]),
            done: false,
        })
    }

    /// The element count in the header, unless it is the "unknown" 65535.
    pub fn declared_len(&self) -> Option<usize> {
        (self.declared != COUNT_UNKNOWN).then_some(self.declared as usize)
    }

    fn entry(&mut self) -> Result<Option<Entry<'a>>> {
        let blob = self.blob;
        let limit = blob.len() - 1; // the terminator's position
        let at = self.pos;
        let b = blob[at];
        if b == END {
            if at != limit {
                return Err(invalid(at, LP_CTX, "terminator before the end of the blob"));
            }
            check_count(self.declared, self.found, 4, LP_CTX)?;
            return Ok(None);
        }
        let (size, entry) = if b & 0x80 == 0 {
            (1, Entry::Int(b as i64))
        } else if b & 0xC0 == 0x80 {
            let len = (b & 0x3F) as usize;
            (
                1 + len,
                Entry::Bytes(take(blob, at + 1, len, limit, LP_CTX)?),
            )
        } else if b & 0xE0 == 0xC0 {
            let low = take(blob, at + 1, 1, limit, LP_CTX)?[0];
            let raw = (((b & 0x1F) as i64) << 8) | low as i64;
            let value = if raw >= 1 << 12 { raw - (1 << 13) } else { raw };
            (2, Entry::Int(value))
        } else if b & 0xF0 == 0xE0 {
            let low = take(blob, at + 1, 1, limit, LP_CTX)?[0];
            let len = (((b & 0x0F) as usize) << 8) | low as usize;
            (
                2 + len,
                Entry::Bytes(take(blob, at + 2, len, limit, LP_CTX)?),
            )
        } else {
            let int_width = match b {
                0xF0 => 0,
                0xF1 => 2,
                0xF2 => 3,
                0xF3 => 4,
                0xF4 => 8,
                _ => {
                    return Err(invalid(
                        at,
                        LP_CTX,
                        format!("unknown entry encoding {b:#04x}"),
                    ));
                }
            };
            if int_width == 0 {
                let len = le_u32(take(blob, at + 1, 4, limit, LP_CTX)?) as usize;
                let data = take(blob, at + 5, len, limit, LP_CTX)?;
                (5 + len, Entry::Bytes(data))
            } else {
                let data = take(blob, at + 1, int_width, limit, LP_CTX)?;
                (1 + int_width, Entry::Int(le_int(data)))
            }
        };
        let backlen_size = lp_backlen_size(size);
        let backlen = take(blob, at + size, backlen_size, limit, LP_CTX)?;
        let mut value = 0usize;
        for (i, &byte) in backlen.iter().rev().enumerate() {
            value |= ((byte & 127) as usize) << (7 * i);
            let first = i + 1 == backlen.len();
            if (byte & 128 == 0) != first {
                return Err(invalid(
                    at + size,
                    LP_CTX,
                    format!("malformed backlen for an entry of {size} bytes"),
                ));
            }
        }
        if value != size {
            return Err(invalid(
                at + size,
                LP_CTX,
                format!("backlen says {value} bytes, the entry has {size}"),
            ));
        }
        self.pos = at + size + backlen_size;
        self.found += 1;
        Ok(Some(entry))
    }
}

impl<'a> Iterator for ListpackIter<'a> {
    type Item = Result<Entry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.entry().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// Decodes and validates a whole listpack.
pub fn decode_listpack(blob: &[u8]) -> Result<Vec<Entry<'_>>> {
    ListpackIter::new(blob)?.collect()
}

/// Builds a listpack, entry by entry, exactly as Redis would encode the same elements.
#[derive(Debug, Clone)]
pub struct ListpackBuilder {
    buf: Vec<u8>,
    count: usize,
}

impl Default for ListpackBuilder {
    fn default() -> Self {
        ListpackBuilder::new()
    }
}

impl ListpackBuilder {
    /// An empty listpack.
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0; LP_HEADER]);
        ListpackBuilder { buf, count: 0 }
    }

    /// Number of entries pushed.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends an entry. [`Entry::Bytes`] in canonical integer form is stored as an integer,
    /// as Redis does.
    pub fn push(&mut self, entry: Entry<'_>) -> Result<()> {
        match entry {
            Entry::Int(i) => self.push_int(i),
            Entry::Bytes(b) => self.push_bytes(b)?,
        }
        Ok(())
    }

    /// Appends a string (as an integer if it is the canonical text of one).
    pub fn push_bytes(&mut self, s: &[u8]) -> Result<()> {
        if let Some(i) = parse_i64(s) {
            self.push_int(i);
            return Ok(());
        }
        let start = self.buf.len();
        let len = s.len();
        if len < 64 {
            self.buf.push(0x80 | len as u8);
        } else if len < 4096 {
            self.buf.push(0xE0 | (len >> 8) as u8);
            self.buf.push(len as u8);
        } else {
            let len32 = u32::try_from(len)
                .map_err(|_| RdbError::too_large("listpack string", len as u64, u32::MAX as u64))?;
            self.buf.push(0xF0);
            self.buf.extend_from_slice(&len32.to_le_bytes());
        }
        self.buf.extend_from_slice(s);
        self.finish_entry(start);
        Ok(())
    }

    /// Appends an integer in the smallest encoding that holds it.
    pub fn push_int(&mut self, v: i64) {
        let start = self.buf.len();
        if (0..=127).contains(&v) {
            self.buf.push(v as u8);
        } else if (-4096..=4095).contains(&v) {
            let raw = (v & 0x1FFF) as u16;
            self.buf.push(0xC0 | (raw >> 8) as u8);
            self.buf.push(raw as u8);
        } else if let Ok(v) = i16::try_from(v) {
            self.buf.push(0xF1);
            self.buf.extend_from_slice(&v.to_le_bytes());
        } else if (-(1 << 23)..1 << 23).contains(&v) {
            self.buf.push(0xF2);
            self.buf.extend_from_slice(&v.to_le_bytes()[..3]);
        } else if let Ok(v) = i32::try_from(v) {
            self.buf.push(0xF3);
            self.buf.extend_from_slice(&v.to_le_bytes());
        } else {
            self.buf.push(0xF4);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        self.finish_entry(start);
    }

    fn finish_entry(&mut self, start: usize) {
        let size = self.buf.len() - start;
        lp_push_backlen(&mut self.buf, size);
        self.count += 1;
    }

    /// The finished listpack: header filled in, terminator appended.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.buf.push(END);
        let total = u32::try_from(self.buf.len())
            .map_err(|_| RdbError::too_large(LP_CTX, self.buf.len() as u64, u32::MAX as u64))?;
        let count = u16::try_from(self.count).unwrap_or(COUNT_UNKNOWN);
        self.buf[..4].copy_from_slice(&total.to_le_bytes());
        self.buf[4..6].copy_from_slice(&count.to_le_bytes());
        Ok(self.buf)
    }
}

/// Encodes `entries` as a listpack.
pub fn encode_listpack<'e>(entries: impl IntoIterator<Item = Entry<'e>>) -> Result<Vec<u8>> {
    let mut b = ListpackBuilder::new();
    for e in entries {
        b.push(e)?;
    }
    b.finish()
}

// ------------------------------------------------------------------------------------------------
// Ziplist
// ------------------------------------------------------------------------------------------------

const ZL_CTX: &str = "ziplist";
const ZL_HEADER: usize = 10;
const ZL_BIG_PREVLEN: u8 = 0xFE;

/// A validating iterator over the entries of a ziplist.
///
/// [`ZiplistIter::new`] checks the header; each step checks one entry (prevlen against the
/// previous entry's real size, encoding, bounds); the end checks the terminator position, the
/// tail offset and the count. After an error the iterator yields nothing more.
#[derive(Debug, Clone)]
pub struct ZiplistIter<'a> {
    blob: &'a [u8],
    pos: usize,
    prev_size: usize,
    last_entry: Option<usize>,
    tail: usize,
    found: usize,
    declared: u16,
    done: bool,
}

impl<'a> ZiplistIter<'a> {
    /// Checks the header of `blob` and starts at its first entry.
    pub fn new(blob: &'a [u8]) -> Result<Self> {
        if blob.len() < ZL_HEADER + 1 {
            return Err(invalid(
                0,
                ZL_CTX,
                format!("{} byte(s) is too short for a ziplist", blob.len()),
            ));
        }
        let total = le_u32(blob);
        if total as u64 != blob.len() as u64 {
            return Err(invalid(
                0,
                ZL_CTX,
                format!("header says {total} bytes, the blob has {}", blob.len()),
            ));
        }
        if blob[blob.len() - 1] != END {
            return Err(invalid(
                blob.len() - 1,
                ZL_CTX,
                "last byte is not the 0xFF terminator",
            ));
        }
        let tail = le_u32(&blob[4..]) as usize;
        if tail > blob.len() - 1 {
            return Err(invalid(
                4,
                ZL_CTX,
                format!("tail offset {tail} is past the end"),
            ));
        }
        Ok(ZiplistIter {
            blob,
            pos: ZL_HEADER,
            prev_size: 0,
            last_entry: None,
            tail,
            found: 0,
            declared: u16::from_le_bytes([blob[8], blob[9]]),
            done: false,
        })
    }

    /// The entry count in the header, unless it is the "unknown" 65535.
    pub fn declared_len(&self) -> Option<usize> {
        (self.declared != COUNT_UNKNOWN).then_some(self.declared as usize)
    }

    fn entry(&mut self) -> Result<Option<Entry<'a>>> {
        let blob = self.blob;
        let limit = blob.len() - 1;
        let at = self.pos;
        if blob[at] == END {
            if at != limit {
                return Err(invalid(at, ZL_CTX, "terminator before the end of the blob"));
            }
            if let Some(last) = self.last_entry {
                if last != self.tail {
                    return Err(invalid(
                        4,
                        ZL_CTX,
                        format!("tail offset {} but the last entry is at {last}", self.tail),
                    ));
                }
            }
            check_count(self.declared, self.found, 8, ZL_CTX)?;
            return Ok(None);
        }
        let (prevlen_size, prevlen) = if blob[at] == ZL_BIG_PREVLEN {
            (5, le_u32(take(blob, at + 1, 4, limit, ZL_CTX)?) as usize)
        } else {
            (1, blob[at] as usize)
        };
        if prevlen != self.prev_size {
            return Err(invalid(
                at,
                ZL_CTX,
                format!(
                    "prevlen says {prevlen} bytes, the previous entry has {}",
                    self.prev_size
                ),
            ));
        }
        let enc_at = at + prevlen_size;
        let e = take(blob, enc_at, 1, limit, ZL_CTX)?[0];
        let (header, entry_size) = match e >> 6 {
            0 => {
                let len = (e & 0x3F) as usize;
                let data = take(blob, enc_at + 1, len, limit, ZL_CTX)?;
                (Entry::Bytes(data), 1 + len)
            }
            1 => {
                let low = take(blob, enc_at + 1, 1, limit, ZL_CTX)?[0];
                let len = (((e & 0x3F) as usize) << 8) | low as usize;
                let data = take(blob, enc_at + 2, len, limit, ZL_CTX)?;
                (Entry::Bytes(data), 2 + len)
            }
            2 => {
                let len_bytes = take(blob, enc_at + 1, 4, limit, ZL_CTX)?;
                let len =
                    u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]])
                        as usize;
                let data = take(blob, enc_at + 5, len, limit, ZL_CTX)?;
                (Entry::Bytes(data), 5 + len)
            }
            _ => {
                let width = match e {
                    0xC0 => 2,
                    0xD0 => 4,
                    0xE0 => 8,
                    0xF0 => 3,
                    0xFE => 1,
                    0xF1..=0xFD => 0,
                    _ => {
                        return Err(invalid(
                            enc_at,
                            ZL_CTX,
                            format!("unknown entry encoding {e:#04x}"),
                        ));
                    }
                };
                let value = if width == 0 {
                    (e & 0x0F) as i64 - 1
                } else {
                    le_int(take(blob, enc_at + 1, width, limit, ZL_CTX)?)
                };
                (Entry::Int(value), 1 + width)
            }
        };
        let size = prevlen_size + entry_size;
        self.prev_size = size;
        self.last_entry = Some(at);
        self.pos = at + size;
        self.found += 1;
        Ok(Some(header))
    }
}

impl<'a> Iterator for ZiplistIter<'a> {
    type Item = Result<Entry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.entry().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// Decodes and validates a whole ziplist.
pub fn decode_ziplist(blob: &[u8]) -> Result<Vec<Entry<'_>>> {
    ZiplistIter::new(blob)?.collect()
}

/// Builds a ziplist, entry by entry, exactly as Redis would encode the same elements (for
/// writing to servers older than 7.0, whose compact types are all ziplists).
#[derive(Debug, Clone)]
pub struct ZiplistBuilder {
    buf: Vec<u8>,
    count: usize,
    prev_size: usize,
    last_entry: usize,
}

impl Default for ZiplistBuilder {
    fn default() -> Self {
        ZiplistBuilder::new()
    }
}

impl ZiplistBuilder {
    /// An empty ziplist.
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0; ZL_HEADER]);
        ZiplistBuilder {
            buf,
            count: 0,
            prev_size: 0,
            last_entry: ZL_HEADER,
        }
    }

    /// Number of entries pushed.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends an entry. [`Entry::Bytes`] in canonical integer form (under 32 bytes, which
    /// every integer is) is stored as an integer, as Redis does.
    pub fn push(&mut self, entry: Entry<'_>) -> Result<()> {
        match entry {
            Entry::Int(i) => self.push_int(i),
            Entry::Bytes(b) => self.push_bytes(b),
        }
    }

    fn start_entry(&mut self) -> Result<usize> {
        let start = self.buf.len();
        if self.prev_size < ZL_BIG_PREVLEN as usize {
            self.buf.push(self.prev_size as u8);
        } else {
            let prev = u32::try_from(self.prev_size).map_err(|_| {
                RdbError::too_large("ziplist entry", self.prev_size as u64, u32::MAX as u64)
            })?;
            self.buf.push(ZL_BIG_PREVLEN);
            self.buf.extend_from_slice(&prev.to_le_bytes());
        }
        Ok(start)
    }

    fn finish_entry(&mut self, start: usize) {
        self.prev_size = self.buf.len() - start;
        self.last_entry = start;
        self.count += 1;
    }

    /// Appends a string (as an integer if it is the canonical text of one).
    pub fn push_bytes(&mut self, s: &[u8]) -> Result<()> {
        if let Some(i) = parse_i64(s) {
            return self.push_int(i);
        }
        let len = s.len();
        let len32 = u32::try_from(len)
            .map_err(|_| RdbError::too_large("ziplist string", len as u64, u32::MAX as u64))?;
        let start = self.start_entry()?;
        if len < 64 {
            self.buf.push(len as u8);
        } else if len < 16384 {
            self.buf.push(0x40 | (len >> 8) as u8);
            self.buf.push(len as u8);
        } else {
            self.buf.push(0x80);
            self.buf.extend_from_slice(&len32.to_be_bytes());
        }
        self.buf.extend_from_slice(s);
        self.finish_entry(start);
        Ok(())
    }

    /// Appends an integer in the smallest encoding that holds it.
    pub fn push_int(&mut self, v: i64) -> Result<()> {
        let start = self.start_entry()?;
        if (0..=12).contains(&v) {
            self.buf.push(0xF1 + v as u8);
        } else if let Ok(v) = i8::try_from(v) {
            self.buf.push(0xFE);
            self.buf.push(v as u8);
        } else if let Ok(v) = i16::try_from(v) {
            self.buf.push(0xC0);
            self.buf.extend_from_slice(&v.to_le_bytes());
        } else if (-(1 << 23)..1 << 23).contains(&v) {
            self.buf.push(0xF0);
            self.buf.extend_from_slice(&v.to_le_bytes()[..3]);
        } else if let Ok(v) = i32::try_from(v) {
            self.buf.push(0xD0);
            self.buf.extend_from_slice(&v.to_le_bytes());
        } else {
            self.buf.push(0xE0);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        self.finish_entry(start);
        Ok(())
    }

    /// The finished ziplist: header filled in, terminator appended.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.buf.push(END);
        let total = u32::try_from(self.buf.len())
            .map_err(|_| RdbError::too_large(ZL_CTX, self.buf.len() as u64, u32::MAX as u64))?;
        let count = u16::try_from(self.count).unwrap_or(COUNT_UNKNOWN);
        self.buf[..4].copy_from_slice(&total.to_le_bytes());
        self.buf[4..8].copy_from_slice(&(self.last_entry as u32).to_le_bytes());
        self.buf[8..10].copy_from_slice(&count.to_le_bytes());
        Ok(self.buf)
    }
}

/// Encodes `entries` as a ziplist.
pub fn encode_ziplist<'e>(entries: impl IntoIterator<Item = Entry<'e>>) -> Result<Vec<u8>> {
    let mut b = ZiplistBuilder::new();
    for e in entries {
        b.push(e)?;
    }
    b.finish()
}

// ------------------------------------------------------------------------------------------------
// Intset
// ------------------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------------------
// Zipmap
// ------------------------------------------------------------------------------------------------

const ZM_CTX: &str = "zipmap";
const ZM_BIGLEN: u8 = 254;

/// A validating iterator over the (field, value) pairs of a zipmap.
///
/// It checks bounds, the terminator position and the count in the header (when it is below
/// 254). It does not check for duplicate fields: a caller building a hash must.
#[derive(Debug, Clone)]
pub struct ZipmapIter<'a> {
    blob: &'a [u8],
    pos: usize,
    found: usize,
    declared: u8,
    done: bool,
}

impl<'a> ZipmapIter<'a> {
    /// Checks the frame of `blob` and starts at its first pair.
    pub fn new(blob: &'a [u8]) -> Result<Self> {
        if blob.len() < 2 {
            return Err(invalid(
                0,
                ZM_CTX,
                format!("{} byte(s) is too short for a zipmap", blob.len()),
            ));
        }
        if blob[blob.len() - 1] != END {
            return Err(invalid(
                blob.len() - 1,
                ZM_CTX,
                "last byte is not the 0xFF terminator",
            ));
        }
        Ok(ZipmapIter {
            blob,
            pos: 1,
            found: 0,
            declared: blob[0],
            done: false,
        })
    }

    /// The pair count in the header, unless it is 254 or 255 ("count them").
    pub fn declared_len(&self) -> Option<usize> {
        (self.declared < ZM_BIGLEN).then_some(self.declared as usize)
    }

    fn length(&self, at: usize, limit: usize) -> Result<(usize, usize)> {
        match self.blob[at] {
            ZM_BIGLEN => Ok((
                5,
                le_u32(take(self.blob, at + 1, 4, limit, ZM_CTX)?) as usize,
            )),
            END => Err(invalid(
                at,
                ZM_CTX,
                "terminator where a value length was expected",
            )),
            n => Ok((1, n as usize)),
        }
    }

    fn pair(&mut self) -> Result<Option<(&'a [u8], &'a [u8])>> {
        let blob = self.blob;
        let limit = blob.len() - 1;
        let at = self.pos;
        if blob[at] == END {
            if at != limit {
                return Err(invalid(at, ZM_CTX, "terminator before the end of the blob"));
            }
            if let Some(declared) = self.declared_len() {
                if declared != self.found {
                    return Err(invalid(
                        0,
                        ZM_CTX,
                        format!("header says {declared} pairs, found {}", self.found),
                    ));
                }
            }
            return Ok(None);
        }
        let (size, len) = self.length(at, limit)?;
        let field = take(blob, at + size, len, limit, ZM_CTX)?;
        let mut p = at + size + len;
        if p >= limit {
            return Err(invalid(p, ZM_CTX, "pair cut off by the end of the blob"));
        }
        let (size, len) = self.length(p, limit)?;
        p += size;
        let free = take(blob, p, 1, limit, ZM_CTX)?[0] as usize;
        let value = take(blob, p + 1, len, limit, ZM_CTX)?;
        p += 1 + len;
        take(blob, p, free, limit, ZM_CTX)?;
        self.pos = p + free;
        self.found += 1;
        Ok(Some((field, value)))
    }
}

impl<'a> Iterator for ZipmapIter<'a> {
    type Item = Result<(&'a [u8], &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.pair().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// Decodes and validates a whole zipmap into (field, value) pairs.
pub fn decode_zipmap(blob: &[u8]) -> Result<Vec<(&[u8], &[u8])>> {
    ZipmapIter::new(blob)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// Zipmaps are never written by a current server; this test-only encoder (with optional
    /// padding after values) feeds the decoder's round-trip tests.
    fn encode_zipmap(pairs: &[(Vec<u8>, Vec<u8>, u8)], big_count: bool) -> Vec<u8> {
        fn len(out: &mut Vec<u8>, n: usize) {
            if n < ZM_BIGLEN as usize {
                out.push(n as u8);
            } else {
                out.push(ZM_BIGLEN);
                out.extend_from_slice(&(n as u32).to_le_bytes());
            }
        }
        let mut out = vec![if big_count || pairs.len() >= 254 {
            254
        } else {
            pairs.len() as u8
        }];
        for (k, v, free) in pairs {
            len(&mut out, k.len());
            out.extend_from_slice(k);
            len(&mut out, v.len());
            out.push(*free);
            out.extend_from_slice(v);
            out.extend(std::iter::repeat_n(0xAA, *free as usize));
        }
        out.push(END);
        out
    }

    #[test]
    fn ziplist_reference_example() {
        let zl = hex("0f 00 00 00 0c 00 00 00 02 00 00 f3 02 f6 ff");
        assert_eq!(decode_ziplist(&zl).unwrap(), [Entry::Int(2), Entry::Int(5)]);
        assert_eq!(
            encode_ziplist([Entry::Bytes(b"2"), Entry::Bytes(b"5")]).unwrap(),
            zl
        );
        let iter = ZiplistIter::new(&zl).unwrap();
        assert_eq!(iter.declared_len(), Some(2));
    }

    #[test]
    fn ziplist_hand_built() {
        // ["hello", 300, -2, 2^40] : strings, i16, i8, i64, and a big prevlen after a long one.
        let mut zl = vec![0u8; 10];
        let e1 = [&[0x00, 0x05][..], b"hello"].concat();
        let e2 = vec![e1.len() as u8, 0xC0, 0x2c, 0x01];
        let e3 = vec![e2.len() as u8, 0xFE, 0xFE];
        let e4 = [&[e3.len() as u8, 0xE0][..], &(1i64 << 40).to_le_bytes()].concat();
        let long = vec![b'x'; 300];
        let e5 = [&[e4.len() as u8, 0x41, 0x2c][..], &long].concat();
        let e6 = [
            &[0xFE][..],
            &(e5.len() as u32).to_le_bytes(),
            &[0xF0, 0xff, 0xff, 0x7f],
        ]
        .concat();
        let mut tail = 0;
        for e in [&e1, &e2, &e3, &e4, &e5, &e6] {
            tail = zl.len();
            zl.extend_from_slice(e);
        }
        zl.push(0xFF);
        let total = zl.len() as u32;
        zl[..4].copy_from_slice(&total.to_le_bytes());
        zl[4..8].copy_from_slice(&(tail as u32).to_le_bytes());
        zl[8..10].copy_from_slice(&6u16.to_le_bytes());
        let got = decode_ziplist(&zl).unwrap();
        assert_eq!(
            got,
            [
                Entry::Bytes(b"hello"),
                Entry::Int(300),
                Entry::Int(-2),
                Entry::Int(1 << 40),
                Entry::Bytes(&long),
                Entry::Int(0x7fffff),
            ]
        );
        let rebuilt = encode_ziplist(got.iter().copied()).unwrap();
        assert_eq!(rebuilt, zl);
        // Unknown count (65535) is accepted.
        zl[8..10].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(decode_ziplist(&zl).unwrap().len(), 6);
    }

    #[test]
    fn ziplist_long_strings_and_wide_prevlen() {
        // A string of 2^14 bytes or more takes the 5-byte form `0x80 + u32 BE`.
        let s = vec![b'L'; 20000];
        let zl = encode_ziplist([Entry::Bytes(&s), Entry::Int(-1)]).unwrap();
        assert_eq!(&zl[10..16], &[0x00, 0x80, 0x00, 0x00, 0x4e, 0x20]);
        assert_eq!(
            decode_ziplist(&zl).unwrap(),
            [Entry::Bytes(&s), Entry::Int(-1)]
        );
        // Redis may leave a 5-byte prevlen holding a small value after a cascade update.
        let zl = hex("13 00 00 00 0c 00 00 00 02 00 00 f3 fe 02 00 00 00 f6 ff");
        assert_eq!(decode_ziplist(&zl).unwrap(), [Entry::Int(2), Entry::Int(5)]);
    }

    #[test]
    fn ziplist_corruptions() {
        let good = hex("0f 00 00 00 0c 00 00 00 02 00 00 f3 02 f6 ff");
        let mutate = |i: usize, b: u8| {
            let mut z = good.clone();
            z[i] = b;
            decode_ziplist(&z).unwrap_err()
        };
        assert_eq!(mutate(0, 0x10).offset(), Some(0)); // zlbytes
        assert_eq!(mutate(4, 0x0a).offset(), Some(4)); // zltail at the first entry
        assert_eq!(mutate(4, 0x20).offset(), Some(4)); // zltail past the end
        assert_eq!(mutate(8, 0x03).offset(), Some(8)); // count
        assert_eq!(mutate(12, 0x01).offset(), Some(12)); // prevlen
        assert_eq!(mutate(13, 0xC1).offset(), Some(13)); // unknown encoding
        assert_eq!(mutate(14, 0x00).offset(), Some(14)); // terminator missing
        assert_eq!(mutate(11, 0x05).offset(), Some(12)); // string runs over the terminator
        assert!(decode_ziplist(&good[..10]).is_err());
    }

    #[test]
    fn listpack_hand_built() {
        let lp = hex("0d 00 00 00 02 00 81 61 02 c3 e8 02 ff");
        assert_eq!(
            decode_listpack(&lp).unwrap(),
            [Entry::Bytes(b"a"), Entry::Int(1000)]
        );
        assert_eq!(
            encode_listpack([Entry::Bytes(b"a"), Entry::Bytes(b"1000")]).unwrap(),
            lp
        );
        // Each integer width: 7-bit, 13-bit negative, 16, 24, 32, 64.
        let mut lp = hex("00 00 00 00 ff ff");
        for e in [
            "05 01",
            "df ff 02",                      // 13-bit: 0x1fff = -1
            "f1 00 80 03",                   // i16 -32768
            "f2 ff ff 7f 04",                // i24 8388607
            "f3 00 00 00 80 05",             // i32 min
            "f4 00 00 00 00 00 00 00 80 09", // i64 min
            "e0 40",                         // 12-bit string of 64 bytes, backlen 66 below
        ] {
            lp.extend(hex(e));
        }
        lp.extend(vec![b'z'; 64]);
        lp.push(66);
        lp.push(0xff);
        let total = lp.len() as u32;
        lp[..4].copy_from_slice(&total.to_le_bytes());
        let z64 = vec![b'z'; 64];
        assert_eq!(
            decode_listpack(&lp).unwrap(),
            [
                Entry::Int(5),
                Entry::Int(-1),
                Entry::Int(-32768),
                Entry::Int(8388607),
                Entry::Int(i32::MIN as i64),
                Entry::Int(i64::MIN),
                Entry::Bytes(&z64),
            ]
        );
        let iter = ListpackIter::new(&lp).unwrap();
        assert_eq!(iter.declared_len(), None);
        // Empty listpack.
        let empty = encode_listpack([]).unwrap();
        assert_eq!(empty, hex("07 00 00 00 00 00 ff"));
        assert!(decode_listpack(&empty).unwrap().is_empty());
    }

    #[test]
    fn listpack_backlen_boundaries() {
        // Entry sizes around the backlen size boundaries (127/128, 16382/16383).
        for len in [
            122, 123, 124, 125, 126, 127, 16372, 16373, 16377, 16378, 16379,
        ] {
            let s = vec![b's'; len];
            let lp = encode_listpack([Entry::Bytes(&s), Entry::Int(1)]).unwrap();
            assert_eq!(
                decode_listpack(&lp).unwrap(),
                [Entry::Bytes(&s), Entry::Int(1)]
            );
        }
        // A 16378-byte string is a 32-bit-length entry of exactly 16383 bytes: 3-byte backlen.
        let s = vec![b's'; 16378];
        let lp = encode_listpack([Entry::Bytes(&s)]).unwrap();
        assert_eq!(lp.len(), 6 + 16383 + 3 + 1);
        assert_eq!(&lp[lp.len() - 4..lp.len() - 1], &[0x00, 0xFF, 0xFF]);
    }

    #[test]
    fn listpack_corruptions() {
        let good = hex("0d 00 00 00 02 00 81 61 02 c3 e8 02 ff");
        let mutate = |i: usize, b: u8| {
            let mut z = good.clone();
            z[i] = b;
            decode_listpack(&z).unwrap_err()
        };
        assert_eq!(mutate(0, 0x0c).offset(), Some(0)); // total bytes
        assert_eq!(mutate(4, 0x03).offset(), Some(4)); // count
        assert_eq!(mutate(8, 0x03).offset(), Some(8)); // backlen value
        assert_eq!(mutate(8, 0x82).offset(), Some(8)); // backlen continuation on its first byte
        assert_eq!(mutate(9, 0xF5).offset(), Some(9)); // unknown encoding
        assert_eq!(mutate(6, 0x86).offset(), Some(7)); // string runs over the terminator
        assert_eq!(mutate(12, 0x00).offset(), Some(12)); // terminator missing
        assert_eq!(mutate(9, 0xff).offset(), Some(9)); // terminator too early
        assert!(decode_listpack(&good[..6]).is_err());
        // Unknown count is fine.
        let mut z = good.clone();
        z[4..6].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(decode_listpack(&z).unwrap().len(), 2);
    }

    #[test]
    fn intset_hand_built() {
        let blob = hex("02 00 00 00 03 00 00 00 fe ff 05 00 39 30");
        let set = Intset::parse(&blob).unwrap();
        assert_eq!(set.to_vec(), [-2, 5, 12345]);
        assert_eq!(
            (set.len(), set.width(), set.get(1), set.get(3)),
            (3, 2, Some(5), None)
        );
        assert!(!set.is_empty());
        assert_eq!(encode_intset([12345, -2, 5, 5]).unwrap(), blob);
        assert_eq!(encode_intset([1 << 40]).unwrap()[0], 8);
        assert_eq!(encode_intset([-40000]).unwrap()[0], 4);
        let empty = encode_intset([]).unwrap();
        assert!(Intset::parse(&empty).unwrap().is_empty());
        // Corruptions: unsorted, duplicate, bad width, size mismatch.
        let e = Intset::parse(&hex("02 00 00 00 02 00 00 00 05 00 04 00")).unwrap_err();
        assert_eq!(e.offset(), Some(10));
        assert!(Intset::parse(&hex("02 00 00 00 02 00 00 00 05 00 05 00")).is_err());
        assert!(Intset::parse(&hex("03 00 00 00 00 00 00 00")).is_err());
        assert!(Intset::parse(&hex("02 00 00 00 02 00 00 00 05 00")).is_err());
        assert!(Intset::parse(&hex("02 00 00 00 ff ff ff ff")).is_err());
        assert!(Intset::parse(&hex("02 00 00")).is_err());
    }

    #[test]
    fn zipmap_hand_built() {
        // {"foo": "bar", "hello": "world"}, with 2 bytes of slack after "bar".
        let zm = [
            &[0x02, 0x03][..],
            b"foo",
            &[0x03, 0x02],
            b"bar",
            &[0x00, 0x00, 0x05],
            b"hello",
            &[0x05, 0x00],
            b"world",
            &[0xff],
        ]
        .concat();
        let pairs = decode_zipmap(&zm).unwrap();
        assert_eq!(pairs, [(&b"foo"[..], &b"bar"[..]), (b"hello", b"world")]);
        // Corruptions: count, terminator, slack past the end, a cut pair.
        let mut bad = zm.clone();
        bad[0] = 3;
        assert_eq!(decode_zipmap(&bad).unwrap_err().offset(), Some(0));
        bad[0] = 254;
        assert_eq!(decode_zipmap(&bad).unwrap().len(), 2);
        assert!(decode_zipmap(&zm[..zm.len() - 1]).is_err());
        let mut bad = zm.clone();
        bad[6] = 200;
        assert!(decode_zipmap(&bad).is_err());
        assert!(decode_zipmap(&[0x01, 0x03, b'f', b'o', b'o', 0xff]).is_err());
        assert!(decode_zipmap(&[0x00, 0xff]).unwrap().is_empty());
        assert!(decode_zipmap(&[0xff]).is_err());
    }

    fn entry_strategy() -> impl Strategy<Value = EntryOwned> {
        prop_oneof![
            any::<i64>().prop_map(EntryOwned::Int),
            (-70000i64..70000).prop_map(EntryOwned::Int),
            proptest::collection::vec(any::<u8>(), 0..80).prop_map(EntryOwned::Bytes),
            (any::<u8>(), 60usize..5000).prop_map(|(b, n)| EntryOwned::Bytes(vec![b; n])),
            any::<i64>().prop_map(|i| EntryOwned::Bytes(i.to_string().into_bytes())),
        ]
    }

    #[derive(Debug, Clone)]
    enum EntryOwned {
        Bytes(Vec<u8>),
        Int(i64),
    }

    impl EntryOwned {
        fn entry(&self) -> Entry<'_> {
            match self {
                EntryOwned::Bytes(b) => Entry::Bytes(b),
                EntryOwned::Int(i) => Entry::Int(*i),
            }
        }
    }

    /// What a decoder must give back: the same element value (text or integer).
    fn same_value(a: &Entry<'_>, b: &Entry<'_>) -> bool {
        a.to_bytes() == b.to_bytes()
    }

    proptest! {
        #[test]
        fn listpack_round_trip(entries in proptest::collection::vec(entry_strategy(), 0..40)) {
            let lp = encode_listpack(entries.iter().map(EntryOwned::entry)).unwrap();
            let got = decode_listpack(&lp).unwrap();
            prop_assert_eq!(got.len(), entries.len());
            for (g, e) in got.iter().zip(&entries) {
                prop_assert!(same_value(g, &e.entry()), "{:?} vs {:?}", g, e);
                // Canonical integers always come back as integers.
                prop_assert_eq!(matches!(g, Entry::Int(_)), e.entry().as_int().is_some());
            }
            // Re-encoding what was decoded is byte-identical.
            prop_assert_eq!(encode_listpack(got.iter().copied()).unwrap(), lp);
        }

        #[test]
        fn ziplist_round_trip(entries in proptest::collection::vec(entry_strategy(), 0..40)) {
            let zl = encode_ziplist(entries.iter().map(EntryOwned::entry)).unwrap();
            let got = decode_ziplist(&zl).unwrap();
            prop_assert_eq!(got.len(), entries.len());
            for (g, e) in got.iter().zip(&entries) {
                prop_assert!(same_value(g, &e.entry()), "{:?} vs {:?}", g, e);
                prop_assert_eq!(matches!(g, Entry::Int(_)), e.entry().as_int().is_some());
            }
            prop_assert_eq!(encode_ziplist(got.iter().copied()).unwrap(), zl);
        }

        #[test]
        fn intset_round_trip(values in proptest::collection::vec(any::<i64>(), 0..100), small in proptest::collection::vec(-40000i64..40000, 0..100)) {
            for values in [values, small] {
                let blob = encode_intset(values.iter().copied()).unwrap();
                let mut expected = values.clone();
                expected.sort_unstable();
                expected.dedup();
                prop_assert_eq!(Intset::parse(&blob).unwrap().to_vec(), expected);
            }
        }

        #[test]
        fn zipmap_round_trip(
            pairs in proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 0..300),
                    proptest::collection::vec(any::<u8>(), 0..300),
                    0u8..5,
                ),
                0..20,
            ),
            big_count in any::<bool>(),
        ) {
            let zm = encode_zipmap(&pairs, big_count);
            let got = decode_zipmap(&zm).unwrap();
            prop_assert_eq!(got.len(), pairs.len());
            for ((k, v), (ek, ev, _)) in got.iter().zip(&pairs) {
                prop_assert_eq!(*k, &ek[..]);
                prop_assert_eq!(*v, &ev[..]);
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode_listpack(&data);
            let _ = decode_ziplist(&data);
            let _ = Intset::parse(&data);
            let _ = decode_zipmap(&data);
        }

        /// Valid headers over garbage bodies reach deeper than pure garbage does.
        #[test]
        fn framed_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..120), count in any::<u16>()) {
            let mut lp = Vec::new();
            lp.extend_from_slice(&((body.len() + 7) as u32).to_le_bytes());
            lp.extend_from_slice(&count.to_le_bytes());
            lp.extend_from_slice(&body);
            lp.push(0xff);
            let _ = decode_listpack(&lp);
            let mut zl = Vec::new();
            zl.extend_from_slice(&((body.len() + 11) as u32).to_le_bytes());
            zl.extend_from_slice(&((body.len() as u32 / 2) + 10).to_le_bytes());
            zl.extend_from_slice(&count.to_le_bytes());
            zl.extend_from_slice(&body);
            zl.push(0xff);
            let _ = decode_ziplist(&zl);
            let mut zm = vec![count as u8];
            zm.extend_from_slice(&body);
            zm.push(0xff);
            let _ = decode_zipmap(&zm);
        }

        /// Flipping any one byte of a valid blob gives an error or a (different) valid blob,
        /// never a panic.
        #[test]
        fn mutations_never_panic(
            entries in proptest::collection::vec(entry_strategy(), 1..8),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let lp = encode_listpack(entries.iter().map(EntryOwned::entry)).unwrap();
            let mut m = lp.clone();
            let i = at.index(m.len());
            m[i] = byte;
            let _ = decode_listpack(&m);
            let zl = encode_ziplist(entries.iter().map(EntryOwned::entry)).unwrap();
            let mut m = zl.clone();
            let i = at.index(m.len());
            m[i] = byte;
            let _ = decode_ziplist(&m);
        }
    }
}
