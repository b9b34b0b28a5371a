//! One client connection and the backend connection that serves it.
//!
//! Each client gets its own backend connection, so everything Redis keeps per connection
//! (selected db, RESP version, `MULTI`, `WATCH`, subscriptions, a blocked `BLPOP`) behaves
//! exactly as it would directly. The session additionally *remembers* that state in
//! [`ConnState`], learned from the commands and their replies, so it can rebuild it on a new
//! backend connection: after a reconnect today, after a route flip later.
//!
//! The loop is a single task that never blocks on a write: it reads whichever side is
//! readable, frames what it read ([`RequestParser`], [`ReplyParser`]), appends to the other
//! side's output buffer and writes as much as the socket takes. Back-pressure is explicit: a
//! side is not read while the buffer it feeds is over the limit. A client that writes its
//! whole pipeline before reading cannot deadlock the proxy: requests keep flowing to the
//! server while replies wait in the kernel and in the server's own output buffer, exactly as
//! they would without the proxy.
//!
//! Replies are paired with commands through the `pending` queue (one entry per command that
//! will be answered). Replies the proxy makes itself (`-NOAUTH`, `AUTH` with the proxy's
//! password, `QUIT`) are queued in the same order, so the client sees its replies in order.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::ProxyShared;
use super::command::{self, Kind, ReplyMode, SubKind};
use super::io::read_now;
use super::mux::{MuxReply, MuxRequest};
use super::upstream;
use crate::config::constant_time_eq;
use crate::cutover::order::{self, KeyGuard, OrderKeys};
use crate::cutover::shadow::{self, ShadowItem, Value};
use crate::resp::request::{self, CAPTURED_ARGS, encode_command};
use crate::resp::{ReplyInfo, ReplyParser, Request, RequestParser, push_error};
use crate::route::{Backend, ConnGuard};
use crate::telemetry;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// An incomplete frame bigger than this is streamed on instead of being held whole.
const STREAM_THRESHOLD: usize = 256 * 1024;
/// Buffers emptier than this but with more capacity are given back to the allocator.
const TRIM_CAPACITY: usize = 64 * 1024;
/// Above this many connected clients, idle sessions drop their empty buffers ([`Session::trim`]).
const IDLE_TRIM_CLIENTS: usize = 256;
/// Commands a session may have waiting for replies before it stops reading its client.
const MAX_PENDING: usize = 64 * 1024;
/// Commands a session may have in flight on the shared connection.
const MUX_WINDOW: usize = 32;
/// A reply this big on the shared connection moves the session to its own connection, where
/// the server holds what the client has not read yet (TCP back-pressure) instead of the proxy.
const BIG_REPLY: usize = 64 * 1024;

/// Per-connection state that Redis keeps and the proxy must be able to recreate.
#[derive(Debug, Clone)]
pub struct ConnState {
    pub db: u32,
    pub name: Option<Bytes>,
    pub resp: u8,
    pub authenticated: bool,
    /// Inside `MULTI` (tracked when sending: later commands are queued by the server).
    pub in_multi: bool,
    pub watching: bool,
    /// `CLIENT TRACKING ON` was sent (client-side caching).
    pub tracking: bool,
    /// `MONITOR` succeeded: from now on the session is a plain byte pipe in both directions.
    pub monitoring: bool,
    /// Channels, patterns and shard channels, by [`SubKind::index`].
    pub subs: [BTreeSet<Bytes>; 3],
    reply_off: bool,
    skip_next: bool,
    /// State changes queued inside `MULTI`, applied when `EXEC` succeeds.
    multi_effects: Vec<Effect>,
}

impl ConnState {
    fn fresh(db: u32, authenticated: bool) -> Self {
        ConnState {
            db,
            name: None,
            resp: 2,
            authenticated,
            in_multi: false,
            watching: false,
            tracking: false,
            monitoring: false,
            subs: Default::default(),
            reply_off: false,
            skip_next: false,
            multi_effects: Vec::new(),
        }
    }

    pub fn subscribed(&self) -> bool {
        self.subs.iter().any(|s| !s.is_empty())
    }
}

/// How many replies a forwarded command will get.
#[derive(Debug)]
enum Expect {
    Replies(u32),
    /// `UNSUBSCRIBE` without arguments: one reply per current subscription of the kind (at
    /// least one), counted when its first reply arrives.
    AllSubs(SubKind),
    /// A reply the proxy makes itself; `close` ends the connection after it.
    Local {
        // Boxed: every `Pending` is as big as its largest variant, and local replies are rare.
        reply: Box<Bytes>,
        close: bool,
    },
}

#[derive(Debug, Clone)]
enum Effect {
    None,
    Select(u32),
    SetName(Option<Box<Bytes>>),
    Hello(u8),
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    Reset,
    Monitor,
}

#[derive(Debug)]
struct Pending {
    // Kept small (one is queued and dropped per command): rare payloads are boxed.
    cmd: usize,
    started: Instant,
    expect: Expect,
    effect: Effect,
    /// An internal command (state restore): its reply is not the client's.
    swallow: bool,
    /// Sent on the backend's shared connection.
    via_mux: bool,
    /// A blocking call: its arguments, to send it again on the new primary when a flip
    /// cancels it on the old one.
    reissue: Option<Box<Blocking>>,
    /// Answer the client with a nil instead of the server's reply (`EXEC` after a flip broke
    /// the client's `WATCH`: the transaction was discarded).
    nil_reply: bool,
    /// Mask the backend's passwords in the reply (`CONFIG GET`, or an `EXEC` that ran one,
    /// through a proxy with its own password).
    mask_secrets: bool,
    /// A write to copy to the old side once its reply is known.
    shadow: Option<Box<ShadowPlan>>,
}

impl Pending {
    /// An ordinary command sent on the shared connection: one reply, no side effects.
    fn via_mux(cmd: usize, started: Instant, shadow: Option<Box<ShadowPlan>>) -> Self {
        Pending {
            cmd,
            started,
            expect: Expect::Replies(1),
            effect: Effect::None,
            swallow: false,
            via_mux: true,
            reissue: None,
            nil_reply: false,
            mask_secrets: false,
            shadow,
        }
    }
}

/// A blocking call in flight, as sent.
#[derive(Debug)]
struct Blocking {
    args: Vec<Vec<u8>>,
}

/// The backend side of a session.
struct Upstream {
    stream: TcpStream,
    _guard: ConnGuard,
    backend: Arc<Backend>,
    inbuf: BytesMut,
    out: BytesMut,
    reply: ReplyParser,
}

enum Event {
    ClientReadable,
    BackendReadable,
    Writable,
    Mux(Option<MuxReply>),
    /// The cutover gate resumed or the route flipped.
    Gate,
    /// A write gave its keys back (a held command may take them now).
    Keys,
    Error(io::Error),
    /// Nothing could wake the session any more (no branch of its wait is enabled).
    Stalled,
}

pub struct Session {
    shared: Arc<ProxyShared>,
    client: TcpStream,
    peer: SocketAddr,
    up: Option<Upstream>,
    /// Route epoch the upstream belongs to.
    epoch: u64,
    client_in: BytesMut,
    client_out: BytesMut,
    req: RequestParser,
    pending: VecDeque<Pending>,
    conn: ConnState,
    /// Stop reading the client and drop what it sent after (QUIT, a protocol error).
    stop_reading: bool,
    /// The client closed its side; what it sent before is still served.
    client_eof: bool,
    /// Close once everything queued for the client is written.
    close_after_flush: bool,
    /// The current request is being streamed to the upstream piecewise.
    streaming_request: bool,
    /// The rest of the current (streamed) request is dropped: its upstream died.
    discard_request: bool,
    /// The session has its own backend connection (`up`); until then its commands go to the
    /// backend's shared connection (see `mux.rs`). Once pinned, a session stays pinned.
    pinned: bool,
    /// Commands for the shared connection, collected while framing one read.
    mux_batch: BytesMut,
    mux_batch_count: u32,
    mux_tx: Option<UnboundedSender<MuxReply>>,
    mux_rx: Option<UnboundedReceiver<MuxReply>>,
    /// A command that needs the session's own connection, held until every command before it
    /// (on the shared connection) is answered, so order is kept.
    held: Option<Request>,
    /// When the commands now being framed were read (one clock read per batch).
    batch_started: Instant,
    /// Commands sent to the shared connection and not yet answered.
    mux_inflight: usize,
    /// Big replies seen: move to an own connection at the next opportunity.
    prefer_own_connection: bool,
    /// Command id and kind of the command about to be dispatched, when already known.
    classified: Option<(usize, Kind)>,
    /// Counted as busy at the cutover gate (commands in flight or a `MULTI` open).
    busy: bool,
    /// Waiting at the gate while the cutover barrier holds new commands.
    gated: bool,
    /// Counted as parked at the gate (only a blocking call in flight).
    parked_flag: bool,
    /// Resumes and route flips (see [`crate::cutover::gate`]).
    gate_rx: tokio::sync::watch::Receiver<u64>,
    /// The route flipped while this client had a `WATCH` on the old side: its next `EXEC`
    /// fails the way Redis fails it when a watched key changed (a nil reply).
    watch_broken: bool,
    /// A blocking call cancelled on the old side by a flip, to be sent again to the new
    /// primary with what is left of its timeout.
    reissue: Option<(usize, Vec<u8>)>,
    /// The command being sent is that `EXEC` (sent as `DISCARD`, answered with a nil).
    exec_nil: bool,
    /// The command being sent gets its reply's secrets masked ([`Pending::mask_secrets`]).
    mask_next: bool,
    /// The open transaction queued a `CONFIG GET` whose secrets must be masked in `EXEC`'s reply.
    txn_masks: bool,
    /// The write being dispatched, captured for the shadow (see `cutover::shadow`).
    next_shadow: Option<Box<ShadowPlan>>,
    /// Writes queued inside the open `MULTI`, shadowed with the replies in `EXEC`'s array.
    txn_shadow: Vec<ShadowPlan>,
    /// The keys the write being dispatched took ([`crate::cutover::order`]); they go with its
    /// shadow plan and are given back once its shadow is queued.
    next_guard: Option<KeyGuard>,
    /// The keys the `EXEC` in flight took (every key its transaction writes).
    txn_guard: Option<KeyGuard>,
    /// The held command waits for keys another write has in flight.
    key_wait: bool,
    /// Replies from the shared connection are framed one by one (to pair writes with their
    /// replies for the shadow). Switched on while nothing is in flight there.
    mux_framing: bool,
    mux_frames: BytesMut,
    mux_frame_parser: ReplyParser,
    /// The command name [`Session::take_plain_run`] looked up last.
    last_name: LastName,
}

/// The last command name looked up on the hot path and whether it is an ordinary command
/// for the shared connection. Pipelines repeat one command, so all but the first skip the
/// table lookup.
#[derive(Default)]
struct LastName {
    bytes: [u8; 16],
    len: usize,
    cmd: usize,
    plain: bool,
}

/// A write as the client sent it, kept until its reply tells what to shadow.
#[derive(Debug)]
struct ShadowPlan {
    /// The command as the client sent it (one copy).
    wire: Vec<u8>,
    db: u32,
    /// Its shadow form depends on the reply (see `shadow::needs_reply`); otherwise it is sent
    /// to the old side as it is, unless it failed.
    rewrite: bool,
    /// The keys it holds in the per-key order (given back when the plan is dropped, after
    /// its shadow was queued).
    _guard: Option<KeyGuard>,
}

impl ShadowPlan {
    fn args(&self) -> Vec<Vec<u8>> {
        crate::sync::engine::split_args(&self.wire)
            .map(|a| a.iter().map(|x| x.to_vec()).collect())
            .unwrap_or_default()
    }
}

impl Session {
    pub fn new(shared: Arc<ProxyShared>, client: TcpStream, peer: SocketAddr) -> Self {
        let route = shared.route.load();
        let db = route.primary_backend().url.db;
        let authenticated = shared.settings.auth.password.is_none();
        let gate_rx = shared.gate.subscribe();
        Session {
            req: RequestParser::default(),
            epoch: route.epoch,
            shared,
            client,
            peer,
            up: None,
            client_in: BytesMut::new(),
            client_out: BytesMut::new(),
            pending: VecDeque::new(),
            conn: ConnState::fresh(db, authenticated),
            stop_reading: false,
            client_eof: false,
            close_after_flush: false,
            streaming_request: false,
            discard_request: false,
            pinned: false,
            mux_batch: BytesMut::new(),
            mux_batch_count: 0,
            mux_tx: None,
            mux_rx: None,
            held: None,
            batch_started: Instant::now(),
            mux_inflight: 0,
            prefer_own_connection: false,
            classified: None,
            busy: false,
            gated: false,
            parked_flag: false,
            gate_rx,
            watch_broken: false,
            reissue: None,
            exec_nil: false,
            mask_next: false,
            txn_masks: false,
            next_shadow: None,
            txn_shadow: Vec::new(),
            next_guard: None,
            txn_guard: None,
            key_wait: false,
            mux_framing: false,
            mux_frames: BytesMut::new(),
            mux_frame_parser: ReplyParser::default(),
            last_name: LastName::default(),
        }
    }

    /// Serves the client until it disconnects (or is disconnected after QUIT / bad input).
    pub async fn run(mut self) {
        let _ = self.client.set_nodelay(true);
        tracing::debug!(peer = %self.peer, "client connected");
        if let Err(e) = self.serve().await {
            tracing::debug!(peer = %self.peer, error = %e, "client connection ended");
        }
        let gate = &self.shared.gate;
        gate.set_busy(&mut self.busy, false);
        gate.set_held(&mut self.gated, false);
        gate.set_parked(&mut self.parked_flag, false);
        self.drop_upstream();
        let shared = self.shared.clone();
        // Everything this session held is freed before the heap is looked at.
        drop(self);
        heap::session_ended(shared);
    }

    async fn serve(&mut self) -> io::Result<()> {
        let limit = self.shared.settings.buffer_limit;
        loop {
            self.process_requests().await;
            self.flush_upstream();
            self.flush_client()?;
            self.trim();
            if self.close_after_flush && self.client_out.is_empty() {
                return Ok(());
            }
            if self.client_eof && self.conn.monitoring {
                // A monitoring client that closed its side: its feed has no end and its replies
                // are not paired with commands, so nothing is left to wait for (Redis frees
                // such a client at once).
                return Ok(());
            }
            // A client that closed its side while the gate held its last commands still
            // gets them run (after the gate opens) and answered.
            if (self.stop_reading || self.client_eof)
                && self.pending.is_empty()
                && self.held.is_none()
                && self.client_out.is_empty()
                && (!self.gated || self.stop_reading)
            {
                return Ok(());
            }
            let in_flight = self.in_flight_for_gate();
            self.shared.gate.set_busy(&mut self.busy, in_flight);
            let parked = self.parked();
            self.shared.gate.set_parked(&mut self.parked_flag, parked);
            let up_out = self.up.as_ref().map_or(0, |u| u.out.len());
            let read_client = !self.stop_reading
                && !self.client_eof
                && self.client_in.len() < limit
                && up_out < limit
                && self.pending.len() < MAX_PENDING;
            let read_backend = self.up.is_some() && self.client_out.len() < limit;
            let write_client = !self.client_out.is_empty();
            let write_backend = up_out > 0;
            let up = self.up.as_ref().map(|u| &u.stream);
            let client = &self.client;
            let read_mux = self.mux_rx.is_some() && self.client_out.len() < limit;
            let watch_gate = self.gated || self.flip_sensitive();
            let mux_rx = self.mux_rx.as_mut();
            let gate_rx = &mut self.gate_rx;
            // A command waiting for keys another write has in flight: try again when some
            // write gives its keys back (or after 1 ms, in case that happened just before).
            let key_order = self.key_wait.then(|| Arc::clone(&self.shared.key_order));
            let event = tokio::select! {
                _ = async {
                    let order = key_order.as_ref().expect("guarded");
                    tokio::select! {
                        _ = order.released() => {}
                        _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                    }
                }, if key_order.is_some() => Event::Keys,
                m = async { mux_rx.expect("guarded").recv().await }, if read_mux => Event::Mux(m),
                _ = gate_rx.changed(), if watch_gate => Event::Gate,
                r = client.readable(), if read_client => r.map_or_else(Event::Error, |_| Event::ClientReadable),
                r = async { up.expect("guarded").readable().await }, if read_backend =>
                    r.map_or_else(Event::Error, |_| Event::BackendReadable),
                r = client.writable(), if write_client => r.map_or_else(Event::Error, |_| Event::Writable),
                r = async { up.expect("guarded").writable().await }, if write_backend =>
                    r.map_or_else(Event::Error, |_| Event::Writable),
                else => Event::Stalled,
            };
            match event {
                Event::ClientReadable => self.read_client()?,
                Event::BackendReadable => self.read_upstream(),
                Event::Writable => {}
                Event::Mux(Some(reply)) => self.on_mux_reply(reply),
                Event::Mux(None) => self.mux_rx = None,
                Event::Gate => self.on_gate_change().await,
                Event::Keys => {}
                Event::Error(e) => return Err(e),
                Event::Stalled => return Err(self.stalled()),
            }
        }
    }

    /// The session can make no progress (a state no event can end): tell the client, best
    /// effort, and end the session so its slot and connections are released.
    fn stalled(&mut self) -> io::Error {
        telemetry::error("stalled");
        tracing::warn!(
            peer = %self.peer,
            buffered = self.client_in.len(),
            pending = self.pending.len(),
            "session cannot make progress; closing the client"
        );
        let mut msg = BytesMut::new();
        push_error(
            &mut msg,
            "ERR cutover: this connection cannot make progress (a request the proxy cannot forward filled its buffer); closing it",
        );
        let _ = self.client.try_write(&msg);
        io::Error::other("session stalled")
    }

    // ----- the cutover gate and route flips -------------------------------------------

    /// Does this session have work the barrier must wait for? A blocking call alone is not
    /// (the controller cancels it on the old side and it is sent again to the new one).
    fn in_flight_for_gate(&self) -> bool {
        if self.conn.in_multi || self.streaming_request || self.mux_batch_count > 0 {
            return true;
        }
        match self.pending.len() {
            0 => false,
            1 => !self.parked(),
            _ => true,
        }
    }

    /// Only a blocking call is waiting for its reply.
    fn parked(&self) -> bool {
        self.pending.len() == 1
            && self
                .pending
                .front()
                .is_some_and(|p| !p.swallow && !p.via_mux && p.reissue.is_some())
    }

    /// Must this session act on a route flip while it has nothing to send?
    fn flip_sensitive(&self) -> bool {
        self.up.is_some() && (self.conn.subscribed() || self.conn.watching || self.parked())
    }

    /// The gate resumed or the route flipped: subscribers follow the new primary at once
    /// (messages published meanwhile on the new side would otherwise be missed); a `WATCH`
    /// is marked broken; held commands are retried by the main loop.
    async fn on_gate_change(&mut self) {
        self.gate_rx.borrow_and_update();
        let epoch = self.shared.route.load().epoch;
        if epoch == self.epoch || self.up.is_none() || !self.pending.is_empty() {
            return;
        }
        if self.conn.watching {
            self.watch_broken = true;
            self.conn.watching = false;
            self.drop_upstream();
        }
        if self.conn.subscribed() {
            tracing::debug!(peer = %self.peer, "route flipped: subscriptions move to the new primary");
            self.drop_upstream();
            if let Err(e) = self.ensure_upstream().await {
                tracing::warn!(peer = %self.peer, error = %e, "cannot move the subscriptions to the new primary; closing the client");
                self.stop_reading = true;
                self.close_after_flush = true;
            }
        }
    }

    // ----- client side -------------------------------------------------------------------

    fn read_client(&mut self) -> io::Result<()> {
        match read_now(&mut self.client, &mut self.client_in, READ_CHUNK)? {
            Some(0) => {
                // The client closed its side: run what it sent and answer it, then close; but
                // never wait for a call that may block forever (Redis drops such a client).
                self.client_eof = true;
                if self.pending.iter().any(|p| command::may_block(p.cmd)) {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if self.streaming_request {
                    // The client left in the middle of a command whose head was already
                    // forwarded: it can never be completed. Like Redis, free the client now
                    // (and with it the backend connection holding the partial command).
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed in the middle of a command",
                    ));
                }
            }
            Some(n) => telemetry::hot().bytes_in.increment(n as u64),
            None => {}
        }
        Ok(())
    }

    fn flush_client(&mut self) -> io::Result<()> {
        while !self.client_out.is_empty() {
            match self.client.try_write(&self.client_out) {
                Ok(n) => {
                    telemetry::hot().bytes_out.increment(n as u64);
                    self.client_out.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Gives back buffer memory: a buffer emptier than [`TRIM_CAPACITY`] with more capacity
    /// always; and, while more than [`IDLE_TRIM_CLIENTS`] clients are connected, every empty
    /// buffer of an idle session (nothing waiting for a reply, nothing buffered), so thousands
    /// of idle connections do not each keep a 16 KiB read reservation. The price is one
    /// allocation per read for such a client at pipeline depth 1.
    fn trim(&mut self) {
        // (Only while many clients are connected: a busy proxy with a few hundred clients
        // keeps its read buffers rather than allocating one per request.)
        let idle = self.pending.is_empty()
            && self.held.is_none()
            && self.mux_batch.is_empty()
            && self
                .shared
                .client_conns
                .load(std::sync::atomic::Ordering::Relaxed)
                > IDLE_TRIM_CLIENTS;
        let keep = |buf: &BytesMut| {
            !buf.is_empty() || buf.capacity() == 0 || (!idle && buf.capacity() <= TRIM_CAPACITY)
        };
        for buf in [
            &mut self.client_in,
            &mut self.client_out,
            &mut self.mux_batch,
        ] {
            if !keep(buf) {
                *buf = BytesMut::new();
            }
        }
        if let Some(up) = &mut self.up {
            for buf in [&mut up.inbuf, &mut up.out] {
                if !keep(buf) {
                    *buf = BytesMut::new();
                }
            }
        }
        if idle && self.pending.capacity() > 64 {
            self.pending = VecDeque::new();
        }
    }

    /// Frames and dispatches every complete command in `client_in`.
    async fn process_requests(&mut self) {
        if let Some((cmd, wire)) = self.reissue.take() {
            self.batch_started = Instant::now();
            // Shadowed like any write once it pops something on the new primary.
            self.next_shadow = None;
            self.capture_shadow(cmd, &wire);
            self.send(cmd, &wire, Expect::Replies(1), Effect::None)
                .await;
        }
        if self.client_in.is_empty() && self.held.is_none() {
            return;
        }
        // The cutover barrier: mark this session busy, then look whether new commands are
        // being held (see `cutover::gate`); a transaction in progress goes on to its EXEC.
        let gate = &self.shared.gate;
        if !gate.enter(&mut self.busy, self.conn.in_multi || self.streaming_request) {
            let in_flight = self.in_flight_for_gate();
            gate.set_busy(&mut self.busy, in_flight);
            gate.set_held(&mut self.gated, true);
            return;
        }
        gate.set_held(&mut self.gated, false);
        if self.conn.monitoring {
            // A monitoring client's commands (QUIT, RESET) go to the server unparsed.
            if let Some(up) = &mut self.up {
                up.out.extend_from_slice(&self.client_in);
            }
            self.client_in.clear();
            return;
        }
        self.batch_started = Instant::now();
        if !self.mux_framing && self.mux_inflight == 0 && self.shared.shadow.load().is_some() {
            // Shadowing: from now on replies from the shared connection are split one by
            // one, which is only possible from a reply boundary (nothing in flight).
            self.mux_framing = true;
        }
        self.process_requests_inner().await;
        self.flush_mux_batch();
    }

    /// Keeps a write's arguments, when writes are being shadowed, to shadow it once its reply
    /// is known (inside `MULTI`: once `EXEC` answers).
    fn capture_shadow(&mut self, cmd: usize, wire: &[u8]) {
        if self.shared.shadow.load().is_none() {
            return;
        }
        let plan = ShadowPlan {
            wire: wire.to_vec(),
            db: self.conn.db,
            rewrite: shadow::needs_reply(cmd),
            _guard: if self.conn.in_multi {
                None
            } else {
                self.next_guard.take()
            },
        };
        if self.conn.in_multi {
            self.txn_shadow.push(plan);
        } else {
            self.next_shadow = Some(Box::new(plan));
        }
    }

    /// A shadowed write was answered: queue its deterministic form for the old side.
    fn emit_shadow(&self, plan: ShadowPlan, reply: &[u8]) {
        let Some(sink) = self.shared.shadow.load_full() else {
            return;
        };
        if !plan.rewrite {
            // The caller checked that the reply is not an error.
            sink.push(ShadowItem {
                db: plan.db,
                action: shadow::Action::Raw(plan.wire),
            });
            return;
        }
        let action = match Value::decode(reply, self.conn.resp) {
            Some(v) => shadow::shadow_form(&plan.args(), &v, crate::cutover::unix_ms()),
            // A script's reply is only compared; one too deep to decode is not.
            None if shadow::is_script(&plan.wire) => shadow::Action::Replay(plan.args(), None),
            None => {
                shadow::Action::Unsupported("a reply too big or unreadable to interpret".into())
            }
        };
        sink.push(ShadowItem {
            db: plan.db,
            action,
        });
    }

    /// `EXEC` answered: the queued writes are shadowed with their replies, as one transaction.
    fn emit_txn_shadow(&mut self, reply: &[u8]) {
        let plans = std::mem::take(&mut self.txn_shadow);
        if plans.is_empty() {
            return;
        }
        let Some(sink) = self.shared.shadow.load_full() else {
            return;
        };
        let replies = match Value::decode(reply, self.conn.resp) {
            Some(Value::Array(replies)) => replies,
            // Aborted (a nil): nothing ran.
            Some(_) => return,
            None => {
                sink.mark_unsafe("a transaction's reply was too big to interpret");
                return;
            }
        };
        let now = crate::cutover::unix_ms();
        let db = plans[0].db;
        let mut batch = Vec::new();
        for (plan, v) in plans.iter().zip(&replies) {
            match shadow::shadow_form(&plan.args(), v, now) {
                shadow::Action::Apply(cmds) if plan.db == db => batch.extend(cmds),
                shadow::Action::Skip => {}
                other => {
                    if !batch.is_empty() {
                        sink.push(ShadowItem {
                            db,
                            action: shadow::Action::Apply(std::mem::take(&mut batch)),
                        });
                    }
                    sink.push(ShadowItem {
                        db: plan.db,
                        action: other,
                    });
                }
            }
        }
        if !batch.is_empty() {
            sink.push(ShadowItem {
                db,
                action: shadow::Action::Apply(batch),
            });
        }
        // The transaction's shadow is queued: its keys are free again.
        self.txn_guard = None;
    }

    async fn process_requests_inner(&mut self) {
        while (!self.client_in.is_empty() || self.held.is_some())
            && (!self.stop_reading || self.streaming_request)
        {
            if self.take_plain_run() {
                continue;
            }
            let req = match self.held.take() {
                Some(req) => req,
                None => match self.parse_request() {
                    Ok(Some(req)) => req,
                    Ok(None) => {
                        self.stream_partial_request().await;
                        return;
                    }
                    Err(e) => {
                        telemetry::error("protocol");
                        tracing::debug!(peer = %self.peer, error = %e, "malformed request");
                        let mut reply = BytesMut::new();
                        push_error(&mut reply, &format!("ERR {e}"));
                        self.client_in.clear();
                        self.local(command::KNOWN_COMMANDS.len(), reply.freeze(), true);
                        return;
                    }
                },
            };
            if !self.pinned && !self.streaming_request {
                let hold = if self.needs_own_connection(&req) {
                    !self.pin()
                } else {
                    // Shared connection: at most MUX_WINDOW commands in flight, so a
                    // client that does not read its replies cannot make the proxy buffer
                    // an unbounded amount of them.
                    self.mux_inflight + self.mux_batch_count as usize >= MUX_WINDOW
                };
                if hold {
                    self.flush_mux_batch();
                    self.held = Some(req);
                    return;
                }
            }
            if self.waits_for_keys(&req) {
                self.flush_mux_batch();
                self.held = Some(req);
                self.key_wait = true;
                return;
            }
            self.key_wait = false;
            if !self.mux_fast_path(&req) {
                self.dispatch(req).await;
            }
            // (A write answered by the proxy itself never took its keys to the server.)
            self.next_guard = None;
        }
    }

    /// While writes are shadowed: takes the keys of a write about to be sent (an `EXEC`:
    /// every key its transaction writes) in the per-key order; `true` when another write to
    /// one of them is in flight, and this one must wait ([`crate::cutover::order`]).
    /// Blocking calls take nothing (they would hold their key while they wait for a push).
    fn waits_for_keys(&mut self, req: &Request) -> bool {
        self.next_guard = None;
        if self.streaming_request || !self.conn.authenticated || self.shared.shadow.load().is_none()
        {
            return false;
        }
        let order = Arc::clone(&self.shared.key_order);
        let keys = {
            let args: Vec<&[u8]> = match req {
                Request::Empty { .. } => return false,
                Request::Inline { args, .. } => args.iter().map(|a| &a[..]).collect(),
                Request::Array { len, .. } => {
                    match crate::sync::engine::split_args(&self.client_in[..*len]) {
                        Ok(a) => a,
                        Err(_) => return false,
                    }
                }
            };
            let Some(name) = args.first() else {
                return false;
            };
            if name.eq_ignore_ascii_case(b"EXEC") {
                if !self.conn.in_multi || self.txn_shadow.is_empty() {
                    return false;
                }
                let mut all = Vec::new();
                let mut every = false;
                for plan in &self.txn_shadow {
                    let plan_args = plan.args();
                    let refs: Vec<&[u8]> = plan_args.iter().map(|a| &a[..]).collect();
                    match order::write_keys(&order, plan.db, &refs) {
                        OrderKeys::All => every = true,
                        OrderKeys::Keys(k) => all.extend(k),
                    }
                }
                all.sort_unstable();
                all.dedup();
                let keys = if every {
                    OrderKeys::All
                } else {
                    OrderKeys::Keys(all)
                };
                return match order.try_acquire(keys, 0) {
                    Some(g) => {
                        self.txn_guard = Some(g);
                        false
                    }
                    None => true,
                };
            }
            let cmd = command::command_id(name);
            if self.conn.in_multi || !shadow::is_write(cmd) || command::may_block(cmd) {
                return false;
            }
            (
                order::write_keys(&order, self.conn.db, &args),
                order::commuting_class(&args),
            )
        };
        let (keys, class) = keys;
        match order.try_acquire(keys, class) {
            Some(g) => {
                self.next_guard = Some(g);
                false
            }
            None => true,
        }
    }

    /// Frames the next command of `client_in`, with Redis' limits for a client that has not
    /// logged in yet (`[proxy] password`).
    fn parse_request(&mut self) -> Result<Option<Request>, crate::resp::ProtocolError> {
        self.req.set_unauthenticated(!self.conn.authenticated);
        self.req.parse(&self.client_in)
    }

    /// The hot path: the run of complete ordinary commands at the front of `client_in` joins
    /// the shared connection's batch in one piece. One pass frames each command and looks at
    /// its name only ([`request::frame_whole`]); the bytes are copied once for the whole run.
    /// Stops at the first command that needs more thought (anything [`Session::dispatch`]
    /// treats specially, a write while writes are shadowed, an incomplete or huge command, the
    /// in-flight window) and leaves it to the general path. `false`: it took nothing.
    fn take_plain_run(&mut self) -> bool {
        if self.pinned
            || self.streaming_request
            || self.held.is_some()
            || self.prefer_own_connection
            || !self.conn.authenticated
            || !self.req.at_start()
        {
            return false;
        }
        let shadowing = self.shared.shadow.load().is_some();
        let room = MUX_WINDOW.saturating_sub(self.mux_inflight + self.mux_batch_count as usize);
        let buf = &self.client_in[..];
        let mut at = 0;
        let mut taken = 0;
        let mut run: Option<(usize, u64)> = None;
        while taken < room {
            let Some((name, len)) = request::frame_whole(&buf[at..], request::DEFAULT_MAX_BULK)
            else {
                break;
            };
            let name = &buf[at + name.start..at + name.end];
            let last = &mut self.last_name;
            if name.len() > last.bytes.len() {
                break;
            }
            // Byte by byte: names are short, and a `memcmp` call costs more than the loop.
            if name.len() != last.len || name.iter().zip(&last.bytes).any(|(a, b)| a != b) {
                let cmd = command::command_id(name);
                last.bytes[..name.len()].copy_from_slice(name);
                last.len = name.len();
                last.cmd = cmd;
                last.plain = !command::has_own_kind(cmd) && !command::needs_own_connection(cmd);
            }
            let cmd = last.cmd;
            if !last.plain || (shadowing && shadow::is_write(cmd)) {
                break;
            }
            match &mut run {
                Some((c, n)) if *c == cmd => *n += 1,
                _ => {
                    if let Some((c, n)) = run.replace((cmd, 1)) {
                        telemetry::commands().received(c, n);
                    }
                }
            }
            self.mux_batch_count += 1;
            self.pending
                .push_back(Pending::via_mux(cmd, self.batch_started, None));
            at += len;
            taken += 1;
        }
        if let Some((c, n)) = run {
            telemetry::commands().received(c, n);
        }
        if taken == 0 {
            return false;
        }
        self.mux_batch.extend_from_slice(&buf[..at]);
        self.client_in.advance(at);
        self.next_shadow = None;
        self.classified = None;
        true
    }

    /// The common case without the async machinery of [`Session::dispatch`]: an ordinary
    /// command of a logged-in session without its own connection joins the batch for the
    /// shared connection. `false` leaves the command to `dispatch`.
    fn mux_fast_path(&mut self, req: &Request) -> bool {
        let &Request::Array { len, .. } = req else {
            return false;
        };
        let Some((cmd, Kind::Plain)) = self.classified else {
            return false;
        };
        if self.pinned
            || self.streaming_request
            || !self.conn.authenticated
            || (shadow::is_write(cmd) && self.shared.shadow.load().is_some())
        {
            return false;
        }
        self.classified = None;
        telemetry::commands().received(cmd, 1);
        self.next_shadow = None;
        self.mux_batch.extend_from_slice(&self.client_in[..len]);
        self.client_in.advance(len);
        self.mux_pending(cmd);
        true
    }

    /// Would this command, on an unpinned session, have to run on its own connection?
    fn needs_own_connection(&mut self, req: &Request) -> bool {
        let (name, arg1, arg2, argc) = match req {
            Request::Empty { .. } => return false,
            Request::Inline { args, .. } => (
                args.first().map(|a| &a[..]),
                args.get(1).map(|a| &a[..]),
                args.get(2).map(|a| &a[..]),
                args.len() as u64,
            ),
            Request::Array { argc, args, .. } => (
                args.get(&self.client_in, 0),
                args.get(&self.client_in, 1),
                args.get(&self.client_in, 2),
                *argc,
            ),
        };
        let Some(name) = name else { return false };
        let cmd = command::command_id(name);
        let kind = if command::has_own_kind(cmd) {
            command::classify(name, arg1, arg2, argc)
        } else {
            Kind::Plain
        };
        // Classified once per command: `command` takes it from here.
        self.classified = Some((cmd, kind.clone()));
        if !self.conn.authenticated {
            // Everything else is answered by the proxy itself until the client logs in;
            // `HELLO … AUTH` logs in and then changes the connection's protocol.
            return kind == Kind::Hello;
        }
        if self.prefer_own_connection {
            return true;
        }
        let proxy_auth = self.shared.settings.auth.password.is_some();
        match kind {
            Kind::Plain => command::needs_own_connection(cmd),
            Kind::Quit | Kind::Refused(_) | Kind::Exec | Kind::Discard | Kind::Unwatch => false,
            Kind::Auth => !proxy_auth,
            // Masked replies are rewritten one by one: only on the session's own connection.
            Kind::ConfigGet => proxy_auth,
            _ => true,
        }
    }

    /// Moves the session to its own backend connection once nothing is in flight on the
    /// shared one; `false` while it must wait.
    fn pin(&mut self) -> bool {
        self.flush_mux_batch();
        if !self.pending.is_empty() {
            return false;
        }
        self.pinned = true;
        true
    }

    async fn dispatch(&mut self, req: Request) {
        match req {
            Request::Empty { len } => self.client_in.advance(len),
            Request::Inline { len, args } => {
                self.client_in.advance(len);
                let mut wire = Vec::new();
                encode_command(&args, &mut wire);
                let mut argv: [&[u8]; CAPTURED_ARGS] = [&[]; CAPTURED_ARGS];
                for (slot, a) in argv.iter_mut().zip(&args) {
                    *slot = a;
                }
                let n = args.len().min(CAPTURED_ARGS);
                self.command(&argv[..n], args.len() as u64, &wire).await;
            }
            Request::Array { len, argc, args } => {
                if self.streaming_request {
                    // The tail of a command whose head was already forwarded.
                    self.streaming_request = false;
                    if !std::mem::take(&mut self.discard_request) {
                        if let Some(up) = &mut self.up {
                            up.out.extend_from_slice(&self.client_in[..len]);
                        }
                    }
                    self.client_in.advance(len);
                    return;
                }
                // Borrow the frame in place (no copy, no split): the buffer is lent out
                // while the command is handled and put back after.
                let buf = std::mem::take(&mut self.client_in);
                let frame = &buf[..len];
                let mut argv: [&[u8]; CAPTURED_ARGS] = [&[]; CAPTURED_ARGS];
                for (i, slot) in argv.iter_mut().enumerate().take(args.len()) {
                    *slot = args.get(frame, i).unwrap_or_default();
                }
                self.command(&argv[..args.len()], argc, frame).await;
                self.client_in = buf;
                self.client_in.advance(len);
            }
        }
    }

    /// A huge command (a 512 MB value, a million arguments) is forwarded as it arrives instead
    /// of being buffered whole, once its name is known and it is an ordinary command.
    async fn stream_partial_request(&mut self) {
        let scanned = self.req.scanned();
        if scanned < STREAM_THRESHOLD {
            return;
        }
        if !self.streaming_request {
            let args = self.req.pending_args();
            let name = args.get(&self.client_in, 0);
            let streamable = name.is_some_and(|name| {
                let kind = command::classify(
                    name,
                    args.get(&self.client_in, 1),
                    args.get(&self.client_in, 2),
                    self.req.pending_argc(),
                );
                kind == Kind::Plain && self.conn.authenticated
            });
            if !streamable {
                // Control commands are never this big: they are buffered whole, up to the
                // buffer limit; beyond it they are refused (a full buffer could never drain).
                if self.client_in.len() >= self.shared.settings.buffer_limit {
                    self.refuse_partial_request();
                }
                return;
            }
            if !self.pinned && !self.pin() {
                return;
            }
            let name = self.req.pending_args().get(&self.client_in, 0);
            let cmd = command::command_id(name.unwrap_or_default());
            telemetry::commands().received(cmd, 1);
            let head = self.client_in.split_to(scanned);
            self.req.forwarded(scanned);
            self.streaming_request = true;
            self.discard_request = !self
                .forward(cmd, &head, Expect::Replies(1), Effect::None)
                .await;
            return;
        }
        let chunk = self.client_in.split_to(scanned);
        self.req.forwarded(scanned);
        if !self.discard_request {
            if let Some(up) = &mut self.up {
                up.out.extend_from_slice(&chunk);
            }
        }
    }

    /// A command that cannot be streamed (connection state, not logged in, name unknown yet)
    /// filled the client buffer: it is answered with an error and the rest of it is read and
    /// dropped, so the session neither stalls nor holds more than the limit.
    fn refuse_partial_request(&mut self) {
        let name = self.req.pending_args().get(&self.client_in, 0);
        let cmd = name.map_or(command::KNOWN_COMMANDS.len(), command::command_id);
        let shown = name.map_or_else(
            || "a command whose name".to_string(),
            |n| String::from_utf8_lossy(&n[..n.len().min(32)]).to_uppercase(),
        );
        let limit = self.shared.settings.buffer_limit;
        telemetry::error("request_too_big");
        tracing::debug!(peer = %self.peer, command = %shown, limit, "request too big to buffer; refused");
        let scanned = self.req.scanned();
        self.client_in.advance(scanned);
        self.req.forwarded(scanned);
        self.streaming_request = true;
        self.discard_request = true;
        let msg = format!(
            "ERR cutover: {shown} is longer than the proxy's buffer limit ({limit} bytes); only ordinary data commands are streamed through. Send a shorter command (or raise [proxy] buffer_limit_bytes)"
        );
        self.local_error(cmd, &msg);
    }

    // ----- commands ----------------------------------------------------------------------

    async fn command(&mut self, argv: &[&[u8]], argc: u64, wire: &[u8]) {
        let Some(&name) = argv.first() else { return };
        let (cmd, kind) = self.classified.take().unwrap_or_else(|| {
            let kind = command::classify(name, argv.get(1).copied(), argv.get(2).copied(), argc);
            (command::command_id(name), kind)
        });
        telemetry::commands().received(cmd, 1);
        self.next_shadow = None;
        if shadow::is_write(cmd) && self.conn.authenticated {
            self.capture_shadow(cmd, wire);
        }
        let proxy_auth = self.shared.settings.auth.password.is_some();
        if !self.conn.authenticated && !matches!(kind, Kind::Auth | Kind::Hello | Kind::Quit) {
            telemetry::error("auth");
            return self.local_error(cmd, "NOAUTH Authentication required.");
        }
        match kind {
            Kind::Plain | Kind::Exec | Kind::Discard | Kind::Unwatch if !self.pinned => {
                self.mux_push(cmd, wire);
            }
            Kind::ConfigGet if !proxy_auth && !self.pinned => self.mux_push(cmd, wire),
            Kind::ConfigGet => {
                // A proxy with its own password does not hand out the backend's.
                if self.conn.in_multi {
                    self.txn_masks |= proxy_auth;
                } else {
                    self.mask_next = proxy_auth;
                }
                self.forward(cmd, wire, Expect::Replies(1), Effect::None)
                    .await;
                self.mask_next = false;
            }
            Kind::Auth if proxy_auth => {
                let reply = match argv.len() {
                    2 => self.check_auth(None, argv[1]),
                    3 => self.check_auth(Some(argv[1]), argv[2]),
                    _ => Err("ERR wrong number of arguments for 'auth' command"),
                };
                match reply {
                    Ok(()) => {
                        self.conn.authenticated = true;
                        self.local(cmd, Bytes::from_static(b"+OK\r\n"), false)
                    }
                    Err(e) => {
                        telemetry::error("auth");
                        self.local_error(cmd, e)
                    }
                }
            }
            Kind::Hello if proxy_auth => self.hello_with_proxy_auth(cmd, argv, argc).await,
            Kind::Hello => {
                let effect = hello_effect(argv);
                self.forward(cmd, wire, Expect::Replies(1), effect).await;
            }
            Kind::Quit => self.local(cmd, Bytes::from_static(b"+OK\r\n"), true),
            Kind::Monitor => {
                self.forward(cmd, wire, Expect::Replies(1), Effect::Monitor)
                    .await;
            }
            Kind::Refused(msg) => {
                telemetry::error("refused");
                self.local_error(cmd, msg)
            }
            Kind::Select => {
                let effect = argv
                    .get(1)
                    .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok())
                    .map_or(Effect::None, Effect::Select);
                self.forward_stateful(cmd, wire, effect).await;
            }
            Kind::ClientSetName => {
                let name = argv
                    .get(2)
                    .filter(|n| !n.is_empty())
                    .map(|n| Box::new(Bytes::copy_from_slice(n)));
                self.forward_stateful(cmd, wire, Effect::SetName(name))
                    .await;
            }
            Kind::ClientReply(mode) => {
                let expect = match mode {
                    ReplyMode::On => Expect::Replies(1),
                    _ => Expect::Replies(0),
                };
                self.conn.reply_off = mode == ReplyMode::Off;
                self.conn.skip_next = mode == ReplyMode::Skip;
                self.send(cmd, wire, expect, Effect::None).await;
            }
            Kind::Multi => {
                self.forward(cmd, wire, Expect::Replies(1), Effect::Multi)
                    .await;
                self.conn.in_multi = true;
            }
            Kind::Exec if std::mem::take(&mut self.watch_broken) && self.conn.in_multi => {
                // A flip moved the watched keys to another server: fail the transaction the
                // way Redis does when a watched key changed.
                self.exec_nil = true;
                self.forward(
                    cmd,
                    b"*1\r\n$7\r\nDISCARD\r\n",
                    Expect::Replies(1),
                    Effect::Discard,
                )
                .await;
                self.exec_nil = false;
                self.conn.in_multi = false;
            }
            Kind::Exec | Kind::Discard => {
                let masks = std::mem::take(&mut self.txn_masks);
                let effect = if kind == Kind::Exec {
                    self.mask_next = masks;
                    Effect::Exec
                } else {
                    self.watch_broken = false;
                    Effect::Discard
                };
                self.forward(cmd, wire, Expect::Replies(1), effect).await;
                self.mask_next = false;
                self.conn.in_multi = false;
            }
            Kind::Watch => {
                self.forward(cmd, wire, Expect::Replies(1), Effect::Watch)
                    .await;
            }
            Kind::Unwatch => {
                self.watch_broken = false;
                self.forward(cmd, wire, Expect::Replies(1), Effect::Unwatch)
                    .await;
            }
            Kind::Reset => {
                if self
                    .forward(cmd, wire, Expect::Replies(1), Effect::Reset)
                    .await
                {
                    // RESET also logs the backend connection out: log the proxy back in,
                    // before any command the client pipelined after it.
                    self.conn.in_multi = false;
                    self.restore_backend_login();
                }
            }
            Kind::Subscribe(_) => {
                let n = argc.saturating_sub(1).max(1) as u32;
                self.forward(cmd, wire, Expect::Replies(n), Effect::None)
                    .await;
            }
            Kind::Unsubscribe(k) => {
                let expect = if argc <= 1 {
                    Expect::AllSubs(k)
                } else {
                    Expect::Replies((argc - 1) as u32)
                };
                self.forward(cmd, wire, expect, Effect::None).await;
            }
            Kind::Auth | Kind::Plain | Kind::OwnConnection => {
                if let (Some(sub), Some(mode)) = (argv.get(1), argv.get(2))
                    && name.eq_ignore_ascii_case(b"client")
                    && sub.eq_ignore_ascii_case(b"tracking")
                {
                    self.conn.tracking = mode.eq_ignore_ascii_case(b"on");
                }
                self.forward(cmd, wire, Expect::Replies(1), Effect::None)
                    .await;
            }
        }
    }

    /// Forwards a command whose state change is deferred to `EXEC` inside a transaction.
    async fn forward_stateful(&mut self, cmd: usize, wire: &[u8], effect: Effect) {
        if self.conn.in_multi {
            self.conn.multi_effects.push(effect);
            self.forward(cmd, wire, Expect::Replies(1), Effect::None)
                .await;
        } else {
            self.forward(cmd, wire, Expect::Replies(1), effect).await;
        }
    }

    fn check_auth(&self, user: Option<&[u8]>, pass: &[u8]) -> Result<(), &'static str> {
        let want = &self.shared.settings.auth;
        let user_ok = match (&want.user, user) {
            (Some(w), Some(u)) => constant_time_eq(w.as_bytes(), u),
            (Some(w), None) => w == "default",
            (None, Some(u)) => u == b"default",
            (None, None) => true,
        };
        let pass_ok = want
            .password
            .as_ref()
            .is_some_and(|p| constant_time_eq(p.as_bytes(), pass));
        if user_ok && pass_ok {
            Ok(())
        } else {
            Err("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]` when the proxy has its own password:
    /// the AUTH part is checked here and never forwarded; the rest goes to the backend.
    async fn hello_with_proxy_auth(&mut self, cmd: usize, argv: &[&[u8]], argc: u64) {
        if argc as usize > argv.len() {
            return self.local_error(cmd, "ERR Syntax error in HELLO option");
        }
        // Redis checks the protocol version before the credentials: `HELLO 4 AUTH <right>`
        // fails with NOPROTO and leaves the client logged out.
        if let Some(v) = argv.get(1) {
            match request::parse_int(v) {
                Some(2 | 3) => {}
                Some(_) => return self.local_error(cmd, "NOPROTO unsupported protocol version"),
                None => {
                    return self.local_error(
                        cmd,
                        "ERR Protocol version is not an integer or out of range",
                    );
                }
            }
        }
        let mut forwarded: Vec<&[u8]> = vec![b"HELLO"];
        let mut auth: Option<(&[u8], &[u8])> = None;
        let mut i = 1;
        if let Some(v) = argv.get(1) {
            forwarded.push(v);
            i = 2;
        }
        while i < argv.len() {
            let opt = argv[i];
            if opt.eq_ignore_ascii_case(b"AUTH") && i + 2 < argv.len() {
                auth = Some((argv[i + 1], argv[i + 2]));
                i += 3;
            } else if opt.eq_ignore_ascii_case(b"SETNAME") && i + 1 < argv.len() {
                forwarded.extend_from_slice(&argv[i..i + 2]);
                i += 2;
            } else {
                let msg = format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(opt)
                );
                return self.local_error(cmd, &msg);
            }
        }
        match auth {
            Some((user, pass)) => match self.check_auth(Some(user), pass) {
                Ok(()) => self.conn.authenticated = true,
                Err(e) => {
                    telemetry::error("auth");
                    return self.local_error(cmd, e);
                }
            },
            None if !self.conn.authenticated => {
                telemetry::error("auth");
                return self.local_error(
                    cmd,
                    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
                );
            }
            None => {}
        }
        let effect = hello_effect(&forwarded);
        let mut wire = Vec::new();
        encode_command(&forwarded, &mut wire);
        self.forward(cmd, &wire, Expect::Replies(1), effect).await;
    }

    fn local_error(&mut self, cmd: usize, msg: &str) {
        let mut reply = BytesMut::new();
        push_error(&mut reply, msg);
        self.local(cmd, reply.freeze(), false);
    }

    /// Queues a reply made by the proxy, in order with the replies still to come.
    fn local(&mut self, cmd: usize, reply: Bytes, close: bool) {
        // Keep order: the commands collected for the shared connection go before this reply.
        self.flush_mux_batch();
        if close {
            self.stop_reading = true;
        }
        if self.silenced() && !close {
            return;
        }
        self.pending.push_back(Pending {
            cmd,
            started: self.batch_started,
            expect: Expect::Local {
                reply: Box::new(reply),
                close,
            },
            effect: Effect::None,
            swallow: false,
            via_mux: false,
            reissue: None,
            nil_reply: false,
            mask_secrets: false,
            shadow: None,
        });
        self.drain_local();
    }

    /// `CLIENT REPLY OFF|SKIP` in force for this command.
    fn silenced(&mut self) -> bool {
        self.conn.reply_off || std::mem::take(&mut self.conn.skip_next)
    }

    /// Forwards a client command; `false` if no backend could be reached (the client got an
    /// error reply instead).
    async fn forward(&mut self, cmd: usize, wire: &[u8], expect: Expect, effect: Effect) -> bool {
        let expect = if self.silenced() {
            Expect::Replies(0)
        } else {
            expect
        };
        self.send(cmd, wire, expect, effect).await
    }

    /// Sends a client command on the session's own connection (opening it if needed).
    async fn send(&mut self, cmd: usize, wire: &[u8], expect: Expect, effect: Effect) -> bool {
        if let Err(msg) = self.ensure_upstream().await {
            if !matches!(expect, Expect::Replies(0)) {
                self.local_error(cmd, &format!("ERR cutover: {msg}"));
            }
            return false;
        }
        let reissue = (command::may_block(cmd) && !self.conn.in_multi)
            .then(|| crate::sync::engine::split_args(wire).ok())
            .flatten()
            .filter(|args| command::reissue_blocking(args, Duration::ZERO).is_some())
            .map(|args| {
                Box::new(Blocking {
                    args: args.iter().map(|a| a.to_vec()).collect(),
                })
            });
        let Some(up) = &mut self.up else { return false };
        up.out.extend_from_slice(wire);
        if !matches!(expect, Expect::Replies(0)) {
            self.pending.push_back(Pending {
                cmd,
                started: self.batch_started,
                expect,
                effect,
                swallow: false,
                via_mux: false,
                reissue,
                nil_reply: std::mem::take(&mut self.exec_nil),
                mask_secrets: std::mem::take(&mut self.mask_next),
                shadow: self.next_shadow.take(),
            });
        }
        true
    }

    /// Adds a command to the batch for the backend's shared connection.
    fn mux_push(&mut self, cmd: usize, wire: &[u8]) {
        self.mux_batch.extend_from_slice(wire);
        self.mux_pending(cmd);
    }

    /// Records a command just added to the shared connection's batch.
    fn mux_pending(&mut self, cmd: usize) {
        self.mux_batch_count += 1;
        let shadow = self.next_shadow.take();
        self.pending
            .push_back(Pending::via_mux(cmd, self.batch_started, shadow));
    }

    /// Sends the collected batch to the shared connection of the route's primary.
    fn flush_mux_batch(&mut self) {
        if self.mux_batch_count == 0 {
            return;
        }
        let count = std::mem::take(&mut self.mux_batch_count);
        self.mux_inflight += count as usize;
        let wire = self.mux_batch.split().freeze();
        let reply_to = match &self.mux_tx {
            Some(tx) => tx.clone(),
            None => {
                let (tx, rx) = unbounded_channel();
                self.mux_rx = Some(rx);
                self.mux_tx = Some(tx.clone());
                tx
            }
        };
        let settings = &self.shared.settings;
        let route = self.shared.route.load();
        let mux = route
            .primary_backend()
            .mux(settings.connect_timeout, settings.buffer_limit);
        if mux
            .send(MuxRequest {
                wire,
                count,
                reply_to,
            })
            .is_err()
        {
            self.on_mux_reply(MuxReply::Failed {
                message: "ERR cutover: the shared backend connection stopped".into(),
                count,
            });
        }
    }

    /// Replies (or a failure) from the shared connection for this session's oldest commands.
    fn on_mux_reply(&mut self, reply: MuxReply) {
        let (completed, failure) = match reply {
            MuxReply::Data { bytes, completed } => {
                if bytes.len() >= BIG_REPLY {
                    self.prefer_own_connection = true;
                }
                if self.mux_framing {
                    self.frame_mux_replies(&bytes, completed);
                }
                // Nothing queued before these bytes: hand them to the socket directly and keep
                // only what it did not take (saves a copy per reply batch).
                let mut rest = &bytes[..];
                if self.client_out.is_empty()
                    && let Ok(n) = self.client.try_write(rest)
                {
                    telemetry::hot().bytes_out.increment(n as u64);
                    rest = &rest[n..];
                }
                self.client_out.extend_from_slice(rest);
                (completed, None)
            }
            MuxReply::Failed { message, count } => (count, Some(message)),
        };
        self.mux_inflight = self.mux_inflight.saturating_sub(completed as usize);
        let now = Instant::now();
        // Timed in runs of the same command sent at the same time (a pipeline of GETs is one
        // record).
        let mut run: Option<(usize, Instant, u64)> = None;
        for _ in 0..completed {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            debug_assert!(p.via_mux);
            match &mut run {
                Some((cmd, started, n)) if *cmd == p.cmd && *started == p.started => *n += 1,
                _ => {
                    if let Some((cmd, started, n)) = run.replace((p.cmd, p.started, 1)) {
                        telemetry::commands().answered(cmd, n, now - started);
                    }
                }
            }
            if let Some(msg) = &failure {
                push_error(&mut self.client_out, msg);
            }
        }
        if let Some((cmd, started, n)) = run {
            telemetry::commands().answered(cmd, n, now - started);
        }
        self.drain_local();
    }

    /// Splits replies from the shared connection one by one and shadows the writes among the
    /// `completed` commands now answered (they are the oldest `completed` pending entries).
    fn frame_mux_replies(&mut self, bytes: &[u8], completed: u32) {
        self.mux_frames.extend_from_slice(bytes);
        for i in 0..completed as usize {
            let info = match self.mux_frame_parser.parse(&self.mux_frames) {
                Ok(Some(info)) => info,
                _ => {
                    // Cannot happen (the shared connection only reports whole replies); never
                    // guess which reply is whose.
                    self.mux_frames.clear();
                    self.mux_frame_parser = ReplyParser::default();
                    if let Some(sink) = self.shared.shadow.load_full() {
                        sink.mark_unsafe("a reply on the shared connection could not be framed");
                    }
                    return;
                }
            };
            let reply = self.mux_frames.split_to(info.len);
            if info.is_error() {
                continue;
            }
            if let Some(plan) = self.pending.get_mut(i).and_then(|p| p.shadow.take()) {
                self.emit_shadow(*plan, &reply);
            }
        }
        if self.mux_frames.is_empty() && self.mux_frames.capacity() > TRIM_CAPACITY {
            self.mux_frames = BytesMut::new();
        }
    }

    /// Queues an internal command whose reply is not the client's.
    fn send_internal(&mut self, args: &[&[u8]], replies: u32) {
        let Some(up) = &mut self.up else { return };
        let mut wire = Vec::new();
        encode_command(args, &mut wire);
        up.out.extend_from_slice(&wire);
        self.pending.push_back(Pending {
            cmd: command::command_id(args[0]),
            started: self.batch_started,
            expect: Expect::Replies(replies),
            effect: Effect::None,
            swallow: true,
            via_mux: false,
            reissue: None,
            nil_reply: false,
            mask_secrets: false,
            shadow: None,
        });
    }

    // ----- upstream ----------------------------------------------------------------------

    /// Makes sure there is a backend connection to the route's primary, re-creating the
    /// session's state on a new one. Moves to a new primary when the route changed and the
    /// session is between commands.
    async fn ensure_upstream(&mut self) -> Result<(), String> {
        let route = self.shared.route.load();
        if self.up.is_some() {
            let idle = self.pending.is_empty() && !self.conn.in_multi && !self.streaming_request;
            if route.epoch == self.epoch || !idle {
                return Ok(());
            }
            self.drop_upstream();
        }
        let backend = route.primary_backend().clone();
        let epoch = route.epoch;
        drop(route);
        let stream = upstream::connect(&backend, self.shared.settings.connect_timeout)
            .await
            .map_err(|e| {
                telemetry::error("backend_unreachable");
                e.to_string()
            })?;
        let guard = ConnGuard::new(backend.clone(), stream.local_addr().ok());
        let url_db = backend.url.db;
        self.epoch = epoch;
        self.up = Some(Upstream {
            stream,
            _guard: guard,
            backend,
            inbuf: BytesMut::new(),
            out: BytesMut::new(),
            reply: ReplyParser::default(),
        });
        self.restore_state(url_db);
        Ok(())
    }

    /// Re-creates the client's connection state on a fresh backend connection.
    fn restore_state(&mut self, url_db: u32) {
        let conn = self.conn.clone();
        if conn.resp != 2 {
            self.send_internal(&[b"HELLO", conn.resp.to_string().as_bytes()], 1);
        }
        if conn.db != url_db {
            self.send_internal(&[b"SELECT", conn.db.to_string().as_bytes()], 1);
        }
        if let Some(name) = &conn.name {
            self.send_internal(&[b"CLIENT", b"SETNAME", name], 1);
        }
        for kind in SubKind::ALL {
            let set = &conn.subs[kind.index()];
            if !set.is_empty() {
                let mut args: Vec<&[u8]> = vec![kind.subscribe_word().as_bytes()];
                args.extend(set.iter().map(|c| &c[..]));
                self.send_internal(&args, set.len() as u32);
            }
        }
    }

    /// After `RESET` the backend connection is logged out: log in and select again.
    fn restore_backend_login(&mut self) {
        let Some(up) = &self.up else { return };
        let url = up.backend.url.clone();
        if let Some(auth) = url.auth_command() {
            self.send_internal(&auth, 1);
        }
        if url.db != 0 {
            self.send_internal(&[b"SELECT", url.db.to_string().as_bytes()], 1);
        }
    }

    fn drop_upstream(&mut self) {
        self.up = None;
    }

    fn flush_upstream(&mut self) {
        let Some(up) = &mut self.up else { return };
        while !up.out.is_empty() {
            match up.stream.try_write(&up.out) {
                Ok(n) => up.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.upstream_lost(&e.to_string()),
            }
        }
    }

    fn read_upstream(&mut self) {
        let Some(up) = &mut self.up else { return };
        match read_now(&mut up.stream, &mut up.inbuf, READ_CHUNK) {
            Ok(Some(0)) => return self.upstream_lost("connection closed by the server"),
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => return self.upstream_lost(&e.to_string()),
        }
        loop {
            let Some(up) = &mut self.up else { return };
            if up.inbuf.is_empty() {
                return;
            }
            if self.conn.monitoring {
                // The monitor feed (and any reply) goes to the client as it comes.
                self.client_out.extend_from_slice(&up.inbuf);
                up.inbuf.clear();
                return;
            }
            up.reply.capture_arrays =
                self.conn.subscribed() || self.pending.front().is_some_and(|p| p.cmd_is_pubsub());
            match up.reply.parse(&up.inbuf) {
                Ok(Some(info)) => {
                    let bytes = up.inbuf.split_to(info.len);
                    self.on_reply(info, &bytes);
                }
                Ok(None) => {
                    let scanned = up.reply.scanned();
                    // A reply to be masked is held whole (a CONFIG GET reply is small).
                    let masked = self.pending.front().is_some_and(|p| p.mask_secrets);
                    if scanned >= STREAM_THRESHOLD && !masked {
                        let part = up.inbuf.split_to(scanned);
                        up.reply.forwarded(scanned);
                        if !self.pending.front().is_some_and(|p| p.swallow) {
                            self.client_out.extend_from_slice(&part);
                        }
                    }
                    return;
                }
                Err(e) => {
                    telemetry::error("backend_protocol");
                    return self.upstream_lost(&e.to_string());
                }
            }
        }
    }

    /// One complete reply from the backend.
    fn on_reply(&mut self, info: ReplyInfo, bytes: &[u8]) {
        let confirmation = self.sub_confirmation(&info);
        let out_of_band = confirmation.is_none()
            && (info.is_push()
                || (self.conn.resp == 2
                    && info.kind == b'*'
                    && self.conn.subscribed()
                    && (info.head_is(0, "message")
                        || info.head_is(0, "pmessage")
                        || info.head_is(0, "smessage"))));
        if out_of_band {
            self.client_out.extend_from_slice(bytes);
            return;
        }
        if let Some(Pending {
            expect: Expect::AllSubs(kind),
            ..
        }) = self.pending.front()
        {
            // Counted now that every earlier command was answered: one per subscription.
            let n = self.conn.subs[kind.index()].len().max(1) as u32;
            if let Some(head) = self.pending.front_mut() {
                head.expect = Expect::Replies(n);
            }
        }
        if let Some((kind, subscribe)) = confirmation {
            let channel = Bytes::copy_from_slice(info.head.get(1).map_or(&[][..], |c| &c[..]));
            let set = &mut self.conn.subs[kind.index()];
            if subscribe {
                set.insert(channel);
            } else {
                set.remove(&channel);
            }
        }
        if self.cancelled_by_flip(bytes) {
            return;
        }
        let Some(head) = self.pending.front_mut() else {
            tracing::warn!(peer = %self.peer, "reply from the server without a command; passing it on");
            self.client_out.extend_from_slice(bytes);
            return;
        };
        if head.nil_reply {
            self.client_out.extend_from_slice(if self.conn.resp == 3 {
                b"_\r\n"
            } else {
                b"*-1\r\n"
            });
        } else if head.mask_secrets && !head.swallow {
            match crate::resp::mask::mask_values_after(bytes, crate::resp::mask::SECRET_CONFIGS) {
                Some(masked) => self.client_out.extend_from_slice(&masked),
                None => push_error(
                    &mut self.client_out,
                    "ERR cutover: a reply that may hold the backend's passwords could not be checked, so it is withheld",
                ),
            }
        } else if !head.swallow {
            self.client_out.extend_from_slice(bytes);
        }
        let done = match &mut head.expect {
            Expect::Replies(n) if *n > 1 && !info.is_error() => {
                *n -= 1;
                false
            }
            _ => true,
        };
        if done {
            let mut head = self.pending.pop_front().expect("front exists");
            telemetry::commands().answered(head.cmd, 1, head.started.elapsed());
            if !info.is_error() && !head.swallow {
                if let Some(plan) = head.shadow.take() {
                    self.emit_shadow(*plan, bytes);
                }
                if matches!(head.effect, Effect::Exec) {
                    self.emit_txn_shadow(bytes);
                }
            }
            if matches!(head.effect, Effect::Exec | Effect::Discard) {
                self.txn_shadow.clear();
                self.txn_guard = None;
            }
            if info.is_error() {
                if !head.swallow {
                    telemetry::error("reply_error");
                } else {
                    tracing::warn!(peer = %self.peer, "restoring connection state failed: {}", String::from_utf8_lossy(bytes).trim_end());
                }
            } else {
                self.apply(head.effect, &info);
            }
            self.drain_local();
        }
    }

    /// A blocking call answered with a nil after the route flipped was cancelled by the
    /// cutover (`CLIENT UNBLOCK` on the old side): send it again to the new primary with the
    /// rest of its timeout instead of answering the client. An element that arrived in the
    /// race is a real reply and reaches the client as usual.
    fn cancelled_by_flip(&mut self, bytes: &[u8]) -> bool {
        let Some(head) = self.pending.front() else {
            return false;
        };
        let Some(blocking) = &head.reissue else {
            return false;
        };
        let nil = matches!(bytes, b"*-1\r\n" | b"$-1\r\n" | b"_\r\n");
        if !nil || self.shared.route.load().epoch == self.epoch {
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

    /// Is this reply a `(p|s)(un)subscribe` confirmation answering the command at the head?
    fn sub_confirmation(&self, info: &ReplyInfo) -> Option<(SubKind, bool)> {
        if !(info.is_push() || info.kind == b'*') || info.head.len() < 3 {
            return None;
        }
        let head = self.pending.front()?;
        if !head.cmd_is_pubsub() {
            return None;
        }
        SubKind::ALL.into_iter().find_map(|k| {
            if info.head_is(0, k.subscribe_word()) {
                Some((k, true))
            } else if info.head_is(0, k.unsubscribe_word()) {
                Some((k, false))
            } else {
                None
            }
        })
    }

    fn apply(&mut self, effect: Effect, info: &ReplyInfo) {
        match effect {
            Effect::None => {}
            Effect::Select(db) => self.conn.db = db,
            Effect::SetName(name) => self.conn.name = name.map(|n| *n),
            Effect::Hello(v) => self.conn.resp = v,
            Effect::Multi => {}
            Effect::Exec => {
                self.conn.watching = false;
                let queued = std::mem::take(&mut self.conn.multi_effects);
                if info.kind != b'_' && info.elements >= 0 {
                    for e in queued {
                        self.apply(e, info);
                    }
                }
            }
            Effect::Discard => {
                self.conn.watching = false;
                self.conn.multi_effects.clear();
            }
            Effect::Watch => self.conn.watching = true,
            Effect::Monitor => {
                self.conn.monitoring = true;
                // From now on the server's bytes pass through as they come, unpaired: the
                // commands pipelined behind MONITOR are answered in that stream, so they are
                // no longer waited for (a session would otherwise wait for them forever). The
                // proxy's own replies among them are written now.
                for p in std::mem::take(&mut self.pending) {
                    if let Expect::Local { reply, close } = p.expect {
                        self.client_out.extend_from_slice(&reply);
                        if close {
                            self.close_after_flush = true;
                            break;
                        }
                    }
                }
            }
            Effect::Unwatch => self.conn.watching = false,
            Effect::Reset => {
                let db = self.up.as_ref().map_or(0, |u| u.backend.url.db);
                let authenticated = self.shared.settings.auth.password.is_none();
                self.conn = ConnState::fresh(db, authenticated);
            }
        }
    }

    /// Emits the proxy's own replies that are now at the head of the queue.
    fn drain_local(&mut self) {
        while let Some(Pending {
            expect: Expect::Local { .. },
            ..
        }) = self.pending.front()
        {
            let Some(Pending {
                expect: Expect::Local { reply, close },
                cmd,
                started,
                ..
            }) = self.pending.pop_front()
            else {
                unreachable!()
            };
            telemetry::commands().answered(cmd, 1, started.elapsed());
            self.client_out.extend_from_slice(&reply);
            if close {
                self.close_after_flush = true;
                self.pending.clear();
                return;
            }
        }
    }

    /// The backend connection broke: every command still waiting for a reply gets an error
    /// (it may or may not have run), in order with the proxy's own replies; the next command
    /// reconnects (with back-off) and the session state is re-created there.
    fn upstream_lost(&mut self, why: &str) {
        let Some(up) = &self.up else { return };
        let name = up.backend.describe();
        tracing::warn!(peer = %self.peer, backend = %name, reason = why, in_flight = self.pending.len(), "backend connection lost");
        telemetry::error("backend_lost");
        metrics::counter!("cutover_backend_lost_total", "side" => up.backend.side.as_str())
            .increment(1);
        self.drop_upstream();
        let msg = format!(
            "ERR cutover: lost the connection to {name} ({why}) before the reply; the command may or may not have been applied"
        );
        // State the proxy cannot re-create on a new connection: subscriptions (messages in the
        // gap would be lost), WATCH (a change in the gap would go unnoticed), a transaction
        // being queued (later commands would run outside it), client-side caching.
        let unrestorable = self.conn.subscribed()
            || self.conn.monitoring
            || self.conn.watching
            || self.conn.in_multi
            || self.conn.tracking;
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            match p.expect {
                Expect::Local { reply, close } => {
                    self.client_out.extend_from_slice(&reply);
                    if close {
                        self.close_after_flush = true;
                        break;
                    }
                }
                Expect::Replies(_) | Expect::AllSubs(_) if !p.swallow => {
                    push_error(&mut self.client_out, &msg);
                }
                _ => {}
            }
        }
        self.conn.in_multi = false;
        self.conn.watching = false;
        self.conn.multi_effects.clear();
        self.txn_masks = false;
        if self.streaming_request {
            self.discard_request = true;
        }
        if unrestorable {
            // Close once the errors are written: the client sees a dropped connection, as it
            // would directly, and starts over knowingly.
            self.stop_reading = true;
            self.close_after_flush = true;
        }
    }
}

impl Pending {
    fn cmd_is_pubsub(&self) -> bool {
        let name = command::KNOWN_COMMANDS.get(self.cmd).copied().unwrap_or("");
        matches!(
            name,
            "subscribe"
                | "psubscribe"
                | "ssubscribe"
                | "unsubscribe"
                | "punsubscribe"
                | "sunsubscribe"
        )
    }
}

fn hello_effect(argv: &[&[u8]]) -> Effect {
    match argv
        .get(1)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u8>().ok())
    {
        Some(v @ (2 | 3)) => Effect::Hello(v),
        _ => Effect::None,
    }
}

/// Giving memory back after a storm of connections.
///
/// Each session's buffers (16 KiB read reservations, reply buffers) come from the C heap. When
/// thousands of clients leave at once, their memory is free but glibc returns only the top of
/// the heap to the system: blocks still in use higher up (the I/O driver's registration pages,
/// queues that grew during the storm) pin it, so the process' RSS stayed at its peak and crept
/// up with each storm (measured: 11 MB idle, 63 → 92 MB after five storms of 2,000 clients;
/// `malloc_trim(0)` from a debugger brought it back to 11 MB, so none of it was live). After
/// the number of open clients has halved from its peak (and at least [`heap::MIN_PEAK`] / 2 have
/// left), the proxy asks the allocator once, on a blocking thread, half a second later, to
/// release free pages (`malloc_trim`, glibc only; elsewhere nothing happens).
mod heap {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use super::ProxyShared;

    /// Fewer clients than this at the peak: not worth a trim (after a trim, half of it must
    /// have left again for the next one).
    pub const MIN_PEAK: usize = 256;
    const DELAY: Duration = Duration::from_millis(500);

    static PEAK: AtomicUsize = AtomicUsize::new(0);
    static SCHEDULED: AtomicBool = AtomicBool::new(false);

    pub(super) fn session_ended(shared: Arc<ProxyShared>) {
        // This session is still counted (`proxy::listen` counts it down after `run`).
        let open = shared
            .client_conns
            .load(Ordering::Relaxed)
            .saturating_sub(1);
        let peak = PEAK.fetch_max(open + 1, Ordering::Relaxed).max(open + 1);
        if peak - open < MIN_PEAK / 2 || open > peak / 2 {
            return;
        }
        if SCHEDULED.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            tokio::time::sleep(DELAY).await;
            PEAK.store(
                shared.client_conns.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            SCHEDULED.store(false, Ordering::Release);
            let released = tokio::task::spawn_blocking(release).await;
            tracing::debug!(?released, "gave free heap memory back after clients left");
        });
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn release() -> bool {
        unsafe extern "C" {
            /// glibc: releases free memory at the top of the heap and whole free pages inside
            /// it (`madvise(MADV_DONTNEED)`); returns 1 if any memory was released.
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: `malloc_trim` takes no pointers and only works on the allocator's own state
        // under its own locks; any thread may call it at any time.
        unsafe { malloc_trim(0) == 1 }
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    fn release() -> bool {
        false
    }
}
