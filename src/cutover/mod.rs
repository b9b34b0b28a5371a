//! The cutover: moving the clients between source and target in one short pause, losing and
//! doubling nothing, and keeping the way back open.
//!
//! * [`gate`]: how the sessions are held and how the controller knows nothing is in flight;
//! * [`shadow`]: the deterministic form of each acknowledged write, for the old side;
//! * [`writer`]: the task that applies those shadow writes to the old side;
//! * this module: the [`Controller`] behind the admin commands `SWITCH`, `ROLLBACK`, `FINISH`.
//!
//! ## The barrier (the same for every move)
//!
//! 1. Preconditions are checked before anything is held (unless forced): for the first switch
//!    the sync streams and lags less than `max_lag_bytes`, the target answers, and no other
//!    client writes to the source (`CLIENT LIST`: the proxy's own connections and replicas
//!    excepted — their writes would be lost after the flip); for later moves, the shadow
//!    writes reached the other side (`rollback_safe`).
//! 2. Pause: sessions stop dispatching (their commands wait, nothing is refused); the
//!    controller waits until every command already sent is answered. A transaction in progress
//!    finishes first; a blocking call does not hold the barrier up.
//! 3. Catch up: the first switch reads the source's `master_repl_offset` and lets the sync
//!    engine apply exactly up to it, then stops it (nothing written to the source later — the
//!    shadow writes — may come back through replication). Later moves wait until the shadow
//!    queue into the new primary is empty.
//! 4. Flip: the route is swapped (`ArcSwap`, a new epoch); blocking calls of the proxy's
//!    connections on the old side are cancelled with `CLIENT UNBLOCK` (their sessions send them
//!    again to the new primary with the rest of their timeout); shadowing starts towards the
//!    old side.
//! 5. Release: held commands go to the new primary.
//!
//! If steps 2–3 take longer than `max_pause_ms`, the move is aborted: the route stays where
//! it was, the held commands are released to it, the sync continues, and the caller gets the
//! reason. Client connections never drop.

pub mod gate;
pub mod order;
pub mod overlap;
pub mod phase;
pub mod shadow;
pub mod writer;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value as Json, json};

use crate::proxy::command::command_id;
use crate::route::{Backend, Route, RouteTable, Side};
use crate::sync::batch::SWITCHED_KEY;
use crate::sync::engine::SyncProgress;
use crate::sync::phase::SyncPhase;
use overlap::{Links, OverlapMode};
pub use phase::{Move, Phase};
use shadow::{ShadowSink, Value};
use writer::Conn;

/// What the controller needs from the proxy it switches, and nothing more: the route table
/// it flips, the gate that holds the sessions (and lists their parked blocking calls), and
/// the slot of the shadow sink the sessions copy acknowledged writes into. The proxy
/// implements it (`proxy::ProxyShared`); the controller never sees the proxy's other state.
pub trait ProxyHandle: Send + Sync {
    /// The route every session reads once per batch; only the controller stores into it.
    fn route(&self) -> &RouteTable;
    /// The barrier's gate ([`gate`]).
    fn gate(&self) -> &gate::Gate;
    /// Where sessions copy acknowledged writes while the old side is kept in step.
    fn shadow(&self) -> &arc_swap::ArcSwapOption<ShadowSink>;
}

/// Milliseconds since the Unix epoch (for absolute expiry times).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `[cutover]` settings.
#[derive(Debug, Clone)]
pub struct CutoverSettings {
    /// Default bound of the pause (`switch --max-pause-ms` overrides it).
    pub max_pause: Duration,
    /// The first switch is refused while the sync lags more than this.
    pub max_lag_bytes: u64,
    /// Shadow writes that may wait for the old side before the rollback becomes unsafe.
    pub shadow_queue: usize,
    /// Time limit for control connections (preconditions, shadow writer).
    pub timeout: Duration,
    /// How the old side is kept in step during the overlap ([`overlap`]).
    pub overlap: OverlapMode,
}

impl Default for CutoverSettings {
    fn default() -> Self {
        CutoverSettings {
            max_pause: Duration::from_millis(100),
            max_lag_bytes: 1024 * 1024,
            shadow_queue: 1_000_000,
            timeout: Duration::from_secs(5),
            overlap: OverlapMode::Auto,
        }
    }
}

/// Why a move did not happen (nothing changed then).
#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    #[error("{0}")]
    Refused(String),
    #[error(
        "pause limit reached after {elapsed_ms} ms ({waiting}); not switched, the route stays on the {side} and held commands went there"
    )]
    Timeout {
        elapsed_ms: u64,
        waiting: String,
        side: &'static str,
    },
}

/// What one move did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    pub action: &'static str,
    pub primary: &'static str,
    /// How long new commands were held.
    pub pause_ms: f64,
    /// Sessions that were waiting at the gate when it opened.
    pub held_sessions: usize,
    /// Blocking calls cancelled on the old side (and sent again to the new primary).
    pub unblocked: usize,
    /// Replication offset (first switch) at which the sync stopped.
    pub offset: Option<u64>,
    /// Shadow writes applied to the old side before this move (rollback/finish).
    pub shadow_writes: u64,
    pub forced: bool,
}

pub struct Controller {
    proxy: Arc<dyn ProxyHandle>,
    sync: Arc<SyncProgress>,
    /// Set once the sync engine is stopped for good (after the first switch).
    sync_detached: Arc<AtomicBool>,
    settings: CutoverSettings,
    phase: Mutex<Option<Phase>>,
    /// One move at a time.
    busy: tokio::sync::Mutex<()>,
    history: Mutex<Vec<StepReport>>,
    /// The two links of a replica overlap (`None`: shadow overlap only).
    links: Option<Arc<Links>>,
    /// The overlap the first switch chose.
    overlap_chosen: Mutex<Option<OverlapMode>>,
}

impl Controller {
    pub fn new(
        proxy: Arc<dyn ProxyHandle>,
        sync: Arc<SyncProgress>,
        sync_detached: Arc<AtomicBool>,
        settings: CutoverSettings,
        links: Option<Arc<Links>>,
    ) -> Self {
        Controller {
            proxy,
            sync,
            sync_detached,
            settings,
            phase: Mutex::new(None),
            busy: tokio::sync::Mutex::new(()),
            history: Mutex::new(Vec::new()),
            links,
            overlap_chosen: Mutex::new(None),
        }
    }

    /// The overlap the first switch chose (`None` before it).
    pub fn overlap_chosen(&self) -> Option<OverlapMode> {
        self.overlap_chosen.lock().ok().and_then(|m| *m)
    }

    fn set_overlap_chosen(&self, m: OverlapMode) {
        if let Ok(mut g) = self.overlap_chosen.lock() {
            *g = Some(m);
        }
    }

    /// In a replica overlap that is not finished: the lag (bytes, ms) of the link applying
    /// to the old side.
    pub fn overlap_lag(&self) -> Option<(u64, u64)> {
        let links = self.links.as_ref()?;
        if !self.replica_overlap() || self.phase() == Some(Phase::Finished) {
            return None;
        }
        let (applying, _) = links.roles(self.proxy.route().load().primary);
        Some((applying.lag_bytes(), applying.lag_ms()))
    }

    fn replica_overlap(&self) -> bool {
        self.overlap_chosen() == Some(OverlapMode::Replica)
    }

    pub fn phase(&self) -> Option<Phase> {
        self.phase.lock().ok().and_then(|p| *p)
    }

    fn set_phase(&self, p: Phase) {
        if let Ok(mut g) = self.phase.lock() {
            if !Phase::allows(*g, p) {
                debug_assert!(false, "cutover phase {:?} → {p:?} is not a move", *g);
                tracing::warn!(from = ?*g, to = ?p, "unexpected cutover phase move");
            }
            *g = Some(p);
        }
        metrics::gauge!("cutover_phase").set(p.gauge());
    }

    fn backends(&self) -> Result<(Arc<Backend>, Arc<Backend>), CutoverError> {
        let route = self.proxy.route().load();
        match &route.target {
            Some(t) => Ok((route.source.clone(), t.clone())),
            None => Err(CutoverError::Refused(
                "no [target] is configured; nothing to switch to".into(),
            )),
        }
    }

    /// The status fields of the cutover (merged into `STATUS`).
    pub fn status(&self) -> Json {
        let sink = self.proxy.shadow().load_full();
        let history = self.history.lock().map(|h| h.clone()).unwrap_or_default();
        let primary = self.proxy.route().load().primary;
        let replica_unsafe = self.replica_unsafe_reason(primary);
        let rollback_safe = match (self.phase(), &sink) {
            (Some(Phase::Finished), _) => false,
            (Some(_), _) if self.replica_overlap() => replica_unsafe.is_none(),
            (Some(_), Some(s)) => s.is_safe(),
            (Some(_), None) => false,
            // Before the first switch there is nothing to roll back.
            (None, _) => true,
        };
        let unsafe_reason = if self.replica_overlap() {
            replica_unsafe
        } else {
            sink.as_ref().and_then(|s| s.reason())
        };
        metrics::gauge!("cutover_rollback_safe").set(if rollback_safe { 1.0 } else { 0.0 });
        let overlap = self.overlap_chosen().map_or_else(
            || match &self.links {
                Some(l) if self.settings.overlap != OverlapMode::Shadow => {
                    match l.reverse_ready() {
                        Ok(()) => "replica (at the first switch)".to_string(),
                        Err(why) => {
                            format!("{} (not ready: {why})", self.settings.overlap.as_str())
                        }
                    }
                }
                _ => "shadow (at the first switch)".to_string(),
            },
            |m| m.as_str().to_string(),
        );
        // (The links are shown while a replica overlap is, or may be, in use.)
        let links = self
            .links
            .as_ref()
            .filter(|l| {
                self.overlap_chosen() != Some(OverlapMode::Shadow)
                    && self.settings.overlap != OverlapMode::Shadow
                    && l.unavailable().is_none()
            })
            .map(|l| {
                l.publish_metrics();
                json!([Links::link_json(&l.forward), Links::link_json(&l.reverse)])
            });
        // What keeping the old side in step costs, in words (status and README).
        let overlap_cost = match (self.overlap_chosen(), &self.links) {
            (Some(OverlapMode::Replica), Some(l)) if self.phase() != Some(Phase::Finished) => {
                let (applying, following) = l.roles(primary);
                Some(format!(
                    "no work on the proxy's data path; the {} link reads the primary's replication stream and has applied {} commands to the old side, the {} link reads the old side's stream without applying",
                    applying.direction(),
                    applying
                        .commands_applied
                        .load(std::sync::atomic::Ordering::Relaxed),
                    following.direction()
                ))
            }
            (Some(OverlapMode::Shadow), _) if self.phase() != Some(Phase::Finished) => Some(
                "the proxy captures every write, keeps one write per key in flight to the primary, and the shadow writer sends their deterministic forms to the old side".to_string(),
            ),
            _ => None,
        };
        json!({
            "phase": self.phase().map(Phase::as_str),
            "overlap": overlap,
            "overlap_cost": overlap_cost,
            "links": links,
            "rollback_safe": rollback_safe,
            "rollback_unsafe_reason": unsafe_reason,
            "shadow_queue": sink.as_ref().map_or(0, |s| s.pending()),
            "shadow_side": sink.as_ref().map(|s| s.side.as_str()),
            "shadow_writes": sink.as_ref().map_or(0, |s| s.enqueued()),
            "held_sessions": self.proxy.gate().held(),
            "last": history.last(),
            "history": history,
        })
    }

    /// `cutover switch`: source → target (or back to the target after a rollback).
    pub async fn switch(
        &self,
        max_pause: Option<Duration>,
        force: bool,
    ) -> Result<StepReport, CutoverError> {
        let _one = self.busy.lock().await;
        let max_pause = max_pause.unwrap_or(self.settings.max_pause);
        let from = self.phase();
        Phase::after(from, Move::Switch).map_err(|why| CutoverError::Refused(why.into()))?;
        match from {
            None => match self.choose_overlap()? {
                OverlapMode::Replica => self.replica_move(Side::Target, max_pause, force).await,
                _ => {
                    if let Some(links) = &self.links {
                        // Shadow overlap: the forward sync stops at the switch as a plain sync
                        // does; the reverse link is not needed.
                        if let Some(why) = links.reverse_ready().err() {
                            tracing::warn!("shadow overlap: {why}");
                        }
                        links.forward.handoff.end_overlap();
                        links.stop_reverse();
                    }
                    if self.links.is_some() {
                        // (Chosen for good: the reverse link is stopped.)
                        self.set_overlap_chosen(OverlapMode::Shadow);
                    }
                    let r = self.first_switch(max_pause, force).await;
                    if r.is_ok() {
                        self.set_overlap_chosen(OverlapMode::Shadow);
                    }
                    r
                }
            },
            Some(Phase::RolledBack) if self.replica_overlap() => {
                self.replica_move(Side::Target, max_pause, force).await
            }
            // (`Phase::after` refused the others.)
            Some(_) => self.flip_with_shadow(Side::Target, max_pause, force).await,
        }
    }

    /// `cutover rollback`: target → source.
    pub async fn rollback(
        &self,
        max_pause: Option<Duration>,
        force: bool,
    ) -> Result<StepReport, CutoverError> {
        let _one = self.busy.lock().await;
        let max_pause = max_pause.unwrap_or(self.settings.max_pause);
        // Only from `switched` (`Phase::after` refused the others).
        Phase::after(self.phase(), Move::Rollback)
            .map_err(|why| CutoverError::Refused(why.into()))?;
        if self.replica_overlap() {
            self.replica_move(Side::Source, max_pause, force).await
        } else {
            self.flip_with_shadow(Side::Source, max_pause, force).await
        }
    }

    /// `cutover finish`: stop shadowing; the old side is detached.
    pub async fn finish(&self) -> Result<StepReport, CutoverError> {
        let _one = self.busy.lock().await;
        let from = self.phase();
        Phase::after(from, Move::Finish).map_err(|why| CutoverError::Refused(why.into()))?;
        // (`Phase::after` refused the others: switched or rolled back.)
        let primary = if from == Some(Phase::RolledBack) {
            Side::Source
        } else {
            Side::Target
        };
        let replica = self.replica_overlap();
        let written = if replica {
            self.finish_replica(primary).await
        } else {
            let sink = self.proxy.shadow().swap(None);
            // Let the writer finish what is queued (bounded), so the old side is left as
            // complete as it can be.
            if let Some(s) = &sink {
                let deadline = Instant::now() + self.settings.timeout;
                while s.pending() > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            sink.as_ref().map_or(0, |s| s.enqueued())
        };
        // Nothing of cutover's stays on the data.
        if let Ok((source, target)) = self.backends() {
            for b in [&source, &target] {
                if let Err(e) = remove_own_keys(b, self.settings.timeout).await {
                    tracing::warn!(error = %e, "cannot remove cutover's keys from the {}", b.describe());
                }
            }
        }
        self.set_phase(Phase::Finished);
        let report = StepReport {
            action: "finish",
            primary: primary.as_str(),
            pause_ms: 0.0,
            held_sessions: 0,
            unblocked: 0,
            offset: None,
            shadow_writes: written,
            forced: false,
        };
        tracing::info!(
            primary = primary.as_str(),
            writes = written,
            "finished: the overlap stopped ({}), cutover's keys removed; the old side is detached",
            if replica {
                "both links"
            } else {
                "shadow writes"
            }
        );
        self.record(report.clone());
        Ok(report)
    }

    fn record(&self, r: StepReport) {
        if let Ok(mut h) = self.history.lock() {
            h.push(r);
        }
    }

    /// The first switch: the sync engine brings the target to the source's offset.
    async fn first_switch(
        &self,
        max_pause: Duration,
        force: bool,
    ) -> Result<StepReport, CutoverError> {
        let (source, target) = self.backends()?;
        let timeout = self.settings.timeout;
        // Control connections opened before the pause.
        let mut src = Conn::open(&source, timeout)
            .await
            .map_err(|e| CutoverError::Refused(format!("the source is not reachable: {e}")))?;
        let mut tgt = Conn::open(&target, timeout)
            .await
            .map_err(|e| CutoverError::Refused(format!("the target is not reachable: {e}")))?;
        match tgt.query(&[b"PING"]).await {
            Ok(Value::Bytes(_)) => {}
            other => {
                return Err(CutoverError::Refused(format!(
                    "the target does not answer PING: {other:?}"
                )));
            }
        }
        let phase = self.sync.phase();
        let streaming = phase == SyncPhase::Streaming;
        if !force {
            if !streaming {
                return Err(CutoverError::Refused(format!(
                    "the sync is {phase}, not streaming yet; not switching (wait for `phase: streaming` in `cutover status`)"
                )));
            }
            let lag = self.sync.lag_bytes();
            if lag > self.settings.max_lag_bytes {
                return Err(CutoverError::Refused(format!(
                    "target lags {} behind; not switching",
                    human_bytes(lag)
                )));
            }
            let writers = foreign_writers(&mut src, &source).await?;
            if !writers.is_empty() {
                return Err(CutoverError::Refused(format!(
                    "other clients write to the source directly (their writes would be lost after the switch): {}; repoint them to the proxy or use --force",
                    writers.join(", ")
                )));
            }
        } else if !streaming {
            return Err(CutoverError::Refused(format!(
                "the sync is {phase}; even --force cannot switch before the snapshot is applied"
            )));
        }

        let gate = self.proxy.gate();
        let started = Instant::now();
        let deadline = started + max_pause;
        // Every step that talks to a server while commands are held ends by the deadline.
        src.set_deadline(Some(deadline));
        gate.pause();
        let abort = |waiting: String| {
            self.sync.cancel_stop();
            gate.resume();
            metrics::counter!("cutover_barrier_aborts_total").increment(1);
            CutoverError::Timeout {
                elapsed_ms: started.elapsed().as_millis() as u64,
                waiting,
                side: "source",
            }
        };
        if !wait_until(deadline, || gate.busy() == 0).await {
            return Err(abort(format!(
                "{} sessions still had commands in flight",
                gate.busy()
            )));
        }
        let offset = match source_offset(&mut src).await {
            Ok(o) => o,
            Err(e) => return Err(abort(format!("cannot read the source's offset: {e}"))),
        };
        self.sync.request_stop_at(offset);
        let stopped = wait_until(deadline, || self.sync.stopped.load(Ordering::Acquire)).await;
        if !stopped {
            return Err(abort(format!(
                "the target had applied offset {} of {offset}",
                self.sync.applied_offset.load(Ordering::Relaxed)
            )));
        }
        self.sync_detached.store(true, Ordering::Release);
        let unblocked = self
            .flip(Side::Target, &mut src, &source, &target, true)
            .await;
        let held = gate.held();
        gate.resume();
        src.set_deadline(None);
        let pause = started.elapsed();
        self.set_phase(Phase::Switched);
        // Remember on the target that it is the primary now (after the pause): a later
        // `cutover run` refuses to sync into it again.
        if let Err(e) = mark_switched(&mut tgt, offset).await {
            tracing::error!(error = %e, "cannot mark the target as switched ({}); do not restart `cutover run` with this config", String::from_utf8_lossy(SWITCHED_KEY));
        }
        let report = StepReport {
            action: "switch",
            primary: "target",
            pause_ms: pause.as_secs_f64() * 1000.0,
            held_sessions: held,
            unblocked,
            offset: Some(offset),
            shadow_writes: 0,
            forced: force,
        };
        metrics::histogram!("cutover_pause_seconds").record(pause.as_secs_f64());
        tracing::info!(
            pause_ms = report.pause_ms,
            offset,
            unblocked,
            "switched: the target is the primary; writes are shadowed to the source"
        );
        self.record(report.clone());
        Ok(report)
    }

    /// Rollback, or a switch after a rollback: the shadow queue brings the new primary up to
    /// date.
    async fn flip_with_shadow(
        &self,
        to: Side,
        max_pause: Duration,
        force: bool,
    ) -> Result<StepReport, CutoverError> {
        let (source, target) = self.backends()?;
        let sink = self.proxy.shadow().load_full();
        if !force {
            match &sink {
                Some(s) if !s.is_safe() => {
                    return Err(CutoverError::Refused(format!(
                        "the {} missed writes ({}); not moving there (use --force to move anyway)",
                        to.as_str(),
                        s.reason().unwrap_or_default()
                    )));
                }
                None => {
                    return Err(CutoverError::Refused(format!(
                        "the {} is not kept in step; not moving there",
                        to.as_str()
                    )));
                }
                _ => {}
            }
        }
        let (old, new) = match to {
            Side::Source => (&target, &source),
            Side::Target => (&source, &target),
        };
        let mut old_conn = Conn::open(old, self.settings.timeout).await.map_err(|e| {
            CutoverError::Refused(format!("the {} is not reachable: {e}", old.describe()))
        })?;
        let mut new_conn = Conn::open(new, self.settings.timeout).await.map_err(|e| {
            CutoverError::Refused(format!("the {} is not reachable: {e}", new.describe()))
        })?;
        if !matches!(new_conn.query(&[b"PING"]).await, Ok(Value::Bytes(_))) {
            return Err(CutoverError::Refused(format!(
                "the {} does not answer PING",
                new.describe()
            )));
        }
        let gate = self.proxy.gate();
        let started = Instant::now();
        let deadline = started + max_pause;
        old_conn.set_deadline(Some(deadline));
        gate.pause();
        let from = if to == Side::Source {
            "target"
        } else {
            "source"
        };
        let abort = |waiting: String| {
            gate.resume();
            metrics::counter!("cutover_barrier_aborts_total").increment(1);
            CutoverError::Timeout {
                elapsed_ms: started.elapsed().as_millis() as u64,
                waiting,
                side: from,
            }
        };
        if !wait_until(deadline, || gate.busy() == 0).await {
            return Err(abort(format!(
                "{} sessions still had commands in flight",
                gate.busy()
            )));
        }
        let drained = wait_until(deadline, || sink.as_ref().is_none_or(|s| s.pending() == 0)).await;
        if !drained {
            return Err(abort(format!(
                "{} shadow writes were not yet on the {}",
                sink.as_ref().map_or(0, |s| s.pending()),
                to.as_str()
            )));
        }
        let written = sink.as_ref().map_or(0, |s| s.enqueued());
        let unblocked = self.flip(to, &mut old_conn, old, new, true).await;
        let held = gate.held();
        gate.resume();
        let pause = started.elapsed();
        let (action, phase) = match to {
            Side::Source => ("rollback", Phase::RolledBack),
            Side::Target => ("switch", Phase::Switched),
        };
        self.set_phase(phase);
        let report = StepReport {
            action,
            primary: to.as_str(),
            pause_ms: pause.as_secs_f64() * 1000.0,
            held_sessions: held,
            unblocked,
            offset: None,
            shadow_writes: written,
            forced: force,
        };
        metrics::histogram!("cutover_pause_seconds").record(pause.as_secs_f64());
        tracing::info!(
            action,
            pause_ms = report.pause_ms,
            unblocked,
            "the {} is the primary; writes are shadowed to the {}",
            to.as_str(),
            from
        );
        self.record(report.clone());
        Ok(report)
    }

    /// Swaps the route to `to`, cancels the proxy's blocking calls on the old side, and (with
    /// `shadow`) starts shadowing into it. Called with the gate paused and nothing in flight.
    async fn flip(
        &self,
        to: Side,
        old_conn: &mut Conn,
        old: &Arc<Backend>,
        new: &Arc<Backend>,
        shadow: bool,
    ) -> usize {
        let current = self.proxy.route().load_full();
        self.proxy.route().store(Arc::new(Route {
            epoch: current.epoch + 1,
            primary: to,
            source: current.source.clone(),
            target: current.target.clone(),
        }));
        metrics::gauge!("cutover_route_epoch").set((current.epoch + 1) as f64);
        metrics::gauge!("cutover_primary_is_target").set(if to == Side::Target {
            1.0
        } else {
            0.0
        });
        let shadowing = if shadow {
            // Shadow writes of the new epoch go to the old side; the previous sink (drained)
            // is dropped, which ends its writer.
            let (sink, rx) = ShadowSink::new(old.side, self.settings.shadow_queue);
            let sink = Arc::new(sink);
            self.proxy.shadow().store(Some(sink.clone()));
            metrics::gauge!("cutover_rollback_safe").set(1.0);
            Some((sink, rx))
        } else {
            None
        };
        // Blocking calls still waiting on the old side: cancel them there (the sessions send
        // them again to the new primary). Before any shadow write can reach the old side and
        // wake them up there.
        let parked = self.proxy.gate().parked();
        let unblocked = if parked == 0 {
            0
        } else {
            cancel_blocked(parked, old_conn, old).await
        };
        if let Some((sink, rx)) = shadowing {
            tokio::spawn(writer::run(
                sink,
                rx,
                old.clone(),
                new.clone(),
                self.settings.timeout,
            ));
        }
        self.proxy.gate().announce();
        unblocked
    }
}

impl Controller {
    /// Why a move back to the old side is not safe now in replica overlap (`None`: safe):
    /// the link keeping the old side in step must be applying, streaming, and lag less than
    /// `max_lag_bytes`.
    fn replica_unsafe_reason(&self, primary: Side) -> Option<String> {
        let links = self.links.as_ref()?;
        if !self.replica_overlap() || self.phase() == Some(Phase::Finished) {
            return None;
        }
        let (applying, _) = links.roles(primary);
        let phase = applying.phase();
        if applying.handoff.is_following() {
            return Some(format!("the {} link is not applying", applying.direction()));
        }
        if phase != SyncPhase::Streaming {
            return Some(format!(
                "the {} link is {phase}{}",
                applying.direction(),
                overlap::last_error_suffix(applying)
            ));
        }
        if applying
            .link_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Some(format!(
                "the {} link lost its connection and is connecting again",
                applying.direction()
            ));
        }
        let lag = applying.lag_bytes();
        if lag > self.settings.max_lag_bytes {
            return Some(format!(
                "the {} link lags {} behind",
                applying.direction(),
                human_bytes(lag)
            ));
        }
        None
    }
}

/// Removes cutover's own keys (`cutover:position`, `cutover:switched`, db 0) from a side.
async fn remove_own_keys(b: &Backend, timeout: Duration) -> Result<(), String> {
    let mut c = Conn::open(b, timeout).await?;
    let work = async {
        if c.db != 0 {
            c.query(&[b"SELECT", b"0"]).await?;
        }
        match c
            .query(&[b"DEL", crate::sync::batch::POSITION_KEY, SWITCHED_KEY])
            .await?
        {
            Value::Error(e) => Err(e),
            _ => Ok(()),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// `SET cutover:switched "<unix ms> <offset>"` in database 0 of the target.
async fn mark_switched(c: &mut Conn, offset: u64) -> Result<(), String> {
    if c.db != 0 {
        c.query(&[b"SELECT", b"0"]).await?;
        c.db = 0;
    }
    let value = format!("{} {offset}", unix_ms());
    match c.query(&[b"SET", SWITCHED_KEY, value.as_bytes()]).await? {
        Value::Error(e) => Err(e),
        _ => Ok(()),
    }
}

/// Polls `done` until it holds or `deadline` passes (a tight loop: this runs while client
/// commands are held, for a few milliseconds).
async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::task::yield_now().await;
    }
}

async fn source_offset(c: &mut Conn) -> Result<u64, String> {
    match c.query(&[b"INFO", b"replication"]).await? {
        Value::Bytes(text) => {
            crate::sync::replica::master_repl_offset(&String::from_utf8_lossy(&text))
                .ok_or_else(|| "INFO replication has no master_repl_offset".to_string())
        }
        other => Err(format!("INFO answered {other:?}")),
    }
}

/// One `CLIENT LIST` line as `field=value` pairs.
fn client_fields(line: &str) -> impl Iterator<Item = (&str, &str)> {
    line.split(' ').filter_map(|kv| kv.split_once('='))
}

async fn client_list(c: &mut Conn) -> Result<String, String> {
    match c.query(&[b"CLIENT", b"LIST"]).await? {
        Value::Bytes(text) => Ok(String::from_utf8_lossy(&text).into_owned()),
        other => Err(format!("CLIENT LIST answered {other:?}")),
    }
}

/// Clients of the source that are not the proxy's, not replicas, and whose last command was
/// a write.
async fn foreign_writers(c: &mut Conn, source: &Backend) -> Result<Vec<String>, CutoverError> {
    let me = match c.query(&[b"CLIENT", b"ID"]).await {
        Ok(Value::Int(id)) => id.to_string(),
        _ => String::new(),
    };
    let list = client_list(c)
        .await
        .map_err(|e| CutoverError::Refused(format!("cannot list the source's clients: {e}")))?;
    let mut out = Vec::new();
    for line in list.lines() {
        let (mut id, mut addr, mut flags, mut cmd, mut name) = ("", "", "", "", "");
        for (k, v) in client_fields(line) {
            match k {
                "id" => id = v,
                "addr" => addr = v,
                "flags" => flags = v,
                "cmd" => cmd = v,
                "name" => name = v,
                _ => {}
            }
        }
        // Ourselves, replicas, a master link, and the sync's own writer connections.
        if id == me
            || flags.contains('S')
            || flags.contains('M')
            || name == crate::sync::target::CLIENT_NAME
        {
            continue;
        }
        if addr.parse().is_ok_and(|a| source.is_own(&a)) {
            continue;
        }
        let name = cmd.split('|').next().unwrap_or("");
        if shadow::is_write(command_id(name.as_bytes())) {
            out.push(format!("{addr} (last command {cmd})"));
        }
    }
    Ok(out)
}

/// Cancels the `parked` blocking calls of the proxy's connections on `old`; a call sent just
/// before the pause may not have reached the server yet, so look again (for 10 ms at most).
async fn cancel_blocked(parked: usize, c: &mut Conn, old: &Backend) -> usize {
    let mut unblocked = 0;
    let deadline = Instant::now() + Duration::from_millis(10);
    loop {
        unblocked += unblock_own(c, old).await;
        if unblocked >= parked || Instant::now() >= deadline {
            break;
        }
        tokio::task::yield_now().await;
    }
    if unblocked < parked {
        tracing::warn!(
            parked,
            unblocked,
            "not every blocking call could be cancelled on the old side"
        );
    }
    unblocked
}

/// `CLIENT UNBLOCK` for every blocked connection of the proxy on `old`.
async fn unblock_own(c: &mut Conn, old: &Backend) -> usize {
    let list = match client_list(c).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the old side's clients to cancel blocking calls");
            return 0;
        }
    };
    let mut n = 0;
    for line in list.lines() {
        let (mut id, mut addr, mut flags) = ("", "", "");
        for (k, v) in client_fields(line) {
            match k {
                "id" => id = v,
                "addr" => addr = v,
                "flags" => flags = v,
                _ => {}
            }
        }
        if flags.contains('b') && addr.parse().is_ok_and(|a| old.is_own(&a)) {
            match c.query(&[b"CLIENT", b"UNBLOCK", id.as_bytes()]).await {
                Ok(Value::Int(1)) => n += 1,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "CLIENT UNBLOCK failed"),
            }
        }
    }
    n
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}
