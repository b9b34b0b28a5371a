//! The ziplist encoding.
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

use super::*;

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
