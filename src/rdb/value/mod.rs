//! Decoding one value, incrementally: [`ValueDecoder`] turns the bytes after a key (or the body
//! of a DUMP payload) into value [`Event`]s in bounded chunks.
//!
//! The decoder is driven with a [`Reader`] over whatever bytes are available. Each call reads
//! whole *records* only (one element, one pair, one compact blob, one quicklist node, one
//! stream node, one PEL entry…) and leaves the reader after the last complete one; when the
//! bytes run out in the middle of a record it returns [`RdbError::Truncated`] and the same
//! record is read again, from its start, on the next call. A plain string bigger than the chunk
//! size is the one exception: its bytes are passed on as they come.
//!
//! Elements are gathered into chunks of at most [`ChunkLimits::items`] elements or about
//! [`ChunkLimits::bytes`] bytes before an event is emitted, so a value of any size needs bounded
//! memory. Compact blobs (ziplist, listpack, intset, zipmap, quicklist nodes, stream nodes) are
//! small by construction (the servers' `*-max-listpack-*` limits) and are decoded whole.
//!
//! [`decode_dump`] applies the same decoder to a DUMP payload, and [`Value`] collects the events
//! of one value into a plain structure (for tests and small keys).

use super::dump::DumpPayload;
use super::encodings::{Entry, ListpackIter, ZiplistIter};
use super::error::{RdbError, Result};
use super::event::{
    Event, HashField, ModuleItem, PendingEntry, StreamConsumer, StreamEntry, StreamGroup, StreamId,
    StreamMeta,
};
use super::primitives::{Length, Reader};
use super::types::{RdbType, module_op, module_type_name};
use super::version::{Dialect, RdbVersion};

mod blob;
mod collect;
mod records;
pub use collect::*;
pub use records::*;
use records::{item_size, read_raw_id, read_stream_id_lens};

/// How big a chunk of elements may grow before it is emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Elements per chunk.
    pub items: usize,
    /// Approximate payload bytes per chunk (also the piece size of big plain strings).
    pub bytes: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits {
            items: 1024,
            bytes: 256 * 1024,
        }
    }
}

impl ChunkLimits {
    /// No chunking: every value in one event per kind (for small values and tests).
    pub const UNLIMITED: ChunkLimits = ChunkLimits {
        items: usize::MAX,
        bytes: usize::MAX,
    };
}

#[derive(Debug)]
enum Chunk {
    Empty,
    List(Vec<Vec<u8>>),
    Set(Vec<Vec<u8>>),
    Zset(Vec<(Vec<u8>, f64)>),
    Hash(Vec<HashField>),
    Stream(Vec<StreamEntry>),
    GroupPel(Vec<PendingEntry>),
    ConsumerPel(Vec<StreamId>),
    Module(Vec<ModuleItem>),
}

macro_rules! push_chunk {
    ($self:ident, $out:ident, $variant:ident, $item:expr, $size:expr) => {{
        let item = $item;
        let size: usize = $size;
        if !matches!($self.chunk, Chunk::$variant(_)) {
            $self.flush($out);
            $self.chunk = Chunk::$variant(Vec::new());
        }
        if let Chunk::$variant(v) = &mut $self.chunk {
            v.push(item);
        }
        $self.chunk_items += 1;
        $self.chunk_bytes = $self.chunk_bytes.saturating_add(size);
        if $self.chunk_items >= $self.limits.items || $self.chunk_bytes >= $self.limits.bytes {
            $self.flush($out);
        }
    }};
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    /// Remaining bytes of a big plain string.
    StringBody {
        left: u64,
    },
    /// Remaining elements of a length-prefixed collection (types 1–5, Valkey 22, Redis 22/24).
    Elements {
        left: u64,
    },
    /// Redis 22/24: `min_expire` is `None` for the pre-GA type (absolute TTLs).
    HashMeta {
        min_expire: Option<i64>,
        left: u64,
    },
    /// Remaining quicklist nodes.
    QuickNodes {
        left: u64,
    },
    StreamNodes {
        left: u64,
    },
    StreamMeta,
    StreamGroup {
        groups_left: u64,
    },
    StreamGroupPel {
        groups_left: u64,
        left: u64,
    },
    StreamConsumerCount {
        groups_left: u64,
    },
    StreamConsumer {
        groups_left: u64,
        left: u64,
    },
    StreamConsumerPel {
        groups_left: u64,
        consumers_left: u64,
        left: u64,
    },
    ModuleItems,
    Done,
}

/// An incremental decoder of one value of a known type (see the [module docs](self)).
#[derive(Debug)]
pub struct ValueDecoder {
    ty: RdbType,
    state: State,
    limits: ChunkLimits,
    chunk: Chunk,
    chunk_items: usize,
    chunk_bytes: usize,
}

fn unsupported(offset: u64, ty: RdbType, why: &str) -> RdbError {
    RdbError::invalid(
        offset,
        "value type",
        format!("{ty} is not supported: {why}"),
    )
}

/// Wraps an error found inside a blob (whose offsets count from the blob) as an error at the
/// blob's position in the stream.
fn blob_error(at: u64, context: &'static str, e: RdbError) -> RdbError {
    RdbError::invalid(at, context, e.to_string())
}

fn owned(s: super::primitives::RdbString<'_>) -> Vec<u8> {
    s.into_bytes().into_owned()
}

impl ValueDecoder {
    /// A decoder for a value of type `ty`. Fails at once for types this parser cannot read
    /// (module values of 4.0 release candidates, Redis 8.6+ stream v4/v5 and arrays).
    pub fn new(ty: RdbType, limits: ChunkLimits) -> Result<ValueDecoder> {
        let why = match ty {
            RdbType::ModulePreGa => Some(
                "a module value of the 4.0 release-candidate format has no annotations; it \
                 cannot be parsed without the module that wrote it",
            ),
            RdbType::StreamListpacks4 | RdbType::StreamListpacks5 => {
                Some("Redis 8.6+ stream layouts are not implemented")
            }
            RdbType::Array => Some("Redis 8.8 arrays are not implemented"),
            _ => None,
        };
        if let Some(why) = why {
            return Err(unsupported(0, ty, why));
        }
        Ok(ValueDecoder {
            ty,
            state: State::Start,
            limits: ChunkLimits {
                items: limits.items.max(1),
                bytes: limits.bytes.max(1),
            },
            chunk: Chunk::Empty,
            chunk_items: 0,
            chunk_bytes: 0,
        })
    }

    /// The type being decoded.
    pub fn rdb_type(&self) -> RdbType {
        self.ty
    }

    /// True once the whole value was read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn flush(&mut self, out: &mut Vec<Event>) {
        let chunk = std::mem::replace(&mut self.chunk, Chunk::Empty);
        self.chunk_items = 0;
        self.chunk_bytes = 0;
        let ev = match chunk {
            Chunk::Empty => return,
            Chunk::List(v) => Event::ListChunk(v),
            Chunk::Set(v) => Event::SetChunk(v),
            Chunk::Zset(v) => Event::ZsetChunk(v),
            Chunk::Hash(v) => Event::HashChunk(v),
            Chunk::Stream(v) => Event::StreamEntries(v),
            Chunk::GroupPel(v) => Event::StreamGroupPel(v),
            Chunk::ConsumerPel(v) => Event::StreamConsumerPel(v),
            Chunk::Module(v) => Event::ModuleItems(v),
        };
        out.push(ev);
    }

    /// Reads as many complete records from `r` as are there (stopping early once it has
    /// emitted events), pushing events to `out`. Returns `Ok(true)` when the value is complete.
    /// [`RdbError::Truncated`] means "call again with more bytes": everything before the
    /// incomplete record has been consumed from `r` and reported.
    pub fn step(&mut self, r: &mut Reader<'_>, out: &mut Vec<Event>) -> Result<bool> {
        let before = out.len();
        loop {
            if self.state == State::Done {
                self.flush(out);
                return Ok(true);
            }
            if out.len() > before {
                return Ok(false);
            }
            self.advance(r, out)?;
        }
    }

    fn push_list(&mut self, v: Vec<u8>, out: &mut Vec<Event>) {
        let size = v_len_plus(&v);
        push_chunk!(self, out, List, v, size);
    }

    fn push_set(&mut self, v: Vec<u8>, out: &mut Vec<Event>) {
        let size = v_len_plus(&v);
        push_chunk!(self, out, Set, v, size);
    }

    fn push_zset(&mut self, m: Vec<u8>, score: f64, out: &mut Vec<Event>) {
        let size = m.len() + 8;
        push_chunk!(self, out, Zset, (m, score), size);
    }

    fn push_hash(&mut self, f: HashField, out: &mut Vec<Event>) {
        let size = f.field.len() + f.value.len() + 8;
        push_chunk!(self, out, Hash, f, size);
    }

    /// Reads one record.
    fn advance(&mut self, r: &mut Reader<'_>, out: &mut Vec<Event>) -> Result<()> {
        use RdbType as T;
        let at = r.offset();
        match self.state {
            State::Done => {}
            State::Start => self.start(r, out)?,
            State::StringBody { left } => {
                let avail = r.remaining() as u64;
                if avail == 0 {
                    // Any byte is progress: ask for one, not for the rest of the string.
                    return Err(RdbError::truncated(at, "string value", 1, 0));
                }
                let n = left.min(avail).min(self.limits.bytes as u64) as usize;
                let data = r.read_bytes(n, "string value")?;
                out.push(Event::StringChunk(data.to_vec()));
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::Done
                } else {
                    State::StringBody { left }
                };
            }
            State::Elements { left } => {
                let mut t = r.clone();
                const CTX: &str = "collection element";
                match self.ty {
                    T::List => {
                        let v = owned(t.read_string(CTX)?);
                        *r = t;
                        self.push_list(v, out);
                    }
                    T::Set => {
                        let v = owned(t.read_string(CTX)?);
                        *r = t;
                        self.push_set(v, out);
                    }
                    T::Zset | T::Zset2 => {
                        let m = owned(t.read_string(CTX)?);
                        let score = if self.ty == T::Zset {
                            t.read_string_double("zset score")?
                        } else {
                            t.read_f64_le("zset score")?
                        };
                        *r = t;
                        self.push_zset(m, score, out);
                    }
                    T::Hash | T::Hash2 => {
                        let field = owned(t.read_string(CTX)?);
                        let value = owned(t.read_string(CTX)?);
                        let expire_ms = if self.ty == T::Hash2 {
                            let e = t.read_i64_le("hash field expiry")?;
                            (e != -1).then_some(e)
                        } else {
                            None
                        };
                        *r = t;
                        self.push_hash(
                            HashField {
                                field,
                                value,
                                expire_ms,
                            },
                            out,
                        );
                    }
                    _ => return Err(RdbError::invalid(at, CTX, "internal: wrong state")),
                }
                self.state = match left - 1 {
                    0 => State::Done,
                    left => State::Elements { left },
                };
            }
            State::HashMeta { min_expire, left } => {
                let mut t = r.clone();
                let ttl_at = t.offset();
                let ttl = t.read_len("hash field ttl")?;
                let field = owned(t.read_string("hash field")?);
                let value = owned(t.read_string("hash value")?);
                let expire = match (ttl, min_expire) {
                    (0, _) => None,
                    (ttl, Some(min)) => Some((ttl as i64).wrapping_add(min).wrapping_sub(1)),
                    (ttl, None) => Some(ttl as i64),
                };
                if expire.is_some_and(|e| !(0..=(1 << 48) - 1).contains(&e)) {
                    return Err(RdbError::invalid(
                        ttl_at,
                        "hash field ttl",
                        "expiry out of range",
                    ));
                }
                *r = t;
                self.push_hash(
                    HashField {
                        field,
                        value,
                        expire_ms: expire,
                    },
                    out,
                );
                self.state = match left - 1 {
                    0 => State::Done,
                    left => State::HashMeta { min_expire, left },
                };
            }
            State::QuickNodes { left } => {
                let mut t = r.clone();
                let v2 = self.ty == T::ListQuicklist2;
                let container = if v2 {
                    t.read_len("quicklist container")?
                } else {
                    2
                };
                let blob_at = t.offset();
                let blob = t.read_blob("quicklist node")?;
                *r = t;
                match (v2, container) {
                    (true, 1) => self.push_list(blob.into_owned(), out),
                    (true, 2) => self.push_listpack_list(&blob, blob_at, out)?,
                    (false, _) => {
                        let it = ZiplistIter::new(&blob)
                            .map_err(|e| blob_error(blob_at, "quicklist ziplist node", e))?;
                        for e in it {
                            let e =
                                e.map_err(|e| blob_error(blob_at, "quicklist ziplist node", e))?;
                            self.push_list(e.to_bytes().into_owned(), out);
                        }
                    }
                    (true, c) => {
                        return Err(RdbError::invalid(
                            at,
                            "quicklist container",
                            format!("unknown container type {c}"),
                        ));
                    }
                }
                self.state = match left - 1 {
                    0 => State::Done,
                    left => State::QuickNodes { left },
                };
            }
            State::StreamNodes { left } => {
                let mut t = r.clone();
                let node_key = t.read_blob("stream node key")?;
                let lp_at = t.offset();
                let lp = t.read_blob("stream node listpack")?;
                *r = t;
                let entries = decode_stream_node(&node_key, &lp)
                    .map_err(|e| blob_error(lp_at, "stream node", e))?;
                for e in entries {
                    let size = 16
                        + e.fields
                            .iter()
                            .map(|(f, v)| f.len() + v.len())
                            .sum::<usize>();
                    push_chunk!(self, out, Stream, e, size);
                }
                self.state = match left - 1 {
                    0 => State::StreamMeta,
                    left => State::StreamNodes { left },
                };
            }
            State::StreamMeta => {
                const CTX: &str = "stream metadata";
                let mut t = r.clone();
                let length = t.read_len(CTX)?;
                let last_id = read_stream_id_lens(&mut t, CTX)?;
                let v2 = self.ty != T::StreamListpacks;
                let (first_id, max_deleted_id, entries_added) = if v2 {
                    (
                        Some(read_stream_id_lens(&mut t, CTX)?),
                        Some(read_stream_id_lens(&mut t, CTX)?),
                        Some(t.read_len(CTX)?),
                    )
                } else {
                    (None, None, None)
                };
                let groups = t.read_len("stream group count")?;
                *r = t;
                self.flush(out);
                out.push(Event::StreamMeta(StreamMeta {
                    length,
                    last_id,
                    first_id,
                    max_deleted_id,
                    entries_added,
                    groups,
                }));
                self.state = if groups == 0 {
                    State::Done
                } else {
                    State::StreamGroup {
                        groups_left: groups,
                    }
                };
            }
            State::StreamGroup { groups_left } => {
                const CTX: &str = "stream consumer group";
                let mut t = r.clone();
                let name = owned(t.read_string(CTX)?);
                let last_id = read_stream_id_lens(&mut t, CTX)?;
                let entries_read = if self.ty != T::StreamListpacks {
                    Some(t.read_len(CTX)?)
                } else {
                    None
                };
                let pending = t.read_len("stream group PEL size")?;
                *r = t;
                self.flush(out);
                out.push(Event::StreamGroup(StreamGroup {
                    name,
                    last_id,
                    entries_read,
                    pending,
                }));
                let groups_left = groups_left - 1;
                self.state = if pending == 0 {
                    State::StreamConsumerCount { groups_left }
                } else {
                    State::StreamGroupPel {
                        groups_left,
                        left: pending,
                    }
                };
            }
            State::StreamGroupPel { groups_left, left } => {
                const CTX: &str = "stream PEL entry";
                let mut t = r.clone();
                let id = read_raw_id(&mut t, CTX)?;
                let delivery_time_ms = t.read_millis(CTX)?;
                let delivery_count = t.read_len(CTX)?;
                *r = t;
                let entry = PendingEntry {
                    id,
                    delivery_time_ms,
                    delivery_count,
                };
                push_chunk!(self, out, GroupPel, entry, 32);
                self.state = match left - 1 {
                    0 => State::StreamConsumerCount { groups_left },
                    left => State::StreamGroupPel { groups_left, left },
                };
            }
            State::StreamConsumerCount { groups_left } => {
                let n = r.read_len("stream consumer count")?;
                self.state = if n > 0 {
                    State::StreamConsumer {
                        groups_left,
                        left: n,
                    }
                } else {
                    Self::after_group(groups_left)
                };
            }
            State::StreamConsumer { groups_left, left } => {
                const CTX: &str = "stream consumer";
                let mut t = r.clone();
                let name = owned(t.read_string(CTX)?);
                let seen_time_ms = t.read_millis(CTX)?;
                let active_time_ms = if self.ty == T::StreamListpacks3 {
                    Some(t.read_millis(CTX)?)
                } else {
                    None
                };
                let pending = t.read_len("stream consumer PEL size")?;
                *r = t;
                self.flush(out);
                out.push(Event::StreamConsumer(StreamConsumer {
                    name,
                    seen_time_ms,
                    active_time_ms,
                    pending,
                }));
                let consumers_left = left - 1;
                self.state = if pending == 0 {
                    Self::after_consumer(groups_left, consumers_left)
                } else {
                    State::StreamConsumerPel {
                        groups_left,
                        consumers_left,
                        left: pending,
                    }
                };
            }
            State::StreamConsumerPel {
                groups_left,
                consumers_left,
                left,
            } => {
                let id = read_raw_id(r, "stream consumer PEL entry")?;
                push_chunk!(self, out, ConsumerPel, id, 16);
                self.state = match left - 1 {
                    0 => Self::after_consumer(groups_left, consumers_left),
                    left => State::StreamConsumerPel {
                        groups_left,
                        consumers_left,
                        left,
                    },
                };
            }
            State::ModuleItems => match read_module_item(r)? {
                None => self.state = State::Done,
                Some(item) => {
                    let size = item_size(&item);
                    push_chunk!(self, out, Module, item, size);
                }
            },
        }
        Ok(())
    }

    fn after_consumer(groups_left: u64, consumers_left: u64) -> State {
        if consumers_left > 0 {
            State::StreamConsumer {
                groups_left,
                left: consumers_left,
            }
        } else {
            Self::after_group(groups_left)
        }
    }

    fn after_group(groups_left: u64) -> State {
        if groups_left > 0 {
            State::StreamGroup { groups_left }
        } else {
            State::Done
        }
    }

    /// The first record: a length, a blob, or a whole small string.
    fn start(&mut self, r: &mut Reader<'_>, out: &mut Vec<Event>) -> Result<()> {
        use RdbType as T;
        let at = r.offset();
        let counted = |left: u64, s: State| if left == 0 { State::Done } else { s };
        match self.ty {
            T::String => {
                let mut t = r.clone();
                match t.read_length("string value")? {
                    Length::Plain(n) if n > self.limits.bytes as u64 => {
                        *r = t;
                        self.state = State::StringBody { left: n };
                    }
                    _ => {
                        let s = r.read_string("string value")?;
                        out.push(Event::StringChunk(owned(s)));
                        self.state = State::Done;
                    }
                }
            }
            T::List | T::Set | T::Zset | T::Zset2 | T::Hash | T::Hash2 => {
                let n = r.read_len("collection length")?;
                self.state = counted(n, State::Elements { left: n });
            }
            T::HashMetadataPreGa => {
                let n = r.read_len("hash length")?;
                self.state = counted(
                    n,
                    State::HashMeta {
                        min_expire: None,
                        left: n,
                    },
                );
            }
            T::HashMetadata => {
                let mut t = r.clone();
                let min = t.read_millis("hash min expire")?;
                let n = t.read_len("hash length")?;
                *r = t;
                self.state = counted(
                    n,
                    State::HashMeta {
                        min_expire: Some(min),
                        left: n,
                    },
                );
            }
            T::ListQuicklist | T::ListQuicklist2 => {
                let n = r.read_len("quicklist node count")?;
                self.state = counted(n, State::QuickNodes { left: n });
            }
            T::StreamListpacks | T::StreamListpacks2 | T::StreamListpacks3 => {
                let n = r.read_len("stream node count")?;
                self.state = counted(n, State::StreamNodes { left: n });
                if n == 0 {
                    self.state = State::StreamMeta;
                }
            }
            T::Module2 => {
                let id = r.read_len("module id")?;
                let (name, encver) = module_type_name(id);
                out.push(Event::ModuleValue {
                    module_id: id,
                    name,
                    encver,
                });
                self.state = State::ModuleItems;
            }
            T::HashListpackEx => {
                let mut t = r.clone();
                t.read_millis("hash min expire")?;
                let blob_at = t.offset();
                let blob = t.read_blob("hash listpack")?;
                *r = t;
                self.blob(&blob, blob_at, out)?;
                self.state = State::Done;
            }
            T::HashZipmap
            | T::ListZiplist
            | T::SetIntset
            | T::ZsetZiplist
            | T::HashZiplist
            | T::HashListpack
            | T::ZsetListpack
            | T::SetListpack
            | T::HashListpackExPreGa => {
                let mut t = r.clone();
                let blob_at = t.offset();
                let blob = t.read_blob("compact value")?;
                *r = t;
                self.blob(&blob, blob_at, out)?;
                self.state = State::Done;
            }
            T::ModulePreGa | T::StreamListpacks4 | T::StreamListpacks5 | T::Array => {
                return Err(unsupported(at, self.ty, "see ValueDecoder::new"));
            }
        }
        Ok(())
    }
}

fn v_len_plus(v: &[u8]) -> usize {
    v.len() + 8
}
