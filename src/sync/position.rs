//! The replication position stored on the target, for exactly-once restarts.
//!
//! The key [`POSITION_KEY`] (`cutover:position`, in database 0 of the target) holds
//! `"<replid> <offset>"`: the source's replication id and the replication offset up to which
//! the target holds the source's writes (the offset `INFO replication` calls
//! `master_repl_offset`, i.e. the number of stream bytes applied). Every batch of stream
//! commands is applied inside one `MULTI … EXEC` that also sets the key (with `SELECT 0`
//! before and `SELECT <current db>` after it), so the key and the data always agree: after a
//! crash, `PSYNC <replid> <offset + 1>` continues exactly after the last applied batch.
//!
//! While a snapshot is being loaded the key holds [`LOADING`]: a restart then knows the target
//! holds an incomplete copy and starts over with `FLUSHALL`.
//!
//! The key is never copied from the source (neither from its snapshot nor from its stream).

use std::time::Duration;

use super::target::{TargetError, TargetWriter, reply_text};
use crate::config::RedisUrl;

/// The key that holds the position (database 0 of the target).
pub const POSITION_KEY: &[u8] = b"cutover:position";

/// Set in database 0 of the target by the first `cutover switch` (`"<unix ms> <offset>"`):
/// the target has been the primary since, so a new `cutover run` must not sync into it again
/// (it would route clients back to the source and apply the shadowed writes a second time).
pub const SWITCHED_KEY: &[u8] = b"cutover:switched";

/// cutover's own bookkeeping keys (database 0): never copied from a source, never compared.
pub fn is_own_key(db: u64, key: &[u8]) -> bool {
    db == 0 && (key == POSITION_KEY || key == SWITCHED_KEY)
}
/// The key's value while a snapshot is loading.
pub const LOADING: &str = "snapshot-loading";

/// What the target says about an earlier sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// No position: the target was never synced into (by this tool).
    None,
    /// An earlier sync stopped here.
    At { replid: String, offset: u64 },
    /// An earlier sync left something that cannot be resumed (a snapshot that did not finish).
    Unusable(String),
}

impl Stored {
    pub fn parse(value: &str) -> Stored {
        let mut parts = value.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(off), None) if id.len() == 40 => match off.parse() {
                Ok(offset) => Stored::At {
                    replid: id.to_string(),
                    offset,
                },
                Err(_) => Stored::Unusable(value.to_string()),
            },
            _ => Stored::Unusable(value.to_string()),
        }
    }
}

/// The value stored for a position.
pub fn format(replid: &str, offset: u64) -> String {
    format!("{replid} {offset}")
}

/// Reads the stored position (the writer's database is kept).
pub fn read(w: &mut TargetWriter) -> Result<Stored, TargetError> {
    let db = w.db().to_string();
    w.call(&[b"SELECT", b"0"])?;
    let reply = w.call(&[b"GET", POSITION_KEY])?;
    w.call(&[b"SELECT", db.as_bytes()])?;
    if reply.starts_with(b"$-1") || reply.starts_with(b"_") {
        return Ok(Stored::None);
    }
    if reply.first() != Some(&b'$') {
        return Ok(Stored::Unusable(reply_text(&reply)));
    }
    Ok(Stored::parse(&reply_text(&reply)))
}

/// Queues `SET <position key> <value>` in database 0 (the writer's database is restored after
/// it): inside a `MULTI` these are part of the transaction.
pub fn queue_set(w: &mut TargetWriter, value: &str) -> Result<(), TargetError> {
    let db = w.db();
    w.select(0)?;
    w.send(
        &[&b"SET"[..], POSITION_KEY, value.as_bytes()],
        super::target::Tag::key("SET", POSITION_KEY),
    )?;
    w.select(db)
}

/// Queues `DEL <position key>` in database 0.
pub fn queue_del(w: &mut TargetWriter) -> Result<(), TargetError> {
    let db = w.db();
    w.select(0)?;
    w.send(
        &[&b"DEL"[..], POSITION_KEY],
        super::target::Tag::key("DEL", POSITION_KEY),
    )?;
    w.select(db)
}

/// The value of [`SWITCHED_KEY`] on the target, when an earlier `cutover run` switched to it
/// (`Ok(None)`: it did not). A new sync into such a target would apply writes a second time
/// (the source's stream holds the writes shadowed to it), and a new proxy would send the
/// clients back to the source.
pub fn switched_marker(
    target: &RedisUrl,
    timeout: Duration,
) -> Result<Option<String>, TargetError> {
    let mut db0 = target.clone();
    db0.db = 0;
    let raw = super::target::query_raw(&db0, &[b"GET", SWITCHED_KEY], timeout)?;
    Ok(raw
        .strip_prefix(b"$")
        .filter(|r| !r.starts_with(b"-"))
        .and_then(|r| {
            let nl = r.iter().position(|b| *b == b'\n')?;
            Some(
                String::from_utf8_lossy(r.get(nl + 1..)?)
                    .trim_end()
                    .to_string(),
            )
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let id = "a".repeat(40);
        assert_eq!(
            Stored::parse(&format(&id, 77)),
            Stored::At {
                replid: id.clone(),
                offset: 77
            }
        );
        assert!(matches!(Stored::parse(LOADING), Stored::Unusable(_)));
        assert!(matches!(
            Stored::parse(&format!("{id} x")),
            Stored::Unusable(_)
        ));
    }
}
