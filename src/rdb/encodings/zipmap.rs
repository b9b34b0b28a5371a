//! The zipmap encoding.
//!
//! ```text
//! <zmlen: u8> (<len> key <len> <free: u8> value <free bytes of padding>)* <0xFF>
//! ```
//!
//! `zmlen` is the number of pairs, or 254/255 for "count them". Each `<len>` is one byte below
//! 254, else `0xFE` + u32 LE. `free` is slack left after a value that was overwritten by a
//! shorter one. Only Redis 2.4 wrote zipmaps (RDB 2, 3); every later server still loads them.

use super::*;

const ZM_CTX: &str = "zipmap";
pub(super) const ZM_BIGLEN: u8 = 254;

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
