//! Where a session's next bytes go: the one decision, and the invariant it keeps.
//!
//! A move (`cutover::flip`) stores a new [`crate::route::Route`] with a higher `epoch` while
//! the cutover gate holds every session between commands. From that store on, **no byte of a
//! client command may reach the old primary**: it is the replica now (replica overlap) or the
//! shadow's target (shadow overlap), and a write that lands there is answered `+OK` and lost.
//!
//! So a session reads the route in one place, [`Session::read_route`], once per batch, right
//! after the gate let it in: from then until it is idle again it counts as busy, and the
//! controller flips only when no session is busy, so the epoch it read stays the route's for
//! the whole batch. Every command of the batch is then sent where [`Session::dest`] says:
//!
//! * [`Dest::Shared`] — the backend's shared connection, chosen per batch from the route read
//!   at the gate (`flush_mux_batch`);
//! * [`Dest::Own`] — the session's own connection **for this epoch**: a connection opened for
//!   an older epoch is replaced (its state re-created on the new primary) before anything is
//!   written, whatever the command's path: framed or streamed, alone or in a pipeline, a
//!   blocking call or its re-issue;
//! * [`Dest::Wait`] — not yet: commands on the shared connection must be answered before the
//!   session pins, or the old connection still owes a reply (a blocking call that the move
//!   cancels there and the session re-issues on the new primary: what the client sent after
//!   it waits behind it, as it would have waited on the server).
//!
//! Every own connection remembers the epoch it was opened for (`Upstream::epoch`), and
//! [`Session::backend_out`] — the only way to queue bytes for it — asserts in debug builds
//! that this epoch is the route's. The defect this replaces: a write above the streaming size
//! (256 KiB) set "streaming" before its connection was chosen, and the "not idle" exception
//! for a request being streamed kept the connection of the old epoch.

use super::*;

/// Where the next command goes (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dest {
    Shared,
    Own,
    Wait,
}

impl Session {
    /// The one read of the route for the data path: once per batch, after the gate let the
    /// session in. The primary's `Arc` is cloned only when the epoch changed.
    pub(super) fn read_route(&mut self) {
        let route = self.shared.route.load();
        if route.epoch != self.epoch {
            self.epoch = route.epoch;
            self.primary = Arc::clone(route.primary_backend());
        }
    }

    /// The decision for the next command. `own`: it needs the session's own connection.
    pub(super) fn dest(&mut self, own: bool) -> Dest {
        if !self.pinned {
            if !own {
                // Shared connection: at most MUX_WINDOW commands in flight, so a client that
                // does not read its replies cannot make the proxy buffer an unbounded amount.
                return if self.mux_inflight + self.mux_batch_count as usize >= MUX_WINDOW {
                    Dest::Wait
                } else {
                    Dest::Shared
                };
            }
            if !self.pin() {
                return Dest::Wait;
            }
        }
        if self.up.as_ref().is_some_and(|u| u.epoch != self.epoch) && !self.pending.is_empty() {
            return Dest::Wait;
        }
        Dest::Own
    }

    /// The session's own connection's output buffer: the only way bytes are queued for it.
    /// Debug builds check the invariant: never a connection of an older route epoch.
    pub(super) fn backend_out(&mut self) -> Option<&mut BytesMut> {
        let up = self.up.as_mut()?;
        debug_assert_eq!(
            up.epoch,
            self.shared.route.load().epoch,
            "a write reached a backend connection of an older route epoch"
        );
        Some(&mut up.out)
    }

    /// The own connection belongs to an older epoch and the session is between commands:
    /// what cannot follow it to the new primary is settled before anything is sent there.
    /// `Err`: the connection cannot be moved; the client is told and disconnected.
    pub(super) fn leave_old_connection(&mut self) -> Result<(), String> {
        if self.conn.watching {
            // The watched keys moved to another server: the transaction fails the way Redis
            // fails it when a watched key changed.
            self.watch_broken = true;
            self.conn.watching = false;
        }
        if self.conn.tracking || self.conn.monitoring || self.login_differs(&self.primary) {
            // Client-side caching: the invalidations the client relies on come from the old
            // server's tracking table, which the new primary does not have (and a REDIRECT
            // names a client of the old server). MONITOR watches the old server. A client
            // logged in as another user than the new side's configured one would run as that
            // user on a new connection.
            // Closing is what the client understands: it drops its cache (or monitor), and
            // reconnects and logs in again.
            self.stop_reading = true;
            self.close_after_flush = true;
            return Err(
                "the primary moved; this connection used client-side caching (CLIENT TRACKING), MONITOR or its own AUTH, which cannot follow it: reconnect"
                    .into(),
            );
        }
        Ok(())
    }

    /// Did the client log in (`AUTH`) as another user than the one a new connection to
    /// `backend` logs in as?
    pub(super) fn login_differs(&self, backend: &Backend) -> bool {
        self.conn.own_login.as_ref().is_some_and(|user| {
            let configured = backend.url.username.as_deref().unwrap_or("default");
            user[..] != *configured.as_bytes()
        })
    }
}
