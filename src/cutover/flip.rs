//! The move itself — steps 2 to 5 of the barrier (see the module above): pause, catch up,
//! flip, release; aborted, with nothing changed, past `max_pause`.
//!
//! * [`Controller::first_switch`]: the sync engine brings the target to the source's
//!   `master_repl_offset` (read while every client command is held) and stops there; the
//!   target is then marked as switched (`cutover:switched`, written after the flip and before
//!   the release; every later move rewrites it with the side that is the primary), so a later
//!   `cutover run` refuses to sync into it again and says which side the clients are on.
//! * [`Controller::flip_with_shadow`]: a rollback, or a switch after it, in a shadow overlap:
//!   the shadow queue into the new primary must be empty before the flip.
//! * [`Controller::flip`]: the route swap (a new epoch), the `CLIENT UNBLOCK` of the proxy's
//!   blocked calls on the old side, and the start of shadowing towards it.
//!
//! A replica overlap moves with `overlap::replica_move` instead (the links hand the applying
//! role over), and reuses [`Controller::flip`].

use super::*;

impl Controller {
    /// The first switch: the sync engine brings the target to the source's offset.
    pub(super) async fn first_switch(
        &self,
        max_pause: Duration,
        force: bool,
    ) -> Result<StepReport, CutoverError> {
        let (source, target) = self.backends()?;
        let timeout = self.settings.timeout;
        // Control connections opened before the pause.
        let mut src = control::connect(&source, timeout)
            .await
            .map_err(|e| CutoverError::Refused(format!("the source is not reachable: {e}")))?;
        let mut tgt = control::connect(&target, timeout)
            .await
            .map_err(|e| CutoverError::Refused(format!("the target is not reachable: {e}")))?;
        self.first_switch_preconditions(&mut src, &mut tgt, &source, force)
            .await?;
        let scripts = self.scripts_before_pause(&mut src, &mut tgt).await?;

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
        if let Err(why) = self.wait_for_sessions(started, deadline, force).await {
            return Err(abort(why));
        }
        let offset = match source_offset(&mut src).await {
            Ok(o) => o,
            Err(e) => return Err(abort(format!("cannot read the source's offset: {e}"))),
        };
        if let Err(role) = self.sync.request_stop_at(offset) {
            return Err(abort(format!("the sync is {role}, not applying")));
        }
        let stopped = wait_until(deadline, || self.sync.handoff.is_solo_stopped()).await;
        if !stopped {
            return Err(abort(format!(
                "the target had applied offset {} of {offset}",
                self.sync.applied_offset.load(Ordering::Relaxed)
            )));
        }
        if let Err(e) = self.scripts_in_pause(&mut tgt, scripts, deadline).await {
            return Err(abort(e));
        }
        // The target expires keys again before any client command is released
        // (`import`; the source stays out of it: shadow writes are an ordinary client's).
        if let Err(e) = self
            .move_import_mode(Side::Target, &mut tgt, &mut src, false)
            .await
        {
            return Err(abort(e));
        }
        self.sync_detached.store(true, Ordering::Release);
        let unblocked = self
            .flip(Side::Target, &mut src, &source, &target, true)
            .await;
        // Remember on the target that it is the primary now, before any client command is
        // released to it: a `cutover run` killed after the release and started again would
        // otherwise not know, and send the clients back to the source.
        mark_primary(&mut tgt, offset, Side::Target).await;
        let held = gate.held();
        gate.resume();
        src.set_deadline(None);
        let pause = started.elapsed();
        self.set_phase(Phase::Switched);
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
    pub(super) async fn flip_with_shadow(
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
        let mut old_conn = control::connect(old, self.settings.timeout)
            .await
            .map_err(|e| {
                CutoverError::Refused(format!("the {} is not reachable: {e}", old.describe()))
            })?;
        let mut new_conn = control::connect(new, self.settings.timeout)
            .await
            .map_err(|e| {
                CutoverError::Refused(format!("the {} is not reachable: {e}", new.describe()))
            })?;
        if !matches!(new_conn.query(&[b"PING"]).await, Ok(Value::Bytes(_))) {
            return Err(CutoverError::Refused(format!(
                "the {} does not answer PING",
                new.describe()
            )));
        }
        let scripts = self
            .scripts_before_pause(&mut old_conn, &mut new_conn)
            .await?;
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
        if let Err(why) = self.wait_for_sessions(started, deadline, force).await {
            return Err(abort(why));
        }
        let drained = wait_until(deadline, || sink.as_ref().is_none_or(|s| s.pending() == 0)).await;
        if !drained {
            return Err(abort(format!(
                "{} shadow writes were not yet on the {}",
                sink.as_ref().map_or(0, |s| s.pending()),
                to.as_str()
            )));
        }
        // A key the old side lost and whose copy failed while the queue drained.
        if !force && let Some(s) = sink.as_ref().filter(|s| !s.is_safe()) {
            gate.resume();
            return Err(CutoverError::Refused(format!(
                "the {} missed writes ({}); not moving there (use --force to move anyway)",
                to.as_str(),
                s.reason().unwrap_or_default()
            )));
        }
        if let Err(e) = self
            .scripts_in_pause(&mut new_conn, scripts, deadline)
            .await
        {
            return Err(abort(e));
        }
        let written = sink.as_ref().map_or(0, |s| s.enqueued());
        let unblocked = self.flip(to, &mut old_conn, old, new, true).await;
        // (Which side is the primary now, on the target, before the release: see
        // `mark_primary`.)
        let target_conn = if to == Side::Target {
            &mut new_conn
        } else {
            &mut old_conn
        };
        mark_primary(target_conn, 0, to).await;
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
    pub(super) async fn flip(
        &self,
        to: Side,
        old_conn: &mut Client,
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
            cancel_blocked(parked, old_conn, old, self.settings.max_pause).await
        };
        if let Some((sink, rx)) = shadowing {
            tokio::spawn(writer::run(
                sink,
                rx,
                old.clone(),
                new.clone(),
                self.proxy.key_order().clone(),
                self.settings.timeout,
            ));
        }
        self.proxy.gate().announce();
        unblocked
    }
}

/// Records on the target which side is the primary after a move (inside the barrier, after
/// the flip, before any client command is released), logging a failure: a later `cutover
/// run` refuses to start while the key is there, and says which side to point the
/// applications at (`runtime`).
pub(super) async fn mark_primary(c: &mut Client, offset: u64, primary: Side) {
    // The move is committed (the route flipped): the record is worth a round trip past the
    // pause limit, so the connection's deadline no longer applies (its own timeout does).
    c.set_deadline(None);
    if let Err(e) = mark_switched(c, offset, primary).await {
        tracing::error!(error = %e, "cannot record on the target that the {} is the primary ({}); do not restart `cutover run` with this config", primary.as_str(), String::from_utf8_lossy(SWITCHED_KEY));
    }
}

/// `SET cutover:switched "<unix ms> <offset> <primary>"` in database 0 of the target (the
/// primary is `target` after a switch, `source` after a rollback; a value of two fields, from
/// an older version, means `target`).
async fn mark_switched(c: &mut Client, offset: u64, primary: Side) -> Result<(), String> {
    c.select(0).await?;
    let value = format!("{} {offset} {}", unix_ms(), primary.as_str());
    match c.query(&[b"SET", SWITCHED_KEY, value.as_bytes()]).await? {
        Value::Error(e) => Err(e),
        _ => Ok(()),
    }
}

/// Polls `done` until it holds or `deadline` passes (a tight loop: this runs while client
/// commands are held, for a few milliseconds).
pub(super) async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
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

pub(super) async fn source_offset(c: &mut Client) -> Result<u64, String> {
    c.info("replication")
        .await?
        .master_repl_offset()
        .ok_or_else(|| "INFO replication has no master_repl_offset".to_string())
}

/// Cancels the `parked` blocking calls of the proxy's connections on `old`; a call sent just
/// before the pause may not have reached the server yet (on a loaded machine, tens of
/// milliseconds), so look again, every millisecond, for up to `within` (the pause limit: a
/// call left blocked there would be woken by the following link's copy of a push and pop on
/// the old side what the primary still holds).
pub(super) async fn cancel_blocked(
    parked: usize,
    c: &mut Client,
    old: &Backend,
    within: Duration,
) -> usize {
    let mut unblocked = 0;
    let deadline = Instant::now() + within;
    loop {
        unblocked += unblock_own(c, old).await;
        if unblocked >= parked || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
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
pub(super) async fn unblock_own(c: &mut Client, old: &Backend) -> usize {
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
