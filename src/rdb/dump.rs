//! The DUMP payload: one value in RDB form, as `DUMP` returns it and `RESTORE` accepts it.
//!
//! ```text
//! <type byte><value body>      exactly as the value appears in an RDB file, without key,
//!                              expiry, LRU/LFU data or magic
//! <rdb version: u16 LE>        the RDB version of the server that wrote it (Valkey 9: 80)
//! <crc: u64 LE>                CRC-64/REDIS of every byte before it, version included
//! ```
//!
//! For example `DUMP` of the string `"123"` on Redis 7.2 (RDB 11) is
//! `00 c0 7b | 0b 00 | 21 3d ee 92 fd e5 8e 30`: type 0 (string), the integer-encoded string
//! 123, version 11, CRC.
//!
//! How servers check it (`verifyDumpPayload`):
//!
//! * Redis 3.2 and later refuse a payload whose version is **newer** than their own RDB
//!   version, or whose CRC does not match. Unlike in an RDB file, a CRC of 0 is **not** special.
//!   (Redis 2.6 – 3.0 required the exact version.)
//! * Valkey 8.1+ applies `rdb-version-check`: `strict` refuses versions above its own and the
//!   Redis-only range 12..=79; `relaxed` accepts any version and fails later on an unknown type.
//! * Redis 8.6+ may put a KEY_META block (opcode 243) before the type byte.
//!
//! So moving a payload to an older server means: if its value's type is known there, rewrite
//! the version and recompute the CRC ([`DumpPayload::retarget`]); otherwise the value itself
//! must be re-encoded first (e.g. a listpack hash into a ziplist or plain hash) and wrapped with
//! [`build_dump`].

use super::crc64::crc64;
use super::error::{RdbError, Result};
use super::version::RdbVersion;

/// Size of the footer: 2 bytes of version and 8 of CRC.
pub const FOOTER_LEN: usize = 10;

const CTX: &str = "DUMP payload";

/// A DUMP payload split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpPayload<'a> {
    /// The serialized value: type byte and body (on Redis 8.6+ possibly preceded by a KEY_META
    /// block).
    pub value: &'a [u8],
    /// The RDB version in the footer.
    pub version: RdbVersion,
    /// The CRC stored in the footer.
    pub crc: u64,
}

impl<'a> DumpPayload<'a> {
    /// Splits `payload` and verifies its CRC.
    pub fn parse(payload: &'a [u8]) -> Result<Self> {
        let dump = DumpPayload::parse_unchecked(payload)?;
        let covered = &payload[..payload.len() - 8];
        let computed = crc64(covered);
        if computed != dump.crc {
            return Err(RdbError::Checksum {
                offset: covered.len() as u64,
                context: CTX,
                stored: dump.crc,
                computed,
            });
        }
        Ok(dump)
    }

    /// Splits `payload` without verifying the CRC (as a server does with
    /// `DEBUG SET-SKIP-CHECKSUM-VALIDATION 1`).
    pub fn parse_unchecked(payload: &'a [u8]) -> Result<Self> {
        if payload.len() <= FOOTER_LEN {
            return Err(RdbError::truncated(
                0,
                CTX,
                FOOTER_LEN as u64 + 1,
                payload.len() as u64,
            ));
        }
        let (value, footer) = payload.split_at(payload.len() - FOOTER_LEN);
        let (version, crc) = footer.split_at(2);
        let version = u16::from_le_bytes([version[0], version[1]]);
        if version == 0 {
            return Err(RdbError::invalid(
                value.len() as u64,
                CTX,
                "RDB version 0 in the footer",
            ));
        }
        let mut crc_bytes = [0u8; 8];
        crc_bytes.copy_from_slice(crc);
        Ok(DumpPayload {
            value,
            version: RdbVersion(version),
            crc: u64::from_le_bytes(crc_bytes),
        })
    }

    /// The first byte of the value: its RDB type id (or the KEY_META opcode 243 on Redis 8.6+).
    pub fn type_byte(&self) -> u8 {
        // `parse_unchecked` guarantees at least one byte of value.
        self.value.first().copied().unwrap_or_default()
    }

    /// The same value with `version` in the footer and a fresh CRC. Only correct if the value's
    /// encoding is one that `version` knows.
    pub fn retarget(&self, version: RdbVersion) -> Vec<u8> {
        build_dump(self.value, version)
    }
}

/// Wraps a serialized value (type byte + body) into a DUMP payload of `version`.
pub fn build_dump(value: &[u8], version: RdbVersion) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + FOOTER_LEN);
    out.extend_from_slice(value);
    out.extend_from_slice(&version.0.to_le_bytes());
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
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

    /// Reference §4.5: DUMP of the string "123" for each footer version.
    const VECTORS: [(u16, &str); 6] = [
        (6, "00 c0 7b 06 00 de 0f 3b 61 f5 2f 5b 2a"),
        (9, "00 c0 7b 09 00 98 10 02 2d 54 fc 04 08"),
        (10, "00 c0 7b 0a 00 48 e2 53 e1 00 7a 67 b9"),
        (11, "00 c0 7b 0b 00 21 3d ee 92 fd e5 8e 30"),
        (12, "00 c0 7b 0c 00 83 94 67 21 fa 50 f9 f0"),
        (80, "00 c0 7b 50 00 87 c8 9a 70 9e 28 00 4d"),
    ];

    #[test]
    fn reference_vectors() {
        for (version, payload) in VECTORS {
            let payload = hex(payload);
            let dump = DumpPayload::parse(&payload).unwrap();
            assert_eq!(dump.value, [0x00, 0xc0, 0x7b]);
            assert_eq!(dump.type_byte(), 0);
            assert_eq!(dump.version, RdbVersion(version));
            assert_eq!(
                build_dump(&[0x00, 0xc0, 0x7b], RdbVersion(version)),
                payload
            );
        }
        let valkey = hex(VECTORS[5].1);
        let dump = DumpPayload::parse(&valkey).unwrap();
        assert!(dump.version.is_valkey());
        // Valkey 9 → Redis 7.2: same body, new footer.
        assert_eq!(dump.retarget(RdbVersion(11)), hex(VECTORS[3].1));
    }

    #[test]
    fn errors() {
        let mut payload = hex(VECTORS[3].1);
        payload[2] ^= 1;
        let e = DumpPayload::parse(&payload).unwrap_err();
        assert!(matches!(e, RdbError::Checksum { offset: 5, .. }), "{e}");
        assert!(DumpPayload::parse_unchecked(&payload).is_ok());
        // A zeroed CRC is not "no checksum" in DUMP.
        let mut payload = hex(VECTORS[3].1);
        payload[5..].fill(0);
        assert!(DumpPayload::parse(&payload).is_err());
        // Too short: the footer alone, or less.
        let footer_only = &hex(VECTORS[3].1)[3..];
        assert!(DumpPayload::parse(footer_only).unwrap_err().is_truncated());
        assert!(DumpPayload::parse(&[]).unwrap_err().is_truncated());
        // Version 0.
        let zero = build_dump(&[0], RdbVersion(0));
        assert!(DumpPayload::parse(&zero).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(value in proptest::collection::vec(any::<u8>(), 1..300), version in 1u16..200) {
            let payload = build_dump(&value, RdbVersion(version));
            let dump = DumpPayload::parse(&payload).unwrap();
            prop_assert_eq!(dump.value, &value[..]);
            prop_assert_eq!(dump.version, RdbVersion(version));
        }

        #[test]
        fn any_single_bit_flip_is_detected(
            value in proptest::collection::vec(any::<u8>(), 1..100),
            bit in any::<prop::sample::Index>(),
        ) {
            let mut payload = build_dump(&value, RdbVersion(11));
            let bit = bit.index(payload.len() * 8);
            payload[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(DumpPayload::parse(&payload).is_err());
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = DumpPayload::parse(&data);
        }
    }
}
