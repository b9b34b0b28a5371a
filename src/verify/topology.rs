//! Verify across topologies: a cluster on either side (or both, with different master
//! counts). The standalone ↔ standalone verify does not come here (`run` keeps its path).
//!
//! How the work is cut:
//!
//! * Each side is a list of **nodes** (the one server, or every master of a cluster), each
//!   with the slots it serves (`None` for a standalone server: every key).
//! * **Source pass**: for each source node `S` and each target node `T` whose slots meet,
//!   `scan::source_pass` walks `S` with `SCAN` and compares only the keys whose slot `T`
//!   serves (`PassOpts::slots` = `T`'s slots), with `T` as the target connection. So every
//!   source key is compared once, against the node that holds it on the target, and every
//!   command of a batch goes to the node of its key. On a cluster, multi-key commands carry one
//!   key (`PassOpts::per_key`: `MGET k`, `EXISTS k`), since a cluster refuses keys of several
//!   slots in one command (`CROSSSLOT`), even on one node.
//! * **Extra keys**: the key-set digest (`scan::KeySetDigest`, a count and a wrapping sum: it
//!   merges by addition) of every target node's `SCAN`, summed, is compared with the digest of
//!   the keys the source pass found on both sides. Only when they differ, each target node `T`
//!   is walked again and its keys are looked up (`EXISTS`) on the source node serving their
//!   slot (pairs `T` × `S` again, filtered by `S`'s slots).
//! * **Re-check rounds** route each candidate key to the nodes serving its slot *now* (the
//!   maps are read again before the rounds), so a key moved by a reshard during the passes is
//!   compared where it lives.
//!
//! The cost: a source node is scanned once per target node its slots meet (a 3 → 4 master
//! verify scans each source master about twice); comparing, which dominates, is done once
//! per key. A cluster has only database 0: a source db `n > 0` must be mapped to 0 for a
//! cluster target (`--db-map n=0`), refused before anything is compared.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::client::{Conn, Reply, VerifyError};
use super::compare::{self, CompareOpts, DiffKind, Outcome};
use super::scan::{self, Candidate, KeySetDigest, PassOpts, PassResult, Progress};
use super::{Report, VerifyOptions, has_field_ttls, info_keyspace};
use crate::cluster::{Side, SideSpec, SlotSet};
use crate::config::RedisUrl;

/// One node of a side: where, and the slots it serves (`None`: every key).
#[derive(Debug, Clone)]
struct NodeOf {
    url: RedisUrl,
    slots: Option<Arc<SlotSet>>,
}

fn nodes(side: &Side) -> Vec<NodeOf> {
    match side {
        Side::Standalone(u) => vec![NodeOf {
            url: u.clone(),
            slots: None,
        }],
        Side::Cluster(t) => t
            .map()
            .shards()
            .iter()
            .filter(|s| !s.ranges.is_empty())
            .map(|s| NodeOf {
                url: t.node_url(&s.master),
                slots: Some(Arc::new(SlotSet::from_ranges(&s.ranges))),
            })
            .collect(),
    }
}

/// True when two nodes may hold keys of a common slot.
fn meet(a: &NodeOf, b: &NodeOf) -> bool {
    match (&a.slots, &b.slots) {
        (Some(x), Some(y)) => !x.intersection(y).is_empty(),
        _ => true,
    }
}

fn resolve(
    spec: &SideSpec,
    which: &'static str,
    opts: &VerifyOptions,
) -> Result<Side, VerifyError> {
    spec.resolve(opts.timeout)
        .map_err(|e| VerifyError::Invalid(format!("{which} {}: {e}", spec.describe())))
}

/// The sides of a verify, when one of them is a cluster (`None`: both are one server, the
/// ordinary path). A side whose only seed cannot be asked is left to the ordinary path,
/// which reports the connection error as before.
pub(super) fn sides(opts: &VerifyOptions) -> Result<Option<(Side, Side)>, VerifyError> {
    let src_spec = opts
        .source_side
        .clone()
        .unwrap_or_else(|| SideSpec::single(opts.source.clone()));
    let tgt_spec = opts
        .target_side
        .clone()
        .unwrap_or_else(|| SideSpec::single(opts.target.clone()));
    let lenient = |spec: &SideSpec, which| -> Result<Option<Side>, VerifyError> {
        match resolve(spec, which, opts) {
            Ok(s) => Ok(Some(s)),
            Err(_) if spec.seeds.len() == 1 => Ok(None),
            Err(e) => Err(e),
        }
    };
    let (Some(src), Some(tgt)) = (lenient(&src_spec, "source")?, lenient(&tgt_spec, "target")?)
    else {
        return Ok(None);
    };
    Ok((src.is_cluster() || tgt.is_cluster()).then_some((src, tgt)))
}

/// The keyspace of a side: per db, keys (summed over the nodes) and whether any node has keys
/// with a TTL there.
fn keyspace(
    nodes: &[NodeOf],
    which: &'static str,
    opts: &VerifyOptions,
) -> Result<BTreeMap<u32, (u64, bool)>, VerifyError> {
    let mut space: BTreeMap<u32, (u64, bool)> = BTreeMap::new();
    for n in nodes {
        let mut c = Conn::connect(&n.url, which, opts.timeout)?;
        for (db, keys, expires) in info_keyspace(&mut c)? {
            let e = space.entry(db).or_default();
            e.0 += keys;
            e.1 |= expires > 0;
        }
    }
    Ok(space)
}

/// Attempts before a verify that keeps meeting moving slots gives up.
const ATTEMPTS: usize = 3;

/// True when a side's slots are moving now (a slot being migrated on a master).
fn moving(side: &Side) -> bool {
    matches!(side, Side::Cluster(t) if t.migrating())
}

/// True for a refusal that means "this key is on another node now" (a reshard under way).
fn redirected(e: &VerifyError) -> bool {
    matches!(e, VerifyError::Refused { reply, .. }
        if ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"].iter().any(|p| reply.trim_start_matches('-').starts_with(p)))
}

/// Runs a verify between `src` and `tgt`, at least one a cluster. A verify is only trusted
/// when no slot moved while it ran: it is refused while a slot is being migrated, and run
/// again (up to [`ATTEMPTS`] times) when a key answered `MOVED`/`ASK` or a map changed
/// between its start and its end (a key moving between two masters' scans could otherwise be
/// missed silently).
pub(super) fn run(
    opts: &VerifyOptions,
    mut src: Side,
    mut tgt: Side,
    progress: &Arc<Progress>,
) -> Result<Report, VerifyError> {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            tracing::warn!(attempt, reason = %last, "slots moved during the verify: running it again");
            std::thread::sleep(opts.interval.max(Duration::from_millis(500)));
            (src, tgt) = match sides(opts)? {
                Some(s) => s,
                None => {
                    return Err(VerifyError::Invalid(
                        "the sides are no longer clusters".into(),
                    ));
                }
            };
            progress.source_keys.store(0, Ordering::Relaxed);
            progress.target_keys.store(0, Ordering::Relaxed);
        }
        if moving(&src) || moving(&tgt) {
            last = "a slot is being migrated".into();
            continue;
        }
        let maps = |s: &Side| match s {
            Side::Cluster(t) => Some(t.map().clone()),
            Side::Standalone(_) => None,
        };
        let before = (maps(&src), maps(&tgt));
        match run_once(opts, src.clone(), tgt.clone(), progress) {
            Err(e) if redirected(&e) => last = e.to_string(),
            Err(e) => return Err(e),
            Ok(report) => {
                let (mut s2, mut t2) = (src.clone(), tgt.clone());
                for side in [&mut s2, &mut t2] {
                    if let Side::Cluster(t) = side {
                        let _ = t.refresh();
                    }
                }
                if (maps(&s2), maps(&t2)) == before && !moving(&s2) && !moving(&t2) {
                    return Ok(report);
                }
                last = "a cluster's slot map changed during the verify".into();
            }
        }
    }
    Err(VerifyError::Invalid(format!(
        "slots of a cluster kept moving during {ATTEMPTS} attempts ({last}): run the verify again once the reshard is over (redis-cli --cluster check shows it)"
    )))
}

/// One verify between `src` and `tgt`, at least one a cluster.
fn run_once(
    opts: &VerifyOptions,
    src: Side,
    tgt: Side,
    progress: &Arc<Progress>,
) -> Result<Report, VerifyError> {
    let started = Instant::now();
    tracing::info!(source = %src.describe(), target = %tgt.describe(), "verify across topologies");
    let (src_nodes, tgt_nodes) = (nodes(&src), nodes(&tgt));
    let src_space = keyspace(&src_nodes, "source", opts)?;
    let tgt_space = keyspace(&tgt_nodes, "target", opts)?;
    let total: u64 = src_space.values().map(|(n, _)| n).sum();
    let pairs = opts.db_map.pairs(
        &src_space.keys().copied().collect::<Vec<_>>(),
        &tgt_space.keys().copied().collect::<Vec<_>>(),
    )?;
    if tgt.is_cluster() {
        if let Some((Some(s), t)) = pairs.iter().find(|(_, t)| *t != 0) {
            return Err(VerifyError::Invalid(format!(
                "source db {s} holds keys but the target is a cluster, which has only db 0 (it would be compared with db {t}): map it with --db-map {s}=0, or filter it out"
            )));
        }
    }
    let field_ttls = {
        let mut a = Conn::connect(&src_nodes[0].url, "source", opts.timeout)?;
        let mut b = Conn::connect(&tgt_nodes[0].url, "target", opts.timeout)?;
        has_field_ttls(&mut a)? && has_field_ttls(&mut b)?
    };
    let base = PassOpts {
        compare: CompareOpts {
            mode: opts.mode,
            ttl_tolerance_ms: opts.ttl_tolerance.as_millis() as i64,
            chunk: opts.scan_count.max(10),
            field_ttls,
        },
        filter: opts.filter.clone(),
        scan_count: opts.scan_count.max(10),
        slots: None,
        per_key: true,
    };
    let has_ttls =
        |space: &BTreeMap<u32, (u64, bool)>, db: u32| space.get(&db).is_some_and(|e| e.1);
    let (a, mut b) = {
        let (base, pairs) = (&base, &pairs);
        let (src_nodes, tgt_nodes) = (&src_nodes, &tgt_nodes);
        let (src_space, tgt_space) = (&src_space, &tgt_space);
        super::run_passes(
            opts,
            progress,
            total,
            started,
            || {
                let mut out = PassResult::default();
                for sn in src_nodes {
                    for tn in tgt_nodes.iter().filter(|tn| meet(sn, tn)) {
                        let pass = PassOpts {
                            slots: tn.slots.clone(),
                            ..base.clone()
                        };
                        let mut sc = Conn::connect(&sn.url, "source", opts.timeout)?;
                        let mut tc = Conn::connect(&tn.url, "target", opts.timeout)?;
                        let mut scanner = Conn::connect(&sn.url, "source", opts.timeout)?;
                        for (sdb, tdb) in pairs {
                            let Some(sdb) = sdb else { continue };
                            let ttls = (has_ttls(src_space, *sdb), has_ttls(tgt_space, *tdb));
                            scan::source_pass(
                                &mut sc,
                                &mut tc,
                                &mut scanner,
                                *sdb,
                                *tdb,
                                ttls,
                                &pass,
                                progress,
                                &mut out,
                            )?;
                        }
                    }
                }
                Ok(out)
            },
            || {
                let mut out = PassResult::default();
                for tn in tgt_nodes {
                    let mut tc = Conn::connect(&tn.url, "target", opts.timeout)?;
                    for (sdb, tdb) in pairs {
                        let mut one = PassResult::default();
                        scan::target_digest(&mut tc, *sdb, *tdb, base, progress, &mut one)?;
                        for (db, d) in one.key_sets {
                            let e = out.key_sets.entry(db).or_default();
                            e.count += d.count;
                            e.sum = e.sum.wrapping_add(d.sum);
                        }
                    }
                }
                Ok(out)
            },
        )?
    };
    for (sdb, tdb) in &pairs {
        let on_both = a.key_sets.get(tdb).copied().unwrap_or_default();
        let target: KeySetDigest = b.key_sets.get(tdb).copied().unwrap_or_default();
        if target == on_both || progress.stop.load(Ordering::Relaxed) {
            continue;
        }
        tracing::debug!(
            tdb,
            ?on_both,
            ?target,
            "key sets differ: looking for extra keys"
        );
        for tn in &tgt_nodes {
            let mut tc = Conn::connect(&tn.url, "target", opts.timeout)?;
            // No source db maps here: every key is extra, one walk per target node.
            let sources: Vec<&NodeOf> = match sdb {
                None => src_nodes.iter().take(1).collect(),
                Some(_) => src_nodes.iter().filter(|sn| meet(sn, tn)).collect(),
            };
            for sn in sources {
                let pass = PassOpts {
                    slots: if sdb.is_some() {
                        sn.slots.clone()
                    } else {
                        None
                    },
                    ..base.clone()
                };
                let mut sc = Conn::connect(&sn.url, "source", opts.timeout)?;
                scan::target_pass(&mut sc, &mut tc, *sdb, *tdb, &pass, progress, &mut b)?;
            }
        }
    }
    let (mut report, mut candidates) = super::merge_passes(a, b, progress);
    let seen_first = candidates.len() as u64;
    let mut router = Router {
        src,
        tgt,
        conns: HashMap::new(),
        opts,
    };
    for _ in 0..opts.rounds {
        if candidates.is_empty() || progress.stop.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(opts.interval);
        router.refresh();
        candidates = router.recheck(candidates, &base.compare)?;
    }
    report.transient = seen_first - candidates.len() as u64;
    report.diffs = candidates;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Connections by node for the re-check rounds, each key sent to the node serving its slot.
struct Router<'a> {
    src: Side,
    tgt: Side,
    /// (side, address) → connection.
    conns: HashMap<(&'static str, String), Conn>,
    opts: &'a VerifyOptions,
}

impl Router<'_> {
    /// Reads the cluster maps again (a reshard during the passes moved keys); a failed read
    /// keeps the old map.
    fn refresh(&mut self) {
        for side in [&mut self.src, &mut self.tgt] {
            if let Side::Cluster(t) = side {
                if let Err(e) = t.refresh() {
                    tracing::warn!(error = %e, "cannot refresh a cluster map: keeping the last one");
                }
            }
        }
    }

    fn conn(
        &mut self,
        which: &'static str,
        key: &[u8],
    ) -> Result<(&'static str, String), VerifyError> {
        let side = if which == "source" {
            &self.src
        } else {
            &self.tgt
        };
        let url = side.node_for_key(key).ok_or_else(|| {
            VerifyError::Invalid(format!(
                "no {which} node serves the slot of {}",
                super::client::show_bytes(key, 60)
            ))
        })?;
        let id = (which, url.addr());
        if !self.conns.contains_key(&id) {
            let c = Conn::connect(&url, which, self.opts.timeout)?;
            self.conns.insert(id.clone(), c);
        }
        Ok(id)
    }

    fn recheck(
        &mut self,
        candidates: Vec<Candidate>,
        opts: &CompareOpts,
    ) -> Result<Vec<Candidate>, VerifyError> {
        let mut still = Vec::new();
        for mut c in candidates {
            let t = self.conn("target", &c.key)?;
            let outcome = match c.source_db {
                Some(sdb) => {
                    let s = self.conn("source", &c.key)?;
                    // Two distinct entries of the map: take both out, put them back.
                    let mut sc = self.conns.remove(&s).expect("connected");
                    let mut tc = self.conns.remove(&t).expect("connected");
                    let r = (|| {
                        sc.select(sdb)?;
                        tc.select(c.target_db)?;
                        compare::compare_key(&mut sc, &mut tc, &c.key, opts)
                    })();
                    self.conns.insert(s, sc);
                    self.conns.insert(t, tc);
                    r?
                }
                None => {
                    let tc = self.conns.get_mut(&t).expect("connected");
                    tc.select(c.target_db)?;
                    match tc.call(&[b"TYPE", &c.key])? {
                        Reply::Bulk(ty) if ty != b"none" => Outcome::Differs(compare::Diff::new(
                            DiffKind::Extra,
                            &String::from_utf8_lossy(&ty),
                            "not on the source",
                        )),
                        _ => Outcome::Gone,
                    }
                }
            };
            if let Outcome::Differs(d) = outcome {
                c.diff = d;
                still.push(c);
            }
        }
        Ok(still)
    }
}
