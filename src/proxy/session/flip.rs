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

    /// Tells the cutover what this session would hold a move up with (only while busy, and
    /// on the edges: a few relaxed stores, no clock read but the batch's).
    pub(super) fn publish_info(&mut self, in_flight: bool) {
        let clients = &self.shared.clients;
        if in_flight != self.info_busy {
            self.info_busy = in_flight;
            self.info
                .set_busy(in_flight, clients.ms(self.batch_started));
        }
        if self.conn.in_multi != self.info_multi {
            self.info_multi = self.conn.in_multi;
            self.info
                .set_multi(self.info_multi.then(|| clients.ms(self.batch_started)));
        }
        if in_flight {
            let blocked = self
                .pending
                .front()
                .is_some_and(|p| !p.swallow && p.reissue.is_some());
            self.info
                .set_pending(self.pending.len(), self.client_out.len(), blocked);
        }
    }

    /// A move disconnects this client (`cutover::holders`): nothing more of it is sent, and
    /// nothing more is written to it; `true` once the session may end. Before, every write
    /// it already sent that the server may still execute is waited for (its reply dropped),
    /// so that the move, which goes on once this session stops counting as busy, reads the
    /// old primary's offset after everything this client sent there ran: the gate's
    /// guarantee ("every command dispatched was answered") holds for it too. Nothing is
    /// waited for when nothing can run any more once the connection closes: an open `MULTI`
    /// (the server discards it), a command streamed only in part, or commands queued behind a
    /// blocking call (the server runs a client's commands in order).
    pub(super) fn leave_kicked(&mut self) -> bool {
        self.stop_reading = true;
        self.client_in.clear();
        self.client_out.clear();
        self.held = None;
        self.reissue = None;
        // Reads cannot change what the move hands over, and the proxy's own replies are
        // not the server's: neither is waited for (a client that does not read its 50
        // pipelined GETs goes at once). Unknown (module) commands count as writes.
        let may_write = |p: &Pending| {
            !matches!(p.expect, Expect::Local { .. })
                && (shadow::is_write(p.cmd) || p.cmd >= command::KNOWN_COMMANDS.len())
        };
        !self.pending.iter().any(may_write)
            || self.conn.in_multi
            || self.streaming_request
            || self
                .pending
                .front()
                .is_some_and(|p| p.reissue.is_some() && !p.via_mux)
            || (self.up.is_none() && self.mux_rx.is_none())
    }
}
