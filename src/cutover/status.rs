//! What `cutover status` says about the cutover: the phase, whether a move back is safe
//! (`rollback_safe`, and why not), the overlap and its links, the held sessions and the
//! history of moves. In a shadow overlap a move back is safe while the shadow queue has lost
//! nothing; in a replica overlap while the link keeping the old side in step applies, streams
//! and lags less than `max_lag_bytes` ([`Controller::replica_unsafe_reason`]).

use super::*;

impl Controller {
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
            // Why no switch is possible in this run (a cluster target), else null.
            "switch_refused": self.settings.switch_refused,
            "overlap": overlap,
            "overlap_cost": overlap_cost,
            "links": links,
            "rollback_safe": rollback_safe,
            "rollback_unsafe_reason": unsafe_reason,
            "shadow_queue": sink.as_ref().map_or(0, |s| s.pending()),
            "shadow_side": sink.as_ref().map(|s| s.side.as_str()),
            "shadow_writes": sink.as_ref().map_or(0, |s| s.enqueued()),
            // Writes the old side answered as if their key were gone (it expired or evicted
            // it on its own), and the first of those keys (`db:key`).
            "shadow_keys_lost": sink.as_ref().map_or(0, |s| s.lost()),
            // Of those keys, the ones copied back from the primary (issue 20); the names
            // are the keys whose copy failed (they make the rollback unsafe).
            "shadow_keys_repaired": sink.as_ref().map_or(0, |s| s.repaired_count()),
            "shadow_keys_lost_names": sink.as_ref().map(|s| s.lost_keys()).unwrap_or_default(),
            "held_sessions": self.proxy.gate().held(),
            // Sessions that would hold a move now (stalled longer than the pause limit), and
            // what the move would do with each ([`holders`]).
            "would_hold_move": holders::holders_json(
                &self.proxy.clients().holders(self.settings.max_pause),
                self.settings.stalled_disconnect,
            ),
            "stalled_client_disconnect_ms": self.settings.stalled_disconnect.map(|d| d.as_millis() as u64),
            "clock_skew": self.clock_json(),
            "import_mode": self.import_json(),
            "last": history.last(),
            "history": history,
        })
    }

    /// Why a move back to the old side is not safe now in replica overlap (`None`: safe):
    /// the link keeping the old side in step must be applying, streaming, and lag less than
    /// `max_lag_bytes`.
    pub(super) fn replica_unsafe_reason(&self, primary: Side) -> Option<String> {
        let links = self.links.as_ref()?;
        if !self.replica_overlap() || self.phase() == Some(Phase::Finished) {
            return None;
        }
        if let Some(why) = links.foreign_reason() {
            return Some(why);
        }
        let (applying, _) = links.roles(primary);
        // The old side lacks a write the link could not apply there (`sync::refusals`).
        if let Some(why) = applying.refusals.describe() {
            return Some(format!(
                "the {} link: {why}; the old side lacks it",
                applying.direction()
            ));
        }
        if let Some(why) = applying.refusals.waiting() {
            return Some(format!(
                "the old side refuses the {} link's writes for now ({why}); retried in order",
                applying.direction()
            ));
        }
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
