//! The converter: parser [`Event`]s of a snapshot in, commands for the target out.
//!
//! Per key, the cheapest form the target accepts:
//!
//! * **`RESTORE key <abs ms|0> <payload> ABSTTL REPLACE`** when the parser kept the value's raw
//!   bytes ([`Event::KeyEnd`]`{ raw }`) and the target's RDB version knows the value's type id
//!   ([`target_knows`]). The payload is the raw body with the *target's* version in the footer
//!   (a server refuses versions newer than its own; the body is valid for it because it knows
//!   the encoding) and a fresh CRC.
//! * **`RESTORE` with a re-encoded payload** when the target is older and does not know the
//!   value's encoding, but the value fit in one RESTORE ([`crate::rdb::reencode::reencode`]): listpack lists, sets,
//!   zsets and hashes of Redis 7.0+ / Valkey become a quicklist of ziplists, ziplists, intsets or
//!   the plain encodings for RDB 7–9 (Redis 3.2–6.2), stamped with the target's version; streams
//!   v2/v3 become stream v1 ([`crate::rdb::reencode::downgrade_stream`]). Counted in [`Stats::reencoded`] (a part of
//!   [`Stats::restored`]).
//! * **`MSET`** for strings without a TTL (up to 64 KiB each): up to 256 keys of one database
//!   per command, which costs the target far less than a `RESTORE` per key (counted as
//!   [`Stats::plain`]).
//! * **Plain commands** otherwise (a value too big to have been kept raw; a hash with field
//!   TTLs the target cannot hold; a stream type with no downgrade, e.g. Redis 8.x's): `DEL`, then
//!   chunked `RPUSH` / `SADD` / `ZADD` / `HSET` from the value events, `SET` + `APPEND` for big
//!   strings, then `PEXPIREAT`. Streams: see `StreamPlain`.
//!
//! Until `KeyEnd` tells whether a raw form exists, a key's events are held back (up to
//! [`HOLD_BYTES`] of decoded data); a key that grows beyond that is written with plain commands
//! as its chunks arrive.
//!
//! Keys already expired are skipped. What cannot be expressed on the target (module values
//! without a payload form the target loads, functions below 7.0, hash-field TTLs) is reported by
//! key and counted in [`Stats`], never dropped silently.

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use super::target::{Sink, Tag, TargetError, show_key};
use crate::rdb::event::{HashField, PendingEntry, StreamId, StreamMeta};
use crate::rdb::reencode::{reencode, target_knows};
use crate::rdb::{Event, KeyInfo, RdbVersion, ValueKind, build_dump};

mod stream;
use stream::{StreamPlain, TMP_GROUP, orphan_pending_ids};

/// Decoded bytes held back per key while waiting to learn whether a RESTORE is possible.
pub const HOLD_BYTES: usize = 4 * 1024 * 1024;
/// Elements per plain command (RPUSH/SADD/ZADD/HSET).
const PLAIN_BATCH: usize = 512;

/// Counters of what the converter did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Keys written with RESTORE (re-encoded ones included).
    pub restored: u64,
    /// Of those, keys whose payload was re-encoded for an older target.
    pub reencoded: u64,
    /// Keys written with plain commands.
    pub plain: u64,
    /// Keys skipped because they had already expired.
    pub expired: u64,
    /// Keys (and functions) the target cannot hold; `problems` says which.
    pub unsupported: u64,
    /// Hashes whose field TTLs were lost.
    pub field_ttls_dropped: u64,
    /// Function libraries loaded.
    pub functions: u64,
    /// Keys the snapshot has shown so far.
    pub keys_seen: u64,
    /// Keys left out by the filters (key rules, unmapped databases).
    pub filtered: u64,
    /// Keys seen per type, indexed by [`kind_index`] (string, list, set, zset, hash, stream,
    /// module).
    pub by_type: [u64; 7],
    /// One line per key or function that was not copied (the first 100).
    pub problems: Vec<String>,
}

/// The types of [`Stats::by_type`], in order.
pub const KINDS: [ValueKind; 7] = [
    ValueKind::String,
    ValueKind::List,
    ValueKind::Set,
    ValueKind::Zset,
    ValueKind::Hash,
    ValueKind::Stream,
    ValueKind::Module,
];

/// The index of `kind` in [`Stats::by_type`].
pub fn kind_index(kind: ValueKind) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or(6)
}

/// What to do with what the target cannot hold (module values without a form it loads,
/// functions below Redis 7.0, hash-field TTLs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnsupportedPolicy {
    /// Report it (by key, counted) and copy the rest.
    #[default]
    Skip,
    /// Stop the sync with an error naming it.
    Fail,
}

impl std::str::FromStr for UnsupportedPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "skip" => Ok(UnsupportedPolicy::Skip),
            "fail" => Ok(UnsupportedPolicy::Fail),
            _ => Err("expected skip or fail".to_string()),
        }
    }
}

/// How the converter writes (defaults: everything copied as is, big keys from 512 KiB on).
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    pub filter: super::filter::Filter,
    pub unsupported: UnsupportedPolicy,
    /// Decoded bytes held back per key while waiting to learn whether one RESTORE is possible;
    /// 0 = [`HOLD_BYTES`].
    pub hold_bytes: usize,
}

impl Stats {
    /// Keys the snapshot had (written, expired, unsupported or filtered).
    pub fn keys_done(&self) -> u64 {
        self.restored + self.plain + self.expired + self.unsupported + self.filtered
    }

    /// Counts and reports (log, and the first 100 in `problems`) an item not copied.
    pub(crate) fn problem(&mut self, what: String) {
        self.unsupported += 1;
        tracing::warn!("{what}");
        if self.problems.len() < 100 {
            self.problems.push(what);
        }
    }
}

#[derive(Debug)]
enum Mode {
    /// Not written yet; value events held back.
    Holding { held: Vec<Event>, bytes: usize },
    /// Being written with plain commands.
    Plain { string_started: bool },
    /// Not written (expired, or cannot be expressed).
    Skip,
}

#[derive(Debug)]
struct Current {
    info: KeyInfo,
    mode: Mode,
    restorable: bool,
    field_ttls: bool,
    /// State of a stream written with plain commands.
    stream: Option<StreamPlain>,
}

/// Turns snapshot events into target commands.
pub struct Converter {
    max_rdb: RdbVersion,
    has_functions: bool,
    /// The target takes `ENTRIESREAD`, `ENTRIESADDED`, `MAXDELETEDID` (Redis 7.0+, Valkey).
    stream_v2_args: bool,
    /// The target has `XGROUP CREATECONSUMER` (Redis 6.2+, Valkey).
    create_consumer: bool,
    key: Option<Current>,
    /// Time used to decide that a key has expired (unix ms), fixed per snapshot.
    now_ms: i64,
    opts: ConvertOptions,
    /// Strings waiting for one `MSET` ([`Converter::batch_string`]).
    mset: StringBatch,
    pub stats: Stats,
}

/// Strings of one database queued for `MSET`.
#[derive(Debug, Default)]
struct StringBatch {
    db: u64,
    /// key, value, key, value…
    args: Vec<Vec<u8>>,
    bytes: usize,
}

/// Strings (without TTL) up to this size go into batched `MSET`s.
const MSET_VALUE_BYTES: usize = 64 * 1024;
/// Keys per `MSET` at most.
const MSET_KEYS: usize = 256;
/// Bytes per `MSET` at most.
const MSET_BYTES: usize = 256 * 1024;

impl Converter {
    pub fn new<W: Sink>(target: &W) -> Converter {
        Converter::with_options(target, ConvertOptions::default())
    }

    /// A converter with filters, a policy for what the target cannot hold, and a big-key
    /// threshold.
    pub fn with_options<W: Sink>(target: &W, mut opts: ConvertOptions) -> Converter {
        if opts.hold_bytes == 0 {
            opts.hold_bytes = HOLD_BYTES;
        }
        Converter {
            opts,
            mset: StringBatch::default(),
            max_rdb: target.info().max_rdb,
            has_functions: target.info().has_functions(),
            stream_v2_args: target.info().valkey || target.info().version >= (7, 0, 0),
            create_consumer: target.info().valkey || target.info().version >= (6, 2, 0),
            key: None,
            now_ms: now_ms(),
            stats: Stats::default(),
        }
    }

    /// Applies one event.
    pub fn apply<W: Sink>(&mut self, ev: Event, w: &mut W) -> Result<(), TargetError> {
        match ev {
            Event::KeyStart(mut info) => {
                self.stats.keys_seen += 1;
                let kind = info.rdb_type.kind();
                self.stats.by_type[kind_index(kind)] += 1;
                let mapped = self.opts.filter.map_db(info.db);
                let expired = info.expire_ms.is_some_and(|t| t <= self.now_ms);
                let restorable = target_knows(info.rdb_type, self.max_rdb);
                let mode = if super::batch::is_own_key(info.db, &info.key) {
                    // cutover's own bookkeeping (the source was itself a sync target).
                    self.stats.keys_seen -= 1;
                    self.stats.by_type[kind_index(kind)] -= 1;
                    Mode::Skip
                } else if mapped.is_none() || !self.opts.filter.key_allowed(&info.key) {
                    self.stats.filtered += 1;
                    Mode::Skip
                } else if expired {
                    self.stats.expired += 1;
                    Mode::Skip
                } else if !restorable && kind == ValueKind::Module {
                    self.problem(format!(
                        "key '{}' (db {}): a {} in {} cannot be written to a target that loads RDB {} — not supported yet",
                        show_key(&info.key),
                        info.db,
                        kind.name(),
                        info.rdb_type,
                        self.max_rdb.get()
                    ))?;
                    Mode::Skip
                } else {
                    Mode::Holding {
                        held: Vec::new(),
                        bytes: 0,
                    }
                };
                if let Some(db) = mapped {
                    info.db = db;
                }
                self.key = Some(Current {
                    field_ttls: false,
                    stream: None,
                    info,
                    mode,
                    restorable,
                });
            }
            Event::KeyEnd { raw } => {
                let Some(mut cur) = self.key.take() else {
                    return Ok(());
                };
                match std::mem::replace(&mut cur.mode, Mode::Skip) {
                    Mode::Skip => {}
                    Mode::Holding { held, bytes }
                        if cur.info.rdb_type.kind() == ValueKind::String
                            && cur.info.expire_ms.is_none()
                            && bytes <= MSET_VALUE_BYTES =>
                    {
                        let mut value = Vec::new();
                        for ev in held {
                            if let Event::StringChunk(b) = ev {
                                if value.is_empty() {
                                    // One chunk (the usual case) is taken as it is.
                                    value = b;
                                } else {
                                    value.reserve(bytes - value.len());
                                    value.extend_from_slice(&b);
                                }
                            }
                        }
                        self.batch_string(cur.info.db, cur.info.key, value, w)?;
                    }
                    Mode::Holding { held, .. } => match raw {
                        Some(raw) if cur.restorable => self.restore(&cur.info, &raw, w)?,
                        Some(raw)
                            if !cur.field_ttls
                                && let Some(value) =
                                    reencode(&cur.info, &raw, &held, self.max_rdb) =>
                        {
                            self.restore(&cur.info, &value, w)?;
                            self.stats.reencoded += 1;
                        }
                        _ => {
                            let kind = cur.info.rdb_type.kind();
                            if kind == ValueKind::Module {
                                self.problem(format!(
                                    "key '{}' (db {}): a {} too big for one RESTORE — not supported yet",
                                    show_key(&cur.info.key),
                                    cur.info.db,
                                    kind.name()
                                ))?;
                            } else {
                                cur.mode = self.start_plain(&mut cur, w)?;
                                if let Some(st) = &mut cur.stream {
                                    st.placeholders = orphan_pending_ids(&held);
                                }
                                for ev in held {
                                    self.plain_chunk(&mut cur, ev, w)?;
                                }
                                self.finish_plain(&mut cur, w)?;
                            }
                        }
                    },
                    Mode::Plain { string_started } => {
                        cur.mode = Mode::Plain { string_started };
                        self.finish_plain(&mut cur, w)?;
                    }
                }
            }
            Event::Function { code } => {
                if self.has_functions {
                    w.send(
                        &[&b"FUNCTION"[..], b"LOAD", b"REPLACE", &code],
                        Tag {
                            what: "FUNCTION LOAD".into(),
                            key: library_name(&code).into_bytes(),
                            ..Tag::default()
                        },
                    )?;
                    self.stats.functions += 1;
                } else {
                    self.problem(format!(
                        "function library '{}': the target has no functions (Redis < 7.0) — not copied",
                        library_name(&code)
                    ))?;
                }
            }
            Event::ModuleAux { name, .. } => {
                tracing::warn!(module = %name, "module AUX data in the snapshot is not copied");
            }
            ev @ (Event::StringChunk(_)
            | Event::ListChunk(_)
            | Event::SetChunk(_)
            | Event::ZsetChunk(_)
            | Event::HashChunk(_)
            | Event::StreamEntries(_)
            | Event::StreamMeta(_)
            | Event::StreamGroup(_)
            | Event::StreamGroupPel(_)
            | Event::StreamConsumer(_)
            | Event::StreamConsumerPel(_)) => {
                let Some(mut cur) = self.key.take() else {
                    return Ok(());
                };
                if let Event::HashChunk(fields) = &ev
                    && fields.iter().any(|f| f.expire_ms.is_some())
                {
                    cur.field_ttls = true;
                }
                match &mut cur.mode {
                    Mode::Skip => {}
                    Mode::Holding { held, bytes } => {
                        *bytes += event_bytes(&ev);
                        held.push(ev);
                        if *bytes > self.opts.hold_bytes {
                            let held = std::mem::take(held);
                            cur.mode = self.start_plain(&mut cur, w)?;
                            for ev in held {
                                self.plain_chunk(&mut cur, ev, w)?;
                            }
                        }
                    }
                    Mode::Plain { .. } => self.plain_chunk(&mut cur, ev, w)?,
                }
                self.key = Some(cur);
            }
            // Module value events: only the raw form is used.
            _ => {}
        }
        Ok(())
    }

    /// Queues a string without TTL for the next `MSET` (one command for many keys costs the
    /// target far less than one `RESTORE` each); sent when full or the database changes.
    fn batch_string<W: Sink>(
        &mut self,
        db: u64,
        key: Vec<u8>,
        value: Vec<u8>,
        w: &mut W,
    ) -> Result<(), TargetError> {
        if self.mset.db != db {
            self.flush_strings(w)?;
            self.mset.db = db;
        }
        self.mset.bytes += key.len() + value.len();
        self.mset.args.push(key);
        self.mset.args.push(value);
        self.stats.plain += 1;
        if self.mset.args.len() >= 2 * MSET_KEYS || self.mset.bytes >= MSET_BYTES {
            self.flush_strings(w)?;
        }
        Ok(())
    }

    /// Sends the queued `MSET`, if any.
    fn flush_strings<W: Sink>(&mut self, w: &mut W) -> Result<(), TargetError> {
        if self.mset.args.is_empty() {
            return Ok(());
        }
        w.select(self.mset.db)?;
        let mut args: Vec<&[u8]> = Vec::with_capacity(self.mset.args.len() + 1);
        args.push(b"MSET");
        args.extend(self.mset.args.iter().map(Vec::as_slice));
        w.send(&args, Tag::key("MSET", &self.mset.args[0]))?;
        self.mset.args.clear();
        self.mset.bytes = 0;
        Ok(())
    }

    /// Sends what is still queued: call at the end of a snapshot, before draining the writer.
    pub fn finish<W: Sink>(&mut self, w: &mut W) -> Result<(), TargetError> {
        self.flush_strings(w)
    }

    /// Reports what the target cannot hold; an error under [`UnsupportedPolicy::Fail`].
    fn problem(&mut self, what: String) -> Result<(), TargetError> {
        if self.opts.unsupported == UnsupportedPolicy::Fail {
            return Err(TargetError::CannotHold { what });
        }
        self.stats.problem(what);
        Ok(())
    }

    fn restore<W: Sink>(
        &mut self,
        info: &KeyInfo,
        raw: &[u8],
        w: &mut W,
    ) -> Result<(), TargetError> {
        w.select(info.db)?;
        let payload = build_dump(raw, self.max_rdb);
        let ttl = info.expire_ms.unwrap_or(0).max(0).to_string();
        w.send(
            &[
                &b"RESTORE"[..],
                &info.key,
                ttl.as_bytes(),
                &payload,
                b"ABSTTL",
                b"REPLACE",
            ],
            Tag::key("RESTORE", &info.key),
        )?;
        self.stats.restored += 1;
        Ok(())
    }

    fn start_plain<W: Sink>(&mut self, cur: &mut Current, w: &mut W) -> Result<Mode, TargetError> {
        let info = &cur.info;
        w.select(info.db)?;
        if info.rdb_type.kind() != ValueKind::String {
            w.send(&[&b"DEL"[..], &info.key], Tag::key("DEL", &info.key))?;
        }
        if info.rdb_type.kind() == ValueKind::Stream {
            w.send(
                &[
                    &b"XGROUP"[..],
                    b"CREATE",
                    &info.key,
                    TMP_GROUP,
                    b"0",
                    b"MKSTREAM",
                ],
                Tag::key("XGROUP CREATE", &info.key),
            )?;
            cur.stream = Some(StreamPlain::default());
        }
        Ok(Mode::Plain {
            string_started: false,
        })
    }

    fn plain_chunk<W: Sink>(
        &mut self,
        cur: &mut Current,
        ev: Event,
        w: &mut W,
    ) -> Result<(), TargetError> {
        let key = &cur.info.key;
        match ev {
            Event::StringChunk(bytes) => {
                let Mode::Plain { string_started } = &mut cur.mode else {
                    return Ok(());
                };
                if *string_started {
                    w.send(&[&b"APPEND"[..], key, &bytes], Tag::key("APPEND", key))?;
                } else {
                    w.send(&[&b"SET"[..], key, &bytes], Tag::key("SET", key))?;
                    *string_started = true;
                }
            }
            Event::ListChunk(items) => {
                for part in items.chunks(PLAIN_BATCH) {
                    let mut args: Vec<&[u8]> = vec![b"RPUSH", key];
                    args.extend(part.iter().map(Vec::as_slice));
                    w.send(&args, Tag::key("RPUSH", key))?;
                }
            }
            Event::SetChunk(items) => {
                for part in items.chunks(PLAIN_BATCH) {
                    let mut args: Vec<&[u8]> = vec![b"SADD", key];
                    args.extend(part.iter().map(Vec::as_slice));
                    w.send(&args, Tag::key("SADD", key))?;
                }
            }
            Event::ZsetChunk(items) => {
                for part in items.chunks(PLAIN_BATCH) {
                    let scores: Vec<String> = part.iter().map(|(_, s)| format_score(*s)).collect();
                    let mut args: Vec<&[u8]> = vec![b"ZADD", key];
                    for ((member, _), score) in part.iter().zip(&scores) {
                        args.push(score.as_bytes());
                        args.push(member);
                    }
                    w.send(&args, Tag::key("ZADD", key))?;
                }
            }
            Event::HashChunk(fields) => {
                for part in fields.chunks(PLAIN_BATCH) {
                    let mut args: Vec<&[u8]> = vec![b"HSET", key];
                    for HashField { field, value, .. } in part {
                        args.push(field);
                        args.push(value);
                    }
                    w.send(&args, Tag::key("HSET", key))?;
                }
            }
            ev => {
                if let Some(st) = &mut cur.stream {
                    self.stream_event(key, st, ev, w)?;
                }
            }
        }
        Ok(())
    }

    fn finish_plain<W: Sink>(&mut self, cur: &mut Current, w: &mut W) -> Result<(), TargetError> {
        let key = &cur.info.key;
        if cur.info.rdb_type.kind() == ValueKind::String
            && matches!(
                cur.mode,
                Mode::Plain {
                    string_started: false
                }
            )
        {
            // An empty string has no chunk.
            w.send(&[&b"SET"[..], key, b""], Tag::key("SET", key))?;
        }
        if let Some(mut st) = cur.stream.take() {
            self.finish_stream(key, &mut st, w)?;
        }
        if let Some(at) = cur.info.expire_ms {
            let at = at.to_string();
            w.send(
                &[&b"PEXPIREAT"[..], key, at.as_bytes()],
                Tag::key("PEXPIREAT", key),
            )?;
        }
        if cur.field_ttls {
            if self.opts.unsupported == UnsupportedPolicy::Fail {
                return Err(TargetError::CannotHold {
                    what: format!(
                        "key '{}' (db {}): the target cannot hold hash field TTLs",
                        show_key(key),
                        cur.info.db
                    ),
                });
            }
            self.stats.field_ttls_dropped += 1;
            tracing::warn!(
                key = %show_key(key),
                "hash field TTLs cannot be expressed on the target; the fields were copied without them"
            );
        }
        self.stats.plain += 1;
        Ok(())
    }
}

/// A score as ZADD reads it back exactly (Rust prints the shortest round-trip form).
fn format_score(s: f64) -> String {
    if s.is_infinite() {
        if s > 0.0 {
            "+inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{s}")
    }
}

fn event_bytes(ev: &Event) -> usize {
    match ev {
        Event::StringChunk(b) => b.len(),
        Event::ListChunk(v) | Event::SetChunk(v) => v.iter().map(|x| x.len() + 16).sum(),
        Event::ZsetChunk(v) => v.iter().map(|x| x.0.len() + 24).sum(),
        Event::HashChunk(v) => v.iter().map(|f| f.field.len() + f.value.len() + 32).sum(),
        Event::StreamEntries(v) => v
            .iter()
            .map(|e| {
                40 + e
                    .fields
                    .iter()
                    .map(|(f, v)| f.len() + v.len() + 48)
                    .sum::<usize>()
            })
            .sum(),
        Event::StreamGroupPel(v) => v.len() * 48,
        Event::StreamConsumerPel(v) => v.len() * 16,
        Event::StreamGroup(g) => g.name.len() + 64,
        Event::StreamConsumer(c) => c.name.len() + 64,
        _ => 0,
    }
}

/// The `name=` of a library's shebang line.
fn library_name(code: &[u8]) -> String {
    let first = code.split(|b| *b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(first)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("name="))
        .unwrap_or("?")
        .to_string()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores() {
        assert_eq!(format_score(1.5), "1.5");
        assert_eq!(format_score(-0.1), "-0.1");
        assert_eq!(format_score(f64::INFINITY), "+inf");
        assert_eq!(format_score(1e300).parse::<f64>().unwrap(), 1e300);
        assert_eq!(
            library_name(b"#!lua name=mylib\nredis.register_function..."),
            "mylib"
        );
    }
}
