//! Type ids and opcodes: the byte in front of every item of an RDB file.
//!
//! After the 9-byte header an RDB file is a sequence of items, each introduced by one byte.
//! Bytes from 243 up are **opcodes** (metadata: AUX fields, SELECTDB, expiry of the next key,
//! EOF…); bytes below are **value type ids**, each followed by a key and a value whose layout
//! depends on the type.
//!
//! Both servers numbered everything the same way up to RDB 11 (type ids 0..=21). After that they
//! diverged (see [`Dialect`]): Redis 7.4+ uses 22..=25 for hashes with field TTLs and 26..=28 for
//! newer streams and arrays, Valkey 9 uses 22 for its own hash-with-TTL layout (`HASH_2`); opcode
//! 243 is Redis' `KEY_META` but Valkey's `SLOT_IMPORT`. [`RdbType::from_id`] therefore takes
//! the dialect, which comes from the file header (or a DUMP payload's version).
//!
//! | id | type | value layout |
//! |---|---|---|
//! | 0 | string | string |
//! | 1 | list (linked) | len, strings |
//! | 2 | set | len, strings |
//! | 3 | zset (string scores) | len, (member, string double) pairs |
//! | 4 | hash | len, (field, value) pairs |
//! | 5 | zset 2 | len, (member, binary double) pairs |
//! | 6 | module (4.0 RC) | not parseable without the module |
//! | 7 | module 2 | len(module id), opcode-tagged items, 0 |
//! | 9 | hash zipmap | string(zipmap) |
//! | 10 | list ziplist | string(ziplist) |
//! | 11 | set intset | string(intset) |
//! | 12 | zset ziplist | string(ziplist) |
//! | 13 | hash ziplist | string(ziplist) |
//! | 14 | list quicklist | len, string(ziplist) nodes |
//! | 15, 19, 21 | stream v1, v2, v3 | listpack nodes, metadata, consumer groups |
//! | 16 | hash listpack | string(listpack) |
//! | 17 | zset listpack | string(listpack) |
//! | 18 | list quicklist 2 | len, (container, string) nodes: 1 = plain element, 2 = listpack |
//! | 20 | set listpack | string(listpack) |
//! | 22 (Redis) | hash metadata, 7.4 RC | len, (ttl absolute, field, value) |
//! | 23 (Redis) | hash listpack ex, 7.4 RC | string(listpack of field, value, ttl) |
//! | 24 (Redis) | hash metadata | min expire ms, len, (ttl relative, field, value) |
//! | 25 (Redis) | hash listpack ex | min expire ms, string(listpack of field, value, ttl) |
//! | 22 (Valkey) | hash 2 | len, (field, value, i64 expiry ms or -1) |
//! | 26, 27, 28 (Redis) | stream v4, v5, array | not supported by this parser |

use std::fmt;

use super::version::Dialect;

/// End of the file (then the CRC-64 from RDB 5 on).
pub const OP_EOF: u8 = 255;
/// `len(db)`: the keys that follow belong to this database.
pub const OP_SELECTDB: u8 = 254;
/// 4-byte LE seconds: absolute expiry of the next key.
pub const OP_EXPIRETIME: u8 = 253;
/// 8-byte LE milliseconds: absolute expiry of the next key.
pub const OP_EXPIRETIME_MS: u8 = 252;
/// `len(db_size) len(expires_size)`: a sizing hint for the current database.
pub const OP_RESIZEDB: u8 = 251;
/// `string(key) string(value)`: an auxiliary field.
pub const OP_AUX: u8 = 250;
/// One byte: LFU counter of the next key.
pub const OP_FREQ: u8 = 249;
/// `len(seconds)`: LRU idle time of the next key.
pub const OP_IDLE: u8 = 248;
/// Module auxiliary data (not tied to a key).
pub const OP_MODULE_AUX: u8 = 247;
/// Functions of Redis 7.0 release candidates (rejected by every GA server).
pub const OP_FUNCTION_PRE_GA: u8 = 246;
/// `string(code)`: one function library.
pub const OP_FUNCTION2: u8 = 245;
/// `len(slot) len(keys) len(expires)`: slot sizes (Redis 7.4+ cluster; Valkey 9 reads it).
pub const OP_SLOT_INFO: u8 = 244;
/// Redis 8.6+: `KEY_META`; Valkey 9: `SLOT_IMPORT`.
pub const OP_KEY_META_OR_SLOT_IMPORT: u8 = 243;

/// Module item opcodes (inside module values and module AUX data).
pub mod module_op {
    /// End of the module value.
    pub const EOF: u64 = 0;
    /// `len`: a signed integer (stored as its u64 bit pattern).
    pub const SINT: u64 = 1;
    /// `len`: an unsigned integer.
    pub const UINT: u64 = 2;
    /// 4 bytes LE: a float.
    pub const FLOAT: u64 = 3;
    /// 8 bytes LE: a double.
    pub const DOUBLE: u64 = 4;
    /// An RDB string.
    pub const STRING: u64 = 5;
}

/// The logical data type of a key, whatever its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// A string.
    String,
    /// A list.
    List,
    /// A set.
    Set,
    /// A sorted set.
    Zset,
    /// A hash (possibly with field TTLs).
    Hash,
    /// A stream.
    Stream,
    /// A module value.
    Module,
}

impl ValueKind {
    /// The name `TYPE` answers for this kind (modules: the module's own name, so "module").
    pub fn name(self) -> &'static str {
        match self {
            ValueKind::String => "string",
            ValueKind::List => "list",
            ValueKind::Set => "set",
            ValueKind::Zset => "zset",
            ValueKind::Hash => "hash",
            ValueKind::Stream => "stream",
            ValueKind::Module => "module",
        }
    }
}

/// A value type id, resolved for one dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RdbType {
    /// 0.
    String,
    /// 1: a linked list of strings.
    List,
    /// 2: a set of strings.
    Set,
    /// 3: zset with scores as string doubles.
    Zset,
    /// 4: a hash of (field, value) strings.
    Hash,
    /// 5: zset with binary double scores.
    Zset2,
    /// 6: module value from Redis 4.0 release candidates (no annotations).
    ModulePreGa,
    /// 7: module value with item annotations.
    Module2,
    /// 9: hash as a zipmap.
    HashZipmap,
    /// 10: list as a ziplist.
    ListZiplist,
    /// 11: set as an intset.
    SetIntset,
    /// 12: zset as a ziplist.
    ZsetZiplist,
    /// 13: hash as a ziplist.
    HashZiplist,
    /// 14: quicklist of ziplists.
    ListQuicklist,
    /// 15: stream v1.
    StreamListpacks,
    /// 16: hash as a listpack.
    HashListpack,
    /// 17: zset as a listpack.
    ZsetListpack,
    /// 18: quicklist of listpacks and plain nodes.
    ListQuicklist2,
    /// 19: stream v2.
    StreamListpacks2,
    /// 20: set as a listpack.
    SetListpack,
    /// 21: stream v3.
    StreamListpacks3,
    /// Redis 22: hash with field TTLs (absolute), 7.4 release candidates.
    HashMetadataPreGa,
    /// Redis 23: listpack hash with field TTLs, 7.4 release candidates.
    HashListpackExPreGa,
    /// Redis 24: hash with field TTLs relative to a minimum.
    HashMetadata,
    /// Redis 25: listpack hash with field TTLs.
    HashListpackEx,
    /// Redis 26: stream v4 (Redis 8.6, IDMP metadata).
    StreamListpacks4,
    /// Redis 27: stream v5 (Redis 8.8).
    StreamListpacks5,
    /// Redis 28: array (Redis 8.8).
    Array,
    /// Valkey 22: hash with per-field expiry.
    Hash2,
}

impl RdbType {
    /// The type for `id` in `dialect`, or `None` if the id is not a type (an opcode) or unknown.
    pub fn from_id(id: u8, dialect: Dialect) -> Option<RdbType> {
        use RdbType::*;
        Some(match id {
            0 => String,
            1 => List,
            2 => Set,
            3 => Zset,
            4 => Hash,
            5 => Zset2,
            6 => ModulePreGa,
            7 => Module2,
            9 => HashZipmap,
            10 => ListZiplist,
            11 => SetIntset,
            12 => ZsetZiplist,
            13 => HashZiplist,
            14 => ListQuicklist,
            15 => StreamListpacks,
            16 => HashListpack,
            17 => ZsetListpack,
            18 => ListQuicklist2,
            19 => StreamListpacks2,
            20 => SetListpack,
            21 => StreamListpacks3,
            _ => match (dialect, id) {
                (Dialect::Redis, 22) => HashMetadataPreGa,
                (Dialect::Redis, 23) => HashListpackExPreGa,
                (Dialect::Redis, 24) => HashMetadata,
                (Dialect::Redis, 25) => HashListpackEx,
                (Dialect::Redis, 26) => StreamListpacks4,
                (Dialect::Redis, 27) => StreamListpacks5,
                (Dialect::Redis, 28) => Array,
                (Dialect::Valkey, 22) => Hash2,
                _ => return None,
            },
        })
    }

    /// The type id byte.
    pub fn id(self) -> u8 {
        use RdbType::*;
        match self {
            String => 0,
            List => 1,
            Set => 2,
            Zset => 3,
            Hash => 4,
            Zset2 => 5,
            ModulePreGa => 6,
            Module2 => 7,
            HashZipmap => 9,
            ListZiplist => 10,
            SetIntset => 11,
            ZsetZiplist => 12,
            HashZiplist => 13,
            ListQuicklist => 14,
            StreamListpacks => 15,
            HashListpack => 16,
            ZsetListpack => 17,
            ListQuicklist2 => 18,
            StreamListpacks2 => 19,
            SetListpack => 20,
            StreamListpacks3 => 21,
            HashMetadataPreGa => 22,
            HashListpackExPreGa => 23,
            HashMetadata => 24,
            HashListpackEx => 25,
            StreamListpacks4 => 26,
            StreamListpacks5 => 27,
            Array => 28,
            Hash2 => 22,
        }
    }

    /// The logical type.
    pub fn kind(self) -> ValueKind {
        use RdbType::*;
        match self {
            String => ValueKind::String,
            List | ListZiplist | ListQuicklist | ListQuicklist2 | Array => ValueKind::List,
            Set | SetIntset | SetListpack => ValueKind::Set,
            Zset | Zset2 | ZsetZiplist | ZsetListpack => ValueKind::Zset,
            Hash | HashZipmap | HashZiplist | HashListpack | HashMetadataPreGa
            | HashListpackExPreGa | HashMetadata | HashListpackEx | Hash2 => ValueKind::Hash,
            StreamListpacks | StreamListpacks2 | StreamListpacks3 | StreamListpacks4
            | StreamListpacks5 => ValueKind::Stream,
            ModulePreGa | Module2 => ValueKind::Module,
        }
    }

    /// True for hash types that carry per-field TTLs.
    pub fn has_field_ttls(self) -> bool {
        use RdbType::*;
        matches!(
            self,
            HashMetadataPreGa | HashListpackExPreGa | HashMetadata | HashListpackEx | Hash2
        )
    }
}

impl fmt::Display for RdbType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} (type {})", self.id())
    }
}

/// The characters of a module type name, 6 bits each.
const MODULE_NAME_CHARSET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Splits a 64-bit module type id into its 9-character name and its encoding version (the low
/// 10 bits). The name's first character sits in the highest bits.
pub fn module_type_name(module_id: u64) -> (String, u16) {
    let mut name = [0u8; 9];
    let mut id = module_id >> 10;
    for slot in name.iter_mut().rev() {
        *slot = MODULE_NAME_CHARSET[(id & 63) as usize];
        id >>= 6;
    }
    (
        String::from_utf8_lossy(&name).into_owned(),
        (module_id & 1023) as u16,
    )
}

/// The inverse of [`module_type_name`], for tests and writers: `None` if `name` is not 9
/// characters of the module charset or `encver` does not fit in 10 bits.
pub fn module_type_id(name: &str, encver: u16) -> Option<u64> {
    if name.len() != 9 || encver > 1023 {
        return None;
    }
    let mut id = 0u64;
    for c in name.bytes() {
        let v = MODULE_NAME_CHARSET.iter().position(|&x| x == c)? as u64;
        id = (id << 6) | v;
    }
    Some((id << 10) | encver as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_per_dialect() {
        for dialect in [Dialect::Common, Dialect::Redis, Dialect::Valkey] {
            for id in 0..=242u8 {
                if let Some(t) = RdbType::from_id(id, dialect) {
                    assert_eq!(t.id(), id, "{t:?}");
                }
            }
        }
        assert_eq!(RdbType::from_id(8, Dialect::Common), None);
        assert_eq!(RdbType::from_id(22, Dialect::Common), None);
        assert_eq!(
            RdbType::from_id(22, Dialect::Redis),
            Some(RdbType::HashMetadataPreGa)
        );
        assert_eq!(RdbType::from_id(22, Dialect::Valkey), Some(RdbType::Hash2));
        assert_eq!(RdbType::from_id(24, Dialect::Valkey), None);
        assert_eq!(RdbType::Hash2.kind(), ValueKind::Hash);
        assert!(RdbType::HashListpackEx.has_field_ttls());
    }

    #[test]
    fn module_names() {
        let id = module_type_id("ReJSON-RL", 3).unwrap();
        assert_eq!(module_type_name(id), ("ReJSON-RL".to_string(), 3));
        let id = module_type_id("MBbloom--", 0).unwrap();
        assert_eq!(module_type_name(id).0, "MBbloom--");
        assert_eq!(module_type_id("short", 0), None);
        assert_eq!(module_type_id("ReJSON-RL", 1024), None);
        assert_eq!(module_type_id("bad name!", 0), None);
    }
}
