//! Slots moving on a cluster source during the sync: the links' shared table of which link
//! owns each key, and the wait that orders one link's writes after another's (see
//! ARCHITECTURE.md, *Clusters*, *A slot moving on the source*).
//!
//! **What the streams carry.** `redis-cli --cluster reshard` moves a slot's keys with
//! `MIGRATE` on the exporting master A: A sends `RESTORE-ASKING k …` to the importing master B,
//! waits for B's `OK`, then deletes `k` and propagates `DEL k` (one `DEL` of the batch's keys).
//! Meanwhile A is blocked: it runs no other command from the first `RESTORE` to the `DEL`. So
//! on the source, for a key `k`: A's writes → B's `RESTORE` → A's `DEL` → B's writes (a key
//! created on B through `ASK` while the slot migrates has no `RESTORE`: A's writes, if any,
//! all precede it). A's stream carries A's part, B's stream B's part, read by two links with
//! no common order, into one target: applied as read, A's late `DEL` after B's `RESTORE`
//! loses the key, A's late `INCR` after B's adds twice.
//!
//! **The rule (the importer waits, the exporter never does).** Every op a link reads on a
//! key is checked against the key's owner in [`Owners`] (the slot's link at start; the link
//! a key or a slot was handed to since). The link's own key: applied at once (one CRC16 and
//! one atomic load per key; no lock while no key of the slot was handed over). A key another
//! link A owns ([`Settler::settle`]):
//! 1. B asks A's master `EXISTS k` then `INFO replication` on a kept connection: A answers
//!    only after any `MIGRATE` it was running, so its `master_repl_offset` O is past the
//!    `DEL` of every key it handed over before B read its op.
//! 2. B waits until A's link has **applied** its stream up to O (A streaming, its target
//!    confirmed offset ≥ O): every op A had on `k` — its writes and the migration's `DEL` —
//!    is on the target before B's op.
//! 3. `k` is B's from then on (a key override); when A answered `-MOVED` the whole slot has
//!    left A, and the slot is B's (its overrides are dropped).
//!
//! So per key the target applies A's ops (the migration's `DEL` included, applied as any
//! delete) and then B's `RESTORE` and later writes: the source's order. The exporter never
//! waits: a link waits only for links whose slots it receives, so a reshard in one
//! direction cannot deadlock; two slots moving in opposite directions between the same two
//! links at once, each link behind on the other's event, wait on each other until the
//! deadline (an error: the link's run restarts from its stored position). The same wait
//! covers a snapshot: a key of B's RDB in A's slot (moved before B's RDB was made) is
//! loaded once A has applied past its delete.
//!
//! **A slot that left a master for good** (A answered `-MOVED`): A's `DEL`/`UNLINK`s on it
//! past O can only be its clean-up of the slot (below): recorded in [`Owners`], not applied;
//! a slot coming back to A clears the record.
//!
//! **Valkey 9 atomic slot migration** (`CLUSTER MIGRATESLOTS`): the importer B's stream
//! carries `CLUSTER SYNCSLOTS ESTABLISH … NAME <job> SLOTSRANGE a b`, then a copy of the
//! slots (the exporter's data as `SET`/`RESTORE`… and the writes it forwarded, which A's own
//! stream carries too), then `CLUSTER SYNCSLOTS … FINISH STATE SUCCESS NAME <job>` at the
//! handover; A's stream carries, after the handover and without a marker, one `UNLINK` per
//! key of the slots. B's link holds the copy ([`Settler::start_import`], [`Settler::hold`]);
//! at `FINISH` ([`Settler::finish_import`]) it reads A's offset O (past the handover),
//! records that A's later ops on the slots are clean-up, makes the slots its own, waits
//! until A's link applied up to O, and the applier then replaces the slots' keys on the
//! target by the copy. A's clean-up before O is undone by the copy; after O it is skipped.
//!
//! A standalone source has no [`Settler`]: its path is untouched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{Info, Kept, Value};
use crate::cluster::{SLOTS, Slot, slot};
use crate::config::RedisUrl;
use crate::sync::engine::SyncProgress;
use crate::sync::phase::SyncPhase;

/// How long a link waits for another link that makes no progress.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Why a link could not order an op after another link's.
#[derive(Debug, thiserror::Error)]
pub enum TransitError {
    #[error(
        "key '{key}' came from the shard of {from}, whose master cannot be asked its offset ({why}); the link starts again from its stored position"
    )]
    Unreachable {
        key: String,
        from: String,
        why: String,
    },
    #[error(
        "key '{key}' came from the shard of {from}, whose link made no progress for {secs} s (it is at offset {at}, {need} needed): two slots moving both ways at once, or that link is stuck; the link starts again from its stored position"
    )]
    Stalled {
        key: String,
        from: String,
        secs: u64,
        at: u64,
        need: u64,
    },
    #[error("stopped while waiting for the link of {from}")]
    Stopped { from: String },
}

/// One link as the others see it.
pub struct LinkState {
    /// Its master (asked for its offset by the links receiving its keys).
    pub url: RedisUrl,
    /// `shard 0-5460 127.0.0.1:7000`, for messages.
    pub label: String,
    /// Its phase and applied offset.
    pub progress: Arc<SyncProgress>,
}

/// Which link owns each key: by slot (the map at start, then slots handed over), and per key
/// for keys handed over while their slot was migrating. Shared by the links of one sync.
pub struct Owners {
    slot_owner: Box<[AtomicU8]>,
    /// Overrides in each slot (no lock taken for a slot with none).
    slot_keys: Box<[AtomicU32]>,
    keys: Mutex<HashMap<Vec<u8>, u8>>,
    links: Vec<LinkState>,
    /// Slots handed over by a Valkey 9 atomic slot migration: slot → (exporting link, its
    /// master's offset after the handover). The exporter's ops on the slot past that offset
    /// are its clean-up `UNLINK`s: not applied.
    exported: Mutex<HashMap<(Slot, usize), u64>>,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners")
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Owners {
    /// `owner_of(slot)`: the link serving each slot at start (at most 255 links).
    pub fn new(links: Vec<LinkState>, owner_of: impl Fn(Slot) -> usize) -> Owners {
        Owners {
            slot_owner: (0..SLOTS as Slot)
                .map(|s| AtomicU8::new(owner_of(s).min(u8::MAX as usize) as u8))
                .collect(),
            slot_keys: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            keys: Mutex::new(HashMap::new()),
            links,
            exported: Mutex::new(HashMap::new()),
        }
    }

    /// The link that owns `key` now.
    pub fn owner(&self, key: &[u8]) -> usize {
        let s = slot(key) as usize;
        if self.slot_keys[s].load(Ordering::Acquire) > 0
            && let Some(o) = self.keys.lock().ok().and_then(|m| m.get(key).copied())
        {
            return o as usize;
        }
        self.slot_owner[s].load(Ordering::Acquire) as usize
    }

    fn give_key(&self, key: &[u8], to: usize) {
        let Ok(mut m) = self.keys.lock() else { return };
        if m.insert(key.to_vec(), to as u8).is_none() {
            self.slot_keys[slot(key) as usize].fetch_add(1, Ordering::AcqRel);
        }
    }

    fn give_slot(&self, s: Slot, to: usize) {
        self.slot_owner[s as usize].store(to as u8, Ordering::Release);
        if self.slot_keys[s as usize].load(Ordering::Acquire) == 0 {
            return;
        }
        let Ok(mut m) = self.keys.lock() else { return };
        // The slot's overrides that name the slot's new owner say nothing more.
        let before = m.len();
        m.retain(|k, o| slot(k) != s || *o as usize != to);
        let dropped = (before - m.len()) as u32;
        self.slot_keys[s as usize].fetch_sub(dropped, Ordering::AcqRel);
    }

    /// When `link` handed `key`'s slot over by an atomic slot migration: its master's offset
    /// after the handover.
    pub fn exported_after(&self, link: usize, key: &[u8]) -> Option<u64> {
        let m = self.exported.lock().ok()?;
        if m.is_empty() {
            return None;
        }
        m.get(&(slot(key), link)).copied()
    }

    /// `link` owns `s` again (a slot that came back): its ops there are its own again.
    fn unexport(&self, s: Slot, link: usize) {
        if let Ok(mut m) = self.exported.lock()
            && !m.is_empty()
        {
            m.remove(&(s, link));
        }
    }

    /// The links (index = link number).
    pub fn links(&self) -> &[LinkState] {
        &self.links
    }

    /// Slots whose owner is `link` now.
    pub fn slots_of(&self, link: usize) -> crate::cluster::SlotSet {
        let mut ranges: Vec<(Slot, Slot)> = Vec::new();
        for s in 0..SLOTS as Slot {
            if self.slot_owner[s as usize].load(Ordering::Acquire) as usize != link {
                continue;
            }
            match ranges.last_mut() {
                Some((_, b)) if *b + 1 == s => *b = s,
                _ => ranges.push((s, s)),
            }
        }
        crate::cluster::SlotSet::from_ranges(&ranges)
    }
}

/// One link's side of the table: its number, and kept connections to the other masters.
pub struct Settler {
    pub me: usize,
    owners: Arc<Owners>,
    conns: Vec<Kept>,
    /// Ops that waited for another link (for the log and tests).
    pub waits: u64,
    /// Test only (`CUTOVER_TEST_LINK_DELAY=<link>:<ms>,…`): this link sleeps so long before
    /// each read of stream commands, to make it lag behind the others (the tests of
    /// `tests/sync_cluster_reshard.rs` widen the window where keys moving between shards
    /// are read out of order).
    pub test_delay: Option<Duration>,
    /// Valkey 9 atomic slot migrations into this link's master, by job name: the slots and
    /// the copy the stream carries of them (held until the handover).
    imports: HashMap<String, Import>,
}

/// A Valkey 9 atomic slot migration seen in an importing master's stream
/// (`CLUSTER SYNCSLOTS ESTABLISH … SLOTSRANGE a b …` until `CLUSTER SYNCSLOTS FINISH`).
pub struct Import {
    pub slots: crate::cluster::SlotSet,
    /// The stream commands on those slots since `ESTABLISH`: the exporter's data (`SET`,
    /// `RESTORE`… per key) and the writes it forwarded. Its own stream has them too.
    pub held: Vec<crate::sync::replica::StreamCommand>,
    pub bytes: usize,
}

/// The most a link holds of atomic slot migrations' copies (bytes of stream commands).
pub const MAX_HELD_BYTES: usize = 1 << 30;

impl Settler {
    pub fn new(me: usize, owners: Arc<Owners>) -> Settler {
        let conns = owners.links.iter().map(|_| Kept::default()).collect();
        let test_delay = std::env::var("CUTOVER_TEST_LINK_DELAY")
            .ok()
            .and_then(|v| {
                v.split(',').find_map(|e| {
                    let (l, ms) = e.split_once(':')?;
                    (l.trim().parse::<usize>().ok()? == me)
                        .then(|| ms.trim().parse::<u64>().ok())
                        .flatten()
                })
            })
            .map(Duration::from_millis);
        Settler {
            me,
            owners,
            conns,
            waits: 0,
            test_delay,
            imports: HashMap::new(),
        }
    }

    /// True when `key` is this link's: its ops apply at once.
    pub fn is_mine(&self, key: &[u8]) -> bool {
        self.owners.owner(key) == self.me
    }

    pub fn owners(&self) -> &Arc<Owners> {
        &self.owners
    }

    /// `CLUSTER SYNCSLOTS ESTABLISH SOURCE <id> NAME <job> SLOTSRANGE a b [a b …]` in this
    /// link's stream: its master starts importing those slots.
    pub fn start_import(&mut self, args: &[&[u8]]) {
        let text = |a: &[u8]| String::from_utf8_lossy(a).to_ascii_uppercase();
        let mut job = String::new();
        let mut ranges = Vec::new();
        let mut i = 3;
        while i < args.len() {
            match text(args[i]).as_str() {
                "NAME" => {
                    job = String::from_utf8_lossy(args.get(i + 1).copied().unwrap_or(b"")).into();
                    i += 2;
                }
                "SLOTSRANGE" => {
                    i += 1;
                    while i + 1 < args.len() {
                        let n = |a: &[u8]| std::str::from_utf8(a).ok()?.parse::<Slot>().ok();
                        match (n(args[i]), n(args[i + 1])) {
                            (Some(a), Some(b)) => ranges.push((a, b)),
                            _ => break,
                        }
                        i += 2;
                    }
                }
                _ => i += 2,
            }
        }
        tracing::info!(job = %job, ?ranges, "an atomic slot migration into this link's master starts: its copy of the slots is held until the handover");
        self.imports.insert(
            job,
            Import {
                slots: crate::cluster::SlotSet::from_ranges(&ranges),
                held: Vec::new(),
                bytes: 0,
            },
        );
    }

    /// True when `key` is in a slot this link's master is importing (its ops are held).
    pub fn importing(&self, key: &[u8]) -> bool {
        !self.imports.is_empty() && self.imports.values().any(|i| i.slots.contains_key(key))
    }

    /// Holds a stream command on importing slots until the handover; false past the bound.
    pub fn hold(&mut self, key: &[u8], cmd: &crate::sync::replica::StreamCommand) -> bool {
        let Some(i) = self
            .imports
            .values_mut()
            .find(|i| i.slots.contains_key(key))
        else {
            return false;
        };
        i.bytes += cmd.wire.len();
        i.held.push(cmd.clone());
        i.bytes <= MAX_HELD_BYTES
    }

    /// `CLUSTER SYNCSLOTS FINISH STATE <state> NAME <job> …`: on `SUCCESS` the slots are
    /// this link's master's from the handover. Records the exporter's offset after it (its
    /// later ops on the slots are its clean-up), makes the slots this link's, waits until
    /// the exporter applied up to that offset, and returns the slots and the held copy (the
    /// caller clears the slots on the target and applies the copy). `None`: a failed or
    /// cancelled migration (the exporter keeps the slots; its stream has everything), or an
    /// unknown job (its `ESTABLISH` was before this run: see ARCHITECTURE.md).
    pub fn finish_import(
        &mut self,
        args: &[&[u8]],
        stop: &AtomicBool,
        timeout: Duration,
    ) -> Result<Option<Import>, TransitError> {
        let text = |a: &[u8]| String::from_utf8_lossy(a).to_string();
        let mut job = String::new();
        let mut state = String::new();
        let mut i = 3;
        while i + 1 < args.len() {
            match text(args[i]).to_ascii_uppercase().as_str() {
                "NAME" => job = text(args[i + 1]),
                "STATE" => state = text(args[i + 1]).to_ascii_uppercase(),
                _ => {}
            }
            i += 2;
        }
        let Some(import) = self.imports.remove(&job) else {
            tracing::warn!(job = %job, "an atomic slot migration ends in the stream without its start: the slots' copy was not seen by this run");
            return Ok(None);
        };
        if state != "SUCCESS" {
            tracing::info!(job = %job, state = %state, "an atomic slot migration did not hand the slots over: its copy is dropped");
            return Ok(None);
        }
        let Some(first) = (0..SLOTS as Slot).find(|s| import.slots.contains(*s)) else {
            return Ok(None);
        };
        let from = self.owners.slot_owner[first as usize].load(Ordering::Acquire) as usize;
        if from == self.me {
            return Ok(Some(import));
        }
        let Some(link) = self.owners.links.get(from) else {
            return Ok(Some(import));
        };
        let asked = Instant::now();
        let after = loop {
            let r =
                self.conns[from].with(&link.url, timeout, |c| c.query(&[b"INFO", b"replication"]));
            let why = match r {
                Ok(v) => match Info::from_value(&v).and_then(|i| i.master_repl_offset()) {
                    Some(o) => break o,
                    None => "INFO replication has no master_repl_offset".to_string(),
                },
                Err(e) => e.to_string(),
            };
            if asked.elapsed() > timeout.max(Duration::from_secs(10)) {
                return Err(TransitError::Unreachable {
                    key: format!("(slots of migration {job})"),
                    from: link.label.clone(),
                    why,
                });
            }
            if stop.load(Ordering::Acquire) {
                return Err(TransitError::Stopped {
                    from: link.label.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Ok(mut m) = self.owners.exported.lock() {
            for s in 0..SLOTS as Slot {
                if import.slots.contains(s) {
                    m.insert((s, from), after);
                    m.remove(&(s, self.me));
                    self.owners.give_slot(s, self.me);
                }
            }
        }
        self.wait_applied(from, after, "(the migrated slots)", stop)?;
        tracing::info!(job = %job, from = %link.label, after, "an atomic slot migration handed its slots over: the exporter applied up to the handover");
        Ok(Some(import))
    }

    /// Makes `key` this link's: once the link owning it has applied every op it had on it
    /// (see the module doc). Returns at once for a key of this link.
    pub fn settle(
        &mut self,
        key: &[u8],
        stop: &AtomicBool,
        timeout: Duration,
    ) -> Result<(), TransitError> {
        let from = self.owners.owner(key);
        if from == self.me {
            return Ok(());
        }
        let Some(link) = self.owners.links.get(from) else {
            // An owner number without a link (a slot no link served): nothing to wait for.
            self.owners.give_key(key, self.me);
            return Ok(());
        };
        let show = crate::sync::target::show_key(key);
        let asked = Instant::now();
        let (need, left) = loop {
            let r = self.conns[from].with(&link.url, timeout, |c| {
                let exists = c.query(&[b"EXISTS", key])?;
                let info = c.query(&[b"INFO", b"replication"])?;
                Ok((exists, info))
            });
            match r {
                Ok((exists, info)) => {
                    let offset = Info::from_value(&info).and_then(|i| i.master_repl_offset());
                    if let Some(offset) = offset {
                        let left = matches!(&exists, Value::Error(e) if e.starts_with("MOVED"));
                        break (offset, left);
                    }
                    if asked.elapsed() > timeout.max(Duration::from_secs(10)) {
                        return Err(TransitError::Unreachable {
                            key: show,
                            from: link.label.clone(),
                            why: "INFO replication has no master_repl_offset".into(),
                        });
                    }
                }
                Err(e) => {
                    if asked.elapsed() > timeout.max(Duration::from_secs(10)) {
                        return Err(TransitError::Unreachable {
                            key: show,
                            from: link.label.clone(),
                            why: e.to_string(),
                        });
                    }
                }
            }
            if stop.load(Ordering::Acquire) {
                return Err(TransitError::Stopped {
                    from: link.label.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let waited = self.wait_applied(from, need, &show, stop)?;
        if waited {
            self.waits += 1;
        }
        if left {
            // The slot left A's master for good: A's ops on it past `need` can only be its
            // clean-up of the slot (a Valkey 9 atomic slot migration deletes the slot's keys
            // after the handover): not applied.
            if let Ok(mut m) = self.owners.exported.lock() {
                m.insert((slot(key), from), need);
            }
            self.owners.give_slot(slot(key), self.me);
        } else {
            self.owners.give_key(key, self.me);
        }
        self.owners.unexport(slot(key), self.me);
        tracing::debug!(key = %show, from = %link.label, need, left, "key handed over between source links");
        Ok(())
    }

    /// Waits until link `from` streams and has applied its stream up to `need`; true if it
    /// had to wait.
    fn wait_applied(
        &self,
        from: usize,
        need: u64,
        what: &str,
        stop: &AtomicBool,
    ) -> Result<bool, TransitError> {
        let Some(link) = self.owners.links.get(from) else {
            return Ok(false);
        };
        let applied = |p: &SyncProgress| {
            if p.phase() == SyncPhase::Streaming {
                Some(p.applied_offset.load(Ordering::Acquire))
            } else {
                None
            }
        };
        let mut last = applied(&link.progress);
        let mut moved_at = Instant::now();
        let mut pause = Duration::from_micros(200);
        let mut waited = false;
        while applied(&link.progress).is_none_or(|a| a < need) {
            waited = true;
            if stop.load(Ordering::Acquire) {
                return Err(TransitError::Stopped {
                    from: link.label.clone(),
                });
            }
            let now = applied(&link.progress);
            if now != last {
                last = now;
                moved_at = Instant::now();
            } else if moved_at.elapsed() > STALL_LIMIT {
                return Err(TransitError::Stalled {
                    key: what.to_string(),
                    from: link.label.clone(),
                    secs: STALL_LIMIT.as_secs(),
                    at: now.unwrap_or(0),
                    need,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        Ok(waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_by_slot_then_key_then_slot() {
        let owners = Owners::new(Vec::new(), |s| usize::from(s >= 8192));
        let k = b"foo"; // slot 12182
        assert_eq!(owners.owner(k), 1);
        owners.give_key(k, 0);
        assert_eq!(owners.owner(k), 0);
        assert_eq!(owners.owner(b"{foo}x"), 1);
        owners.give_slot(slot(k), 0);
        assert_eq!(owners.owner(b"{foo}x"), 0);
        assert_eq!(
            owners.slot_keys[slot(k) as usize].load(Ordering::Relaxed),
            0
        );
        owners.give_slot(slot(k), 1);
        assert_eq!(owners.owner(k), 1);
        assert!(owners.slots_of(0).contains(0));
        assert!(!owners.slots_of(0).contains(slot(k)));
    }
}
