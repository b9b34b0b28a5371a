//! Incremental framing of client requests.
//!
//! A client sends either a RESP array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or an
//! *inline* command (`GET k\r\n`, what telnet and `redis-cli` in some modes send). The proxy does
//! not need a decoded frame; it needs to know **where a command ends** and to look at its first
//! few arguments (the command name, a sub-command, `SELECT`'s db, …).
//!
//! [`RequestParser`] keeps its position between calls, so a command that arrives in many pieces
//! (a 512 MB `SET`, an `RPUSH` with a million arguments) is scanned exactly once: no quadratic
//! re-parsing. It never allocates in proportion to a length it read from the wire; lengths above
//! the limits are refused before anything is buffered for them, with the error text Redis uses.

use std::ops::Range;

use bytes::Bytes;

/// How many leading arguments are remembered per command (name + sub-command + a few values).
///
/// That is all the proxy's classification reads (`proxy::command`: the name, a subcommand, one
/// more argument; `HELLO`/`AUTH` check `argc` against it). Whatever needs a command's *keys* —
/// the shadow's per-key order, the shadow capture, a blocking call's re-issue — parses the
/// whole frame (`crate::command::keys` on the full argv), and only while it is needed, so the
/// plain forwarding path never pays for long commands.
pub const CAPTURED_ARGS: usize = 8;
/// Redis' `PROTO_INLINE_MAX_SIZE`: the longest inline command or header line.
pub const MAX_INLINE: usize = 64 * 1024;
/// Redis' `PROTO_MBULK_BIG_ARG` lines are short; a header line longer than this is garbage.
const MAX_HEADER_LINE: usize = 64;
/// Redis' default `proto-max-bulk-len`.
pub const DEFAULT_MAX_BULK: u64 = 512 * 1024 * 1024;
/// Redis refuses multibulk counts above `INT_MAX`.
const MAX_MULTIBULK: u64 = i32::MAX as u64;
/// What Redis accepts from a client that has not authenticated yet (when a password is
/// required): at most this many arguments…
pub const UNAUTH_MAX_ARGS: i64 = 10;
/// …of at most this many bytes each.
pub const UNAUTH_MAX_BULK: i64 = 16 * 1024;

/// A malformed request. The text is what Redis itself answers (`-ERR Protocol error: …`), and
/// after it the connection is closed, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

/// One complete command found at the start of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A RESP array: `len` bytes, `argc` arguments, the first ones at `args` (offsets into the
    /// buffer as it was when the command started).
    Array {
        len: usize,
        argc: u64,
        args: CapturedArgs,
    },
    /// An inline command, already split into arguments; `len` bytes of the buffer it used.
    Inline { len: usize, args: Vec<Bytes> },
    /// Bytes Redis ignores (`*0\r\n`, `*-1\r\n`, an empty inline line).
    Empty { len: usize },
}

/// Byte ranges of the first [`CAPTURED_ARGS`] arguments of a command.
///
/// Offsets are kept as `u32` so a parsed [`Request`] stays small (it is moved for every
/// command). A command is at most a few GB long only in theory (Redis refuses a query buffer
/// over 1 GB); an argument ending past 4 GiB, and every one after it, is not captured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedArgs {
    ranges: [(u32, u32); CAPTURED_ARGS],
    count: u8,
    full: bool,
}

impl CapturedArgs {
    fn push(&mut self, r: Range<usize>) {
        if self.full || usize::from(self.count) == CAPTURED_ARGS {
            return;
        }
        match (u32::try_from(r.start), u32::try_from(r.end)) {
            (Ok(start), Ok(end)) => {
                self.ranges[usize::from(self.count)] = (start, end);
                self.count += 1;
            }
            _ => self.full = true,
        }
    }
    /// How many arguments were captured (at most [`CAPTURED_ARGS`]).
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Argument `i` as bytes of `buf` (the buffer the command was parsed from).
    pub fn get<'a>(&self, buf: &'a [u8], i: usize) -> Option<&'a [u8]> {
        (i < self.len()).then(|| {
            let (start, end) = self.ranges[i];
            &buf[start as usize..end as usize]
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a command.
    Start,
    /// Inside an array, expecting `$<len>\r\n` of the next argument.
    ArgHeader,
    /// Inside an argument's bytes; `end` is where its trailing CRLF ends.
    ArgBody { start: usize, end: usize },
}

/// The resumable scanner. Feed it the same buffer (grown at the end) until it returns a
/// command, then drop that many bytes from the front and go on.
#[derive(Debug)]
pub struct RequestParser {
    state: State,
    /// Scan position, relative to the start of the current command.
    cursor: usize,
    argc: u64,
    remaining: u64,
    args: CapturedArgs,
    max_bulk: u64,
    /// Part of the current command was already handed on by [`RequestParser::forwarded`]; all
    /// offsets are relative to what is still buffered.
    streaming: bool,
    /// The client has not authenticated yet: commands are limited as Redis limits them
    /// ([`UNAUTH_MAX_ARGS`], [`UNAUTH_MAX_BULK`]), so an anonymous client cannot make the
    /// proxy buffer much for it.
    unauthenticated: bool,
}

impl Default for RequestParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BULK)
    }
}

impl RequestParser {
    pub fn new(max_bulk: u64) -> Self {
        RequestParser {
            state: State::Start,
            cursor: 0,
            argc: 0,
            remaining: 0,
            args: CapturedArgs::default(),
            max_bulk,
            streaming: false,
            unauthenticated: false,
        }
    }

    /// Applies (or lifts) the limits for a client that has not authenticated yet.
    pub fn set_unauthenticated(&mut self, on: bool) {
        self.unauthenticated = on;
    }

    /// Scans `buf` (which starts at the current command) for the end of the command.
    /// `Ok(None)` means: more bytes are needed; nothing is scanned twice.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
        if self.cursor == 0 && self.state == State::Start && !self.unauthenticated {
            if let Some(req) = self.parse_whole(buf) {
                return Ok(Some(req));
            }
        }
        loop {
            match self.state {
                State::Start => {
                    let Some(&first) = buf.get(self.cursor) else {
                        return Ok(None);
                    };
                    if first != b'*' {
                        return self.parse_inline(buf);
                    }
                    let Some((n, next)) = read_line(buf, self.cursor + 1, MAX_HEADER_LINE)
                        .map_err(|_| err("too big mbulk count string"))?
                    else {
                        return Ok(None);
                    };
                    let count = parse_int(n).ok_or_else(|| err("invalid multibulk length"))?;
                    if count > MAX_MULTIBULK as i64 {
                        return Err(err("invalid multibulk length"));
                    }
                    if self.unauthenticated && count > UNAUTH_MAX_ARGS {
                        return Err(err("unauthenticated multibulk length"));
                    }
                    self.cursor = next;
                    if count <= 0 {
                        return Ok(Some(self.finish_empty()));
                    }
                    self.argc = count as u64;
                    self.remaining = count as u64;
                    self.state = State::ArgHeader;
                }
                State::ArgHeader => {
                    let Some(&first) = buf.get(self.cursor) else {
                        return Ok(None);
                    };
                    if first != b'$' {
                        return Err(err(&format!(
                            "expected '$', got '{}'",
                            char::from(first).escape_default()
                        )));
                    }
                    let Some((n, next)) = read_line(buf, self.cursor + 1, MAX_HEADER_LINE)
                        .map_err(|_| err("too big bulk count string"))?
                    else {
                        return Ok(None);
                    };
                    let len = parse_int(n).ok_or_else(|| err("invalid bulk length"))?;
                    if len < 0 || len as u64 > self.max_bulk {
                        return Err(err("invalid bulk length"));
                    }
                    if self.unauthenticated && len > UNAUTH_MAX_BULK {
                        return Err(err("unauthenticated bulk length"));
                    }
                    let start = next;
                    self.cursor = next;
                    self.state = State::ArgBody {
                        start,
                        end: start + len as usize + 2,
                    };
                }
                State::ArgBody { start, end } => {
                    if buf.len() < end {
                        // Skip what is here; the rest of the argument is still on the wire.
                        // The trailing CRLF is never counted as scanned before it is checked,
                        // so a prefix handed on never cuts into it.
                        self.cursor = self.cursor.max(buf.len().min(end - 2));
                        return Ok(None);
                    }
                    if &buf[end - 2..end] != b"\r\n" {
                        return Err(err("bulk string not terminated by CRLF"));
                    }
                    if !self.streaming {
                        self.args.push(start..end - 2);
                    }
                    self.cursor = end;
                    self.remaining -= 1;
                    if self.remaining == 0 {
                        return Ok(Some(self.finish_array()));
                    }
                    self.state = State::ArgHeader;
                }
            }
        }
    }

    /// The common case in one pass, without the resumable state machine: a whole command
    /// already in `buf`, with short headers. `None` (nothing changed) for anything else:
    /// incomplete, inline, long or malformed input goes the general way, which resumes
    /// where it stops and reports errors.
    #[inline]
    fn parse_whole(&self, buf: &[u8]) -> Option<Request> {
        let mut args = CapturedArgs::default();
        let (argc, len) = walk_whole(buf, self.max_bulk, |_, arg| args.push(arg))?;
        Some(Request::Array { len, argc, args })
    }

    /// Nothing of a command has been scanned yet (the next byte starts a new command), so
    /// [`frame_whole`] may be used on the buffer instead of [`RequestParser::parse`].
    pub fn at_start(&self) -> bool {
        self.cursor == 0 && self.state == State::Start
    }

    /// Number of arguments of the command being scanned, once its header was read.
    pub fn pending_argc(&self) -> u64 {
        self.argc
    }

    /// Arguments of the incomplete current command captured so far.
    pub fn pending_args(&self) -> &CapturedArgs {
        &self.args
    }

    /// Bytes of the incomplete current command scanned so far (safe to hand on).
    pub fn scanned(&self) -> usize {
        self.cursor
    }

    /// The caller handed on (and dropped from its buffer) the first `n` scanned bytes of an
    /// incomplete command: a huge value streams through without being held whole. Captured
    /// argument ranges are no longer valid afterwards.
    pub fn forwarded(&mut self, n: usize) {
        debug_assert!(n <= self.cursor);
        self.cursor -= n;
        if let State::ArgBody { start, end } = &mut self.state {
            *start = start.saturating_sub(n);
            *end -= n;
        }
        self.streaming = true;
        self.args = CapturedArgs::default();
    }

    /// Whether part of the current command was already handed on.
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    fn finish_array(&mut self) -> Request {
        let req = Request::Array {
            len: self.cursor,
            argc: self.argc,
            args: std::mem::take(&mut self.args),
        };
        self.reset();
        req
    }

    fn finish_empty(&mut self) -> Request {
        let req = Request::Empty { len: self.cursor };
        self.reset();
        req
    }

    fn reset(&mut self) {
        self.state = State::Start;
        self.cursor = 0;
        self.argc = 0;
        self.remaining = 0;
        self.streaming = false;
    }

    fn parse_inline(&mut self, buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
        let Some(nl) = memchr(b'\n', &buf[self.cursor..]) else {
            if buf.len() > MAX_INLINE {
                return Err(err("too big inline request"));
            }
            return Ok(None);
        };
        let end = self.cursor + nl + 1;
        if end > MAX_INLINE {
            return Err(err("too big inline request"));
        }
        let mut line = &buf[self.cursor..end - 1];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let args = split_inline(line)?;
        self.cursor = end;
        let req = if args.is_empty() {
            Request::Empty { len: end }
        } else {
            Request::Inline { len: end, args }
        };
        self.reset();
        Ok(Some(req))
    }
}

fn err(msg: &str) -> ProtocolError {
    ProtocolError(msg.to_string())
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Commands with more arguments than this always take the resumable path (a huge command
/// arriving in pieces is then never scanned from its start more than twice).
const WHOLE_MAX_ARGS: u64 = 256;

/// The data path's cheapest framing: a complete RESP array command with short headers at the
/// start of `buf`, returned as (the byte range of its first argument, the command's length).
///
/// It keeps no state and captures nothing but the name, so the proxy can walk a whole
/// pipeline of ordinary commands (`GET`, `SET`, …) in one pass. `None` for anything else —
/// incomplete, inline, a header over 9 digits, an argument over `max_bulk`, more than
/// `WHOLE_MAX_ARGS` arguments — which [`RequestParser::parse`] then frames (or refuses);
/// whenever it returns something, `parse` would have found the same command.
#[inline]
pub fn frame_whole(buf: &[u8], max_bulk: u64) -> Option<(Range<usize>, usize)> {
    let mut name = 0..0;
    let (_, len) = walk_whole(buf, max_bulk, |i, arg| {
        if i == 0 {
            name = arg;
        }
    })?;
    Some((name, len))
}

/// The one-pass walk behind [`frame_whole`] and [`RequestParser::parse`]'s fast path: checks
/// a whole command with short headers at the start of `buf` and hands each argument's byte
/// range (with its index) to `on_arg`. Returns (argument count, the command's length); `None`
/// for anything it does not take (see [`frame_whole`]).
#[inline(always)]
fn walk_whole(
    buf: &[u8],
    max_bulk: u64,
    mut on_arg: impl FnMut(u64, Range<usize>),
) -> Option<(u64, usize)> {
    if buf.first() != Some(&b'*') {
        return None;
    }
    let (argc, mut at) = short_header_number(buf, 1)?;
    if argc == 0 || argc > WHOLE_MAX_ARGS {
        return None;
    }
    for i in 0..argc {
        if buf.get(at) != Some(&b'$') {
            return None;
        }
        let (len, body) = short_header_number(buf, at + 1)?;
        if len > max_bulk {
            return None;
        }
        let end = body + len as usize + 2;
        if buf.len() < end || buf[end - 2] != b'\r' || buf[end - 1] != b'\n' {
            return None;
        }
        on_arg(i, body..end - 2);
        at = end;
    }
    Some((argc, at))
}

/// A short decimal header (`*3`, `$16`: at most 9 digits, no sign, no leading zero) ending in
/// CRLF at `buf[at..]`: its value and the offset after the CRLF. `None` for anything else,
/// which the general path handles.
#[inline(always)]
pub(crate) fn short_header_number(buf: &[u8], at: usize) -> Option<(u64, usize)> {
    let rest = buf.get(at..)?;
    // One or two digits: nearly every header of an ordinary command.
    if let [a, b, c, ..] = *rest {
        let (a, b) = (a.wrapping_sub(b'0'), b.wrapping_sub(b'0'));
        if a <= 9 && b == b'\r'.wrapping_sub(b'0') {
            return (c == b'\n').then_some((u64::from(a), at + 3));
        }
        if (1..=9).contains(&a) && b <= 9 && c == b'\r' {
            return (rest.get(3) == Some(&b'\n')).then_some((u64::from(a * 10 + b), at + 4));
        }
    }
    let mut v: u64 = 0;
    // Up to 9 digits and the CR.
    for (i, &b) in rest.iter().enumerate().take(10) {
        match b {
            b'0'..=b'9' => v = v * 10 + u64::from(b - b'0'),
            b'\r' if i > 0 => {
                if rest.get(i + 1) != Some(&b'\n') || (i > 1 && rest[0] == b'0') {
                    return None;
                }
                return Some((v, at + i + 2));
            }
            _ => return None,
        }
    }
    None
}

/// Reads a `\r\n`-terminated line starting at `from`; returns its content and the offset after
/// the CRLF. `Err` when the line is longer than `max` without an end.
pub(crate) fn read_line(buf: &[u8], from: usize, max: usize) -> Result<Option<(&[u8], usize)>, ()> {
    let hay = &buf[from.min(buf.len())..];
    match memchr(b'\r', &hay[..hay.len().min(max.saturating_add(1))]) {
        Some(i) => {
            if hay.len() < i + 2 {
                return Ok(None);
            }
            if hay[i + 1] != b'\n' {
                return Err(());
            }
            Ok(Some((&hay[..i], from + i + 2)))
        }
        None if hay.len() > max => Err(()),
        None => Ok(None),
    }
}

/// Parses a signed decimal as Redis' `string2ll` does (no spaces, no `+`, no leading zeros
/// beyond a lone `0`).
pub(crate) fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first()? {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if neg { -v } else { v })
}

/// Splits an inline command the way Redis' `sdssplitargs` does: spaces separate arguments,
/// `"…"` supports `\n \r \t \b \a \\ \" \xHH` escapes, `'…'` supports `\'`.
pub fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let unbalanced = || err("unbalanced quotes in request");
    // Redis splits a C string: a NUL byte ends the line.
    let line = &line[..memchr(0, line).unwrap_or(line.len())];
    let mut args = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= n {
            return Ok(args);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                if i >= n {
                    return Err(unbalanced());
                }
                let c = line[i];
                if c == b'\\'
                    && i + 3 < n
                    && line[i + 1] == b'x'
                    && line[i + 2].is_ascii_hexdigit()
                    && line[i + 3].is_ascii_hexdigit()
                {
                    let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                    cur.push(hex(line[i + 2]) * 16 + hex(line[i + 3]));
                    i += 3;
                } else if c == b'\\' && i + 1 < n {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                } else if c == b'"' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return Err(unbalanced());
                    }
                    in_dq = false;
                } else {
                    cur.push(c);
                }
            } else if in_sq {
                if i >= n {
                    return Err(unbalanced());
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return Err(unbalanced());
                    }
                    in_sq = false;
                } else {
                    cur.push(c);
                }
            } else {
                if i >= n {
                    break;
                }
                match line[i] {
                    b' ' | b'\n' | b'\r' | b'\t' => break,
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => cur.push(c),
                }
            }
            i += 1;
        }
        args.push(Bytes::from(cur));
    }
}

/// Encodes arguments as a RESP array of bulk strings (how inline commands are forwarded).
pub fn encode_command(args: &[impl AsRef<[u8]>], out: &mut Vec<u8>) {
    let body: usize = args.iter().map(|a| a.as_ref().len() + 16).sum();
    out.reserve(body + 16);
    push_header(out, b'*', args.len());
    for a in args {
        let a = a.as_ref();
        push_header(out, b'$', a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `<kind><n>\r\n` (decimal digits written in place, no allocation).
fn push_header(out: &mut Vec<u8>, kind: u8, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push(kind);
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
