//! CRC-64/REDIS, the checksum of RDB files (RDB ≥ 5) and of DUMP payloads.
//!
//! The variant is the "Jones" CRC-64: polynomial `0xad93d23594c935a9` (reflected form
//! `0x95ac9329ac4bc9b5`), initial value 0, input and output reflected, no final XOR;
//! `crc64("123456789") = 0xe9c6d914c4b8d9ca`. (Redis' `crc64.c` header mentions an initial
//! value of all ones, but Redis always calls `crc64(0, ...)`, so the effective one is 0.)
//!
//! * An **RDB file** stores the CRC of every byte from the magic through the EOF opcode `0xFF`
//!   as a u64 little-endian trailer; a stored 0 means "written with `rdbchecksum no`" and
//!   loaders skip the check.
//! * A **DUMP payload** stores the CRC of everything before it (value and version footer), and
//!   there 0 is *not* special: see [`dump`](super::dump).
//!
//! The computation is the `crc` crate's `CRC_64_REDIS` with a 16-lane table (about 32 KiB, built
//! at compile time), fast enough for multi-gigabyte RDB streams.

use crc::{CRC_64_REDIS, Crc, Table};

static CRC: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&CRC_64_REDIS);

/// The CRC-64/REDIS of `data`, as Redis' `crc64(0, data, len)` computes it.
pub fn crc64(data: &[u8]) -> u64 {
    CRC.checksum(data)
}

/// An incremental CRC-64/REDIS, for data that arrives in pieces (an RDB file off a socket).
///
/// ```
/// use cutover::rdb::crc64::{Crc64, crc64};
/// let mut c = Crc64::new();
/// c.update(b"12345");
/// c.update(b"6789");
/// assert_eq!(c.value(), crc64(b"123456789"));
/// ```
#[derive(Clone)]
pub struct Crc64 {
    digest: crc::Digest<'static, u64, Table<16>>,
}

impl Crc64 {
    /// A checksum of no bytes yet (value 0).
    pub fn new() -> Self {
        Crc64 {
            digest: CRC.digest(),
        }
    }

    /// Continues a checksum whose value so far is `crc` (what [`Crc64::value`] or [`crc64`]
    /// returned for the preceding bytes).
    pub fn resume(crc: u64) -> Self {
        // The crate keeps the register of a reflected CRC bit-reversed and reverses the initial
        // value it is given; this variant's final step is the identity, so reversing here makes
        // the register equal to the finished value of the preceding bytes.
        Crc64 {
            digest: CRC.digest_with_initial(crc.reverse_bits()),
        }
    }

    /// Adds `data` to the checksum.
    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
    }

    /// The checksum of everything added so far (the digest stays usable).
    pub fn value(&self) -> u64 {
        self.digest.clone().finalize()
    }
}

impl Default for Crc64 {
    fn default() -> Self {
        Crc64::new()
    }
}

impl std::fmt::Debug for Crc64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crc64({:#018x})", self.value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bit-by-bit reference implementation straight from the definition (reflected form).
    fn reference(data: &[u8]) -> u64 {
        let mut crc = 0u64;
        for &b in data {
            crc ^= b as u64;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x95ac_9329_ac4b_c9b5
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn check_value() {
        assert_eq!(crc64(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
        assert_eq!(reference(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
        assert_eq!(crc64(b""), 0);
    }

    #[test]
    fn dump_vectors() {
        // Reference §4.5: DUMP of the string "123" (type 0, `c0 7b`) + version footer; the last
        // 8 bytes are the CRC (LE) of everything before them.
        let vectors: [(u16, [u8; 8]); 6] = [
            (6, [0xde, 0x0f, 0x3b, 0x61, 0xf5, 0x2f, 0x5b, 0x2a]),
            (9, [0x98, 0x10, 0x02, 0x2d, 0x54, 0xfc, 0x04, 0x08]),
            (10, [0x48, 0xe2, 0x53, 0xe1, 0x00, 0x7a, 0x67, 0xb9]),
            (11, [0x21, 0x3d, 0xee, 0x92, 0xfd, 0xe5, 0x8e, 0x30]),
            (12, [0x83, 0x94, 0x67, 0x21, 0xfa, 0x50, 0xf9, 0xf0]),
            (80, [0x87, 0xc8, 0x9a, 0x70, 0x9e, 0x28, 0x00, 0x4d]),
        ];
        for (version, crc) in vectors {
            let [lo, hi] = version.to_le_bytes();
            let covered = [0x00, 0xc0, 0x7b, lo, hi];
            assert_eq!(
                crc64(&covered),
                u64::from_le_bytes(crc),
                "version {version}"
            );
        }
    }

    #[test]
    fn resume_and_debug() {
        let head = crc64(b"1234");
        let mut c = Crc64::resume(head);
        c.update(b"56789");
        assert_eq!(c.value(), 0xe9c6_d914_c4b8_d9ca);
        assert_eq!(format!("{c:?}"), "Crc64(0xe9c6d914c4b8d9ca)");
        assert_eq!(Crc64::default().value(), 0);
    }

    proptest! {
        #[test]
        fn matches_reference_and_splits(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cut in any::<prop::sample::Index>(),
        ) {
            let whole = crc64(&data);
            prop_assert_eq!(whole, reference(&data));
            let cut = cut.index(data.len() + 1);
            let mut c = Crc64::new();
            c.update(&data[..cut]);
            let mid = c.value();
            c.update(&data[cut..]);
            prop_assert_eq!(c.value(), whole);
            let mut r = Crc64::resume(mid);
            r.update(&data[cut..]);
            prop_assert_eq!(r.value(), whole);
        }
    }
}
