//! RDB format versions, the two dialects, and the 9-byte file header.
//!
//! Every RDB file starts with a magic and a version number in ASCII, 9 bytes, no length:
//!
//! ```text
//! "REDIS" + 4 digits    REDIS0009, REDIS0011, REDIS0012 ...      versions 1..=79
//! "VALKEY" + 3 digits   VALKEY080                                versions 80..
//! ```
//!
//! A DUMP payload has no magic, only the version as a u16 in its footer (see
//! [`dump`](super::dump)). A loader refuses versions newer than its own, so the version is what
//! decides where a payload can go.
//!
//! Redis and Valkey shared one numbering up to RDB 11 (Redis 7.2; Valkey 7.2, 8.0 and 8.1 all
//! write 11). After that they diverged: Redis went on with 12, 13, 14 (7.4, 8.6, 8.8), and Valkey
//! reserved 12..=79 as the "foreign" (Redis) range and jumped to 80 (Valkey 9.0) with a new
//! magic. Type ids and opcodes from 22 on mean different things in the two dialects, which is
//! why [`Dialect`] matters.
//!
//! | RDB | written by |
//! |---|---|
//! | 6 | Redis 2.6 – 3.0 |
//! | 7 | Redis 3.2 |
//! | 8 | Redis 4.0 |
//! | 9 | Redis 5.0, 6.0, 6.2 |
//! | 10 | Redis 7.0 |
//! | 11 | Redis 7.2; Valkey 7.2, 8.0, 8.1 |
//! | 12 | Redis 7.4, 8.0, 8.2, 8.4 |
//! | 13 | Redis 8.6 |
//! | 14 | Redis 8.8 |
//! | 80 | Valkey 9.0, 9.1 |

use std::fmt;

use super::error::{RdbError, Result};
use super::primitives::Writer;

/// Length of the file header (magic + version digits).
pub const HEADER_LEN: usize = 9;

/// An RDB format version number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RdbVersion(pub u16);

/// Which numbering of type ids and opcodes a version belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// RDB 1..=11: one format, written by Redis up to 7.2 and by Valkey up to 8.1.
    Common,
    /// RDB 12..=79: Redis 7.4 and later (hash-field TTL types 22–25, stream v4/v5, KEY_META…).
    Redis,
    /// RDB 80 and later: Valkey 9 (`VALKEY` magic, HASH_2 as type 22, SLOT_IMPORT…).
    Valkey,
}

impl RdbVersion {
    /// Redis 2.6 – 3.0.
    pub const REDIS_2_6: RdbVersion = RdbVersion(6);
    /// Redis 3.2: quicklists, AUX fields.
    pub const REDIS_3_2: RdbVersion = RdbVersion(7);
    /// Redis 4.0: 64-bit lengths, ZSET_2, modules.
    pub const REDIS_4_0: RdbVersion = RdbVersion(8);
    /// Redis 5.0, 6.0, 6.2: streams.
    pub const REDIS_5_0: RdbVersion = RdbVersion(9);
    /// Redis 7.0: listpacks.
    pub const REDIS_7_0: RdbVersion = RdbVersion(10);
    /// Redis 7.2 and Valkey 7.2 – 8.1: set listpacks, stream v3.
    pub const REDIS_7_2: RdbVersion = RdbVersion(11);
    /// Redis 7.4 – 8.4: hash-field expiration, SLOT_INFO.
    pub const REDIS_7_4: RdbVersion = RdbVersion(12);
    /// Redis 8.6: stream v4, KEY_META.
    pub const REDIS_8_6: RdbVersion = RdbVersion(13);
    /// Redis 8.8: stream v5, arrays.
    pub const REDIS_8_8: RdbVersion = RdbVersion(14);
    /// Valkey 9.0 and 9.1.
    pub const VALKEY_9_0: RdbVersion = RdbVersion(80);

    /// The first version of the Valkey range (and of the `VALKEY` magic).
    pub const FIRST_VALKEY: u16 = 80;
    /// The last version both servers agree on.
    pub const LAST_COMMON: u16 = 11;

    /// The number.
    pub fn get(self) -> u16 {
        self.0
    }

    /// The dialect of this version's type ids and opcodes.
    pub fn dialect(self) -> Dialect {
        match self.0 {
            0..=Self::LAST_COMMON => Dialect::Common,
            v if v < Self::FIRST_VALKEY => Dialect::Redis,
            _ => Dialect::Valkey,
        }
    }

    /// True for Valkey's own range (80 and up).
    pub fn is_valkey(self) -> bool {
        self.dialect() == Dialect::Valkey
    }

    /// The 9-byte header of a file of this version: `REDIS0011`, `VALKEY080`, ...
    pub fn header(self) -> Result<[u8; HEADER_LEN]> {
        let text = match self.0 {
            0 => None,
            v if v < Self::FIRST_VALKEY => Some(format!("REDIS{v:04}")),
            v if v <= 999 => Some(format!("VALKEY{v:03}")),
            _ => None,
        };
        let text =
            text.ok_or_else(|| RdbError::too_large("RDB header version", self.0 as u64, 999))?;
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(text.as_bytes());
        Ok(header)
    }
}

impl fmt::Display for RdbVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dialect = match self.dialect() {
            Dialect::Common => "Redis/Valkey",
            Dialect::Redis => "Redis",
            Dialect::Valkey => "Valkey",
        };
        write!(f, "RDB {} ({dialect})", self.0)
    }
}

/// Reads the 9-byte header at the start of `bytes` and returns the version.
///
/// Accepts `REDIS` + 4 digits for versions 1..=79 and `VALKEY` + 3 digits for 80 and up, the
/// combinations real servers write. (Whether a given server *loads* that version is a separate
/// question, answered by its own RDB version.)
pub fn parse_header(bytes: &[u8]) -> Result<RdbVersion> {
    const CTX: &str = "RDB header";
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(RdbError::truncated(
            0,
            CTX,
            HEADER_LEN as u64,
            bytes.len() as u64,
        ));
    };
    let (digits, valkey) = if let Some(d) = header.strip_prefix(b"REDIS") {
        (d, false)
    } else if let Some(d) = header.strip_prefix(b"VALKEY") {
        (d, true)
    } else {
        return Err(RdbError::invalid(
            0,
            CTX,
            format!(
                "magic {:?} is neither REDIS nor VALKEY",
                String::from_utf8_lossy(header)
            ),
        ));
    };
    let digits_at = (HEADER_LEN - digits.len()) as u64;
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(RdbError::invalid(
            digits_at,
            CTX,
            format!(
                "version {:?} is not a number",
                String::from_utf8_lossy(digits)
            ),
        ));
    }
    let version = digits.iter().fold(0u16, |v, d| v * 10 + (d - b'0') as u16);
    let version = RdbVersion(version);
    let ok = match (valkey, version.0) {
        (_, 0) => false,
        (false, v) => v < RdbVersion::FIRST_VALKEY,
        (true, v) => v >= RdbVersion::FIRST_VALKEY,
    };
    if !ok {
        return Err(RdbError::invalid(
            digits_at,
            CTX,
            format!(
                "version {} does not go with the {} magic",
                version.0,
                if valkey { "VALKEY" } else { "REDIS" }
            ),
        ));
    }
    Ok(version)
}

/// Writes the header of a file of `version`.
pub fn write_header(w: &mut Writer, version: RdbVersion) -> Result<()> {
    w.write_bytes(&version.header()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(parse_header(b"REDIS0011").unwrap(), RdbVersion(11));
        assert_eq!(
            parse_header(b"REDIS0009\xfa...").unwrap(),
            RdbVersion::REDIS_5_0
        );
        assert_eq!(parse_header(b"VALKEY080").unwrap(), RdbVersion::VALKEY_9_0);
        assert_eq!(&RdbVersion(12).header().unwrap(), b"REDIS0012");
        assert_eq!(&RdbVersion(81).header().unwrap(), b"VALKEY081");
        let mut w = Writer::new();
        write_header(&mut w, RdbVersion(6)).unwrap();
        assert_eq!(w.as_slice(), b"REDIS0006");
        assert!(RdbVersion(0).header().is_err());
        assert!(RdbVersion(1000).header().is_err());
        for v in 1..=999 {
            let h = RdbVersion(v).header().unwrap();
            assert_eq!(parse_header(&h).unwrap(), RdbVersion(v));
        }
    }

    #[test]
    fn bad_headers() {
        assert!(parse_header(b"REDIS00").unwrap_err().is_truncated());
        let e = parse_header(b"RADIS0011").unwrap_err();
        assert_eq!(e.offset(), Some(0));
        let e = parse_header(b"REDIS00x1").unwrap_err();
        assert_eq!(e.offset(), Some(5));
        assert!(parse_header(b"REDIS0000").is_err());
        assert!(parse_header(b"REDIS0080").is_err());
        assert!(parse_header(b"VALKEY011").is_err());
        assert!(parse_header(b"VALKEY-80").is_err());
    }

    #[test]
    fn dialects() {
        assert_eq!(RdbVersion(9).dialect(), Dialect::Common);
        assert_eq!(RdbVersion(11).dialect(), Dialect::Common);
        assert_eq!(RdbVersion(12).dialect(), Dialect::Redis);
        assert_eq!(RdbVersion(79).dialect(), Dialect::Redis);
        assert_eq!(RdbVersion(80).dialect(), Dialect::Valkey);
        assert!(RdbVersion(80).is_valkey());
        assert!(!RdbVersion(14).is_valkey());
        assert_eq!(RdbVersion(80).to_string(), "RDB 80 (Valkey)");
        assert_eq!(RdbVersion(11).to_string(), "RDB 11 (Redis/Valkey)");
        assert!(RdbVersion::REDIS_7_4 > RdbVersion::REDIS_7_2);
    }
}
