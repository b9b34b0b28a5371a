//! The cutover gate and route flips: what the barrier must wait for, and how a session with
//! state on the old primary (subscriptions, `WATCH`, a blocking call) follows a flip.

use super::*;

impl Session {
    /// Does this session have work the barrier must wait for? A blocking call alone is not
    /// (the controller cancels it on the old side and it is sent again to the new one).
    pub(super) fn in_flight_for_gate(&self) -> bool {
        if self.conn.in_multi || self.streaming_request || self.mux_batch_count > 0 {
            return true;
        }
        if self.up.as_ref().is_some_and(|u| !u.out.is_empty()) {
            // Bytes not yet taken by the socket (a command sent with `CLIENT REPLY OFF` has
            // no reply to wait for): they belong to this epoch's primary.
            return true;
        }
        match self.pending.len() {
            0 => false,
            1 => !self.parked(),
            _ => true,
        }
    }

    /// Only a blocking call is waiting for its reply.
    pub(super) fn parked(&self) -> bool {
        self.pending.len() == 1
            && self
                .pending
                .front()
                .is_some_and(|p| !p.swallow && !p.via_mux && p.reissue.is_some())
    }

    /// Must this session act on a route flip while it has nothing to send?
    pub(super) fn flip_sensitive(&self) -> bool {
        self.up.is_some()
            && (self.conn.subscribed()
                || self.conn.watching
                || self.conn.tracking
                || self.conn.own_login.is_some()
                || self.conn.monitoring
                || self.parked())
    }

    /// The gate resumed or the route flipped: subscribers follow the new primary at once
    /// (messages published meanwhile on the new side would otherwise be missed); a `WATCH`
    /// is marked broken; a client-side cache or a monitor is disconnected; held commands are
    /// retried by the main loop. Acting writes to a backend, so it passes the gate first
    /// like any batch (a move cannot slip in between).
    pub(super) async fn on_gate_change(&mut self) {
        self.gate_rx.borrow_and_update();
        let moved = self
            .up
            .as_ref()
            .is_some_and(|u| u.epoch != self.shared.route.load().epoch);
        if !moved || !self.pending.is_empty() {
            return;
        }
        let gate = &self.shared.gate;
        if !gate.enter(&mut self.busy, false) {
            let in_flight = self.in_flight_for_gate();
            gate.set_busy(&mut self.busy, in_flight);
            gate.set_held(&mut self.gated, true);
            return;
        }
        gate.set_held(&mut self.gated, false);
        self.read_route();
        if !self.conn.subscribed() {
            // WATCH, tracking, MONITOR: settled now; the next command opens the connection.
            self.drop_upstream();
            let _ = self.leave_old_connection();
            return;
        }
        tracing::debug!(peer = %self.peer, "route flipped: subscriptions move to the new primary");
        if let Err(e) = self.ensure_upstream().await {
            tracing::warn!(peer = %self.peer, error = %e, "cannot move the subscriptions to the new primary; closing the client");
            self.stop_reading = true;
            self.close_after_flush = true;
        }
    }

    /// A blocking call answered with a nil after the route flipped was cancelled by the
    /// cutover (`CLIENT UNBLOCK` on the old side): send it again to the new primary with the
    /// rest of its timeout instead of answering the client. An element that arrived in the
    /// race is a real reply and reaches the client as usual.
    pub(super) fn cancelled_by_flip(&mut self, bytes: &[u8]) -> bool {
        let Some(head) = self.pending.front() else {
            return false;
        };
        let Some(blocking) = &head.reissue else {
            return false;
        };
        let nil = matches!(bytes, b"*-1\r\n" | b"$-1\r\n" | b"_\r\n");
        let moved = self
            .up
            .as_ref()
            .is_some_and(|u| u.epoch != self.shared.route.load().epoch);
        if !nil || !moved {
            return false;
        }
        let args: Vec<&[u8]> = blocking.args.iter().map(|a| &a[..]).collect();
        let Some(Some(again)) = command::reissue_blocking(&args, head.started.elapsed()) else {
            return false;
        };
        let mut wire = Vec::new();
        encode_command(&again, &mut wire);
        let head = self.pending.pop_front().expect("front exists");
        tracing::debug!(peer = %self.peer, "blocking call cancelled by the flip; sending it to the new primary");
        self.reissue = Some((head.cmd, wire));
        true
    }
}
