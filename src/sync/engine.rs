//! The sync engine: source → replica link → RDB parser → converter → target writer, then the
//! live command stream.
//!
//! Two threads:
//!
//! * the **link thread** runs the [`ReplicaLink`] on its own single-threaded runtime: it
//!   connects with `PSYNC ? -1`, hands the snapshot's bytes to the applier as they arrive, then
//!   the commands of the stream. It acknowledges the offset the applier has published (the
//!   target's confirmed offset), once a second and on `GETACK`. When the link drops or falls
//!   silent it connects again by itself (`LinkState`), asking to continue right after the
//!   last byte it received, so the stream goes on seamlessly; if the source answers
//!   `+FULLRESYNC` (or the snapshot was cut short), the applier is told to start over.
//! * the **applier** (the calling thread) feeds the snapshot to the [`RdbParser`], turns the
//!   events into target commands ([`Converter`]), then forwards each stream command to the
//!   target, pipelined and in order: filtered and mapped ([`Filter`]), with a few rewrites for
//!   older targets (`Applier::rewrite`). It publishes its state in a [`SyncProgress`]
//!   (status, metrics, the progress bar of `cutover sync`).
//!
//! They are joined by a bounded channel, so a slow target slows the reading of the snapshot
//! (the source's output buffer for this replica grows meanwhile, as for a slow real replica)
//! instead of growing our memory.
//!
//! Exactly once: every batch of stream commands goes to the target inside one `MULTI … EXEC`
//! together with the replication position it reaches ([`super::position`]); a transaction of
//! the source is applied as one such batch (never nested). On start, a stored position is
//! resumed with `PSYNC <replid> <offset + 1>`; when the source cannot continue from there
//! (`+FULLRESYNC`), the target is flushed first (it holds an earlier copy), so no stale key and
//! no doubled list element remains.
//!
//! [`load_rdb`] feeds an RDB file through the same parser → converter → writer path.
//!
//! With `once`, the engine returns as soon as the snapshot and the stream up to the source's
//! offset at the moment the snapshot had been received (`master_repl_offset` from
//! `INFO replication`) are applied and confirmed by the target.

use std::io::{Read, Seek};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::convert::{ConvertOptions, Converter, HOLD_BYTES, KINDS, Stats, UnsupportedPolicy};
use super::filter::{Filter, command_keys};
use super::handoff::Handoff;
use super::position::{self, POSITION_KEY, Stored};
use super::replica::{ReplicaError, ReplicaLink, StreamCommand, SyncStart};
use super::target::{
    DEFAULT_WINDOW, Tag, TargetError, TargetInfo, TargetWriter, query, query_raw, show_key,
};
use crate::config::RedisUrl;
use crate::rdb::{ParserOptions, RdbParser};

/// Failures of the engine itself (the target writer has [`TargetError`]).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The replica link to the source failed for good (`transient`: the source could not be
    /// connected to on the link's first attempt, so a later run may succeed).
    #[error("{message}")]
    SourceLink { message: String, transient: bool },
}

/// What to sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub source: RedisUrl,
    pub target: RedisUrl,
    /// Return once the snapshot and the stream up to the snapshot's end are applied.
    pub once: bool,
    /// Connect and silence time limit. A link silent for longer (no data, no PING) is dropped
    /// and connected again; a source that cannot be reached again for five times this long
    /// fails the sync.
    pub timeout: Duration,
    /// Show progress on stderr (a bar on a terminal, a line every few seconds otherwise).
    pub progress: bool,
    /// Ignore a position stored on the target: full sync (the target is flushed if it holds
    /// one, as its data comes from an earlier sync).
    pub fresh: bool,
    /// Where `cutover run` reads the sync's state for `status` (and metrics).
    pub shared: Option<Arc<SyncProgress>>,
    /// Filters, policy and sizes (`[sync]` in the config file, `cutover sync` flags).
    pub tuning: SyncTuning,
}

/// The `[sync]` settings: what to copy and how.
#[derive(Debug, Clone)]
pub struct SyncTuning {
    /// Databases, keys and stream commands to copy ([`Filter`]).
    pub filter: Filter,
    /// What to do with what the target cannot hold.
    pub unsupported: UnsupportedPolicy,
    /// Stream commands per target transaction at most (a source transaction is never split).
    pub batch_size: usize,
    /// Commands in flight to the target before waiting for replies.
    pub pipeline: usize,
    /// Keys whose encoded value is bigger than this are written as chunked plain commands
    /// (`RPUSH`, `HSET`… 512 elements each) instead of one `RESTORE`.
    pub big_key_bytes: usize,
}

impl Default for SyncTuning {
    fn default() -> Self {
        SyncTuning {
            filter: Filter::default(),
            unsupported: UnsupportedPolicy::Skip,
            batch_size: DEFAULT_BATCH_SIZE,
            pipeline: DEFAULT_WINDOW,
            big_key_bytes: DEFAULT_BIG_KEY_BYTES,
        }
    }
}

/// Default of [`SyncOptions::batch_size`].
pub const DEFAULT_BATCH_SIZE: usize = 1000;
/// Default of [`SyncOptions::big_key_bytes`].
pub const DEFAULT_BIG_KEY_BYTES: usize = 512 * 1024;

impl SyncOptions {
    /// Everything copied, defaults for the rest.
    pub fn new(source: RedisUrl, target: RedisUrl) -> SyncOptions {
        SyncOptions {
            source,
            target,
            once: false,
            timeout: Duration::from_secs(60),
            progress: false,
            fresh: false,
            shared: None,
            tuning: SyncTuning::default(),
        }
    }

    fn convert_options(&self) -> ConvertOptions {
        ConvertOptions {
            filter: self.tuning.filter.clone(),
            unsupported: self.tuning.unsupported,
            hold_bytes: (self.tuning.big_key_bytes.saturating_mul(2)).max(HOLD_BYTES),
        }
    }

    fn parser(&self) -> RdbParser {
        RdbParser::with_options(ParserOptions {
            raw_limit: self.tuning.big_key_bytes,
            // Such strings go out in batched MSETs (see `convert`), never as RESTORE.
            raw_strings_without_expiry: false,
            ..ParserOptions::default()
        })
    }
}

/// The sync's live state, for `cutover status`, Prometheus and the progress bar.
#[derive(Debug, Default)]
pub struct SyncProgress {
    /// 0 connecting, 1 snapshot (`syncing`), 2 streaming, 3 error (retrying).
    pub phase: AtomicU8,
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
    /// Stream commands applied although some of their keys are excluded ([`super::filter`]).
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
    published_ms: AtomicU64,
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
    pub last_error: std::sync::Mutex<Option<String>>,
    /// Runs that got going (the target answered and the source started a sync or continued
    /// one): a failure after that is a new outage, worth retrying ([`super::retry`]).
    pub established: AtomicU64,
    /// Seconds until the next run of the engine after a failure (0: not waiting).
    pub retry_in_s: AtomicU64,
    /// What the last run counted, for a next run that continues its stream.
    carried: std::sync::Mutex<Option<Carried>>,
    pub epoch: std::sync::OnceLock<Instant>,
    /// Set by the cutover barrier: stop streaming as soon as the target has applied (and
    /// confirmed) this replication offset — never apply a byte past it. Holds offset + 1;
    /// 0: not set. See [`SyncProgress::request_stop_at`].
    stop_at: AtomicU64,
    /// The engine stopped because of `stop_at`; `applied_offset` is where it stopped.
    pub stopped: AtomicBool,
    /// Wakes the applier when it waits for the replica link (so a stop request is seen at
    /// once, not at the next poll).
    waker: Waker,
    /// Which way this engine copies (`""` or `"forward"`: source → target; `"reverse"`:
    /// target → source, the old side's link of a replica overlap). A metrics label.
    pub direction: &'static str,
    /// Applying or following, and the cutover's handoff requests ([`super::handoff`]).
    pub handoff: Handoff,
    /// The replication link dropped and is being connected again (within the run).
    pub link_down: AtomicBool,
    /// The engine's runner (`cutover run`) has ended for good (`finish`).
    pub ended: AtomicBool,
}

/// The counters of a run, carried into the next one when it continues the same stream (so
/// the report of `cutover sync --once`, and its exit code, include what an earlier run
/// reported before a failure).
#[derive(Debug, Clone)]
struct Carried {
    stats: Stats,
    report: SyncReport,
}

/// A callback into the running engine.
#[derive(Default)]
struct Waker(std::sync::Mutex<Option<Box<dyn Fn() + Send>>>);

impl Waker {
    fn set(&self, f: Box<dyn Fn() + Send>) {
        if let Ok(mut w) = self.0.lock() {
            *w = Some(f);
        }
    }

    fn wake(&self) {
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
struct Snapshot<'a> {
    phase: &'a Phase,
    stats: &'a Stats,
    snapshot_bytes: u64,
    received: u64,
    applied: u64,
    commands: u64,
    skipped: u64,
    converted: u64,
    mixed: u64,
}

impl SyncProgress {
    /// A fresh state for a link copying in `direction` (`forward` or `reverse`).
    pub fn with_direction(direction: &'static str) -> SyncProgress {
        SyncProgress {
            direction,
            ..SyncProgress::default()
        }
    }

    /// Asks the running engine to stop once the target has applied `offset`: the cutover
    /// barrier's last step before the route flips (the source gets no client writes then, and
    /// nothing written to the source later — shadow writes — may reach the target through the
    /// replication stream).
    pub fn request_stop_at(&self, offset: u64) {
        self.stopped.store(false, Ordering::Release);
        self.stop_at
            .store(offset.saturating_add(1), Ordering::Release);
        self.waker.wake();
    }

    /// The offset of a pending [`Self::request_stop_at`].
    pub fn stop_requested(&self) -> Option<u64> {
        match self.stop_at.load(Ordering::Acquire) {
            0 => None,
            n => Some(n - 1),
        }
    }

    /// Withdraws [`Self::request_stop_at`] (the barrier was aborted, or the parked link of a
    /// replica overlap now follows).
    pub fn cancel_stop(&self) {
        self.stop_at.store(0, Ordering::Release);
        self.waker.wake();
    }

    /// A run got going (the source started or continued a sync): an error of an earlier
    /// run is over.
    fn mark_established(&self) {
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

    pub fn phase_name(&self) -> &'static str {
        match self.phase.load(Ordering::Relaxed) {
            0 => "connecting",
            1 => "syncing",
            2 => "streaming",
            _ => "sync_error",
        }
    }

    fn now_ms(&self) -> u64 {
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

    fn set_oldest_pending(&self, at: Option<Instant>) {
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
        serde_json::json!({
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
            "last_error": self.last_error.lock().ok().and_then(|e| e.clone()),
            "retry_in_s": (n(&self.retry_in_s) > 0).then(|| n(&self.retry_in_s)),
        })
    }

    fn update(&self, s: &Snapshot<'_>) {
        let p = s.phase.code();
        let stats = s.stats;
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        self.phase.store(p, Ordering::Relaxed);
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
        set(&self.applied_offset, s.applied);
        let now = self.now_ms();
        if s.applied >= s.received.max(self.server_offset.load(Ordering::Relaxed)) {
            self.caught_up_at_ms.store(now, Ordering::Relaxed);
        }
        self.publish_at_most_every_100ms(now);
    }

    /// The gauges at most ten times a second (each is a registry lookup; the applier updates
    /// its state after every batch, and comes by at least every 100 ms; a scrape publishes
    /// them anyway).
    fn publish_at_most_every_100ms(&self, now: u64) {
        let last = self.published_ms.load(Ordering::Relaxed);
        if now >= last + 100 || last == 0 {
            self.published_ms.store(now.max(1), Ordering::Relaxed);
            self.publish_metrics();
        }
    }

    /// What a following link publishes: its phase and where it has read to (it applies
    /// nothing, so the counts of what it applied before stay).
    fn update_following(&self, phase: &Phase, offset: u64) {
        self.phase.store(phase.code(), Ordering::Relaxed);
        self.received_offset.store(offset, Ordering::Relaxed);
        self.applied_offset.store(offset, Ordering::Relaxed);
        let now = self.now_ms();
        self.caught_up_at_ms.store(now, Ordering::Relaxed);
        self.publish_at_most_every_100ms(now);
    }

    /// Sets the `cutover_sync_*{direction}` gauges and counters from the current state.
    pub fn publish_metrics(&self) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Every series carries the link's direction (`forward`, `reverse`); a later shard
        // label joins it.
        let d = self.direction();
        metrics::gauge!("cutover_sync_phase", "direction" => d)
            .set(self.phase.load(Ordering::Relaxed) as f64);
        metrics::gauge!("cutover_sync_snapshot_bytes", "direction" => d)
            .set(n(&self.snapshot_bytes) as f64);
        metrics::gauge!("cutover_sync_snapshot_bytes_total", "direction" => d)
            .set(n(&self.snapshot_bytes_total) as f64);
        metrics::gauge!("cutover_sync_keys_done", "direction" => d).set(n(&self.keys_done) as f64);
        metrics::gauge!("cutover_sync_keys_total", "direction" => d)
            .set(n(&self.keys_total) as f64);
        for (kind, v) in self.keys_by_type() {
            metrics::gauge!("cutover_sync_keys_by_type", "direction" => d, "type" => kind)
                .set(v as f64);
        }
        for (how, a) in [
            ("restored", &self.keys_restored),
            ("reencoded", &self.keys_reencoded),
            ("plain", &self.keys_plain),
            ("expired", &self.keys_expired),
            ("filtered", &self.keys_filtered),
            ("not_copied", &self.keys_not_copied),
        ] {
            metrics::gauge!("cutover_sync_keys_written", "direction" => d, "how" => how)
                .set(n(a) as f64);
        }
        metrics::gauge!("cutover_sync_keys_not_copied", "direction" => d)
            .set(n(&self.keys_not_copied) as f64);
        metrics::gauge!("cutover_sync_commands_applied", "direction" => d)
            .set(n(&self.commands_applied) as f64);
        metrics::gauge!("cutover_sync_commands_skipped", "direction" => d)
            .set(n(&self.commands_skipped) as f64);
        metrics::gauge!("cutover_sync_commands_converted", "direction" => d)
            .set(n(&self.commands_converted) as f64);
        metrics::gauge!("cutover_sync_commands_mixed_keys", "direction" => d)
            .set(n(&self.commands_mixed_keys) as f64);
        metrics::gauge!("cutover_sync_applied_offset", "direction" => d)
            .set(n(&self.applied_offset) as f64);
        metrics::gauge!("cutover_sync_received_offset", "direction" => d)
            .set(n(&self.received_offset) as f64);
        metrics::gauge!("cutover_sync_lag_bytes", "direction" => d).set(self.lag_bytes() as f64);
        metrics::gauge!("cutover_sync_lag_seconds", "direction" => d)
            .set(self.lag_ms() as f64 / 1000.0);
        metrics::gauge!("cutover_sync_link_up", "direction" => d).set(
            if self.link_down.load(Ordering::Relaxed) {
                0.0
            } else {
                1.0
            },
        );
        metrics::counter!("cutover_sync_reconnects_total", "direction" => d)
            .absolute(n(&self.reconnects));
        metrics::counter!("cutover_sync_full_resyncs_total", "direction" => d)
            .absolute(n(&self.full_resyncs));
    }
}

/// What to load with [`load_rdb`].
#[derive(Debug, Clone)]
pub struct RdbLoadOptions {
    pub path: PathBuf,
    pub target: RedisUrl,
    pub timeout: Duration,
    pub progress: bool,
    /// Filters, policy and sizes, as for a live source (stream settings unused).
    pub tuning: SyncTuning,
}

/// What a finished (`once`) sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub stats: Stats,
    pub snapshot_bytes: u64,
    /// Stream commands forwarded to the target.
    pub commands: u64,
    /// Stream commands skipped (PING, PUBLISH…, filtered) or not expressible on the target.
    pub commands_skipped: u64,
    /// Stream commands rewritten for the target (included in `commands`).
    pub commands_converted: u64,
    /// Stream commands applied although some of their keys are excluded (see
    /// [`super::filter`]).
    pub commands_mixed_keys: u64,
    /// Replication offset applied and confirmed at the end.
    pub offset: u64,
    /// Description of the target ("Redis 7.0.15").
    pub target: String,
}

enum Msg {
    /// Full resync: a snapshot follows (also after a reconnection the source could not
    /// continue: the applier then starts over).
    Start {
        replid: String,
        offset: u64,
    },
    /// The snapshot's size, if its header says (`None`: diskless).
    SnapshotSize(Option<u64>),
    /// Partial resync at start: the stream continues after `offset`.
    Resumed {
        replid: String,
        offset: u64,
    },
    /// The link dropped (the reason); the link thread is connecting again.
    LinkDown(String),
    /// Reconnected within the run, and the source continued right after the last byte
    /// received (the stream goes on seamlessly).
    Continued {
        replid: String,
        offset: u64,
    },
    Snapshot(Vec<u8>),
    SnapshotDone {
        bytes: u64,
    },
    /// Commands of the stream, and when they were read from the source (for `lag_ms`).
    Commands(Vec<StreamCommand>, Instant),
    /// The link failed for good (the reason; whether a wait may cure it).
    Failed(String, bool),
    /// Look at the shared state now (the cutover barrier asked to stop at an offset).
    Wake,
}

/// What a run of the engine shares with the caller and with the runs before and after it.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// Live state (`cutover run`'s [`SyncOptions::shared`], or one of its own).
    pub progress: Arc<SyncProgress>,
    /// Set by Ctrl-C / SIGTERM (headless `cutover sync`): stop cleanly.
    pub stop: Arc<AtomicBool>,
}

impl RunContext {
    /// The context of `opts`: its shared progress (or a new one) and a stop flag nothing
    /// sets; with `signals`, Ctrl-C / SIGTERM set it.
    pub fn new(opts: &SyncOptions, signals: bool) -> anyhow::Result<RunContext> {
        let stop = Arc::new(AtomicBool::new(false));
        if signals {
            watch_signals(Arc::clone(&stop))?;
        }
        Ok(RunContext {
            progress: opts.shared.clone().unwrap_or_default(),
            stop,
        })
    }
}

/// One run of the sync on the calling thread (blocking), with Ctrl-C / SIGTERM handled
/// unless it runs inside `cutover run`. Returns only with `once`, on a stop (or on an error).
/// [`super::retry::run_retrying`] runs it again after a failure.
pub fn run(opts: &SyncOptions) -> anyhow::Result<SyncReport> {
    run_with(opts, &RunContext::new(opts, opts.shared.is_none())?)
}

/// One run of the sync with the caller's [`RunContext`].
pub fn run_with(opts: &SyncOptions, ctx: &RunContext) -> anyhow::Result<SyncReport> {
    let mut writer = TargetWriter::connect(&opts.target, opts.timeout)?;
    writer.set_window(opts.tuning.pipeline);
    let info = writer.info().clone();
    tracing::info!(target = %info.describe(), max_rdb = info.max_rdb.get(), "target connected");
    let handoff = &ctx.progress.handoff;
    // (A link of a replica overlap writes into a side that was switched to by design.)
    if !handoff.is_overlap()
        && let Some(value) = position::switched_marker(&opts.target, opts.timeout)?
    {
        bail!(
            "the target {} was switched to by `cutover switch` (key {} = {value:?} in db 0): it is a primary now, and syncing into it again would apply writes a second time; delete that key only if its data may be replaced",
            opts.target,
            show_key(position::SWITCHED_KEY)
        );
    }
    let stored = position::read(&mut writer)?;
    let resume = match &stored {
        // A following link continues where it stopped reading (what it skipped is on its
        // side already); without such a place, it reads a new snapshot, which it skips too.
        _ if handoff.is_following() => handoff.position(),
        Stored::At { replid, offset } if !opts.fresh => {
            say(&format!(
                "cutover sync: the target holds the position {replid} {offset}; asking the source to continue from there"
            ));
            Some((replid.clone(), *offset))
        }
        Stored::At { replid, offset } => {
            say(&format!(
                "cutover sync: --fresh: ignoring the position {replid} {offset} stored on the target"
            ));
            None
        }
        Stored::Unusable(v) => {
            say(&format!(
                "cutover sync: the target holds an unusable position {v:?} (an earlier snapshot did not finish)"
            ));
            None
        }
        Stored::None => None,
    };
    match source_keyspace(opts) {
        Ok(dbs) => {
            let numbers: Vec<u64> = dbs.iter().map(|(db, _)| *db).collect();
            if let Some(warning) = opts.tuning.filter.unlisted_warning(&numbers) {
                say(&format!("cutover sync: {warning}"));
                tracing::warn!("{warning}");
            }
            // Before anything is written: every database with keys must exist on the target.
            check_databases(&writer, &opts.tuning.filter, &numbers)?;
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the source's INFO keyspace"),
    }

    let (tx, rx) = sync_channel::<Msg>(32);
    if let Some(shared) = &opts.shared {
        let wake = tx.clone();
        shared.waker.set(Box::new(move || {
            let _ = wake.try_send(Msg::Wake);
        }));
    }
    let applied = Arc::new(AtomicU64::new(0));
    {
        let source = opts.source.clone();
        let applied = Arc::clone(&applied);
        let timeout = opts.timeout;
        std::thread::Builder::new()
            .name("cutover-replica".into())
            .spawn(move || link_thread(source, resume, tx, applied, timeout))
            .context("cannot start the replica link thread")?;
    }
    let progress = Arc::clone(&ctx.progress);
    Applier {
        opts,
        info,
        rx,
        applied,
        report: SyncReport::default(),
        flush_on_full: stored != Stored::None,
        stop: Arc::clone(&ctx.stop),
        replid: String::new(),
        txn_open: false,
        in_source_txn: false,
        txn_commands: 0,
        last_offset: 0,
        peeked: None,
        held_back: None,
        follow_db: 0,
        following_now: false,
        skip_db: false,
        known_commands: std::collections::HashMap::new(),
        txn_uncertain: false,
        pending_since: std::collections::VecDeque::new(),
        progress,
        bar: Bar::new(opts.progress),
        offset_polled: None,
    }
    .run(&mut writer)
}

/// Refuses (before anything is written) source databases that the target does not have
/// once mapped: names them and a `db_map` that would fix it (the target's lowest databases
/// that nothing else is mapped to).
fn check_databases(w: &TargetWriter, filter: &Filter, source_dbs: &[u64]) -> anyhow::Result<()> {
    let Some(n) = w.databases() else {
        return Ok(());
    };
    let mapped: Vec<(u64, u64)> = source_dbs
        .iter()
        .filter_map(|db| filter.map_db(*db).map(|to| (*db, to)))
        .collect();
    let missing: Vec<u64> = mapped
        .iter()
        .filter(|(_, to)| *to >= n)
        .map(|(db, _)| *db)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let used: std::collections::BTreeSet<u64> = mapped
        .iter()
        .filter(|(_, to)| *to < n)
        .map(|(_, to)| *to)
        .collect();
    let mut free = (0..n).filter(|d| !used.contains(d));
    let fix: Vec<String> = missing
        .iter()
        .map_while(|db| free.next().map(|to| format!("{db}={to}")))
        .collect();
    bail!(
        "the source has keys in database(s) {} but the target {} has only {n} databases (0-{}); nothing was written. Map them to databases the target has, e.g. [sync] db_map = \"{}\" (--db-map), or leave them out with only_mapped_dbs",
        missing
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        w.addr(),
        n - 1,
        fix.join(",")
    )
}

/// The source's databases and their key counts (`INFO keyspace`).
fn source_keyspace(opts: &SyncOptions) -> anyhow::Result<Vec<(u64, u64)>> {
    let text = query(&opts.source, &[b"INFO", b"keyspace"], opts.timeout)?;
    Ok(parse_keyspace(&text))
}

/// `db0:keys=5,expires=0,avg_ttl=0` lines → (0, 5).
fn parse_keyspace(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let (db, rest) = l.trim().strip_prefix("db")?.split_once(':')?;
            let keys = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("keys="))?
                .parse()
                .ok()?;
            Some((db.parse().ok()?, keys))
        })
        .collect()
}

/// Sets `stop` on Ctrl-C (SIGINT) or SIGTERM, from a thread of its own.
fn watch_signals(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    // Registered here, so that a signal that arrives once `run` has started is never missed.
    let mut term = {
        let _guard = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?
    };
    std::thread::Builder::new()
        .name("cutover-signals".into())
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            });
            stop.store(true, Ordering::Release);
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn link_thread(
    source: RedisUrl,
    resume: Option<(String, u64)>,
    tx: SyncSender<Msg>,
    applied: Arc<AtomicU64>,
    timeout: Duration,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Msg::Failed(format!("cannot start a runtime: {e}"), false));
            return;
        }
    };
    let mut link = LinkState {
        want: resume,
        sessions: 0,
    };
    if let Err((e, transient)) = rt.block_on(link.run(&source, &tx, &applied, timeout)) {
        let _ = tx.send(Msg::Failed(e, transient));
    }
}

/// A dropped link is connected again for up to this many times the silence timeout before
/// the run fails (5 minutes with the default 60 s).
pub const RECONNECT_TIMEOUTS: u32 = 5;

/// The link thread's memory across connections.
struct LinkState {
    /// Where to continue after a drop: the replication id and the offset of the last byte
    /// received (and handed to the applier). `None`: no complete snapshot on this link yet —
    /// connecting again means a new full sync.
    want: Option<(String, u64)>,
    /// Connections that completed the handshake.
    sessions: u64,
}

/// Why a link session ended.
enum Ended {
    /// The applier is gone (stopped, or failed and says why itself).
    ApplierGone,
    Link(ReplicaError),
}

impl From<ReplicaError> for Ended {
    fn from(e: ReplicaError) -> Ended {
        Ended::Link(e)
    }
}

impl LinkState {
    /// Runs link sessions until the applier stops: a dropped or silent link (no data and no
    /// PING for `timeout`) is connected again with `PSYNC <replid> <offset + 1>`, after a short
    /// back-off, for as long as the source can be reached again within
    /// [`RECONNECT_TIMEOUTS`] × `timeout`. The first
    /// connection is not retried (the caller reports it; `cutover run` retries the whole run).
    async fn run(
        &mut self,
        source: &RedisUrl,
        tx: &SyncSender<Msg>,
        applied: &AtomicU64,
        timeout: Duration,
    ) -> Result<(), (String, bool)> {
        let mut down_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            let before = self.sessions;
            let err = match self.session(source, tx, applied, timeout).await {
                Ended::ApplierGone => return Ok(()),
                Ended::Link(e) => e,
            };
            if !err.is_transient() || self.sessions == 0 {
                // (A first connection refused may be a source that is restarting, or a wrong
                // address: the caller decides.)
                return Err((err.to_string(), err.is_transient()));
            }
            if self.sessions > before {
                // This connection got through its handshake before it dropped: a new outage.
                down_since = None;
                backoff = Duration::from_millis(100);
            }
            let since = match down_since {
                Some(t) => t,
                None => {
                    if tx.send(Msg::LinkDown(err.to_string())).is_err() {
                        return Ok(());
                    }
                    *down_since.insert(Instant::now())
                }
            };
            let give_up = timeout * RECONNECT_TIMEOUTS;
            if since.elapsed() > give_up {
                return Err((
                    format!(
                        "the replication link dropped and the source could not be reached again within {} s: {err}",
                        give_up.as_secs()
                    ),
                    false,
                ));
            }
            tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "replication link down; connecting again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn session(
        &mut self,
        source: &RedisUrl,
        tx: &SyncSender<Msg>,
        applied: &AtomicU64,
        timeout: Duration,
    ) -> Ended {
        let send = |m: Msg| tx.send(m).map_err(|_| Ended::ApplierGone);
        let res: Result<(), Ended> = async {
            let wanted = self.want.as_ref().map(|(id, off)| (id.as_str(), *off));
            let (mut link, start) = ReplicaLink::connect(source, wanted, 0, timeout).await?;
            self.sessions += 1;
            let first = self.sessions == 1;
            match start {
                SyncStart::FullResync { replid, offset } => {
                    self.want = None;
                    applied.store(offset, Ordering::Release);
                    send(Msg::Start {
                        replid: replid.clone(),
                        offset,
                    })?;
                    let mut gone = false;
                    let bytes = link
                        .receive_snapshot_sized(
                            |size| {
                                tx.send(Msg::SnapshotSize(size))
                                    .map_err(|_| "the applier stopped".to_string())
                            },
                            |piece| {
                                tx.send(Msg::Snapshot(piece.to_vec())).map_err(|_| {
                                    gone = true;
                                    "the applier stopped".to_string()
                                })
                            },
                        )
                        .await;
                    if gone {
                        return Err(Ended::ApplierGone);
                    }
                    let bytes = bytes?;
                    send(Msg::SnapshotDone { bytes })?;
                    self.want = Some((replid, link.offset()));
                }
                SyncStart::Continue { replid } => {
                    let Some((old, offset)) = self.want.take() else {
                        return Err(Ended::Link(ReplicaError::Protocol {
                            addr: source.addr(),
                            step: "PSYNC",
                            detail: "+CONTINUE to PSYNC ? -1".into(),
                        }));
                    };
                    let replid = replid.unwrap_or(old);
                    self.want = Some((replid.clone(), offset));
                    if first {
                        applied.store(offset, Ordering::Release);
                        send(Msg::Resumed { replid, offset })?;
                    } else {
                        send(Msg::Continued { replid, offset })?;
                    }
                }
            }
            loop {
                let cmds = link
                    .next_commands_with(|| applied.load(Ordering::Acquire))
                    .await?;
                if let Some(want) = &mut self.want {
                    want.1 = link.offset();
                }
                send(Msg::Commands(cmds, Instant::now()))?;
            }
        }
        .await;
        match res {
            Ok(()) => Ended::ApplierGone,
            Err(e) => e,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Snapshot,
    Streaming,
}

impl Phase {
    /// Its number in [`SyncProgress::phase`] (3, an error, is set by the retry loop).
    fn code(&self) -> u8 {
        match self {
            Phase::Connecting => 0,
            Phase::Snapshot => 1,
            Phase::Streaming => 2,
        }
    }
}

struct Applier<'a> {
    opts: &'a SyncOptions,
    info: TargetInfo,
    rx: Receiver<Msg>,
    applied: Arc<AtomicU64>,
    report: SyncReport,
    /// The target holds data of an earlier sync: a full resync flushes it first.
    flush_on_full: bool,
    /// Set by Ctrl-C / SIGTERM.
    stop: Arc<AtomicBool>,
    /// The source's replication id (stored with every position).
    replid: String,
    /// A `MULTI` was sent and its `EXEC` not yet.
    txn_open: bool,
    /// The open transaction is the source's own (its `EXEC` closes ours).
    in_source_txn: bool,
    txn_commands: usize,
    /// Replication offset after the last stream command queued.
    last_offset: u64,
    /// A message taken from `rx` to see whether more were waiting, handled next.
    peeked: Option<Msg>,
    /// Stream commands after the barrier's offset, kept (before `peeked`) for whatever the
    /// link does next: apply them (the move was aborted) or skip them (it follows now).
    held_back: Option<Msg>,
    /// The stream's current database while following (the applier uses the writer's).
    follow_db: u64,
    /// The last step ran as the follower.
    following_now: bool,
    /// The stream's current database is not copied (`--only-mapped-dbs`): its commands are
    /// skipped until the next `SELECT`.
    skip_db: bool,
    /// Stream commands the target knows or not (`COMMAND INFO`), by name.
    /// What `COMMAND INFO` says of each command name asked about (upper case).
    known_commands: std::collections::HashMap<String, CommandShape>,
    /// The open batch has a command the target might refuse while queueing (one it does
    /// not know, with an argument count outside its arity, or that could not be asked
    /// about): its `EXEC` waits for every `+QUEUED` (see [`Applier::close_txn`]).
    txn_uncertain: bool,
    /// (end offset, time read from the source) of each received batch of stream commands
    /// the target has not confirmed yet, oldest first: `lag_ms` is the age of the first.
    pending_since: std::collections::VecDeque<(u64, Instant)>,
    /// Live state (shared with `cutover run`'s status, or the engine's own).
    progress: Arc<SyncProgress>,
    bar: Bar,
    /// When headless `cutover sync` last read the source's offset (for the lag).
    offset_polled: Option<Instant>,
}

impl Applier<'_> {
    fn run(mut self, w: &mut TargetWriter) -> anyhow::Result<SyncReport> {
        self.report.target = self.info.describe();
        let mut conv = Converter::with_options(w, self.opts.convert_options());
        let res = self.run_loop(w, &mut conv);
        // Whatever happened, a next run that continues this stream goes on counting from
        // here (a full sync starts the counts anew).
        if let Ok(mut carried) = self.progress.carried.lock() {
            *carried = Some(Carried {
                stats: conv.stats.clone(),
                report: self.report.clone(),
            });
        }
        res
    }

    fn run_loop(
        &mut self,
        w: &mut TargetWriter,
        conv: &mut Converter,
    ) -> anyhow::Result<SyncReport> {
        let mut parser = self.opts.parser();
        let mut phase = Phase::Connecting;
        let mut start_offset = 0;
        let mut stop_at: Option<u64> = None;
        let mut started = Instant::now();
        loop {
            if self.stop.load(Ordering::Acquire) {
                self.bar.finish();
                if self.progress.handoff.is_following() {
                    // A follower wrote nothing: nothing to store.
                    self.report.offset = self.last_offset;
                    return Ok(self.report.clone());
                }
                return self.stop_cleanly(w, &phase, &mut conv.stats);
            }
            if self.progress.handoff.is_following() {
                if !self.following_now {
                    self.enter_following(w)?;
                }
                self.follow_step(w, &mut phase)?;
                continue;
            }
            self.following_now = false;
            let barrier = self.opts.shared.as_ref().and_then(|s| s.stop_requested());
            if let (Some(limit), Phase::Streaming, Some(shared)) =
                (barrier, &phase, &self.opts.shared)
            {
                if w.in_flight() > 0 {
                    w.drain()?;
                }
                if w.confirmed_offset().unwrap_or(0) >= limit && !self.in_source_txn {
                    if self.progress.handoff.is_overlap() {
                        self.park(w, limit)?;
                        continue;
                    }
                    let report = self.stop_cleanly(w, &phase, &mut conv.stats)?;
                    shared
                        .applied_offset
                        .store(report.offset, Ordering::Release);
                    shared.stopped.store(true, Ordering::Release);
                    return Ok(report);
                }
            }
            // Waiting for the barrier's offset: poll often (the clients are being held).
            let wait = if barrier.is_some() {
                Duration::from_micros(200)
            } else {
                Duration::from_millis(100)
            };
            let msg = self.next_msg(wait);
            match msg {
                Ok(Msg::Start { replid, offset }) => {
                    // Seen at once (status, `rollback_safe`), not after the flush below.
                    self.progress.phase.store(1, Ordering::Relaxed);
                    if phase != Phase::Connecting {
                        // The link dropped and the source could not continue: start over.
                        self.restart_full(w, &phase)?;
                        parser = self.opts.parser();
                        *conv = Converter::with_options(w, self.opts.convert_options());
                        self.report.snapshot_bytes = 0;
                        stop_at = None;
                        started = Instant::now();
                    }
                    start_offset = offset;
                    self.last_offset = offset;
                    self.replid = replid;
                    phase = Phase::Snapshot;
                    self.progress.mark_established();
                    // A new copy: the counts of an earlier run do not apply to it.
                    if let Ok(mut carried) = self.progress.carried.lock() {
                        *carried = None;
                    }
                    self.progress
                        .snapshot_bytes_total
                        .store(0, Ordering::Relaxed);
                    match source_keyspace(self.opts) {
                        Ok(dbs) => self
                            .progress
                            .keys_total
                            .store(dbs.iter().map(|(_, n)| n).sum(), Ordering::Relaxed),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the source's INFO keyspace (no key total)")
                        }
                    }
                    if self.flush_on_full {
                        self.bar.say(&format!(
                            "cutover sync: WARNING: full resync: FLUSHALL on the target {} (it holds the data of an earlier sync, which is replaced entirely)",
                            w.addr()
                        ));
                        w.send(&[&b"FLUSHALL"[..]], Tag::key("FLUSHALL", b""))?;
                    }
                    // From now on the target holds (part of) this sync's data.
                    self.flush_on_full = true;
                    position::queue_set(w, position::LOADING)?;
                }
                Ok(Msg::SnapshotSize(size)) => {
                    self.progress
                        .snapshot_bytes_total
                        .store(size.unwrap_or(0), Ordering::Relaxed);
                }
                Ok(Msg::LinkDown(why)) => {
                    self.progress.link_down.store(true, Ordering::Relaxed);
                    self.bar.say(&format!(
                        "cutover sync: the replication link dropped ({why}); connecting again"
                    ));
                }
                Ok(Msg::Continued { replid, offset }) => {
                    self.progress.link_down.store(false, Ordering::Relaxed);
                    self.progress.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.bar.say(&format!(
                        "cutover sync: reconnected; the source continued (+CONTINUE) after offset {offset}"
                    ));
                    self.replid = replid;
                }
                Ok(Msg::Resumed { replid, offset }) => {
                    self.bar.say(&format!(
                        "cutover sync: the source continued (+CONTINUE) from offset {offset}: no snapshot needed, streaming"
                    ));
                    start_offset = offset;
                    self.last_offset = offset;
                    self.replid = replid;
                    self.flush_on_full = true;
                    w.mark_offset(offset);
                    phase = Phase::Streaming;
                    self.progress.mark_established();
                    // The stream of an earlier run of this process goes on: so do its counts.
                    let carried = self.progress.carried.lock().ok().and_then(|mut c| c.take());
                    if let Some(c) = carried {
                        conv.stats = c.stats;
                        self.report.commands = c.report.commands;
                        self.report.commands_skipped = c.report.commands_skipped;
                        self.report.commands_converted = c.report.commands_converted;
                        self.report.commands_mixed_keys = c.report.commands_mixed_keys;
                        self.report.snapshot_bytes = c.report.snapshot_bytes;
                    }
                    if self.opts.once {
                        stop_at = Some(self.source_offset().unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "cannot read the source's offset; --once stops at the resumed offset");
                            start_offset
                        }));
                    }
                }
                Ok(Msg::Snapshot(bytes)) => {
                    self.report.snapshot_bytes += bytes.len() as u64;
                    parser.feed(&bytes);
                    while let Some(ev) = parser
                        .next_event()
                        .context("the source's snapshot cannot be read; the target holds a partial copy (cutover:position = snapshot-loading): the next run flushes it and copies again")?
                    {
                        conv.apply(ev, w)?;
                    }
                }
                Ok(Msg::SnapshotDone { bytes }) => {
                    parser
                        .finish()
                        .context("the source's snapshot ended early; the target holds a partial copy (cutover:position = snapshot-loading): the next run flushes it and copies again")?;
                    conv.finish(w)?;
                    debug_assert_eq!(bytes, self.report.snapshot_bytes);
                    w.drain()?;
                    position::queue_set(w, &position::format(&self.replid, start_offset))?;
                    w.drain()?;
                    w.mark_offset(start_offset);
                    phase = Phase::Streaming;
                    if self.opts.once {
                        stop_at = Some(self.source_offset().unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "cannot read the source's offset; --once stops at the snapshot's offset");
                            start_offset
                        }));
                    }
                    if self.opts.progress {
                        let s = &conv.stats;
                        let types: Vec<String> = KINDS
                            .iter()
                            .zip(s.by_type)
                            .filter(|(_, n)| *n > 0)
                            .map(|(k, n)| format!("{n} {}", k.name()))
                            .collect();
                        self.bar.say(&format!(
                            "cutover sync: snapshot applied: {} keys [{}] ({} restored of which {} re-encoded, {} plain, {} expired, {} filtered, {} not copied), {} in {:.1} s",
                            s.keys_done(),
                            types.join(", "),
                            s.restored,
                            s.reencoded,
                            s.plain,
                            s.expired,
                            s.filtered,
                            s.unsupported,
                            human_bytes(self.report.snapshot_bytes),
                            started.elapsed().as_secs_f64()
                        ));
                    }
                }
                Ok(Msg::Commands(cmds, read_at)) => {
                    if let Some(last) = cmds.last() {
                        self.pending_since.push_back((last.end_offset, read_at));
                    }
                    self.apply_batch(cmds, w, &mut conv.stats)?;
                    match self.rx.try_recv() {
                        Ok(next) => {
                            self.peeked = Some(next);
                            w.poll()?;
                        }
                        // Nothing else arrived meanwhile: wait for the target's answers, so the
                        // applied offset (lag, ACKs, the barrier) is current. When commands
                        // keep coming, batches grow instead and the target stays pipelined.
                        Err(_) => w.drain()?,
                    }
                }
                Ok(Msg::Failed(message, transient)) => {
                    return Err(EngineError::SourceLink { message, transient }.into());
                }
                Ok(Msg::Wake) => {}
                Err(RecvTimeoutError::Timeout) => {
                    // Nothing new: let the target answer what is in flight.
                    if phase == Phase::Streaming {
                        w.drain()?;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => bail!("the replica link stopped"),
            }
            self.report_exec_errors(w, &mut conv.stats)?;
            if phase == Phase::Streaming
                && let Some(off) = w.confirmed_offset()
            {
                // (A store, not a max: after a full resync the offsets start anew.)
                self.applied.store(off, Ordering::Release);
                while self
                    .pending_since
                    .front()
                    .is_some_and(|(end, _)| *end <= off)
                {
                    self.pending_since.pop_front();
                }
            }
            if phase != Phase::Streaming {
                self.pending_since.clear();
            }
            let oldest = self.pending_since.front().map(|(_, at)| *at);
            self.progress.set_oldest_pending(oldest);
            if let Some(stop) = stop_at {
                if w.confirmed_offset().unwrap_or(0) < stop && w.in_flight() > 0 {
                    w.drain()?;
                }
                if let Some(off) = w.confirmed_offset()
                    && off >= stop
                {
                    w.drain()?;
                    self.report_exec_errors(w, &mut conv.stats)?;
                    self.bar.finish();
                    self.report.offset = w.confirmed_offset().unwrap_or(off);
                    self.report.stats = conv.stats.clone();
                    return Ok(self.report.clone());
                }
            }
            let applied = w.confirmed_offset().unwrap_or(start_offset);
            let received = if phase == Phase::Streaming {
                self.last_offset
            } else {
                applied
            };
            self.progress.update(&Snapshot {
                phase: &phase,
                stats: &conv.stats,
                snapshot_bytes: self.report.snapshot_bytes,
                received,
                applied,
                commands: self.report.commands,
                skipped: self.report.commands_skipped,
                converted: self.report.commands_converted,
                mixed: self.report.commands_mixed_keys,
            });
            self.poll_source_offset(&phase);
            self.bar.tick(&self.progress);
        }
    }

    /// The next message: commands held back at the barrier first, then one peeked at, then
    /// the link's channel (waiting up to `wait`).
    fn next_msg(&mut self, wait: Duration) -> Result<Msg, RecvTimeoutError> {
        match self.held_back.take().or_else(|| self.peeked.take()) {
            Some(m) => Ok(m),
            None => self.rx.recv_timeout(wait),
        }
    }

    /// The applying link of a replica overlap reached the barrier's offset `limit` (and the
    /// target confirmed it): it waits there, taking nothing more from its stream, until the
    /// controller either makes it the follower ([`Handoff::follow`]) or withdraws the stop
    /// (the move was aborted: it applies on).
    fn park(&mut self, w: &mut TargetWriter, limit: u64) -> anyhow::Result<()> {
        let p = Arc::clone(&self.progress);
        let confirmed = w.confirmed_offset().unwrap_or(limit);
        self.applied.store(confirmed, Ordering::Release);
        p.applied_offset.store(confirmed, Ordering::Release);
        p.stopped.store(true, Ordering::Release);
        // (The controller decides within its pause limit; the bound here only keeps a lost
        // controller from parking the link for good.)
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.stop_requested().is_some()
            && !p.handoff.is_following()
            && !self.stop.load(Ordering::Acquire)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_micros(100));
        }
        p.stopped.store(false, Ordering::Release);
        if p.handoff.is_following() {
            tracing::info!(
                direction = p.direction(),
                offset = confirmed,
                "the link applied up to the barrier and follows now (reads without applying)"
            );
        } else if p.stop_requested().is_some() {
            bail!("the cutover controller never decided what this link does after the barrier");
        }
        Ok(())
    }

    /// The link follows from now on (a move made it the follower, or undid its taking
    /// over): a transaction it had open is discarded, and the stream's database is the
    /// writer's.
    fn enter_following(&mut self, w: &mut TargetWriter) -> anyhow::Result<()> {
        if self.txn_open {
            w.discard()?;
            self.txn_open = false;
            self.in_source_txn = false;
            self.txn_commands = 0;
        }
        w.drain()?;
        self.follow_db = w.db();
        self.pending_since.clear();
        self.following_now = true;
        Ok(())
    }

    /// One step of a following link ([`super::handoff`]): it reads its stream and skips it
    /// (the other side has it already), keeping track of the offset and the stream's
    /// database, and acknowledges what it read. Asked to apply from an offset, it skips up to
    /// there and starts applying exactly there; asked to hold, it takes nothing.
    fn follow_step(&mut self, w: &mut TargetWriter, phase: &mut Phase) -> anyhow::Result<()> {
        let p = Arc::clone(&self.progress);
        let h = &p.handoff;
        let request = h.apply_request().filter(|_| *phase == Phase::Streaming);
        if let Some((replid, from)) = &request
            && self.last_offset >= *from
        {
            return self.start_applying(w, replid, *from);
        }
        if h.hold_requested() {
            h.set_held(true);
            std::thread::sleep(Duration::from_micros(100));
            return Ok(());
        }
        h.set_held(false);
        let wait = if request.is_some() {
            Duration::from_micros(200)
        } else {
            Duration::from_millis(100)
        };
        match self.next_msg(wait) {
            Ok(Msg::Start { replid, offset }) => {
                if *phase != Phase::Connecting {
                    p.reconnects.fetch_add(1, Ordering::Relaxed);
                    p.full_resyncs.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        direction = p.direction(),
                        "the following link could not continue its stream (+FULLRESYNC): it reads a new snapshot and skips it (the other side has that data); a move to its side waits until it is streaming again"
                    );
                }
                self.replid = replid;
                self.last_offset = offset;
                self.follow_db = 0;
                self.report.snapshot_bytes = 0;
                p.snapshot_bytes_total.store(0, Ordering::Relaxed);
                p.mark_established();
                *phase = Phase::Snapshot;
            }
            Ok(Msg::SnapshotSize(size)) => {
                p.snapshot_bytes_total
                    .store(size.unwrap_or(0), Ordering::Relaxed);
            }
            Ok(Msg::Snapshot(bytes)) => self.report.snapshot_bytes += bytes.len() as u64,
            Ok(Msg::SnapshotDone { .. }) => *phase = Phase::Streaming,
            Ok(Msg::Resumed { replid, offset }) => {
                self.replid = replid;
                self.last_offset = offset;
                p.mark_established();
                *phase = Phase::Streaming;
            }
            Ok(Msg::Continued { replid, .. }) => {
                p.link_down.store(false, Ordering::Relaxed);
                p.reconnects.fetch_add(1, Ordering::Relaxed);
                self.replid = replid;
            }
            Ok(Msg::LinkDown(why)) => {
                p.link_down.store(true, Ordering::Relaxed);
                tracing::warn!(
                    direction = p.direction(),
                    "the following link dropped ({why}); connecting again"
                );
            }
            Ok(Msg::Commands(cmds, read_at)) => {
                let mut cmds = cmds.into_iter();
                while let Some(cmd) = cmds.next() {
                    if let Some((_, from)) = &request
                        && self.last_offset >= *from
                    {
                        // The rest is applied, from the next step on.
                        let mut rest = vec![cmd];
                        rest.extend(cmds);
                        self.held_back = Some(Msg::Commands(rest, read_at));
                        break;
                    }
                    if let Some(db) = select_db(&cmd.wire) {
                        self.follow_db = db;
                    }
                    self.last_offset = cmd.end_offset;
                }
            }
            Ok(Msg::Failed(message, transient)) => {
                return Err(EngineError::SourceLink { message, transient }.into());
            }
            Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the replica link stopped"),
        }
        if *phase == Phase::Streaming {
            self.applied.store(self.last_offset, Ordering::Release);
            h.set_position(&self.replid, self.last_offset);
        }
        self.progress.set_oldest_pending(None);
        let offset = if *phase == Phase::Streaming {
            self.last_offset
        } else {
            0
        };
        // (The counts of what this link applied before stay as they are.)
        self.progress.update_following(phase, offset);
        Ok(())
    }

    /// The follower reached the offset it was asked to apply from: from here on it applies.
    /// The position is stored on its side at once, so a restart of this engine continues
    /// from exactly here.
    fn start_applying(
        &mut self,
        w: &mut TargetWriter,
        replid: &str,
        from: u64,
    ) -> anyhow::Result<()> {
        let h = &self.progress.handoff;
        if replid != self.replid {
            h.refuse(format!(
                "its stream is {} but the offset to apply from belongs to {replid} (the link resynced)",
                self.replid
            ));
            return Ok(());
        }
        if self.last_offset != from {
            h.refuse(format!(
                "it had read up to offset {} already, past {from}",
                self.last_offset
            ));
            return Ok(());
        }
        let db = self
            .opts
            .tuning
            .filter
            .map_db(self.follow_db)
            .unwrap_or(self.follow_db);
        w.select(db)?;
        w.mark_offset(from);
        position::queue_set(w, &position::format(&self.replid, from))?;
        w.drain()?;
        self.flush_on_full = true;
        self.skip_db = false;
        self.pending_since.clear();
        self.applied.store(from, Ordering::Release);
        self.progress.applied_offset.store(from, Ordering::Release);
        h.started_applying();
        tracing::info!(
            direction = self.progress.direction(),
            replid,
            offset = from,
            "the link applies from here on"
        );
        Ok(())
    }

    /// A full resync within the run (the link dropped and the source could not continue, or
    /// dropped during the snapshot): what the target holds is an earlier or partial copy, so
    /// it is flushed and loaded anew — no stale key, no doubled list element.
    fn restart_full(&mut self, w: &mut TargetWriter, phase: &Phase) -> anyhow::Result<()> {
        if self.txn_open {
            w.discard()?;
            self.txn_open = false;
            self.in_source_txn = false;
            self.txn_commands = 0;
        }
        w.drain()?;
        self.progress.reconnects.fetch_add(1, Ordering::Relaxed);
        self.progress.full_resyncs.fetch_add(1, Ordering::Relaxed);
        let during = if *phase == Phase::Snapshot {
            "the snapshot did not arrive whole"
        } else {
            "the source could not continue the stream (+FULLRESYNC)"
        };
        self.bar.say(&format!(
            "cutover sync: WARNING: reconnected, but {during}: FLUSHALL on the target {} and a new full sync",
            w.addr()
        ));
        self.flush_on_full = true;
        self.skip_db = false;
        Ok(())
    }

    /// Ctrl-C / SIGTERM: the position of everything applied stays stored; a transaction of the
    /// source that is still incomplete is discarded (it comes again on the next start).
    fn stop_cleanly(
        &mut self,
        w: &mut TargetWriter,
        phase: &Phase,
        stats: &mut Stats,
    ) -> anyhow::Result<SyncReport> {
        if *phase == Phase::Connecting {
            say("cutover sync: stopped before the sync started; the target is unchanged");
            return Ok(self.report.clone());
        }
        if *phase != Phase::Streaming {
            bail!(
                "stopped before the snapshot was applied: the target is incomplete (the next start does a full sync)"
            );
        }
        if self.txn_open {
            w.discard()?;
            self.txn_open = false;
            self.in_source_txn = false;
        }
        w.drain()?;
        self.report_exec_errors(w, stats)?;
        self.report.offset = w.confirmed_offset().unwrap_or(0);
        self.report.stats = stats.clone();
        let line = format!(
            "cutover sync: stopped; position {} {} stored on the target ({})",
            self.replid,
            self.report.offset,
            show_key(POSITION_KEY)
        );
        if self.opts.shared.is_some() {
            // Inside `cutover run` (the switch stopped it): a log line, not terminal output.
            tracing::info!("{line}");
        } else {
            say(&line);
        }
        Ok(self.report.clone())
    }

    /// Headless `cutover sync` (no `cutover run` poller): once a second while streaming,
    /// reads the source's own offset, so that the lag counts what the link has not read yet
    /// (a frozen target stops the link reading). One short connection; a source that does
    /// not answer within a second is just not polled this time.
    fn poll_source_offset(&mut self, phase: &Phase) {
        if self.opts.shared.is_some() || *phase != Phase::Streaming {
            return;
        }
        if self
            .offset_polled
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.offset_polled = Some(Instant::now());
        if let Ok(off) = self.source_offset_within(Duration::from_secs(1)) {
            self.progress.set_server_offset(off);
        }
    }

    /// The source's `master_repl_offset` now.
    fn source_offset(&self) -> anyhow::Result<u64> {
        self.source_offset_within(self.opts.timeout)
    }

    /// The source's `master_repl_offset`, asked on a connection of its own within `timeout`.
    fn source_offset_within(&self, timeout: Duration) -> anyhow::Result<u64> {
        let text = query(&self.opts.source, &[b"INFO", b"replication"], timeout)?;
        super::replica::master_repl_offset(&text)
            .context("INFO replication has no master_repl_offset")
    }

    /// Applies the commands of one read from the link: in transactions that also store the
    /// position (a source transaction becomes one of them; ours are closed before it).
    fn apply_batch(
        &mut self,
        cmds: Vec<StreamCommand>,
        w: &mut TargetWriter,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        let limit = self.opts.shared.as_ref().and_then(|s| s.stop_requested());
        let mut cmds = cmds.into_iter();
        while let Some(cmd) = cmds.next() {
            if let Some(limit) = limit
                && self.last_offset >= limit
                && !self.in_source_txn
            {
                // The cutover barrier's offset is reached: what follows (the shadow writes of
                // the proxy, after the flip) must never reach the target. A link of a replica
                // overlap keeps it for what it does next (apply it after an aborted move, or
                // skip it as the follower).
                if self.progress.handoff.is_overlap() {
                    let mut rest = vec![cmd];
                    rest.extend(cmds);
                    self.held_back = Some(Msg::Commands(rest, Instant::now()));
                }
                break;
            }
            let args = split_args(&cmd.wire).with_context(|| {
                format!(
                    "unreadable command in the replication stream before offset {}",
                    cmd.end_offset
                )
            })?;
            let name = args
                .first()
                .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
                .unwrap_or_default();
            match name.as_str() {
                "MULTI" => {
                    if self.in_source_txn {
                        bail!(
                            "MULTI inside MULTI in the replication stream before offset {}",
                            cmd.end_offset
                        );
                    }
                    if self.txn_open {
                        self.close_txn(w, stats)?;
                    }
                    w.begin_txn()?;
                    self.txn_open = true;
                    self.in_source_txn = true;
                    self.txn_commands = 0;
                }
                "EXEC" if self.in_source_txn => {
                    self.last_offset = cmd.end_offset;
                    self.close_txn(w, stats)?;
                    self.in_source_txn = false;
                }
                "EXEC" | "DISCARD" => {
                    tracing::warn!(
                        offset = cmd.end_offset,
                        "{name} outside a transaction in the replication stream: ignored"
                    );
                    self.report.commands_skipped += 1;
                }
                _ => {
                    if !self.txn_open {
                        w.begin_txn()?;
                        self.txn_open = true;
                        self.txn_commands = 0;
                    }
                    self.forward(&cmd, &args, &name, w, stats)?;
                    self.txn_commands += 1;
                }
            }
            self.last_offset = cmd.end_offset;
            if self.txn_open
                && !self.in_source_txn
                && self.txn_commands >= self.opts.tuning.batch_size.max(1)
            {
                self.close_txn(w, stats)?;
            }
        }
        if self.txn_open && !self.in_source_txn {
            self.close_txn(w, stats)?;
        }
        Ok(())
    }

    /// Stores the position reached and sends `EXEC` — at once, or, when the batch holds a
    /// command the target might refuse while queueing ([`Applier::check_queueable`]), once
    /// the target has queued every command of the transaction. A stream command it refuses while queueing (an argument
    /// or a command it does not know: `-ERR` instead of `+QUEUED`, and `EXEC` would then
    /// apply nothing) is reported and left out, and the transaction is sent again without it,
    /// together with the position: the rest applies exactly once, in order (nothing behind
    /// the transaction is sent before its `EXEC`).
    fn close_txn(&mut self, w: &mut TargetWriter, stats: &mut Stats) -> anyhow::Result<()> {
        position::queue_set(w, &position::format(&self.replid, self.last_offset))?;
        // Only a command the target does not know, or one with an argument count outside
        // its arity, is refused while queueing (target-wide refusals such as OOM or READONLY
        // hit the position write of every batch alike). Without such a command the `EXEC`
        // follows at once and batches stay pipelined.
        let uncertain = std::mem::take(&mut self.txn_uncertain);
        if uncertain {
            loop {
                let refused = w.txn_refused()?;
                if refused.is_empty() {
                    break;
                }
                let mut drop = Vec::with_capacity(refused.len());
                for (i, r) in refused {
                    if !r.tag.replicated || !r.is_command_error() {
                        // Our own command, or the target refuses writes as a whole (OOM,
                        // NOPERM, READONLY…): stop; the position stored is still the last one
                        // applied.
                        bail!(TargetError::Refused {
                            addr: w.addr().to_string(),
                            step: describe_tag(&r.tag),
                            reply: r.error,
                        });
                    }
                    self.unsupported(
                        stats,
                        format!(
                            "{}: {} refused it ({}); left out, the rest of the stream is applied",
                            describe_tag(&r.tag),
                            self.info.describe(),
                            r.error
                        ),
                    )?;
                    self.report.commands = self.report.commands.saturating_sub(1);
                    self.report.commands_skipped += 1;
                    drop.push(i);
                }
                w.resend_txn_without(&drop)?;
            }
        }
        w.exec_txn(Tag {
            what: "EXEC".into(),
            offset: Some(self.last_offset),
            ..Tag::default()
        })?;
        self.txn_open = false;
        self.txn_commands = 0;
        Ok(())
    }

    /// Reports the stream commands that failed inside an `EXEC` (`WRONGTYPE`…: the target's
    /// data differs from the source's, or a `RESTORE` payload it cannot read). A replica of
    /// Redis ignores such errors too; the rest of the transaction was applied, so the sync
    /// goes on (under `unsupported = fail` it stops).
    fn report_exec_errors(
        &mut self,
        w: &mut TargetWriter,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        for r in w.take_exec_errors() {
            if !r.tag.replicated {
                bail!(TargetError::Refused {
                    addr: w.addr().to_string(),
                    step: format!("{} (inside a transaction)", describe_tag(&r.tag)),
                    reply: r.error,
                });
            }
            self.unsupported(
                stats,
                format!(
                    "{}: failed on {} ({}); not applied, the rest of the stream is",
                    describe_tag(&r.tag),
                    self.info.describe(),
                    r.error
                ),
            )?;
        }
        Ok(())
    }

    /// Forwards one command of the replication stream (inside a transaction): filtered
    /// (excluded commands, keys, databases), databases mapped, and rewritten where the target
    /// does not know an argument but has an equivalent; what it cannot express is reported
    /// (and stops the sync under `unsupported = fail`).
    fn forward(
        &mut self,
        cmd: &StreamCommand,
        args: &[&[u8]],
        name: &str,
        w: &mut TargetWriter,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        let keys = command_keys(name, args);
        let first_key = keys.first().copied().unwrap_or(1);
        let tag = |what: &str| Tag {
            key: args.get(first_key).map(|k| k.to_vec()).unwrap_or_default(),
            what: format!("{what} (stream offset {})", cmd.end_offset).into(),
            replicated: true,
            ..Tag::default()
        };
        let filter = &self.opts.tuning.filter;
        if matches!(name, "PING" | "PUBLISH" | "SPUBLISH" | "REPLCONF") {
            self.report.commands_skipped += 1;
            return Ok(());
        }
        if name == "SELECT" {
            let db = args
                .get(1)
                .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u64>().ok())
                .context("SELECT without a database number in the replication stream")?;
            if let Some(to) = filter.map_db(db) {
                // A database the target lacks stops the sync here: never into another one.
                w.check_db(to)?;
            }
            match filter.map_db(db) {
                Some(to) if to == db => w.send_wire(&cmd.wire, tag(name))?,
                Some(to) => {
                    let n = to.to_string();
                    w.send(&[&b"SELECT"[..], n.as_bytes()], tag(name))?;
                }
                None => {
                    self.skip_db = true;
                    self.report.commands_skipped += 1;
                    return Ok(());
                }
            }
            self.skip_db = false;
            w.set_db(filter.map_db(db).unwrap_or(db));
            self.report.commands += 1;
            return Ok(());
        }
        if self.skip_db || filter.command_excluded(name) {
            self.report.commands_skipped += 1;
            return Ok(());
        }
        if !keys.is_empty() {
            let allowed = keys
                .iter()
                .filter(|i| filter.key_allowed(args[**i]))
                .count();
            if allowed == 0 {
                self.report.commands_skipped += 1;
                return Ok(());
            }
            if allowed < keys.len() {
                self.report.commands_mixed_keys += 1;
                tracing::debug!(
                    command = name,
                    "a stream command touches copied and excluded keys; applied"
                );
            }
        }
        if let Some(i) = keys
            .iter()
            .find(|i| position::is_own_key(w.db(), args[**i]))
        {
            if self.progress.handoff.is_overlap() {
                // (The other side's own bookkeeping, e.g. the switch marker: expected.)
                tracing::debug!(
                    "a write to {} in the replication stream is not applied (the key is cutover's own)",
                    show_key(args[*i])
                );
            } else {
                tracing::warn!(
                    "a write to {} in the replication stream is not applied (the key is cutover's own)",
                    show_key(args[*i])
                );
            }
            self.report.commands_skipped += 1;
            return Ok(());
        }
        match self.rewrite(name, args, stats)? {
            Rewrite::Skip => {
                self.report.commands_skipped += 1;
                return Ok(());
            }
            Rewrite::Same => {
                self.check_queueable(name, args.len());
                w.send_wire(&cmd.wire, tag(name))?
            }
            Rewrite::Args(new) => {
                self.check_rewritten(&new);
                w.send(&new, tag(name))?;
                self.report.commands_converted += 1;
            }
            Rewrite::Many(cmds) => {
                for new in &cmds {
                    self.check_rewritten(new);
                    let mut t = tag(name);
                    t.key = new.get(1).cloned().unwrap_or_default();
                    w.send(new, t)?;
                }
                self.report.commands_converted += 1;
            }
        }
        self.report.commands += 1;
        Ok(())
    }

    /// How a stream command must change for the target (see [`Applier::forward`]).
    fn rewrite(
        &mut self,
        name: &str,
        args: &[&[u8]],
        stats: &mut Stats,
    ) -> anyhow::Result<Rewrite> {
        let filter = &self.opts.tuning.filter;
        let old_streams = !(self.info.valkey || self.info.version >= (7, 0, 0));
        Ok(match name {
            // A condition that held on the source holds on the target (same data): the flags
            // only decide whether to apply, and the source did.
            // (Redis 7.0 and Valkey propagate every EXPIRE as PEXPIREAT, flag included; other
            // sources may send the original command.)
            "PEXPIREAT" | "EXPIREAT" | "PEXPIRE" | "EXPIRE"
                if args.len() > 3 && !self.info.has_expire_flags() =>
            {
                Rewrite::Args(args[..3].iter().map(|a| a.to_vec()).collect())
            }
            // Valkey 9.1's MSETEX: one SET per key in the same transaction (atomic too), with
            // the expiry as PEXPIREAT (every target version has it). NX/XX held on the source.
            "MSETEX" if !self.target_knows(name) => match msetex_as_sets(args) {
                Some(cmds) => Rewrite::Many(cmds),
                None => {
                    self.unsupported(
                        stats,
                        format!(
                            "MSETEX on key '{}' in the replication stream cannot be read",
                            args.get(2).map(|k| show_key(k)).unwrap_or_default()
                        ),
                    )?;
                    Rewrite::Skip
                }
            },
            // Hash field TTLs (Valkey 9, Redis 7.4+) on a target without them: a field without
            // a TTL there stays without one (HPERSIST changes nothing); a TTL set cannot be
            // held (as for HSETEX and the snapshot's hashes).
            "HPERSIST" if !self.target_knows(name) => Rewrite::Skip,
            "HPEXPIREAT" | "HEXPIREAT" | "HPEXPIRE" | "HEXPIRE" if !self.target_knows(name) => {
                let what = format!(
                    "{name} on key '{}' in the replication stream: {} cannot hold hash field TTLs",
                    args.get(1).map(|k| show_key(k)).unwrap_or_default(),
                    self.info.describe()
                );
                if self.opts.tuning.unsupported == UnsupportedPolicy::Fail {
                    return Err(TargetError::CannotHold { what }.into());
                }
                stats.field_ttls_dropped += 1;
                tracing::warn!("{what}; the fields stay without a TTL");
                Rewrite::Skip
            }
            "SET" if !self.has_set_ifeq() => {
                match args.iter().position(|a| a.eq_ignore_ascii_case(b"IFEQ")) {
                    Some(i) if i >= 3 && i + 1 < args.len() => Rewrite::Args(
                        args.iter()
                            .enumerate()
                            .filter(|(j, _)| *j != i && *j != i + 1)
                            .map(|(_, a)| a.to_vec())
                            .collect(),
                    ),
                    _ => Rewrite::Same,
                }
            }
            // Stream counters of Redis 7.0 (ENTRIESREAD, ENTRIESADDED, MAXDELETEDID) do not
            // exist before it; the rest of the command means the same.
            "XGROUP" | "XSETID" if old_streams => {
                let mut out = Vec::with_capacity(args.len());
                let mut i = 0;
                let mut changed = false;
                while i < args.len() {
                    if i >= 2
                        && ["ENTRIESREAD", "ENTRIESADDED", "MAXDELETEDID"]
                            .iter()
                            .any(|f| args[i].eq_ignore_ascii_case(f.as_bytes()))
                    {
                        i += 2;
                        changed = true;
                        continue;
                    }
                    out.push(args[i].to_vec());
                    i += 1;
                }
                if changed {
                    Rewrite::Args(out)
                } else {
                    Rewrite::Same
                }
            }
            "MOVE" => {
                let db = args
                    .get(2)
                    .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u64>().ok());
                match db.map(|d| (d, filter.map_db(d))) {
                    Some((d, Some(to))) if to == d => Rewrite::Same,
                    Some((_, Some(to))) => Rewrite::Args(vec![
                        b"MOVE".to_vec(),
                        args[1].to_vec(),
                        to.to_string().into_bytes(),
                    ]),
                    // Moved into a database that is not copied: gone from this one.
                    Some((_, None)) => Rewrite::Args(vec![b"DEL".to_vec(), args[1].to_vec()]),
                    None => Rewrite::Same,
                }
            }
            "COPY" => match args.iter().position(|a| a.eq_ignore_ascii_case(b"DB")) {
                Some(i) if i + 1 < args.len() => {
                    let db = std::str::from_utf8(args[i + 1])
                        .ok()
                        .and_then(|d| d.parse::<u64>().ok());
                    match db.map(|d| (d, filter.map_db(d))) {
                        Some((d, Some(to))) if to == d => Rewrite::Same,
                        Some((_, Some(to))) => {
                            let mut out: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
                            out[i + 1] = to.to_string().into_bytes();
                            Rewrite::Args(out)
                        }
                        Some((_, None)) => Rewrite::Skip,
                        None => Rewrite::Same,
                    }
                }
                _ => Rewrite::Same,
            },
            "SWAPDB" => {
                let db = |i: usize| {
                    args.get(i)
                        .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u64>().ok())
                };
                match (db(1), db(2)) {
                    (Some(a), Some(b)) => match (filter.map_db(a), filter.map_db(b)) {
                        (Some(x), Some(y)) if (x, y) == (a, b) => Rewrite::Same,
                        (Some(x), Some(y)) => Rewrite::Args(vec![
                            b"SWAPDB".to_vec(),
                            x.to_string().into_bytes(),
                            y.to_string().into_bytes(),
                        ]),
                        _ => {
                            self.unsupported(stats, format!(
                                "SWAPDB {a} {b} in the replication stream: a database is not copied (db_map), so the swap cannot be applied"
                            ))?;
                            Rewrite::Skip
                        }
                    },
                    _ => Rewrite::Same,
                }
            }
            // Valkey 9's conditional delete: the condition held on the source.
            "DELIFEQ" if args.len() == 3 && !self.target_knows(name) => {
                Rewrite::Args(vec![b"DEL".to_vec(), args[1].to_vec()])
            }
            // Valkey 9's hash field TTLs: the fields are kept, their TTLs cannot be (as in the
            // snapshot).
            "HSETEX" if !self.target_knows(name) => {
                let fields = args
                    .iter()
                    .position(|a| a.eq_ignore_ascii_case(b"FIELDS"))
                    .filter(|i| *i >= 2);
                match fields {
                    Some(i) if i + 2 < args.len() => {
                        if self.opts.tuning.unsupported == UnsupportedPolicy::Fail {
                            return Err(TargetError::CannotHold {
                                what: format!(
                                    "HSETEX on key '{}' in the replication stream: {} cannot hold hash field TTLs",
                                    show_key(args[1]),
                                    self.info.describe()
                                )
                                ,
                            }
                            .into());
                        }
                        stats.field_ttls_dropped += 1;
                        tracing::warn!(
                            key = %show_key(args[1]),
                            "HSETEX in the replication stream: applied as HSET; the target cannot hold hash field TTLs"
                        );
                        let mut out = vec![b"HSET".to_vec(), args[1].to_vec()];
                        out.extend(args[i + 2..].iter().map(|a| a.to_vec()));
                        Rewrite::Args(out)
                    }
                    _ => {
                        self.unsupported(
                            stats,
                            format!(
                                "HSETEX on key '{}' in the replication stream cannot be read",
                                args.get(1).map(|k| show_key(k)).unwrap_or_default()
                            ),
                        )?;
                        Rewrite::Skip
                    }
                }
            }
            "FUNCTION" if !self.info.has_functions() => {
                self.unsupported(stats, format!(
                    "a FUNCTION command in the replication stream cannot be applied to {} (no functions before Redis 7.0)",
                    self.info.describe()
                ))?;
                Rewrite::Skip
            }
            _ if !self.target_knows(name) => {
                self.unsupported(stats, format!(
                    "{name} on key '{}' in the replication stream: {} does not know the command",
                    args.get(1).map(|k| show_key(k)).unwrap_or_default(),
                    self.info.describe()
                ))?;
                Rewrite::Skip
            }
            _ => Rewrite::Same,
        })
    }

    /// Reports a stream command the target cannot express; an error under
    /// `unsupported = fail`.
    fn unsupported(&self, stats: &mut Stats, what: String) -> anyhow::Result<()> {
        if self.opts.tuning.unsupported == UnsupportedPolicy::Fail {
            return Err(TargetError::CannotHold { what }.into());
        }
        stats.problem(what);
        Ok(())
    }

    /// `SET … IFEQ` (Valkey 8.1+).
    fn has_set_ifeq(&self) -> bool {
        self.info.valkey && self.info.version >= (8, 1, 0)
    }

    /// Whether the target has the command `name` (`COMMAND INFO`, asked once per name on a
    /// connection of its own: the writer's is inside a transaction).
    fn target_knows(&mut self, name: &str) -> bool {
        self.command_shape(name).known
    }

    /// Notes a command `name` (upper case) with `argc` arguments (its name included) about
    /// to be queued: may the target refuse it while queueing?
    fn check_queueable(&mut self, name: &str, argc: usize) {
        let shape = self.command_shape(name);
        let argc = argc as i64;
        let fits = match shape.arity {
            Some(a) if a >= 0 => argc == a,
            Some(a) => argc >= -a,
            None => false,
        };
        if !(shape.known && fits) {
            self.txn_uncertain = true;
        }
    }

    /// [`Applier::check_queueable`] for a command the applier wrote itself.
    fn check_rewritten(&mut self, args: &[Vec<u8>]) {
        let name = args
            .first()
            .map(|n| String::from_utf8_lossy(n).to_ascii_uppercase())
            .unwrap_or_default();
        self.check_queueable(&name, args.len());
    }

    /// `COMMAND INFO` of `name`, asked once.
    fn command_shape(&mut self, name: &str) -> CommandShape {
        if let Some(shape) = self.known_commands.get(name) {
            return *shape;
        }
        let shape = match query_raw(
            &self.opts.target,
            &[b"COMMAND", b"INFO", name.as_bytes()],
            self.opts.timeout,
        ) {
            // An unknown command gives a nil entry; an error (COMMAND not allowed) says
            // nothing, so the command is tried.
            Ok(reply) => CommandShape {
                known: !(reply.starts_with(b"*1\r\n$-1\r\n")
                    || reply.starts_with(b"*1\r\n*-1\r\n")
                    || reply.starts_with(b"*1\r\n_\r\n")),
                arity: command_info_arity(&reply),
            },
            Err(e) => {
                tracing::warn!(error = %e, command = name, "cannot ask the target about a command; forwarding it");
                CommandShape {
                    known: true,
                    arity: None,
                }
            }
        };
        self.known_commands.insert(name.to_string(), shape);
        shape
    }
}

/// What the target's `COMMAND INFO` says of a command.
#[derive(Debug, Clone, Copy)]
struct CommandShape {
    /// The target has it (also assumed when it could not be asked).
    known: bool,
    /// Its arity (`n`: exactly n arguments with the name; `-n`: at least n), when known.
    arity: Option<i64>,
}

/// The arity in a `COMMAND INFO name` reply: `*1 *N $len name :arity …`.
fn command_info_arity(reply: &[u8]) -> Option<i64> {
    let rest = reply.strip_prefix(b"*1\r\n*")?;
    let mut lines = rest.split(|b| *b == b'\n').skip(1);
    let len_line = lines.next()?;
    if len_line.first() != Some(&b'$') {
        return None;
    }
    let _name = lines.next()?;
    let arity = lines.next()?.strip_prefix(b":")?;
    let arity = arity.strip_suffix(b"\r").unwrap_or(arity);
    std::str::from_utf8(arity).ok()?.parse().ok()
}

/// What [`Applier::rewrite`] decided.
enum Rewrite {
    Same,
    Skip,
    Args(Vec<Vec<u8>>),
    /// Several commands (inside the batch's transaction, so as atomic as the original).
    Many(Vec<Vec<Vec<u8>>>),
}

/// `MSETEX numkeys key value … [NX|XX] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]` as `SET key value
/// [KEEPTTL]` per key, each followed by the expiry (`PEXPIREAT`/`PEXPIRE`). `None` when it
/// cannot be read.
fn msetex_as_sets(args: &[&[u8]]) -> Option<Vec<Vec<Vec<u8>>>> {
    let n: usize = std::str::from_utf8(args.get(1)?).ok()?.parse().ok()?;
    let pairs = args.get(2..2 + n.checked_mul(2)?)?;
    let mut keepttl = false;
    let mut expiry: Option<Vec<Vec<u8>>> = None;
    let mut rest = args[2 + 2 * n..].iter();
    while let Some(opt) = rest.next() {
        let upper = opt.to_ascii_uppercase();
        match upper.as_slice() {
            b"NX" | b"XX" => {}
            b"KEEPTTL" => keepttl = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                let v: u64 = std::str::from_utf8(rest.next()?).ok()?.parse().ok()?;
                let (cmd, v) = match upper.as_slice() {
                    b"EX" => ("PEXPIRE", v.checked_mul(1000)?),
                    b"PX" => ("PEXPIRE", v),
                    b"EXAT" => ("PEXPIREAT", v.checked_mul(1000)?),
                    _ => ("PEXPIREAT", v),
                };
                expiry = Some(vec![cmd.as_bytes().to_vec(), v.to_string().into_bytes()]);
            }
            _ => return None,
        }
    }
    let mut out = Vec::with_capacity(n * 2);
    for kv in pairs.chunks(2) {
        let mut set = vec![b"SET".to_vec(), kv[0].to_vec(), kv[1].to_vec()];
        if keepttl {
            set.push(b"KEEPTTL".to_vec());
        }
        out.push(set);
        if let Some(e) = &expiry {
            out.push(vec![e[0].clone(), kv[0].to_vec(), e[1].clone()]);
        }
    }
    Some(out)
}

/// Loads an RDB file into the target: the file is read in pieces (never whole) and goes
/// through the same parser → converter → writer path as a source's snapshot.
pub fn load_rdb(opts: &RdbLoadOptions) -> anyhow::Result<SyncReport> {
    let path = opts.path.display().to_string();
    let mut file = std::fs::File::open(&opts.path)
        .with_context(|| format!("cannot open the RDB file {path}"))?;
    let mut w = TargetWriter::connect(&opts.target, opts.timeout)?;
    w.set_window(opts.tuning.pipeline);
    let mut report = SyncReport {
        target: w.info().describe(),
        ..SyncReport::default()
    };
    if position::read(&mut w)? != Stored::None {
        say(&format!(
            "cutover sync: the target held the position of an earlier sync; removed (its data now comes from {path})"
        ));
        position::queue_del(&mut w)?;
    }
    let sync = SyncOptions {
        tuning: opts.tuning.clone(),
        ..SyncOptions::new(opts.target.clone(), opts.target.clone())
    };
    // A first pass reads the whole file without writing anything: a corrupt or truncated
    // file (its checksum is at the end) and a database the target lacks are refused before
    // the target is touched, instead of leaving a partial copy there.
    let dbs = prescan_rdb(&mut file, &sync, &path)?;
    check_databases(&w, &opts.tuning.filter, &dbs)?;
    file.seek(std::io::SeekFrom::Start(0))
        .with_context(|| format!("cannot read the RDB file {path} again"))?;
    let mut conv = Converter::with_options(&w, sync.convert_options());
    let started = Instant::now();
    let mut last_progress = Instant::now();
    report.snapshot_bytes = read_rdb_file(
        &mut file,
        &sync,
        &path,
        "it changed after it was checked; the target holds part of it: flush it before loading again",
        |step| {
            match step {
                RdbStep::Event(ev) => conv.apply(ev, &mut w)?,
                RdbStep::Read(bytes) => {
                    if opts.progress && last_progress.elapsed() >= Duration::from_secs(1) {
                        last_progress = Instant::now();
                        eprintln!(
                            "cutover sync: {path}: {} read, {} keys",
                            human_bytes(bytes),
                            conv.stats.keys_seen
                        );
                    }
                }
            }
            Ok(())
        },
    )?;
    conv.finish(&mut w)?;
    w.drain()?;
    if opts.progress {
        eprintln!(
            "cutover sync: {path} loaded: {} in {:.1} s",
            human_bytes(report.snapshot_bytes),
            started.elapsed().as_secs_f64()
        );
    }
    report.stats = conv.stats;
    Ok(report)
}

/// Reads an RDB file to its end (checksum included) without writing anything; the databases
/// that hold keys.
fn prescan_rdb(
    file: &mut std::fs::File,
    sync: &SyncOptions,
    path: &str,
) -> anyhow::Result<Vec<u64>> {
    let mut dbs = std::collections::BTreeSet::new();
    read_rdb_file(
        file,
        sync,
        path,
        "nothing was written to the target",
        |step| {
            if let RdbStep::Event(crate::rdb::Event::SelectDb { db }) = step {
                dbs.insert(db);
            }
            Ok(())
        },
    )?;
    Ok(dbs.into_iter().collect())
}

/// What [`read_rdb_file`] hands on: an event of the file, or how many bytes it has read.
enum RdbStep {
    Event(crate::rdb::Event),
    Read(u64),
}

/// Reads an RDB file from where it stands to its end through the parser (checksum included),
/// handing every event and, after each chunk, the bytes read so far to `step`; the bytes
/// read. Errors name the file and the byte, followed by `state` (what the target holds then).
fn read_rdb_file(
    file: &mut std::fs::File,
    sync: &SyncOptions,
    path: &str,
    state: &str,
    mut step: impl FnMut(RdbStep) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut parser = sync.parser();
    let mut chunk = vec![0u8; 1024 * 1024];
    let mut read = 0u64;
    let bad = |e: crate::rdb::RdbError| {
        anyhow::anyhow!("the RDB file {path} cannot be loaded: {e}; {state}")
    };
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read the RDB file {path} at byte {read}; {state}")
                });
            }
        };
        read += n as u64;
        parser.feed(&chunk[..n]);
        while let Some(ev) = parser.next_event().map_err(bad)? {
            step(RdbStep::Event(ev))?;
        }
        step(RdbStep::Read(read))?;
    }
    parser.finish().map_err(bad)?;
    Ok(read)
}

/// A progress line is on the terminal (cleared before other messages).
static BAR_SHOWN: AtomicBool = AtomicBool::new(false);

/// Prints a message line on stderr (after clearing a progress bar, if one is shown).
pub fn say(line: &str) {
    if BAR_SHOWN.swap(false, Ordering::Relaxed) {
        eprint!("\r\x1b[K");
    }
    eprintln!("{line}");
}

/// The progress display of `cutover sync`: on a terminal, one line redrawn in place (a bar of
/// the snapshot's bytes or keys, keys/s, ETA; then the streaming lag); otherwise a plain line
/// every few seconds, for logs.
struct Bar {
    enabled: bool,
    tty: bool,
    last: Instant,
    /// Keys and bytes done at `last` and the smoothed rates since.
    last_keys: u64,
    last_bytes: u64,
    keys_rate: f64,
    bytes_rate: f64,
}

impl Bar {
    fn new(enabled: bool) -> Bar {
        use std::io::IsTerminal;
        Bar {
            enabled,
            tty: std::io::stderr().is_terminal()
                && std::env::var_os("TERM").is_some_and(|t| t != "dumb"),
            last: Instant::now(),
            last_keys: 0,
            last_bytes: 0,
            keys_rate: 0.0,
            bytes_rate: 0.0,
        }
    }

    fn say(&self, line: &str) {
        if self.enabled {
            say(line);
        } else {
            tracing::info!("{line}");
        }
    }

    /// Redraws (at most 5 times a second on a terminal, every 5 s otherwise).
    fn tick(&mut self, p: &SyncProgress) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if !self.enabled || self.last.elapsed() < every {
            return;
        }
        let secs = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let keys = p.keys_done.load(Ordering::Relaxed);
        let bytes = p.snapshot_bytes.load(Ordering::Relaxed);
        let smooth = |old: f64, new: f64| {
            if old == 0.0 {
                new
            } else {
                0.7 * old + 0.3 * new
            }
        };
        self.keys_rate = smooth(
            self.keys_rate,
            keys.saturating_sub(self.last_keys) as f64 / secs,
        );
        self.bytes_rate = smooth(
            self.bytes_rate,
            bytes.saturating_sub(self.last_bytes) as f64 / secs,
        );
        if keys < self.last_keys || bytes < self.last_bytes {
            // A new snapshot (full resync).
            self.keys_rate = 0.0;
            self.bytes_rate = 0.0;
        }
        self.last_keys = keys;
        self.last_bytes = bytes;
        let line = render_line(p, self.keys_rate, self.bytes_rate, self.tty);
        if self.tty {
            eprint!("\r\x1b[K{line}");
            BAR_SHOWN.store(true, Ordering::Relaxed);
        } else {
            eprintln!("{line}");
        }
    }

    /// Leaves the bar's last state on its own line.
    fn finish(&mut self) {
        if BAR_SHOWN.swap(false, Ordering::Relaxed) {
            eprintln!();
        }
    }
}

/// One progress line (see [`Bar`]).
fn render_line(p: &SyncProgress, keys_rate: f64, bytes_rate: f64, bar: bool) -> String {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    match p.phase.load(Ordering::Relaxed) {
        0 => "cutover sync: connecting; waiting for the source's snapshot".into(),
        1 => {
            let (bytes, total) = (n(&p.snapshot_bytes), n(&p.snapshot_bytes_total));
            let (keys, keys_total) = (n(&p.keys_done), n(&p.keys_total));
            // Bytes tell progress exactly when the size is known (disk snapshots); keys
            // otherwise (estimated from INFO keyspace).
            let (frac, eta) = if total > 0 {
                let left = total.saturating_sub(bytes) as f64;
                (
                    bytes as f64 / total as f64,
                    (bytes_rate > 0.0).then(|| left / bytes_rate),
                )
            } else if keys_total > 0 {
                let left = keys_total.saturating_sub(keys) as f64;
                (
                    keys as f64 / keys_total as f64,
                    (keys_rate > 0.0).then(|| left / keys_rate),
                )
            } else {
                (0.0, None)
            };
            let frac = frac.clamp(0.0, 1.0);
            let gauge = if bar {
                let full = (frac * 24.0) as usize;
                format!("[{}{}] ", "#".repeat(full), "-".repeat(24 - full))
            } else {
                String::new()
            };
            let size = if total > 0 {
                format!("{}/{}", human_bytes(bytes), human_bytes(total))
            } else {
                human_bytes(bytes)
            };
            let keys_of = if keys_total > 0 {
                format!("{keys}/{keys_total} keys")
            } else {
                format!("{keys} keys")
            };
            let eta = eta.map_or_else(|| "?".into(), |s| format!("{:.0} s", s.ceil()));
            format!(
                "cutover sync: snapshot {gauge}{:.0}% {size}, {keys_of}, {:.0} keys/s, ETA {eta}",
                frac * 100.0,
                keys_rate
            )
        }
        2 => format!(
            "cutover sync: streaming: offset {} applied, lag {} bytes / {} ms, {} commands ({} skipped), {} reconnects{}",
            n(&p.applied_offset),
            p.lag_bytes(),
            p.lag_ms(),
            n(&p.commands_applied),
            n(&p.commands_skipped),
            n(&p.reconnects),
            match n(&p.starts) {
                0 | 1 => String::new(),
                s => format!(", {} restarts", s - 1),
            },
        ),
        _ => format!(
            "cutover sync: failed ({}); retrying in {} s",
            p.last_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_default(),
            n(&p.retry_in_s)
        ),
    }
}

/// "SET (stream offset 77) on key 'k'": a stream command, for messages.
fn describe_tag(tag: &Tag) -> String {
    if tag.key.is_empty() {
        tag.what.to_string()
    } else {
        format!("{} on key '{}'", tag.what, show_key(&tag.key))
    }
}

/// The arguments of one complete RESP array command.
/// The database of a `SELECT` in the replication stream (as Redis writes it: `*2`, `$6`),
/// `None` for any other command.
fn select_db(wire: &[u8]) -> Option<u64> {
    let rest = wire.strip_prefix(b"*2\r\n$6\r\n")?;
    if !rest.get(..6)?.eq_ignore_ascii_case(b"SELECT") {
        return None;
    }
    let args = split_args(wire).ok()?;
    std::str::from_utf8(args.get(1)?).ok()?.parse().ok()
}

pub fn split_args(wire: &[u8]) -> anyhow::Result<Vec<&[u8]>> {
    fn line(wire: &[u8], at: usize) -> anyhow::Result<(&[u8], usize)> {
        let end = wire[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("no CRLF")?;
        Ok((&wire[at..at + end], at + end + 2))
    }
    fn num(b: &[u8]) -> anyhow::Result<usize> {
        std::str::from_utf8(b)?
            .parse()
            .with_context(|| format!("bad length {}", show_key(b)))
    }
    let (head, mut at) = line(wire, 0)?;
    let n = num(head.strip_prefix(b"*").context("not an array")?)?;
    let mut args = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let (h, next) = line(wire, at)?;
        let len = num(h.strip_prefix(b"$").context("not a bulk string")?)?;
        let end = next.checked_add(len).context("length overflow")?;
        args.push(wire.get(next..end).context("truncated argument")?);
        at = end + 2;
    }
    Ok(args)
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arity_from_command_info() {
        // As Redis 7.0 and 6.2 answer `COMMAND INFO get` / `COMMAND INFO set`.
        let get = b"*1\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n";
        let set = b"*1\r\n*7\r\n$3\r\nset\r\n:-3\r\n*2\r\n+write\r\n+denyoom\r\n";
        assert_eq!(command_info_arity(get), Some(2));
        assert_eq!(command_info_arity(set), Some(-3));
        assert_eq!(command_info_arity(b"*1\r\n*-1\r\n"), None);
        assert_eq!(command_info_arity(b"-ERR unknown command\r\n"), None);
        assert_eq!(command_info_arity(b"*1\r\n*7\r\n$3\r\nset\r\n:x\r\n"), None);
    }

    #[test]
    fn select_in_the_stream() {
        assert_eq!(select_db(b"*2\r\n$6\r\nSELECT\r\n$2\r\n12\r\n"), Some(12));
        assert_eq!(select_db(b"*2\r\n$6\r\nselect\r\n$1\r\n0\r\n"), Some(0));
        assert_eq!(select_db(b"*2\r\n$6\r\nDELETE\r\n$1\r\n0\r\n"), None);
        assert_eq!(
            select_db(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\nb\r\n"),
            None
        );
        assert_eq!(select_db(b"*2\r\n$6\r\nSELECT\r\n$1\r\nx\r\n"), None);
    }

    #[test]
    fn args() {
        let wire = b"*3\r\n$9\r\nPEXPIREAT\r\n$1\r\nk\r\n$0\r\n\r\n";
        assert_eq!(
            split_args(wire).unwrap(),
            vec![&b"PEXPIREAT"[..], b"k", b""]
        );
        assert!(split_args(b"*2\r\n$1\r\na\r\n").is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn msetex() {
        let a = |v: &[&str]| -> Vec<Vec<u8>> { v.iter().map(|s| s.as_bytes().to_vec()).collect() };
        let args: Vec<&[u8]> = ["MSETEX", "2", "a", "1", "b", "2", "NX", "PXAT", "99"]
            .iter()
            .map(|s| s.as_bytes())
            .collect();
        assert_eq!(
            msetex_as_sets(&args).unwrap(),
            vec![
                a(&["SET", "a", "1"]),
                a(&["PEXPIREAT", "a", "99"]),
                a(&["SET", "b", "2"]),
                a(&["PEXPIREAT", "b", "99"]),
            ]
        );
        let args: Vec<&[u8]> = ["msetex", "1", "a", "1", "KEEPTTL"]
            .iter()
            .map(|s| s.as_bytes())
            .collect();
        assert_eq!(
            msetex_as_sets(&args).unwrap(),
            vec![a(&["SET", "a", "1", "KEEPTTL"])]
        );
        for bad in [
            &["MSETEX", "2", "a", "1"][..],
            &["MSETEX", "1", "a", "1", "EX"],
            &["MSETEX", "1", "a", "1", "WAT"],
        ] {
            let args: Vec<&[u8]> = bad.iter().map(|s| s.as_bytes()).collect();
            assert!(msetex_as_sets(&args).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn keyspace() {
        let info =
            "# Keyspace\r\ndb0:keys=5,expires=1,avg_ttl=0\r\ndb12:keys=7,expires=0,avg_ttl=0\r\n";
        assert_eq!(parse_keyspace(info), vec![(0, 5), (12, 7)]);
        assert!(parse_keyspace("# Keyspace\r\n").is_empty());
    }

    #[test]
    fn progress_lines() {
        let p = SyncProgress::default();
        assert!(render_line(&p, 0.0, 0.0, true).contains("connecting"));
        p.phase.store(1, Ordering::Relaxed);
        p.snapshot_bytes.store(512, Ordering::Relaxed);
        p.snapshot_bytes_total.store(1024, Ordering::Relaxed);
        p.keys_done.store(10, Ordering::Relaxed);
        p.keys_total.store(20, Ordering::Relaxed);
        let line = render_line(&p, 5.0, 256.0, true);
        assert!(line.contains("[############------------] 50%"), "{line}");
        assert!(
            line.contains("512 B/1.0 KiB, 10/20 keys, 5 keys/s, ETA 2 s"),
            "{line}"
        );
        // Diskless: progress by keys.
        p.snapshot_bytes_total.store(0, Ordering::Relaxed);
        let line = render_line(&p, 5.0, 256.0, false);
        assert!(line.contains("snapshot 50% 512 B, 10/20 keys"), "{line}");
        p.phase.store(2, Ordering::Relaxed);
        p.received_offset.store(100, Ordering::Relaxed);
        p.applied_offset.store(90, Ordering::Relaxed);
        assert!(render_line(&p, 0.0, 0.0, true).contains("lag 10 bytes"));
        let doc = p.to_json();
        assert_eq!(doc["snapshot_bytes_total"], serde_json::Value::Null);
        assert_eq!(doc["keys_by_type"]["hash"], 0);
    }
}
