//! One command, one reply: [`Client`] (async) and [`BlockingClient`] (threads).
//!
//! A command is encoded as a RESP array; its reply is framed by
//! [`crate::resp::ReplyParser`] (RESP2 and RESP3, any nesting the parser's own bound
//! allows) and returned as its raw bytes. A reply longer than the client's bound
//! ([`MAX_REPLY`] unless set) is refused as a protocol error instead of growing the buffer
//! without end. An error reply (`-…`, `!…`) is [`ClientError::Refused`], naming the command.
//!
//! Both keep the bytes read past a reply in their buffer; [`Client::into_parts`] hands the
//! stream and those bytes to a layer that takes over (the replica link, a pipeline).

use std::io::{Read, Write};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::ClientError;
use super::stream::{BlockingStream, Stream};
use super::tls;
use crate::resp::ReplyParser;
use crate::resp::request::encode_command;

/// The longest reply [`Client::call`] accepts by default (64 MiB).
pub const MAX_REPLY: usize = 64 * 1024 * 1024;

/// The command's name, upper-cased, for messages.
fn command_name(args: &[&[u8]]) -> String {
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
fn check_reply(
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

fn protocol_error(endpoint: &super::Endpoint, detail: String) -> ClientError {
    ClientError::Protocol {
        endpoint: endpoint.to_string(),
        detail,
    }
}

/// An async connection that sends commands and reads their replies.
pub struct Client {
    stream: Stream,
    endpoint: super::Endpoint,
    buf: BytesMut,
    parser: ReplyParser,
    max_reply: usize,
    login: bool,
}

impl Client {
    /// Wraps a connected stream.
    pub fn new(stream: Stream, endpoint: &super::Endpoint) -> Client {
        Client {
            stream,
            endpoint: endpoint.clone(),
            buf: BytesMut::with_capacity(4096),
            parser: ReplyParser::default(),
            max_reply: MAX_REPLY,
            login: false,
        }
    }

    /// Marks the exchanges that follow as the login (for the hints of a closed connection).
    pub(super) fn set_login(&mut self, on: bool) {
        self.login = on;
    }

    /// Bounds the size of one reply.
    pub fn set_max_reply(&mut self, bytes: usize) {
        self.max_reply = bytes;
    }

    /// Sends the commands already encoded in `wire`.
    pub async fn write(&mut self, wire: &[u8]) -> Result<(), ClientError> {
        let r = self.stream.write_all(wire).await;
        r.map_err(|e| io_error(&self.endpoint, e, self.login))
    }

    /// Reads one complete reply (its raw bytes, error replies included).
    pub async fn read_reply(&mut self) -> Result<Vec<u8>, ClientError> {
        loop {
            match self.parser.parse(&self.buf) {
                Ok(Some(info)) => return Ok(self.buf.split_to(info.len).to_vec()),
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

    /// One command and its reply; an error reply is [`ClientError::Refused`].
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, ClientError> {
        let mut wire = Vec::new();
        encode_command(args, &mut wire);
        self.write(&wire).await?;
        let reply = self.read_reply().await?;
        self.check(args, reply)
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

/// A blocking connection that sends commands and reads their replies.
pub struct BlockingClient {
    stream: BlockingStream,
    endpoint: super::Endpoint,
    buf: Vec<u8>,
    parser: ReplyParser,
    max_reply: usize,
    login: bool,
}

impl BlockingClient {
    /// Wraps a connected stream.
    pub fn new(stream: BlockingStream, endpoint: &super::Endpoint) -> BlockingClient {
        BlockingClient {
            stream,
            endpoint: endpoint.clone(),
            buf: Vec::with_capacity(4096),
            parser: ReplyParser::default(),
            max_reply: MAX_REPLY,
            login: false,
        }
    }

    pub(super) fn set_login(&mut self, on: bool) {
        self.login = on;
    }

    /// Bounds the size of one reply.
    pub fn set_max_reply(&mut self, bytes: usize) {
        self.max_reply = bytes;
    }

    /// Sends the commands already encoded in `wire`.
    pub fn write(&mut self, wire: &[u8]) -> Result<(), ClientError> {
        let r = self
            .stream
            .write_all(wire)
            .and_then(|_| self.stream.flush());
        r.map_err(|e| io_error(&self.endpoint, e, self.login))
    }

    /// Reads one complete reply (its raw bytes, error replies included).
    pub fn read_reply(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.parser.parse(&self.buf) {
                Ok(Some(info)) => return Ok(self.buf.drain(..info.len).collect()),
                Ok(None) => {}
                Err(e) => return Err(self.protocol(e.to_string())),
            }
            if self.buf.len() > self.max_reply {
                return Err(self.protocol(format!("a reply longer than {} bytes", self.max_reply)));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    let eof = std::io::ErrorKind::UnexpectedEof.into();
                    return Err(io_error(&self.endpoint, eof, self.login));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&self.endpoint, e, self.login)),
            }
        }
    }

    /// One command and its reply; an error reply is [`ClientError::Refused`].
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, ClientError> {
        let mut wire = Vec::new();
        encode_command(args, &mut wire);
        self.write(&wire)?;
        let reply = self.read_reply()?;
        self.check(args, reply)
    }

    /// `reply` unless it is an error reply to `args`.
    pub fn check(&self, args: &[&[u8]], reply: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        check_reply(&self.endpoint, args, reply)
    }

    fn protocol(&self, detail: String) -> ClientError {
        protocol_error(&self.endpoint, detail)
    }

    /// The stream (to set its time limits).
    pub fn stream(&self) -> &BlockingStream {
        &self.stream
    }

    /// The stream and the bytes read past the last reply.
    pub fn into_parts(self) -> (BlockingStream, Vec<u8>) {
        (self.stream, self.buf)
    }
}
