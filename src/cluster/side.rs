//! What a side of a migration is: one server, or a cluster reached through seed nodes (later
//! also a Sentinel-managed master). Modules that connect to a side ask it for the node they
//! need instead of building an endpoint from one URL.
//!
//! A [`SideSpec`] is what the user wrote (the URL's nodes, the side's TLS options already
//! applied, the `address_map`); [`SideSpec::resolve`] connects to the first seed that answers
//! and asks `INFO cluster`: a cluster node gives a [`Side::Cluster`] with its slot map, any
//! other server a [`Side::Standalone`]. No flag says which: the server does.
//!
//! Refused, with the reason: several seeds that are not cluster nodes (a list of nodes only
//! makes sense for a cluster), and a database other than 0 on a cluster (a cluster has only
//! database 0; `SELECT 1` fails there).

use std::collections::BTreeMap;
use std::time::Duration;

use super::map::{AddressMap, MapError};
use super::topology::{Topology, TopologyError, is_cluster};
use crate::client::{Endpoint, connect_blocking};
use crate::config::{ConfigError, RedisUrl, TlsOptions};

/// Why a side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    AddressMap(#[from] MapError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(
        "{url} lists several nodes but {node} is not a cluster node (INFO cluster says cluster_enabled:0): give one URL for a standalone server"
    )]
    NotACluster { url: String, node: String },
    #[error(
        "the {which} {url} is a Redis Cluster node (INFO cluster: cluster_enabled:1): {what} reaches one server per side for now (the proxy and the cutover do not route by slot yet), so only this node's slots would be served and copied. Copy a cluster with `cutover sync` (any topology on either side) and compare with `cutover verify`"
    )]
    ClusterNotSupported {
        which: &'static str,
        url: String,
        what: &'static str,
    },
    #[error(
        "{url} names database {db}, but {node} is a cluster node and a cluster has only database 0: remove /{db} from the URL (map databases with [sync] db_map)"
    )]
    ClusterDb { url: String, node: String, db: u32 },
}

impl SideError {
    /// Worth trying again later (nodes unreachable, the cluster mid-failover).
    pub fn retryable(&self) -> bool {
        match self {
            SideError::Topology(e) => e.retryable(),
            _ => false,
        }
    }
}

/// A side as configured: its seed nodes and address map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideSpec {
    /// At least one; each with the side's credentials, database and TLS settings.
    pub seeds: Vec<RedisUrl>,
    pub address_map: AddressMap,
}

impl SideSpec {
    /// From the side's URL (one node or `host:port,host:port`), its TLS options and the config
    /// file's `address_map` table.
    pub fn parse(
        url: &str,
        tls: &TlsOptions,
        address_map: &BTreeMap<String, String>,
    ) -> Result<SideSpec, SideError> {
        Ok(SideSpec {
            seeds: RedisUrl::parse_seeds(url, tls)?,
            address_map: AddressMap::parse(address_map)?,
        })
    }

    /// One server, as today's single-URL sides.
    pub fn single(url: RedisUrl) -> SideSpec {
        SideSpec {
            seeds: vec![url],
            address_map: AddressMap::default(),
        }
    }

    /// The first seed (for messages and for the modules that only know one server yet).
    pub fn first(&self) -> &RedisUrl {
        &self.seeds[0]
    }

    /// The seeds, as written (`redis://a:1,b:2/0`, passwords masked).
    pub fn describe(&self) -> String {
        if self.seeds.len() == 1 {
            return self.seeds[0].to_string();
        }
        let first = self.seeds[0].to_string();
        let rest: Vec<String> = self.seeds[1..].iter().map(RedisUrl::addr).collect();
        match first.rfind('/') {
            Some(i) => format!("{},{}{}", &first[..i], rest.join(","), &first[i..]),
            None => format!("{first},{}", rest.join(",")),
        }
    }

    /// Connects to the first seed that answers and asks whether it is a cluster node; a
    /// cluster's slot map is read at once (from any seed). Each step within `timeout`.
    pub fn resolve(&self, timeout: Duration) -> Result<Side, SideError> {
        let mut last = None;
        for url in &self.seeds {
            let node = url.to_string();
            // A cluster node refuses `SELECT n`: ask at database 0.
            let mut probe = url.clone();
            probe.db = 0;
            let answer = Endpoint::new(&probe)
                .map_err(TopologyError::from)
                .and_then(|e| connect_blocking(&e, timeout).map_err(TopologyError::from))
                .and_then(|mut c| is_cluster(&mut c, &node));
            match answer {
                Ok(true) => {
                    if url.db != 0 {
                        return Err(SideError::ClusterDb {
                            url: self.describe(),
                            node: url.addr(),
                            db: url.db,
                        });
                    }
                    let topo = Topology::discover(&self.seeds, &self.address_map, timeout)?;
                    return Ok(Side::Cluster(topo));
                }
                Ok(false) if self.seeds.len() > 1 => {
                    return Err(SideError::NotACluster {
                        url: self.describe(),
                        node: url.addr(),
                    });
                }
                Ok(false) => return Ok(Side::Standalone(url.clone())),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| TopologyError::NoNode {
                tried: String::new(),
                last: "no node".into(),
            })
            .into())
    }
}

/// Refuses a side that is a cluster node, for the commands that do not handle clusters yet
/// (`what`: the command). A server that cannot be asked now passes (the command's own
/// connection reports it, with its retries).
pub fn refuse_cluster(
    which: &'static str,
    url: &RedisUrl,
    what: &'static str,
    timeout: Duration,
) -> Result<(), SideError> {
    let mut probe = url.clone();
    probe.db = 0;
    let node = url.to_string();
    let cluster = Endpoint::new(&probe)
        .map_err(TopologyError::from)
        .and_then(|e| connect_blocking(&e, timeout).map_err(TopologyError::from))
        .and_then(|mut c| is_cluster(&mut c, &node));
    match cluster {
        Ok(true) => Err(SideError::ClusterNotSupported {
            which,
            url: node,
            what,
        }),
        _ => Ok(()),
    }
}

/// What a side is, once asked.
#[derive(Debug, Clone)]
pub enum Side {
    /// One server.
    Standalone(RedisUrl),
    /// A Redis Cluster: its slot map, refreshed by its owner.
    Cluster(Topology),
}

impl Side {
    /// True for a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Side::Cluster(_))
    }

    /// The servers holding the side's keys: the one server, or every master (a `SCAN` per
    /// master sees every key of a cluster once).
    pub fn masters(&self) -> Vec<RedisUrl> {
        match self {
            Side::Standalone(u) => vec![u.clone()],
            Side::Cluster(t) => t.master_urls(),
        }
    }

    /// The server that holds `key` now: the one server, or the master of its slot (`None`
    /// when no master serves the slot).
    pub fn node_for_key(&self, key: &[u8]) -> Option<RedisUrl> {
        match self {
            Side::Standalone(u) => Some(u.clone()),
            Side::Cluster(t) => {
                let node = t.map().master_of(super::slot::slot(key))?;
                Some(t.node_url(node))
            }
        }
    }

    /// A short description for logs and reports: `standalone h:p` or `cluster of N masters`.
    pub fn describe(&self) -> String {
        match self {
            Side::Standalone(u) => format!("standalone {}", u.addr()),
            Side::Cluster(t) => format!("cluster of {} masters", t.map().shards().len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_seeds_without_the_password() {
        let s = SideSpec::parse(
            "redis://:secret@a:1,b:2,c:3",
            &TlsOptions::default(),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(s.describe(), "redis://***@a:1,b:2,c:3/0");
        let bad = BTreeMap::from([("x".to_string(), "y:1".to_string())]);
        assert!(SideSpec::parse("redis://a:1", &TlsOptions::default(), &bad).is_err());
    }
}
