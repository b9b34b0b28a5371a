//! Stream commands a link could not apply: the record that keeps such a loss from being
//! silent.
//!
//! A link writes into a primary as an ordinary client, so the side it writes to may refuse a
//! command its master's replica would have obeyed (`crate::command::obey`). What the rewrite
//! table cannot turn into an accepted form ends here:
//!
//! - **transient** refusals (`OOM`, `NOREPLICAS`, `BUSY`, `LOADING`…): the batch is not
//!   applied (the target refuses its position write too), the run fails and is started again
//!   from the stored position with back-off (`sync::retry`), in order, until the target takes
//!   it; [`Refusals::waiting`] says what the link waits for (shown in `status`);
//! - **permanent** ones (a syntax the target refuses, `WRONGTYPE`, an unknown command, a
//!   limit): the command is recorded here ([`Refusals::record`]). Under `cutover run` the
//!   link then stops for good ([`Refusals::halted`]): the first switch is refused and the
//!   rollback is unsafe, both naming the command, its key and the reason, and
//!   `cutover_sync_unapplied_commands{direction}` feeds an alert. Headless `cutover sync`
//!   keeps its `unsupported` policy (reported, exit code 3, or `fail`).
//!
//! - keys the side written to **expired early** (issue 20): queued here for a copy from
//!   the primary (`sync::engine::repair`), counted when copied; only a key whose copy failed
//!   is *unrepaired*, named, and refuses the moves.
//!
//! The record lives as long as the process: a `cutover run` started again does not know it
//! (the position stored on the target is past the batch that held the command).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Commands kept for `status` (the count goes on).
const SHOWN: usize = 20;

/// One stream command that was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unapplied {
    /// The command and where it was in the stream (`XADD (stream offset 1234)`).
    pub command: String,
    /// Its key (printable; empty when it has none).
    pub key: String,
    /// Why: the target's error reply, or what the target lacks.
    pub reason: String,
}

impl std::fmt::Display for Unapplied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.command)?;
        if !self.key.is_empty() {
            write!(f, " on key '{}'", self.key)?;
        }
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        Ok(())
    }
}

/// The commands a link could not apply, and the transient refusal it waits on.
#[derive(Debug, Default)]
pub struct Refusals {
    count: AtomicU64,
    shown: Mutex<Vec<Unapplied>>,
    /// The link stopped for good because of them (`cutover run`).
    halted: AtomicBool,
    /// A transient refusal the link is retrying (cleared once a batch is applied again).
    waiting: Mutex<Option<String>>,
    /// Keys the side it writes to evicted while the link applied (`cutover::memory`).
    evicted: AtomicU64,
    /// Batches refused with `OOM` (each retried).
    oom: AtomicU64,
    /// Writes of the primary that found their key missing on this side (expired or evicted
    /// early there), see [`Refusals::record_lost`].
    lost: AtomicU64,
    /// The keys whose repair failed, each once, in the order found (the first 1,000): they
    /// stay different until the primary writes them whole; moves are refused meanwhile.
    lost_keys: Mutex<(Vec<String>, std::collections::HashSet<String>)>,
    /// Keys waiting for their copy from the primary (`sync::engine::repair`): (the stream's
    /// database, the key) → found by a `must_change` write (true) or only suspected (an
    /// `INCR` answered with its increment: false). Kept here, not in the applier, so that a
    /// restarted engine repairs them too.
    pending: Mutex<std::collections::HashMap<(u64, Vec<u8>), bool>>,
    /// Keys copied from the primary after a write found them missing (found, not suspected).
    repaired: AtomicU64,
    /// Every copy placed in the stream (suspected keys included).
    copies: AtomicU64,
    /// The keys repaired, each once (the first 100), for `status`.
    repaired_keys: Mutex<Vec<String>>,
    /// Some key is unrepaired (`lost_keys` not empty): one atomic load on the hot path.
    any_unrepaired: AtomicBool,
}

/// Lost keys kept by name (the count goes on).
const LOST_KEPT: usize = 1000;
/// Of those, shown in `status`.
const LOST_SHOWN: usize = 100;

impl Refusals {
    /// Records a command that was not applied.
    pub fn record(&self, u: Unapplied) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut shown) = self.shown.lock()
            && shown.len() < SHOWN
        {
            shown.push(u);
        }
    }

    /// Commands not applied so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The first of them (at most 20).
    pub fn list(&self) -> Vec<Unapplied> {
        self.shown.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The commands kept, for `status`: `[{"command", "key", "reason"}…]`.
    pub fn to_json(&self) -> serde_json::Value {
        self.list()
            .iter()
            .map(|u| serde_json::json!({"command": u.command, "key": u.key, "reason": u.reason}))
            .collect()
    }

    /// One line for a refusal of a move: how many commands were not applied, and the first;
    /// the keys evicted on the side written to.
    pub fn describe(&self) -> Option<String> {
        let n = self.count();
        let commands = self.list().into_iter().next().map(|first| {
            if n == 1 {
                format!("a stream command was not applied: {first}")
            } else {
                format!("{n} stream commands were not applied, the first: {first}")
            }
        });
        let evicted = self.evictions();
        let evictions = (evicted > 0).then(|| {
            format!(
                "the side it writes to evicted {evicted} key(s) since the link started (maxmemory): they are missing there"
            )
        });
        let lost = self.lost_key_count();
        let lost = (lost > 0).then(|| {
            let keys = self.lost_keys();
            format!(
                "{lost} key(s) the primary refreshed or updated were missing on the side it writes to (expired early there) and could not be copied from the primary, e.g. '{}'",
                keys.iter().take(3).cloned().collect::<Vec<_>>().join("', '")
            )
        });
        let parts: Vec<String> = [commands, evictions, lost].into_iter().flatten().collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// A key the primary refreshed or updated (`command`) was missing on the side written
    /// to: it expired (or was evicted) there before the primary's write arrived. It is
    /// queued for a copy from the primary ([`Self::want_repair`]); only a failed copy makes
    /// it *unrepaired* ([`Self::unrepaired`]), which refuses the moves.
    pub fn record_lost(&self, db: u64, key: &[u8], command: String) {
        let n = self.lost.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 10 || n.is_power_of_two() {
            tracing::info!(key = %crate::sync::target::show_key(key), command = %command, lost = n, "a key the primary refreshed is missing on the side this link writes to (it expired early there): copying it from the primary");
        }
        self.want_repair(db, key, true);
    }

    /// Queues `key` (in the stream's database `db`) for a copy from the primary; `found`:
    /// a write found it missing (else it is only suspected).
    pub fn want_repair(&self, db: u64, key: &[u8], found: bool) {
        if let Ok(mut p) = self.pending.lock() {
            let e = p.entry((db, key.to_vec())).or_insert(found);
            *e |= found;
        }
    }

    /// The keys waiting for a copy (a restarted applier asks for all of them again).
    pub fn pending_repairs(&self) -> Vec<(u64, Vec<u8>)> {
        self.pending
            .lock()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// How many keys wait for a copy.
    pub fn repairing(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// The copy of `key` was placed in the stream (its batch sent): equal on both sides
    /// from there. A key that was unrepaired is no longer.
    pub fn copied(&self, db: u64, key: &[u8]) {
        self.copies.fetch_add(1, Ordering::Relaxed);
        let found = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&(db, key.to_vec())))
            .unwrap_or(false);
        let name = crate::sync::target::show_key(key);
        if found {
            self.repaired.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut r) = self.repaired_keys.lock()
                && r.len() < LOST_SHOWN
                && !r.contains(&name)
            {
                r.push(name.clone());
            }
        }
        self.repaired(&name);
    }

    /// A full resync copies everything again: nothing waits for a copy any more.
    pub fn clear_pending(&self) {
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
    }

    /// The copy of `key` could not be made (the primary did not answer, this side refused
    /// the value): the key stays different here, named, and the moves are refused until the
    /// primary writes it whole.
    pub fn unrepaired(&self, db: u64, key: &[u8], why: &str) {
        let _ = self
            .pending
            .lock()
            .map(|mut p| p.remove(&(db, key.to_vec())));
        let name = crate::sync::target::show_key(key);
        tracing::warn!(key = %name, reason = %why, "a key that expired early on the side this link writes to could not be copied from the primary: it stays missing there");
        if let Ok(mut g) = self.lost_keys.lock() {
            let (order, seen) = &mut *g;
            if order.len() < LOST_KEPT && seen.insert(name.clone()) {
                order.push(name);
            }
            self.any_unrepaired.store(true, Ordering::Release);
        }
    }

    /// A stream command that sets `key` whole (`SET` without `XX`/`KEEPTTL`, `DEL`,
    /// `UNLINK`, `RESTORE`…) is applied: an unrepaired key ([`Self::unrepaired`]) is equal
    /// on both sides again. One lock while nothing is unrepaired.
    pub fn repaired(&self, key: &str) {
        if !self.any_unrepaired() {
            return;
        }
        if let Ok(mut g) = self.lost_keys.lock() {
            let (order, seen) = &mut *g;
            if seen.remove(key) {
                order.retain(|k| k != key);
            }
            self.any_unrepaired
                .store(!order.is_empty(), Ordering::Release);
        }
    }

    /// True while some key is unrepaired (one atomic load).
    pub fn any_unrepaired(&self) -> bool {
        self.any_unrepaired.load(Ordering::Acquire)
    }

    /// Writes of the primary that found their key missing on the side written to (see
    /// [`Self::record_lost`]).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Keys copied from the primary after a write found them missing.
    pub fn repaired_count(&self) -> u64 {
        self.repaired.load(Ordering::Relaxed)
    }

    /// The unrepaired keys, each once (the first 1,000).
    pub fn lost_keys(&self) -> Vec<String> {
        self.lost_keys
            .lock()
            .map(|k| k.0.clone())
            .unwrap_or_default()
    }

    /// How many distinct unrepaired keys (exact up to 1,000).
    pub fn unrepaired_count(&self) -> usize {
        self.lost_key_count()
    }

    fn lost_key_count(&self) -> usize {
        self.lost_keys.lock().map(|k| k.0.len()).unwrap_or(0)
    }

    /// Counts keys the side written to evicted while the link applied.
    pub fn add_evictions(&self, n: u64) {
        self.evicted.fetch_add(n, Ordering::Relaxed);
    }

    /// Keys evicted on the side written to while the link applied.
    pub fn evictions(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Counts a batch refused with `OOM`.
    pub fn count_oom(&self) {
        self.oom.fetch_add(1, Ordering::Relaxed);
    }

    /// Batches refused with `OOM` so far.
    pub fn ooms(&self) -> u64 {
        self.oom.load(Ordering::Relaxed)
    }

    /// The status fields: `unapplied_commands`, `unapplied`, `halted`, `waiting_on_refusal`,
    /// `evicted_keys`, `oom_refusals`, and the keys that expired early on the side written
    /// to: `expired_early_writes` (writes that found their key missing),
    /// `expired_early_keys`/`expired_early` (unrepaired: refuse the moves),
    /// `expired_early_repairing` (copies on their way), `expired_early_repaired` and
    /// `expired_early_repaired_keys` (copied from the primary), `repair_copies` (every copy,
    /// suspected keys included).
    pub fn status_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let serde_json::Value::Object(m) = serde_json::json!({
            "unapplied_commands": self.count(),
            "unapplied": self.to_json(),
            "halted": self.halted(),
            "waiting_on_refusal": self.waiting(),
            "evicted_keys": self.evictions(),
            "oom_refusals": self.ooms(),
            "expired_early_keys": self.lost_key_count(),
            "expired_early_writes": self.lost(),
            "expired_early": self.lost_keys().into_iter().take(LOST_SHOWN).collect::<Vec<_>>(),
            "expired_early_repairing": self.repairing(),
            "expired_early_repaired": self.repaired_count(),
            "expired_early_repaired_keys": self.repaired_keys.lock().map(|r| r.clone()).unwrap_or_default(),
            "repair_copies": self.copies.load(Ordering::Relaxed),
        }) else {
            return serde_json::Map::new();
        };
        m
    }

    /// Stops the link for good.
    pub fn halt(&self) {
        self.halted.store(true, Ordering::Release);
    }

    /// The link stopped for good because of a refused command.
    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    /// The link waits for the target to take a batch it refused for now (`None`: it does not).
    pub fn set_waiting(&self, what: Option<String>) {
        if let Ok(mut w) = self.waiting.lock() {
            *w = what;
        }
    }

    /// What the link waits for, if anything.
    pub fn waiting(&self) -> Option<String> {
        self.waiting.lock().ok().and_then(|w| w.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_describe() {
        let r = Refusals::default();
        assert_eq!(r.describe(), None);
        for i in 0..30 {
            r.record(Unapplied {
                command: format!("XADD (stream offset {i})"),
                key: "s".into(),
                reason: "ERR syntax error".into(),
            });
        }
        assert_eq!(r.count(), 30);
        assert_eq!(r.list().len(), SHOWN);
        assert_eq!(
            r.describe().unwrap(),
            "30 stream commands were not applied, the first: XADD (stream offset 0) on key 's': ERR syntax error"
        );
        assert!(!r.halted());
        r.halt();
        assert!(r.halted());
        r.add_evictions(3);
        assert!(r.describe().unwrap().ends_with(
            "evicted 3 key(s) since the link started (maxmemory): they are missing there"
        ));
        r.set_waiting(Some("OOM".into()));
        assert_eq!(r.waiting().as_deref(), Some("OOM"));
    }

    /// A key found missing waits for its copy without refusing a move; copied, it is
    /// counted and named as repaired; only a failed copy refuses, until the primary writes
    /// the key whole.
    #[test]
    fn expired_early_keys_are_repaired_or_named() {
        let r = Refusals::default();
        r.record_lost(0, b"s:1", "PEXPIREAT".into());
        r.record_lost(0, b"s:1", "PEXPIREAT".into());
        r.want_repair(2, b"c", false);
        assert_eq!((r.lost(), r.repairing()), (2, 2));
        assert_eq!(r.describe(), None, "copies on their way refuse nothing");
        r.copied(0, b"s:1");
        r.copied(2, b"c");
        assert_eq!((r.repaired_count(), r.repairing()), (1, 0));
        let f = r.status_fields();
        assert_eq!(f["expired_early_repaired_keys"], serde_json::json!(["s:1"]));
        assert_eq!(f["repair_copies"], 2);
        r.want_repair(0, b"h", true);
        r.unrepaired(0, b"h", "cannot load");
        assert_eq!(r.repairing(), 0);
        assert!(r.any_unrepaired());
        assert!(r.describe().unwrap().contains("could not be copied"));
        assert_eq!(r.status_fields()["expired_early"], serde_json::json!(["h"]));
        r.repaired("h");
        assert!(!r.any_unrepaired());
        assert_eq!(r.describe(), None);
        r.want_repair(0, b"x", true);
        r.clear_pending();
        assert_eq!(r.repairing(), 0);
    }
}
