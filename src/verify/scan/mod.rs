//! The two passes of a verify, each on a thread of its own with its own connections.
//!
//! * **Source pass** ([`source_pass`]): a scanner thread walks the source with
//!   `SCAN … COUNT 1000` and hands pages over a bounded channel; the comparing thread keeps up
//!   to `DEPTH` (3) batches in flight on *both* servers. Mode full: per page one `MGET` of its
//!   keys (plus `PTTL` per key on a side whose db holds keys with a TTL); strings equal on both
//!   sides are settled there, and the rest of the page (not a string, missing, different) is
//!   sent at once, behind the pages in flight, as a `DUMP` + `PTTL` batch; identical payloads,
//!   or payloads that decode to the same value (`dump.rs`), settle a key; what is left is
//!   compared with commands (`compare.rs`), which also writes the detail. Modes keys and
//!   length: `TYPE` per key (+ `PTTL`), then a batch of length commands for the keys whose
//!   types agree, the same way.
//! * **Target pass** ([`target_digest`]): `SCAN` the target and digest its key set
//!   ([`KeySetDigest`]). When that equals the digest of the keys the source pass found on both
//!   sides, the target has no extra key. Otherwise [`target_pass`] runs after both passes:
//!   `SCAN` the target again, one `EXISTS k1 … kn` on the source per page (key by key only for
//!   a page with a shortfall).
//!
//! Neither pass keeps keys beyond the pages in flight, except the differences (at most
//! [`MAX_CANDIDATES`] per pass; beyond that they are only counted), so memory stays bounded
//! whatever the size of the dataset.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::client::{Conn, Reply, VerifyError};
use super::compare::{self, CompareOpts, Diff, DiffKind, Mode, Outcome};
use super::dump;
use super::filter::KeyFilter;

mod source;
mod target;
pub use source::*;
pub use target::*;

#[cfg(test)]
mod tests;

/// Differences kept per pass for the re-check rounds; more are counted, not listed.
pub const MAX_CANDIDATES: usize = 100_000;

/// A difference seen in a pass, before the re-checks.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub source_db: Option<u32>,
    pub target_db: u32,
    pub key: Vec<u8>,
    pub diff: Diff,
}

/// What one pass found.
#[derive(Debug, Default)]
pub struct PassResult {
    /// Keys compared, by type.
    pub checked: BTreeMap<String, u64>,
    pub candidates: Vec<Candidate>,
    /// Differences beyond [`MAX_CANDIDATES`] (not listed, not re-checked), by kind.
    pub overflow: BTreeMap<DiffKind, u64>,
    /// Per target db: a [`KeySetDigest`] of the keys seen on both sides (source pass) or of
    /// the target's keys (target pass's quick scan).
    pub key_sets: BTreeMap<u32, KeySetDigest>,
}

/// An order-independent digest of a set of keys: their number and the wrapping sum of a 64-bit
/// hash of each. The source pass adds every key it found on both sides, the target pass every
/// key of the target: equal digests mean the target has no key the source lacks (a key only
/// on the target would add its hash to one side only). Unequal digests (an extra key, a key
/// deleted meanwhile, a key `SCAN` returned twice) send the target pass through the exact
/// check, `EXISTS` on the source for every target key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeySetDigest {
    pub count: u64,
    pub sum: u64,
}

impl KeySetDigest {
    pub fn add(&mut self, key: &[u8]) {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(key);
        self.count += 1;
        self.sum = self.sum.wrapping_add(h);
    }
}

impl PassResult {
    fn count(&mut self, key_type: &str) {
        match self.checked.get_mut(key_type) {
            Some(n) => *n += 1,
            None => {
                self.checked.insert(key_type.to_string(), 1);
            }
        }
    }

    /// `key` exists on both sides (whether equal or not).
    fn on_both(&mut self, tdb: u32, key: &[u8]) {
        self.key_sets.entry(tdb).or_default().add(key);
    }

    fn found(&mut self, source_db: Option<u32>, target_db: u32, key: &[u8], diff: Diff) {
        if self.candidates.len() < MAX_CANDIDATES {
            self.candidates.push(Candidate {
                source_db,
                target_db,
                key: key.to_vec(),
                diff,
            });
        } else {
            *self.overflow.entry(diff.kind).or_default() += 1;
        }
    }
}

/// Live counters for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub source_keys: AtomicU64,
    pub target_keys: AtomicU64,
    /// Set to stop both passes early.
    pub stop: AtomicBool,
}

/// Settings of a pass.
#[derive(Debug, Clone)]
pub struct PassOpts {
    pub compare: CompareOpts,
    pub filter: KeyFilter,
    /// `SCAN … COUNT`.
    pub scan_count: usize,
    /// A cluster side: only the keys whose slot is in this set (the slots a pair of nodes
    /// shares, see `verify::topology`); `None`: every key.
    pub slots: Option<Arc<crate::cluster::SlotSet>>,
    /// One key per multi-key command (`MGET k`, `EXISTS k`): a cluster refuses the keys of
    /// several slots in one command (`CROSSSLOT`).
    pub per_key: bool,
}

impl PassOpts {
    /// True when `key` belongs to this pass's slots.
    pub fn wants_slot(&self, key: &[u8]) -> bool {
        self.slots.as_ref().is_none_or(|s| s.contains_key(key))
    }
}

/// One page of `SCAN`: next cursor and keys.
fn scan_page(conn: &Conn, r: Reply) -> Result<(Vec<u8>, Vec<Reply>), VerifyError> {
    let mut it = match r {
        Reply::Array(a) if a.len() == 2 => a.into_iter(),
        Reply::Error(e) => return Err(conn.refused(&[b"SCAN"], e)),
        other => return Err(conn.proto(format!("SCAN answered {}", other.show()))),
    };
    match (it.next(), it.next()) {
        (Some(Reply::Bulk(cursor)), Some(Reply::Array(keys))) => Ok((cursor, keys)),
        _ => Err(conn.proto("malformed SCAN reply".into())),
    }
}

fn pttl(conn: &Conn, r: Reply) -> Result<i64, VerifyError> {
    match r {
        Reply::Int(i) => Ok(i),
        Reply::Error(e) => Err(conn.refused(&[b"PTTL"], e)),
        other => Err(conn.proto(format!("PTTL answered {}", other.show()))),
    }
}
