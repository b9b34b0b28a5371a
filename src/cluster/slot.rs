//! The hash slot of a key: Redis Cluster splits the key space into 16384 slots, and a key's
//! slot is `CRC16(k) mod 16384`, with CRC-16/XMODEM (polynomial 0x1021, initial value 0, no
//! reflection) — the `crc` crate's `CRC_16_XMODEM`.
//!
//! **Hash tags.** When a key contains `{`, and a `}` follows it with at least one byte between
//! them, only the bytes between the *first* `{` and the first `}` after it are hashed, so that
//! `{user1000}.following` and `{user1000}.followers` share a slot. Otherwise the whole key is
//! hashed: `foo{}{bar}` (the first braces are empty) hashes all of `foo{}{bar}`, and
//! `foo{{bar}}zap` hashes `{bar` (the tag starts after the first `{` and ends at the first `}`).
//! This is `keyHashSlot` of the server's `cluster.c`; [`slot`] agrees with `CLUSTER KEYSLOT`
//! (checked against real servers in `tests/cluster_topology.rs`).

use crc::{CRC_16_XMODEM, Crc};

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

/// A hash slot, `0..16384`.
pub type Slot = u16;

const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// The bytes of `key` that are hashed: its hash tag, or the whole key.
pub fn hash_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|&b| b == b'}') {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

/// The slot of `key`, as `CLUSTER KEYSLOT` computes it.
pub fn slot(key: &[u8]) -> Slot {
    CRC16.checksum(hash_part(key)) & (SLOTS as u16 - 1)
}

/// A hash tag for `slot`: `{tag}anything` lands in that slot. The tag is the smallest
/// decimal number hashing to the slot (a table filled once, by one pass over the numbers until
/// every slot has one: about 170,000 CRCs).
pub fn tag_for(slot: Slot) -> u32 {
    static TAGS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; SLOTS];
        let mut left = SLOTS;
        let mut n = 0u32;
        while left > 0 {
            let s = self::slot(n.to_string().as_bytes()) as usize;
            if tags[s] == u32::MAX {
                tags[s] = n;
                left -= 1;
            }
            n += 1;
        }
        tags
    });
    tags[slot as usize % SLOTS]
}

/// A set of slots (a 16384-bit bitmap): the slots a node serves, or a pair of nodes shares.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet(Box<[u64; SLOTS / 64]>);

impl std::fmt::Debug for SlotSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotSet({} slots)", self.len())
    }
}

impl SlotSet {
    /// No slot.
    pub fn empty() -> SlotSet {
        SlotSet(Box::new([0; SLOTS / 64]))
    }

    /// Every slot in the inclusive `ranges`.
    pub fn from_ranges(ranges: &[(Slot, Slot)]) -> SlotSet {
        let mut s = SlotSet::empty();
        for &(a, b) in ranges {
            for x in a..=b.min(SLOTS as Slot - 1) {
                s.0[x as usize / 64] |= 1 << (x % 64);
            }
        }
        s
    }

    pub fn contains(&self, slot: Slot) -> bool {
        (slot as usize) < SLOTS && self.0[slot as usize / 64] & (1 << (slot % 64)) != 0
    }

    /// True when `key`'s slot is in the set.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.contains(self::slot(key))
    }

    /// The slots in both sets.
    pub fn intersection(&self, other: &SlotSet) -> SlotSet {
        let mut s = SlotSet::empty();
        for (i, w) in s.0.iter_mut().enumerate() {
            *w = self.0[i] & other.0[i];
        }
        s
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        // Values from redis-cli / the cluster specification.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b""), 0);
        assert_eq!(slot(b"123456789"), 0x31C3 & 16383); // the CRC-16/XMODEM check value
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(hash_part(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_part(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_part(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_part(b"{"), b"{");
        assert_eq!(hash_part(b"}{"), b"}{");
        assert_eq!(hash_part(b"a{b"), b"a{b");
    }

    #[test]
    fn slot_sets() {
        let a = SlotSet::from_ranges(&[(0, 99), (16000, 16383)]);
        let b = SlotSet::from_ranges(&[(50, 16100)]);
        assert_eq!(a.len(), 484);
        assert!(a.contains(0) && a.contains(16383) && !a.contains(100));
        let both = a.intersection(&b);
        assert_eq!(both.len(), 50 + 101);
        assert!(SlotSet::from_ranges(&[(1, 0)]).is_empty());
        assert!(a.contains_key(b"foo") == a.contains(12182));
    }

    #[test]
    fn every_slot_has_a_tag() {
        for s in 0..SLOTS as u16 {
            let tag = tag_for(s);
            assert_eq!(slot(format!("{{{tag}}}:position").as_bytes()), s);
        }
    }

    proptest! {
        #[test]
        fn slot_in_range_and_tag_wins(key in proptest::collection::vec(any::<u8>(), 0..64),
                                      tag in proptest::collection::vec(any::<u8>().prop_filter("no braces", |b| *b != b'{' && *b != b'}'), 1..16),
                                      suffix in proptest::collection::vec(any::<u8>(), 0..16)) {
            prop_assert!((slot(&key) as usize) < SLOTS);
            let mut k = key.iter().copied().filter(|b| *b != b'{').collect::<Vec<u8>>();
            k.push(b'{');
            k.extend_from_slice(&tag);
            k.push(b'}');
            k.extend_from_slice(&suffix);
            prop_assert_eq!(slot(&k), slot(&tag));
        }
    }
}
