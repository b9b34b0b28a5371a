//! The slot map: which master serves each of the 16384 slots, and where each node is reached.
//!
//! Built from either reply a node gives about the whole cluster:
//!
//! * `CLUSTER SHARDS` (Redis 7.0+, Valkey): one entry per shard, `slots` (a flat list of
//!   `start end` pairs) and `nodes` (each a flat `key value …` list: `id`, `port`, `tls-port`,
//!   `ip`, `endpoint`, `hostname`, `role`, `health`, …).
//! * `CLUSTER SLOTS` (6.2, and the fallback): one entry per slot *range*:
//!   `[start, end, master, replica…]`, each node `[endpoint, port, id, {metadata}]` (the
//!   metadata map, 7.0+, holds `hostname`/`ip`). A master serving several ranges appears in
//!   several entries; they are grouped by node id (by address when the id is missing).
//!
//! **Which address.** A node announces an `endpoint` (what `cluster-preferred-endpoint-type`
//! says: its IP by default, its hostname, or `?`/empty for "unknown": then it is the host the
//! reply came from, as for `-MOVED 1 :6380`), and also `hostname` and `ip`. The announced
//! address is the endpoint (then the hostname, then the ip), and the port the TLS port on a
//! TLS side when one is announced. The [`AddressMap`] (`[source] address_map`, announced
//! `host:port` → reachable `host:port`, for NAT, containers and clouds that announce private or
//! `127.0.0.1` addresses) is then applied: an entry for any of the node's announced names wins.
//!
//! **Invariants.** Parsing is a pure function of the reply (no I/O) and never panics on any
//! input (property tests); a slot claimed by two shards is an error (a proxy pretending to be
//! a cluster announces every slot on every node); slots no master serves are not an error here
//! but are reported by [`SlotMap::gaps`], so the caller decides (verify refuses an incomplete
//! map, a writer waits for `cluster_state:ok`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::slot::{SLOTS, Slot};
use super::value::Value;

/// A `host:port` a node announces or is reached at. The host may be empty in a redirect
/// ("the host you asked").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl NodeAddr {
    /// `host:port`, `[v6]:port` or `v6:port` (the port after the last colon).
    pub fn parse(s: &str) -> Option<NodeAddr> {
        let (host, port) = s.rsplit_once(':')?;
        let port = port.parse().ok()?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Some(NodeAddr {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Announced `host:port` → reachable `host:port` (`[source] address_map`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressMap(HashMap<NodeAddr, NodeAddr>);

impl AddressMap {
    /// From the config file's table; each side must be `host:port`.
    pub fn parse(entries: &BTreeMap<String, String>) -> Result<AddressMap, MapError> {
        let mut map = HashMap::new();
        for (from, to) in entries {
            let bad = |s: &str| MapError::AddressMap(format!("{s:?} is not host:port"));
            let f = NodeAddr::parse(from).ok_or_else(|| bad(from))?;
            let t = NodeAddr::parse(to).ok_or_else(|| bad(to))?;
            if t.host.is_empty() {
                return Err(bad(to));
            }
            map.insert(f, t);
        }
        Ok(AddressMap(map))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Where `announced` is reached: its entry, or itself.
    pub fn apply(&self, announced: &NodeAddr) -> NodeAddr {
        self.0.get(announced).unwrap_or(announced).clone()
    }

    fn get(&self, announced: &NodeAddr) -> Option<&NodeAddr> {
        self.0.get(announced)
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node id (40 hex characters; empty when the reply had none).
    pub id: String,
    /// What the node announces.
    pub announced: NodeAddr,
    /// Where it is reached (the announced address through the [`AddressMap`]).
    pub addr: NodeAddr,
    /// False when the reply says the node is failed or loading (`health`, 7.0+).
    pub healthy: bool,
}

/// A master, its replicas and the slots it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub master: Node,
    pub replicas: Vec<Node>,
    /// Inclusive slot ranges, sorted.
    pub ranges: Vec<(Slot, Slot)>,
}

impl Shard {
    /// The number of slots the shard serves.
    pub fn slot_count(&self) -> usize {
        self.ranges
            .iter()
            .map(|(a, b)| *b as usize - *a as usize + 1)
            .sum()
    }
}

/// How to read the addresses of a reply.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The host the reply came from (for nodes that announce no endpoint).
    pub seed_host: &'a str,
    /// A TLS side: the announced `tls-port` is used when there is one.
    pub tls: bool,
    pub address_map: &'a AddressMap,
}

/// Why a reply is not a slot map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("unexpected cluster topology reply: {0}")]
    Malformed(String),
    #[error(
        "slot {slot} is claimed by two masters ({a} and {b}): this is not a Redis Cluster's topology (a proxy announcing every slot?); connect to the nodes themselves"
    )]
    Overlap { slot: Slot, a: String, b: String },
    #[error("invalid address_map: {0} (write \"announced-host:port\" = \"reachable-host:port\")")]
    AddressMap(String),
}

const NONE: u16 = u16::MAX;

/// The slot map: shards, and for each slot the index of the shard serving it.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotMap {
    shards: Vec<Shard>,
    owner: Vec<u16>,
}

impl fmt::Debug for SlotMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotMap")
            .field("shards", &self.shards)
            .field("gaps", &self.gaps())
            .finish()
    }
}

fn malformed(what: impl Into<String>) -> MapError {
    MapError::Malformed(what.into())
}

fn slot_of(v: &Value) -> Result<Slot, MapError> {
    match v.as_int() {
        Some(n) if (0..SLOTS as i64).contains(&n) => Ok(n as Slot),
        _ => Err(malformed("a slot number outside 0..16383")),
    }
}

fn port_of(v: Option<&Value>) -> Option<u16> {
    v.and_then(Value::as_int)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// Picks the announced and reachable address among `candidates` (preferred first; empty or
/// `?` hosts skipped; the seed host when none is left).
fn resolve(candidates: &[Option<&str>], port: u16, ctx: &Context) -> (NodeAddr, NodeAddr) {
    let hosts: Vec<&str> = candidates
        .iter()
        .flatten()
        .copied()
        .filter(|h| !h.is_empty() && *h != "?")
        .collect();
    for h in &hosts {
        let a = NodeAddr {
            host: h.to_string(),
            port,
        };
        if let Some(to) = ctx.address_map.get(&a) {
            return (a, to.clone());
        }
    }
    let announced = NodeAddr {
        host: hosts.first().copied().unwrap_or(ctx.seed_host).to_string(),
        port,
    };
    let addr = ctx.address_map.apply(&announced);
    (announced, addr)
}

impl SlotMap {
    /// The map of `shards`; a slot claimed twice is an error. Shards are put in the order of
    /// their first slot (masters without slots last, by address), so two nodes' replies,
    /// which list shards in their own orders, give equal maps.
    pub fn new(mut shards: Vec<Shard>) -> Result<SlotMap, MapError> {
        let mut owner = vec![NONE; SLOTS];
        for s in &mut shards {
            s.ranges.sort_unstable();
        }
        shards.sort_by(|a, b| {
            let first = |s: &Shard| s.ranges.first().map_or(u32::MAX, |r| u32::from(r.0));
            (first(a), &a.master.addr).cmp(&(first(b), &b.master.addr))
        });
        for (i, s) in shards.iter().enumerate() {
            for &(a, b) in &s.ranges {
                if a > b || b as usize >= SLOTS {
                    return Err(malformed(format!("slot range {a}-{b}")));
                }
                for slot in a..=b {
                    let o = &mut owner[slot as usize];
                    if *o != NONE && *o as usize != i {
                        return Err(MapError::Overlap {
                            slot,
                            a: shards[*o as usize].master.addr.to_string(),
                            b: s.master.addr.to_string(),
                        });
                    }
                    *o = i as u16;
                }
            }
        }
        Ok(SlotMap { shards, owner })
    }

    /// From a `CLUSTER SHARDS` reply (7.0+).
    pub fn from_shards(reply: &Value, ctx: &Context) -> Result<SlotMap, MapError> {
        let entries = reply
            .as_array()
            .ok_or_else(|| malformed("CLUSTER SHARDS did not answer an array"))?;
        if entries.len() > SLOTS * 4 {
            return Err(malformed("more shards than a cluster can have"));
        }
        let mut shards = Vec::new();
        for e in entries {
            let slots = e
                .field("slots")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed("a shard without `slots`"))?;
            if slots.len() % 2 != 0 {
                return Err(malformed("`slots` is not a list of start/end pairs"));
            }
            let mut ranges = Vec::with_capacity(slots.len() / 2);
            for pair in slots.chunks(2) {
                ranges.push((slot_of(&pair[0])?, slot_of(&pair[1])?));
            }
            let nodes = e
                .field("nodes")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed("a shard without `nodes`"))?;
            let mut master: Option<Node> = None;
            let mut replicas = Vec::new();
            for n in nodes {
                let s = |k: &str| n.field(k).and_then(Value::as_str);
                let plain = port_of(n.field("port"));
                let tls = port_of(n.field("tls-port"));
                let port = if ctx.tls {
                    tls.or(plain)
                } else {
                    plain.or(tls)
                };
                let Some(port) = port else {
                    return Err(malformed("a node without a port"));
                };
                let (announced, addr) =
                    resolve(&[s("endpoint"), s("hostname"), s("ip")], port, ctx);
                let node = Node {
                    id: s("id").unwrap_or_default().to_string(),
                    announced,
                    addr,
                    healthy: s("health").is_none_or(|h| h == "online"),
                };
                let is_master = s("role") == Some("master");
                // Two masters in a shard (a failed one not yet demoted): the healthy one serves.
                match (&master, is_master) {
                    (None, true) => master = Some(node),
                    (Some(m), true) if !m.healthy && node.healthy => {
                        replicas.push(master.replace(node).expect("checked"))
                    }
                    _ => replicas.push(node),
                }
            }
            match master {
                Some(master) => shards.push(Shard {
                    master,
                    replicas,
                    ranges,
                }),
                // A shard whose master is gone: its slots are a gap until a failover.
                None => continue,
            }
        }
        SlotMap::new(shards)
    }

    /// From a `CLUSTER SLOTS` reply (6.2; the fallback where `CLUSTER SHARDS` is unknown).
    pub fn from_slots(reply: &Value, ctx: &Context) -> Result<SlotMap, MapError> {
        let entries = reply
            .as_array()
            .ok_or_else(|| malformed("CLUSTER SLOTS did not answer an array"))?;
        let node_of = |v: &Value| -> Result<Node, MapError> {
            let a = v
                .as_array()
                .ok_or_else(|| malformed("a node that is not an array"))?;
            let port = port_of(a.get(1)).ok_or_else(|| malformed("a node without a port"))?;
            let meta = a.get(3);
            let m = |k: &str| meta.and_then(|m| m.field(k)).and_then(Value::as_str);
            let endpoint = a.first().and_then(Value::as_str);
            let (announced, addr) = resolve(&[endpoint, m("hostname"), m("ip")], port, ctx);
            Ok(Node {
                id: a
                    .get(2)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                announced,
                addr,
                healthy: true,
            })
        };
        let mut shards: Vec<Shard> = Vec::new();
        for e in entries {
            let a = e.as_array().filter(|a| a.len() >= 3).ok_or_else(|| {
                malformed("a CLUSTER SLOTS entry shorter than [start, end, master]")
            })?;
            let range = (slot_of(&a[0])?, slot_of(&a[1])?);
            let master = node_of(&a[2])?;
            let same = |s: &Shard| {
                if master.id.is_empty() {
                    s.master.announced == master.announced
                } else {
                    s.master.id == master.id
                }
            };
            if let Some(s) = shards.iter_mut().find(|s| same(s)) {
                s.ranges.push(range);
                continue;
            }
            let replicas = a[3..].iter().map(node_of).collect::<Result<_, _>>()?;
            shards.push(Shard {
                master,
                replicas,
                ranges: vec![range],
            });
        }
        SlotMap::new(shards)
    }

    /// Every shard (masters without slots included).
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The index in [`SlotMap::shards`] of the shard serving `slot`.
    pub fn shard_of(&self, slot: Slot) -> Option<usize> {
        let o = *self.owner.get(slot as usize)?;
        (o != NONE).then_some(o as usize)
    }

    /// The master serving `slot`.
    pub fn master_of(&self, slot: Slot) -> Option<&Node> {
        self.shard_of(slot).map(|i| &self.shards[i].master)
    }

    /// The slot ranges no master serves (empty when the map is complete).
    pub fn gaps(&self) -> Vec<(Slot, Slot)> {
        let mut gaps = Vec::new();
        let mut start: Option<usize> = None;
        for (slot, o) in self.owner.iter().enumerate() {
            match (*o == NONE, start) {
                (true, None) => start = Some(slot),
                (false, Some(s)) => {
                    gaps.push((s as Slot, slot as Slot - 1));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            gaps.push((s as Slot, SLOTS as Slot - 1));
        }
        gaps
    }

    /// True when every slot is served.
    pub fn is_complete(&self) -> bool {
        self.owner.iter().all(|o| *o != NONE)
    }
}

#[cfg(test)]
mod tests;
