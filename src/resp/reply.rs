//! Incremental framing of server replies, RESP2 and RESP3.
//!
//! The proxy passes replies to the client byte for byte; it only needs to know where each
//! top-level reply ends (to pair it with the command that asked for it) and, for a few
//! replies, what kind it is:
//!
//! * `-ERR …` / `!<len>` errors (a failed command changes no session state);
//! * RESP3 push frames (`>`): pub/sub messages and client-side-caching invalidations arrive
//!   out of band, without a command;
//! * pub/sub arrays in RESP2 (`*3 message ch payload`) which are out of band too, and the
//!   `subscribe`/`unsubscribe` confirmations that answer (P|S)(UN)SUBSCRIBE one per channel.
//!
//! For those the first three elements are copied when short (channel names, counts), so the
//! frame can stream through to the client while it is still arriving.
//!
//! Types: `+ - : _ , # ( $ ! = * % ~ > |` (`|` attributes are folded into the reply that
//! follows them). Streamed RESP3 strings (`$?`) are never sent by Redis or Valkey and are
//! refused as a protocol error.

use super::request::{parse_int, read_line, short_header_number};

/// Longest element copied for inspection.
const CAPTURE_MAX: usize = 128;
/// Nesting deeper than this is refused. Server replies are trusted framing and may be legally
/// deep (a Lua table that contains itself comes back ~8,000 levels deep from `EVAL`), so the
/// cap is far above anything a server emits; it only bounds the parser's own stack (a `Vec`
/// on the heap, 8 bytes a level: no recursion, so no stack overflow at any depth).
const MAX_DEPTH: usize = 1 << 20;
/// A reply line (`+OK`, `-ERR …`, `:1`) longer than this without CRLF is garbage.
const MAX_LINE: usize = 1024 * 1024;

/// What the proxy needs to know about a complete reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyInfo {
    /// Bytes of the reply still in the buffer (all of it unless it was streamed).
    pub len: usize,
    /// The RESP type byte of the top-level value.
    pub kind: u8,
    /// Number of elements of a top-level aggregate.
    pub elements: i64,
    /// The first up-to-three elements when they were short scalars and capture was asked for.
    pub head: Vec<Vec<u8>>,
}

impl ReplyInfo {
    pub fn is_error(&self) -> bool {
        self.kind == b'-' || self.kind == b'!'
    }
    pub fn is_push(&self) -> bool {
        self.kind == b'>'
    }
    /// First element, lower-cased comparison helper.
    pub fn head_is(&self, i: usize, word: &str) -> bool {
        self.head
            .get(i)
            .is_some_and(|h| h.eq_ignore_ascii_case(word.as_bytes()))
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid reply from server at byte {offset}: {reason}")]
pub struct ReplyError {
    pub offset: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Expecting a type byte.
    Value,
    /// Inside a bulk body ending (with CRLF) at `end`; `capture` when its bytes are wanted.
    Bulk {
        start: usize,
        end: usize,
        capture: bool,
    },
}

/// The resumable scanner; same contract as [`super::RequestParser`].
#[derive(Debug)]
pub struct ReplyParser {
    state: State,
    cursor: usize,
    /// Remaining elements per open aggregate level.
    stack: Vec<u64>,
    info: ReplyInfo,
    /// Copy the head of RESP2 arrays (set while the session has subscriptions).
    pub capture_arrays: bool,
    /// An attribute (`|`) was read at top level; the real reply follows.
    in_attribute: bool,
    top_started: bool,
}

impl Default for ReplyParser {
    fn default() -> Self {
        ReplyParser {
            state: State::Value,
            cursor: 0,
            stack: Vec::new(),
            info: ReplyInfo::default(),
            capture_arrays: false,
            in_attribute: false,
            top_started: false,
        }
    }
}

impl ReplyParser {
    /// The fast path of [`ReplyParser::parse`] and [`ReplyParser::parse_len`]: the length of
    /// a complete scalar reply (`+OK`, `:1`, `$3 foo`, `-ERR …`, …) at the start of `buf`,
    /// when nothing of a reply has been scanned yet.
    #[inline]
    fn whole_scalar(&self, buf: &[u8]) -> Option<usize> {
        if self.cursor == 0
            && matches!(self.state, State::Value)
            && self.stack.is_empty()
            && !self.top_started
            && !self.in_attribute
        {
            whole_scalar(buf)
        } else {
            None
        }
    }

    /// Scans `buf` (starting at the current reply) for the end of the reply.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<ReplyInfo>, ReplyError> {
        if let Some(len) = self.whole_scalar(buf) {
            return Ok(Some(ReplyInfo {
                len,
                kind: buf[0],
                ..ReplyInfo::default()
            }));
        }
        self.parse_general(buf)
    }

    /// [`ReplyParser::parse`] for a caller that needs only the reply's length: a scalar
    /// costs no [`ReplyInfo`].
    pub fn parse_len(&mut self, buf: &[u8]) -> Result<Option<usize>, ReplyError> {
        match self.whole_scalar(buf) {
            Some(len) => Ok(Some(len)),
            None => Ok(self.parse_general(buf)?.map(|info| info.len)),
        }
    }

    /// The resumable state machine behind [`ReplyParser::parse`] (after its fast path).
    fn parse_general(&mut self, buf: &[u8]) -> Result<Option<ReplyInfo>, ReplyError> {
        loop {
            match self.state {
                State::Bulk {
                    start,
                    end,
                    capture,
                } => {
                    if buf.len() < end {
                        // Never count the trailing CRLF as scanned before it is checked.
                        self.cursor = self.cursor.max(buf.len().min(end - 2));
                        return Ok(None);
                    }
                    if &buf[end - 2..end] != b"\r\n" {
                        return Err(self.err(end - 2, "bulk string not terminated by CRLF"));
                    }
                    if capture {
                        self.info.head.push(short(&buf[start..end - 2]));
                    }
                    self.cursor = end;
                    self.state = State::Value;
                    if let Some(done) = self.element_done() {
                        return Ok(Some(done));
                    }
                }
                State::Value => {
                    let Some(&kind) = buf.get(self.cursor) else {
                        return Ok(None);
                    };
                    let Some((line, next)) = read_line(buf, self.cursor + 1, MAX_LINE)
                        .map_err(|_| self.err(self.cursor, "line without CRLF"))?
                    else {
                        return Ok(None);
                    };
                    let at_top = self.stack.is_empty();
                    if at_top && !self.top_started {
                        self.top_started = true;
                        self.info.kind = kind;
                    }
                    let capturing = self.stack.len() == 1
                        && self.info.head.len() < 3
                        && (self.info.kind == b'>'
                            || (self.capture_arrays && self.info.kind == b'*'));
                    match kind {
                        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                            if capturing {
                                self.info.head.push(short(line));
                            }
                            self.cursor = next;
                            if let Some(done) = self.element_done() {
                                return Ok(Some(done));
                            }
                        }
                        b'$' | b'!' | b'=' => {
                            if line == b"?" {
                                return Err(self.err(self.cursor, "streamed strings unsupported"));
                            }
                            let n = parse_int(line)
                                .ok_or_else(|| self.err(self.cursor, "invalid bulk length"))?;
                            self.cursor = next;
                            if n < 0 {
                                if capturing {
                                    // Keep positions: a null channel (unsubscribe from none).
                                    self.info.head.push(Vec::new());
                                }
                                if let Some(done) = self.element_done() {
                                    return Ok(Some(done));
                                }
                                continue;
                            }
                            self.state = State::Bulk {
                                start: next,
                                end: next + n as usize + 2,
                                capture: capturing,
                            };
                        }
                        b'*' | b'%' | b'~' | b'>' | b'|' => {
                            if line == b"?" {
                                return Err(
                                    self.err(self.cursor, "streamed aggregates unsupported")
                                );
                            }
                            let n = parse_int(line)
                                .ok_or_else(|| self.err(self.cursor, "invalid aggregate length"))?;
                            self.cursor = next;
                            if at_top {
                                if kind == b'|' {
                                    self.in_attribute = true;
                                    self.top_started = false;
                                } else {
                                    self.info.elements = n;
                                }
                            }
                            let count = match kind {
                                b'%' | b'|' => (n.max(0) as u64) * 2,
                                _ => n.max(0) as u64,
                            };
                            if capturing {
                                self.info.head.push(Vec::new());
                            }
                            if count == 0 {
                                if let Some(done) = self.element_done() {
                                    return Ok(Some(done));
                                }
                                continue;
                            }
                            if self.stack.len() >= MAX_DEPTH {
                                return Err(self.err(self.cursor, "nesting too deep"));
                            }
                            self.stack.push(count);
                        }
                        other => {
                            return Err(self.err(
                                self.cursor,
                                &format!("unknown type byte {:?}", char::from(other)),
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Bytes of the incomplete current reply scanned so far.
    pub fn scanned(&self) -> usize {
        self.cursor
    }

    /// The first `n` scanned bytes of the incomplete reply were handed on and dropped.
    pub fn forwarded(&mut self, n: usize) {
        debug_assert!(n <= self.cursor);
        self.cursor -= n;
        if let State::Bulk {
            start,
            end,
            capture,
        } = &mut self.state
        {
            *start = start.saturating_sub(n);
            *end -= n;
            *capture = false;
        }
    }

    /// One value finished: pop finished aggregates; return the reply if the top level is done.
    fn element_done(&mut self) -> Option<ReplyInfo> {
        while let Some(top) = self.stack.last_mut() {
            *top -= 1;
            if *top > 0 {
                return None;
            }
            self.stack.pop();
        }
        if self.in_attribute && !self.top_started {
            // The attribute map itself ended; the reply it annotates follows.
            self.in_attribute = false;
            self.info.head.clear();
            return None;
        }
        let mut info = std::mem::take(&mut self.info);
        info.len = self.cursor;
        self.cursor = 0;
        self.top_started = false;
        self.in_attribute = false;
        Some(info)
    }

    fn err(&self, offset: usize, reason: &str) -> ReplyError {
        ReplyError {
            offset,
            reason: reason.to_string(),
        }
    }
}

/// The common replies in one pass: a whole scalar (`+OK`, `:1`, `$-1`, `$3 abc`, an error)
/// with a short header already in `buf`; its length. `None` for anything else (aggregates,
/// incomplete or long lines, malformed input), which the general path handles.
#[inline]
fn whole_scalar(buf: &[u8]) -> Option<usize> {
    match *buf.first()? {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
            let cr = buf.iter().take(256).position(|&b| b == b'\r')?;
            (buf.get(cr + 1) == Some(&b'\n')).then_some(cr + 2)
        }
        b'$' => {
            if buf.get(1..5) == Some(b"-1\r\n") {
                return Some(5);
            }
            let (len, body) = short_header_number(buf, 1)?;
            let end = body + len as usize + 2;
            (buf.len() >= end && buf[end - 2] == b'\r' && buf[end - 1] == b'\n').then_some(end)
        }
        _ => None,
    }
}

/// An element copied for inspection; long ones are kept as empty (their position matters).
fn short(b: &[u8]) -> Vec<u8> {
    if b.len() <= CAPTURE_MAX {
        b.to_vec()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(wire: &[u8]) -> ReplyInfo {
        let mut p = ReplyParser {
            capture_arrays: true,
            ..Default::default()
        };
        let r = p.parse(wire).unwrap().unwrap();
        assert_eq!(r.len, wire.len(), "{:?}", String::from_utf8_lossy(wire));
        r
    }

    #[test]
    fn every_type() {
        for w in [
            &b"+OK\r\n"[..],
            b"-ERR x\r\n",
            b":12\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"$3\r\nabc\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"_\r\n",
            b",3.14\r\n",
            b"#t\r\n",
            b"(123456789012345678901234567890\r\n",
            b"!5\r\nERR x\r\n",
            b"=7\r\ntxt:abc\r\n",
            b"%2\r\n+a\r\n:1\r\n+b\r\n*2\r\n:1\r\n:2\r\n",
            b"~1\r\n$1\r\nx\r\n",
            b"*2\r\n*1\r\n+a\r\n$-1\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
        ] {
            one(w);
        }
        assert!(one(b"-ERR x\r\n").is_error());
        let attr = one(b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n");
        assert_eq!(attr.kind, b'$');
    }

    #[test]
    fn pubsub_heads_are_captured() {
        let r = one(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n");
        assert!(r.is_push() && r.head_is(0, "message") && r.head_is(1, "ch"));
        let r = one(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(
            r.head,
            vec![b"subscribe".to_vec(), b"a".to_vec(), b"1".to_vec()]
        );
    }

    #[test]
    fn crlf_split_after_a_forwarded_prefix() {
        let mut p = ReplyParser::default();
        let mut buf = b"$4\r\nabcd\r".to_vec();
        assert_eq!(p.parse(&buf).unwrap(), None);
        let n = p.scanned();
        assert_eq!(n, 8, "the CR is not scanned yet");
        buf.drain(..n);
        p.forwarded(n);
        buf.push(b'\n');
        assert_eq!(p.parse(&buf).unwrap().unwrap().len, 2);
    }

    #[test]
    fn deep_replies_are_framed_without_recursion() {
        let mut wire = b"*1\r\n".repeat(200_000);
        wire.extend_from_slice(b"*0\r\n");
        let r = one(&wire);
        assert_eq!((r.kind, r.elements), (b'*', 1));
        // In pieces, as it arrives from a socket.
        let mut p = ReplyParser::default();
        let mut got = None;
        for end in (0..=wire.len()).step_by(4096).chain([wire.len()]) {
            if let Some(r) = p.parse(&wire[..end]).unwrap() {
                got = Some(r);
                break;
            }
        }
        assert_eq!(got.unwrap().len, wire.len());
    }

    #[test]
    fn bad_replies_are_errors() {
        for w in [&b"?x\r\n"[..], b"$abc\r\n", b"$1\r\nabc\r\n", b"*?\r\n"] {
            assert!(ReplyParser::default().parse(w).is_err(), "{w:?}");
        }
    }

    proptest! {
        #[test]
        fn byte_by_byte_equals_whole(split in 1usize..40) {
            let wire = b"%2\r\n+a\r\n*3\r\n:1\r\n$5\r\nhello\r\n_\r\n+b\r\n>2\r\n+x\r\n-e\r\n".to_vec();
            let mut p = ReplyParser::default();
            let mut buf = Vec::new();
            let mut got = None;
            for chunk in wire.chunks(split) {
                buf.extend_from_slice(chunk);
                if let Some(r) = p.parse(&buf).unwrap() { got = Some(r); break; }
            }
            prop_assert_eq!(got.unwrap().len, wire.len());
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ReplyParser::default().parse(&data);
        }
    }
}
