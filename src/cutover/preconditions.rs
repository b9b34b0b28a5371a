//! Step 1 of the barrier: what must hold before the first switch holds anything (unless
//! forced). The target answers `PING`; the sync streams (even `--force` cannot switch before
//! the snapshot is applied) and lags less than `max_lag_bytes`; and no other client writes to
//! the source directly — `CLIENT LIST` on the source, the proxy's own connections and
//! replicas excepted, and only clients whose last command was a write — because their writes
//! would be lost after the flip. A stream command the target did not apply
//! (`sync::refusals`) or refuses for now refuses the switch, naming it.

use super::*;
use crate::sync::target::memory::{Memory, full_problem, room_problem};

impl Controller {
    /// Refuses the first switch, with the reason, unless its preconditions hold.
    pub(super) async fn first_switch_preconditions(
        &self,
        src: &mut Client,
        tgt: &mut Client,
        source: &Backend,
        force: bool,
    ) -> Result<(), CutoverError> {
        match tgt.query(&[b"PING"]).await {
            Ok(Value::Bytes(_)) => {}
            other => {
                return Err(CutoverError::Refused(format!(
                    "the target does not answer PING: {other:?}"
                )));
            }
        }
        let phase = self.sync.phase();
        let streaming = phase == SyncPhase::Streaming;
        if !force {
            if !streaming {
                return Err(CutoverError::Refused(format!(
                    "the sync is {phase}, not streaming yet; not switching (wait for `phase: streaming` in `cutover status`)"
                )));
            }
            let lag = self.sync.lag_bytes();
            if lag > self.settings.max_lag_bytes {
                return Err(CutoverError::Refused(format!(
                    "target lags {} behind; not switching",
                    human_bytes(lag)
                )));
            }
            let writers = foreign_writers(src, source).await?;
            if !writers.is_empty() {
                return Err(CutoverError::Refused(format!(
                    "other clients write to the source directly (their writes would be lost after the switch): {}; repoint them to the proxy or use --force",
                    writers.join(", ")
                )));
            }
        } else if !streaming {
            return Err(CutoverError::Refused(format!(
                "the sync is {phase}; even --force cannot switch before the snapshot is applied"
            )));
        }
        Ok(())
    }
}

impl Controller {
    /// What every first switch checks, in either overlap, before anything is held: the
    /// target applied every stream command and evicted nothing (never overridden: the link
    /// stopped, see `sync::refusals`), it does not refuse the sync's writes for now, and
    /// (unless forced) it has room for what the source uses and is not nearly full.
    pub(super) async fn first_switch_target_checks(&self, force: bool) -> Result<(), CutoverError> {
        if let Some(why) = self.sync.refusals.describe() {
            return Err(CutoverError::Refused(format!(
                "the target lacks writes: {why}; not switching. Fix the cause and copy again from scratch (see `unapplied` and `evicted_keys` in `cutover status`)"
            )));
        }
        if let Some(why) = self.sync.refusals.waiting() {
            return Err(CutoverError::Refused(format!(
                "the target refuses the sync's writes for now ({why}); they are retried in order until it takes them; not switching"
            )));
        }
        if force {
            return Ok(());
        }
        let (source, target) = self.backends()?;
        let timeout = self.settings.timeout;
        let (Ok(mut src), Ok(mut tgt)) = (
            control::connect(&source, timeout).await,
            control::connect(&target, timeout).await,
        ) else {
            // (Unreachable sides are refused by the move's own checks, with their reason.)
            return Ok(());
        };
        // Room on the target for what the source uses, and not nearly full (issue 20): a
        // full target evicts in silence or refuses writes.
        if let (Ok(s), Ok(t)) = (src.info("memory").await, tgt.info("memory").await) {
            let used = Memory::from_info(&s).used;
            let target = Memory::from_info(&t);
            if let Some(why) = room_problem(used, &target).or_else(|| full_problem(&target)) {
                return Err(CutoverError::Refused(format!(
                    "the target has no room for the data: {why}; not switching (--force to switch anyway)"
                )));
            }
        }
        Ok(())
    }
}

/// One `CLIENT LIST` line as `field=value` pairs.
pub(super) fn client_fields(line: &str) -> impl Iterator<Item = (&str, &str)> {
    line.split(' ').filter_map(|kv| kv.split_once('='))
}

pub(super) async fn client_list(c: &mut Client) -> Result<String, String> {
    match c.query(&[b"CLIENT", b"LIST"]).await? {
        Value::Bytes(text) => Ok(String::from_utf8_lossy(&text).into_owned()),
        other => Err(format!("CLIENT LIST answered {other:?}")),
    }
}

/// Clients of the source that are not the proxy's, not replicas, and whose last command was
/// a write.
pub(super) async fn foreign_writers(
    c: &mut Client,
    source: &Backend,
) -> Result<Vec<String>, CutoverError> {
    let me = match c.query(&[b"CLIENT", b"ID"]).await {
        Ok(Value::Int(id)) => id.to_string(),
        _ => String::new(),
    };
    let list = client_list(c)
        .await
        .map_err(|e| CutoverError::Refused(format!("cannot list the source's clients: {e}")))?;
    let mut out = Vec::new();
    for line in list.lines() {
        let (mut id, mut addr, mut flags, mut cmd, mut name) = ("", "", "", "", "");
        for (k, v) in client_fields(line) {
            match k {
                "id" => id = v,
                "addr" => addr = v,
                "flags" => flags = v,
                "cmd" => cmd = v,
                "name" => name = v,
                _ => {}
            }
        }
        // Ourselves, replicas, a master link, and the sync's own writer connections.
        if id == me
            || flags.contains('S')
            || flags.contains('M')
            || name == crate::sync::target::CLIENT_NAME
        {
            continue;
        }
        if addr.parse().is_ok_and(|a| source.is_own(&a)) {
            continue;
        }
        let name = cmd.split('|').next().unwrap_or("");
        if shadow::is_write(command_id(name.as_bytes())) {
            out.push(format!("{addr} (last command {cmd})"));
        }
    }
    Ok(out)
}
