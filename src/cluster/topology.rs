//! Reaching a cluster: is a server part of one, and what is its slot map now.
//!
//! * **Detection**: `INFO cluster` answers `cluster_enabled:1` on a cluster node (and
//!   `cluster_enabled:0`, or nothing, on a standalone server). No flag is needed.
//! * **The map**: `CLUSTER SHARDS` (7.0+), falling back to `CLUSTER SLOTS` where the server
//!   does not know it (6.2 answers "unknown subcommand"); parsed by [`super::map`].
//! * **Seeds**: the URL's nodes are tried in turn, then every node of the last map (a seed
//!   may have been removed since); the first node that answers with a map gives it.
//! * **Refresh**: the owner of a [`Topology`] calls [`Topology::refresh`] on a `MOVED` or
//!   `CLUSTERDOWN` ([`super::Redirect::refresh_map`]), after losing a connection to a node,
//!   and [`Topology::refresh_if_older`] periodically. A refresh that fails keeps the old map
//!   (and says why): nothing acts on a half-read topology.
//!
//! Every node is reached with the side's credentials and TLS settings (the seed URL's, with
//! the node's host and port): one template URL, [`Topology::node_url`]. A cluster has only
//! database 0, so a cluster side's URL must not name another (refused when it is read).
//! Blocking (threads), like verify and the replica link.

use std::time::{Duration, Instant};

use super::map::{AddressMap, Context, MapError, Node, NodeAddr, SlotMap};
use super::value::{Value, decode};
use crate::client::{BlockingClient, ClientError, Endpoint, Info, connect_blocking};
use crate::config::RedisUrl;

/// Why the topology could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{node}: {source}")]
    Map { node: String, source: MapError },
    #[error("{node} sent a reply that is not RESP: {detail}")]
    Reply { node: String, detail: String },
    #[error(
        "no node of the cluster answered with its slot map (tried {tried}); last error: {last}"
    )]
    NoNode { tried: String, last: String },
    #[error(
        "{node} is a cluster node but its slot map leaves slots {gaps} unserved: wait for cluster_state:ok (redis-cli --cluster check)"
    )]
    Incomplete { node: String, gaps: String },
}

impl TopologyError {
    /// Worth trying again: a node unreachable or the cluster mid-failover.
    pub fn retryable(&self) -> bool {
        match self {
            TopologyError::Client(e) => e.retryable(),
            TopologyError::NoNode { .. } | TopologyError::Incomplete { .. } => true,
            TopologyError::Map { .. } | TopologyError::Reply { .. } => false,
        }
    }
}

/// Sends `args` and decodes the reply (an error reply is `Value::Error`).
pub fn call_value(
    client: &mut BlockingClient,
    args: &[&[u8]],
    node: &str,
) -> Result<Value, TopologyError> {
    let mut wire = Vec::new();
    crate::resp::request::encode_command(args, &mut wire);
    client.write(&wire)?;
    let raw = client.read_reply()?;
    decode(&raw)
        .map(|(v, _)| v)
        .map_err(|e| TopologyError::Reply {
            node: node.to_string(),
            detail: e.to_string(),
        })
}

/// True when the server says `cluster_enabled:1` in `INFO cluster`.
pub fn is_cluster(client: &mut BlockingClient, node: &str) -> Result<bool, TopologyError> {
    let v = call_value(client, &[b"INFO", b"cluster"], node)?;
    Ok(match v {
        Value::Str(text) => Info::from_bytes(&text).cluster_enabled(),
        // A server without cluster support (or a proxy refusing INFO sections).
        _ => false,
    })
}

/// True when a `CLUSTER NODES` text shows a slot being migrated (`[slot->-node]` on the
/// exporting node, `[slot-<-node]` on the importing one). `CLUSTER SHARDS` does not say it.
pub fn nodes_show_migration(text: &[u8]) -> bool {
    String::from_utf8_lossy(text).lines().any(|l| {
        l.split(' ')
            .skip(8)
            .any(|f| f.starts_with('[') && (f.contains("->-") || f.contains("-<-")))
    })
}

/// Reads the slot map from one connected node: `CLUSTER SHARDS`, or `CLUSTER SLOTS` where it is
/// unknown. `seed_host` is the host the client reached (for nodes announcing no endpoint).
pub fn fetch_map(
    client: &mut BlockingClient,
    node: &str,
    seed_host: &str,
    tls: bool,
    address_map: &AddressMap,
) -> Result<SlotMap, TopologyError> {
    let ctx = Context {
        seed_host,
        tls,
        address_map,
    };
    let map_err = |source| TopologyError::Map {
        node: node.to_string(),
        source,
    };
    match call_value(client, &[b"CLUSTER", b"SHARDS"], node)? {
        Value::Error(e) if e.to_ascii_lowercase().contains("unknown") => {
            match call_value(client, &[b"CLUSTER", b"SLOTS"], node)? {
                Value::Error(e) => Err(ClientError::Refused {
                    endpoint: node.to_string(),
                    command: "CLUSTER SLOTS".into(),
                    reply: e,
                }
                .into()),
                v => SlotMap::from_slots(&v, &ctx).map_err(map_err),
            }
        }
        Value::Error(e) => Err(ClientError::Refused {
            endpoint: node.to_string(),
            command: "CLUSTER SHARDS".into(),
            reply: e,
        }
        .into()),
        v => SlotMap::from_shards(&v, &ctx).map_err(map_err),
    }
}

/// A cluster side: its seeds, address map, and the last slot map read.
#[derive(Debug, Clone)]
pub struct Topology {
    seeds: Vec<RedisUrl>,
    address_map: AddressMap,
    map: SlotMap,
    /// The node that gave `map`.
    from: String,
    fetched: Instant,
    timeout: Duration,
}

impl Topology {
    /// Reads the map from the first seed that answers (each within `timeout`). Refuses a map
    /// that leaves slots unserved.
    pub fn discover(
        seeds: &[RedisUrl],
        address_map: &AddressMap,
        timeout: Duration,
    ) -> Result<Topology, TopologyError> {
        let (map, from) = Self::read(seeds, address_map, timeout)?;
        Ok(Topology {
            seeds: seeds.to_vec(),
            address_map: address_map.clone(),
            map,
            from,
            fetched: Instant::now(),
            timeout,
        })
    }

    fn read(
        urls: &[RedisUrl],
        address_map: &AddressMap,
        timeout: Duration,
    ) -> Result<(SlotMap, String), TopologyError> {
        let mut last: Option<TopologyError> = None;
        for url in urls {
            let node = url.to_string();
            let attempt = || -> Result<SlotMap, TopologyError> {
                let endpoint = Endpoint::new(url)?;
                let mut client = connect_blocking(&endpoint, timeout)?;
                fetch_map(
                    &mut client,
                    &node,
                    &url.host,
                    url.tls.is_some(),
                    address_map,
                )
            };
            match attempt() {
                Ok(map) if map.is_complete() => return Ok((map, node)),
                Ok(map) => {
                    let gaps = map
                        .gaps()
                        .iter()
                        .map(|(a, b)| format!("{a}-{b}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    last = Some(TopologyError::Incomplete { node, gaps });
                }
                Err(e) => {
                    tracing::debug!(node = %node, error = %e, "cluster node gave no slot map");
                    last = Some(e)
                }
            }
        }
        let tried = urls.iter().map(|u| u.addr()).collect::<Vec<_>>().join(", ");
        Err(match last {
            Some(e @ TopologyError::Incomplete { .. }) => e,
            Some(TopologyError::Map { node, source }) => TopologyError::Map { node, source },
            Some(e) => TopologyError::NoNode {
                tried,
                last: e.to_string(),
            },
            None => TopologyError::NoNode {
                tried: "no node".into(),
                last: "the side lists no node".into(),
            },
        })
    }

    /// Reads the map again, from the nodes of the current map first (the masters, then the
    /// replicas), then the seeds. On failure the old map stays.
    pub fn refresh(&mut self) -> Result<(), TopologyError> {
        let mut urls: Vec<RedisUrl> = Vec::new();
        for s in self.map.shards() {
            urls.push(self.node_url(&s.master));
        }
        for s in self.map.shards() {
            urls.extend(s.replicas.iter().map(|r| self.node_url(r)));
        }
        for s in &self.seeds {
            if !urls.iter().any(|u| u.addr() == s.addr()) {
                urls.push(s.clone());
            }
        }
        let (map, from) = Self::read(&urls, &self.address_map, self.timeout)?;
        if map != self.map {
            tracing::info!(from = %from, shards = map.shards().len(), "cluster topology changed");
        }
        self.map = map;
        self.from = from;
        self.fetched = Instant::now();
        Ok(())
    }

    /// Refreshes when the map is older than `max_age` (the periodic refresh).
    pub fn refresh_if_older(&mut self, max_age: Duration) -> Result<bool, TopologyError> {
        if self.fetched.elapsed() < max_age {
            return Ok(false);
        }
        self.refresh().map(|_| true)
    }

    /// True when a master says a slot is being migrated (`CLUSTER NODES` of every master);
    /// an unreachable master counts as "yes" (the caller cannot rely on a stable map).
    pub fn migrating(&self) -> bool {
        self.map.shards().iter().any(|s| {
            let url = self.node_url(&s.master);
            let node = url.to_string();
            let ask = || -> Result<bool, TopologyError> {
                let mut c = connect_blocking(&Endpoint::new(&url)?, self.timeout)?;
                match call_value(&mut c, &[b"CLUSTER", b"NODES"], &node)? {
                    Value::Str(text) => Ok(nodes_show_migration(&text)),
                    _ => Ok(true),
                }
            };
            ask().unwrap_or(true)
        })
    }

    /// The address map the topology applies.
    pub fn address_map(&self) -> &AddressMap {
        &self.address_map
    }

    /// The current map.
    pub fn map(&self) -> &SlotMap {
        &self.map
    }

    /// The node the current map was read from.
    pub fn read_from(&self) -> &str {
        &self.from
    }

    /// The URL of `node`: the first seed's credentials and TLS settings at the node's
    /// reachable address (database 0).
    pub fn node_url(&self, node: &Node) -> RedisUrl {
        self.url_at(&node.addr)
    }

    /// The side's URL at `addr` (an empty host: the first seed's host).
    pub fn url_at(&self, addr: &NodeAddr) -> RedisUrl {
        let mut u = self.seeds[0].clone();
        if !addr.host.is_empty() {
            u.host = addr.host.clone();
        }
        u.port = addr.port;
        u.db = 0;
        u
    }

    /// The URLs of every master, in shard order.
    pub fn master_urls(&self) -> Vec<RedisUrl> {
        self.map
            .shards()
            .iter()
            .map(|s| self.node_url(&s.master))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_markers() {
        let stable = b"07c3 127.0.0.1:30004@31004 myself,master - 0 0 4 connected 0-5460\n\
e7d1 127.0.0.1:30005@31005 master - 0 0 5 connected 5461-10922\n";
        assert!(!nodes_show_migration(stable));
        let exporting =
            b"07c3 127.0.0.1:30004@31004 myself,master - 0 0 4 connected 0-5460 [93->-e7d1]\n";
        assert!(nodes_show_migration(exporting));
        let importing =
            b"e7d1 127.0.0.1:30005@31005 myself,master - 0 0 5 connected 5461-10922 [93-<-07c3]\n";
        assert!(nodes_show_migration(importing));
        assert!(!nodes_show_migration(b"garbage [1->-x]"));
    }
}
