//! What the streaming parser reports: [`Event`]s, and the records they carry.
//!
//! A file yields, in order:
//!
//! ```text
//! Header
//! (Aux | ModuleAux | Function | SlotImport | SelectDb | ResizeDb | SlotInfo | key)*
//! Eof
//!
//! key = KeyStart  <value events>  KeyEnd
//! ```
//!
//! The value events of one key depend on its [`ValueKind`](super::types::ValueKind):
//!
//! | kind | events |
//! |---|---|
//! | string | `StringChunk`* (one chunk unless the string is bigger than the chunk size) |
//! | list | `ListChunk`* |
//! | set | `SetChunk`* |
//! | zset | `ZsetChunk`* |
//! | hash | `HashChunk`* (fields with their TTL, if the type has TTLs) |
//! | stream | `StreamEntries`*, `StreamMeta`, then per group: `StreamGroup`, `StreamGroupPel`*, then per consumer: `StreamConsumer`, `StreamConsumerPel`* |
//! | module | `ModuleValue`, `ModuleItems`* |
//!
//! An empty collection has no chunk at all. Chunks are bounded (see
//! [`ChunkLimits`](super::value::ChunkLimits)), so a key of any size passes through in bounded
//! memory; a *single element* (one list item, one hash value) is always whole.

use std::fmt;

use super::types::RdbType;
use super::version::{Dialect, RdbVersion};

/// A stream entry ID: milliseconds and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl StreamId {
    /// Parses the 16-byte big-endian form (stream node keys, PEL entries).
    pub fn from_be_bytes(b: &[u8; 16]) -> StreamId {
        let mut ms = [0u8; 8];
        let mut seq = [0u8; 8];
        ms.copy_from_slice(&b[..8]);
        seq.copy_from_slice(&b[8..]);
        StreamId {
            ms: u64::from_be_bytes(ms),
            seq: u64::from_be_bytes(seq),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One live stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// Its ID.
    pub id: StreamId,
    /// Field/value pairs, in order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Stream-wide metadata, after the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMeta {
    /// Number of live entries (`XLEN`).
    pub length: u64,
    /// The last ID ever generated.
    pub last_id: StreamId,
    /// First live ID (stream v2+, i.e. type 19 and later).
    pub first_id: Option<StreamId>,
    /// Highest deleted ID (v2+).
    pub max_deleted_id: Option<StreamId>,
    /// Entries ever added (v2+).
    pub entries_added: Option<u64>,
    /// Number of consumer groups that follow.
    pub groups: u64,
}

/// A consumer group header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamGroup {
    /// Group name.
    pub name: Vec<u8>,
    /// Last delivered ID.
    pub last_id: StreamId,
    /// Entries read (v2+); `u64::MAX` is the servers' "invalid/unknown" marker (-1).
    pub entries_read: Option<u64>,
    /// Number of pending entries that follow.
    pub pending: u64,
}

/// An entry of a group's pending entries list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingEntry {
    /// The pending entry's ID.
    pub id: StreamId,
    /// Last delivery time, unix ms.
    pub delivery_time_ms: i64,
    /// Number of deliveries.
    pub delivery_count: u64,
}

/// A consumer of the current group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConsumer {
    /// Consumer name.
    pub name: Vec<u8>,
    /// Last time seen, unix ms.
    pub seen_time_ms: i64,
    /// Last successful read/claim, unix ms (v3+, type 21).
    pub active_time_ms: Option<i64>,
    /// Number of its pending IDs that follow.
    pub pending: u64,
}

/// An annotated item of a module value or of module AUX data.
#[derive(Debug, Clone, PartialEq)]
pub enum ModuleItem {
    /// A signed integer.
    Sint(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A float.
    Float(f32),
    /// A double.
    Double(f64),
    /// A string.
    String(Vec<u8>),
}

/// A hash field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashField {
    /// Field name.
    pub field: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Absolute expiry in unix ms, for hashes with field TTLs.
    pub expire_ms: Option<i64>,
}

/// Everything known about a key before its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Database number (from the last SELECTDB; 0 before any).
    pub db: u64,
    /// Key name.
    pub key: Vec<u8>,
    /// Its type id, as resolved for the file's dialect.
    pub rdb_type: RdbType,
    /// Absolute expiry in unix ms (from EXPIRETIME_MS, or EXPIRETIME × 1000).
    pub expire_ms: Option<i64>,
    /// LRU idle time in seconds.
    pub idle_s: Option<u64>,
    /// LFU counter.
    pub freq: Option<u8>,
}

/// One step of an RDB file (see the [module documentation](self) for the order).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The 9-byte header.
    Header {
        /// RDB version.
        version: RdbVersion,
        /// Numbering of type ids and opcodes.
        dialect: Dialect,
    },
    /// An AUX field (`redis-ver`, `ctime`, `repl-id`, `lua`…).
    Aux {
        /// Field name.
        key: Vec<u8>,
        /// Field value.
        value: Vec<u8>,
    },
    /// The keys that follow are in this database.
    SelectDb {
        /// Database number.
        db: u64,
    },
    /// Size hint for the current database.
    ResizeDb {
        /// Number of keys.
        db_size: u64,
        /// Number of keys with an expiry.
        expires_size: u64,
    },
    /// Slot size information (Redis 7.4+ cluster).
    SlotInfo {
        /// Slot number.
        slot: u64,
        /// Keys in it.
        keys: u64,
        /// Keys with an expiry in it.
        expires: u64,
    },
    /// One function library (opcode 245): its full source.
    Function {
        /// Library code, starting with `#!<engine> name=<lib>`.
        code: Vec<u8>,
    },
    /// Module auxiliary data (opcode 247).
    ModuleAux {
        /// The 64-bit module type id.
        module_id: u64,
        /// The module type name decoded from the id.
        name: String,
        /// Encoding version decoded from the id.
        encver: u16,
        /// 1 = before the keyspace, 2 = after.
        when: u64,
        /// The annotated items.
        items: Vec<ModuleItem>,
        /// The record as it appears in the file after the opcode byte (for copying it).
        raw: Vec<u8>,
    },
    /// Valkey 9 atomic slot migration state (opcode 243 in the Valkey dialect).
    SlotImport {
        /// Job name.
        job_name: Vec<u8>,
        /// Slot ranges (start, end), inclusive.
        ranges: Vec<(u64, u64)>,
    },
    /// A key begins; its value events follow, then [`Event::KeyEnd`].
    KeyStart(KeyInfo),
    /// A piece of a string value (pieces concatenate to the value). A string up to the chunk
    /// size is one piece; a bigger plain string is passed on as its bytes arrive, so where it is
    /// cut depends on how the input was fed.
    StringChunk(Vec<u8>),
    /// List elements, in order.
    ListChunk(Vec<Vec<u8>>),
    /// Set members.
    SetChunk(Vec<Vec<u8>>),
    /// Sorted set members with their scores.
    ZsetChunk(Vec<(Vec<u8>, f64)>),
    /// Hash fields.
    HashChunk(Vec<HashField>),
    /// Live stream entries, in ID order.
    StreamEntries(Vec<StreamEntry>),
    /// Stream metadata (after all entries, before the groups).
    StreamMeta(StreamMeta),
    /// A consumer group begins.
    StreamGroup(StreamGroup),
    /// Pending entries of the current group.
    StreamGroupPel(Vec<PendingEntry>),
    /// A consumer of the current group begins.
    StreamConsumer(StreamConsumer),
    /// Pending IDs of the current consumer.
    StreamConsumerPel(Vec<StreamId>),
    /// A module value begins.
    ModuleValue {
        /// The 64-bit module type id.
        module_id: u64,
        /// The module type name decoded from it.
        name: String,
        /// Encoding version decoded from it.
        encver: u16,
    },
    /// Annotated items of the current module value.
    ModuleItems(Vec<ModuleItem>),
    /// The key's value is complete.
    KeyEnd {
        /// `type byte + value` exactly as in the file (a DUMP payload body, see
        /// [`build_dump`](super::dump::build_dump)), if it was no bigger than the parser's
        /// raw limit.
        raw: Option<Vec<u8>>,
    },
    /// End of file.
    Eof {
        /// The stored CRC-64 (RDB ≥ 5; 0 means the writer disabled checksums).
        checksum: Option<u64>,
        /// True if the checksum was checked (and matched: a mismatch is an error).
        verified: bool,
    },
}
