//! [`SyncProgress`]: the engine's live state, shared as atomics with whoever watches it —
//! `cutover status` (the `sync` object), the `cutover_sync_*{direction}` gauges, the progress
//! bar — and the cutover's requests into the running engine (stop at an offset, the handoff
//! role, the wake-up). The applier publishes after each step ([`Snapshot`]); the gauges are
//! published at most ten times a second.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use crate::sync::convert::{KINDS, Stats};
use crate::sync::handoff::Handoff;

use crate::sync::phase::SyncPhase;

use super::*;

/// The sync's live state, for `cutover status`, Prometheus and the progress bar.
#[derive(Debug, Default)]
pub struct SyncProgress {
    /// The [`SyncPhase`], as its number (read and set with [`Self::phase`] and
    /// [`Self::set_phase`]).
    phase: AtomicU8,
    /// Snapshot bytes received (and parsed).
    pub snapshot_bytes: AtomicU64,
    /// The snapshot's size from its `$<len>` header; 0 when unknown (a diskless snapshot).
    pub snapshot_bytes_total: AtomicU64,
    pub keys_seen: AtomicU64,
    pub keys_done: AtomicU64,
    /// Keys of the source when its snapshot started (`INFO keyspace`, summed; an estimate:
    /// it counts keys that expire before they are saved).
    pub keys_total: AtomicU64,
    /// Keys seen per type: string, list, set, zset, hash, stream, module ([`KINDS`]).
    pub keys_by_type: [AtomicU64; 7],
    /// Keys written with RESTORE (re-encoded ones included).
    pub keys_restored: AtomicU64,
    /// Of those, keys re-encoded for an older target.
    pub keys_reencoded: AtomicU64,
    /// Keys written with plain commands.
    pub keys_plain: AtomicU64,
    /// Keys skipped because they had expired.
    pub keys_expired: AtomicU64,
    /// Keys left out by the filters.
    pub keys_filtered: AtomicU64,
    /// Keys and functions the target cannot hold (reported by key).
    pub keys_not_copied: AtomicU64,
    /// Stream commands applied / skipped (PING, filtered, not expressible on the target).
    pub commands_applied: AtomicU64,
    pub commands_skipped: AtomicU64,
    /// Stream commands rewritten for the target (flags it does not know dropped…).
    pub commands_converted: AtomicU64,
    /// Stream commands applied although some of their keys are excluded ([`crate::sync::filter`]).
    pub commands_mixed_keys: AtomicU64,
    /// Replication offset received from the source.
    pub received_offset: AtomicU64,
    /// Replication offset the target has applied and confirmed.
    pub applied_offset: AtomicU64,
    /// Milliseconds since the engine started when the target last had everything received
    /// applied (for `lag_ms`).
    pub caught_up_at_ms: AtomicU64,
    /// The source's own `master_repl_offset`, read every half second by `cutover run` (0:
    /// unknown): the lag counts up to it, not only up to what the link received.
    pub server_offset: AtomicU64,
    /// When the gauges were last published (ms since `epoch`; 0: never).
    pub(super) published_ms: AtomicU64,
    /// When the oldest stream command received but not yet applied was read from the source,
    /// in ms since `epoch` plus 1 (0: none pending).
    pub oldest_pending_ms: AtomicU64,
    /// Full runs of the engine started (a restart resumes from the stored position).
    pub starts: AtomicU64,
    /// Times the replication link was re-established within a run (PSYNC continue, or a full
    /// resync when the source could not continue).
    pub reconnects: AtomicU64,
    /// Of those, full resyncs (the target flushed and loaded again).
    pub full_resyncs: AtomicU64,
    /// Source transactions (and unsplittable multi-key commands) a cluster target applied
    /// as several single-slot transactions: not atomic there ([`crate::sync::cluster`]).
    pub non_atomic_txns: AtomicU64,
    pub last_error: std::sync::Mutex<Option<String>>,
    /// Runs that got going (the target answered and the source started a sync or continued
    /// one): a failure after that is a new outage, worth retrying ([`crate::sync::retry`]).
    pub established: AtomicU64,
    /// Seconds until the next run of the engine after a failure (0: not waiting).
    pub retry_in_s: AtomicU64,
    /// What the last run counted, for a next run that continues its stream.
    pub(super) carried: std::sync::Mutex<Option<Carried>>,
    pub epoch: std::sync::OnceLock<Instant>,
    /// Wakes the applier when it waits for the replica link (so a stop request is seen at
    /// once, not at the next poll).
    pub(super) waker: Waker,
    /// Which way this engine copies (`""` or `"forward"`: source → target; `"reverse"`:
    /// target → source, the old side's link of a replica overlap). A metrics label.
    pub direction: &'static str,
    /// The shard a link of a cluster source copies: its slots (`0-5460`; at most three
    /// ranges, then `+N`), a metrics label and the status's `shard` (`""`: not a shard).
    /// Slots, not the master's address: a failover keeps the series.
    pub shard: &'static str,
    /// Applying or following, and the cutover's handoff requests ([`crate::sync::handoff`]).
    pub handoff: Handoff,
    /// The replication link dropped and is being connected again (within the run).
    pub link_down: AtomicBool,
    /// The `run_id` of the server this link's writer is connected to (set by each run of the
    /// engine when it connects; `None`: unknown, or a cluster): a side whose server says
    /// another one now restarted since, and that connection is dead (the move checks it
    /// before it holds any client: `cutover::overlap`).
    pub writes_to: std::sync::Mutex<Option<String>>,
    /// The engine's runner (`cutover run`) has ended for good (`finish`).
    pub ended: AtomicBool,
    /// Writes on the side this link follows that the applying link did not make
    /// ([`super::foreign`]): what was seen, for status and `rollback_safe`.
    pub foreign: super::foreign::ForeignSeen,
    /// Stream commands the side it writes to did not apply ([`crate::sync::refusals`]).
    pub refusals: crate::sync::refusals::Refusals,
}

/// The counters of a run, carried into the next one when it continues the same stream (so
/// the report of `cutover sync --once`, and its exit code, include what an earlier run
/// reported before a failure).
#[derive(Debug, Clone)]
pub(super) struct Carried {
    pub(super) stats: Stats,
    pub(super) report: SyncReport,
}

/// A callback into the running engine.
#[derive(Default)]
pub(super) struct Waker(std::sync::Mutex<Option<Box<dyn Fn() + Send>>>);

impl Waker {
    pub(super) fn set(&self, f: Box<dyn Fn() + Send>) {
        if let Ok(mut w) = self.0.lock() {
            *w = Some(f);
        }
    }

    pub(super) fn wake(&self) {
        if let Ok(w) = self.0.lock()
            && let Some(f) = w.as_ref()
        {
            f();
        }
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

/// What the applier publishes into [`SyncProgress`] after each step.
pub(super) struct Snapshot<'a> {
    pub(super) phase: &'a SyncPhase,
    pub(super) stats: &'a Stats,
    pub(super) snapshot_bytes: u64,
    pub(super) received: u64,
    pub(super) applied: u64,
    pub(super) commands: u64,
    pub(super) skipped: u64,
    pub(super) converted: u64,
    pub(super) mixed: u64,
}

impl SyncProgress {
    /// A fresh state for a link copying in `direction` (`forward` or `reverse`).
    pub fn with_direction(direction: &'static str) -> SyncProgress {
        SyncProgress {
            direction,
            ..SyncProgress::default()
        }
    }

    /// A fresh state for the link of one shard of a cluster source (`shard`: its slots).
    pub fn for_shard(shard: &'static str) -> SyncProgress {
        SyncProgress {
            shard,
            ..SyncProgress::default()
        }
    }

    /// Asks the running engine to stop once the target has applied `offset`: the cutover
    /// barrier's step before the route flips (the source gets no client writes then, and
    /// nothing written to the source later may reach the target through the replication
    /// stream). A link of a replica overlap parks there, a plain sync ends its run there: one
    /// transition of its role ([`Handoff::request_stop`]); `Err` with the role found when it
    /// was not applying.
    pub fn request_stop_at(&self, offset: u64) -> Result<(), crate::sync::handoff::Role> {
        self.handoff.request_stop(offset)?;
        self.waker.wake();
        Ok(())
    }

    /// The offset of a pending [`Self::request_stop_at`] (not yet reached).
    pub fn stop_requested(&self) -> Option<u64> {
        self.handoff.role().stop_at()
    }

    /// Withdraws [`Self::request_stop_at`] (the barrier was aborted): the link applies on,
    /// whether it had reached the offset or not ([`Handoff::cancel_stop`]).
    pub fn cancel_stop(&self) {
        self.handoff.cancel_stop();
        self.waker.wake();
    }

    /// The `run_id` of the server this link's writer is connected to ([`Self::writes_to`]).
    pub fn writes_to(&self) -> Option<String> {
        self.writes_to.lock().ok().and_then(|r| r.clone())
    }

    pub(super) fn set_writes_to(&self, run_id: Option<String>) {
        if let Ok(mut r) = self.writes_to.lock() {
            *r = run_id;
        }
    }

    /// A run got going (the source started or continued a sync): an error of an earlier
    /// run is over.
    pub(super) fn mark_established(&self) {
        self.established.fetch_add(1, Ordering::Relaxed);
        self.link_down.store(false, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    /// Wakes the applier (it looks at the handoff requests at once).
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// The labels of every `cutover_sync_*` series: `direction`, and `shard` for a link of
    /// a cluster source.
    pub fn labels(&self) -> Vec<metrics::Label> {
        let mut l = vec![metrics::Label::new("direction", self.direction())];
        if !self.shard.is_empty() {
            l.push(metrics::Label::new("shard", self.shard));
        }
        l
    }

    /// The direction label (`forward` or `reverse`).
    pub fn direction(&self) -> &'static str {
        if self.direction.is_empty() {
            "forward"
        } else {
            self.direction
        }
    }

    /// The counts of the last run (its report so far), for a stop between runs.
    pub fn carried_report(&self) -> SyncReport {
        self.carried
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .map(|c| SyncReport {
                stats: c.stats,
                offset: self.applied_offset.load(Ordering::Relaxed),
                ..c.report
            })
            .unwrap_or_default()
    }

    /// Where the sync stands.
    pub fn phase(&self) -> SyncPhase {
        SyncPhase::from_code(self.phase.load(Ordering::Relaxed))
    }

    /// Publishes the phase the engine is in (the applier after each step; the retry loop
    /// sets [`SyncPhase::Error`]).
    pub fn set_phase(&self, phase: SyncPhase) {
        self.phase.store(phase.code(), Ordering::Relaxed);
    }

    /// The phase's name in `cutover status` ([`SyncPhase::as_str`]).
    pub fn phase_name(&self) -> &'static str {
        self.phase().as_str()
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    /// Bytes of the replication stream not yet applied on the target: up to the source's own
    /// offset when it is known ([`Self::set_server_offset`]), so that a link that stopped
    /// reading (a frozen target, a full channel) still shows how far behind it is.
    pub fn lag_bytes(&self) -> u64 {
        self.received_offset
            .load(Ordering::Relaxed)
            .max(self.server_offset.load(Ordering::Relaxed))
            .saturating_sub(self.applied_offset.load(Ordering::Relaxed))
    }

    /// The source's `master_repl_offset` as last read (by `cutover run`'s poller).
    pub fn set_server_offset(&self, offset: u64) {
        self.server_offset.store(offset, Ordering::Relaxed);
    }

    /// The replication delay: how long ago the oldest stream command that is received but not
    /// yet applied on the target was read from the source (0 when caught up).
    pub fn lag_ms(&self) -> u64 {
        if self.lag_bytes() == 0 {
            return 0;
        }
        match self.oldest_pending_ms.load(Ordering::Relaxed) {
            0 => self
                .now_ms()
                .saturating_sub(self.caught_up_at_ms.load(Ordering::Relaxed)),
            at => self.now_ms().saturating_sub(at - 1),
        }
    }

    pub(super) fn set_oldest_pending(&self, at: Option<Instant>) {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let ms = at.map_or(0, |t| {
            t.saturating_duration_since(epoch).as_millis() as u64 + 1
        });
        self.oldest_pending_ms.store(ms, Ordering::Relaxed);
    }

    /// The keys-per-type counters by type name.
    pub fn keys_by_type(&self) -> Vec<(&'static str, u64)> {
        KINDS
            .iter()
            .zip(&self.keys_by_type)
            .map(|(k, n)| (k.name(), n.load(Ordering::Relaxed)))
            .collect()
    }

    /// The `sync` object of `cutover status --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let total = n(&self.snapshot_bytes_total);
        let by_type: serde_json::Map<String, serde_json::Value> = self
            .keys_by_type()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        let mut doc = serde_json::json!({
            "phase": self.phase_name(),
            "snapshot_bytes": n(&self.snapshot_bytes),
            "snapshot_bytes_total": (total > 0).then_some(total),
            "keys_seen": n(&self.keys_seen),
            "keys_done": n(&self.keys_done),
            "keys_total": n(&self.keys_total),
            "keys_by_type": by_type,
            "keys_restored": n(&self.keys_restored),
            "keys_reencoded": n(&self.keys_reencoded),
            "keys_plain": n(&self.keys_plain),
            "keys_expired": n(&self.keys_expired),
            "keys_filtered": n(&self.keys_filtered),
            "keys_not_copied": n(&self.keys_not_copied),
            "commands_applied": n(&self.commands_applied),
            "commands_skipped": n(&self.commands_skipped),
            "commands_converted": n(&self.commands_converted),
            "commands_mixed_keys": n(&self.commands_mixed_keys),
            "received_offset": n(&self.received_offset),
            "applied_offset": n(&self.applied_offset),
            "lag_bytes": self.lag_bytes(),
            "lag_ms": self.lag_ms(),
            "starts": n(&self.starts),
            "reconnects": n(&self.reconnects),
            "link_up": !self.link_down.load(Ordering::Relaxed),
            "full_resyncs": n(&self.full_resyncs),
            "non_atomic_txns": n(&self.non_atomic_txns),
            "last_error": self.last_error.lock().ok().and_then(|e| e.clone()),
            "retry_in_s": (n(&self.retry_in_s) > 0).then(|| n(&self.retry_in_s)),
        });
        if let Some(m) = doc.as_object_mut() {
            m.extend(self.refusals.status_fields());
            if !self.shard.is_empty() {
                m.insert("shard".into(), self.shard.into());
            }
        }
        doc
    }

    pub(super) fn update(&self, s: &Snapshot<'_>) {
        let stats = s.stats;
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        self.set_phase(*s.phase);
        set(&self.snapshot_bytes, s.snapshot_bytes);
        set(&self.keys_seen, stats.keys_seen);
        set(&self.keys_done, stats.keys_done());
        set(&self.keys_restored, stats.restored);
        set(&self.keys_reencoded, stats.reencoded);
        set(&self.keys_plain, stats.plain);
        set(&self.keys_expired, stats.expired);
        set(&self.keys_filtered, stats.filtered);
        set(&self.keys_not_copied, stats.unsupported);
        for (a, v) in self.keys_by_type.iter().zip(stats.by_type) {
            set(a, v);
        }
        set(&self.commands_applied, s.commands);
        set(&self.commands_skipped, s.skipped);
        set(&self.commands_converted, s.converted);
        set(&self.commands_mixed_keys, s.mixed);
        set(&self.received_offset, s.received);
        if s.applied > self.applied_offset.swap(s.applied, Ordering::Relaxed) {
            // The target took a batch again: a transient refusal is over.
            self.refusals.set_waiting(None);
        }
        let now = self.now_ms();
        if s.applied >= s.received.max(self.server_offset.load(Ordering::Relaxed)) {
            self.caught_up_at_ms.store(now, Ordering::Relaxed);
        }
        self.publish_at_most_every_100ms(now);
    }

    /// The gauges at most ten times a second (each is a registry lookup; the applier updates
    /// its state after every batch, and comes by at least every 100 ms; a scrape publishes
    /// them anyway).
    pub(super) fn publish_at_most_every_100ms(&self, now: u64) {
        let last = self.published_ms.load(Ordering::Relaxed);
        if now >= last + 100 || last == 0 {
            self.published_ms.store(now.max(1), Ordering::Relaxed);
            self.publish_metrics();
        }
    }

    /// What a following link publishes: its phase and where it has read to (it applies
    /// nothing, so the counts of what it applied before stay).
    pub(super) fn update_following(&self, phase: &SyncPhase, offset: u64) {
        self.set_phase(*phase);
        self.received_offset.store(offset, Ordering::Relaxed);
        self.applied_offset.store(offset, Ordering::Relaxed);
        let now = self.now_ms();
        self.caught_up_at_ms.store(now, Ordering::Relaxed);
        self.publish_at_most_every_100ms(now);
    }

    /// Sets the `cutover_sync_*{direction}` gauges and counters from the current state.
    pub fn publish_metrics(&self) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Every series carries the link's direction (`forward`, `reverse`), and a cluster
        // source's link its `shard` (bounded: one value per source shard).
        let l = self.labels();
        let with = |k: &'static str, v: &'static str| {
            let mut l = l.clone();
            l.push(metrics::Label::new(k, v));
            l
        };
        metrics::gauge!("cutover_sync_phase", l.clone()).set(self.phase().gauge());
        metrics::gauge!("cutover_sync_snapshot_bytes", l.clone())
            .set(n(&self.snapshot_bytes) as f64);
        metrics::gauge!("cutover_sync_snapshot_bytes_total", l.clone())
            .set(n(&self.snapshot_bytes_total) as f64);
        metrics::gauge!("cutover_sync_keys_done", l.clone()).set(n(&self.keys_done) as f64);
        metrics::gauge!("cutover_sync_keys_total", l.clone()).set(n(&self.keys_total) as f64);
        for (kind, v) in self.keys_by_type() {
            metrics::gauge!("cutover_sync_keys_by_type", with("type", kind)).set(v as f64);
        }
        for (how, a) in [
            ("restored", &self.keys_restored),
            ("reencoded", &self.keys_reencoded),
            ("plain", &self.keys_plain),
            ("expired", &self.keys_expired),
            ("filtered", &self.keys_filtered),
            ("not_copied", &self.keys_not_copied),
        ] {
            metrics::gauge!("cutover_sync_keys_written", with("how", how)).set(n(a) as f64);
        }
        metrics::gauge!("cutover_sync_keys_not_copied", l.clone())
            .set(n(&self.keys_not_copied) as f64);
        metrics::gauge!("cutover_sync_commands_applied", l.clone())
            .set(n(&self.commands_applied) as f64);
        metrics::gauge!("cutover_sync_unapplied_commands", l.clone())
            .set(self.refusals.count() as f64);
        metrics::gauge!("cutover_sync_evicted_keys", l.clone())
            .set(self.refusals.evictions() as f64);
        metrics::gauge!("cutover_sync_expired_early_writes", l.clone())
            .set(self.refusals.lost() as f64);
        metrics::gauge!("cutover_sync_expired_early_unrepaired", l.clone())
            .set(self.refusals.unrepaired_count() as f64);
        metrics::gauge!("cutover_sync_expired_early_repaired", l.clone())
            .set(self.refusals.repaired_count() as f64);
        metrics::gauge!("cutover_sync_waiting_on_refusal", l.clone()).set(
            if self.refusals.waiting().is_some() {
                1.0
            } else {
                0.0
            },
        );
        metrics::gauge!("cutover_sync_commands_skipped", l.clone())
            .set(n(&self.commands_skipped) as f64);
        metrics::gauge!("cutover_sync_commands_converted", l.clone())
            .set(n(&self.commands_converted) as f64);
        metrics::gauge!("cutover_sync_commands_mixed_keys", l.clone())
            .set(n(&self.commands_mixed_keys) as f64);
        metrics::gauge!("cutover_sync_applied_offset", l.clone())
            .set(n(&self.applied_offset) as f64);
        metrics::gauge!("cutover_sync_received_offset", l.clone())
            .set(n(&self.received_offset) as f64);
        metrics::gauge!("cutover_sync_lag_bytes", l.clone()).set(self.lag_bytes() as f64);
        metrics::gauge!("cutover_sync_lag_seconds", l.clone()).set(self.lag_ms() as f64 / 1000.0);
        metrics::gauge!("cutover_sync_link_up", l.clone()).set(
            if self.link_down.load(Ordering::Relaxed) {
                0.0
            } else {
                1.0
            },
        );
        metrics::counter!("cutover_sync_reconnects_total", l.clone()).absolute(n(&self.reconnects));
        metrics::counter!("cutover_sync_full_resyncs_total", l.clone())
            .absolute(n(&self.full_resyncs));
    }
}
