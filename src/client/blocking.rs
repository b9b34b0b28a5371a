//! [`BlockingClient`]: the control client for threads (the sync engine's applier, verify,
//! the cluster writer and topology reads).
//!
//! The same exchanges as the async [`super::Client`]: one command and its reply
//! ([`BlockingClient::call`], [`BlockingClient::query`], [`BlockingClient::info`]), or
//! pipelines ([`BlockingClient::write`] several commands, then
//! [`BlockingClient::read_reply`] each reply in order). A layer that decodes replies itself
//! without holding them whole (verify's digests of big values) reads the received bytes
//! through [`BlockingClient::fill_buf`] and [`BlockingClient::consume`].
//!
//! The read buffer is one allocation kept for the connection's life: unread bytes are
//! `buf[pos..end]`, moved to the front only when the buffer is full, and grown only for a
//! reply larger than it (up to the reply bound, [`super::MAX_REPLY`] unless set).

use std::io::{Read, Write};
use std::time::Duration;

use super::call::{check_reply, info_of, io_error, protocol_error};
use super::error::ClientError;
use super::info::Info;
use super::stream::BlockingStream;
use super::value::Value;
use super::{Endpoint, MAX_REPLY};
use crate::resp::ReplyParser;
use crate::resp::request::encode_command;

/// The read buffer's size unless set ([`BlockingClient::set_read_buffer`]).
const READ_BUFFER: usize = 16 * 1024;

/// The blocking control client. Every read and write is bounded by the socket's time limits
/// (set by [`super::connect_blocking`]: the connection's timeout, at least 5 s;
/// [`BlockingClient::set_time_limit`] changes them); one that runs out is
/// [`ClientError::Deadline`], and the connection is not used again.
pub struct BlockingClient {
    stream: BlockingStream,
    endpoint: Endpoint,
    buf: Vec<u8>,
    /// Unread bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
    parser: ReplyParser,
    max_reply: usize,
    login: bool,
    /// A read or write ran out of time: the connection is not used again.
    broken: bool,
}

impl BlockingClient {
    /// Wraps a connected stream.
    pub fn new(stream: BlockingStream, endpoint: &Endpoint) -> BlockingClient {
        BlockingClient {
            stream,
            endpoint: endpoint.clone(),
            buf: vec![0; READ_BUFFER],
            pos: 0,
            end: 0,
            parser: ReplyParser::default(),
            max_reply: MAX_REPLY,
            login: false,
            broken: false,
        }
    }

    /// Connects and logs in ([`super::connect_blocking`]) within `timeout` per step; later
    /// reads and writes are bounded by `timeout` too (at least 5 s).
    pub fn open(endpoint: &Endpoint, timeout: Duration) -> Result<BlockingClient, ClientError> {
        super::connect_blocking(endpoint, timeout)
    }

    /// [`BlockingClient::open`] for the server of `url`.
    pub fn open_url(
        url: &crate::config::RedisUrl,
        timeout: Duration,
    ) -> Result<BlockingClient, ClientError> {
        BlockingClient::open(&Endpoint::new(url)?, timeout)
    }

    /// The server this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Bounds every later read and write by `limit`.
    pub fn set_time_limit(&mut self, limit: Duration) {
        let _ = self.stream.set_read_timeout(Some(limit));
        let _ = self.stream.set_write_timeout(Some(limit));
    }

    /// Reads up to `bytes` at a time (for a reader of big pipelined replies).
    pub fn set_read_buffer(&mut self, bytes: usize) {
        if bytes > self.buf.len() {
            self.buf.resize(bytes, 0);
        }
    }

    pub(super) fn set_login(&mut self, on: bool) {
        self.login = on;
    }

    /// Bounds the size of one reply.
    pub fn set_max_reply(&mut self, bytes: usize) {
        self.max_reply = bytes;
    }

    /// An I/O error; a time limit that ran out is [`ClientError::Deadline`] (and the
    /// connection unusable).
    fn failed(&mut self, e: std::io::Error, what: &str) -> ClientError {
        if !self.login
            && matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        {
            self.broken = true;
            let ms = self
                .stream
                .read_timeout()
                .ok()
                .flatten()
                .map_or(0, |d| d.as_millis() as u64);
            return ClientError::Deadline {
                endpoint: self.endpoint.to_string(),
                what: what.to_string(),
                ms,
            };
        }
        io_error(&self.endpoint, e, self.login)
    }

    fn usable(&self) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Unusable {
                endpoint: self.endpoint.to_string(),
            });
        }
        Ok(())
    }

    /// Sends the commands already encoded in `wire`.
    pub fn write(&mut self, wire: &[u8]) -> Result<(), ClientError> {
        self.usable()?;
        let r = self
            .stream
            .write_all(wire)
            .and_then(|_| self.stream.flush());
        r.map_err(|e| self.failed(e, "a write"))
    }

    /// Reads more bytes from the server into `buf[end..]` (making room first).
    fn read_more(&mut self) -> Result<(), ClientError> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.end == self.buf.len() && self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).max(READ_BUFFER);
            self.buf.resize(grown, 0);
        }
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    let eof = std::io::ErrorKind::UnexpectedEof.into();
                    return Err(io_error(&self.endpoint, eof, self.login));
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failed(e, "a reply")),
            }
        }
    }

    /// Reads one complete reply (its raw bytes, error replies included).
    pub fn read_reply(&mut self) -> Result<Vec<u8>, ClientError> {
        self.usable()?;
        loop {
            match self.parser.parse(&self.buf[self.pos..self.end]) {
                Ok(Some(info)) => {
                    let reply = self.buf[self.pos..self.pos + info.len].to_vec();
                    self.pos += info.len;
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(self.protocol(e.to_string())),
            }
            if self.end - self.pos > self.max_reply {
                return Err(self.protocol(format!("a reply longer than {} bytes", self.max_reply)));
            }
            self.read_more()?;
        }
    }

    /// The bytes received and not consumed yet, reading more when there are none (for a
    /// layer that decodes replies itself); never empty.
    pub fn fill_buf(&mut self) -> Result<&[u8], ClientError> {
        self.usable()?;
        if self.pos == self.end {
            self.read_more()?;
        }
        Ok(&self.buf[self.pos..self.end])
    }

    /// Marks `n` bytes of [`BlockingClient::fill_buf`] as read.
    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
    }

    /// One command and its raw reply, error replies included.
    pub fn call_raw(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, ClientError> {
        let mut wire = Vec::new();
        encode_command(args, &mut wire);
        self.write(&wire)?;
        self.read_reply()
    }

    /// One command and its reply; an error reply is [`ClientError::Refused`].
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, ClientError> {
        let reply = self.call_raw(args)?;
        self.check(args, reply)
    }

    /// One command and its decoded reply (RESP2); an error reply is `Ok(Value::Error)`.
    pub fn query(&mut self, args: &[&[u8]]) -> Result<Value, ClientError> {
        let raw = self.call_raw(args)?;
        Value::decode(&raw, 2).ok_or_else(|| self.protocol("an unreadable reply".to_string()))
    }

    /// `INFO section`, read by [`Info`].
    pub fn info(&mut self, section: &str) -> Result<Info, ClientError> {
        let args: [&[u8]; 2] = [b"INFO", section.as_bytes()];
        let reply = self.call(&args)?;
        info_of(&self.endpoint, &reply)
    }

    /// `reply` unless it is an error reply to `args`.
    pub fn check(&self, args: &[&[u8]], reply: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        check_reply(&self.endpoint, args, reply)
    }

    /// A protocol error naming this client's server.
    pub fn protocol(&self, detail: String) -> ClientError {
        protocol_error(&self.endpoint, detail)
    }

    /// The stream (to set its time limits).
    pub fn stream(&self) -> &BlockingStream {
        &self.stream
    }

    /// The stream and the bytes read past the last reply.
    pub fn into_parts(self) -> (BlockingStream, Vec<u8>) {
        let rest = self.buf[self.pos..self.end].to_vec();
        (self.stream, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisUrl;

    /// A client reading what a thread writes on a loopback socket, in pieces of `pieces`
    /// bytes (cycled).
    fn fed(bytes: Vec<u8>, pieces: Vec<usize>) -> BlockingClient {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut at = 0;
            for n in pieces.iter().cycle() {
                if at >= bytes.len() {
                    break;
                }
                let end = (at + n.max(&1)).min(bytes.len());
                if s.write_all(&bytes[at..end]).is_err() {
                    return;
                }
                at = end;
            }
        });
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        let url = RedisUrl::parse(&format!("redis://{addr}")).unwrap();
        let mut c = BlockingClient::new(BlockingStream::Plain(tcp), &Endpoint::new(&url).unwrap());
        c.set_time_limit(Duration::from_secs(5));
        c
    }

    fn replies() -> Vec<Vec<u8>> {
        let big = |n: usize| {
            let mut r = format!("${n}\r\n").into_bytes();
            r.extend((0..n).map(|i| b'a' + (i % 26) as u8));
            r.extend_from_slice(b"\r\n");
            r
        };
        vec![
            b"+OK\r\n".to_vec(),
            big(40_000),
            b"*2\r\n$1\r\na\r\n:7\r\n".to_vec(),
            b"-ERR no\r\n".to_vec(),
            big(15_000),
            big(3),
            big(70_000),
            b":1\r\n".to_vec(),
        ]
    }

    #[test]
    fn replies_across_reads_compaction_and_growth() {
        for pieces in [vec![1, 7, 4096], vec![16 * 1024], vec![3, 50_000, 11]] {
            let want = replies();
            let mut c = fed(want.concat(), pieces.clone());
            for (i, w) in want.iter().enumerate() {
                assert_eq!(&c.read_reply().unwrap(), w, "reply {i}, pieces {pieces:?}");
            }
        }
    }

    #[test]
    fn fill_buf_and_consume_see_every_byte_once() {
        let bytes = replies().concat();
        let mut c = fed(bytes.clone(), vec![5, 9000, 1]);
        c.set_read_buffer(4096);
        let mut got = Vec::new();
        while got.len() < bytes.len() {
            let avail = c.fill_buf().unwrap();
            assert!(!avail.is_empty());
            let take = avail.len().min(1 + got.len() % 777);
            got.extend_from_slice(&avail[..take]);
            c.consume(take);
        }
        assert_eq!(got, bytes);
        // Then the server closes: an error, not an empty buffer.
        assert!(c.fill_buf().is_err());
    }
}
