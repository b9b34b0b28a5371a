//! The streaming RDB file parser: bytes in, in pieces of any size, [`Event`]s out.
//!
//! ```no_run
//! # use cutover::rdb::parser::RdbParser;
//! # fn read_some() -> Option<Vec<u8>> { None }
//! let mut parser = RdbParser::new();
//! while let Some(piece) = read_some() {
//!     parser.feed(&piece);
//!     while let Some(event) = parser.next_event()? {
//!         // KeyStart, ListChunk, KeyEnd { raw }, ...
//!     }
//! }
//! parser.finish()?; // the input ended: was the file complete?
//! # Ok::<(), cutover::rdb::RdbError>(())
//! ```
//!
//! # Memory and resumption
//!
//! [`RdbParser::feed`] appends to an internal buffer; [`RdbParser::next_event`] parses from it
//! and drops what it consumed. The buffer holds at most the current *record* (an opcode with
//! its payload, a key name, one element, one compact blob, one quicklist or stream node) plus
//! whatever was fed and not parsed yet: never a whole big key (its elements are emitted in
//! chunks, see [`ChunkLimits`]) and never the whole file. When a record is incomplete the parser
//! remembers how many bytes it needs and does not look at it again until they are there, so a
//! record arriving in many pieces is scanned about once.
//!
//! # Raw values
//!
//! For every key whose encoded value is at most [`ParserOptions::raw_limit`] bytes,
//! [`Event::KeyEnd`] carries `raw`: the type byte and the value exactly as in the file, which is
//! the body of a DUMP payload ([`build_dump`](super::dump::build_dump) adds the footer). A
//! target that knows the type can `RESTORE` it directly; the decoded events are there for the
//! others.
//!
//! # Checksum
//!
//! From RDB 5 on, the 8 bytes after the EOF opcode are the CRC-64 of everything before them.
//! The parser computes it as it goes and fails with [`RdbError::Checksum`] on a mismatch; a
//! stored 0 means the writer had checksums off and is not checked.
//!
//! After [`Event::Eof`] the parser stops; any bytes fed beyond the trailer are left in
//! [`RdbParser::trailing`] (on a diskless replication stream, the EOF marker comes next).

use std::collections::VecDeque;

use super::crc64::Crc64;
use super::error::{RdbError, Result};
use super::event::{Event, KeyInfo};
use super::primitives::Reader;
use super::types::{self as ty, RdbType, module_type_name};
use super::value::{ChunkLimits, ValueDecoder, read_module_item};
use super::version::{Dialect, HEADER_LEN, RdbVersion, parse_header};

#[cfg(test)]
mod tests;

/// Parser settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserOptions {
    /// Largest encoded value (type byte included) whose raw bytes are kept for
    /// [`Event::KeyEnd`]; 0 keeps none.
    pub raw_limit: usize,
    /// Chunk sizes of value events.
    pub chunks: ChunkLimits,
    /// Verify the CRC-64 trailer (when non-zero).
    pub verify_checksum: bool,
    /// Keep `raw` for strings without an expiry too. A consumer that writes such strings
    /// with plain commands (the sync's batched `MSET`) turns this off and saves a copy of
    /// every one.
    pub raw_strings_without_expiry: bool,
}

impl Default for ParserOptions {
    fn default() -> Self {
        ParserOptions {
            raw_limit: 512 * 1024,
            chunks: ChunkLimits::default(),
            verify_checksum: true,
            raw_strings_without_expiry: true,
        }
    }
}

/// Room reserved for a key's raw value up front (most values are small; growing from one
/// byte would reallocate several times per key).
const RAW_START_CAPACITY: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    Header,
    Items,
    Value,
    Trailer,
    Done,
}

/// Prefix opcodes that apply to the next key.
#[derive(Debug, Default, Clone, Copy)]
struct KeyPrefix {
    expire_ms: Option<i64>,
    idle_s: Option<u64>,
    freq: Option<u8>,
}

/// The state that survives between records (separate from the input buffer so one can be
/// borrowed while the other changes).
#[derive(Debug)]
struct Machine {
    opts: ParserOptions,
    top: Top,
    version: RdbVersion,
    dialect: Dialect,
    db: u64,
    prefix: KeyPrefix,
    value: Option<ValueDecoder>,
    raw: Option<Vec<u8>>,
    crc: Crc64,
}

/// A push-style, resumable RDB parser (see the [module docs](self)).
#[derive(Debug)]
pub struct RdbParser {
    m: Machine,
    buf: Vec<u8>,
    /// Start of the unparsed bytes in `buf`.
    pos: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Do not parse again before the stream has this many bytes.
    need: u64,
    queue: VecDeque<Event>,
    scratch: Vec<Event>,
    failed: Option<RdbError>,
}

impl Default for RdbParser {
    fn default() -> Self {
        RdbParser::new()
    }
}

impl RdbParser {
    /// A parser with default options.
    pub fn new() -> RdbParser {
        RdbParser::with_options(ParserOptions::default())
    }

    /// A parser with the given options.
    pub fn with_options(opts: ParserOptions) -> RdbParser {
        RdbParser {
            m: Machine {
                opts,
                top: Top::Header,
                version: RdbVersion(0),
                dialect: Dialect::Common,
                db: 0,
                prefix: KeyPrefix::default(),
                value: None,
                raw: None,
                crc: Crc64::new(),
            },
            buf: Vec::new(),
            pos: 0,
            base: 0,
            need: 0,
            queue: VecDeque::new(),
            scratch: Vec::new(),
            failed: None,
        }
    }

    /// Appends input. Cheap: parsing happens in [`RdbParser::next_event`].
    pub fn feed(&mut self, input: &[u8]) {
        if self.pos > 0 && (self.pos == self.buf.len() || self.pos >= self.buf.len() / 2) {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        self.buf.extend_from_slice(input);
    }

    /// The next event, or `Ok(None)` when more input is needed (or the file is complete: see
    /// [`RdbParser::is_done`]). After an error every call returns the same error.
    pub fn next_event(&mut self) -> Result<Option<Event>> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Ok(Some(ev));
            }
            if let Some(e) = &self.failed {
                return Err(e.clone());
            }
            if self.m.top == Top::Done {
                return Ok(None);
            }
            let end = self.base + self.buf.len() as u64;
            if end < self.need {
                return Ok(None);
            }
            let avail = &self.buf[self.pos..];
            let mut r = Reader::with_base(avail, self.base + self.pos as u64);
            let crc_on = self.m.top != Top::Trailer;
            let res = self.m.step(&mut r, &mut self.scratch);
            let used = r.position();
            if crc_on {
                self.m.crc.update(&avail[..used]);
            }
            self.pos += used;
            self.queue.extend(self.scratch.drain(..));
            match res {
                Ok(()) => self.need = 0,
                Err(RdbError::Truncated { offset, needed, .. }) => {
                    self.need = offset.saturating_add(needed).max(end + 1);
                }
                Err(e) => {
                    // Hand out the events before the error first.
                    self.failed = Some(e);
                }
            }
        }
    }

    /// Feeds `input` and returns every event it completes.
    pub fn feed_and_collect(&mut self, input: &[u8]) -> Result<Vec<Event>> {
        self.feed(input);
        let mut out = Vec::new();
        while let Some(ev) = self.next_event()? {
            out.push(ev);
        }
        Ok(out)
    }

    /// Call when the input has ended: an error unless the whole file (through the checksum)
    /// was parsed.
    pub fn finish(&self) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.m.top == Top::Done {
            return Ok(());
        }
        let at = self.base + self.pos as u64;
        let have = (self.buf.len() - self.pos) as u64;
        Err(RdbError::truncated(
            at,
            "RDB file",
            self.need.saturating_sub(at).max(have + 1),
            have,
        ))
    }

    /// True once [`Event::Eof`] has been produced.
    pub fn is_done(&self) -> bool {
        self.m.top == Top::Done
    }

    /// The RDB version (0 before the header was read).
    pub fn version(&self) -> RdbVersion {
        self.m.version
    }

    /// Bytes consumed so far (the stream offset of the next unparsed byte).
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Bytes fed but not part of the file (after the trailer, once done).
    pub fn trailing(&self) -> &[u8] {
        if self.is_done() {
            &self.buf[self.pos..]
        } else {
            &[]
        }
    }

    /// Bytes currently buffered (for memory accounting).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Parses a whole file held in memory.
pub fn parse_all(data: &[u8], opts: ParserOptions) -> Result<Vec<Event>> {
    let mut p = RdbParser::with_options(opts);
    let events = p.feed_and_collect(data)?;
    p.finish()?;
    Ok(events)
}

impl Machine {
    fn step(&mut self, r: &mut Reader<'_>, out: &mut Vec<Event>) -> Result<()> {
        match self.top {
            Top::Header => {
                let at = r.offset();
                let mut t = r.clone();
                let header = t.read_bytes(HEADER_LEN, "RDB header")?;
                let version = parse_header(header).map_err(|e| e.rebased(at))?;
                *r = t;
                self.version = version;
                self.dialect = version.dialect();
                self.top = Top::Items;
                out.push(Event::Header {
                    version,
                    dialect: self.dialect,
                });
            }
            Top::Items => self.item(r, out)?,
            Top::Value => {
                let Some(dec) = self.value.as_mut() else {
                    self.top = Top::Items;
                    return Ok(());
                };
                let start = r.position();
                let res = dec.step(r, out);
                let bytes = &r.consumed()[start..];
                if let Some(raw) = &mut self.raw {
                    if raw.len() + bytes.len() <= self.opts.raw_limit {
                        raw.extend_from_slice(bytes);
                    } else {
                        self.raw = None;
                    }
                }
                if res? {
                    self.value = None;
                    self.top = Top::Items;
                    out.push(Event::KeyEnd {
                        raw: self.raw.take(),
                    });
                }
            }
            Top::Trailer => {
                let (checksum, verified) = if self.version.get() >= 5 {
                    let at = r.offset();
                    let stored = r.read_u64_le("RDB checksum")?;
                    let computed = self.crc.value();
                    let check = stored != 0 && self.opts.verify_checksum;
                    if check && stored != computed {
                        return Err(RdbError::Checksum {
                            offset: at,
                            context: "RDB file",
                            stored,
                            computed,
                        });
                    }
                    (Some(stored), check)
                } else {
                    (None, false)
                };
                self.top = Top::Done;
                out.push(Event::Eof { checksum, verified });
            }
            Top::Done => {}
        }
        Ok(())
    }

    /// One opcode with its payload, or a key's type byte and name.
    fn item(&mut self, r: &mut Reader<'_>, out: &mut Vec<Event>) -> Result<()> {
        let at = r.offset();
        let mut t = r.clone();
        let op = t.read_u8("type or opcode")?;
        match op {
            ty::OP_EOF => {
                *r = t;
                self.top = Top::Trailer;
                return Ok(());
            }
            ty::OP_SELECTDB => {
                let db = t.read_len("SELECTDB")?;
                self.db = db;
                out.push(Event::SelectDb { db });
            }
            ty::OP_EXPIRETIME => {
                let s = t.read_seconds("EXPIRETIME")?;
                self.prefix.expire_ms = Some(s as i64 * 1000);
            }
            ty::OP_EXPIRETIME_MS => {
                self.prefix.expire_ms = Some(t.read_millis("EXPIRETIME_MS")?);
            }
            ty::OP_RESIZEDB => {
                let db_size = t.read_len("RESIZEDB")?;
                let expires_size = t.read_len("RESIZEDB")?;
                out.push(Event::ResizeDb {
                    db_size,
                    expires_size,
                });
            }
            ty::OP_AUX => {
                let key = t.read_string("AUX key")?.into_bytes().into_owned();
                let value = t.read_string("AUX value")?.into_bytes().into_owned();
                out.push(Event::Aux { key, value });
            }
            ty::OP_FREQ => self.prefix.freq = Some(t.read_u8("FREQ")?),
            ty::OP_IDLE => self.prefix.idle_s = Some(t.read_len("IDLE")?),
            ty::OP_MODULE_AUX => {
                let start = t.position();
                let module_id = t.read_len("MODULE_AUX module id")?;
                let (name, encver) = module_type_name(module_id);
                let when_op_at = t.offset();
                let when_op = t.read_len("MODULE_AUX when opcode")?;
                if when_op != ty::module_op::UINT {
                    return Err(RdbError::invalid(
                        when_op_at,
                        "MODULE_AUX",
                        format!("module {name}: 'when' has opcode {when_op}, expected 2"),
                    ));
                }
                let when = t.read_len("MODULE_AUX when")?;
                let mut items = Vec::new();
                while let Some(item) = read_module_item(&mut t)? {
                    items.push(item);
                }
                let raw = t.consumed()[start..].to_vec();
                out.push(Event::ModuleAux {
                    module_id,
                    name,
                    encver,
                    when,
                    items,
                    raw,
                });
            }
            ty::OP_FUNCTION_PRE_GA => {
                return Err(RdbError::invalid(
                    at,
                    "FUNCTION",
                    "functions of Redis 7.0 release candidates (opcode 246) are not supported",
                ));
            }
            ty::OP_FUNCTION2 => {
                let code = t.read_string("FUNCTION2")?.into_bytes().into_owned();
                out.push(Event::Function { code });
            }
            ty::OP_SLOT_INFO => {
                let slot = t.read_len("SLOT_INFO")?;
                let keys = t.read_len("SLOT_INFO")?;
                let expires = t.read_len("SLOT_INFO")?;
                out.push(Event::SlotInfo {
                    slot,
                    keys,
                    expires,
                });
            }
            ty::OP_KEY_META_OR_SLOT_IMPORT if self.dialect == Dialect::Valkey => {
                // Layout from the reference notes (not checked against a server yet).
                let job_name = t.read_string("SLOT_IMPORT")?.into_bytes().into_owned();
                let n = t.read_len("SLOT_IMPORT range count")?;
                let mut ranges = Vec::with_capacity(t.capacity_hint(n, 2));
                for _ in 0..n {
                    let start = t.read_len("SLOT_IMPORT range")?;
                    let end = t.read_len("SLOT_IMPORT range")?;
                    ranges.push((start, end));
                }
                out.push(Event::SlotImport { job_name, ranges });
            }
            ty::OP_KEY_META_OR_SLOT_IMPORT if self.dialect == Dialect::Redis => {
                return Err(RdbError::invalid(
                    at,
                    "KEY_META",
                    "per-key module metadata (Redis 8.6+, opcode 243) is not supported",
                ));
            }
            id => {
                let Some(rdb_type) = RdbType::from_id(id, self.dialect) else {
                    return Err(RdbError::invalid(
                        at,
                        "type or opcode",
                        format!("unknown type or opcode {id} in {}", self.version),
                    ));
                };
                let dec =
                    ValueDecoder::new(rdb_type, self.opts.chunks).map_err(|e| e.rebased(at))?;
                let key = t.read_string("key")?.into_bytes().into_owned();
                let prefix = std::mem::take(&mut self.prefix);
                let keep_raw = self.opts.raw_limit > 0
                    && (self.opts.raw_strings_without_expiry
                        || prefix.expire_ms.is_some()
                        || rdb_type.kind() != ty::ValueKind::String);
                self.raw = keep_raw.then(|| {
                    let mut raw = Vec::with_capacity(RAW_START_CAPACITY);
                    raw.push(id);
                    raw
                });
                out.push(Event::KeyStart(KeyInfo {
                    db: self.db,
                    key,
                    rdb_type,
                    expire_ms: prefix.expire_ms,
                    idle_s: prefix.idle_s,
                    freq: prefix.freq,
                }));
                self.value = Some(dec);
                self.top = Top::Value;
            }
        }
        *r = t;
        Ok(())
    }
}
