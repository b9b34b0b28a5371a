//! The link thread: the replica side of the replication protocol, on a single-threaded
//! runtime of its own.
//!
//! It connects with `PSYNC` (`? -1`, or the stored position to continue from), hands the
//! snapshot's bytes to the applier as they arrive, then the commands of the stream, each
//! with the offset it ends at. It acknowledges (`REPLCONF ACK`) the offset the applier
//! publishes — the offset the target has confirmed — once a second and on `GETACK`, so the
//! source's view of this replica never runs ahead of what the target holds.
//!
//! **Reconnects** ([`LinkState`]): the thread remembers the replication id and the offset of
//! the last byte it received and handed on. A dropped or silent link is connected again with
//! `PSYNC <replid> <that + 1>`, with a short back-off, so the applier sees one seamless
//! stream ([`Msg::Continued`]). A `+FULLRESYNC` then (or a drop during the snapshot) sends a
//! new [`Msg::Start`]. A source that cannot be reached again within [`RECONNECT_TIMEOUTS`] ×
//! the timeout fails the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use crate::config::RedisUrl;
use crate::sync::replica::{ReplicaError, ReplicaLink, SyncStart};

use super::*;

/// Where the source is now, asked after a reconnection failed (one link of a cluster source:
/// the master serving the shard's slots, which a failover changes); `None`: no answer.
pub(in crate::sync) type Relocate = Box<dyn Fn() -> Option<RedisUrl> + Send>;

pub(super) fn link_thread(
    source: RedisUrl,
    resume: Option<(String, u64)>,
    tx: SyncSender<Msg>,
    applied: Arc<AtomicU64>,
    timeout: Duration,
    relocate: Option<Relocate>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Msg::Failed(format!("cannot start a runtime: {e}"), false));
            return;
        }
    };
    let mut link = LinkState {
        want: resume,
        sessions: 0,
        relocate,
    };
    if let Err((e, transient)) = rt.block_on(link.run(&source, &tx, &applied, timeout)) {
        let _ = tx.send(Msg::Failed(e, transient));
    }
}

/// A dropped link is connected again for up to this many times the silence timeout before
/// the run fails (5 minutes with the default 60 s).
pub const RECONNECT_TIMEOUTS: u32 = 5;

/// The link thread's memory across connections.
struct LinkState {
    /// Where to continue after a drop: the replication id and the offset of the last byte
    /// received (and handed to the applier). `None`: no complete snapshot on this link yet —
    /// connecting again means a new full sync.
    want: Option<(String, u64)>,
    /// Connections that completed the handshake.
    sessions: u64,
    /// Asked where the source is after a reconnection failed ([`Relocate`]).
    relocate: Option<Relocate>,
}

/// Why a link session ended.
enum Ended {
    /// The applier is gone (stopped, or failed and says why itself).
    ApplierGone,
    Link(ReplicaError),
}

impl From<ReplicaError> for Ended {
    fn from(e: ReplicaError) -> Ended {
        Ended::Link(e)
    }
}

impl LinkState {
    /// Runs link sessions until the applier stops: a dropped or silent link (no data and no
    /// PING for `timeout`) is connected again with `PSYNC <replid> <offset + 1>`, after a short
    /// back-off, for as long as the source can be reached again within
    /// [`RECONNECT_TIMEOUTS`] × `timeout`. The first
    /// connection is not retried (the caller reports it; `cutover run` retries the whole run).
    async fn run(
        &mut self,
        source: &RedisUrl,
        tx: &SyncSender<Msg>,
        applied: &AtomicU64,
        timeout: Duration,
    ) -> Result<(), (String, bool)> {
        let mut down_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(100);
        let mut source = source.clone();
        loop {
            let before = self.sessions;
            let err = match self.session(&source, tx, applied, timeout).await {
                Ended::ApplierGone => return Ok(()),
                Ended::Link(e) => e,
            };
            if !err.is_transient() || self.sessions == 0 {
                // (A first connection refused may be a source that is restarting, or a wrong
                // address: the caller decides.)
                return Err((err.to_string(), err.is_transient()));
            }
            if self.sessions > before {
                // This connection got through its handshake before it dropped: a new outage.
                down_since = None;
                backoff = Duration::from_millis(100);
            }
            let since = match down_since {
                Some(t) => t,
                None => {
                    if tx.send(Msg::LinkDown(err.to_string())).is_err() {
                        return Ok(());
                    }
                    *down_since.insert(Instant::now())
                }
            };
            let give_up = timeout * RECONNECT_TIMEOUTS;
            if since.elapsed() > give_up {
                return Err((
                    format!(
                        "the replication link dropped and the source could not be reached again within {} s: {err}",
                        give_up.as_secs()
                    ),
                    false,
                ));
            }
            tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "replication link down; connecting again");
            tokio::time::sleep(backoff).await;
            // A cluster source's shard may have a new master (a failover): continue there
            // (`PSYNC <replid> <offset + 1>`: a promoted replica accepts it through its
            // `replid2`; otherwise it answers with a full resync of the shard).
            if let Some(relocate) = &self.relocate
                && let Some(now) = relocate()
                && now != source
            {
                tracing::warn!(from = %source, to = %now, "the shard's master changed; the link follows it");
                source = now;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn session(
        &mut self,
        source: &RedisUrl,
        tx: &SyncSender<Msg>,
        applied: &AtomicU64,
        timeout: Duration,
    ) -> Ended {
        let send = |m: Msg| tx.send(m).map_err(|_| Ended::ApplierGone);
        let res: Result<(), Ended> = async {
            let wanted = self.want.as_ref().map(|(id, off)| (id.as_str(), *off));
            let (mut link, start) = ReplicaLink::connect(source, wanted, 0, timeout).await?;
            self.sessions += 1;
            let first = self.sessions == 1;
            match start {
                SyncStart::FullResync { replid, offset } => {
                    self.want = None;
                    applied.store(offset, Ordering::Release);
                    send(Msg::Start {
                        replid: replid.clone(),
                        offset,
                    })?;
                    let mut gone = false;
                    let bytes = link
                        .receive_snapshot_sized(
                            |size| {
                                tx.send(Msg::SnapshotSize(size))
                                    .map_err(|_| "the applier stopped".to_string())
                            },
                            |piece| {
                                tx.send(Msg::Snapshot(piece.to_vec())).map_err(|_| {
                                    gone = true;
                                    "the applier stopped".to_string()
                                })
                            },
                        )
                        .await;
                    if gone {
                        return Err(Ended::ApplierGone);
                    }
                    let bytes = bytes?;
                    send(Msg::SnapshotDone { bytes })?;
                    self.want = Some((replid, link.offset()));
                }
                SyncStart::Continue { replid } => {
                    let Some((old, offset)) = self.want.take() else {
                        return Err(Ended::Link(ReplicaError::Protocol {
                            addr: source.addr(),
                            step: "PSYNC",
                            detail: "+CONTINUE to PSYNC ? -1".into(),
                        }));
                    };
                    let replid = replid.unwrap_or(old);
                    self.want = Some((replid.clone(), offset));
                    if first {
                        applied.store(offset, Ordering::Release);
                        send(Msg::Resumed { replid, offset })?;
                    } else {
                        send(Msg::Continued { replid, offset })?;
                    }
                }
            }
            loop {
                let cmds = link
                    .next_commands_with(|| applied.load(Ordering::Acquire))
                    .await?;
                if let Some(want) = &mut self.want {
                    want.1 = link.offset();
                }
                send(Msg::Commands(cmds, Instant::now()))?;
            }
        }
        .await;
        match res {
            Ok(()) => Ended::ApplierGone,
            Err(e) => e,
        }
    }
}
