//! The shared backend connection: many client sessions' ordinary commands, pipelined on one
//! server connection.
//!
//! Redis spends most of its time at low pipeline depth on system calls: one read and one write
//! per command per client. Funnelling the commands of all sessions that have no connection
//! state of their own (db and RESP version as the connection was opened, no transaction, no
//! subscription, no blocking call) into one connection turns 50 clients at pipeline 1 into one
//! client at pipeline ~50, which frees the server's CPU for the proxy's own work. A session
//! that needs state of its own moves to a dedicated connection (see `session.rs`).
//!
//! Writes to the server are coalesced (see [`Writes`]): while one is unanswered, new commands
//! gather and go out together once its replies are handed on.
//!
//! Each [`MuxRequest`] is a run of consecutive commands of one session; replies come back to
//! that session, in order, as [`MuxReply::Data`] chunks (a huge reply is handed on in pieces
//! instead of being held whole). If the connection breaks, every request still waiting gets
//! [`MuxReply::Failed`] with the number of commands that got no reply.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::io::Conn;
use super::upstream;
use crate::resp::ReplyParser;
use crate::route::{Backend, ConnGuard, Side};
use crate::telemetry;

/// Commands sent by one session, answered in order.
pub struct MuxRequest {
    pub wire: Bytes,
    pub count: u32,
    pub reply_to: UnboundedSender<MuxReply>,
}

/// What a session receives back.
#[derive(Debug)]
pub enum MuxReply {
    /// Reply bytes, in order; `completed` commands got their whole reply with these bytes.
    Data { bytes: Bytes, completed: u32 },
    /// The shared connection broke (or could not be opened): `count` commands got no reply.
    Failed { message: String, count: u32 },
}

/// Where sessions send their commands.
#[derive(Clone)]
pub struct MuxHandle {
    tx: UnboundedSender<MuxRequest>,
    /// The backend its task connects to.
    backend: Arc<Backend>,
}

impl MuxHandle {
    /// Starts the task that owns the shared connection to `backend`.
    pub fn spawn(backend: Arc<Backend>, connect_timeout: Duration, buffer_limit: usize) -> Self {
        let (tx, rx) = unbounded_channel();
        tokio::spawn(run(backend.clone(), rx, connect_timeout, buffer_limit));
        MuxHandle { tx, backend }
    }

    pub fn send(&self, req: MuxRequest) -> Result<(), MuxRequest> {
        self.tx.send(req).map_err(|e| e.0)
    }

    /// The task behind this handle has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The shared connections of the proxy, one per side of the route (the route table itself
/// owns no connection).
#[derive(Default)]
pub struct SharedLinks {
    slots: [ArcSwapOption<MuxHandle>; 2],
}

impl SharedLinks {
    /// The shared connection to `backend`, started on first use (and again if its task ever
    /// stopped, or if the route now names another backend for that side).
    pub fn get(
        &self,
        backend: &Arc<Backend>,
        connect_timeout: Duration,
        buffer_limit: usize,
    ) -> Arc<MuxHandle> {
        let slot = &self.slots[match backend.side {
            Side::Source => 0,
            Side::Target => 1,
        }];
        if let Some(m) = slot
            .load_full()
            .filter(|m| !m.is_closed() && Arc::ptr_eq(&m.backend, backend))
        {
            return m;
        }
        let fresh = Arc::new(MuxHandle::spawn(
            backend.clone(),
            connect_timeout,
            buffer_limit,
        ));
        slot.store(Some(fresh.clone()));
        fresh
    }
}

struct InFlight {
    remaining: u32,
    reply_to: UnboundedSender<MuxReply>,
}

const READ_CHUNK: usize = 64 * 1024;
const STREAM_THRESHOLD: usize = 256 * 1024;

async fn run(
    backend: Arc<Backend>,
    mut rx: UnboundedReceiver<MuxRequest>,
    connect_timeout: Duration,
    buffer_limit: usize,
) {
    let mut conn: Option<(Conn, ConnGuard)> = None;
    let mut out = OutQueue::default();
    let mut inbuf = BytesMut::new();
    let mut replies = Replies::default();
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut writes = Writes::default();
    loop {
        let Some((stream, _)) = &mut conn else {
            // Idle and disconnected: open the connection when the next request arrives.
            let Some(first) = rx.recv().await else { return };
            match upstream::open(&backend, connect_timeout).await {
                Ok(s) => {
                    let local = s.local_addr().ok();
                    conn = Some((s, ConnGuard::new(backend.clone(), local)));
                    accept(first, &mut out, &mut inflight);
                }
                Err(e) => {
                    telemetry::error("backend_unreachable");
                    let message = format!("ERR cutover: {e}");
                    fail(first, &message);
                    while let Ok(req) = rx.try_recv() {
                        fail(req, &message);
                    }
                }
            }
            continue;
        };
        let event = tokio::select! {
            req = rx.recv(), if out.bytes < buffer_limit => match req {
                Some(req) => {
                    accept(req, &mut out, &mut inflight);
                    // Take everything already queued: one write for all of it.
                    while out.bytes < buffer_limit {
                        match rx.try_recv() {
                            Ok(req) => accept(req, &mut out, &mut inflight),
                            Err(_) => break,
                        }
                    }
                    Ok(())
                }
                None => return,
            },
            // Also while idle: a connection the server closed (its `timeout`, CLIENT KILL)
            // is noticed and dropped before a request is written into it.
            r = stream.readable() => r,
            r = stream.writable(), if writes.may_write(&out) || stream.wants_flush() => r,
        };
        let stream = &mut *stream;
        let result = event
            .and_then(|_| write_some(stream, &mut out, &mut writes))
            .and_then(|_| read_some(stream, &mut inbuf))
            .and_then(|_| dispatch(&mut inbuf, &mut replies, &mut inflight, &mut writes));
        if result.is_ok() && writes.may_write(&out) {
            // The replies just handed on ended the write in flight, and commands are waiting.
            // Let the sessions those replies woke run first: they answer their clients and
            // queue what the clients sent meanwhile, so the next write carries all of it. The
            // next turn of this loop writes.
            tokio::task::yield_now().await;
            continue;
        }
        if let Err(e) = result {
            if e.kind() == io::ErrorKind::WouldBlock {
                continue;
            }
            tracing::warn!(backend = %backend.describe(), error = %e, in_flight = inflight.len(), "shared backend connection lost");
            telemetry::error("backend_lost");
            metrics::counter!("cutover_backend_lost_total", "side" => backend.side.as_str())
                .increment(1);
            let message = format!(
                "ERR cutover: lost the connection to {} ({e}) before the reply; the command may or may not have been applied",
                backend.describe()
            );
            for f in inflight.drain(..) {
                let _ = f.reply_to.send(MuxReply::Failed {
                    message: message.clone(),
                    count: f.remaining,
                });
            }
            conn = None;
            writes = Writes::default();
            out.clear();
            inbuf.clear();
            replies = Replies::default();
        }
    }
}

/// Below this many waiting bytes, a new write waits until the server answered the previous
/// one. Redis reads a client's commands 16 KiB at a time, so a batch that size gains nothing
/// from waiting longer.
const HOLD_BELOW: usize = 16 * 1024;

/// Coalescing of writes to the server.
///
/// Without it, a proxy that is quick to react forwards each client's command as it arrives:
/// at pipeline 1, 50 clients become dozens of small writes, each waking the server for a few
/// commands, and system calls and wake-ups (not commands) then cost the server and the proxy
/// most of their time. So while a write is unanswered, new commands wait (unless
/// [`HOLD_BELOW`] bytes have gathered) and go out together when its replies arrive. The
/// server has work the whole time (it is answering the write in flight), so nothing is
/// delayed that the server could have started; a lone client never waits (nothing is in
/// flight when its command arrives). When the replies arrive, the sessions they wake run
/// before the next write (see `run`), so that write also carries what their clients sent in
/// reply. Measured (bench/RESULTS.md, 2 cores): in alternating A/B rounds pipeline 1 went
/// from 0.80× to 0.99–1.13× direct and pipeline 16 GET from 0.70–0.76× to 0.81–0.82×; full
/// benchmark runs now give 0.94–1.03× at pipeline 1 and 0.82–0.84× at pipeline 16.
#[derive(Default)]
struct Writes {
    /// For each write not yet fully answered: the number of requests completely written when
    /// it ended (requests are numbered in the order they were accepted).
    marks: VecDeque<u64>,
    /// Requests completely written / completely answered.
    written: u64,
    answered: u64,
}

impl Writes {
    fn may_write(&self, out: &OutQueue) -> bool {
        // A write that ended inside a request: its rest goes out whatever the rule above.
        out.bytes > 0 && (out.front_started || self.marks.is_empty() || out.bytes >= HOLD_BELOW)
    }
}

fn accept(req: MuxRequest, out: &mut OutQueue, inflight: &mut VecDeque<InFlight>) {
    out.bytes += req.wire.len();
    out.chunks.push_back(req.wire);
    inflight.push_back(InFlight {
        remaining: req.count,
        reply_to: req.reply_to,
    });
}

fn fail(req: MuxRequest, message: &str) {
    let _ = req.reply_to.send(MuxReply::Failed {
        message: message.to_string(),
        count: req.count,
    });
}

/// Requests waiting to be written, kept as the sessions' own buffers and written with one
/// vectored write (no copy into a staging buffer).
#[derive(Default)]
struct OutQueue {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    /// The first chunk was written in part.
    front_started: bool,
}

impl OutQueue {
    fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
        self.front_started = false;
    }
}

/// At most this many buffers per `writev` (well under `IOV_MAX`).
const MAX_IOVECS: usize = 64;

fn write_some(stream: &mut Conn, out: &mut OutQueue, writes: &mut Writes) -> io::Result<()> {
    if stream.wants_flush() {
        // TLS records from an earlier write the socket did not take (see `proxy::io`).
        stream.flush_now()?;
    }
    if !writes.may_write(out) {
        return Ok(());
    }
    let before = writes.written;
    while out.bytes > 0 {
        let mut slices = [io::IoSlice::new(&[]); MAX_IOVECS];
        let mut used = 0;
        for (slot, chunk) in slices.iter_mut().zip(&out.chunks) {
            *slot = io::IoSlice::new(chunk);
            used += 1;
        }
        match stream.write_vectored_now(&slices[..used]) {
            Ok(mut n) => {
                out.bytes -= n;
                while n > 0 {
                    let Some(front) = out.chunks.front_mut() else {
                        break;
                    };
                    if n >= front.len() {
                        n -= front.len();
                        out.chunks.pop_front();
                        out.front_started = false;
                        writes.written += 1;
                    } else {
                        front.advance(n);
                        out.front_started = true;
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    if writes.written > before {
        writes.marks.push_back(writes.written);
    }
    Ok(())
}

fn read_some(stream: &mut Conn, inbuf: &mut BytesMut) -> io::Result<()> {
    match stream.read_now(inbuf, READ_CHUNK)? {
        Some(0) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by the server",
        )),
        _ => Ok(()),
    }
}

/// Reply framing state that lives across reads: the replies already complete for the request
/// at the head (`span` bytes, `completed` replies) wait for the rest of that request, so a
/// session gets its batch's replies in one piece and writes them to its client at once.
#[derive(Default)]
struct Replies {
    parser: ReplyParser,
    span: usize,
    completed: u32,
}

/// Hands complete replies (and big partial ones) to the sessions that asked for them.
fn dispatch(
    inbuf: &mut BytesMut,
    r: &mut Replies,
    inflight: &mut VecDeque<InFlight>,
    writes: &mut Writes,
) -> io::Result<()> {
    while let Some(head) = inflight.front_mut() {
        match r.parser.parse_len(&inbuf[r.span..]) {
            Ok(Some(len)) => {
                r.span += len;
                r.completed += 1;
                head.remaining -= 1;
                if head.remaining == 0 {
                    let bytes = inbuf.split_to(r.span).freeze();
                    let completed = std::mem::take(&mut r.completed);
                    r.span = 0;
                    let _ = head.reply_to.send(MuxReply::Data { bytes, completed });
                    inflight.pop_front();
                    writes.answered += 1;
                    while writes.marks.front().is_some_and(|&m| m <= writes.answered) {
                        writes.marks.pop_front();
                    }
                }
            }
            Ok(None) => {
                // Only a big backlog (a huge reply, or many big ones) is handed on early.
                let partial = r.parser.scanned();
                if r.span + partial >= STREAM_THRESHOLD {
                    let bytes = inbuf.split_to(r.span + partial).freeze();
                    let completed = std::mem::take(&mut r.completed);
                    r.span = 0;
                    r.parser.forwarded(partial);
                    let _ = head.reply_to.send(MuxReply::Data { bytes, completed });
                }
                return Ok(());
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }
    if !inbuf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the server sent a reply nobody asked for",
        ));
    }
    Ok(())
}
