//! The converter: parser [`Event`]s of a snapshot in, commands for the target out.
//!
//! Per key, the cheapest form the target accepts:
//!
//! * **`RESTORE key <abs ms|0> <payload> ABSTTL REPLACE`** when the parser kept the value's raw
//!   bytes ([`Event::KeyEnd`]`{ raw }`) and the target's RDB version knows the value's type id
//!   ([`target_knows`]). The payload is the raw body with the *target's* version in the footer
//!   (a server refuses versions newer than its own; the body is valid for it because it knows
//!   the encoding) and a fresh CRC.
//! * **Plain commands** otherwise (an encoding the target does not know, e.g. listpacks on
//!   Redis 6.2, set listpacks on 7.0; or a value too big to have been kept raw): `DEL`, then
//!   chunked `RPUSH` / `SADD` / `ZADD` / `HSET` from the value events, `SET` + `APPEND` for big
//!   strings, then `PEXPIREAT`.
//!
//! Until `KeyEnd` tells whether a raw form exists, a key's events are held back (up to
//! [`HOLD_BYTES`] of decoded data); a key that grows beyond that is written with plain commands
//! as its chunks arrive.
//!
//! Keys already expired are skipped. What cannot be expressed on the target (streams and module
//! values without a payload form the target loads, functions below 7.0, hash-field TTLs) is
//! reported by key and counted in [`Stats`], never dropped silently.

use std::time::{SystemTime, UNIX_EPOCH};

use super::target::{Tag, TargetError, TargetWriter, show_key};
use crate::rdb::event::HashField;
use crate::rdb::{Dialect, Event, KeyInfo, RdbType, RdbVersion, ValueKind, build_dump};

/// Decoded bytes held back per key while waiting to learn whether a RESTORE is possible.
pub const HOLD_BYTES: usize = 4 * 1024 * 1024;
/// Elements per plain command (RPUSH/SADD/ZADD/HSET).
const PLAIN_BATCH: usize = 512;

/// The oldest RDB version that knows type `t`, and the dialect it belongs to if the id is not
/// shared by both servers (ids 22+).
pub fn type_needs(t: RdbType) -> (RdbVersion, Option<Dialect>) {
    use RdbType::*;
    let (v, d) = match t {
        String | List | Set | Zset | Hash => (1, None),
        HashZipmap | ListZiplist | SetIntset | ZsetZiplist => (2, None),
        HashZiplist => (4, None),
        ListQuicklist => (7, None),
        Zset2 | ModulePreGa | Module2 => (8, None),
        StreamListpacks => (9, None),
        HashListpack | ZsetListpack | ListQuicklist2 | StreamListpacks2 => (10, None),
        SetListpack | StreamListpacks3 => (11, None),
        HashMetadataPreGa | HashListpackExPreGa | HashMetadata | HashListpackEx => {
            (12, Some(Dialect::Redis))
        }
        StreamListpacks4 => (13, Some(Dialect::Redis)),
        StreamListpacks5 | Array => (14, Some(Dialect::Redis)),
        Hash2 => (80, Some(Dialect::Valkey)),
    };
    (RdbVersion(v), d)
}

/// True if a server loading RDB versions up to `max` understands type `t`.
pub fn target_knows(t: RdbType, max: RdbVersion) -> bool {
    if t == RdbType::ModulePreGa {
        return false;
    }
    let (needs, dialect) = type_needs(t);
    needs <= max && dialect.is_none_or(|d| d == max.dialect())
}

/// Counters of what the converter did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Keys written with RESTORE.
    pub restored: u64,
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
    /// One line per key or function that was not copied (the first 100).
    pub problems: Vec<String>,
}

impl Stats {
    /// Keys the snapshot had (written, expired or unsupported).
    pub fn keys_done(&self) -> u64 {
        self.restored + self.plain + self.expired + self.unsupported
    }

    fn problem(&mut self, what: String) {
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
}

/// Turns snapshot events into target commands.
pub struct Converter {
    max_rdb: RdbVersion,
    has_functions: bool,
    key: Option<Current>,
    /// Time used to decide that a key has expired (unix ms), fixed per snapshot.
    now_ms: i64,
    pub stats: Stats,
}

impl Converter {
    pub fn new(target: &TargetWriter) -> Converter {
        Converter {
            max_rdb: target.info().max_rdb,
            has_functions: target.info().has_functions(),
            key: None,
            now_ms: now_ms(),
            stats: Stats::default(),
        }
    }

    /// Applies one event.
    pub fn apply(&mut self, ev: Event, w: &mut TargetWriter) -> Result<(), TargetError> {
        match ev {
            Event::KeyStart(info) => {
                self.stats.keys_seen += 1;
                let kind = info.rdb_type.kind();
                let expired = info.expire_ms.is_some_and(|t| t <= self.now_ms);
                let restorable = target_knows(info.rdb_type, self.max_rdb);
                let mode = if info.db == 0 && info.key == super::position::POSITION_KEY {
                    // cutover's own bookkeeping (the source was itself a sync target).
                    self.stats.keys_seen -= 1;
                    Mode::Skip
                } else if expired {
                    self.stats.expired += 1;
                    Mode::Skip
                } else if !restorable && matches!(kind, ValueKind::Stream | ValueKind::Module) {
                    self.stats.problem(format!(
                        "key '{}' (db {}): a {} in {} cannot be written to a target that loads RDB {} — not supported yet",
                        show_key(&info.key),
                        info.db,
                        kind.name(),
                        info.rdb_type,
                        self.max_rdb.get()
                    ));
                    Mode::Skip
                } else {
                    Mode::Holding {
                        held: Vec::new(),
                        bytes: 0,
                    }
                };
                self.key = Some(Current {
                    field_ttls: false,
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
                    Mode::Holding { held, .. } => match raw {
                        Some(raw) if cur.restorable => self.restore(&cur.info, &raw, w)?,
                        _ => {
                            let kind = cur.info.rdb_type.kind();
                            if matches!(kind, ValueKind::Stream | ValueKind::Module) {
                                self.stats.problem(format!(
                                    "key '{}' (db {}): a {} too big for one RESTORE — not supported yet",
                                    show_key(&cur.info.key),
                                    cur.info.db,
                                    kind.name()
                                ));
                            } else {
                                cur.mode = self.start_plain(&cur.info, w)?;
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
                    self.stats.problem(format!(
                        "function library '{}': the target has no functions (Redis < 7.0) — not copied",
                        library_name(&code)
                    ));
                }
            }
            Event::ModuleAux { name, .. } => {
                tracing::warn!(module = %name, "module AUX data in the snapshot is not copied");
            }
            ev @ (Event::StringChunk(_)
            | Event::ListChunk(_)
            | Event::SetChunk(_)
            | Event::ZsetChunk(_)
            | Event::HashChunk(_)) => {
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
                        if *bytes > HOLD_BYTES {
                            let held = std::mem::take(held);
                            cur.mode = self.start_plain(&cur.info, w)?;
                            for ev in held {
                                self.plain_chunk(&mut cur, ev, w)?;
                            }
                        }
                    }
                    Mode::Plain { .. } => self.plain_chunk(&mut cur, ev, w)?,
                }
                self.key = Some(cur);
            }
            // Stream and module value events: only the raw form is used for now.
            _ => {}
        }
        Ok(())
    }

    fn restore(
        &mut self,
        info: &KeyInfo,
        raw: &[u8],
        w: &mut TargetWriter,
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

    fn start_plain(&mut self, info: &KeyInfo, w: &mut TargetWriter) -> Result<Mode, TargetError> {
        w.select(info.db)?;
        if info.rdb_type.kind() != ValueKind::String {
            w.send(&[&b"DEL"[..], &info.key], Tag::key("DEL", &info.key))?;
        }
        Ok(Mode::Plain {
            string_started: false,
        })
    }

    fn plain_chunk(
        &mut self,
        cur: &mut Current,
        ev: Event,
        w: &mut TargetWriter,
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
            _ => {}
        }
        Ok(())
    }

    fn finish_plain(&mut self, cur: &mut Current, w: &mut TargetWriter) -> Result<(), TargetError> {
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
        if let Some(at) = cur.info.expire_ms {
            let at = at.to_string();
            w.send(
                &[&b"PEXPIREAT"[..], key, at.as_bytes()],
                Tag::key("PEXPIREAT", key),
            )?;
        }
        if cur.field_ttls {
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
    fn known_types() {
        let v62 = RdbVersion(9);
        let v70 = RdbVersion(10);
        let valkey = RdbVersion(80);
        let redis74 = RdbVersion(12);
        assert!(target_knows(RdbType::SetIntset, v62));
        assert!(target_knows(RdbType::Zset2, v62));
        assert!(!target_knows(RdbType::HashListpack, v62));
        assert!(!target_knows(RdbType::ListQuicklist2, v62));
        assert!(target_knows(RdbType::ListQuicklist2, v70));
        assert!(!target_knows(RdbType::SetListpack, v70));
        assert!(target_knows(RdbType::SetListpack, valkey));
        assert!(target_knows(RdbType::Hash2, valkey));
        assert!(!target_knows(RdbType::Hash2, redis74));
        assert!(!target_knows(RdbType::HashListpackEx, valkey));
        assert!(target_knows(RdbType::HashListpackEx, redis74));
    }

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
