//! The applier's handoff role in a replica overlap ([`crate::sync::handoff`]): parking at
//! the barrier, following (reading and acknowledging the stream without applying, checking
//! it for foreign writes, [`super::foreign`]), and taking over at the offset the controller
//! hands it. The applier's loop (`applier.rs`) calls these by the link's [`Role`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::sync::batch;
use crate::sync::handoff::Role;
use crate::sync::phase::SyncPhase;
use crate::sync::target::Sink;

use super::applier::select_db;
use super::*;

impl Applier<'_> {
    /// The applying link of a replica overlap reached the barrier's offset `limit` (and the
    /// target confirmed it): it parks (`ParkRequested(limit) → Parked(limit)`) and waits
    /// there, taking nothing more from its stream, until the controller either makes it the
    /// follower ([`Handoff::follow`]) or withdraws the stop (the move was aborted: it applies
    /// on). A withdrawal that came first makes the park fail: it applies on at once.
    pub(super) fn park<W: Sink>(&mut self, w: &mut W, limit: u64) -> anyhow::Result<()> {
        let p = Arc::clone(&self.progress);
        let confirmed = w.confirmed_offset().unwrap_or(limit);
        self.applied.store(confirmed, Ordering::Release);
        p.applied_offset.store(confirmed, Ordering::Release);
        if !p.handoff.park(limit) {
            // Withdrawn or stopped meanwhile: the loop's next step sees which.
            return Ok(());
        }
        self.wait_parked(limit)
    }

    /// Parked at `at`: waits until the controller decides (only its CAS leaves
    /// [`Role::Parked`]; the engine never unparks itself), or the run is stopped.
    pub(super) fn wait_parked(&mut self, at: u64) -> anyhow::Result<()> {
        let p = Arc::clone(&self.progress);
        // (The controller decides within its pause limit; the bound here only keeps a lost
        // controller from holding this thread for good: the run fails and the next one
        // waits again, still parked.)
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.handoff.role() == Role::Parked(at) && !self.stop.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                bail!("the cutover controller never decided what this link does after the barrier");
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        if p.handoff.is_following() {
            // From here on the link reads the old side, where only the other link writes.
            p.foreign.watching.store(true, Ordering::Relaxed);
            self.foreign = Default::default();
            tracing::info!(
                direction = p.direction(),
                offset = at,
                "the link applied up to the barrier and follows now (reads without applying)"
            );
        }
        Ok(())
    }

    /// The link follows from now on (a move made it the follower, or undid its taking
    /// over): a transaction it had open is discarded, and the stream's database is the
    /// writer's.
    pub(super) fn enter_following<W: Sink>(&mut self, w: &mut W) -> anyhow::Result<()> {
        if self.txn_open {
            w.discard()?;
            self.txn_open = false;
            self.in_source_txn = false;
            self.txn_commands = 0;
        }
        w.drain()?;
        self.pending_since.clear();
        // (Copies read for the stream this link no longer applies are dropped; the keys
        // stay queued in `Refusals` and are read again if it applies again.)
        self.repairs.clear();
        self.following_now = true;
        Ok(())
    }

    /// One step of a following link ([`crate::sync::handoff`]): it reads its stream and skips it
    /// (the other side has it already), keeping track of the offset and the stream's
    /// database, and acknowledges what it read. Asked to apply from an offset, it skips up to
    /// there and starts applying exactly there; asked to hold, it takes nothing.
    pub(super) fn follow_step<W: Sink>(
        &mut self,
        w: &mut W,
        phase: &mut SyncPhase,
        role: Role,
    ) -> anyhow::Result<()> {
        let p = Arc::clone(&self.progress);
        let h = &p.handoff;
        let request = match role {
            Role::Requested(_) if *phase == SyncPhase::Streaming => h.apply_request(),
            _ => None,
        };
        if let Some((replid, from)) = &request
            && self.last_offset >= *from
        {
            return self.start_applying(w, replid, *from);
        }
        if matches!(role, Role::Holding | Role::Held) {
            h.ack_hold();
            std::thread::sleep(Duration::from_micros(100));
            return Ok(());
        }
        let wait = if request.is_some() {
            Duration::from_micros(200)
        } else {
            Duration::from_millis(100)
        };
        match self.next_msg(wait) {
            Ok(Msg::Start { replid, offset }) => {
                if *phase != SyncPhase::Connecting {
                    p.reconnects.fetch_add(1, Ordering::Relaxed);
                    p.full_resyncs.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        direction = p.direction(),
                        "the following link could not continue its stream (+FULLRESYNC): it reads a new snapshot and skips it (the other side has that data); a move to its side waits until it is streaming again"
                    );
                }
                self.replid = replid;
                self.last_offset = offset;
                self.stream_db = 0;
                self.report.snapshot_bytes = 0;
                p.snapshot_bytes_total.store(0, Ordering::Relaxed);
                p.mark_established();
                *phase = (*phase).move_to(SyncPhase::Snapshot);
            }
            Ok(Msg::SnapshotSize(size)) => {
                p.snapshot_bytes_total
                    .store(size.unwrap_or(0), Ordering::Relaxed);
            }
            Ok(Msg::Snapshot(bytes)) => self.report.snapshot_bytes += bytes.len() as u64,
            Ok(Msg::SnapshotDone { .. }) => *phase = phase.move_to(SyncPhase::Streaming),
            Ok(Msg::Resumed { replid, offset }) => {
                self.replid = replid;
                self.last_offset = offset;
                if let Some(db) = self.resume_db.take() {
                    self.stream_db = db.unwrap_or(0);
                }
                p.mark_established();
                *phase = (*phase).move_to(SyncPhase::Streaming);
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
                        self.stream_db = db;
                    }
                    if p.foreign.watching.load(Ordering::Relaxed) {
                        if let Some((n, what)) = self.foreign.see(&cmd.wire, self.stream_db) {
                            self.record_foreign(n, what);
                        }
                        if self.foreign.lone_deletes_full() {
                            if let Some(w) = w.standalone() {
                                self.check_lone_deletes(w)?;
                            }
                        }
                    }
                    self.last_offset = cmd.end_offset;
                }
                // Lone DELs: the old side's expiries, or foreign deletes (`expiry.rs`).
                if let Some(w) = w.standalone() {
                    self.check_lone_deletes(w)?;
                }
            }
            Ok(Msg::Failed(message, transient)) => {
                return Err(EngineError::SourceLink { message, transient }.into());
            }
            Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the replica link stopped"),
        }
        if *phase == SyncPhase::Streaming {
            self.applied.store(self.last_offset, Ordering::Release);
            h.set_position(&self.replid, self.last_offset, self.stream_db);
        }
        self.list_foreign_clients();
        self.check_writer(w)?;
        self.progress.set_oldest_pending(None);
        let offset = if *phase == SyncPhase::Streaming {
            self.last_offset
        } else {
            0
        };
        // (The counts of what this link applied before stay as they are.)
        self.progress.update_following(phase, offset);
        Ok(())
    }

    /// A link that writes nothing for a while (a follower, an idle stream) would find its
    /// writer's connection dead only at its next write — for a follower, inside a move's
    /// pause, when it takes over. So, at most every 100 ms while idle, it looks whether the
    /// server closed it (a restart, the server's idle `timeout`): then the run fails as a
    /// lost connection does, and the retry connects again (the move refuses meanwhile,
    /// before holding any client: the link is not streaming).
    pub(super) fn check_writer<W: Sink>(&mut self, w: &mut W) -> anyhow::Result<()> {
        if self.writer_checked.elapsed() < writer_check_every() {
            return Ok(());
        }
        self.writer_checked = Instant::now();
        let Some(t) = w.standalone() else {
            return Ok(());
        };
        if let Some(why) = t.closed_by_server() {
            tracing::warn!(
                direction = self.progress.direction(),
                target = t.addr(),
                "{why}; connecting again"
            );
            return Err(crate::sync::target::TargetError::Io {
                addr: t.addr().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why),
            }
            .into());
        }
        Ok(())
    }

    /// Foreign writes on the followed side ([`super::foreign`]): counted, named, logged, and
    /// the side's writing clients listed (at most once a second).
    pub(super) fn record_foreign(&mut self, n: u64, what: Vec<String>) {
        let p = Arc::clone(&self.progress);
        let before = p.foreign.count();
        p.foreign.record(n, what.clone());
        metrics::counter!("cutover_foreign_writes_total", "direction" => p.direction())
            .increment(n);
        if before == 0 || (before + n) / 1000 > before / 1000 {
            tracing::warn!(
                direction = p.direction(),
                count = before + n,
                writes = ?what,
                "a write on the side this link follows was not made by the applying link (a foreign write: a client writing to the old side directly, or a misrouted command); the old side is no longer a copy of the primary and a rollback is unsafe"
            );
        }
        self.foreign_list_due = true;
        self.list_foreign_clients();
    }

    /// Lists the followed side's clients that write (`CLIENT LIST`) after a foreign write,
    /// at most every 250 ms (a later step does it when it is too soon now).
    pub(super) fn list_foreign_clients(&mut self) {
        let p = Arc::clone(&self.progress);
        if self.foreign_list_due
            && self
                .foreign_listed
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(250))
        {
            self.foreign_listed = Some(Instant::now());
            self.foreign_list_due = false;
            let listed = self
                .source_ctl
                .with(&self.opts.source, Duration::from_secs(1), |c| {
                    c.call_raw(&[b"CLIENT", b"LIST"])
                });
            match listed {
                Ok(raw) => p.foreign.set_clients(super::foreign::writing_clients(
                    &String::from_utf8_lossy(&raw),
                )),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list the followed side's clients")
                }
            }
        }
    }

    /// The follower reached the offset it was asked to apply from: from here on it applies.
    /// The position is stored on its side at once, so a restart of this engine continues
    /// from exactly here.
    pub(super) fn start_applying<W: Sink>(
        &mut self,
        w: &mut W,
        replid: &str,
        from: u64,
    ) -> anyhow::Result<()> {
        let p = Arc::clone(&self.progress);
        let h = &p.handoff;
        if replid != self.replid {
            h.refuse(from, format!(
                "its stream is {} but the offset to apply from belongs to {replid} (the link resynced)",
                self.replid
            ));
            return Ok(());
        }
        if self.last_offset != from {
            h.refuse(
                from,
                format!(
                    "it had read up to offset {} already, past {from}",
                    self.last_offset
                ),
            );
            return Ok(());
        }
        // The stream goes on in its database: selected before the first command applied (a
        // database that is not copied skips everything up to the next SELECT).
        self.select_stream_db(w)?;
        w.mark_offset(from);
        batch::queue_set(w, &batch::format(&self.replid, from, self.stream_db))?;
        self.stored_offset = from;
        w.drain()?;
        self.flush_on_full = true;
        self.pending_since.clear();
        self.applied.store(from, Ordering::Release);
        self.progress.applied_offset.store(from, Ordering::Release);
        if let Err(role) = h.started_applying(from) {
            // The controller withdrew the request first (its deadline passed): this link
            // follows on; what it wrote is its own position key, which nothing copies.
            tracing::warn!(
                direction = self.progress.direction(),
                role = role.as_str(),
                "the move was withdrawn while this link took over; it follows on"
            );
            return Ok(());
        }
        tracing::info!(
            direction = self.progress.direction(),
            replid,
            offset = from,
            "the link applies from here on"
        );
        Ok(())
    }
}

/// How often an idle link looks at its writer's connection ([`Applier::check_writer`]):
/// every 100 ms. `CUTOVER_TEST_WRITER_CHECK_MS` changes it, for tests only (to widen the
/// window in which only the move's own check sees a dead connection).
fn writer_check_every() -> Duration {
    static EVERY: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| {
        std::env::var("CUTOVER_TEST_WRITER_CHECK_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_millis(100), Duration::from_millis)
    })
}
