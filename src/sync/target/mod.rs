//! The target writer: one connection to the target server, commands pipelined with a bounded
//! number in flight, every reply checked.
//!
//! The writer is synchronous (a blocking [`crate::client::BlockingStream`], plain or TLS,
//! opened by [`crate::client::connect_blocking`]): it is driven by the sync
//! engine's applier thread, which has nothing else to do while it waits for the target. A
//! server always reads its clients' input and buffers the replies, so writing a window of
//! commands before reading their replies cannot deadlock; the window bounds what the target
//! buffers for us.
//!
//! Each command carries a [`Tag`]: the key it writes (for the error message if the target
//! refuses it) and, for commands of the replication stream, the replication offset right after
//! it. [`TargetWriter::confirmed_offset`] is the highest offset whose command (and everything
//! before it) the target has answered: what the engine may acknowledge to the source.
//!
//! The target's version comes from `INFO server` (`valkey_version` first: Valkey also reports
//! a `redis_version` of 7.2.4 for compatibility) and decides the newest RDB version its
//! `RESTORE` accepts ([`max_rdb_version`]).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::Duration;

use crate::client::{self, BlockingStream, Endpoint, Info, Value};
use crate::config::RedisUrl;
use crate::rdb::RdbVersion;
use crate::resp::ReplyParser;
use crate::resp::request::encode_command;

mod error;
mod info;
pub mod memory;
mod reply;
mod sink;
mod tag;
mod txn;

pub use error::TargetError;
pub use info::{TargetInfo, max_rdb_version};
pub use reply::{array_elements, array_errors, array_unchanged, first_error_in_array, reply_text};
pub use sink::Sink;
pub use tag::{Refusal, Tag, show_key};
use txn::Txn;

/// Commands in flight before the writer waits for replies.
pub const DEFAULT_WINDOW: usize = 1024;
/// Unsent bytes gathered before a write.
const FLUSH_BYTES: usize = 256 * 1024;

/// The bulk strings of a flat array reply (`*2\r\n$9\r\ndatabases\r\n$2\r\n16\r\n`), or
/// of a RESP3 map; anything else gives none.
fn array_bulks(reply: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut lines = reply
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let Some(head) = lines.next() else {
        return out;
    };
    if !matches!(head.first(), Some(b'*' | b'%')) {
        return out;
    }
    while let Some(l) = lines.next() {
        if l.first() == Some(&b'$') {
            if let Some(v) = lines.next() {
                out.push(v);
            }
        }
    }
    out
}

/// A blocking connection with one request at a time (`call`) or pipelined writes (`send`).
pub struct TargetWriter {
    stream: BlockingStream,
    addr: String,
    info: TargetInfo,
    /// The server's `run_id` when this connection was made (`INFO server`): a server that
    /// restarted has another one, and this connection is dead.
    run_id: Option<String>,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    parser: ReplyParser,
    inflight: VecDeque<Tag>,
    window: usize,
    db: u64,
    /// How many databases the target has (`CONFIG GET databases`; `None`: it would not say).
    databases: Option<u64>,
    confirmed: Option<u64>,
    sent: u64,
    answered: u64,
    /// Read buffer reused by `fill`.
    scratch: Vec<u8>,
    /// The transaction being queued ([`TargetWriter::begin_txn`]).
    txn: Option<Txn>,
    /// The command tags of each transaction whose `EXEC` is in flight, oldest first (to name
    /// a command that fails inside `EXEC`).
    execs: VecDeque<(u64, Vec<Tag>)>,
    /// Transactions begun so far.
    txn_seq: u64,
    /// The [`IMPORT_EPOCH`] for which `CLIENT IMPORT-SOURCE ON` was last sent (Valkey 8.1+).
    import_epoch: u64,
    /// Commands that failed inside an `EXEC`, for the caller to report.
    exec_errors: Vec<Refusal>,
    /// [`Tag::must_change`] commands answered `0` or nil inside an `EXEC`.
    unchanged: Vec<Tag>,
    /// While set, every command queued is part of the copy of a key in this stream
    /// database ([`Tag::repair`]; see [`Self::set_repair_tags`]).
    repair_db: Option<u64>,
}

/// Bumped whenever cutover changes `import-mode` on a side (`cutover::import`): each writer
/// sends `CLIENT IMPORT-SOURCE ON` again before its next transaction, so that a side that
/// entered import mode shows our writer the keys it keeps past their TTL.
static IMPORT_EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// See [`IMPORT_EPOCH`].
pub fn import_mode_changed() {
    IMPORT_EPOCH.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

/// The address (`host:port`) of the side cutover keeps in import mode now (`cutover::import`:
/// the side the applying link writes to), `None` when none is.
///
/// A Valkey that restarts comes back with its configured `import-mode` (`no`), so a writer
/// that connects to that side enters import mode again ([`TargetWriter::connect`]) — while
/// holding this lock, so that a move, which changes the value here (under the lock) *before*
/// it changes the sides' modes, either is seen by the writer or overwrites what the writer
/// set. One value, changed under one lock.
static IMPORT_SIDE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Records the side in import mode (see [`IMPORT_SIDE`]) unless a writer holds the lock
/// right now (`false`: try again; the caller must not block an async task on it).
pub fn try_set_import_side(addr: Option<String>) -> bool {
    match IMPORT_SIDE.try_lock() {
        Ok(mut side) => {
            *side = addr;
            true
        }
        Err(std::sync::TryLockError::Poisoned(p)) => {
            *p.into_inner() = addr;
            true
        }
        Err(std::sync::TryLockError::WouldBlock) => false,
    }
}

/// The client name of the sync's connections to the side it writes into.
pub const CLIENT_NAME: &str = "cutover-sync";

impl TargetWriter {
    /// Connects, logs in (`AUTH` and `SELECT` from the URL) and reads `INFO server`.
    pub fn connect(url: &RedisUrl, timeout: Duration) -> Result<TargetWriter, TargetError> {
        // A generous read bound: a big RESTORE or a slow FUNCTION LOAD may take a while.
        let mut w = Self::open(
            url,
            timeout,
            timeout.max(Duration::from_secs(60)),
            DEFAULT_WINDOW,
        )?;
        // Named, so that the cutover tells this connection from a client writing directly
        // (`CLIENT LIST`); a server that refuses the name is fine.
        let _ = w.call(&[b"CLIENT", b"SETNAME", CLIENT_NAME.as_bytes()])?;
        // (A managed service may refuse CONFIG: then a missing database shows as an error
        // of its SELECT.)
        let reply = w.call(&[b"CONFIG", b"GET", b"databases"])?;
        w.databases = array_bulks(&reply)
            .get(1)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        let reply = w.call(&[b"INFO", b"server"])?;
        let info = match Value::decode(&reply, 2).as_ref().and_then(Info::from_value) {
            Some(info) => info,
            // An error reply is refused; anything else has no version.
            None => Info::new(w.check("INFO server", reply)?),
        };
        w.run_id = info.field("run_id").map(str::to_string);
        w.info = TargetInfo::from_info(&info).map_err(|detail| TargetError::Protocol {
            addr: w.addr.clone(),
            detail,
        })?;
        w.reenter_import_mode()?;
        w.import_source()?;
        Ok(w)
    }

    /// On Valkey 8.1+: a new connection to the side cutover keeps in import mode
    /// ([`IMPORT_SIDE`]) finds it in import mode, or puts it back (a restarted Valkey comes
    /// back with its configured `import-mode no`, and then expires the keys whose refresh
    /// is still on its way). A side that refuses is a warning, as at start.
    fn reenter_import_mode(&mut self) -> Result<(), TargetError> {
        if !(self.info.valkey && self.info.version >= (8, 1, 0)) {
            return Ok(());
        }
        let side = IMPORT_SIDE.lock().unwrap_or_else(|p| p.into_inner());
        if side.as_deref() != Some(self.addr.as_str()) {
            return Ok(());
        }
        let reply = self.call(&[b"CONFIG", b"GET", b"import-mode"])?;
        if array_bulks(&reply).get(1).copied() == Some(&b"yes"[..]) {
            return Ok(());
        }
        let reply = self.call(&[b"CONFIG", b"SET", b"import-mode", b"yes"])?;
        if reply.starts_with(b"-") {
            tracing::warn!(
                addr = %self.addr,
                reply = %String::from_utf8_lossy(&reply).trim_end(),
                "the side the link writes to left import mode (restarted?) and refuses to enter it again; keys whose TTL is refreshed late may be lost there"
            );
        } else {
            tracing::info!(
                addr = %self.addr,
                "the side the link writes to had left import mode (restarted?): it is in import mode again"
            );
        }
        drop(side);
        Ok(())
    }

    /// A connection through [`client::connect_blocking`] (TCP or TLS, `AUTH`, `SELECT` of the
    /// URL's database); no INFO probe.
    fn open(
        url: &RedisUrl,
        timeout: Duration,
        read_timeout: Duration,
        window: usize,
    ) -> Result<TargetWriter, TargetError> {
        let endpoint = Endpoint::new(url)?;
        let (stream, _) = client::connect_blocking(&endpoint, timeout)?.into_parts();
        let _ = stream.set_read_timeout(Some(read_timeout));
        Ok(TargetWriter {
            stream,
            addr: url.addr(),
            run_id: None,
            info: TargetInfo {
                valkey: false,
                version: (0, 0, 0),
                max_rdb: RdbVersion(0),
            },
            out: Vec::new(),
            inbuf: Vec::with_capacity(64 * 1024),
            parser: ReplyParser::default(),
            inflight: VecDeque::new(),
            window,
            db: u64::from(url.db),
            databases: None,
            confirmed: None,
            sent: 0,
            answered: 0,
            scratch: Vec::new(),
            txn: None,
            execs: VecDeque::new(),
            txn_seq: 0,
            import_epoch: u64::MAX,
            exec_errors: Vec::new(),
            unchanged: Vec::new(),
            repair_db: None,
        })
    }

    /// On Valkey 8.1+, after `import-mode` changed (or on a new connection): `CLIENT
    /// IMPORT-SOURCE ON`, so that keys the side keeps past their TTL in import mode are
    /// visible to this writer (refused outside import mode: that is fine).
    fn import_source(&mut self) -> Result<(), TargetError> {
        if !(self.info.valkey && self.info.version >= (8, 1, 0)) {
            return Ok(());
        }
        let epoch = IMPORT_EPOCH.load(std::sync::atomic::Ordering::Acquire);
        if epoch != self.import_epoch {
            self.import_epoch = epoch;
            self.send(
                &[&b"CLIENT"[..], b"IMPORT-SOURCE", b"ON"],
                Tag {
                    what: Cow::Borrowed("CLIENT IMPORT-SOURCE ON"),
                    tolerate_error: true,
                    ..Tag::default()
                },
            )?;
        }
        Ok(())
    }

    /// What the target is.
    pub fn info(&self) -> &TargetInfo {
        &self.info
    }

    /// The server's `run_id` when this connection was made (`None`: it did not say).
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    /// Whether the server closed this connection, seen without a round trip (`Some` with
    /// what was seen). With nothing in flight the server has nothing to say, so a socket that
    /// reads end-of-stream (or an error) now was closed: a restart, or the server's idle
    /// `timeout`. Bytes waiting are left to the next read (over TLS they may be a session
    /// ticket, not a reply). With commands in flight nothing is checked (`None`). Two `fcntl`
    /// and one `recv(MSG_PEEK)`: for idle moments, not per command.
    pub fn closed_by_server(&self) -> Option<String> {
        if self.in_flight() > 0 || !self.out.is_empty() {
            return None;
        }
        let tcp = self.stream.tcp();
        if tcp.set_nonblocking(true).is_err() {
            return None;
        }
        let mut byte = [0u8; 1];
        let seen = tcp.peek(&mut byte);
        let _ = tcp.set_nonblocking(false);
        match seen {
            Ok(0) => Some("the server closed the connection".into()),
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// The target's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sets the number of commands in flight (at least 1).
    pub fn set_window(&mut self, window: usize) {
        self.window = window.max(1);
    }

    /// The database later commands go to (as far as the writer knows).
    pub fn db(&self) -> u64 {
        self.db
    }

    /// Records a database change made by a command the caller sent itself.
    pub fn set_db(&mut self, db: u64) {
        self.db = db;
    }

    /// How many databases the target has, when it says (`CONFIG GET databases`).
    pub fn databases(&self) -> Option<u64> {
        self.databases
    }

    /// Refuses a database the target does not have (a `SELECT` of it would fail, and the
    /// writes pipelined behind it would land in the current database).
    pub fn check_db(&self, db: u64) -> Result<(), TargetError> {
        match self.databases {
            Some(n) if db >= n => Err(TargetError::NoSuchDb {
                addr: self.addr.clone(),
                db,
                databases: n,
            }),
            _ => Ok(()),
        }
    }

    /// Sends `SELECT db` unless it is the current database.
    pub fn select(&mut self, db: u64) -> Result<(), TargetError> {
        self.check_db(db)?;
        if db != self.db {
            let n = db.to_string();
            self.send(
                &[&b"SELECT"[..], n.as_bytes()],
                Tag {
                    what: Cow::Borrowed("SELECT"),
                    ..Tag::default()
                },
            )?;
            self.db = db;
        }
        Ok(())
    }

    /// Queues a command (pipelined); waits for replies while the window is full.
    pub fn send(&mut self, args: &[impl AsRef<[u8]>], tag: Tag) -> Result<(), TargetError> {
        let start = self.out.len();
        encode_command(args, &mut self.out);
        self.queued(tag, start)
    }

    /// Queues a command already in RESP form.
    pub fn send_wire(&mut self, wire: &[u8], tag: Tag) -> Result<(), TargetError> {
        let start = self.out.len();
        self.out.extend_from_slice(wire);
        self.queued(tag, start)
    }

    /// Marks the commands queued from now on (`Some(db)`) as the copy of a key of stream
    /// database `db` ([`Tag::repair`]: a refusal leaves the key unrepaired instead of
    /// stopping the link), until `None`. For commands written by another layer (the snapshot
    /// converter).
    pub fn set_repair_tags(&mut self, db: Option<u64>) {
        self.repair_db = db;
    }

    fn queued(&mut self, mut tag: Tag, start: usize) -> Result<(), TargetError> {
        if let Some(db) = self.repair_db {
            tag.repair = true;
            tag.stream_db = db;
        }
        if let Some(txn) = &mut self.txn {
            txn.wire.extend_from_slice(&self.out[start..]);
            txn.ends.push(txn.wire.len());
            tag.in_txn = true;
            tag.txn_seq = txn.seq;
        }
        self.inflight.push_back(tag);
        self.sent += 1;
        if self.out.len() >= FLUSH_BYTES || self.inflight.len() >= self.window {
            self.flush()?;
        }
        while self.inflight.len() >= self.window {
            self.read_reply()?;
        }
        Ok(())
    }

    /// Everything up to replication offset `offset` needs no command (it was skipped): it is
    /// confirmed together with the last command in flight, or at once if there is none.
    pub fn mark_offset(&mut self, offset: u64) {
        match self.inflight.back_mut() {
            Some(t) => t.offset = Some(offset),
            None => self.confirmed = Some(offset),
        }
    }

    /// The replication offset of the last stream command the target has answered.
    pub fn confirmed_offset(&self) -> Option<u64> {
        self.confirmed
    }

    /// Commands sent / answered so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.sent, self.answered)
    }

    /// Commands not answered yet.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Writes what is queued.
    pub fn flush(&mut self) -> Result<(), TargetError> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.stream.write_all(&out).map_err(|e| self.io(e))?;
            self.out = out;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads the replies that have already arrived, without waiting.
    pub fn poll(&mut self) -> Result<(), TargetError> {
        self.flush()?;
        self.stream.set_nonblocking(true).map_err(|e| self.io(e))?;
        let res = (|| {
            while !self.inflight.is_empty() {
                if self.take_reply()? {
                    continue;
                }
                match self.fill() {
                    Ok(()) => {}
                    Err(TargetError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::WouldBlock =>
                    {
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })();
        self.stream.set_nonblocking(false).map_err(|e| self.io(e))?;
        res
    }

    /// Sends everything and waits until every command is answered.
    pub fn drain(&mut self) -> Result<(), TargetError> {
        self.flush()?;
        while !self.inflight.is_empty() {
            self.read_reply()?;
        }
        Ok(())
    }

    /// One command, waiting for its reply (after everything in flight). Returns the reply's
    /// bytes (RESP).
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, TargetError> {
        self.drain()?;
        encode_command(args, &mut self.out);
        self.flush()?;
        loop {
            if let Some(info) = self.parser.parse(&self.inbuf).map_err(|e| self.proto(e))? {
                let reply = self.inbuf.drain(..info.len).collect();
                return Ok(reply);
            }
            self.fill()?;
        }
    }

    /// Several commands pipelined, waiting for all their replies (after everything in
    /// flight). Returns each reply's bytes (RESP), in order.
    pub fn call_all(&mut self, cmds: &[Vec<&[u8]>]) -> Result<Vec<Vec<u8>>, TargetError> {
        self.drain()?;
        for args in cmds {
            encode_command(args, &mut self.out);
        }
        self.flush()?;
        let mut replies = Vec::with_capacity(cmds.len());
        while replies.len() < cmds.len() {
            match self.parser.parse(&self.inbuf).map_err(|e| self.proto(e))? {
                Some(info) => replies.push(self.inbuf.drain(..info.len).collect()),
                None => self.fill()?,
            }
        }
        Ok(replies)
    }

    /// Turns a `call` reply into text, or an error naming `step`.
    fn check(&self, step: &str, reply: Vec<u8>) -> Result<String, TargetError> {
        let text = reply_text(&reply);
        if reply.first().is_some_and(|b| *b == b'-' || *b == b'!') {
            return Err(TargetError::Refused {
                addr: self.addr.clone(),
                step: step.to_string(),
                reply: text,
            });
        }
        Ok(text)
    }

    fn read_reply(&mut self) -> Result<(), TargetError> {
        loop {
            if self.take_reply()? {
                return Ok(());
            }
            self.fill()?;
        }
    }

    /// Takes one complete reply from the buffer, if there is one.
    fn take_reply(&mut self) -> Result<bool, TargetError> {
        let Some(info) = self.parser.parse(&self.inbuf).map_err(|e| self.proto(e))? else {
            return Ok(false);
        };
        let reply: Vec<u8> = self.inbuf.drain(..info.len).collect();
        if info.is_push() {
            return Ok(true);
        }
        let Some(tag) = self.inflight.pop_front() else {
            return Err(TargetError::Protocol {
                addr: self.addr.clone(),
                detail: format!("a reply nobody asked for: {}", reply_text(&reply)),
            });
        };
        self.answered += 1;
        if tag.in_txn
            && let Some(txn) = &mut self.txn
            && txn.seq == tag.txn_seq
        {
            if info.is_error() {
                txn.refused.push((txn.tags.len(), reply_text(&reply)));
            }
            txn.tags.push(tag);
            return Ok(true);
        }
        if tag.in_txn
            && let Some((_, tags)) = self.execs.iter_mut().find(|(seq, _)| *seq == tag.txn_seq)
        {
            // A transaction whose `EXEC` was sent without waiting for its `+QUEUED`s.
            if info.is_error() {
                let text = reply_text(&reply);
                // A refusal of every write (out of memory, a failing disk…) refuses the later
                // batches' position writes too: nothing past the stored position was applied,
                // and a new run resumes exactly from there.
                let target_wide = [
                    "OOM",
                    "MISCONF",
                    "LOADING",
                    "BUSY",
                    "MASTERDOWN",
                    "READONLY",
                    "NOREPLICAS",
                ]
                .iter()
                .any(|p| text.starts_with(p));
                // The condition may have ended while the batches behind this one were
                // processed (a script finished, memory was freed, a replica came): one of
                // them applied — with its position — after this one was refused, and a run
                // started again would never apply this one. Read every reply to know.
                if target_wide && let Some(applied) = self.applied_behind()? {
                    return Err(TargetError::Unapplied {
                        what: format!(
                            "the target {} refused a batch of stream commands ({} of key '{}': {text}) and then applied a later batch ({applied}) before cutover could stop sending: the refused batch's writes are missing",
                            self.addr,
                            tag.what,
                            show_key(&tag.key)
                        ),
                    });
                }
                return Err(TargetError::Refused {
                    addr: self.addr.clone(),
                    step: tag.what.to_string(),
                    reply: if target_wide {
                        format!(
                            "{text} — the target refuses every write now; nothing past the stored position was applied"
                        )
                    } else {
                        format!(
                            "{text} — refused while queueing, after the batches behind it were sent: the target may miss this batch while later ones were applied; copy again from scratch (`cutover sync --fresh`)"
                        )
                    },
                });
            }
            tags.push(tag);
            return Ok(true);
        }
        if tag.txn_exec {
            let (_, tags) = self.execs.pop_front().unwrap_or_default();
            if reply.first() == Some(&b'*') && !reply.starts_with(b"*-1") {
                for (i, error) in array_errors(&reply) {
                    self.exec_errors.push(Refusal {
                        tag: tags.get(i).cloned().unwrap_or_default(),
                        error,
                    });
                }
                if tags.iter().any(|t| t.must_change) {
                    for i in array_unchanged(&reply) {
                        if let Some(t) = tags.get(i).filter(|t| t.must_change) {
                            self.unchanged.push(t.clone());
                        }
                    }
                }
                if tags.iter().any(|t| t.suspect_reply.is_some()) {
                    for (i, element) in array_elements(&reply) {
                        if let Some(t) = tags
                            .get(i)
                            .filter(|t| t.suspect_reply.as_deref() == Some(element))
                        {
                            self.unchanged.push(t.clone());
                        }
                    }
                }
                if let Some(off) = tag.offset {
                    self.confirmed = Some(off);
                }
                return Ok(true);
            }
            return Err(TargetError::Refused {
                addr: self.addr.clone(),
                step: tag.what.to_string(),
                reply: if info.is_error() {
                    reply_text(&reply)
                } else {
                    format!("unexpected reply {}", reply_text(&reply))
                },
            });
        }
        if info.is_error() && !tag.tolerate_error {
            let step = if tag.key.is_empty() {
                tag.what.to_string()
            } else {
                format!("{} of key '{}'", tag.what, show_key(&tag.key))
            };
            return Err(TargetError::Refused {
                addr: self.addr.clone(),
                step,
                reply: reply_text(&reply),
            });
        }
        if tag.exec
            && !tag.tolerate_error
            && let Some(err) = first_error_in_array(&reply)
        {
            return Err(TargetError::Refused {
                addr: self.addr.clone(),
                step: format!("{} (a command inside the transaction)", tag.what),
                reply: err,
            });
        }
        if let Some(off) = tag.offset {
            self.confirmed = Some(off);
        }
        Ok(true)
    }

    /// After a target-wide refusal of a pipelined batch: reads the replies of everything
    /// still in flight, and says which later transaction the target applied anyway (its
    /// `EXEC` answered with an array), if one did.
    fn applied_behind(&mut self) -> Result<Option<String>, TargetError> {
        self.flush()?;
        let mut applied = None;
        while let Some(tag) = self.inflight.front().cloned() {
            let Some(info) = self.parser.parse(&self.inbuf).map_err(|e| self.proto(e))? else {
                self.fill()?;
                continue;
            };
            let reply: Vec<u8> = self.inbuf.drain(..info.len).collect();
            if info.is_push() {
                continue;
            }
            self.inflight.pop_front();
            self.answered += 1;
            if tag.txn_exec {
                self.execs.pop_front();
                if applied.is_none() && reply.first() == Some(&b'*') && !reply.starts_with(b"*-1") {
                    applied = Some(match tag.offset {
                        Some(off) => format!("up to stream offset {off}"),
                        None => tag.what.to_string(),
                    });
                }
            }
        }
        Ok(applied)
    }

    fn fill(&mut self) -> Result<(), TargetError> {
        // A buffer kept across reads: a fresh 64 KiB array each time costs a memset per read,
        // and the stream makes many small ones.
        let mut chunk = std::mem::take(&mut self.scratch);
        if chunk.is_empty() {
            chunk = vec![0u8; 64 * 1024];
        }
        let res = self.stream.read(&mut chunk);
        if let Ok(n) = res {
            self.inbuf.extend_from_slice(&chunk[..n]);
        }
        self.scratch = chunk;
        match res {
            Ok(0) => Err(self.io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    fn io(&self, source: std::io::Error) -> TargetError {
        TargetError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    fn proto(&self, e: crate::resp::ReplyError) -> TargetError {
        TargetError::Protocol {
            addr: self.addr.clone(),
            detail: e.to_string(),
        }
    }
}
