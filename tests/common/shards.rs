//! Helpers of the per-shard tests (`tests/sync_cluster_shards.rs`): a cluster configured for
//! partial resyncs, a manual failover of one master's replica, and a wait on a log.

use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::sync_cluster::read_log;

/// Every node: no diskless delay, a backlog of 64 MB (a restart of cutover continues).
pub fn configure_for_psync(c: &Cluster) {
    for n in &c.nodes {
        let mut conn = n.conn();
        for (k, v) in [
            ("repl-diskless-sync-delay", "0"),
            ("repl-backlog-size", "64mb"),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(k)
                .arg(v)
                .query(&mut conn)
                .unwrap();
        }
    }
}

fn info(n: &super::Server) -> String {
    redis::cmd("INFO")
        .arg("replication")
        .query(&mut n.conn())
        .unwrap_or_default()
}

/// `CLUSTER FAILOVER` on the replica of the master on `master` (asked up to 3 times: a
/// manual failover can time out on a loaded machine); returns the promoted node's port once
/// every node agrees on the new map.
pub fn fail_over(c: &Cluster, master: u16) -> u16 {
    let replica = c
        .nodes
        .iter()
        .find(|n| info(n).contains(&format!("master_port:{master}\r")))
        .expect("a replica of that master");
    super::wait_for("the replica's link up", Duration::from_secs(30), || {
        info(replica)
            .contains("master_link_status:up")
            .then_some(())
    });
    let mut promoted = false;
    for _ in 0..3 {
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut replica.conn())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if info(replica).contains("role:master") {
                promoted = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if promoted {
            break;
        }
    }
    assert!(promoted, "CLUSTER FAILOVER did not promote the replica");
    c.wait_ok(Duration::from_secs(30));
    replica.port()
}

/// Waits until `log` holds `needle` `count` times (the child still running).
pub fn wait_log(
    child: &mut std::process::Child,
    log: &std::path::Path,
    needle: &str,
    count: usize,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    while read_log(log).matches(needle).count() < count {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "{count} × {needle:?} not seen; log:\n{}",
            super::tail(&read_log(log), 6000)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `cutover_sync_*` series of a Prometheus page that carry a `shard` label:
/// (metric name, shard) → value.
pub fn shard_series(page: &str) -> std::collections::BTreeMap<(String, String), f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in page.lines() {
        if line.starts_with('#') || !line.starts_with("cutover_sync_") {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let Some(shard) = labels
            .split(',')
            .find_map(|l| l.trim_end_matches('}').strip_prefix("shard="))
        else {
            continue;
        };
        if labels.contains("how=") || labels.contains("type=") {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            out.insert((name.to_string(), shard.trim_matches('"').to_string()), v);
        }
    }
    out
}

/// The replication ids in the per-slot positions of each link on a cluster target.
pub fn link_replids(
    c: &Cluster,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for port in c.master_ports() {
        let mut conn = c.node(port).conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("cutover:position:*")
            .query(&mut conn)
            .unwrap();
        for k in keys {
            let v: String = redis::cmd("GET").arg(&k).query(&mut conn).unwrap();
            let link = k.rsplit(':').next().unwrap().to_string();
            if let Some(id) = v.split(' ').next() {
                out.entry(link).or_default().insert(id.to_string());
            }
        }
    }
    out
}
