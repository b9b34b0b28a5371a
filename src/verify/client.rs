//! The verifier's view of a connection: a [`BlockingClient`] (connection, time limits,
//! pipelining, errors) whose replies are decoded here into [`Reply`] trees.
//!
//! Why not the client's own framing? It frames a reply whole before handing it on; the
//! verifier decodes straight from the client's 256 KiB read buffer
//! ([`BlockingClient::fill_buf`]) into the few `Vec<u8>` the comparison looks at, which
//! matters at hundreds of thousands of keys a second, and never holds a big value whole.
//!
//! **Bounded memory.** A bulk string longer than [`BIG_BULK`] (16 KiB) is not kept: it is read
//! through the fixed buffer into a [`Reply::Digest`] (first byte, length, a 64-bit FNV-1a hash
//! of all bytes, and the last 16 bytes), and two digests compare equal exactly when those
//! agree; a `DUMP` payload's last 8 bytes are already a CRC-64 of the rest, so together with
//! the hash that is 128 bits of checksum. A reply of a page of 1000 keys therefore needs at
//! most ~16 MB however big the values are; collections are always read in chunks by the
//! caller, and strings that differ are re-read in 16 KiB pieces to name the first difference.
//!
//! Every reply is checked against what is expected by the caller; nothing here panics on what a
//! server sends: malformed input is a [`VerifyError::Protocol`].

use std::time::Duration;

use crate::client::{BlockingClient, ClientError};
use crate::config::RedisUrl;
use crate::resp::request::encode_command;

/// Bulk replies longer than this are read into a [`Reply::Digest`] instead of memory.
pub const BIG_BULK: usize = 16 * 1024;
/// Nesting deeper than this is refused (XINFO replies nest 3-4 levels).
const MAX_DEPTH: usize = 16;

/// Errors of the verifier (connection, protocol, refused commands, bad arguments).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Connecting or logging in failed (the connection layer's error names the endpoint).
    #[error("cannot connect to {side}: {cause}")]
    Connect {
        side: &'static str,
        cause: ClientError,
    },
    /// The connection failed, or a reply did not come in time (the client's error names
    /// the endpoint).
    #[error("{side}: {cause}")]
    Client {
        side: &'static str,
        cause: ClientError,
    },
    #[error("{side} {addr} refused {command}: {reply}")]
    Refused {
        side: &'static str,
        addr: String,
        command: String,
        reply: String,
    },
    #[error("{side} {addr} sent an unexpected reply: {detail}")]
    Protocol {
        side: &'static str,
        addr: String,
        detail: String,
    },
    #[error("invalid option: {0}")]
    Invalid(String),
}

/// One decoded RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Int(i64),
    /// A bulk or simple string.
    Bulk(Vec<u8>),
    /// A bulk string longer than [`BIG_BULK`]: first byte, length, FNV-1a 64 of the bytes,
    /// last 16 bytes.
    Digest {
        first: u8,
        len: usize,
        hash: u64,
        tail: Vec<u8>,
    },
    Error(String),
    Array(Vec<Reply>),
}

impl Reply {
    /// The bytes of a bulk/simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            Reply::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn into_array(self) -> Option<Vec<Reply>> {
        match self {
            Reply::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Short printable form for messages.
    pub fn show(&self) -> String {
        match self {
            Reply::Nil => "(nil)".into(),
            Reply::Int(i) => i.to_string(),
            Reply::Bulk(b) => show_bytes(b, 60),
            Reply::Digest { len, hash, .. } => format!("<{len} bytes, hash {hash:016x}>"),
            Reply::Error(e) => format!("-{e}"),
            Reply::Array(a) => format!("[{} items]", a.len()),
        }
    }
}

/// Printable, shortened form of (binary) bytes: `"abc\x00…" (1234 bytes)`.
pub fn show_bytes(b: &[u8], max: usize) -> String {
    let mut s = String::from("\"");
    for chunk in b[..b.len().min(max)].utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '"' || c == '\\' {
                s.extend(c.escape_default());
            } else {
                s.push(c);
            }
        }
        for x in chunk.invalid() {
            s.push_str(&format!("\\x{x:02x}"));
        }
    }
    s.push('"');
    if b.len() > max {
        s.push_str(&format!("… ({} bytes)", b.len()));
    }
    s
}

/// A blocking connection to one server (plain or TLS, a [`BlockingClient`]).
pub struct Conn {
    client: BlockingClient,
    /// "source" or "target", for messages.
    side: &'static str,
    addr: String,
    out: Vec<u8>,
    /// Commands written whose replies were not read yet.
    pending: usize,
    db: u32,
}

impl Conn {
    /// Connects and logs in (`AUTH` from the URL); the URL's db is *not* selected (the caller
    /// selects each db it walks, starting from db 0).
    pub fn connect(
        url: &RedisUrl,
        side: &'static str,
        timeout: Duration,
    ) -> Result<Conn, VerifyError> {
        let addr = url.addr();
        let connect_err = |cause| VerifyError::Connect { side, cause };
        let db0 = RedisUrl {
            db: 0,
            ..url.clone()
        };
        let mut client = BlockingClient::open_url(&db0, timeout).map_err(connect_err)?;
        client.set_time_limit(timeout.max(Duration::from_secs(5)));
        client.set_read_buffer(256 * 1024);
        Ok(Conn {
            client,
            side,
            addr,
            out: Vec::with_capacity(64 * 1024),
            pending: 0,
            db: 0,
        })
    }

    pub fn side(&self) -> &'static str {
        self.side
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The selected database.
    pub fn db(&self) -> u32 {
        self.db
    }

    /// `SELECT db` (no round trip when already there).
    pub fn select(&mut self, db: u32) -> Result<(), VerifyError> {
        if self.db != db {
            let n = db.to_string();
            self.call_ok(&[b"SELECT".as_slice(), n.as_bytes()])?;
            self.db = db;
        }
        Ok(())
    }

    /// Queues one command (written on [`flush`](Self::flush) or when the buffer is large).
    pub fn send(&mut self, args: &[&[u8]]) -> Result<(), VerifyError> {
        encode_command(args, &mut self.out);
        self.pending += 1;
        if self.out.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the queued commands.
    pub fn flush(&mut self) -> Result<(), VerifyError> {
        if !self.out.is_empty() {
            let r = self.client.write(&self.out);
            r.map_err(|e| self.client_err(e))?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads the next reply of a command sent before (errors are returned as
    /// [`Reply::Error`], not as `Err`).
    pub fn recv(&mut self) -> Result<Reply, VerifyError> {
        if self.pending == 0 {
            return Err(self.proto("read a reply nobody asked for".into()));
        }
        self.flush()?;
        let r = self.read_reply(0)?;
        self.pending -= 1;
        Ok(r)
    }

    /// One command, one reply (an error reply is `Err(Refused)`).
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply, VerifyError> {
        self.send(args)?;
        let r = self.recv()?;
        if let Reply::Error(e) = r {
            return Err(self.refused(args, e));
        }
        Ok(r)
    }

    /// One command that must not fail.
    pub fn call_ok(&mut self, args: &[&[u8]]) -> Result<(), VerifyError> {
        self.call(args).map(|_| ())
    }

    /// Reads and drops the replies still pending (after an error mid-pipeline).
    pub fn discard_pending(&mut self) -> Result<(), VerifyError> {
        while self.pending > 0 {
            self.recv()?;
        }
        Ok(())
    }

    pub fn refused(&self, args: &[&[u8]], reply: String) -> VerifyError {
        let command = args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default();
        VerifyError::Refused {
            side: self.side,
            addr: self.addr.clone(),
            command,
            reply,
        }
    }

    pub fn proto(&self, detail: String) -> VerifyError {
        VerifyError::Protocol {
            side: self.side,
            addr: self.addr.clone(),
            detail,
        }
    }

    fn client_err(&self, cause: ClientError) -> VerifyError {
        VerifyError::Client {
            side: self.side,
            cause,
        }
    }

    /// The unread bytes received (at least one, waiting for it if needed).
    fn fill(&mut self) -> Result<&[u8], VerifyError> {
        let side = self.side;
        self.client
            .fill_buf()
            .map_err(|cause| VerifyError::Client { side, cause })
    }

    /// Takes the next byte.
    fn byte(&mut self) -> Result<u8, VerifyError> {
        let b = self.fill()?[0];
        self.client.consume(1);
        Ok(b)
    }

    /// One CRLF-terminated line (without the CRLF).
    fn line(&mut self) -> Result<Vec<u8>, VerifyError> {
        let mut line = Vec::new();
        loop {
            let avail = self.fill()?;
            if let Some(i) = avail.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&avail[..i]);
                self.client.consume(i + 1);
                if line.pop() != Some(b'\r') {
                    return Err(self.proto("line not ended by CRLF".into()));
                }
                return Ok(line);
            }
            let n = avail.len();
            line.extend_from_slice(avail);
            self.client.consume(n);
            if line.len() > 64 * 1024 {
                return Err(self.proto("header line longer than 64 KiB".into()));
            }
        }
    }

    fn int_line(&mut self) -> Result<i64, VerifyError> {
        let line = self.line()?;
        parse_i64(&line).ok_or_else(|| self.proto(format!("bad number {}", show_bytes(&line, 40))))
    }

    fn read_reply(&mut self, depth: usize) -> Result<Reply, VerifyError> {
        if depth > MAX_DEPTH {
            return Err(self.proto("reply nested too deeply".into()));
        }
        let kind = self.byte()?;
        match kind {
            b'+' => Ok(Reply::Bulk(self.line()?)),
            b'-' => Ok(Reply::Error(
                String::from_utf8_lossy(&self.line()?).into_owned(),
            )),
            b':' => Ok(Reply::Int(self.int_line()?)),
            b'$' => {
                let n = self.int_line()?;
                if n < 0 {
                    return Ok(Reply::Nil);
                }
                let n = n as usize;
                if n > BIG_BULK {
                    return self.read_digest(n);
                }
                let mut v = Vec::with_capacity(n);
                while v.len() < n {
                    let avail = self.fill()?;
                    let take = (n - v.len()).min(avail.len());
                    v.extend_from_slice(&avail[..take]);
                    self.client.consume(take);
                }
                self.crlf()?;
                Ok(Reply::Bulk(v))
            }
            b'*' => {
                let n = self.int_line()?;
                if n < 0 {
                    return Ok(Reply::Nil);
                }
                let mut items = Vec::with_capacity((n as usize).min(4096));
                for _ in 0..n {
                    items.push(self.read_reply(depth + 1)?);
                }
                Ok(Reply::Array(items))
            }
            other => Err(self.proto(format!("unknown reply type byte 0x{other:02x}"))),
        }
    }

    fn read_digest(&mut self, n: usize) -> Result<Reply, VerifyError> {
        let mut hash = FNV_OFFSET;
        let mut first = None;
        let mut tail = Vec::with_capacity(16);
        let mut left = n;
        while left > 0 {
            let avail = self.fill()?;
            let take = left.min(avail.len());
            let chunk = &avail[..take];
            first = first.or(chunk.first().copied());
            hash = fnv1a(hash, chunk);
            tail.extend_from_slice(chunk);
            if tail.len() > 16 {
                tail.drain(..tail.len() - 16);
            }
            self.client.consume(take);
            left -= take;
        }
        self.crlf()?;
        Ok(Reply::Digest {
            first: first.unwrap_or_default(),
            len: n,
            hash,
            tail,
        })
    }

    fn crlf(&mut self) -> Result<(), VerifyError> {
        for want in [b'\r', b'\n'] {
            if self.byte()? != want {
                return Err(self.proto("bulk string not followed by CRLF".into()));
            }
        }
        Ok(())
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&[b"GET", b"k\r\n"], &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$3\r\nk\r\n\r\n");
        // Lengths of 0 and of several digits.
        out.clear();
        let big = vec![b'x'; 1234567];
        encode_command(&[&b""[..], &big], &mut out);
        assert!(out.starts_with(b"*2\r\n$0\r\n\r\n$1234567\r\nxxx"));
        assert_eq!(out.len(), 4 + 6 + 10 + 1234567 + 2);
    }

    #[test]
    fn shows_binary() {
        assert_eq!(show_bytes(b"a\x00\xff\"", 10), "\"a\\u{0}\\xff\\\"\"");
        assert!(show_bytes(&[b'x'; 100], 5).ends_with("… (100 bytes)"));
    }
}
