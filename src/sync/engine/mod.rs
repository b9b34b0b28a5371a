//! The sync engine: source → replica link → RDB parser → converter → target writer, then the
//! live command stream.
//!
//! Two threads:
//!
//! * the **link thread** runs the [`ReplicaLink`](crate::sync::replica::ReplicaLink) on its own single-threaded runtime: it
//!   connects with `PSYNC ? -1`, hands the snapshot's bytes to the applier as they arrive, then
//!   the commands of the stream. It acknowledges the offset the applier has published (the
//!   target's confirmed offset), once a second and on `GETACK`. When the link drops or falls
//!   silent it connects again by itself (`LinkState`), asking to continue right after the
//!   last byte it received, so the stream goes on seamlessly; if the source answers
//!   `+FULLRESYNC` (or the snapshot was cut short), the applier is told to start over.
//! * the **applier** (the calling thread) feeds the snapshot to the [`RdbParser`], turns the
//!   events into target commands ([`Converter`](crate::sync::convert::Converter)), then forwards each stream command to the
//!   target, pipelined and in order: filtered and mapped ([`Filter`]), with a few rewrites for
//!   older targets (`Applier::rewrite`). It publishes its state in a [`SyncProgress`]
//!   (status, metrics, the progress bar of `cutover sync`).
//!
//! They are joined by a bounded channel, so a slow target slows the reading of the snapshot
//! (the source's output buffer for this replica grows meanwhile, as for a slow real replica)
//! instead of growing our memory.
//!
//! Exactly once: every batch of stream commands goes to the target inside one `MULTI … EXEC`
//! together with the replication position it reaches ([`super::batch`]); a transaction of
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
//!
//! The parts, one file each:
//!
//! * `link.rs`: the link thread (reading the replication stream, acknowledging, reconnecting);
//! * `applier.rs`: the applier's loop (snapshot, then stream), and the handoff role of a
//!   replica overlap (apply, follow, park);
//! * [`super::batch`]: the exactly-once batch protocol (a batch and its position in one
//!   `MULTI … EXEC`);
//! * `rewrite.rs`: the stream commands filtered, mapped and rewritten for the target;
//! * `role.rs`: the handoff role (park, follow, take over);
//! * `progress.rs`: [`SyncProgress`], the live state for status, metrics and the bar;
//! * `bar.rs`: the progress bar of headless `cutover sync`;
//! * `foreign.rs`: writes on the followed side that the applying link did not make;
//! * `expiry.rs`: whether a lone `DEL` on the followed side was its own expiry (asked of the
//!   primary) or a foreign delete;
//! * `from_rdb.rs`: `--from-rdb FILE`.

mod applier;
mod bar;
mod expiry;
mod foreign;
mod from_rdb;
mod link;
mod progress;
mod repair;
mod rewrite;
mod role;
mod transit;

pub use bar::say;
pub use from_rdb::load_rdb;
pub use link::RECONNECT_TIMEOUTS;
pub use progress::SyncProgress;

pub(in crate::sync) use applier::Applier;
use bar::Bar;
pub(in crate::sync) use link::Relocate;
use link::link_thread;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::client::{BlockingClient, Info};
use crate::config::RedisUrl;
use crate::rdb::{ParserOptions, RdbParser};
use crate::sync::batch::{self, Stored};
use crate::sync::convert::{ConvertOptions, HOLD_BYTES, Stats, UnsupportedPolicy};
use crate::sync::filter::Filter;
use crate::sync::replica::StreamCommand;
use crate::sync::target::{DEFAULT_WINDOW, Sink, TargetError, TargetWriter, show_key};

/// Failures of the engine itself (the target writer has [`TargetError`](crate::sync::target::TargetError)).
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
    /// The target's seed nodes and address map when it lists several nodes or maps
    /// addresses (a cluster); `None`: `target` alone. Headless `cutover sync` asks the target
    /// what it is either way ([`target_cluster`]).
    pub target_side: Option<crate::cluster::SideSpec>,
    /// One link of a cluster source: the shard it copies (its position key, its slots).
    pub shard: Option<crate::sync::cluster::source::ShardScope>,
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

/// Default of [`SyncTuning::batch_size`].
pub const DEFAULT_BATCH_SIZE: usize = 1000;
/// Default of [`SyncTuning::big_key_bytes`].
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
            target_side: None,
            shard: None,
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

/// What to load with [`load_rdb`].
#[derive(Debug, Clone)]
pub struct RdbLoadOptions {
    pub path: PathBuf,
    pub target: RedisUrl,
    pub timeout: Duration,
    pub progress: bool,
    /// Filters, policy and sizes, as for a live source (stream settings unused).
    pub tuning: SyncTuning,
    /// As [`SyncOptions::target_side`].
    pub target_side: Option<crate::cluster::SideSpec>,
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

/// What the link thread hands the applier.
pub(in crate::sync) enum Msg {
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
    // (`cutover run` says when its target is a cluster, with `target_side`: no probe
    // otherwise.)
    if (opts.shared.is_none() || opts.target_side.is_some())
        && let Some(topo) = target_cluster(opts.target_side.as_ref(), &opts.target, opts.timeout)?
    {
        let link = match &opts.shard {
            Some(scope) => scope.link.as_str(),
            None => crate::sync::cluster::STANDALONE_LINK,
        };
        let sink = crate::sync::cluster::ClusterSink::connect(
            topo,
            link,
            opts.timeout,
            opts.tuning.pipeline,
        )?;
        return run_into(opts, ctx, sink, true);
    }
    let mut writer = TargetWriter::connect(&opts.target, opts.timeout)?;
    writer.set_window(opts.tuning.pipeline);
    if let Some(scope) = &opts.shard {
        let sink = crate::sync::cluster::source::LinkSink::new(writer, &scope.link);
        return run_into(opts, ctx, sink, false);
    }
    run_into(opts, ctx, writer, false)
}

/// The target's topology when it is a Redis Cluster (`None`: one server). A single URL that
/// cannot be asked now is taken for one server (its connection reports the failure, with
/// the usual retries).
pub(in crate::sync) fn target_cluster(
    side: Option<&crate::cluster::SideSpec>,
    target: &RedisUrl,
    timeout: Duration,
) -> anyhow::Result<Option<crate::cluster::Topology>> {
    let spec = side
        .cloned()
        .unwrap_or_else(|| crate::cluster::SideSpec::single(target.clone()));
    let single = spec.seeds.len() == 1 && spec.address_map.is_empty();
    match spec.resolve(timeout) {
        Ok(crate::cluster::Side::Cluster(topo)) => Ok(Some(topo)),
        Ok(crate::cluster::Side::Standalone(_)) => Ok(None),
        Err(crate::cluster::SideError::Topology(_)) if single => Ok(None),
        Err(e) if e.retryable() => Err(crate::sync::target::TargetError::Io {
            addr: spec.describe(),
            source: std::io::Error::other(e.to_string()),
        }
        .into()),
        Err(e) => Err(anyhow::Error::new(e).context("the target")),
    }
}

/// Refuses (before anything is written) a source with keys in a database other than 0 into
/// a cluster target (which has only database 0), unless `db_map` maps it to 0 or leaves it out.
fn check_cluster_databases(
    filter: &Filter,
    target: &str,
    source_dbs: &[u64],
) -> anyhow::Result<()> {
    let unmapped: Vec<u64> = source_dbs
        .iter()
        .copied()
        .filter(|db| filter.map_db(*db).is_some_and(|to| to != 0))
        .collect();
    if unmapped.is_empty() {
        return Ok(());
    }
    let fix: Vec<String> = unmapped.iter().map(|db| format!("{db}=0")).collect();
    bail!(
        "the source has keys in database(s) {} but the target {target} is a Redis Cluster, which has only database 0; nothing was written. Map them to 0 with [sync] db_map = \"{}\" (--db-map; keys of databases mapped together must not collide), or leave them out with only_mapped_dbs",
        unmapped
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        fix.join(",")
    )
}

/// One run of the sync into `writer` (one server, or a cluster: `cluster`).
fn run_into<W: Sink>(
    opts: &SyncOptions,
    ctx: &RunContext,
    mut writer: W,
    cluster: bool,
) -> anyhow::Result<SyncReport> {
    let info = writer.info().clone();
    tracing::info!(target = %info.describe(), max_rdb = info.max_rdb.get(), "target connected");
    // Which server this run's writer reaches (a move checks it is still the one running).
    ctx.progress.set_writes_to(
        writer
            .standalone()
            .and_then(|t| t.run_id().map(str::to_string)),
    );
    let handoff = &ctx.progress.handoff;
    // (A link of a replica overlap writes into a side that was switched to by design.)
    if handoff.role().is_solo()
        && let Some(value) = batch::switched_marker(&opts.target, opts.timeout)?
    {
        bail!(
            "the target {} was switched to by `cutover switch` (key {} = {value:?} in db 0): {}, and syncing into it again would apply writes a second time; delete that key only if its data may be replaced",
            opts.target,
            show_key(batch::SWITCHED_KEY),
            // (The third field names the primary after the last move: `cutover::flip`.)
            if value.split(' ').nth(2) == Some("source") {
                "the clients were rolled back to the source since, and it was kept a copy only while that `cutover run` lived"
            } else {
                "it is a primary now"
            }
        );
    }
    let stored = batch::read(&mut writer)?;
    // (One link of a cluster source says which.)
    let who = opts
        .shard
        .as_ref()
        .map(|s| format!("{}: ", s.label))
        .unwrap_or_default();
    // (replication id, offset, the stream's database there when known)
    let resume: Option<(String, u64, Option<u64>)> = match &stored {
        // A following link continues where it stopped reading (what it skipped is on its
        // side already); without such a place, it reads a new snapshot, which it skips too.
        _ if handoff.is_following() => handoff.position().map(|(id, off, db)| (id, off, Some(db))),
        Stored::At { replid, offset, db } if !opts.fresh => {
            let in_db = match db {
                Some(db) => format!(" (stream database {db})"),
                None => String::new(),
            };
            say(&format!(
                "cutover sync: {who}the target holds the position {replid} {offset}{in_db}; asking the source to continue from there"
            ));
            Some((replid.clone(), *offset, *db))
        }
        Stored::At { replid, offset, .. } => {
            say(&format!(
                "cutover sync: {who}--fresh: ignoring the position {replid} {offset} stored on the target"
            ));
            None
        }
        Stored::Unusable(v) => {
            say(&format!(
                "cutover sync: {who}the target holds an unusable position {v:?} (an earlier snapshot did not finish)"
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
            if cluster {
                check_cluster_databases(&opts.tuning.filter, writer.addr(), &numbers)?;
            }
            check_databases(&writer, &opts.tuning.filter, &numbers)?;
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the source's INFO keyspace"),
    }
    // Before a link's first write: the side it writes to can hold what the other side uses
    // (a full side evicts in silence or refuses with OOM; issue 20).
    if ctx
        .progress
        .starts
        .load(std::sync::atomic::Ordering::Relaxed)
        <= 1
        && !handoff.is_following()
        && opts.shard.is_none()
    {
        // (A cluster source's links: checked once for all of them, `cluster::source::run`.)
        if cluster {
            // Each target master against its share of the source (`sync::cluster::room`).
            let topo = target_cluster(opts.target_side.as_ref(), &opts.target, opts.timeout)?;
            crate::sync::cluster::room::check(
                &crate::sync::cluster::room::nodes(None, &opts.source),
                &crate::sync::cluster::room::nodes(topo.as_ref(), &opts.target),
                opts.timeout,
            )?;
        } else {
            crate::sync::target::memory::check_room(&opts.source, &opts.target, opts.timeout)?;
        }
    }

    let (tx, rx) = sync_channel::<Msg>(32);
    if let Some(shared) = &opts.shared {
        let wake = tx.clone();
        shared.waker.set(Box::new(move || {
            let _ = wake.try_send(Msg::Wake);
        }));
    }
    let applied = Arc::new(AtomicU64::new(0));
    let resume_db = resume.as_ref().map(|r| r.2);
    let resume = resume.map(|(id, off, _)| (id, off));
    {
        let source = opts.source.clone();
        let relocate = opts.shard.as_ref().and_then(|s| s.relocate(opts.timeout));
        let applied = Arc::clone(&applied);
        let timeout = opts.timeout;
        std::thread::Builder::new()
            .name("cutover-replica".into())
            .spawn(move || link_thread(source, resume, tx, applied, timeout, relocate))
            .context("cannot start the replica link thread")?;
    }
    let progress = Arc::clone(&ctx.progress);
    Applier {
        opts,
        info,
        rx,
        applied,
        report: SyncReport::default(),
        // (A cluster source's link on a target holding an earlier sync's keys: cleared too.)
        flush_on_full: stored != Stored::None || opts.shard.as_ref().is_some_and(|s| s.clear_first),
        stop: Arc::clone(&ctx.stop),
        replid: String::new(),
        txn_open: false,
        in_source_txn: false,
        txn_commands: 0,
        last_offset: 0,
        stored_offset: 0,
        peeked: None,
        held_back: None,
        stream_db: 0,
        resume_db,
        following_now: false,
        skip_db: false,
        known_commands: std::collections::HashMap::new(),
        txn_uncertain: false,
        pending_since: std::collections::VecDeque::new(),
        progress,
        bar: Bar::new(opts.progress),
        offset_polled: None,
        source_ctl: Default::default(),
        target_ctl: Default::default(),
        foreign: Default::default(),
        foreign_listed: None,
        foreign_list_due: false,
        repairs: Default::default(),
        writer_checked: Instant::now(),
        transit: opts
            .shard
            .as_ref()
            .and_then(|s| s.transit.as_ref())
            .map(|(me, owners)| {
                crate::sync::cluster::transit_run::Settler::new(*me, Arc::clone(owners))
            }),
    }
    .run(&mut writer)
}

/// Refuses (before anything is written) source databases that the target does not have
/// once mapped: names them and a `db_map` that would fix it (the target's lowest databases
/// that nothing else is mapped to).
fn check_databases<W: Sink>(w: &W, filter: &Filter, source_dbs: &[u64]) -> anyhow::Result<()> {
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
    let info = BlockingClient::open_url(&opts.source, opts.timeout)
        .and_then(|mut c| c.info("keyspace"))
        .map_err(TargetError::from)?;
    Ok(parse_keyspace(&info))
}

/// `db0:keys=5,expires=0,avg_ttl=0` lines → (0, 5).
fn parse_keyspace(info: &Info) -> Vec<(u64, u64)> {
    info.keyspace()
        .into_iter()
        .map(|d| (u64::from(d.db), d.keys))
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

#[cfg(test)]
mod tests {
    use super::bar::human_bytes;
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

    #[test]
    fn keyspace() {
        let info =
            "# Keyspace\r\ndb0:keys=5,expires=1,avg_ttl=0\r\ndb12:keys=7,expires=0,avg_ttl=0\r\n";
        assert_eq!(parse_keyspace(&Info::new(info)), vec![(0, 5), (12, 7)]);
        assert!(parse_keyspace(&Info::new("# Keyspace\r\n")).is_empty());
    }
}
