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
//! With `once`, the engine returns as soon as the snapshot and the stream up to the source's
//! offset at the moment the snapshot had been received (`master_repl_offset` from
//! `INFO replication`) are applied and confirmed by the target.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::convert::{Converter, Stats};
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
}

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
    Start { offset: u64 },
    Snapshot(Vec<u8>),
    SnapshotDone { bytes: u64 },
    Commands(Vec<StreamCommand>),
    Failed(String),
}

/// Runs the sync on the calling thread (blocking). Returns only with `once` (or on an error).
pub fn run(opts: &SyncOptions) -> anyhow::Result<SyncReport> {
    let mut writer = TargetWriter::connect(&opts.target, opts.timeout)?;
    let info = writer.info().clone();
    tracing::info!(target = %info.describe(), max_rdb = info.max_rdb.get(), "target connected");

    let (tx, rx) = sync_channel::<Msg>(32);
    let applied = Arc::new(AtomicU64::new(0));
    {
        let source = opts.source.clone();
        let applied = Arc::clone(&applied);
        let timeout = opts.timeout;
        std::thread::Builder::new()
            .name("cutover-replica".into())
            .spawn(move || link_thread(source, tx, applied, timeout))
            .context("cannot start the replica link thread")?;
    }
    Applier {
        opts,
        info,
        rx,
        applied,
        report: SyncReport::default(),
    }
    .run(&mut writer)
}

fn link_thread(source: RedisUrl, tx: SyncSender<Msg>, applied: Arc<AtomicU64>, timeout: Duration) {
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
        let (mut link, start) = ReplicaLink::connect(&source, None, 0, timeout).await?;
        let SyncStart::FullResync { offset, .. } = start else {
            anyhow::bail!("the source answered PSYNC ? -1 with {start:?}");
        };
        applied.store(offset, Ordering::Release);
        if tx.send(Msg::Start { offset }).is_err() {
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
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Msg::Start { offset }) => {
                    start_offset = offset;
                    phase = Phase::Snapshot;
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
                    for cmd in cmds {
                        self.forward(&cmd, w, &mut conv.stats)?;
                    }
                    w.poll()?;
                }
                Ok(Msg::Failed(e)) => bail!("{e}"),
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

    /// Forwards one command of the replication stream.
    fn forward(
        &mut self,
        cmd: &StreamCommand,
        w: &mut TargetWriter,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
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
        let tag = |what: String| Tag {
            key: args.get(1).map(|k| k.to_vec()).unwrap_or_default(),
            what: format!("replicated {what}").into(),
            offset: Some(cmd.end_offset),
            tolerate_error: false,
        };
        match name.as_str() {
            "PING" | "PUBLISH" | "SPUBLISH" | "REPLCONF" => {
                self.report.commands_skipped += 1;
                w.mark_offset(cmd.end_offset);
            }
            "SELECT" => {
                let db = args
                    .get(1)
                    .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u64>().ok())
                    .context("SELECT without a database number in the replication stream")?;
                w.send_wire(&cmd.wire, tag(name.clone()))?;
                w.set_db(db);
                self.report.commands += 1;
            }
            "PEXPIREAT" if args.len() > 3 && !self.info.has_expire_flags() => {
                w.send(&args[..3], tag(name.clone()))?;
                self.report.commands += 1;
            }
            "FUNCTION" if !self.info.has_functions() => {
                self.report.commands_skipped += 1;
                stats.unsupported += 1;
                tracing::warn!(
                    "a FUNCTION command in the replication stream cannot be applied to {} (no functions before Redis 7.0)",
                    self.info.describe()
                );
                w.mark_offset(cmd.end_offset);
            }
            _ => {
                w.send_wire(&cmd.wire, tag(name.clone()))?;
                self.report.commands += 1;
            }
        }
        Ok(())
    }
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
