//! A cluster source: one replica link per source master, all running in parallel into one
//! target (see ARCHITECTURE.md, *Clusters*).
//!
//! Each link is an ordinary run of the engine ([`crate::sync::engine::run_with`], with its own
//! restart loop, [`crate::sync::retry::run_retrying`]) against one source master: its own
//! replication id and offset, its own `PSYNC` continue, its own snapshot. What makes it a
//! link of a cluster is its [`ShardScope`]:
//!
//! * **Its position.** On a standalone target the link's position is the key
//!   `cutover:position:<link>` (database 0, the value as `cutover:position`'s), through
//!   [`LinkSink`]; on a cluster target it is the per-slot `cutover:position:{<tag>}:<link>`
//!   of [`super::ClusterSink`]. `<link>` is the source master's node id (40 hex digits) when
//!   the link was first started: stable across restarts of `cutover` and of the master.
//! * **A failover** is followed within the run: after a failed reconnection the link asks
//!   the topology for its shard's master now ([`ShardScope::relocate`]) and continues there
//!   with `PSYNC` (a promoted replica accepts it through `replid2`). A new `cutover sync`
//!   started after a failover finds the shard's stored position by replication id
//!   ([`super::names`]: the new master's `master_replid2` is the stored one) and continues
//!   under the old link name; a stored position no master continues is reported (orphaned).
//! * **Its full resync** clears only its shard's slots on the target ([`clear_slots`]:
//!   `SCAN` + `UNLINK` of the keys whose slot the shard serves), never `FLUSHALL`: the target
//!   holds the other shards' keys too.
//!
//! Status: one [`SyncProgress`] per link (its `shard` is the slots, [`shard_label`]: the
//! `shard` label of its `cutover_sync_*` series with `cutover sync --metrics-listen`),
//! printed as one line per shard by headless `cutover sync` every few seconds (phase, keys,
//! offsets, lag). A link that fails for good stops the others (cleanly: their positions stay)
//! and the sync ends with its error.
//!
//! **Slots moving on the source** during the sync (`redis-cli --cluster reshard`, Valkey 9
//! atomic slot migration): the links share one table of key owners
//! ([`super::transit_run::Owners`], `ShardScope::transit`); a link meeting a key another link
//! owns waits until that link applied past its master's offset ([`super::transit_run`]).
//! A `FLUSHALL`/`FLUSHDB` in one link's stream clears only the keys that link owns
//! ([`clear_keys`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::client::{Endpoint, connect_blocking};
use crate::cluster::value::{Value, decode};
use crate::cluster::{SlotSet, Topology};
use crate::config::RedisUrl;
use crate::sync::batch::{self, Stored};
use crate::sync::engine::{RunContext, SyncOptions, SyncProgress, SyncReport, say};
use crate::sync::retry::{RetryPolicy, run_retrying};
use crate::sync::target::{Refusal, Sink, Tag, TargetError, TargetInfo, TargetWriter};

/// What makes a run of the engine one link of a cluster source.
#[derive(Debug, Clone)]
pub struct ShardScope {
    /// The link's name in its position keys (the source master's node id).
    pub link: String,
    /// The slots the shard served when the link started.
    pub slots: SlotSet,
    /// `shard 0-5460 127.0.0.1:7000`, for messages.
    pub label: String,
    /// The target holds an earlier sync's data but no position of this link (an orphan's
    /// slots, [`super::names`]): its first snapshot clears its slots, as a full resync does.
    pub clear_first: bool,
    /// Every node of the source cluster when the link started (and the address map): asked
    /// for the shard's master after the link could not reconnect (a failover).
    pub nodes: Option<crate::cluster::SideSpec>,
    /// This link's number and the links' shared table of key owners: slots moving on the
    /// source during the sync ([`super::transit_run`]). `None`: no other link to order with.
    pub transit: Option<(usize, Arc<super::transit_run::Owners>)>,
}

impl ShardScope {
    /// What the link thread asks after a failed reconnection: the master of the shard that
    /// holds the link's node now (its master, or the replica promoted in its place; slots may
    /// have moved to other shards since), else the master serving a slot the link owns now.
    pub fn relocate(&self, timeout: Duration) -> Option<crate::sync::engine::Relocate> {
        let spec = self.nodes.clone()?;
        let slot = match &self.transit {
            Some((me, owners)) => {
                let now = owners.slots_of(*me);
                (0..crate::cluster::SLOTS as crate::cluster::Slot).find(|s| now.contains(*s))
            }
            None => None,
        }
        .or_else(|| {
            (0..crate::cluster::SLOTS as crate::cluster::Slot).find(|s| self.slots.contains(*s))
        })?;
        let id = self.link.clone();
        let timeout = timeout.min(Duration::from_secs(2));
        Some(Box::new(move || {
            let topo = Topology::discover(&spec.seeds, &spec.address_map, timeout).ok()?;
            let by_id = topo.map().shards().iter().find(|sh| {
                !sh.ranges.is_empty()
                    && (sh.master.id == id || sh.replicas.iter().any(|r| r.id == id))
            });
            let node = match by_id {
                Some(sh) => &sh.master,
                None => topo.map().master_of(slot)?,
            };
            Some(topo.node_url(node))
        }))
    }
}

/// The position key of `link` on a standalone target.
pub fn link_position_key(link: &str) -> Vec<u8> {
    let mut k = batch::POSITION_PREFIX.to_vec();
    k.extend_from_slice(link.as_bytes());
    k
}

/// A standalone target written by one link of a cluster source: the [`TargetWriter`], with
/// the link's own position key.
pub struct LinkSink {
    inner: TargetWriter,
    key: Vec<u8>,
}

impl LinkSink {
    pub fn new(inner: TargetWriter, link: &str) -> LinkSink {
        LinkSink {
            inner,
            key: link_position_key(link),
        }
    }
}

impl Sink for LinkSink {
    fn info(&self) -> &TargetInfo {
        self.inner.info()
    }
    fn addr(&self) -> &str {
        self.inner.addr()
    }
    fn db(&self) -> u64 {
        self.inner.db()
    }
    fn set_db(&mut self, db: u64) {
        self.inner.set_db(db)
    }
    fn databases(&self) -> Option<u64> {
        self.inner.databases()
    }
    fn check_db(&self, db: u64) -> Result<(), TargetError> {
        self.inner.check_db(db)
    }
    fn select(&mut self, db: u64) -> Result<(), TargetError> {
        self.inner.select(db)
    }
    fn send<A: AsRef<[u8]>>(&mut self, args: &[A], tag: Tag) -> Result<(), TargetError> {
        self.inner.send(args, tag)
    }
    fn send_wire(&mut self, wire: &[u8], tag: Tag) -> Result<(), TargetError> {
        self.inner.send_wire(wire, tag)
    }
    fn mark_offset(&mut self, offset: u64) {
        self.inner.mark_offset(offset)
    }
    fn confirmed_offset(&self) -> Option<u64> {
        self.inner.confirmed_offset()
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn poll(&mut self) -> Result<(), TargetError> {
        self.inner.poll()
    }
    fn drain(&mut self) -> Result<(), TargetError> {
        self.inner.drain()
    }
    fn begin_txn(&mut self) -> Result<(), TargetError> {
        self.inner.begin_txn()
    }
    fn txn_refused(&mut self) -> Result<Vec<(usize, Refusal)>, TargetError> {
        self.inner.txn_refused()
    }
    fn exec_txn(&mut self, tag: Tag) -> Result<(), TargetError> {
        self.inner.exec_txn(tag)
    }
    fn resend_txn_without(&mut self, drop: &[usize]) -> Result<(), TargetError> {
        self.inner.resend_txn_without(drop)
    }
    fn discard(&mut self) -> Result<(), TargetError> {
        self.inner.discard()
    }
    fn take_exec_errors(&mut self) -> Vec<Refusal> {
        self.inner.take_exec_errors()
    }
    fn take_unchanged(&mut self) -> Vec<Tag> {
        self.inner.take_unchanged()
    }
    fn read_position(&mut self) -> Result<Stored, TargetError> {
        batch::read_key(&mut self.inner, &self.key)
    }
    fn store_position(&mut self, value: &str) -> Result<(), TargetError> {
        batch::queue_set_key(&mut self.inner, &self.key, value)
    }
    fn del_position(&mut self) -> Result<(), TargetError> {
        batch::queue_del_key(&mut self.inner, &self.key)
    }
}

/// Removes from the target every key whose slot is in `slots` (cutover's own keys stay): a
/// full resync of one link of a cluster source. `SCAN` + `UNLINK` on the target (each master
/// of a cluster target), in the database the source's database 0 maps to.
pub fn clear_slots(opts: &SyncOptions, slots: &SlotSet) -> anyhow::Result<()> {
    clear_keys(opts, &|k| slots.contains_key(k)).map(|_| ())
}

/// Removes from the target every key `mine` says is the shard's (cutover's own keys stay):
/// [`clear_slots`], or the keys a link owns now while slots move ([`super::transit_run`]).
pub fn clear_keys(opts: &SyncOptions, mine: &dyn Fn(&[u8]) -> bool) -> anyhow::Result<u64> {
    let mut cluster = false;
    let nodes: Vec<RedisUrl> = match crate::sync::engine::target_cluster(
        opts.target_side.as_ref(),
        &opts.target,
        opts.timeout,
    )? {
        Some(topo) => {
            cluster = true;
            topo.master_urls()
        }
        None => {
            let mut url = opts.target.clone();
            if let Some(db) = opts.tuning.filter.map_db(0) {
                url.db = u32::try_from(db).unwrap_or(url.db);
            }
            vec![url]
        }
    };
    let mut removed = 0u64;
    for url in nodes {
        let endpoint = Endpoint::new(&url).map_err(TargetError::from)?;
        let mut c = connect_blocking(&endpoint, opts.timeout).map_err(TargetError::from)?;
        let mut cursor = b"0".to_vec();
        loop {
            let raw = c
                .call(&[b"SCAN", &cursor, b"COUNT", b"1000"])
                .map_err(TargetError::from)?;
            let (v, _) = decode(&raw).with_context(|| format!("SCAN on {}", url.addr()))?;
            let Some([next, Value::Array(keys)]) = v.as_array() else {
                bail!("unexpected SCAN reply from {}: {v:?}", url.addr());
            };
            // One `UNLINK` per slot: a cluster node refuses keys of two slots (CROSSSLOT).
            let mut per_slot: std::collections::BTreeMap<crate::cluster::Slot, Vec<&[u8]>> =
                std::collections::BTreeMap::new();
            for k in keys {
                if let Some(k) = k.as_bytes()
                    && mine(k)
                    && !batch::is_own_key(0, k)
                {
                    let s = if cluster { crate::cluster::slot(k) } else { 0 };
                    per_slot.entry(s).or_default().push(k);
                }
            }
            for ks in per_slot.values() {
                let mut args: Vec<&[u8]> = Vec::with_capacity(ks.len() + 1);
                args.push(b"UNLINK");
                args.extend(ks.iter().copied());
                removed += ks.len() as u64;
                c.call(&args).map_err(TargetError::from)?;
            }
            cursor = next.as_bytes().unwrap_or(b"0").to_vec();
            if cursor == b"0" {
                break;
            }
        }
    }
    tracing::info!(
        removed,
        "the keys of a shard's slots were removed from the target"
    );
    Ok(removed)
}

/// `cutover sync` from a cluster: a link per source master, in parallel (see the module doc).
pub fn run(opts: &SyncOptions, topo: &Topology, policy: RetryPolicy) -> anyhow::Result<SyncReport> {
    let base = RunContext::new(opts, opts.shared.is_none())?;
    let stop = Arc::clone(&base.stop);
    let (tx, rx) = mpsc::channel::<(usize, anyhow::Result<SyncReport>)>();
    let mut links: Vec<(String, Arc<SyncProgress>)> = Vec::new();
    // Every node (masters and replicas) is a seed for finding a shard's master later.
    let nodes = crate::cluster::SideSpec {
        seeds: topo
            .map()
            .shards()
            .iter()
            .flat_map(|s| std::iter::once(&s.master).chain(&s.replicas))
            .map(|n| topo.node_url(n))
            .collect(),
        address_map: topo.address_map().clone(),
    };
    // Before any link writes: each target node has room for its share of the source's
    // masters (`super::room`).
    let target =
        crate::sync::engine::target_cluster(opts.target_side.as_ref(), &opts.target, opts.timeout)?;
    super::room::check(
        &super::room::nodes(Some(topo), &opts.source),
        &super::room::nodes(target.as_ref(), &opts.target),
        opts.timeout,
    )?;
    // Each link continues the stored position of its master's replication history (a
    // failover while cutover was stopped included): `names`.
    let own: Vec<String> = topo
        .map()
        .shards()
        .iter()
        .filter(|s| !s.ranges.is_empty())
        .map(|s| {
            if s.master.id.is_empty() {
                s.master.addr.to_string().replace([':', '.'], "_")
            } else {
                s.master.id.clone()
            }
        })
        .collect();
    let (names, earlier) = super::names::name_links(opts, topo, &own)?;
    let mut names = names.into_iter();
    // The links first (their table of key owners is shared), then their threads.
    let mut planned = Vec::new();
    for shard in topo.map().shards().iter() {
        if shard.ranges.is_empty() {
            continue;
        }
        let Some((link, how)) = names.next() else {
            break;
        };
        let ranges: Vec<String> = shard
            .ranges
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        let label = format!("shard {} {}", ranges.join(","), shard.master.addr);
        let progress = Arc::new(SyncProgress::for_shard(Box::leak(
            shard_label(&ranges).into_boxed_str(),
        )));
        planned.push((link, how, label, progress, shard));
    }
    let owners = Arc::new(super::transit_run::Owners::new(
        planned
            .iter()
            .map(
                |(_, _, label, progress, shard)| super::transit_run::LinkState {
                    url: topo.node_url(&shard.master),
                    label: label.clone(),
                    progress: Arc::clone(progress),
                },
            )
            .collect(),
        |slot| {
            planned
                .iter()
                .position(|(_, _, _, _, shard)| {
                    shard.ranges.iter().any(|(a, b)| *a <= slot && slot <= *b)
                })
                .unwrap_or(usize::MAX)
        },
    ));
    for (i, (link, how, label, progress, shard)) in planned.into_iter().enumerate() {
        let link_opts = SyncOptions {
            source: topo.node_url(&shard.master),
            progress: false,
            shard: Some(ShardScope {
                link,
                slots: SlotSet::from_ranges(&shard.ranges),
                label: label.clone(),
                clear_first: earlier && how == super::names::How::Own,
                nodes: Some(nodes.clone()),
                transit: Some((i, Arc::clone(&owners))),
            }),
            ..opts.clone()
        };
        let ctx = RunContext {
            progress: Arc::clone(&progress),
            stop: Arc::clone(&stop),
        };
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("cutover-link-{i}"))
            .spawn(move || {
                let r = run_retrying(&link_opts, policy, &ctx);
                let _ = tx.send((i, r));
            })
            .context("cannot start a link thread")?;
        links.push((label, progress));
    }
    drop(tx);
    if opts.progress {
        say(&format!(
            "cutover sync: the source is a cluster of {} masters: one replication link per master, in parallel",
            links.len()
        ));
    }
    let mut total = SyncReport::default();
    let mut left = links.len();
    let mut failed: Option<anyhow::Error> = None;
    let mut shown = Instant::now();
    while left > 0 {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((_, Ok(r))) => {
                left -= 1;
                add(&mut total, &r);
            }
            Ok((i, Err(e))) => {
                left -= 1;
                if failed.is_none() {
                    // One shard cannot go on: stop the others cleanly (their positions stay).
                    stop.store(true, Ordering::Release);
                    failed = Some(e.context(format!("the link of {}", links[i].0)));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if opts.progress && shown.elapsed() >= Duration::from_secs(5) {
            shown = Instant::now();
            for (label, p) in &links {
                say(&shard_line(label, p));
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(total)
}

/// A shard's `shard` label: its slot ranges, at most three then `+N` (bounded, and stable
/// across a failover, unlike the master's address).
pub fn shard_label(ranges: &[String]) -> String {
    let mut l = ranges.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    if ranges.len() > 3 {
        l.push_str(&format!(",+{}", ranges.len() - 3));
    }
    l
}

/// One shard's status line: phase, keys, offsets, lag.
pub fn shard_line(label: &str, p: &SyncProgress) -> String {
    let j = p.to_json();
    let n = |k: &str| j.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    format!(
        "cutover sync: {label}: {}, {} keys, offset {} applied / {} received, lag {} bytes / {} ms, {} commands, {} not atomic",
        p.phase_name(),
        n("keys_done"),
        n("applied_offset"),
        n("received_offset"),
        p.lag_bytes(),
        p.lag_ms(),
        n("commands_applied"),
        n("non_atomic_txns"),
    )
}

fn add(total: &mut SyncReport, r: &SyncReport) {
    let (t, s) = (&mut total.stats, &r.stats);
    t.restored += s.restored;
    t.reencoded += s.reencoded;
    t.plain += s.plain;
    t.expired += s.expired;
    t.unsupported += s.unsupported;
    t.field_ttls_dropped += s.field_ttls_dropped;
    t.functions += s.functions;
    t.keys_seen += s.keys_seen;
    t.filtered += s.filtered;
    for (a, b) in t.by_type.iter_mut().zip(s.by_type) {
        *a += b;
    }
    t.problems.extend(
        s.problems
            .iter()
            .take(100usize.saturating_sub(t.problems.len()))
            .cloned(),
    );
    total.snapshot_bytes += r.snapshot_bytes;
    total.commands += r.commands;
    total.commands_skipped += r.commands_skipped;
    total.commands_converted += r.commands_converted;
    total.commands_mixed_keys += r.commands_mixed_keys;
    total.offset = total.offset.max(r.offset);
    if total.target.is_empty() {
        total.target = r.target.clone();
    }
}
