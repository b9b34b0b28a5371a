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

mod capture;
mod client;
mod commands;
mod dest;
mod flip;
mod heap;
mod link;
mod own;

use capture::ShadowPlan;
use dest::Dest;
use link::LastName;
use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::ProxyShared;
use super::command::{self, Kind, ReplyMode, SubKind};
use super::io::Conn;
use super::mux::{MuxReply, MuxRequest};
use super::upstream;
use crate::config::constant_time_eq;
use crate::cutover::holders::ClientInfo;
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
    /// The user the client logged in as on the backend connection (`AUTH` or `HELLO … AUTH`
    /// forwarded, the proxy having no password of its own). A new connection logs in as the
    /// side's configured user: one of another user cannot follow a move or a reconnect.
    pub own_login: Option<Bytes>,
    /// `MONITOR` succeeded: from now on the session is a plain byte pipe in both directions.
    pub monitoring: bool,
    /// Channels, patterns and shard channels, by [`SubKind::index`].
    pub subs: [BTreeSet<Bytes>; 3],
    reply_off: bool,
    skip_next: bool,
    /// `CLIENT NO-EVICT on` (Redis 7.0+) and `CLIENT NO-TOUCH on` (7.2+) answered `+OK`.
    pub no_evict: bool,
    pub no_touch: bool,
    /// `CLIENT SETINFO LIB-NAME` / `LIB-VER` (7.2+): the client library behind the
    /// connection. Kept across `RESET`, as Redis keeps them.
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
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
            own_login: None,
            monitoring: false,
            subs: Default::default(),
            reply_off: false,
            skip_next: false,
            no_evict: false,
            no_touch: false,
            lib_name: None,
            lib_ver: None,
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
    /// `HELLO` with this protocol version, and the user of its `AUTH` option.
    Hello(u8, Option<Box<Bytes>>),
    /// A successful `AUTH` forwarded to the backend, as this user.
    Login(Box<Bytes>),
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    Reset,
    Monitor,
    /// `CLIENT NO-EVICT|NO-TOUCH|SETINFO`: re-created on a new connection.
    Client(ClientOpt),
}

/// A per-connection setting made with `CLIENT`, re-created after a move or a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ClientOpt {
    NoEvict(bool),
    NoTouch(bool),
    /// `None`: cleared (an empty value).
    LibName(Option<Box<Bytes>>),
    LibVer(Option<Box<Bytes>>),
}

impl ClientOpt {
    /// The setting a `CLIENT …` command makes, if it is one the proxy re-creates.
    fn of(argv: &[&[u8]]) -> Option<ClientOpt> {
        let [name, sub, rest @ ..] = argv else {
            return None;
        };
        if !name.eq_ignore_ascii_case(b"client") {
            return None;
        }
        let on_off = |a: &[u8]| {
            if a.eq_ignore_ascii_case(b"on") {
                Some(true)
            } else if a.eq_ignore_ascii_case(b"off") {
                Some(false)
            } else {
                None
            }
        };
        let value = |v: &[u8]| (!v.is_empty()).then(|| Box::new(Bytes::copy_from_slice(v)));
        match rest {
            [mode] if sub.eq_ignore_ascii_case(b"no-evict") => on_off(mode).map(ClientOpt::NoEvict),
            [mode] if sub.eq_ignore_ascii_case(b"no-touch") => on_off(mode).map(ClientOpt::NoTouch),
            [attr, v] if sub.eq_ignore_ascii_case(b"setinfo") => {
                if attr.eq_ignore_ascii_case(b"lib-name") {
                    Some(ClientOpt::LibName(value(v)))
                } else if attr.eq_ignore_ascii_case(b"lib-ver") {
                    Some(ClientOpt::LibVer(value(v)))
                } else {
                    None
                }
            }
            _ => None,
        }
    }
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
    /// cancels it on the old one. A `WAIT`/`WAITAOF` is one too, but is not sent again: the
    /// cancel (`CLIENT UNBLOCK`) answers it with the replicas counted so far, as its timeout
    /// would, so a client waiting for replicas never holds a move up.
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
    stream: Conn,
    /// The route epoch this connection was opened for (see `dest.rs`: nothing is written to
    /// a connection of an older epoch).
    epoch: u64,
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
    /// The cutover disconnects this client: it held a move ([`crate::cutover::holders`]).
    Kicked,
}

pub struct Session {
    shared: Arc<ProxyShared>,
    client: Conn,
    peer: SocketAddr,
    up: Option<Upstream>,
    /// The route epoch read at the gate for the batch being handled (`dest.rs`:
    /// [`Session::read_route`], the one read of the route on the data path).
    epoch: u64,
    /// The primary of that epoch.
    primary: Arc<Backend>,
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
    /// The last `EVALSHA` SHA noted for the script registry (a loop calling one script
    /// costs a comparison per call, [`crate::cutover::unknown_scripts`]).
    last_sha: [u8; 40],
    /// The last `EVALSHA` sent while nothing else of this session was in flight, as sent:
    /// answered `NOSCRIPT` for a script the registry knows, it is sent again as `EVAL`
    /// ([`Session::evalsha_retry`]).
    evalsha_sent: Option<Bytes>,
    /// What this session would hold a move up with ([`crate::cutover::holders`]).
    info: Arc<ClientInfo>,
    /// `info` says busy / inside `MULTI`.
    info_busy: bool,
    info_multi: bool,
    /// A move disconnects this client: what it already sent to the server is waited for
    /// (replies dropped), nothing more is sent ([`Session::leave_kicked`]).
    kicked: bool,
}

impl Session {
    pub fn new(shared: Arc<ProxyShared>, client: Conn, peer: SocketAddr) -> Self {
        let route = shared.route.load();
        let db = route.primary_backend().url.db;
        let authenticated = shared.settings.auth.password.is_none();
        let gate_rx = shared.gate.subscribe();
        let info = shared.clients.register(peer);
        Session {
            req: RequestParser::default(),
            epoch: route.epoch,
            primary: Arc::clone(route.primary_backend()),
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
            last_sha: [0; 40],
            evalsha_sent: None,
            info,
            info_busy: false,
            info_multi: false,
            kicked: false,
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
        self.shared.clients.unregister(self.info.id);
        self.drop_upstream();
        let shared = self.shared.clone();
        // Everything this session held is freed before the heap is looked at.
        drop(self);
        heap::session_ended(shared);
    }

    async fn serve(&mut self) -> io::Result<()> {
        let limit = self.shared.settings.buffer_limit;
        loop {
            if self.kicked && self.leave_kicked() {
                return Err(io::Error::other("disconnected: it held a cutover move"));
            }
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
            self.publish_info(in_flight);
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
            // (TLS: records rustls could not write yet also wait for writability.)
            let write_client = !self.client_out.is_empty() || self.client.wants_flush();
            let write_backend =
                up_out > 0 || self.up.as_ref().is_some_and(|u| u.stream.wants_flush());
            let up = self.up.as_ref().map(|u| &u.stream);
            let client = &self.client;
            let read_mux = self.mux_rx.is_some() && self.client_out.len() < limit;
            let watch_gate = self.gated || self.flip_sensitive();
            let mux_rx = self.mux_rx.as_mut();
            let gate_rx = &mut self.gate_rx;
            // A command waiting for keys another write has in flight: try again when some
            // write gives its keys back (or after 1 ms, in case that happened just before).
            let key_order = self.key_wait.then(|| Arc::clone(&self.shared.key_order));
            let info = &self.info;
            let kicked = self.kicked;
            let event = tokio::select! {
                _ = info.kicked(), if !kicked => Event::Kicked,
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
                Event::Kicked => self.kicked = true,
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
        let _ = self.client.write_now(&msg);
        io::Error::other("session stalled")
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
        Some(v @ (2 | 3)) => {
            let user = argv
                .iter()
                .skip(2)
                .position(|a| a.eq_ignore_ascii_case(b"AUTH"))
                .and_then(|i| argv.get(i + 3))
                .map(|u| Box::new(Bytes::copy_from_slice(u)));
            Effect::Hello(v, user)
        }
        _ => Effect::None,
    }
}

/// An `EVALSHA` in `wire` goes to the primary: its SHA is noted for the script registry
/// unless it is the one this session noted last ([`crate::cutover::unknown_scripts`]).
fn note_evalsha(last: &mut [u8; 40], scripts: &crate::cutover::scripts::Scripts, wire: &[u8]) {
    let Some(sha) = command::evalsha_sha(wire) else {
        return;
    };
    if sha == &last[..] {
        return;
    }
    last.copy_from_slice(sha);
    scripts.called.note(sha, |s| scripts.knows(s));
}

impl Session {
    /// Remembers an `EVALSHA` about to be sent, if it is the only command of this session
    /// in flight (outside `MULTI`): only then can it be sent again without reordering.
    fn keep_evalsha(&mut self, wire: &[u8]) {
        self.evalsha_sent =
            (self.pending.is_empty() && !self.conn.in_multi).then(|| Bytes::copy_from_slice(wire));
    }

    /// The reply `bytes` answered the session's only command in flight: if it is `NOSCRIPT`
    /// for the `EVALSHA` kept by [`Session::keep_evalsha`] and the script registry has the
    /// body (the new primary lost its script cache after a move: a restart, a `SCRIPT FLUSH`
    /// on it), the command to send instead: the same call as `EVAL`/`EVAL_RO` with the body
    /// (which also caches the script there again). Once per `EVALSHA`.
    fn evalsha_retry(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        if !bytes.starts_with(b"-NOSCRIPT") || self.pending.len() != 1 {
            return None;
        }
        let sent = self.evalsha_sent.take()?;
        if !command::calls_script(self.pending.front()?.cmd) {
            return None;
        }
        let args = crate::sync::engine::split_args(&sent).ok()?;
        let body = self.shared.scripts.body(args.get(1)?)?;
        let name: &[u8] = if args[0].eq_ignore_ascii_case(b"evalsha_ro") {
            b"EVAL_RO"
        } else {
            b"EVAL"
        };
        let mut argv: Vec<&[u8]> = vec![name, &body];
        argv.extend(args[2..].iter().copied());
        let mut wire = Vec::new();
        encode_command(&argv, &mut wire);
        tracing::debug!(peer = %self.peer, "EVALSHA answered NOSCRIPT by the primary for a script the proxy knows: sent again as EVAL");
        metrics::counter!("cutover_scripts_evalsha_retried_total").increment(1);
        Some(wire)
    }
}
