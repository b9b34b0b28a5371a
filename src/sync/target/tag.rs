//! What a command in flight was for ([`Tag`]), and a command the target did not take
//! ([`Refusal`]).

use std::borrow::Cow;

/// What a command in flight was for.
#[derive(Debug, Clone, Default)]
pub struct Tag {
    /// The key it writes, for error messages (empty if none).
    pub key: Vec<u8>,
    /// The command name, for error messages.
    pub what: Cow<'static, str>,
    /// Replication offset reached once this command is applied.
    pub offset: Option<u64>,
    /// An error reply is expected and fine (e.g. a command the target may not know).
    pub tolerate_error: bool,
    /// The `EXEC` of a transaction: an error among the replies of its commands is an error.
    pub exec: bool,
    /// A command of the replication stream (a refusal of it is reported and the command left
    /// out, see [`TargetWriter::txn_refused`]; our own commands must never be refused).
    pub replicated: bool,
    /// A stream command that changed the primary's data and must change this side's too
    /// (`PEXPIREAT`, `PERSIST`, `SET … XX`): answered `0` or nil here, the key was missing
    /// on this side (it expired or was evicted early), see [`TargetWriter::take_unchanged`].
    pub must_change: bool,
    /// A stream command whose reply here says the key was missing before it (`INCR` answered
    /// `:1`: the primary may have had a counter this side expired early): these exact reply
    /// bytes put the command among [`TargetWriter::take_unchanged`] too, as a suspect.
    pub suspect_reply: Option<Box<[u8]>>,
    /// The stream's database (the source's number) the command was in.
    pub stream_db: u64,
    /// A copy of a key from the primary (`sync::engine::repair`): refused, the key stays
    /// unrepaired (the link goes on).
    pub repair: bool,
    /// For a stream command: the replication offset right after it (0: not a stream
    /// command). A cluster target skips, per slot, what that slot's position already holds.
    pub stream_end: u64,
    /// The `EXEC` of a transaction of the source (a cluster target whose slots it spans
    /// applies it as several, reported as non-atomic).
    pub source_txn: bool,
    /// Queued inside the writer's transaction (set by the writer).
    pub(crate) in_txn: bool,
    /// The `EXEC` of the writer's transaction (set by the writer).
    pub(crate) txn_exec: bool,
    /// Which of the writer's transactions it was queued in (set by the writer).
    pub(crate) txn_seq: u64,
}

impl Tag {
    pub fn key(what: &'static str, key: &[u8]) -> Tag {
        Tag {
            key: key.to_vec(),
            what: Cow::Borrowed(what),
            ..Tag::default()
        }
    }
}

/// Printable form of a (binary) key.
pub fn show_key(key: &[u8]) -> String {
    let mut s = String::new();
    for chunk in key.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                s.extend(c.escape_default());
            } else {
                s.push(c);
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// A command the target did not take: inside `MULTI` when it was queued, or inside `EXEC`.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The command's tag (what it was, its key).
    pub tag: Tag,
    /// The target's error reply, as text.
    pub error: String,
}

impl Refusal {
    /// An error of this command in particular (`ERR unknown command`, `ERR wrong number of
    /// arguments`, `ERR syntax error`, `WRONGTYPE`…): leaving the command out lets the rest
    /// apply. Other errors (`OOM`, `NOPERM`, `READONLY`, `MISCONF`, `LOADING`…) are about the
    /// target as a whole, and stop the run.
    pub fn is_command_error(&self) -> bool {
        let code = self.error.split(' ').next().unwrap_or("");
        matches!(code, "ERR" | "WRONGTYPE")
    }
}
