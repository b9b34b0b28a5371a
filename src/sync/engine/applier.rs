//! The applier: the engine's calling thread, which turns what the link thread hands on into
//! writes on the target.
//!
//! It runs in phases ([`SyncPhase`]): *connecting* until the link reports how the source answered
//! `PSYNC`; *snapshot* while the RDB bytes arrive (they go through the [`crate::rdb::RdbParser`]
//! and the [`Converter`]; the target's position holds `snapshot-loading` meanwhile); then
//! *streaming*, where each read of stream commands becomes one or more batches
//! ([`crate::sync::batch`]). After a full resync within the run (the link dropped and the
//! source could not continue) the target is flushed and the snapshot loaded again.
//!
//! During a replica overlap the applier also plays the **handoff role**
//! ([`crate::sync::handoff`]): while *applying* it writes; when the cutover barrier asks it to
//! stop at an offset it **parks** there (taking nothing more from its stream) until the
//! controller either makes it the follower or withdraws the stop; while *following* it reads
//! and acknowledges its stream, tracks offset and database, and writes nothing, until it is
//! told the offset to apply from — then it stores that position on its side at once and
//! applies from there. Those steps live in `role.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::sync::batch::{self, POSITION_KEY};
use crate::sync::convert::{Converter, KINDS, Stats};
use crate::sync::handoff::Role;
use crate::sync::phase::SyncPhase;
use crate::sync::target::{Sink, Tag, TargetError, TargetInfo, show_key};

use super::bar::human_bytes;
use super::progress::{Carried, Snapshot};
use super::rewrite::CommandShape;
use super::*;

pub(in crate::sync) struct Applier<'a> {
    pub(in crate::sync) opts: &'a SyncOptions,
    pub(in crate::sync) info: TargetInfo,
    pub(in crate::sync) rx: Receiver<Msg>,
    pub(in crate::sync) applied: Arc<AtomicU64>,
    pub(in crate::sync) report: SyncReport,
    /// The target holds data of an earlier sync: a full resync flushes it first.
    pub(in crate::sync) flush_on_full: bool,
    /// Set by Ctrl-C / SIGTERM.
    pub(in crate::sync) stop: Arc<AtomicBool>,
    /// The source's replication id (stored with every position).
    pub(in crate::sync) replid: String,
    /// A `MULTI` was sent and its `EXEC` not yet.
    pub(in crate::sync) txn_open: bool,
    /// The open transaction is the source's own (its `EXEC` closes ours).
    pub(in crate::sync) in_source_txn: bool,
    pub(in crate::sync) txn_commands: usize,
    /// Replication offset after the last stream command queued.
    pub(in crate::sync) last_offset: u64,
    /// The offset of the last position written to the target (batches, starts, idle).
    pub(in crate::sync) stored_offset: u64,
    /// A message taken from `rx` to see whether more were waiting, handled next.
    pub(in crate::sync) peeked: Option<Msg>,
    /// Stream commands after the barrier's offset, kept (before `peeked`) for whatever the
    /// link does next: apply them (the move was aborted) or skip them (it follows now).
    pub(in crate::sync) held_back: Option<Msg>,
    /// The stream's current database (the source's number, before `db_map`), applying or
    /// following: stored with every position, selected again on every resume and hand-over.
    pub(in crate::sync) stream_db: u64,
    /// The stream's database at the position this run resumes from: `Some(None)` for a
    /// position stored without one (an older cutover), `None` when not resuming.
    pub(in crate::sync) resume_db: Option<Option<u64>>,
    /// The last step ran as the follower: an edge detector local to the loop (its first
    /// following step runs `enter_following`), not a role — the link's role is only
    /// `progress.handoff` ([`crate::sync::handoff`]). It outlives the role in one case: a
    /// follower stopped by `finish` ([`Role::Stopped`]) wrote nothing and stores nothing.
    pub(in crate::sync) following_now: bool,
    /// The stream's current database is not copied (`--only-mapped-dbs`): its commands are
    /// skipped until the next `SELECT`.
    pub(in crate::sync) skip_db: bool,
    /// Stream commands the target knows or not (`COMMAND INFO`), by name.
    /// What `COMMAND INFO` says of each command name asked about (upper case).
    pub(super) known_commands: std::collections::HashMap<String, CommandShape>,
    /// The open batch has a command the target might refuse while queueing (one it does
    /// not know, with an argument count outside its arity, or that could not be asked
    /// about): its `EXEC` waits for every `+QUEUED` (see [`Applier::close_txn`]).
    pub(in crate::sync) txn_uncertain: bool,
    /// (end offset, time read from the source) of each received batch of stream commands
    /// the target has not confirmed yet, oldest first: `lag_ms` is the age of the first.
    pub(in crate::sync) pending_since: std::collections::VecDeque<(u64, Instant)>,
    /// Live state (shared with `cutover run`'s status, or the engine's own).
    pub(in crate::sync) progress: Arc<SyncProgress>,
    pub(super) bar: Bar,
    /// When headless `cutover sync` last read the source's offset (for the lag).
    pub(in crate::sync) offset_polled: Option<Instant>,
    /// The classifier of the followed stream ([`super::foreign`]).
    pub(super) foreign: super::foreign::ForeignWatch,
    /// When the followed side's clients were last listed (after a foreign write).
    pub(super) foreign_listed: Option<Instant>,
    /// A foreign write was seen since: list the clients again.
    pub(super) foreign_list_due: bool,
    /// The control connection to the side the link reads from (`INFO replication`, `CLIENT
    /// LIST`), kept between calls.
    pub(super) source_ctl: crate::client::Kept,
    /// The control connection to the side written to (`COMMAND INFO`), kept between calls.
    pub(super) target_ctl: crate::client::Kept,
    /// Keys that expired early here, being copied from the primary ([`super::repair`]).
    pub(in crate::sync) repairs: super::repair::Repairs,
    /// When the writer's connection was last checked for a close by the server (idle
    /// moments only: [`Applier::check_writer`]).
    pub(in crate::sync) writer_checked: Instant,
    /// A link of a cluster source: the links' table of key owners, for slots moving on the
    /// source ([`crate::sync::cluster::transit_run`]). `None` for a standalone source.
    pub(in crate::sync) transit: Option<crate::sync::cluster::transit_run::Settler>,
}

impl Applier<'_> {
    pub(super) fn run<W: Sink>(mut self, w: &mut W) -> anyhow::Result<SyncReport> {
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

    fn run_loop<W: Sink>(&mut self, w: &mut W, conv: &mut Converter) -> anyhow::Result<SyncReport> {
        let mut parser = self.opts.parser();
        let mut phase = SyncPhase::Connecting;
        let mut start_offset = 0;
        // `--once`: the source's offset to stop at (headless `cutover sync`; not a role).
        let mut once_until: Option<u64> = None;
        let mut started = Instant::now();
        loop {
            // The role, with the barrier's offset it may carry: the one atomic load of a
            // step (`finish` sets the stop flag before it stops the role).
            let role = self.progress.handoff.role();
            if role == Role::Stopped || self.stop.load(Ordering::Acquire) {
                self.bar.finish();
                if self.following_now || role.follows() {
                    // A follower wrote nothing: nothing to store.
                    self.report.offset = self.last_offset;
                    return Ok(self.report.clone());
                }
                return self.stop_cleanly(w, &phase, &mut conv.stats);
            }
            if role.follows() {
                if !self.following_now {
                    self.enter_following(w)?;
                }
                self.follow_step(w, &mut phase, role)?;
                continue;
            }
            self.following_now = false;
            if let Role::Parked(at) = role {
                // (A new run of a parked link: it waits for the controller as the run that
                // parked did.)
                self.wait_parked(at)?;
                continue;
            }
            if let Role::SoloStopped(_) = role {
                // (A plain sync that ended its run at the barrier writes nothing until the
                // controller cancels the stop: `cutover run` waits for that between runs.)
                self.bar.finish();
                return Ok(self.report.clone());
            }
            let barrier = role.stop_at();
            if let (Some(limit), SyncPhase::Streaming) = (barrier, &phase) {
                if w.in_flight() > 0 {
                    w.drain()?;
                }
                if w.confirmed_offset().unwrap_or(0) >= limit && !self.in_source_txn {
                    // Keys that expired early here get their copy before the move.
                    self.repair_at_barrier(w, &mut conv.stats)?;
                    if !role.is_solo() {
                        self.park(w, limit)?;
                        continue;
                    }
                    let report = self.stop_cleanly(w, &phase, &mut conv.stats)?;
                    self.progress
                        .applied_offset
                        .store(report.offset, Ordering::Release);
                    // (A cancel that came first leaves `Solo`: `cutover run` starts the
                    // engine again from the position just stored.)
                    self.progress.handoff.solo_stopped(limit);
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
                    self.progress.set_phase(SyncPhase::Snapshot);
                    if phase != SyncPhase::Connecting {
                        // The link dropped and the source could not continue: start over.
                        self.restart_full(w, &phase)?;
                        parser = self.opts.parser();
                        *conv = Converter::with_options(w, self.opts.convert_options());
                        self.report.snapshot_bytes = 0;
                        once_until = None;
                        started = Instant::now();
                    }
                    start_offset = offset;
                    self.last_offset = offset;
                    self.replid = replid;
                    // A new copy of everything: no key waits for a repair any more.
                    self.repairs.clear();
                    self.progress.refusals.clear_pending();
                    phase = phase.move_to(SyncPhase::Snapshot);
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
                    if self.flush_on_full
                        && let Some(scope) = &self.opts.shard
                    {
                        // One link of a cluster source: the target holds the other shards'
                        // keys too; only this shard's slots are cleared.
                        self.bar.say(&format!(
                            "cutover sync: WARNING: full resync of {}: removing the keys of its slots from the target {} (the data of an earlier sync, replaced entirely)",
                            scope.label,
                            w.addr()
                        ));
                        batch::queue_set(w, batch::LOADING)?;
                        w.drain()?;
                        match &self.transit {
                            // The keys this link owns now (slots may have moved since start).
                            Some(t) => {
                                let (owners, me) = (t.owners(), t.me);
                                crate::sync::cluster::source::clear_keys(self.opts, &|k| {
                                    owners.owner(k) == me
                                })?;
                            }
                            None => {
                                crate::sync::cluster::source::clear_slots(self.opts, &scope.slots)?
                            }
                        }
                    } else if self.flush_on_full {
                        self.bar.say(&format!(
                            "cutover sync: WARNING: full resync: FLUSHALL on the target {} (it holds the data of an earlier sync, which is replaced entirely)",
                            w.addr()
                        ));
                        // (The position says `snapshot-loading` before the flush too: a
                        // link following this side sees the load start there.)
                        batch::queue_set(w, batch::LOADING)?;
                        w.send(&[&b"FLUSHALL"[..]], Tag::key("FLUSHALL", b""))?;
                    }
                    // From now on the target holds (part of) this sync's data.
                    self.flush_on_full = true;
                    batch::queue_set(w, batch::LOADING)?;
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
                    self.restore_stream_db(w)?;
                    self.stored_offset = offset;
                    w.mark_offset(offset);
                    phase = phase.move_to(SyncPhase::Streaming);
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
                        once_until = Some(self.source_offset().unwrap_or_else(|e| {
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
                        if let (Some(t), crate::rdb::Event::KeyStart(k)) = (&mut self.transit, &ev)
                            && !t.is_mine(&k.key)
                        {
                            // A key of another link's slot (moved before this RDB was made):
                            // loaded once that link applied its delete.
                            t.settle(&k.key, &self.stop, self.opts.timeout)?;
                        }
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
                    self.stream_db = 0;
                    batch::queue_set(w, &batch::format(&self.replid, start_offset, 0))?;
                    self.stored_offset = start_offset;
                    w.drain()?;
                    w.mark_offset(start_offset);
                    phase = phase.move_to(SyncPhase::Streaming);
                    if self.opts.once {
                        once_until = Some(self.source_offset().unwrap_or_else(|e| {
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
                    if phase == SyncPhase::Streaming {
                        w.drain()?;
                        self.check_writer(w)?;
                        self.store_idle_position(w)?;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => bail!("the replica link stopped"),
            }
            self.report_exec_errors(w, &mut conv.stats)?;
            if phase == SyncPhase::Streaming {
                self.repair_step(w, &mut conv.stats)?;
            }
            if phase == SyncPhase::Streaming
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
            if phase != SyncPhase::Streaming {
                self.pending_since.clear();
            }
            let oldest = self.pending_since.front().map(|(_, at)| *at);
            self.progress.set_oldest_pending(oldest);
            if let Some(stop) = once_until {
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
            let received = if phase == SyncPhase::Streaming {
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
    pub(super) fn next_msg(&mut self, wait: Duration) -> Result<Msg, RecvTimeoutError> {
        match self.held_back.take().or_else(|| self.peeked.take()) {
            Some(m) => Ok(m),
            None => self.rx.recv_timeout(wait),
        }
    }

    /// An idle stream whose last bytes wrote nothing (a `PING`, a `GETACK`: confirmed
    /// without a transaction) stores its position once, so the position on the target reaches
    /// the source's offset when nothing is being written. (Storing it is exactly-once safe:
    /// nothing was applied after the last batch.)
    fn store_idle_position<W: Sink>(&mut self, w: &mut W) -> anyhow::Result<()> {
        if !self.txn_open
            && self.stored_offset < self.last_offset
            && w.confirmed_offset() == Some(self.last_offset)
        {
            batch::queue_set(
                w,
                &batch::format(&self.replid, self.last_offset, self.stream_db),
            )?;
            self.stored_offset = self.last_offset;
        }
        Ok(())
    }

    /// A resumed stream (`+CONTINUE` at the start of a run) goes on in the database it was
    /// in at the stored position: Redis does not send `SELECT` again after a partial resync.
    fn restore_stream_db<W: Sink>(&mut self, w: &mut W) -> anyhow::Result<()> {
        match self.resume_db.take() {
            Some(Some(db)) => {
                self.stream_db = db;
                self.select_stream_db(w)?;
                tracing::info!(
                    direction = self.progress.direction(),
                    db,
                    target_db = w.db(),
                    skipped = self.skip_db,
                    "the resumed stream continues in its database"
                );
            }
            Some(None) => {
                self.stream_db = w.db();
                let line = format!(
                    "cutover sync: WARNING: the stored position does not say the stream's database (it was written by an older cutover): the stream continues in the target's database {} until the source sends SELECT",
                    w.db()
                );
                tracing::warn!("{line}");
                self.bar.say(&line);
            }
            None => {}
        }
        Ok(())
    }

    /// Selects, on the target, the database the stream is in ([`Self::stream_db`] mapped
    /// through `db_map`); a database that is not copied skips the stream up to the next
    /// `SELECT` instead (never into another database).
    pub(super) fn select_stream_db<W: Sink>(&mut self, w: &mut W) -> anyhow::Result<()> {
        match self.opts.tuning.filter.map_db(self.stream_db) {
            Some(to) => {
                w.select(to)?;
                self.skip_db = false;
            }
            None => self.skip_db = true,
        }
        Ok(())
    }

    /// A full resync within the run (the link dropped and the source could not continue, or
    /// dropped during the snapshot): what the target holds is an earlier or partial copy, so
    /// it is flushed and loaded anew — no stale key, no doubled list element.
    fn restart_full<W: Sink>(&mut self, w: &mut W, phase: &SyncPhase) -> anyhow::Result<()> {
        if self.txn_open {
            w.discard()?;
            self.txn_open = false;
            self.in_source_txn = false;
            self.txn_commands = 0;
        }
        w.drain()?;
        self.progress.reconnects.fetch_add(1, Ordering::Relaxed);
        self.progress.full_resyncs.fetch_add(1, Ordering::Relaxed);
        let during = if *phase == SyncPhase::Snapshot {
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
    fn stop_cleanly<W: Sink>(
        &mut self,
        w: &mut W,
        phase: &SyncPhase,
        stats: &mut Stats,
    ) -> anyhow::Result<SyncReport> {
        if *phase == SyncPhase::Connecting {
            say("cutover sync: stopped before the sync started; the target is unchanged");
            return Ok(self.report.clone());
        }
        if *phase != SyncPhase::Streaming {
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
    fn poll_source_offset(&mut self, phase: &SyncPhase) {
        if self.opts.shared.is_some() || *phase != SyncPhase::Streaming {
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
    fn source_offset(&mut self) -> anyhow::Result<u64> {
        self.source_offset_within(self.opts.timeout)
    }

    /// The source's `master_repl_offset`, asked within `timeout` (on the kept control
    /// connection).
    fn source_offset_within(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let info = self
            .source_ctl
            .with(&self.opts.source, timeout, |c| c.info("replication"))
            .map_err(TargetError::from)?;
        info.master_repl_offset()
            .context("INFO replication has no master_repl_offset")
    }
}

/// The database of a `SELECT` in the replication stream (as Redis writes it: `*2`, `$6`),
/// `None` for any other command.
pub(super) fn select_db(wire: &[u8]) -> Option<u64> {
    let rest = wire.strip_prefix(b"*2\r\n$6\r\n")?;
    if !rest.get(..6)?.eq_ignore_ascii_case(b"SELECT") {
        return None;
    }
    let args = split_args(wire).ok()?;
    std::str::from_utf8(args.get(1)?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
