//! The listpack encoding.
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

use super::*;

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
