//! The repair of keys the old side lost on its own in a shadow overlap (issue 20): the key is
//! copied from the primary, **fenced in the per-key order** ([`crate::cutover::order`]).
//!
//! The shadow writer finds such a key from a reply ([`super::Action::Expect`]: a `PEXPIREAT`
//! answered 0 while the primary answered 1, an `INCRBY` answered its bare increment…). The
//! key is then missing (or wrong) on the old side, and every later write to it lands on
//! nothing. Copying "the primary's value now" is only right if the old side ends up with the
//! primary's writes to the key each applied **once**, in the primary's order. The writes of
//! the key are in three groups when the copy is read:
//!
//! 1. answered by the primary and already **queued** for the old side (ahead of the copy);
//! 2. **in flight** to the primary (sent, not answered yet): their effect may or may not be
//!    in a value read now, and their shadow would be queued after the copy;
//! 3. not sent yet.
//!
//! The per-key order already keeps at most one write per key in flight (counters: several
//! increments), and a write gives its key back only after its shadow is queued. So the copy:
//!
//! ```text
//! KeyOrder::hold(k)            reserve k: new writes to k wait; the ones in flight finish
//!                              (their shadows are queued: group 2 becomes group 1)
//! on the primary: SELECT db, MULTI, PTTL k, DUMP k, EXEC     → the value with every write
//!                              of group 1 in it, and none of group 3 (none can be sent)
//! queue Repair: RESTORE k <pttl> <payload> REPLACE  (DEL k if the primary has no k)
//! release k                    group 3 is sent, and queued after the copy
//! ```
//!
//! On the old side (which applies the queue in order, on one connection) the writes of group
//! 1 come **before** the copy: they apply to a missing or stale key and may give a wrong
//! intermediate value, but `RESTORE … REPLACE` then replaces the whole key (value and TTL)
//! by the primary's, which already contains them: nothing of theirs is counted twice (an
//! `INCR` or `RPUSH` in group 1 is in the copy once, and its own shadow's effect is
//! overwritten). Writes of group 3 apply to the copy, exactly once. A key the primary deleted
//! or expired meanwhile is deleted, not resurrected. Another loss found on the same key by a
//! write of group 1 (a second refresh answered 0) is superseded by the copy already queued
//! and not copied again.
//!
//! The TTL is written absolute (`RESTORE … ABSTTL` at the proxy's clock + `PTTL`), like
//! every shadowed expiry (`PEXPIREAT`, `SET … PXAT`): a relative one would be lengthened by
//! the time the copy spends in the queue, and a key the old side keeps *longer* than the
//! primary is worse than one it loses early — the primary's next write starts the key anew
//! (`INCR` from 1) while the old side adds it to the old value, and no reply shows it. An
//! old side whose clock is ahead expires the copy that much early; the next write that finds
//! it gone has it copied again.
//!
//! A payload of a newer RDB version than the old side loads has its version rewritten when
//! the value's encoding is known there; otherwise (a listpack hash from Redis 7 into 6.2) the
//! key is read again with plain commands (`TYPE`, `GET`/`LRANGE`/…, `PTTL`, still under the
//! hold) and written as `DEL` + those commands in one `MULTI`.
//!
//! **Bounds.** A session whose write touches a key being copied waits for the hold: at most
//! [`HOLD_WAIT`] for the writes in flight, then one read of the primary bounded by
//! [`READ_WAIT`]. A key whose writes do not pause in time, whose read fails or times out, or
//! whose value is larger than [`MAX_COPY`] stays lost: named in status, the rollback unsafe.
//!
//! **Not covered.** A write of group 1 that reads the lost key to write *another* key
//! (`SUNIONSTORE dst lost`, `LMOVE lost dst`) leaves that other key wrong on the old side
//! (a `RENAME` of the lost key fails there, which marks the rollback unsafe). Blocking pops
//! take no key in the order (they would hold it while they wait): one served on the key
//! while it is copied may be both in the copy and shadowed after it (its shadow then finds
//! nothing to take, and the rollback is marked unsafe after the writer's patience).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Action, Args, ShadowItem, ShadowSink, Value};
use crate::client::Client;
use crate::cutover::control;
use crate::cutover::order::KeyOrder;
use crate::rdb::RdbVersion;
use crate::rdb::reencode::restore_payload;
use crate::resp::request::encode_command;
use crate::route::Backend;

/// How long a repair waits for the writes in flight to its keys.
pub const HOLD_WAIT: Duration = Duration::from_millis(500);
/// How long the read of the primary may take (the keys are held meanwhile).
pub const READ_WAIT: Duration = Duration::from_secs(1);
/// The largest value copied (`DUMP` payload bytes): a bigger one stays lost.
pub const MAX_COPY: usize = 64 << 20;
/// Keys read from the primary in one transaction at most.
const AT_ONCE: usize = 64;

/// The shadow writer's copies of lost keys.
pub struct Repairer {
    order: Arc<KeyOrder>,
    primary: Arc<Backend>,
    timeout: Duration,
    conn: Option<Client>,
    /// The newest RDB version the old side's `RESTORE` loads (read once).
    old_rdb: Option<RdbVersion>,
    /// Keys whose copy is queued and not yet applied: a loss found on them meanwhile comes
    /// from a write queued before the copy, which supersedes it.
    queued: HashSet<(u32, Vec<u8>)>,
}

/// One key's state on the primary: `None` when it has no such key.
type Read = Option<(Vec<u8>, u64)>;

impl Repairer {
    pub fn new(order: Arc<KeyOrder>, primary: Arc<Backend>, timeout: Duration) -> Repairer {
        Repairer {
            order,
            primary,
            timeout,
            conn: None,
            old_rdb: None,
            queued: HashSet::new(),
        }
    }

    /// The writer sent `items` (the copies among them are on the old side, or refused, or
    /// failed with the connection) and found `lost` keys (with the index of the item that
    /// found each): the keys still to copy — not those a copy queued *after* the finding
    /// item supersedes (one later in this batch, or one still in the queue).
    pub fn after_batch(
        &mut self,
        items: &[ShadowItem],
        lost: Vec<(usize, u32, Vec<u8>)>,
    ) -> Vec<(u32, Vec<u8>)> {
        let mut copied: std::collections::HashMap<(u32, &[u8]), usize> = Default::default();
        for (i, item) in items.iter().enumerate() {
            if let Action::Repair { key, .. } = &item.action {
                copied.insert((item.db, key.as_slice()), i);
            }
        }
        let wanted = lost
            .into_iter()
            .filter(|(i, db, key)| match copied.get(&(*db, key.as_slice())) {
                Some(at) => i > at,
                None => !self.queued.contains(&(*db, key.clone())),
            })
            .map(|(_, db, key)| (db, key))
            .collect();
        for (db, key) in copied.keys() {
            self.queued.remove(&(*db, key.to_vec()));
        }
        wanted
    }

    /// Copies `lost` keys ([`Self::after_batch`]) from the primary into the shadow queue (see
    /// the module doc). Every key ends either queued for the old side or named by
    /// [`ShadowSink::unrepaired`].
    pub async fn repair(&mut self, sink: &ShadowSink, old: &mut Client, lost: Vec<(u32, Vec<u8>)>) {
        let mut wanted = lost;
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return;
        }
        if self.old_rdb.is_none() {
            self.old_rdb = old_rdb(old).await;
        }
        for group in wanted.chunk_by(|a, b| a.0 == b.0) {
            for part in group.chunks(AT_ONCE) {
                let db = part[0].0;
                let keys: Vec<&[u8]> = part.iter().map(|(_, k)| k.as_slice()).collect();
                if let Err(why) = self.copy(sink, db, &keys).await {
                    for k in &keys {
                        sink.unrepaired(db, k, &why);
                    }
                }
            }
        }
    }

    /// Holds `keys`, reads them, queues their copies, releases them.
    async fn copy(&mut self, sink: &ShadowSink, db: u32, keys: &[&[u8]]) -> Result<(), String> {
        let mut hashes: Vec<u64> = keys.iter().map(|k| self.order.key(db, k)).collect();
        hashes.sort_unstable();
        hashes.dedup();
        let deadline = tokio::time::Instant::now() + HOLD_WAIT;
        let Some(_guard) = self.order.hold(hashes, deadline).await else {
            return Err(format!(
                "writes to the key did not pause within {} ms",
                HOLD_WAIT.as_millis()
            ));
        };
        let values = match tokio::time::timeout(READ_WAIT, self.read(db, keys)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.conn = None;
                return Err(format!("reading it from the primary failed: {e}"));
            }
            Err(_) => {
                self.conn = None;
                return Err(format!(
                    "the primary did not answer within {} ms",
                    READ_WAIT.as_millis()
                ));
            }
        };
        for (key, value) in keys.iter().zip(values) {
            let commands = match self.commands(db, key, value).await {
                Ok(c) => c,
                Err(why) => {
                    sink.unrepaired(db, key, &why);
                    continue;
                }
            };
            let item = ShadowItem {
                db,
                action: Action::Repair {
                    key: key.to_vec(),
                    commands,
                },
            };
            if sink.push(item) {
                self.queued.insert((db, key.to_vec()));
            } else {
                sink.unrepaired(db, key, "the shadow queue did not take the copy");
            }
        }
        Ok(())
        // (`_guard` dropped here: the writes waiting for the keys go on, after the copies.)
    }

    /// `SELECT db`, `MULTI`, `PTTL`/`DUMP` of each key, `EXEC`: payload and remaining TTL
    /// (ms, 0: none) of each key at one instant.
    async fn read(&mut self, db: u32, keys: &[&[u8]]) -> Result<Vec<Read>, String> {
        if self.conn.is_none() {
            self.conn = Some(control::connect(&self.primary, self.timeout).await?);
        }
        let Some(p) = self.conn.as_mut() else {
            return Err("no connection".into());
        };
        p.select(db).await?;
        let mut wire = Vec::new();
        encode_command(&[&b"MULTI"[..]], &mut wire);
        for k in keys {
            encode_command(&[&b"PTTL"[..], k], &mut wire);
            encode_command(&[&b"DUMP"[..], k], &mut wire);
        }
        encode_command(&[&b"EXEC"[..]], &mut wire);
        p.write(&wire).await?;
        for _ in 0..(1 + 2 * keys.len()) {
            let r = p.read_reply().await?;
            if r.first() == Some(&b'-') {
                // Drain the EXEC (answered EXECABORT) before giving up.
                let _ = p.read_reply().await;
                return Err(String::from_utf8_lossy(&r).trim().to_string());
            }
        }
        let exec = p.read_reply().await?;
        let Some(Value::Array(items)) = Value::decode(&exec, 2) else {
            return Err(format!(
                "unexpected EXEC reply: {}",
                String::from_utf8_lossy(&exec[..exec.len().min(100)])
            ));
        };
        if items.len() != 2 * keys.len() {
            return Err("unexpected EXEC reply length".into());
        }
        items
            .chunks(2)
            .map(|pair| match (&pair[0], &pair[1]) {
                (Value::Int(-2), _) | (_, Value::Nil) | (Value::Int(0), _) => Ok(None),
                (Value::Int(ttl), Value::Bytes(p)) => Ok(Some((p.clone(), (*ttl).max(0) as u64))),
                (a, b) => Err(format!("PTTL/DUMP answered {a:?} / {b:?}")),
            })
            .collect()
    }

    /// The commands that make `key` on the old side what `value` is on the primary.
    async fn commands(&mut self, db: u32, key: &[u8], value: Read) -> Result<Vec<Args>, String> {
        let Some((payload, ttl)) = value else {
            return Ok(vec![vec![b"DEL".to_vec(), key.to_vec()]]);
        };
        if payload.len() > MAX_COPY {
            return Err(format!(
                "its value is {} bytes, more than the {} MiB a repair copies",
                payload.len(),
                MAX_COPY >> 20
            ));
        }
        // The TTL absolute, on the proxy's clock like every shadowed expiry.
        let at = (ttl > 0).then(|| crate::cutover::unix_ms() + ttl);
        let abs_ttl = self.old_rdb.is_none_or(|v| v >= RdbVersion::REDIS_5_0);
        let restore = |p: Vec<u8>| match at {
            None => vec![vec![
                b"RESTORE".to_vec(),
                key.to_vec(),
                b"0".to_vec(),
                p,
                b"REPLACE".to_vec(),
            ]],
            Some(at) if abs_ttl => vec![vec![
                b"RESTORE".to_vec(),
                key.to_vec(),
                at.to_string().into_bytes(),
                p,
                b"REPLACE".to_vec(),
                b"ABSTTL".to_vec(),
            ]],
            // (Before Redis 5.0: no ABSTTL.)
            Some(at) => vec![
                vec![
                    b"RESTORE".to_vec(),
                    key.to_vec(),
                    b"0".to_vec(),
                    p,
                    b"REPLACE".to_vec(),
                ],
                vec![
                    b"PEXPIREAT".to_vec(),
                    key.to_vec(),
                    at.to_string().into_bytes(),
                ],
            ],
        };
        let Some(max) = self.old_rdb else {
            // The old side's version is unknown: its own RESTORE decides.
            return Ok(restore(payload));
        };
        match restore_payload(&payload, max, "the old side") {
            Ok(p) => Ok(restore(p)),
            Err(why) => {
                // Plain commands, read again (the key is still held).
                let p = self.conn.as_mut().ok_or("no connection")?;
                p.select(db).await?;
                crate::cutover::writer::copy_key(p, key)
                    .await
                    .map_err(|e| format!("{why}; a copy with plain commands failed: {e}"))
            }
        }
    }
}

/// The newest RDB version the old side loads, from its `INFO server`.
async fn old_rdb(old: &mut Client) -> Option<RdbVersion> {
    let info = old.info("server").await.ok()?;
    crate::sync::target::TargetInfo::from_info(&info)
        .ok()
        .map(|i| i.max_rdb)
}
