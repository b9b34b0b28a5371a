//! The overlap: how the old side is kept an exact copy of the new primary between the first
//! `cutover switch` and `cutover finish`, so that a rollback hands the applications exactly
//! the data they saw.
//!
//! * **Replica overlap** (the default when the target accepts `PSYNC`): what Redis' own
//!   `FAILOVER` does, across versions. Two links of the sync engine run for the whole
//!   overlap — the forward one a replica of the source writing into the target, the reverse
//!   one a replica of the target writing into the source — and exactly one of them applies:
//!   the one reading the primary ([`crate::sync::handoff`]). The old side therefore receives
//!   everything the primary executes, in the primary's own order: every client's writes
//!   (also of clients that bypass the proxy), script and function effects, expirations,
//!   evictions, `FLUSHALL`. The proxy's data path does no shadow work.
//! * **Shadow overlap** ([`super::shadow`]), the fallback for a new primary that refuses
//!   replication (managed services rename or forbid `PSYNC`/`SYNC`): the proxy sends a
//!   deterministic form of each acknowledged write to the old side. It cannot see writes
//!   that bypass the proxy, nor evictions.
//!
//! A move in replica overlap ([`super::Controller`]'s barrier, steps in order; past the pause
//! limit every step is undone and nothing changed):
//!
//! 0. before anything is held: both links streaming, their replication links up, and each
//!    link's writer still connected to the server running on its side (its `run_id` then
//!    and now: a side that restarted since closed that connection, which the link would
//!    find only at its first write, inside the pause) — else refused at once;
//! 1. hold new client commands, wait until every command sent is answered;
//! 2. read the primary's `master_repl_offset`; the applying link applies up to it and parks;
//! 3. hold the following link (it takes nothing more from its stream);
//! 4. read the new primary's `master_replid` and `master_repl_offset`; the following link
//!    skips up to there and applies from there on (its position is stored on the old side);
//! 5. the parked link becomes the follower; the route flips; the proxy's blocked calls on the
//!    old side are cancelled (their sessions send them again to the new primary);
//! 6. release the held commands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::control;
use super::{
    Controller, CutoverError, Phase, StepReport, foreign_writers, human_bytes, wait_until,
};
use crate::client::Client;
use crate::route::{Backend, Side};
use crate::sync::engine::SyncProgress;
use crate::sync::handoff::{Abort, Role};
use crate::sync::phase::SyncPhase;

/// `[cutover] overlap`: how the old side is kept in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverlapMode {
    /// Replica overlap when the target accepts the reverse link's `PSYNC`, shadow otherwise
    /// (decided at the first switch, before anything is held).
    #[default]
    Auto,
    Replica,
    Shadow,
}

impl OverlapMode {
    pub fn parse(s: &str) -> Option<OverlapMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(OverlapMode::Auto),
            "replica" => Some(OverlapMode::Replica),
            "shadow" => Some(OverlapMode::Shadow),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OverlapMode::Auto => "auto",
            OverlapMode::Replica => "replica",
            OverlapMode::Shadow => "shadow",
        }
    }
}

/// The two links of a replica overlap (`cutover run` starts them; the controller moves the
/// applying role between them and stops them at `finish`).
#[derive(Debug)]
pub struct Links {
    /// Replica of the source, writing into the target.
    pub forward: Arc<SyncProgress>,
    /// Replica of the target, writing into the source.
    pub reverse: Arc<SyncProgress>,
    /// Ends the forward engine for good.
    pub forward_stop: Arc<AtomicBool>,
    /// Ends the reverse engine for good.
    pub reverse_stop: Arc<AtomicBool>,
    /// Why the reverse link cannot run at all (the target refuses `PSYNC`), when known.
    pub unavailable: Mutex<Option<String>>,
}

impl Links {
    pub fn new() -> Links {
        let forward = SyncProgress::with_direction("forward");
        let reverse = SyncProgress::with_direction("reverse");
        forward.handoff.init_overlap(false);
        reverse.handoff.init_overlap(true);
        Links {
            forward: Arc::new(forward),
            reverse: Arc::new(reverse),
            forward_stop: Arc::new(AtomicBool::new(false)),
            reverse_stop: Arc::new(AtomicBool::new(false)),
            unavailable: Mutex::new(None),
        }
    }

    pub fn unavailable(&self) -> Option<String> {
        self.unavailable.lock().ok().and_then(|u| u.clone())
    }

    pub fn set_unavailable(&self, why: String) {
        if let Ok(mut u) = self.unavailable.lock() {
            *u = Some(why);
        }
    }

    /// (applying, following) when `primary` is the primary.
    pub fn roles(&self, primary: Side) -> (&Arc<SyncProgress>, &Arc<SyncProgress>) {
        match primary {
            Side::Source => (&self.forward, &self.reverse),
            Side::Target => (&self.reverse, &self.forward),
        }
    }

    /// Stops the reverse engine for good (a fall-back to the shadow overlap).
    pub fn stop_reverse(&self) {
        self.reverse_stop.store(true, Ordering::Release);
        self.reverse.wake();
    }

    /// Stops both engines for good (`finish`): the stop flags first, then the roles (an
    /// engine that sees [`Role::Stopped`] sees its flag too), so neither link writes again
    /// whatever it was doing (a link that was about to take over loses its CAS).
    pub fn stop_all(&self) {
        self.reverse_stop.store(true, Ordering::Release);
        self.forward_stop.store(true, Ordering::Release);
        self.reverse.handoff.stop();
        self.forward.handoff.stop();
        self.reverse.wake();
        self.forward.wake();
    }

    /// Whether the reverse link is ready to take part in the first switch: streaming, or the
    /// reason it is not.
    pub fn reverse_ready(&self) -> Result<(), String> {
        if let Some(why) = self.unavailable() {
            return Err(why);
        }
        let phase = self.reverse.phase();
        if phase == SyncPhase::Streaming {
            Ok(())
        } else {
            let err = self
                .reverse
                .last_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            Err(format!("the reverse link is {phase}{err}"))
        }
    }

    /// The status of one link.
    pub fn link_json(p: &SyncProgress) -> serde_json::Value {
        let role = p.handoff.role();
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut doc = serde_json::json!({
            "direction": if p.direction() == "reverse" { "target_to_source" } else { "source_to_target" },
            // (`applying` / `following` outside a move; `parked`, `held`… inside one.)
            "role": match role {
                r if r.follows() => "following",
                Role::Solo | Role::SoloStopRequested(_) | Role::ParkRequested(_) => "applying",
                Role::SoloStopped(_) => "stopped",
                r => r.as_str(),
            },
            "phase": if p.ended.load(Ordering::Acquire) { "stopped" } else { p.phase_name() },
            "received_offset": n(&p.received_offset),
            "applied_offset": n(&p.applied_offset),
            "lag_bytes": p.lag_bytes(),
            "lag_ms": p.lag_ms(),
            "reconnects": n(&p.reconnects),
            "link_up": !p.link_down.load(Ordering::Relaxed),
            "full_resyncs": n(&p.full_resyncs),
            "commands_applied": n(&p.commands_applied),
            // Writes on the side this link follows that the applying link did not make.
            "foreign_writes": p.foreign.count(),
            "foreign_keys": p.foreign.keys(),
            "foreign_clients": p.foreign.clients(),
            "last_error": p.last_error.lock().ok().and_then(|e| e.clone()),
        });
        if let Some(m) = doc.as_object_mut() {
            m.extend(p.refusals.status_fields());
        }
        doc
    }

    /// Why the old side is no longer a copy of the primary because something else wrote
    /// to it during the overlap (the following links' foreign writes), if it is not.
    pub fn foreign_reason(&self) -> Option<String> {
        let mut parts = Vec::new();
        for p in [&self.forward, &self.reverse] {
            let n = p.foreign.count();
            if n == 0 {
                continue;
            }
            let clients = p.foreign.clients();
            let by = if clients.is_empty() {
                String::new()
            } else {
                format!(", by {}", clients.join(", "))
            };
            parts.push(format!(
                "{n} foreign write(s) on the side the {} link follows ({}{by})",
                p.direction(),
                p.foreign.keys().join(", ")
            ));
        }
        (!parts.is_empty()).then(|| {
            format!(
                "{}: something writes to the old side directly, so it is no longer a copy of the primary; stop that writer (see `cutover status`), then either finish or copy to the old side again",
                parts.join("; ")
            )
        })
    }

    /// Publishes the role gauges of both links.
    pub fn publish_metrics(&self) {
        for p in [&self.forward, &self.reverse] {
            // (Registered at 0, so that its alert rule has a series before the first one.)
            metrics::counter!("cutover_foreign_writes_total", "direction" => p.direction())
                .increment(0);
            metrics::gauge!("cutover_link_applying", "direction" => p.direction())
                .set(if p.handoff.is_following() { 0.0 } else { 1.0 });
        }
    }
}

impl Default for Links {
    fn default() -> Self {
        Links::new()
    }
}

/// `(master_replid, master_repl_offset)` of a server, from `INFO replication`.
async fn replication_position(c: &mut Client) -> Result<(String, u64), String> {
    let info = c.info("replication").await?;
    let replid = info
        .master_replid()
        .ok_or("INFO replication has no master_replid")?;
    let offset = info
        .master_repl_offset()
        .ok_or("INFO replication has no master_repl_offset")?;
    Ok((replid.to_string(), offset))
}

impl Controller {
    /// Whether this migration uses (or, before the first switch, would use) the replica
    /// overlap; `Err` with the reason when a switch must be refused now.
    pub(super) fn choose_overlap(&self) -> Result<OverlapMode, CutoverError> {
        if let Some(m) = self.overlap_chosen() {
            return Ok(m);
        }
        let Some(links) = &self.links else {
            return Ok(OverlapMode::Shadow);
        };
        match (self.settings.overlap, links.reverse_ready()) {
            (OverlapMode::Shadow, _) => Ok(OverlapMode::Shadow),
            (_, Ok(())) => Ok(OverlapMode::Replica),
            (OverlapMode::Replica, Err(why)) => Err(CutoverError::Refused(format!(
                "[cutover] overlap = \"replica\", but {why}; not switching (wait until `cutover status` shows the reverse link streaming, or set overlap = \"shadow\")"
            ))),
            (_, Err(why)) => match links.unavailable() {
                Some(_) => Ok(OverlapMode::Shadow),
                None if refused_by_target(&links.reverse) => Ok(OverlapMode::Shadow),
                None => Err(CutoverError::Refused(format!(
                    "{why}: not switching yet (the reverse link keeps the source an exact copy after the switch; wait until `cutover status` shows it streaming)"
                ))),
            },
        }
    }

    /// A switch or rollback in replica overlap (see the module doc).
    pub(super) async fn replica_move(
        &self,
        to: Side,
        max_pause: Duration,
        force: bool,
    ) -> Result<StepReport, CutoverError> {
        let links = self
            .links
            .as_ref()
            .ok_or_else(|| CutoverError::Refused("no replica links are running".into()))?;
        let (source, target) = self.backends()?;
        let from = match to {
            Side::Source => Side::Target,
            Side::Target => Side::Source,
        };
        let (old, new): (&Arc<Backend>, &Arc<Backend>) = match to {
            Side::Target => (&source, &target),
            Side::Source => (&target, &source),
        };
        let (applying, following) = links.roles(from);
        // The link that will keep the old side in step must be streaming: a link that lost
        // its place reads a new snapshot first (reported in status), and even --force
        // cannot move before that.
        let follower_phase = following.phase();
        if matches!(follower_phase, SyncPhase::Error | SyncPhase::Connecting) {
            // (Typically right after a side's server restarted: its connections broke.)
            return Err(CutoverError::Refused(format!(
                "the {} link, which would keep the {} in step after the move, is reconnecting ({follower_phase}{}); not moving: retry when `cutover status` shows it streaming",
                following.direction(),
                from.as_str(),
                last_error(following)
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            )));
        }
        if follower_phase != SyncPhase::Streaming || !following.handoff.is_following() {
            return Err(CutoverError::Refused(format!(
                "the {} link, which would keep the {} in step after the move, is {follower_phase}{}; not moving (it must be streaming; see `cutover status`)",
                following.direction(),
                from.as_str(),
                last_error_suffix(following)
            )));
        }
        for link in [following, applying] {
            if link.link_down.load(Ordering::Relaxed) {
                return Err(CutoverError::Refused(format!(
                    "the {} link lost its connection and is reconnecting{}; not moving: retry when `cutover status` shows it streaming",
                    link.direction(),
                    last_error_suffix(link)
                )));
            }
        }
        // The following link's last error now: one that changes during the move means its
        // connection broke in the barrier (a side restarted and the link had not written to
        // it since), which the refusal names instead of the pause limit.
        let follower_error_before = last_error(following);
        let applying_phase = applying.phase();
        if matches!(applying_phase, SyncPhase::Error | SyncPhase::Connecting) {
            // (Its connection to a side broke, e.g. that side's server restarted.)
            return Err(CutoverError::Refused(format!(
                "the {} link, which applies now, is reconnecting ({applying_phase}{}); not moving: retry when `cutover status` shows it streaming",
                applying.direction(),
                last_error(applying)
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            )));
        }
        if applying_phase != SyncPhase::Streaming {
            return Err(CutoverError::Refused(format!(
                "the {} link is {applying_phase}{}; even --force cannot move before it applies the stream",
                applying.direction(),
                last_error_suffix(applying)
            )));
        }
        if !force && let Some(why) = links.foreign_reason() {
            return Err(CutoverError::Refused(format!(
                "not moving: {why} (use --force to move anyway)"
            )));
        }
        if !force {
            // The side moved to lacks writes its link could not apply or it evicted
            // (`sync::refusals`).
            if let Some(why) = applying.refusals.describe() {
                return Err(CutoverError::Refused(format!(
                    "the {} lacks writes (the {} link: {why}); not moving (use --force to move anyway)",
                    to.as_str(),
                    applying.direction()
                )));
            }
            let lag = applying.lag_bytes();
            if lag > self.settings.max_lag_bytes {
                return Err(CutoverError::Refused(format!(
                    "the {} lags {} behind the {}; not moving (use --force to move anyway)",
                    to.as_str(),
                    human_bytes(lag),
                    from.as_str()
                )));
            }
        }
        let timeout = self.settings.timeout;
        let mut old_conn = control::connect(old, timeout).await.map_err(|e| {
            CutoverError::Refused(format!("the {} is not reachable: {e}", old.describe()))
        })?;
        let mut new_conn = control::connect(new, timeout).await.map_err(|e| {
            CutoverError::Refused(format!("the {} is not reachable: {e}", new.describe()))
        })?;
        let ping = tokio::time::timeout(timeout, new_conn.query(&[b"PING"])).await;
        if !matches!(ping, Ok(Ok(super::shadow::Value::Bytes(_)))) {
            return Err(CutoverError::Refused(format!(
                "the {} does not answer PING",
                new.describe()
            )));
        }
        // Each link's writer must still be connected to the server running on its side: a
        // link that writes nothing for a while (the follower) would find its connection to a
        // restarted server dead only at its first write — inside the pause, holding every
        // client up to the pause limit. Refused now instead, before anything is held.
        for (link, conn, side) in [
            (applying, &mut new_conn, to),
            (following, &mut old_conn, from),
        ] {
            if let Some(why) = writer_gone(link, conn, side, timeout).await {
                return Err(CutoverError::Refused(why));
            }
        }
        if !force {
            let writers = tokio::time::timeout(timeout, foreign_writers(&mut old_conn, old))
                .await
                .map_err(|_| {
                    CutoverError::Refused(format!(
                        "the {} did not list its clients in time",
                        old.describe()
                    ))
                })??;
            if !writers.is_empty() {
                return Err(CutoverError::Refused(format!(
                    "other clients write to the {} directly (their writes would be lost after the move): {}; repoint them to the proxy or use --force",
                    from.as_str(),
                    writers.join(", ")
                )));
            }
        }

        // (The scripts the proxy knows go into the new primary: `super::scripts`.)
        let scripts = self
            .scripts_before_pause(&mut old_conn, &mut new_conn)
            .await?;
        let gate = self.proxy.gate();
        let started = Instant::now();
        let deadline = started + max_pause;
        // Every step that talks to a server while commands are held ends by the deadline.
        old_conn.set_deadline(Some(deadline));
        new_conn.set_deadline(Some(deadline));
        gate.pause();
        // Undoes the move, unless the following link had already taken over (its CAS won
        // the race against ours): then `None`, and the move is committed instead.
        let try_abort = |waiting: String| {
            if following.handoff.abort_apply() == Abort::TookOver {
                tracing::warn!(
                    direction = following.direction(),
                    "the pause limit passed just as the {} link took over: the move is committed",
                    following.direction()
                );
                return None;
            }
            following.wake();
            // Parked or not yet, the old link applies on (`ParkRequested`/`Parked →
            // Applying`: one CAS, whichever the engine reached).
            applying.cancel_stop();
            gate.resume();
            metrics::counter!("cutover_barrier_aborts_total").increment(1);
            Some(CutoverError::Timeout {
                elapsed_ms: started.elapsed().as_millis() as u64,
                waiting,
                side: from.as_str(),
            })
        };
        // Before the follower was asked to apply, it cannot have taken over.
        let abort = |waiting: String| {
            try_abort(waiting).unwrap_or_else(|| {
                CutoverError::Refused(
                    "the following link took over before it was asked to (a bug: report it)".into(),
                )
            })
        };
        let in_time = |d: Instant| tokio::time::Instant::from_std(d);
        if let Err(why) = self.wait_for_sessions(started, deadline, force).await {
            return Err(abort(why));
        }
        // The scripts learned since `scripts_before_pause` (no session runs now), before the
        // follower is asked to apply, so that a failure here can still undo the move.
        if let Err(e) = self
            .scripts_in_pause(&mut new_conn, scripts, deadline)
            .await
        {
            return Err(abort(e));
        }
        // 2. The applying link applies up to the old primary's offset and parks.
        let old_pos =
            tokio::time::timeout_at(in_time(deadline), replication_position(&mut old_conn)).await;
        let (_, old_offset) = match old_pos {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                return Err(abort(format!(
                    "cannot read the {}'s offset: {e}",
                    from.as_str()
                )));
            }
            Err(_) => {
                return Err(abort(format!(
                    "the {} did not say its offset",
                    from.as_str()
                )));
            }
        };
        if let Err(role) = applying.request_stop_at(old_offset) {
            return Err(abort(format!(
                "the {} link is {role}, not applying",
                applying.direction()
            )));
        }
        if !wait_until(deadline, || applying.handoff.is_parked()).await {
            return Err(abort(format!(
                "the {} had applied offset {} of {old_offset}",
                to.as_str(),
                applying.applied_offset.load(Ordering::Relaxed)
            )));
        }
        // 3. The following link takes nothing more, so it cannot skip what it must apply.
        if let Err(role) = following.handoff.hold() {
            return Err(abort(format!(
                "the {} link is {}, not following",
                following.direction(),
                role.as_str()
            )));
        }
        following.wake();
        if !wait_until(deadline, || following.handoff.is_held()).await {
            return Err(abort(format!(
                "the {} link did not pause",
                following.direction()
            )));
        }
        // 3b. Import mode moves with the role (Valkey 8.1+, `import`): the new primary
        // expires keys again before any client command is released, the new follower keeps
        // them for the primary's DEL.
        if let Err(e) = self
            .move_import_mode(to, &mut new_conn, &mut old_conn, true)
            .await
        {
            return Err(abort(e));
        }
        // 4. From the new primary's offset on, the following link applies.
        let new_pos =
            tokio::time::timeout_at(in_time(deadline), replication_position(&mut new_conn)).await;
        let (replid, new_offset) = match new_pos {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                return Err(abort(format!(
                    "cannot read the {}'s offset: {e}",
                    to.as_str()
                )));
            }
            Err(_) => return Err(abort(format!("the {} did not say its offset", to.as_str()))),
        };
        if let Err(role) = following.handoff.apply_from(&replid, new_offset) {
            return Err(abort(format!(
                "the {} link is {}, not held",
                following.direction(),
                role.as_str()
            )));
        }
        following.wake();
        let took_over = wait_until(deadline, || {
            following.handoff.role() == Role::Applying || following.handoff.refused().is_some()
        })
        .await;
        if let Some(why) = following.handoff.refused() {
            return Err(abort(format!(
                "the {} link cannot apply from offset {new_offset}: {why}",
                following.direction()
            )));
        }
        if !took_over {
            let trouble = link_trouble(following, &follower_error_before);
            if let Some(e) = try_abort(format!(
                "the {} link had read up to offset {} of {new_offset}",
                following.direction(),
                following.received_offset.load(Ordering::Relaxed)
            )) {
                return Err(match trouble {
                    Some(why) => CutoverError::Refused(format!(
                        "{why}; not moved, the route stays on the {} and held commands went there: retry when `cutover status` shows it streaming",
                        from.as_str()
                    )),
                    None => e,
                });
            }
        }
        // 5. Commit: the parked link follows (`Parked → Following`: nothing else moves a
        // parked link); the route flips.
        if let Err(role) = applying.handoff.follow() {
            tracing::error!(
                direction = applying.direction(),
                role = role.as_str(),
                "the link that applied was not parked at the commit"
            );
        }
        links.publish_metrics();
        let unblocked = self.flip(to, &mut old_conn, old, new, false).await;
        // Which side is the primary now, recorded on the target before any client command is
        // released (`flip::mark_primary`): a `cutover run` killed from here on and started
        // again refuses, naming the side the clients are on.
        let target_conn = if to == Side::Target {
            &mut new_conn
        } else {
            &mut old_conn
        };
        super::mark_primary(target_conn, old_offset, to).await;
        let held = gate.held();
        gate.resume();
        new_conn.set_deadline(None);
        let pause = started.elapsed();
        let (action, phase) = match to {
            Side::Source => ("rollback", Phase::RolledBack),
            Side::Target => ("switch", Phase::Switched),
        };
        self.set_phase(phase);
        self.set_overlap_chosen(OverlapMode::Replica);
        let report = StepReport {
            action,
            primary: to.as_str(),
            pause_ms: pause.as_secs_f64() * 1000.0,
            held_sessions: held,
            unblocked,
            offset: Some(new_offset),
            shadow_writes: 0,
            forced: force,
        };
        metrics::histogram!("cutover_pause_seconds").record(pause.as_secs_f64());
        tracing::info!(
            action,
            pause_ms = report.pause_ms,
            old_offset,
            new_offset,
            unblocked,
            "the {} is the primary; the {} link keeps the {} an exact replica",
            to.as_str(),
            following.direction(),
            from.as_str()
        );
        self.record(report.clone());
        Ok(report)
    }

    /// `finish` in replica overlap: both links stop (the applying one after what it
    /// received is applied, bounded); the commands it applied. Returns only once both
    /// engines have ended (nothing of ours is written after the caller removes cutover's
    /// keys): an engine still inside a write to a frozen server past the deadline is an
    /// error, and the keys stay.
    pub(super) async fn finish_replica(&self, primary: Side) -> Result<u64, CutoverError> {
        let Some(links) = &self.links else {
            return Ok(0);
        };
        let (applying, _) = links.roles(primary);
        let deadline = Instant::now() + self.settings.timeout;
        while applying.lag_bytes() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let applied = applying.commands_applied.load(Ordering::Relaxed);
        links.stop_all();
        // An engine blocked in a write waits for its server's answer up to the sync's
        // timeout (60 s by default): wait as long, plus a margin.
        let limit = self.settings.timeout.max(Duration::from_secs(60)) + Duration::from_secs(5);
        let stopped = |p: &SyncProgress| p.ended.load(Ordering::Acquire);
        let deadline = Instant::now() + limit;
        while !(stopped(&links.forward) && stopped(&links.reverse)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let still: Vec<&str> = [&links.forward, &links.reverse]
            .into_iter()
            .filter(|p| !stopped(p))
            .map(|p| p.direction())
            .collect();
        if !still.is_empty() {
            return Err(CutoverError::Refused(format!(
                "the {} link(s) did not stop within {} s (a write to a server that does not answer); cutover's keys were left in place and the migration is not finished: check the servers, then run `cutover finish` again",
                still.join(" and "),
                limit.as_secs()
            )));
        }
        Ok(applied)
    }
}

/// Why `link`'s writer connection to `side` (reached by `conn`) is dead, if it is: the
/// server there now has another `run_id` than the one the link's connection was made to (it
/// restarted since; the link connects again on its own, at its next check). `None` also
/// when either is unknown (a server that does not say, a link that has not connected).
async fn writer_gone(
    link: &SyncProgress,
    conn: &mut Client,
    side: Side,
    timeout: Duration,
) -> Option<String> {
    let linked = link.writes_to()?;
    let info = tokio::time::timeout(timeout, conn.info("server"))
        .await
        .ok()?
        .ok()?;
    let now = info.field("run_id")?;
    (now != linked).then(|| {
        format!(
            "the {} link's connection to the {side} was made before the {side} restarted (run_id {} then, {} now) and is reconnecting; not moving, no client was held: retry when `cutover status` shows it streaming (in a moment)",
            link.direction(),
            short(&linked),
            short(now),
            side = side.as_str(),
        )
    })
}

/// The first 8 characters of a `run_id`, for messages.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn last_error(p: &SyncProgress) -> Option<String> {
    p.last_error.lock().ok().and_then(|e| e.clone())
}

/// Why a link that did not take over in the barrier could not: it is not streaming, its
/// replication link dropped, or its last error changed since `error_before` (its connection
/// to a side broke during the move). `None`: none of these (then the pause limit is the
/// reason).
fn link_trouble(p: &SyncProgress, error_before: &Option<String>) -> Option<String> {
    let phase = p.phase();
    let down = p.link_down.load(Ordering::Relaxed);
    let error = last_error(p);
    let new_error = error.is_some() && error != *error_before;
    if phase == SyncPhase::Streaming && !down && !new_error {
        return None;
    }
    Some(format!(
        "the {} link lost its connection and is reconnecting ({phase}{})",
        p.direction(),
        error.map(|e| format!("; {e}")).unwrap_or_default()
    ))
}

pub(super) fn last_error_suffix(p: &SyncProgress) -> String {
    p.last_error
        .lock()
        .ok()
        .and_then(|e| e.clone())
        .map(|e| format!(" (last error: {e})"))
        .unwrap_or_default()
}

/// The reverse link's failure says the target refuses replication (not that it is down).
fn refused_by_target(p: &SyncProgress) -> bool {
    let err = p.last_error.lock().ok().and_then(|e| e.clone());
    p.established.load(Ordering::Relaxed) == 0
        && err.is_some_and(|e| {
            let e = e.to_ascii_lowercase();
            e.contains("unknown command") || e.contains("noperm") || e.contains("not allowed")
        })
}
