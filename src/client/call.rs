//! One command, one reply: [`Client`] (async; the blocking flavour is
//! [`super::BlockingClient`]).
//!
//! A command is encoded as a RESP array; its reply is framed by
//! [`crate::resp::ReplyParser`] (RESP2 and RESP3, any nesting the parser's own bound
//! allows) and returned as its raw bytes. A reply longer than the client's bound
//! ([`MAX_REPLY`] unless set) is refused as a protocol error instead of growing the buffer
//! without end. An error reply (`-…`, `!…`) is [`ClientError::Refused`], naming the command.
//!
//! Both keep the bytes read past a reply in their buffer; [`Client::into_parts`] hands the
//! stream and those bytes to a layer that takes over (the replica link, a pipeline).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::ClientError;
use super::info::Info;
use super::stream::Stream;
use super::tls;
use super::value::Value;
use crate::resp::ReplyParser;
use crate::resp::request::encode_command;

/// The longest reply [`Client::call`] accepts by default (64 MiB).
pub const MAX_REPLY: usize = 64 * 1024 * 1024;

/// The command's name, upper-cased, for messages.
pub(super) fn command_name(args: &[&[u8]]) -> String {
    args.first()
        .map(|n| String::from_utf8_lossy(n).to_ascii_uppercase())
        .unwrap_or_default()
}

/// A reply as one line of text, for messages.
pub(super) fn reply_text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply)
        .trim_end()
        .replace("\r\n", " ")
}

/// Turns an I/O error on an established connection into a [`ClientError`] (a TLS alert
/// explained, a closed connection hinted at).
pub(super) fn io_error(
    endpoint: &super::Endpoint,
    e: std::io::Error,
    during_login: bool,
) -> ClientError {
    if let Some(t) = tls::rustls_error(&e) {
        return ClientError::Tls {
            endpoint: endpoint.to_string(),
            reason: tls::explain(endpoint, t),
        };
    }
    let closed = matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    );
    let hint = if closed && during_login && !endpoint.is_tls() {
        " (the server closed the connection at once: if this is a TLS port, use rediss://)"
            .to_string()
    } else if closed && during_login {
        " (the server closed the connection after the TLS handshake: it may require a client certificate, set cert_file and key_file)".to_string()
    } else {
        String::new()
    };
    ClientError::Io {
        endpoint: endpoint.to_string(),
        cause: e,
        hint,
    }
}

/// `reply` unless it is an error reply to `args` (shared by both flavours).
pub(super) fn check_reply(
    endpoint: &super::Endpoint,
    args: &[&[u8]],
    reply: Vec<u8>,
) -> Result<Vec<u8>, ClientError> {
    if matches!(reply.first(), Some(b'-' | b'!')) {
        return Err(ClientError::Refused {
            endpoint: endpoint.to_string(),
            command: command_name(args),
            reply: reply_text(&reply),
        });
    }
    Ok(reply)
}

pub(super) fn protocol_error(endpoint: &super::Endpoint, detail: String) -> ClientError {
    ClientError::Protocol {
        endpoint: endpoint.to_string(),
        detail,
    }
}

/// The async control client: one connection, commands and their replies in order, each
/// exchange bounded in time.
///
/// * [`Client::open`] connects and logs in ([`super::connect`]: TLS, `AUTH`, `SELECT` of the
///   endpoint's database) and bounds every later exchange by the same time limit.
/// * [`Client::call`] (raw reply, an error reply is `Err`) and [`Client::query`] (decoded
///   [`Value`], an error reply is `Ok(Value::Error)`): one command, one reply.
/// * Pipelining: [`Client::write`] several encoded commands, then [`Client::read_reply`] /
///   [`Client::read_if`] each reply in order.
/// * Every write and every reply read ends within the time limit and before the deadline
///   ([`Client::set_deadline`], a move's pause limit); one that does not is
///   [`ClientError::Deadline`], and the connection is not used again
///   ([`ClientError::Unusable`]): a late reply would be taken for the next command's.
///
/// Every exchange goes through [`Client::call_raw`] or the pipelined reads: that is where
/// `MOVED`/`ASK` replies are to be followed (the seam for clusters, see the module doc).
pub struct Client {
    stream: Stream,
    endpoint: super::Endpoint,
    buf: BytesMut,
    parser: ReplyParser,
    max_reply: usize,
    login: bool,
    /// The database selected on this connection (as far as this client knows).
    db: u32,
    /// Every write and reply read ends within this time (`None`: unbounded, the login's
    /// own time limit applies)…
    limit: Option<Duration>,
    /// … and before this instant, when set.
    deadline: Option<tokio::time::Instant>,
    /// An exchange ran out of time: the connection is not used again.
    broken: bool,
}

impl Client {
    /// Wraps a connected stream (no time limit: see [`Client::set_time_limit`]).
    pub fn new(stream: Stream, endpoint: &super::Endpoint) -> Client {
        Client {
            stream,
            endpoint: endpoint.clone(),
            buf: BytesMut::with_capacity(4096),
            parser: ReplyParser::default(),
            max_reply: MAX_REPLY,
            login: false,
            db: endpoint.db(),
            limit: None,
            deadline: None,
            broken: false,
        }
    }

    /// Connects and logs in within `timeout` (as a whole); every later exchange is bounded
    /// by `timeout` too.
    pub async fn open(
        endpoint: &super::Endpoint,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let stream = match tokio::time::timeout(timeout, super::connect(endpoint, timeout)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ClientError::Timeout {
                    endpoint: endpoint.to_string(),
                    what: "the connection",
                    ms: timeout.as_millis() as u64,
                    hint: String::new(),
                });
            }
        };
        let mut client = Client::new(stream, endpoint);
        client.limit = Some(timeout);
        Ok(client)
    }

    /// The server this client talks to.
    pub fn endpoint(&self) -> &super::Endpoint {
        &self.endpoint
    }

    /// Marks the exchanges that follow as the login (for the hints of a closed connection).
    pub(super) fn set_login(&mut self, on: bool) {
        self.login = on;
    }

    /// Bounds the size of one reply.
    pub fn set_max_reply(&mut self, bytes: usize) {
        self.max_reply = bytes;
    }

    /// Bounds every later write and reply read by `limit`.
    pub fn set_time_limit(&mut self, limit: Duration) {
        self.limit = Some(limit);
    }

    /// Bounds every later write and reply read by `deadline` as well (`None`: the time limit
    /// only).
    pub fn set_deadline(&mut self, deadline: Option<std::time::Instant>) {
        self.deadline = deadline.map(tokio::time::Instant::from_std);
    }

    /// The database selected on this connection.
    pub fn db(&self) -> u32 {
        self.db
    }

    /// Records a database change made by a command the caller sent itself (pipelined).
    pub fn set_db(&mut self, db: u32) {
        self.db = db;
    }

    /// `SELECT db`, unless it is selected already.
    pub async fn select(&mut self, db: u32) -> Result<(), ClientError> {
        if self.db != db {
            self.call(&[b"SELECT", db.to_string().as_bytes()]).await?;
            self.db = db;
        }
        Ok(())
    }

    /// When the current exchange must end.
    fn until(&self) -> Option<tokio::time::Instant> {
        let by_limit = self.limit.map(|l| tokio::time::Instant::now() + l);
        match (by_limit, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs one step of an exchange within the time limit and deadline.
    async fn bounded<T>(
        &mut self,
        what: &str,
        step: impl AsyncFnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        if self.broken {
            return Err(ClientError::Unusable {
                endpoint: self.endpoint.to_string(),
            });
        }
        let Some(until) = self.until() else {
            return step(self).await;
        };
        let started = tokio::time::Instant::now();
        match tokio::time::timeout_at(until, step(self)).await {
            Ok(r) => r,
            Err(_) => {
                self.broken = true;
                Err(ClientError::Deadline {
                    endpoint: self.endpoint.to_string(),
                    what: what.to_string(),
                    ms: started.elapsed().as_millis() as u64,
                })
            }
        }
    }

    /// Sends the commands already encoded in `wire`.
    pub async fn write(&mut self, wire: &[u8]) -> Result<(), ClientError> {
        self.bounded("a write", async move |c: &mut Client| {
            let r = c.stream.write_all(wire).await;
            r.map_err(|e| io_error(&c.endpoint, e, c.login))
        })
        .await
    }

    /// Reads one complete reply (its raw bytes, error replies included).
    pub async fn read_reply(&mut self) -> Result<Vec<u8>, ClientError> {
        Ok(self.read_if(true).await?.unwrap_or_default())
    }

    /// Reads one reply; returns its bytes when `want` or when it is an error reply, else
    /// skips it without copying (pipelines whose replies are mostly `+OK`).
    pub async fn read_if(&mut self, want: bool) -> Result<Option<Vec<u8>>, ClientError> {
        self.bounded("a reply", async move |c: &mut Client| {
            c.read_unbounded(want).await
        })
        .await
    }

    async fn read_unbounded(&mut self, want: bool) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            match self.parser.parse(&self.buf) {
                Ok(Some(info)) => {
                    let reply = self.buf.split_to(info.len);
                    return Ok((want || info.is_error()).then(|| reply.to_vec()));
                }
                Ok(None) => {}
                Err(e) => return Err(self.protocol(e.to_string())),
            }
            if self.buf.len() > self.max_reply {
                return Err(self.protocol(format!("a reply longer than {} bytes", self.max_reply)));
            }
            self.buf.reserve(16 * 1024);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => {
                    let eof = std::io::ErrorKind::UnexpectedEof.into();
                    return Err(io_error(&self.endpoint, eof, self.login));
                }
                Ok(_) => {}
                Err(e) => return Err(io_error(&self.endpoint, e, self.login)),
            }
        }
    }

    /// One command and its raw reply, error replies included, within the time limit and
    /// deadline (as a whole).
    pub async fn call_raw(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, ClientError> {
        let mut wire = Vec::new();
        encode_command(args, &mut wire);
        let name = command_name(args);
        self.bounded(&name, async move |c: &mut Client| {
            let r = c.stream.write_all(&wire).await;
            r.map_err(|e| io_error(&c.endpoint, e, c.login))?;
            Ok(c.read_unbounded(true).await?.unwrap_or_default())
        })
        .await
    }

    /// One command and its reply; an error reply is [`ClientError::Refused`].
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, ClientError> {
        let reply = self.call_raw(args).await?;
        self.check(args, reply)
    }

    /// One command and its decoded reply (RESP2); an error reply is `Ok(Value::Error)`.
    pub async fn query(&mut self, args: &[&[u8]]) -> Result<Value, ClientError> {
        let raw = self.call_raw(args).await?;
        Value::decode(&raw, 2).ok_or_else(|| self.protocol("an unreadable reply".to_string()))
    }

    /// `INFO section`, read by [`Info`].
    pub async fn info(&mut self, section: &str) -> Result<Info, ClientError> {
        let args: [&[u8]; 2] = [b"INFO", section.as_bytes()];
        let reply = self.call(&args).await?;
        info_of(&self.endpoint, &reply)
    }

    /// `reply` unless it is an error reply to `args`.
    pub fn check(&self, args: &[&[u8]], reply: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        check_reply(&self.endpoint, args, reply)
    }

    fn protocol(&self, detail: String) -> ClientError {
        protocol_error(&self.endpoint, detail)
    }

    /// The stream and the bytes read past the last reply.
    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.buf)
    }
}

/// The text of an `INFO` reply (a bulk or verbatim string).
pub(super) fn info_of(endpoint: &super::Endpoint, reply: &[u8]) -> Result<Info, ClientError> {
    match Value::decode(reply, 2) {
        Some(v) => Info::from_value(&v),
        None => None,
    }
    .ok_or_else(|| protocol_error(endpoint, format!("INFO answered {}", reply_text(reply))))
}
