//! The names of a cluster source's links, found by replication id (see ARCHITECTURE.md,
//! *Clusters*).
//!
//! A link's position on the target is named by its link (`cutover:position:<link>` on one
//! server, `cutover:position:{<tag>}:<link>` per slot on a cluster), and `<link>` is the node
//! id of the shard's master when the link was first started. A failover while `cutover` is
//! stopped gives the shard a master with another node id, but the same replication history:
//! a promoted replica takes a new `master_replid` and keeps the old one as `master_replid2`,
//! accepting `PSYNC <old replid> <offset>` up to `second_repl_offset`. So at start
//! ([`assign`]) every stored link position is read ([`read_stored`]) and each current master
//! takes the name of the stored link whose replication id is its `master_replid` (the same
//! history, no failover) or its `master_replid2` (a failover since): the link then reads
//! that position and continues with `PSYNC`. A master that matches no stored link is named
//! by its node id (as on a first sync: a stored position under that name with another
//! replication id gives a full sync of the shard, as before).
//!
//! **Orphans.** A stored position that no current master continues (its shard's history is
//! gone: a master restarted without persistence, a shard removed, a full resync of the
//! source) is reported and left on the target as it is: its slots are copied again in full
//! by the links of the masters that serve them now, each clearing its own slots first (a
//! link without a position of its own on a target holding any link position: the target
//! holds an earlier sync's keys, some maybe deleted on the source since). It is
//! not deleted: a sync started by mistake against another source must not destroy the
//! positions of the right one.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::client::{Endpoint, connect_blocking};
use crate::cluster::Topology;
use crate::cluster::value::{Value, decode};
use crate::config::RedisUrl;
use crate::sync::batch::{POSITION_PREFIX, Stored};
use crate::sync::engine::SyncOptions;

/// A link position found on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLink {
    pub name: String,
    /// `None`: a position without a replication id (`snapshot-loading`, unreadable).
    pub replid: Option<String>,
    pub offset: Option<u64>,
}

/// What a source master says of its replication history (`INFO replication`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    pub replid: String,
    /// The previous master's replication id after a promotion (all zeros when none).
    pub replid2: String,
}

impl History {
    /// Reads `master_replid` and `master_replid2` from `INFO replication` text.
    pub fn parse(info: &str) -> Option<History> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        Some(History {
            replid: field("master_replid")?,
            replid2: field("master_replid2").unwrap_or_default(),
        })
    }
}

/// How one master's link got its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// No stored link matches: the master's own name (a new link, or its stored position
    /// under that name decides).
    Own,
    /// The stored link of the same replication id.
    SameHistory,
    /// The stored link of the master's `replid2`: a failover since that sync.
    Failover,
}

/// The links' names, one per master (in the order given), and the stored links no master
/// continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    pub names: Vec<(String, How)>,
    pub orphans: Vec<StoredLink>,
}

/// Names each master's link (pure). `masters`: per master, its own name (node id) and its
/// history (`None`: it could not be asked). A stored link is continued by at most one
/// master; two masters never share a name.
pub fn assign(masters: &[(String, Option<History>)], stored: &[StoredLink]) -> Naming {
    let mut taken = vec![false; stored.len()];
    let mut names: Vec<Option<(String, How)>> = vec![None; masters.len()];
    let zero = |id: &str| id.bytes().all(|b| b == b'0');
    // The same history first, then a failover's (a master's own history wins over a
    // promoted replica's memory of it).
    for pass in [How::SameHistory, How::Failover] {
        for (i, (_, history)) in masters.iter().enumerate() {
            let Some(h) = history else { continue };
            if names[i].is_some() {
                continue;
            }
            let id = match pass {
                How::SameHistory => &h.replid,
                _ => &h.replid2,
            };
            if id.is_empty() || zero(id) {
                continue;
            }
            if let Some(j) = (0..stored.len())
                .find(|&j| !taken[j] && stored[j].replid.as_deref() == Some(id.as_str()))
            {
                taken[j] = true;
                names[i] = Some((stored[j].name.clone(), pass.clone()));
            }
        }
    }
    let mut used: Vec<String> = names.iter().flatten().map(|(n, _)| n.clone()).collect();
    let names: Vec<(String, How)> = names
        .into_iter()
        .zip(masters)
        .map(|(named, (own, _))| {
            named.unwrap_or_else(|| {
                // Its own name, unless a matched master continues a link of that name.
                let mut name = own.clone();
                let mut n = 1;
                while used.contains(&name) {
                    n += 1;
                    name = format!("{own}-{n}");
                }
                used.push(name.clone());
                (name, How::Own)
            })
        })
        .collect();
    let orphans = stored
        .iter()
        .filter(|s| !names.iter().any(|(n, _)| *n == s.name))
        .cloned()
        .collect();
    Naming { names, orphans }
}

/// The master's replication history (`INFO replication`).
pub fn history(url: &RedisUrl, timeout: Duration) -> anyhow::Result<History> {
    let endpoint = Endpoint::new(url)?;
    let mut c = connect_blocking(&endpoint, timeout)?;
    let info = c.info("replication")?;
    History::parse(info.text())
        .with_context(|| format!("INFO replication of {} has no master_replid", url.addr()))
}

/// Every link position stored on the target. On one server: the keys
/// `cutover:position:<link>` of database 0 (`SCAN MATCH`, once, at start). On a cluster: the
/// keys of slot 0 (every link stores a position in every slot), read with `CLUSTER
/// GETKEYSINSLOT` on slot 0's master, without scanning the keyspace.
pub fn read_stored(opts: &SyncOptions) -> anyhow::Result<Vec<StoredLink>> {
    let topo =
        crate::sync::engine::target_cluster(opts.target_side.as_ref(), &opts.target, opts.timeout)?;
    match topo {
        Some(topo) => read_cluster(&topo, opts.timeout),
        None => {
            let mut url = opts.target.clone();
            url.db = 0;
            read_standalone(&url, opts.timeout)
        }
    }
}

fn connect(url: &RedisUrl, timeout: Duration) -> anyhow::Result<crate::client::BlockingClient> {
    let endpoint = Endpoint::new(url)?;
    Ok(connect_blocking(&endpoint, timeout)?)
}

fn read_standalone(url: &RedisUrl, timeout: Duration) -> anyhow::Result<Vec<StoredLink>> {
    let mut c = connect(url, timeout)?;
    if url.db != 0 {
        c.call(&[b"SELECT", b"0"])?;
    }
    let mut pattern = POSITION_PREFIX.to_vec();
    pattern.push(b'*');
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut cursor = b"0".to_vec();
    loop {
        let raw = c.call(&[b"SCAN", &cursor, b"MATCH", &pattern, b"COUNT", b"1000"])?;
        let (v, _) = decode(&raw).with_context(|| format!("SCAN on {}", url.addr()))?;
        let Some([next, Value::Array(found)]) = v.as_array() else {
            bail!("unexpected SCAN reply from {}: {v:?}", url.addr());
        };
        keys.extend(
            found
                .iter()
                .filter_map(|k| k.as_bytes().map(<[u8]>::to_vec)),
        );
        cursor = next.as_bytes().unwrap_or(b"0").to_vec();
        if cursor == b"0" {
            break;
        }
    }
    read_values(&mut c, keys, url)
}

fn read_cluster(topo: &Topology, timeout: Duration) -> anyhow::Result<Vec<StoredLink>> {
    let Some(node) = topo.map().master_of(0) else {
        return Ok(Vec::new());
    };
    let url = topo.node_url(node);
    let mut c = connect(&url, timeout)?;
    let raw = c.call(&[b"CLUSTER", b"COUNTKEYSINSLOT", b"0"])?;
    let (v, _) = decode(&raw).with_context(|| format!("COUNTKEYSINSLOT on {}", url.addr()))?;
    let count = v.as_int().unwrap_or(0).max(0).to_string();
    let raw = c.call(&[b"CLUSTER", b"GETKEYSINSLOT", b"0", count.as_bytes()])?;
    let (v, _) = decode(&raw).with_context(|| format!("GETKEYSINSLOT on {}", url.addr()))?;
    let keys: Vec<Vec<u8>> = v
        .as_array()
        .unwrap_or_default()
        .iter()
        .filter_map(|k| k.as_bytes())
        .filter(|k| k.starts_with(POSITION_PREFIX))
        .map(<[u8]>::to_vec)
        .collect();
    read_values(&mut c, keys, &url)
}

/// The link name in a position key: `<link>` of `cutover:position:<link>` or of
/// `cutover:position:{<tag>}:<link>`.
pub fn link_of(key: &[u8]) -> Option<String> {
    let rest = std::str::from_utf8(key.strip_prefix(POSITION_PREFIX)?).ok()?;
    let name = match rest.strip_prefix('{') {
        Some(tagged) => tagged.split_once("}:")?.1,
        None => rest,
    };
    (!name.is_empty() && !name.contains(['{', '}'])).then(|| name.to_string())
}

fn read_values(
    c: &mut crate::client::BlockingClient,
    keys: Vec<Vec<u8>>,
    url: &RedisUrl,
) -> anyhow::Result<Vec<StoredLink>> {
    let mut out: Vec<StoredLink> = Vec::new();
    for key in keys {
        let Some(name) = link_of(&key) else { continue };
        if out.iter().any(|s| s.name == name) {
            continue;
        }
        let raw = c.call(&[b"GET", &key])?;
        let (v, _) = decode(&raw).with_context(|| format!("GET on {}", url.addr()))?;
        let (replid, offset) = match v.as_str().map(Stored::parse) {
            Some(Stored::At { replid, offset, .. }) => (Some(replid), Some(offset)),
            _ => (None, None),
        };
        out.push(StoredLink {
            name,
            replid,
            offset,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Names the links of `topo`'s masters with slots, in [`Topology`]'s shard order (`own`:
/// each master's name without a stored match), and reports on stderr (with `progress`) and
/// in the log what was matched and what is orphaned.
///
/// Also says whether the target holds any link position (the data of an earlier sync): a
/// link named [`How::Own`] then clears its slots before its snapshot, like a full resync
/// (an orphan's keys deleted on the source since would stay otherwise).
pub fn name_links(
    opts: &SyncOptions,
    topo: &Topology,
    own: &[String],
) -> anyhow::Result<(Vec<(String, How)>, bool)> {
    let stored = read_stored(opts).context("cannot read the links' positions on the target")?;
    let masters: Vec<(String, Option<History>)> = topo
        .map()
        .shards()
        .iter()
        .filter(|s| !s.ranges.is_empty())
        .zip(own)
        .map(|(s, own)| {
            let h = match history(&topo.node_url(&s.master), opts.timeout) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(master = %s.master.addr, error = %e, "cannot read the master's replication ids (its link is named by its node id)");
                    None
                }
            };
            (own.clone(), h)
        })
        .collect();
    let naming = assign(&masters, &stored);
    for ((name, how), (own, _)) in naming.names.iter().zip(&masters) {
        if *how == How::Failover {
            let line = format!(
                "cutover sync: the source master {own} continues the position of link {name} through its master_replid2 (a failover since that position was stored)"
            );
            tracing::info!(link = %name, master = %own, "a link's position found by the new master's replid2");
            if opts.progress {
                crate::sync::engine::say(&line);
            }
        }
    }
    for o in &naming.orphans {
        let line = format!(
            "cutover sync: WARNING: the stored position of link {} ({} {}) matches no source master now (its history is gone): its slots are copied again in full by the links serving them; its keys cutover:position:*{} stay on the target",
            o.name,
            o.replid.as_deref().unwrap_or("no replication id"),
            o.offset.map(|x| x.to_string()).unwrap_or_default(),
            o.name
        );
        tracing::warn!(link = %o.name, "an orphaned link position");
        if opts.progress {
            crate::sync::engine::say(&line);
        }
    }
    Ok((naming.names, !stored.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(replid: &str, replid2: &str) -> Option<History> {
        Some(History {
            replid: replid.repeat(40),
            replid2: replid2.repeat(40),
        })
    }
    fn s(name: &str, replid: &str) -> StoredLink {
        StoredLink {
            name: name.to_string(),
            replid: Some(replid.repeat(40)),
            offset: Some(10),
        }
    }

    #[test]
    fn same_history_and_failover_are_continued_the_rest_is_orphaned() {
        let masters = vec![
            ("A".to_string(), h("a", "0")),
            ("C".to_string(), h("c", "b")), // promoted: B's history as replid2
            ("D".to_string(), h("d", "0")),
        ];
        let stored = vec![s("A", "a"), s("B", "b"), s("X", "x")];
        let n = assign(&masters, &stored);
        assert_eq!(
            n.names,
            vec![
                ("A".to_string(), How::SameHistory),
                ("B".to_string(), How::Failover),
                ("D".to_string(), How::Own),
            ]
        );
        assert_eq!(n.orphans, vec![s("X", "x")]);
    }

    #[test]
    fn a_name_is_never_shared() {
        // B's history continues under link "A" (A was its master's name); the master named
        // A now has another history: it gets another name.
        let masters = vec![
            ("B".to_string(), h("b", "a")),
            ("A".to_string(), h("z", "0")),
        ];
        let n = assign(&masters, &[s("A", "a")]);
        assert_eq!(n.names[0], ("A".to_string(), How::Failover));
        assert_eq!(n.names[1], ("A-2".to_string(), How::Own));
        assert!(n.orphans.is_empty());
        // One stored link is continued once, by the master of the same history first.
        let masters = vec![
            ("B".to_string(), h("b", "a")),
            ("A".to_string(), h("a", "0")),
        ];
        let n = assign(&masters, &[s("A", "a")]);
        assert_eq!(n.names[1], ("A".to_string(), How::SameHistory));
        assert_eq!(n.names[0], ("B".to_string(), How::Own));
    }

    #[test]
    fn unknown_histories_and_unusable_positions_keep_own_names() {
        let masters = vec![("A".to_string(), None), ("B".to_string(), h("0", "0"))];
        let stored = vec![StoredLink {
            name: "A".to_string(),
            replid: None,
            offset: None,
        }];
        let n = assign(&masters, &stored);
        assert_eq!(n.names[0], ("A".to_string(), How::Own));
        assert_eq!(n.names[1], ("B".to_string(), How::Own));
        assert!(n.orphans.is_empty());
    }

    #[test]
    fn link_names_in_keys() {
        assert_eq!(link_of(b"cutover:position:abc").as_deref(), Some("abc"));
        assert_eq!(
            link_of(b"cutover:position:{x1}:abc").as_deref(),
            Some("abc")
        );
        assert_eq!(link_of(b"cutover:position:"), None);
        assert_eq!(link_of(b"cutover:position:{x1}"), None);
        assert_eq!(link_of(b"cutover:other"), None);
    }

    #[test]
    fn history_from_info() {
        let info = "# Replication\r\nrole:master\r\nmaster_replid:aaa\r\nmaster_replid2:bbb\r\nsecond_repl_offset:5\r\n";
        assert_eq!(
            History::parse(info),
            Some(History {
                replid: "aaa".into(),
                replid2: "bbb".into()
            })
        );
    }
}
