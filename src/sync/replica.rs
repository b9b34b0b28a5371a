//! The replica link: `cutover` connects to the source as if it were one of its replicas.
//!
//! The handshake (what Redis' own `syncWithMaster` sends):
//!
//! ```text
//! PING                                  → +PONG (or -NOAUTH: AUTH comes next)
//! AUTH [user] pass                      → +OK
//! REPLCONF listening-port <port>        → +OK (errors ignored)
//! REPLCONF capa eof capa psync2         → +OK (errors ignored)
//! PSYNC <replid> <offset> | PSYNC ? -1  → +FULLRESYNC <replid> <offset> | +CONTINUE [<replid>]
//! ```
//!
//! After `+FULLRESYNC` the snapshot follows, either as `$<len>\r\n<len bytes>` (disk) or as
//! `$EOF:<40 hex>\r\n<rdb><the same 40 hex>` (diskless), possibly preceded by `\n` keep-alives.
//! Then the command stream: RESP arrays, each advancing the replication offset by its exact
//! size in bytes. The master expects `REPLCONF ACK <offset>` about once a second (and at once
//! after a diskless snapshot, before it sends any command) and answers to `REPLCONF GETACK *`.
//!
//! This module only moves bytes and counts offsets; what the bytes mean is the RDB codec's and
//! the applier's business.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, ClientError, Endpoint, Stream};
use crate::config::RedisUrl;
use crate::resp::request::encode_command;
use crate::resp::{Request, RequestParser};

/// How often an idle link acknowledges (Redis replicas do it from `replicationCron`, 1/s).
const ACK_INTERVAL: Duration = Duration::from_secs(1);

/// How the master answered `PSYNC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStart {
    /// A snapshot follows; the stream after it starts at `offset`.
    FullResync { replid: String, offset: u64 },
    /// The master continues from the offset we asked for (possibly under a new replication id).
    Continue { replid: Option<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// Connecting, TLS or `AUTH` failed (the connection layer's error names the endpoint).
    #[error("cannot connect to the source as a replica: {0}")]
    Connect(ClientError),
    #[error("replication link to {addr} failed: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "the source {addr} refused the replica handshake at {step}: {reply} (the user needs ACL rights for psync, replconf and ping)"
    )]
    Refused {
        addr: String,
        step: &'static str,
        reply: String,
    },
    #[error("the source {addr} sent something unexpected during {step}: {detail}")]
    Protocol {
        addr: String,
        step: &'static str,
        detail: String,
    },
    #[error("the source {addr} sent no data for {secs} s; the replication link is considered dead")]
    Timeout { addr: String, secs: u64 },
}

impl ReplicaError {
    /// A dropped, refused or silent connection: worth connecting again (the source may be
    /// restarting, or killed this replica's connection). A refused handshake or a stream
    /// that cannot be read is not.
    pub fn is_transient(&self) -> bool {
        match self {
            // A refused AUTH keeps its old answer ("the user needs ACL rights…" is for
            // refusals after it); a wrong certificate or setting stays wrong.
            ReplicaError::Connect(e) => e.retryable(),
            ReplicaError::Io { .. } | ReplicaError::Timeout { .. } => true,
            // A source restarting answers -LOADING until its data is loaded; -BUSY while a
            // script runs too long; -MASTERDOWN when it is itself a replica that lost its master.
            ReplicaError::Refused { reply, .. } => ["-LOADING", "-BUSY", "-MASTERDOWN"]
                .iter()
                .any(|p| reply.starts_with(p)),
            ReplicaError::Protocol { .. } => false,
        }
    }
}

/// (Not `#[from]`: that would chain the error as a source, printed twice by `{:#}`.)
impl From<ClientError> for ReplicaError {
    fn from(e: ClientError) -> Self {
        ReplicaError::Connect(e)
    }
}

/// One replication connection to a master (plain or TLS, opened by [`client::connect`]).
pub struct ReplicaLink {
    stream: Stream,
    addr: String,
    buf: BytesMut,
    parser: RequestParser,
    /// Replication offset of the next byte of the command stream.
    offset: u64,
    timeout: Duration,
    /// Until the stream's first bytes arrive after a snapshot, acknowledge often: a diskless
    /// master starts the stream only on an ACK sent after *it* considers the transfer done
    /// (its child process has exited), which can be well after our last snapshot byte.
    fast_ack_until: Option<tokio::time::Instant>,
    /// The end offset of the last `REPLCONF GETACK` not yet acknowledged with an offset that
    /// reaches it: a client of the master is in `WAIT`/`WAITAOF` (or a `FAILOVER` runs), so
    /// the link acknowledges again as soon as the caller has applied up to here, as a real
    /// replica does right after processing the `GETACK`.
    ack_due: Option<u64>,
    /// When the last `REPLCONF ACK` was sent.
    last_ack: tokio::time::Instant,
}

/// How often the link looks at the caller's applied offset while a `GETACK` waits for it.
const ACK_DUE_POLL: Duration = Duration::from_millis(1);

/// ACK interval while waiting for a diskless master to start the stream.
const FAST_ACK_INTERVAL: Duration = Duration::from_millis(10);

/// One command from the replication stream, with the offset right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommand {
    /// The command exactly as the master sent it (a RESP array).
    pub wire: bytes::Bytes,
    /// Replication offset after this command.
    pub end_offset: u64,
}

/// The longest handshake reply line accepted from a source.
const MAX_HANDSHAKE_LINE: usize = 64 * 1024;

impl ReplicaLink {
    /// Connects, authenticates and sends `PSYNC` (`resume` = last replid and the offset applied
    /// so far, i.e. [`ReplicaLink::offset`] of the previous link, or `None` for a full sync).
    /// Like Redis' own replicas, it asks for the byte after it (`PSYNC <replid> <offset + 1>`:
    /// the master numbers the bytes of its stream from 1).
    pub async fn connect(
        url: &RedisUrl,
        resume: Option<(&str, u64)>,
        listening_port: u16,
        timeout: Duration,
    ) -> Result<(ReplicaLink, SyncStart), ReplicaError> {
        let addr = url.addr();
        // The link reads every database's stream: no SELECT at login.
        let endpoint = Endpoint::new(&RedisUrl {
            db: 0,
            ..url.clone()
        })?;
        let stream = client::connect(&endpoint, timeout).await?;
        let mut link = ReplicaLink {
            stream,
            addr,
            buf: BytesMut::with_capacity(64 * 1024),
            parser: RequestParser::default(),
            offset: 0,
            timeout,
            fast_ack_until: None,
            ack_due: None,
            last_ack: tokio::time::Instant::now(),
        };
        // AUTH was sent by the connection layer; PING as Redis' replicas do (-NOPERM is
        // fine: a user with only the replication rights).
        let reply = link.call(&[b"PING"]).await?;
        if reply.starts_with('-') && !reply.starts_with("-NOAUTH") && !reply.starts_with("-NOPERM")
        {
            return Err(link.refused("PING", reply));
        }
        // Errors to REPLCONF are ignored, as Redis' own replicas do.
        let port = listening_port.to_string();
        link.call(&[b"REPLCONF", b"listening-port", port.as_bytes()])
            .await?;
        link.call(&[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"])
            .await?;
        let (replid, offset) = match resume {
            Some((id, off)) => (id.to_string(), (off + 1).to_string()),
            None => ("?".to_string(), "-1".to_string()),
        };
        let reply = link
            .call(&[b"PSYNC", replid.as_bytes(), offset.as_bytes()])
            .await?;
        let start = if let Some(rest) = reply.strip_prefix("+FULLRESYNC ") {
            let mut parts = rest.split_whitespace();
            let (Some(id), Some(off)) = (parts.next(), parts.next()) else {
                return Err(link.protocol("PSYNC", reply.clone()));
            };
            let offset = off
                .parse()
                .map_err(|_| link.protocol("PSYNC", reply.clone()))?;
            link.offset = offset;
            SyncStart::FullResync {
                replid: id.to_string(),
                offset,
            }
        } else if let Some(rest) = reply.strip_prefix("+CONTINUE") {
            link.offset = resume.map_or(0, |r| r.1);
            SyncStart::Continue {
                replid: rest.split_whitespace().next().map(str::to_string),
            }
        } else {
            return Err(link.refused("PSYNC", reply));
        };
        Ok((link, start))
    }

    /// Replication offset of the next byte of the command stream: everything before it was
    /// received (and returned by [`ReplicaLink::next_commands`], except the inline newlines
    /// of keep-alives, which are counted but need no applying). A caller that has applied every
    /// command it got may acknowledge this offset.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Receives the snapshot after `+FULLRESYNC`, handing its bytes to `sink` in pieces as they
    /// arrive (never holding it whole). Returns its size. Acknowledges at once afterwards (a
    /// diskless master sends no command before the first ACK).
    pub async fn receive_snapshot(
        &mut self,
        sink: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<u64, ReplicaError> {
        self.receive_snapshot_sized(|_| Ok(()), sink).await
    }

    /// [`ReplicaLink::receive_snapshot`], telling `size` the snapshot's length first: `Some`
    /// for a disk-based snapshot (`$<len>`), `None` for a diskless one (`$EOF:<mark>`, whose
    /// end is only known when the mark arrives).
    pub async fn receive_snapshot_sized(
        &mut self,
        size: impl FnOnce(Option<u64>) -> Result<(), String>,
        mut sink: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<u64, ReplicaError> {
        let header = loop {
            // Skip the "\n" keep-alives the master sends while it prepares the snapshot.
            while self.buf.first() == Some(&b'\n') {
                self.buf.advance(1);
            }
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.advance(end + 2);
                break line;
            }
            if self.buf.len() > 1024 {
                return Err(self.protocol("snapshot header", "line too long".into()));
            }
            self.fill().await?;
        };
        if header.starts_with('-') {
            return Err(self.refused("snapshot", header));
        }
        let Some(spec) = header.strip_prefix('$') else {
            return Err(self.protocol("snapshot header", header));
        };
        let known = spec.parse::<u64>().ok();
        size(known).map_err(|e| self.protocol("snapshot", e))?;
        let mut total = 0u64;
        let mut deliver = |bytes: &[u8], total: &mut u64| -> Result<(), String> {
            *total += bytes.len() as u64;
            sink(bytes)
        };
        if let Some(mark) = spec.strip_prefix("EOF:") {
            // Diskless: the RDB ends with the 40-byte mark; keep the last 40 bytes back until
            // we know they are not the mark.
            let mark = mark.as_bytes().to_vec();
            if mark.len() != 40 {
                return Err(self.protocol("snapshot header", header));
            }
            loop {
                if self.buf.len() >= mark.len() && self.buf.ends_with(&mark) {
                    let body = self.buf.len() - mark.len();
                    deliver(&self.buf[..body], &mut total)
                        .map_err(|e| self.protocol("snapshot", e))?;
                    self.buf.clear();
                    break;
                }
                if self.buf.len() > mark.len() {
                    let n = self.buf.len() - mark.len();
                    deliver(&self.buf[..n], &mut total)
                        .map_err(|e| self.protocol("snapshot", e))?;
                    self.buf.advance(n);
                }
                self.fill().await?;
            }
        } else {
            let len: u64 = spec
                .parse()
                .map_err(|_| self.protocol("snapshot header", header.clone()))?;
            let mut left = len;
            while left > 0 {
                if self.buf.is_empty() {
                    self.fill().await?;
                }
                let n = (self.buf.len() as u64).min(left) as usize;
                deliver(&self.buf[..n], &mut total).map_err(|e| self.protocol("snapshot", e))?;
                self.buf.advance(n);
                left -= n as u64;
            }
        }
        self.ack(self.offset).await?;
        self.fast_ack_until = Some(tokio::time::Instant::now() + Duration::from_secs(5));
        Ok(total)
    }

    /// Waits for the next commands of the stream (at least one) and returns every complete one
    /// that has arrived. `REPLCONF GETACK` is returned too (every byte of the stream advances
    /// the offset the caller applies up to; it applies nothing for it), and answered with
    /// `applied` (the offset the caller has made durable) at once and again as soon as
    /// `applied` reaches the `GETACK`'s own end (so a client's `WAIT` on the master returns as
    /// soon as its write is on the target).
    pub async fn next_commands(
        &mut self,
        applied: u64,
    ) -> Result<Vec<StreamCommand>, ReplicaError> {
        self.next_commands_with(|| applied).await
    }

    /// [`ReplicaLink::next_commands`] for a caller that applies commands concurrently:
    /// `applied` is asked afresh for every acknowledgement (the periodic ones included), so an
    /// idle link reports the latest applied offset rather than the one at the time of the call.
    pub async fn next_commands_with(
        &mut self,
        applied: impl Fn() -> u64,
    ) -> Result<Vec<StreamCommand>, ReplicaError> {
        loop {
            let mut out = Vec::new();
            let mut getack = false;
            loop {
                // Keep-alive newlines can precede the stream; they are not counted.
                while self.buf.first() == Some(&b'\n') && !self.parser.is_streaming() {
                    self.buf.advance(1);
                }
                match self.parser.parse(&self.buf) {
                    Ok(Some(Request::Array { len, args, .. })) => {
                        let is_getack = args
                            .get(&self.buf, 0)
                            .is_some_and(|a| a.eq_ignore_ascii_case(b"REPLCONF"))
                            && args
                                .get(&self.buf, 1)
                                .is_some_and(|a| a.eq_ignore_ascii_case(b"GETACK"));
                        let wire = self.buf.split_to(len).freeze();
                        self.offset += len as u64;
                        if is_getack {
                            getack = true;
                            self.ack_due = Some(self.offset);
                        }
                        out.push(StreamCommand {
                            wire,
                            end_offset: self.offset,
                        });
                    }
                    Ok(Some(Request::Inline { len, .. } | Request::Empty { len })) => {
                        self.buf.advance(len);
                        self.offset += len as u64;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(self.protocol("command stream", e.to_string())),
                }
            }
            if getack {
                self.ack(applied()).await?;
            } else {
                self.ack_if_due(applied()).await?;
            }
            if !out.is_empty() {
                return Ok(out);
            }
            self.fill_acking(&applied).await?;
        }
    }

    /// Waits for data, sending `REPLCONF ACK` once a second meanwhile: the master expects it
    /// (and a diskless master starts the stream only on an ACK that arrives after it has
    /// finished the snapshot on its side).
    async fn fill_acking(&mut self, applied: &impl Fn() -> u64) -> Result<(), ReplicaError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            self.buf.reserve(64 * 1024);
            let fast = self
                .fast_ack_until
                .is_some_and(|t| tokio::time::Instant::now() < t);
            let tick = tokio::time::sleep(if self.ack_due.is_some() {
                ACK_DUE_POLL
            } else if fast {
                FAST_ACK_INTERVAL
            } else {
                ACK_INTERVAL
            });
            tokio::select! {
                r = self.stream.read_buf(&mut self.buf) => {
                    return match r {
                        Ok(0) => Err(self.io(std::io::ErrorKind::UnexpectedEof.into())),
                        Ok(_) => {
                            self.fast_ack_until = None;
                            Ok(())
                        }
                        Err(e) => Err(self.io(e)),
                    };
                }
                _ = tick => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ReplicaError::Timeout {
                            addr: self.addr.clone(),
                            secs: self.timeout.as_secs(),
                        });
                    }
                    if self.last_ack.elapsed() >= ACK_INTERVAL || fast {
                        self.ack(applied()).await?;
                    } else {
                        // A GETACK waits: acknowledge once the caller applied up to it.
                        self.ack_if_due(applied()).await?;
                    }
                }
            }
        }
    }

    /// Acknowledges `applied` if it reached the last `GETACK` waiting for it.
    async fn ack_if_due(&mut self, applied: u64) -> Result<(), ReplicaError> {
        match self.ack_due {
            Some(due) if applied >= due => self.ack(applied).await,
            _ => Ok(()),
        }
    }

    /// `REPLCONF ACK <offset>`: tells the master how far we have applied.
    pub async fn ack(&mut self, offset: u64) -> Result<(), ReplicaError> {
        let mut wire = Vec::new();
        let off = offset.to_string();
        encode_command(&[&b"REPLCONF"[..], b"ACK", off.as_bytes()], &mut wire);
        self.last_ack = tokio::time::Instant::now();
        if self.ack_due.is_some_and(|due| offset >= due) {
            self.ack_due = None;
        }
        self.stream.write_all(&wire).await.map_err(|e| self.io(e))
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<String, ReplicaError> {
        let mut wire = Vec::new();
        encode_command(args, &mut wire);
        self.stream.write_all(&wire).await.map_err(|e| self.io(e))?;
        loop {
            while self.buf.first() == Some(&b'\n') {
                self.buf.advance(1);
            }
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.advance(end + 2);
                return Ok(line);
            }
            // A handshake reply is one short line (`+OK`, `+FULLRESYNC <id> <offset>`, an
            // error): a peer that sends more without a line end is not a Redis.
            if self.buf.len() > MAX_HANDSHAKE_LINE {
                let step =
                    String::from_utf8_lossy(args.first().copied().unwrap_or_default()).into_owned();
                return Err(self.protocol(
                    "handshake",
                    format!("the reply to {step} is longer than {MAX_HANDSHAKE_LINE} bytes without a line end"),
                ));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), ReplicaError> {
        self.buf.reserve(64 * 1024);
        match tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(ReplicaError::Timeout {
                addr: self.addr.clone(),
                secs: self.timeout.as_secs(),
            }),
            Ok(Ok(0)) => Err(self.io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.io(e)),
        }
    }

    fn io(&self, source: std::io::Error) -> ReplicaError {
        ReplicaError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    fn refused(&self, step: &'static str, reply: String) -> ReplicaError {
        ReplicaError::Refused {
            addr: self.addr.clone(),
            step,
            reply,
        }
    }

    fn protocol(&self, step: &'static str, detail: String) -> ReplicaError {
        ReplicaError::Protocol {
            addr: self.addr.clone(),
            step,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors() {
        let refused = |reply: &str| ReplicaError::Refused {
            addr: "a".into(),
            step: "PSYNC",
            reply: reply.into(),
        };
        assert!(refused("-LOADING Redis is loading the dataset in memory").is_transient());
        assert!(!refused("-NOPERM this user has no permissions").is_transient());
        assert!(
            ReplicaError::Timeout {
                addr: "a".into(),
                secs: 1
            }
            .is_transient()
        );
    }
}
