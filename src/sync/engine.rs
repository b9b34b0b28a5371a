//! The sync engine: source → replica link → RDB parser → converter → target writer, then the
//! live command stream.
//!
//! Two threads:
//!
//! * the **link thread** runs the [`ReplicaLink`] on its own single-threaded runtime: it
//!   connects with `PSYNC ? -1`, hands the snapshot's bytes to the applier as they arrive, then
//!   the commands of the stream. It acknowledges the offset the applier has published (the
//!   target's confirmed offset), once a second and on `GETACK`.
//! * the **applier** (the calling thread) feeds the snapshot to the [`RdbParser`], turns the
//!   events into target commands ([`Converter`]), then forwards each stream command as-is to
//!   the target, pipelined and in order, with a few rewrites for older targets.
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

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::convert::{Converter, Stats};
use super::position::{self, POSITION_KEY, Stored};
use super::replica::{ReplicaLink, StreamCommand, SyncStart};
use super::target::{Tag, TargetInfo, TargetWriter, query, show_key};
use crate::config::RedisUrl;
use crate::rdb::RdbParser;

/// What to sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub source: RedisUrl,
    pub target: RedisUrl,
    /// Return once the snapshot and the stream up to the snapshot's end are applied.
    pub once: bool,
    /// Connect and silence time limit.
    pub timeout: Duration,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// Ignore a position stored on the target: full sync (the target is flushed if it holds
    /// one, as its data comes from an earlier sync).
    pub fresh: bool,
    /// Where `cutover run` reads the sync's state for `status` (and metrics).
    pub shared: Option<Arc<SyncProgress>>,
}

/// The sync's live state, for `cutover status` and Prometheus.
#[derive(Debug, Default)]
pub struct SyncProgress {
    /// 0 connecting, 1 snapshot (`syncing`), 2 streaming, 3 error (retrying).
    pub phase: AtomicU8,
    pub snapshot_bytes: AtomicU64,
    pub keys_seen: AtomicU64,
    pub keys_done: AtomicU64,
    pub keys_not_copied: AtomicU64,
    /// Replication offset received from the source.
    pub received_offset: AtomicU64,
    /// Replication offset the target has applied and confirmed.
    pub applied_offset: AtomicU64,
    /// Milliseconds since the engine started when the target last had everything received
    /// applied (for `lag_ms`).
    pub caught_up_at_ms: AtomicU64,
    /// Full runs of the engine started (a restart resumes from the stored position).
    pub starts: AtomicU64,
    pub last_error: std::sync::Mutex<Option<String>>,
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

impl SyncProgress {
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

    /// Withdraws [`Self::request_stop_at`] (the barrier was aborted).
    pub fn cancel_stop(&self) {
        self.stop_at.store(0, Ordering::Release);
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

    /// Bytes of the replication stream received but not yet applied on the target.
    pub fn lag_bytes(&self) -> u64 {
        self.received_offset
            .load(Ordering::Relaxed)
            .saturating_sub(self.applied_offset.load(Ordering::Relaxed))
    }

    /// How long the target has been behind what was received (0 when caught up).
    pub fn lag_ms(&self) -> u64 {
        if self.lag_bytes() == 0 {
            return 0;
        }
        self.now_ms()
            .saturating_sub(self.caught_up_at_ms.load(Ordering::Relaxed))
    }

    fn update(
        &self,
        phase: &Phase,
        snapshot_bytes: u64,
        stats: &Stats,
        received: u64,
        applied: u64,
    ) {
        let p = match phase {
            Phase::Connecting => 0,
            Phase::Snapshot => 1,
            Phase::Streaming => 2,
        };
        self.phase.store(p, Ordering::Relaxed);
        self.snapshot_bytes.store(snapshot_bytes, Ordering::Relaxed);
        self.keys_seen.store(stats.keys_seen, Ordering::Relaxed);
        self.keys_done.store(stats.keys_done(), Ordering::Relaxed);
        self.keys_not_copied
            .store(stats.unsupported, Ordering::Relaxed);
        self.received_offset.store(received, Ordering::Relaxed);
        self.applied_offset.store(applied, Ordering::Relaxed);
        if applied >= received {
            self.caught_up_at_ms.store(self.now_ms(), Ordering::Relaxed);
        }
        metrics::gauge!("cutover_sync_phase").set(p as f64);
        metrics::gauge!("cutover_sync_snapshot_bytes").set(snapshot_bytes as f64);
        metrics::gauge!("cutover_sync_keys_done").set(stats.keys_done() as f64);
        metrics::gauge!("cutover_sync_keys_not_copied").set(stats.unsupported as f64);
        metrics::gauge!("cutover_sync_applied_offset").set(applied as f64);
        metrics::gauge!("cutover_sync_lag_bytes").set(received.saturating_sub(applied) as f64);
        metrics::gauge!("cutover_sync_lag_seconds").set(self.lag_ms() as f64 / 1000.0);
    }
}

/// What to load with [`load_rdb`].
#[derive(Debug, Clone)]
pub struct RdbLoadOptions {
    pub path: PathBuf,
    pub target: RedisUrl,
    pub timeout: Duration,
    pub progress: bool,
}

/// Stream commands per transaction at most (a source transaction is never split).
const MAX_TXN_COMMANDS: usize = 1000;

/// What a finished (`once`) sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub stats: Stats,
    pub snapshot_bytes: u64,
    /// Stream commands forwarded to the target.
    pub commands: u64,
    /// Stream commands skipped (PING, PUBLISH…) or not expressible on the target.
    pub commands_skipped: u64,
    /// Replication offset applied and confirmed at the end.
    pub offset: u64,
    /// Description of the target ("Redis 7.0.15").
    pub target: String,
}

enum Msg {
    /// Full resync: a snapshot follows.
    Start {
        replid: String,
        offset: u64,
    },
    /// Partial resync: the stream continues after `offset`.
    Resumed {
        replid: String,
        offset: u64,
    },
    Snapshot(Vec<u8>),
    SnapshotDone {
        bytes: u64,
    },
    Commands(Vec<StreamCommand>),
    Failed(String),
    /// Look at the shared state now (the cutover barrier asked to stop at an offset).
    Wake,
}

/// Runs the sync on the calling thread (blocking). Returns only with `once` (or on an error).
pub fn run(opts: &SyncOptions) -> anyhow::Result<SyncReport> {
    let mut writer = TargetWriter::connect(&opts.target, opts.timeout)?;
    let info = writer.info().clone();
    tracing::info!(target = %info.describe(), max_rdb = info.max_rdb.get(), "target connected");
    let stored = position::read(&mut writer)?;
    let resume = match &stored {
        Stored::At { replid, offset } if !opts.fresh => {
            eprintln!(
                "cutover sync: the target holds the position {replid} {offset}; asking the source to continue from there"
            );
            Some((replid.clone(), *offset))
        }
        Stored::At { replid, offset } => {
            eprintln!(
                "cutover sync: --fresh: ignoring the position {replid} {offset} stored on the target"
            );
            None
        }
        Stored::Unusable(v) => {
            eprintln!(
                "cutover sync: the target holds an unusable position {v:?} (an earlier snapshot did not finish)"
            );
            None
        }
        Stored::None => None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    if opts.shared.is_none() {
        // Standalone `cutover sync`; inside `cutover run` the process handles the signals.
        watch_signals(Arc::clone(&stop))?;
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
    Applier {
        opts,
        info,
        rx,
        applied,
        report: SyncReport::default(),
        flush_on_full: stored != Stored::None,
        stop,
        replid: String::new(),
        txn_open: false,
        in_source_txn: false,
        txn_commands: 0,
        last_offset: 0,
        peeked: None,
    }
    .run(&mut writer)
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
            let _ = tx.send(Msg::Failed(format!("cannot start a runtime: {e}")));
            return;
        }
    };
    let res = rt.block_on(async {
        let wanted = resume.as_ref().map(|(id, off)| (id.as_str(), *off));
        let (mut link, start) = ReplicaLink::connect(&source, wanted, 0, timeout).await?;
        match start {
            SyncStart::FullResync { replid, offset } => {
                applied.store(offset, Ordering::Release);
                if tx.send(Msg::Start { replid, offset }).is_err() {
                    return Ok(());
                }
                let bytes = link
                    .receive_snapshot(|piece| {
                        tx.send(Msg::Snapshot(piece.to_vec()))
                            .map_err(|_| "the applier stopped".to_string())
                    })
                    .await?;
                if tx.send(Msg::SnapshotDone { bytes }).is_err() {
                    return Ok(());
                }
            }
            SyncStart::Continue { replid } => {
                let Some((old, offset)) = resume else {
                    anyhow::bail!("the source answered PSYNC ? -1 with +CONTINUE");
                };
                applied.store(offset, Ordering::Release);
                let replid = replid.unwrap_or(old);
                if tx.send(Msg::Resumed { replid, offset }).is_err() {
                    return Ok(());
                }
            }
        }
        loop {
            let cmds = link
                .next_commands_with(|| applied.load(Ordering::Acquire))
                .await?;
            if tx.send(Msg::Commands(cmds)).is_err() {
                return Ok(());
            }
        }
    });
    if let Err(e) = res {
        let _ = tx.send(Msg::Failed(format!("{e:#}")));
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Snapshot,
    Streaming,
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
}

impl Applier<'_> {
    fn run(mut self, w: &mut TargetWriter) -> anyhow::Result<SyncReport> {
        self.report.target = self.info.describe();
        let mut parser = RdbParser::new();
        let mut conv = Converter::new(w);
        let mut phase = Phase::Connecting;
        let mut start_offset = 0;
        let mut stop_at: Option<u64> = None;
        let started = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_keys = 0u64;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return self.stop_cleanly(w, &phase, conv.stats);
            }
            let barrier = self.opts.shared.as_ref().and_then(|s| s.stop_requested());
            if let (Some(limit), Phase::Streaming, Some(shared)) =
                (barrier, &phase, &self.opts.shared)
            {
                if w.in_flight() > 0 {
                    w.drain()?;
                }
                if w.confirmed_offset().unwrap_or(0) >= limit && !self.in_source_txn {
                    let report = self.stop_cleanly(w, &phase, conv.stats)?;
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
            let msg = match self.peeked.take() {
                Some(m) => Ok(m),
                None => self.rx.recv_timeout(wait),
            };
            match msg {
                Ok(Msg::Start { replid, offset }) => {
                    start_offset = offset;
                    self.last_offset = offset;
                    self.replid = replid;
                    phase = Phase::Snapshot;
                    if self.flush_on_full {
                        eprintln!(
                            "cutover sync: WARNING: full resync: FLUSHALL on the target {} (it holds the data of an earlier sync, which is replaced entirely)",
                            w.addr()
                        );
                        w.send(&[&b"FLUSHALL"[..]], Tag::key("FLUSHALL", b""))?;
                    }
                    position::queue_set(w, position::LOADING)?;
                }
                Ok(Msg::Resumed { replid, offset }) => {
                    eprintln!(
                        "cutover sync: the source continued (+CONTINUE) from offset {offset}: no snapshot needed, streaming"
                    );
                    start_offset = offset;
                    self.last_offset = offset;
                    self.replid = replid;
                    w.mark_offset(offset);
                    phase = Phase::Streaming;
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
                        .context("the source's snapshot cannot be read")?
                    {
                        conv.apply(ev, w)?;
                    }
                }
                Ok(Msg::SnapshotDone { bytes }) => {
                    parser
                        .finish()
                        .context("the source's snapshot ended early")?;
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
                        eprintln!(
                            "cutover sync: snapshot applied: {} keys ({} restored, {} plain, {} expired, {} not copied), {} in {:.1} s",
                            conv.stats.keys_done(),
                            conv.stats.restored,
                            conv.stats.plain,
                            conv.stats.expired,
                            conv.stats.unsupported,
                            human_bytes(self.report.snapshot_bytes),
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
                Ok(Msg::Commands(cmds)) => {
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
                Ok(Msg::Failed(e)) => bail!("{e}"),
                Ok(Msg::Wake) => {}
                Err(RecvTimeoutError::Timeout) => {
                    // Nothing new: let the target answer what is in flight.
                    if phase == Phase::Streaming {
                        w.drain()?;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => bail!("the replica link stopped"),
            }
            if phase == Phase::Streaming
                && let Some(off) = w.confirmed_offset()
            {
                self.applied.fetch_max(off, Ordering::AcqRel);
            }
            if let Some(stop) = stop_at {
                if w.confirmed_offset().unwrap_or(0) < stop && w.in_flight() > 0 {
                    w.drain()?;
                }
                if let Some(off) = w.confirmed_offset()
                    && off >= stop
                {
                    w.drain()?;
                    self.report.offset = w.confirmed_offset().unwrap_or(off);
                    self.report.stats = conv.stats;
                    return Ok(self.report);
                }
            }
            if let Some(shared) = &self.opts.shared {
                let applied = w.confirmed_offset().unwrap_or(start_offset);
                let received = if phase == Phase::Streaming {
                    self.last_offset
                } else {
                    applied
                };
                shared.update(
                    &phase,
                    self.report.snapshot_bytes,
                    &conv.stats,
                    received,
                    applied,
                );
            }
            if self.opts.progress && last_progress.elapsed() >= Duration::from_secs(1) {
                let secs = last_progress.elapsed().as_secs_f64();
                last_progress = Instant::now();
                let keys = conv.stats.keys_seen;
                match phase {
                    Phase::Connecting => {
                        eprintln!("cutover sync: waiting for the source's snapshot")
                    }
                    Phase::Snapshot => eprintln!(
                        "cutover sync: snapshot {} read, {} keys, {:.0} keys/s",
                        human_bytes(self.report.snapshot_bytes),
                        keys,
                        (keys - last_keys) as f64 / secs
                    ),
                    Phase::Streaming => eprintln!(
                        "cutover sync: streaming, offset {} applied, {} commands",
                        w.confirmed_offset().unwrap_or(0),
                        self.report.commands
                    ),
                }
                last_keys = keys;
            }
        }
    }

    /// Ctrl-C / SIGTERM: the position of everything applied stays stored; a transaction of the
    /// source that is still incomplete is discarded (it comes again on the next start).
    fn stop_cleanly(
        mut self,
        w: &mut TargetWriter,
        phase: &Phase,
        stats: Stats,
    ) -> anyhow::Result<SyncReport> {
        if *phase == Phase::Connecting {
            eprintln!("cutover sync: stopped before the sync started; the target is unchanged");
            return Ok(self.report);
        }
        if *phase != Phase::Streaming {
            bail!(
                "stopped before the snapshot was applied: the target is incomplete (the next start does a full sync)"
            );
        }
        if self.txn_open {
            w.send(&[&b"DISCARD"[..]], Tag::key("DISCARD", b""))?;
            self.txn_open = false;
            self.in_source_txn = false;
        }
        w.drain()?;
        self.report.offset = w.confirmed_offset().unwrap_or(0);
        self.report.stats = stats;
        eprintln!(
            "cutover sync: stopped; position {} {} stored on the target ({})",
            self.replid,
            self.report.offset,
            show_key(POSITION_KEY)
        );
        Ok(self.report)
    }

    /// The source's `master_repl_offset` now.
    fn source_offset(&self) -> anyhow::Result<u64> {
        let text = query(
            &self.opts.source,
            &[b"INFO", b"replication"],
            self.opts.timeout,
        )?;
        text.lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))
            .and_then(|v| v.trim().parse().ok())
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
        for cmd in cmds {
            if let Some(limit) = limit
                && self.last_offset >= limit
                && !self.in_source_txn
            {
                // The cutover barrier's offset is reached: what follows (the shadow writes of
                // the proxy, after the flip) must never reach the target.
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
                        self.close_txn(w)?;
                    }
                    w.send_wire(&cmd.wire, Tag::key("MULTI", b""))?;
                    self.txn_open = true;
                    self.in_source_txn = true;
                    self.txn_commands = 0;
                }
                "EXEC" if self.in_source_txn => {
                    self.last_offset = cmd.end_offset;
                    self.close_txn(w)?;
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
                        w.send(&[&b"MULTI"[..]], Tag::key("MULTI", b""))?;
                        self.txn_open = true;
                        self.txn_commands = 0;
                    }
                    self.forward(&cmd, &args, &name, w, stats)?;
                    self.txn_commands += 1;
                }
            }
            self.last_offset = cmd.end_offset;
            if self.txn_open && !self.in_source_txn && self.txn_commands >= MAX_TXN_COMMANDS {
                self.close_txn(w)?;
            }
        }
        if self.txn_open && !self.in_source_txn {
            self.close_txn(w)?;
        }
        Ok(())
    }

    /// Stores the position reached and sends `EXEC`.
    fn close_txn(&mut self, w: &mut TargetWriter) -> anyhow::Result<()> {
        position::queue_set(w, &position::format(&self.replid, self.last_offset))?;
        w.send(
            &[&b"EXEC"[..]],
            Tag {
                what: "EXEC".into(),
                offset: Some(self.last_offset),
                exec: true,
                ..Tag::default()
            },
        )?;
        self.txn_open = false;
        self.txn_commands = 0;
        Ok(())
    }

    /// Forwards one command of the replication stream (inside a transaction).
    fn forward(
        &mut self,
        cmd: &StreamCommand,
        args: &[&[u8]],
        name: &str,
        w: &mut TargetWriter,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        let tag = |what: &str| Tag {
            key: args.get(1).map(|k| k.to_vec()).unwrap_or_default(),
            what: format!("replicated {what} (before offset {})", cmd.end_offset).into(),
            ..Tag::default()
        };
        match name {
            "PING" | "PUBLISH" | "SPUBLISH" | "REPLCONF" => {
                self.report.commands_skipped += 1;
            }
            "SELECT" => {
                let db = args
                    .get(1)
                    .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u64>().ok())
                    .context("SELECT without a database number in the replication stream")?;
                w.send_wire(&cmd.wire, tag(name))?;
                w.set_db(db);
                self.report.commands += 1;
            }
            _ if w.db() == 0 && args.get(1) == Some(&POSITION_KEY) => {
                tracing::warn!(
                    "a write to {} in the replication stream is not applied (the key is cutover's own)",
                    show_key(POSITION_KEY)
                );
                self.report.commands_skipped += 1;
            }
            "PEXPIREAT" if args.len() > 3 && !self.info.has_expire_flags() => {
                w.send(&args[..3], tag(name))?;
                self.report.commands += 1;
            }
            "FUNCTION" if !self.info.has_functions() => {
                self.report.commands_skipped += 1;
                stats.unsupported += 1;
                tracing::warn!(
                    "a FUNCTION command in the replication stream cannot be applied to {} (no functions before Redis 7.0)",
                    self.info.describe()
                );
            }
            _ => {
                w.send_wire(&cmd.wire, tag(name))?;
                self.report.commands += 1;
            }
        }
        Ok(())
    }
}

/// Loads an RDB file into the target: the file is read in pieces (never whole) and goes
/// through the same parser → converter → writer path as a source's snapshot.
pub fn load_rdb(opts: &RdbLoadOptions) -> anyhow::Result<SyncReport> {
    let path = opts.path.display().to_string();
    let mut file = std::fs::File::open(&opts.path)
        .with_context(|| format!("cannot open the RDB file {path}"))?;
    let mut w = TargetWriter::connect(&opts.target, opts.timeout)?;
    let mut report = SyncReport {
        target: w.info().describe(),
        ..SyncReport::default()
    };
    if position::read(&mut w)? != Stored::None {
        eprintln!(
            "cutover sync: the target held the position of an earlier sync; removed (its data now comes from {path})"
        );
        position::queue_del(&mut w)?;
    }
    let mut parser = RdbParser::new();
    let mut conv = Converter::new(&w);
    let mut chunk = vec![0u8; 1024 * 1024];
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let bad =
        |e: crate::rdb::RdbError| anyhow::anyhow!("the RDB file {path} cannot be loaded: {e}");
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read the RDB file {path} at byte {}",
                        report.snapshot_bytes
                    )
                });
            }
        };
        report.snapshot_bytes += n as u64;
        parser.feed(&chunk[..n]);
        while let Some(ev) = parser.next_event().map_err(bad)? {
            conv.apply(ev, &mut w)?;
        }
        if opts.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprintln!(
                "cutover sync: {path}: {} read, {} keys",
                human_bytes(report.snapshot_bytes),
                conv.stats.keys_seen
            );
        }
    }
    parser.finish().map_err(bad)?;
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

/// The arguments of one complete RESP array command.
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
    fn args() {
        let wire = b"*3\r\n$9\r\nPEXPIREAT\r\n$1\r\nk\r\n$0\r\n\r\n";
        assert_eq!(
            split_args(wire).unwrap(),
            vec![&b"PEXPIREAT"[..], b"k", b""]
        );
        assert!(split_args(b"*2\r\n$1\r\na\r\n").is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
