//! The one error type of the RDB codec.
//!
//! Every decoding error names the **byte offset** where the problem was found and a short
//! **context** (what was being read: "string length", "listpack entry", ...). Offsets count from
//! the start of the buffer the [`Reader`](super::primitives::Reader) was given (plus the base
//! offset it was created with), or from the start of the blob for the compact encodings of
//! [`encodings`](super::encodings) (a ziplist, listpack, intset or zipmap is self-contained and
//! may have been LZF-decompressed, so an offset inside it is the only meaningful one; use
//! [`RdbError::rebased`] to shift it when the blob's position is known).
//!
//! Running out of input is its own variant, [`RdbError::Truncated`], separate from corruption
//! ([`RdbError::Invalid`]): a streaming caller that parses a growing buffer can wait for more
//! bytes and retry instead of giving up.

use std::borrow::Cow;

/// An error from decoding or encoding RDB data. Never a panic: every malformed input ends here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RdbError {
    /// The input ended before the item being read was complete. With a streaming source this
    /// means "not yet"; with a complete buffer it means the data is cut short.
    #[error(
        "unexpected end of input at byte {offset} while reading {context}: \
         {needed} byte(s) needed, {available} available"
    )]
    Truncated {
        /// Where the incomplete item starts (or where the missing bytes would be).
        offset: u64,
        /// What was being read.
        context: &'static str,
        /// Bytes the item needs from `offset` on.
        needed: u64,
        /// Bytes that were left from `offset` on.
        available: u64,
    },
    /// The bytes are present but do not follow the format.
    #[error("invalid {context} at byte {offset}: {reason}")]
    Invalid {
        /// The offset of the offending byte (or of the start of the offending item).
        offset: u64,
        /// What was being read.
        context: &'static str,
        /// What is wrong, in words.
        reason: Cow<'static, str>,
    },
    /// A CRC-64 trailer does not match the bytes it covers.
    #[error(
        "checksum mismatch in {context} at byte {offset}: stored {stored:#018x}, \
         computed {computed:#018x}"
    )]
    Checksum {
        /// The offset of the stored checksum.
        offset: u64,
        /// What the checksum covers ("DUMP payload", "RDB file").
        context: &'static str,
        /// The checksum found in the input.
        stored: u64,
        /// The checksum of the covered bytes.
        computed: u64,
    },
    /// A value is too large for the encoding it is being written in (e.g. a listpack over
    /// 4 GiB, whose header holds a 32-bit size).
    #[error("cannot encode {context}: {len} exceeds the format's limit of {max}")]
    TooLarge {
        /// What was being written.
        context: &'static str,
        /// The size or count that does not fit.
        len: u64,
        /// The largest one that does.
        max: u64,
    },
}

impl RdbError {
    /// A [`RdbError::Truncated`] error.
    pub fn truncated(offset: u64, context: &'static str, needed: u64, available: u64) -> Self {
        RdbError::Truncated {
            offset,
            context,
            needed,
            available,
        }
    }

    /// A [`RdbError::Invalid`] error.
    pub fn invalid(
        offset: u64,
        context: &'static str,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        RdbError::Invalid {
            offset,
            context,
            reason: reason.into(),
        }
    }

    /// A [`RdbError::TooLarge`] error.
    pub fn too_large(context: &'static str, len: u64, max: u64) -> Self {
        RdbError::TooLarge { context, len, max }
    }

    /// The byte offset the error refers to (`None` for encoding errors, which have none).
    pub fn offset(&self) -> Option<u64> {
        match self {
            RdbError::Truncated { offset, .. }
            | RdbError::Invalid { offset, .. }
            | RdbError::Checksum { offset, .. } => Some(*offset),
            RdbError::TooLarge { .. } => None,
        }
    }

    /// What was being read or written when the error happened.
    pub fn context(&self) -> &'static str {
        match self {
            RdbError::Truncated { context, .. }
            | RdbError::Invalid { context, .. }
            | RdbError::Checksum { context, .. }
            | RdbError::TooLarge { context, .. } => context,
        }
    }

    /// True if the input merely ended too early (more bytes might make it decode).
    pub fn is_truncated(&self) -> bool {
        matches!(self, RdbError::Truncated { .. })
    }

    /// The same error with its offset moved by `base` (for an error found inside a blob whose
    /// own position in a larger buffer is `base`). Saturates instead of overflowing.
    #[must_use]
    pub fn rebased(mut self, base: u64) -> Self {
        match &mut self {
            RdbError::Truncated { offset, .. }
            | RdbError::Invalid { offset, .. }
            | RdbError::Checksum { offset, .. } => *offset = offset.saturating_add(base),
            RdbError::TooLarge { .. } => {}
        }
        self
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = RdbError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_offset_and_context() {
        let e = RdbError::truncated(17, "string length", 4, 1);
        assert_eq!(
            e.to_string(),
            "unexpected end of input at byte 17 while reading string length: 4 byte(s) needed, \
             1 available"
        );
        assert!(e.is_truncated());
        assert_eq!(e.offset(), Some(17));
        assert_eq!(e.context(), "string length");

        let e = RdbError::invalid(3, "listpack", "bad encoding byte 0xf5");
        assert_eq!(
            e.to_string(),
            "invalid listpack at byte 3: bad encoding byte 0xf5"
        );
        assert!(!e.is_truncated());
        assert_eq!(e.rebased(100).offset(), Some(103));

        let e = RdbError::too_large("listpack", 5_000_000_000, u32::MAX as u64);
        assert_eq!(e.offset(), None);
        assert_eq!(e.clone().rebased(5), e);
    }
}
