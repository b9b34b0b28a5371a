//! The cutover: moving the clients between source and target in one short pause, losing and
//! doubling nothing, and keeping the way back open.
//!
//! * [`gate`]: how the sessions are held and how the controller knows nothing is in flight;
//! * [`shadow`]: the deterministic form of each acknowledged write, for the old side;
//! * [`writer`]: the task that applies those shadow writes to the old side;
//! * [`order`]: one shadowed write per key in flight at a time;
//! * [`overlap`]: the overlap modes, the two links of a replica overlap and their move;
//! * [`phase`]: where the migration stands and which move is allowed from there;
//! * this module: the [`Controller`] behind the admin commands `SWITCH`, `ROLLBACK`, `FINISH`
//!   (which move runs from which phase), and [`ProxyHandle`], all it needs from the proxy;
//!   `preconditions` (step 1 below), `flip` (steps 2–5: the move), `status` (what
//!   `cutover status` says about it).
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

pub mod clock;
pub mod control;
mod flip;
pub mod gate;
pub mod holders;
pub mod import;
pub mod memory;
pub mod order;
pub mod overlap;
pub mod phase;
mod preconditions;
pub mod scripts;
pub mod shadow;
mod status;
pub mod unknown_scripts;
pub mod writer;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value as Json, json};

use crate::client::Client;
use crate::command::id as command_id;
use crate::route::{Backend, Route, RouteTable, Side};
use crate::sync::batch::SWITCHED_KEY;
use crate::sync::engine::SyncProgress;
use crate::sync::phase::SyncPhase;
use flip::{mark_primary, wait_until};
use overlap::{Links, OverlapMode};
pub use phase::{Move, Phase};
use preconditions::{client_fields, client_list, foreign_writers};
use shadow::{ShadowSink, Value};

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
    /// The scripts the clients loaded through the proxy ([`scripts`]), for the new primary.
    fn scripts(&self) -> &scripts::Scripts;
    /// What each client session would hold a move up with ([`holders`]).
    fn clients(&self) -> &holders::Clients;
    /// The per-key order of shadowed writes ([`order`]), which the shadow writer's repairs
    /// hold keys in.
    fn key_order(&self) -> &Arc<order::KeyOrder>;
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
    /// `[cutover] stalled_client_disconnect_ms`: at a move, a client stalled this long (not
    /// reading its replies, a `MULTI` open, a blocked call with commands behind it) is
    /// disconnected ([`holders`]); `None` (0 in the file): never.
    pub stalled_disconnect: Option<Duration>,
    /// Bounds of the script registry ([`scripts`]).
    pub script_cache_scripts: usize,
    pub script_cache_bytes: usize,
    /// The bound between the two sides' clocks (`[sync] max_clock_skew_ms`, [`clock`]).
    pub max_clock_skew_ms: u64,
    /// Why no switch is possible in this run (`None`: switches are possible): a cluster
    /// target, which the proxy cannot front yet.
    pub switch_refused: Option<String>,
}

impl Default for CutoverSettings {
    fn default() -> Self {
        CutoverSettings {
            max_pause: Duration::from_millis(100),
            max_lag_bytes: 1024 * 1024,
            shadow_queue: 1_000_000,
            timeout: Duration::from_secs(5),
            overlap: OverlapMode::Auto,
            stalled_disconnect: Some(Duration::from_secs(10)),
            script_cache_scripts: scripts::DEFAULT_MAX_SCRIPTS,
            script_cache_bytes: scripts::DEFAULT_MAX_BYTES,
            max_clock_skew_ms: clock::DEFAULT_MAX_SKEW_MS,
            switch_refused: None,
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
    /// The two sides' clocks, measured at start ([`clock`]).
    clock: Mutex<Option<clock::ClockReport>>,
    /// Each side's own `import-mode` and which side is in it now ([`import`]).
    import: Mutex<import::ImportModes>,
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
            clock: Mutex::new(None),
            import: Mutex::new(import::ImportModes::default()),
        }
    }

    /// Measures the two sides' clocks (at start): logged, kept for `status`, and published as
    /// `cutover_clock_skew_ms` / `cutover_clock_skew_exceeded`.
    pub async fn measure_clocks(&self) {
        let Ok((source, target)) = self.backends() else {
            return;
        };
        let r = clock::measure_both(
            &source,
            &target,
            self.settings.max_clock_skew_ms,
            self.settings.timeout,
        )
        .await;
        if let Some(w) = r.warning() {
            tracing::warn!("{w}");
        } else {
            tracing::info!(between_ms = r.between_ms(), errors = ?r.errors, "clock skew between the sides measured");
        }
        metrics::gauge!("cutover_clock_skew_ms").set(r.between_ms().unwrap_or(0.0));
        metrics::gauge!("cutover_clock_skew_exceeded").set(if r.exceeded() { 1.0 } else { 0.0 });
        if let Ok(mut c) = self.clock.lock() {
            *c = Some(r);
        }
    }

    /// The `clock_skew` object of `status` (`null` before it is measured).
    pub fn clock_json(&self) -> Json {
        self.clock
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(clock::ClockReport::to_json))
            .unwrap_or(Json::Null)
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

    /// `cutover switch`: source → target (or back to the target after a rollback).
    pub async fn switch(
        &self,
        max_pause: Option<Duration>,
        force: bool,
    ) -> Result<StepReport, CutoverError> {
        let _one = self.busy.lock().await;
        if let Some(why) = &self.settings.switch_refused {
            return Err(CutoverError::Refused(why.clone()));
        }
        let max_pause = max_pause.unwrap_or(self.settings.max_pause);
        let from = self.phase();
        Phase::after(from, Move::Switch).map_err(|why| CutoverError::Refused(why.into()))?;
        if from.is_none() {
            self.first_switch_target_checks(force).await?;
        }
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
                        if let Err(role) = links.forward.handoff.end_overlap() {
                            return Err(CutoverError::Refused(format!(
                                "the forward link is {role}; not switching (retry in a moment)"
                            )));
                        }
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
            self.finish_replica(primary).await?
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
        // Each side's own import-mode back (Valkey 8.1+, `import`).
        self.restore_import_mode().await;
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
}

/// Removes cutover's own keys (`cutover:position`, `cutover:switched`, db 0) from a side.
async fn remove_own_keys(b: &Backend, timeout: Duration) -> Result<(), String> {
    let mut c = control::connect(b, timeout).await?;
    let work = async {
        c.select(0).await?;
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

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}
