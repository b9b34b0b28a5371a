//! Valkey's import mode on the side a link writes to (issue 20).
//!
//! A real replica never expires a key: it waits for its master's `DEL`. A link writes into a
//! *primary*, which expires keys on its own clock, so a TTL refreshed on the primary just
//! before it ran out (`PEXPIRE`, `GETEX`, `SET … KEEPTTL`) can reach the other side after that
//! side deleted the key, and the key is gone there for good (worse with a clock ahead). Valkey
//! 8.1 made the mechanism for sync tools: with `import-mode yes`, keys past their TTL are kept
//! (invisible to ordinary clients) until a `DEL` arrives, and a client flagged `CLIENT
//! IMPORT-SOURCE ON` (our link's writer, see `sync::target`) sees them and can refresh them.
//!
//! So the side the applying link writes to is in import mode, and the primary is not:
//! - at start ([`Controller::enter_import_mode`]) the target enters it (each side's own
//!   setting, `CONFIG GET import-mode`, is remembered; a side without the setting — Redis,
//!   Valkey before 8.1 — is left alone);
//! - a move ([`Controller::move_import_mode`]), inside the barrier while every client command
//!   is held and before the new applying link writes: the new primary leaves it (before any
//!   client command is released it expires keys again), the new follower enters it;
//! - `finish` ([`Controller::restore_import_mode`]) puts each side's own setting back.
//!
//! Each change bumps `sync::target::IMPORT_EPOCH`, so every link writer sends `CLIENT
//! IMPORT-SOURCE ON` again before its next transaction. The side in import mode is also
//! recorded for the writers (`sync::target::IMPORT_SIDE`, changed before the sides' modes
//! are): a Valkey that restarts comes back with `import-mode no` from its config, and the
//! link's writer, reconnecting to it, puts it back in import mode before it writes.
//!
//! Eviction: Valkey's import mode does not change eviction (keys of an import source are
//! evicted like any other under an eviction policy); `cutover::memory` counts evictions.

use std::time::Duration;

use super::control;
use super::shadow::Value;
use super::*;
use crate::client::Client;

/// Each side's own `import-mode` (`None`: the side has no such setting).
#[derive(Debug, Clone, Default)]
pub struct ImportModes {
    pub source: Option<String>,
    pub target: Option<String>,
    /// Which side is in import mode because of us now.
    pub on: Option<Side>,
}

/// `CONFIG GET import-mode` (`None`: no such setting, or the side would not say).
async fn get(c: &mut Client) -> Option<String> {
    match c.query(&[b"CONFIG", b"GET", b"import-mode"]).await {
        Ok(Value::Array(v)) => match v.get(1) {
            Some(Value::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        },
        _ => None,
    }
}

async fn set(c: &mut Client, value: &str) -> Result<(), String> {
    match c
        .query(&[b"CONFIG", b"SET", b"import-mode", value.as_bytes()])
        .await?
    {
        Value::Error(e) => Err(e),
        _ => Ok(()),
    }
}

async fn open(b: &Backend, timeout: Duration) -> Result<Client, String> {
    tokio::time::timeout(timeout, control::connect(b, timeout))
        .await
        .map_err(|_| format!("{}: connect timed out", b.describe()))?
}

impl Controller {
    /// At start, before the links write: remembers both sides' own setting and puts the
    /// target (the side the forward link writes to) in import mode when it has one.
    pub async fn enter_import_mode(&self) {
        let Ok((source, target)) = self.backends() else {
            return;
        };
        let timeout = self.settings.timeout;
        let mut modes = ImportModes::default();
        if let Ok(mut c) = open(&source, timeout).await {
            modes.source = get(&mut c).await;
        }
        if let Ok(mut c) = open(&target, timeout).await {
            modes.target = get(&mut c).await;
            if modes.target.is_some() {
                self.record_import_side(Some(Side::Target)).await;
                match set(&mut c, "yes").await {
                    Ok(()) => {
                        modes.on = Some(Side::Target);
                        crate::sync::target::import_mode_changed();
                        tracing::info!(
                            "the target is in import mode: it keeps keys past their TTL until the source's DEL arrives"
                        );
                    }
                    Err(e) => {
                        self.record_import_side(None).await;
                        tracing::warn!(error = %e, "cannot put the target in import mode; keys whose TTL is refreshed late may be lost there")
                    }
                }
            }
        }
        if let Ok(mut m) = self.import.lock() {
            *m = modes;
        }
    }

    /// Inside a move's barrier (every client command held, no link writing): the new
    /// primary `to` leaves import mode, the other side enters it when it has the setting and
    /// a link will write to it (`follower_enters`; not in the shadow overlap, whose writer is
    /// an ordinary client).
    pub(super) async fn move_import_mode(
        &self,
        to: Side,
        new_conn: &mut Client,
        old_conn: &mut Client,
        follower_enters: bool,
    ) -> Result<(), String> {
        let modes = self.import.lock().map(|m| m.clone()).unwrap_or_default();
        let (own_new, has_old) = match to {
            Side::Target => (modes.target.clone(), modes.source.is_some()),
            Side::Source => (modes.source.clone(), modes.target.is_some()),
        };
        let follower = match to {
            Side::Target => Side::Source,
            Side::Source => Side::Target,
        };
        let enters = has_old && follower_enters;
        // The side a reconnecting writer puts back in import mode is changed first: a writer
        // that reconnected just before saw the old value and is done (its mode is overwritten
        // below); one after sees the new one (`sync::target::IMPORT_SIDE`).
        self.record_import_side(enters.then_some(follower)).await;
        if let Some(own) = &own_new {
            if let Err(e) = set(new_conn, own).await {
                self.record_import_side(modes.on).await;
                return Err(format!("the new primary did not leave import mode: {e}"));
            }
        }
        let mut on = None;
        if enters {
            match set(old_conn, "yes").await {
                Ok(()) => on = Some(follower),
                Err(e) => {
                    self.record_import_side(None).await;
                    tracing::warn!(error = %e, "the old side did not enter import mode; keys whose TTL is refreshed late may be lost there")
                }
            }
        }
        if let Ok(mut m) = self.import.lock() {
            m.on = on;
        }
        crate::sync::target::import_mode_changed();
        Ok(())
    }

    /// `finish`: each side's own setting back.
    pub(super) async fn restore_import_mode(&self) {
        let modes = self.import.lock().map(|m| m.clone()).unwrap_or_default();
        self.record_import_side(None).await;
        let Ok((source, target)) = self.backends() else {
            return;
        };
        for (b, own) in [(&source, &modes.source), (&target, &modes.target)] {
            let Some(own) = own else { continue };
            match open(b, self.settings.timeout).await {
                Ok(mut c) => {
                    if let Err(e) = set(&mut c, own).await {
                        tracing::warn!(error = %e, "cannot restore import-mode {own} on the {}", b.describe());
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot restore import-mode on the {}", b.describe())
                }
            }
        }
        if let Ok(mut m) = self.import.lock() {
            m.on = None;
        }
    }

    /// Tells the link writers which side (its address) is in import mode because of us, so
    /// that one reconnecting to a restarted Valkey puts it back in import mode
    /// (`sync::target::IMPORT_SIDE`). A writer holds that lock only for its two round trips
    /// at connect; past the control timeout the change is given up, with a warning.
    async fn record_import_side(&self, side: Option<Side>) {
        let addr = side.and_then(|side| {
            let (source, target) = self.backends().ok()?;
            Some(match side {
                Side::Source => source.url.addr(),
                Side::Target => target.url.addr(),
            })
        });
        let deadline = std::time::Instant::now() + self.settings.timeout;
        while !crate::sync::target::try_set_import_side(addr.clone()) {
            if std::time::Instant::now() > deadline {
                tracing::warn!(
                    "a link writer held the import-mode record past the timeout; a restarted side may not re-enter import mode"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The `import_mode` object of `status`.
    pub fn import_json(&self) -> Json {
        let m = self.import.lock().map(|m| m.clone()).unwrap_or_default();
        json!({
            "source_supported": m.source.is_some(),
            "target_supported": m.target.is_some(),
            "on": m.on.map(Side::as_str),
        })
    }
}
