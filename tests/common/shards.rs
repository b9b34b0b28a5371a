//! Helpers of the cluster-source tests (`tests/sync_cluster_shards.rs`,
//! `tests/sync_cluster_source.rs`): a cluster configured for partial resyncs and filled with
//! numbered keys, a manual failover of one master's replica, waits on a running `cutover
//! sync` (a log line, a condition, a target equal to its source key by key).

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::sync_cluster::{following_load, link_positions, position_entries, read_log, start_sync};
use super::{Server, differences, snapshot};

/// A keyspace as [`super::snapshot`] reads it.
pub type Data = BTreeMap<String, (String, String, bool)>;

/// `k:<i>` = `v<i>` for `i` in `0..n`, set through the cluster.
pub fn set_numbered(c: &Cluster, n: usize) {
    set_range(c, 0..n, "v");
}

/// `k:<i>` = `<prefix><i>` for `i` in `keys`, set through the cluster.
pub fn set_range(c: &Cluster, keys: std::ops::Range<usize>, prefix: &str) {
    let pairs: Vec<(String, String)> = keys
        .map(|i| (format!("k:{i}"), format!("{prefix}{i}")))
        .collect();
    c.set_many(&pairs);
}

/// A standalone server's keys without cutover's own (`cutover:position:…`).
pub fn server_data(s: &Server) -> Data {
    let mut got = snapshot(&mut s.conn());
    got.retain(|k, _| !k.starts_with("cutover:"));
    got
}

/// Waits until `done()` holds while `child` runs; fails past `limit` (or when the child
/// exits) saying `what`, with the tail of `log`.
pub fn wait_running(
    child: &mut Child,
    log: &Path,
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "{what}; log:\n{}",
            super::tail(&read_log(log), 4000)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A 3-master Redis 7.0 cluster with a replica each (configured for partial resyncs, 3,000
/// numbered keys) under a [`following_load`] (INCRs on `f:*` that follow failovers), and a
/// `cutover sync` from it into a standalone Redis 7.0 (log `<dir>/<log name>`) that has a
/// position for each of the 3 links.
pub struct FollowedSync {
    pub cluster: Cluster,
    pub target: Server,
    pub stop: Arc<AtomicBool>,
    /// `None` once [`FollowedSync::finish`] stopped it.
    pub load: Option<JoinHandle<u64>>,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub sync: Child,
}

impl FollowedSync {
    pub fn start(log_name: &str) -> FollowedSync {
        let cluster = Cluster::start(super::Version::Redis70, 3, 1);
        configure_for_psync(&cluster);
        set_numbered(&cluster, 3000);
        let target = Server::start(super::Version::Redis70);
        let stop = Arc::new(AtomicBool::new(false));
        let load = following_load(&cluster, Arc::clone(&stop));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(log_name);
        let mut sync = start_sync(&cluster.seeds_url(), &target.url(), &log, &[]);
        wait_running(
            &mut sync,
            &log,
            Duration::from_secs(60),
            "not every link has a position",
            || link_positions(&target).len() >= 3,
        );
        FollowedSync {
            cluster,
            target,
            stop,
            load: Some(load),
            dir,
            log,
            sync,
        }
    }

    /// SIGKILLs the running `cutover sync`.
    pub fn kill(&mut self) {
        self.sync.kill().unwrap();
        self.sync.wait().unwrap();
    }

    /// Stops the load, waits (up to `limit`, the sync running) until the target equals the
    /// cluster key by key, and stops the sync; returns the INCRs made and the sync's log.
    pub fn finish(&mut self, limit: Duration) -> (u64, String) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rounds = self.load.take().map_or(0, |l| l.join().unwrap());
        wait_same(
            || self.cluster.snapshot(),
            || server_data(&self.target),
            Some(&mut self.sync),
            &self.log,
            limit,
        );
        self.kill();
        (rounds, read_log(&self.log))
    }
}

/// Starts `cutover sync` from `source` into `target` again (log `log`) and waits until its
/// `links` links continued with `PSYNC` (`+CONTINUE`).
pub fn start_continued(
    source: &str,
    target: &str,
    log: &Path,
    links: usize,
    limit: Duration,
) -> Child {
    let mut child = start_sync(source, target, log, &[]);
    wait_log(&mut child, log, "continued (+CONTINUE)", links, limit);
    child
}

/// Waits until every one of `links` links of a cluster source has a position on the
/// standalone `target` and has applied stream batches since (each offset moved on).
pub fn wait_stream_progress(
    target: &Server,
    links: usize,
    child: &mut Child,
    log: &Path,
    limit: Duration,
) {
    let mut seen: Option<BTreeMap<String, u64>> = None;
    wait_running(
        child,
        log,
        limit,
        "no stream progress on every link",
        || {
            let pos = link_positions(target);
            if pos.len() != links {
                return false;
            }
            match &seen {
                Some(before) => pos
                    .iter()
                    .all(|(k, o)| before.get(k).is_some_and(|b| o > b)),
                None => {
                    seen = Some(pos);
                    false
                }
            }
        },
    );
}

/// [`wait_same`] with `child` running, then `child` stopped (SIGKILL); returns its log.
pub fn stop_when_same(
    want: impl Fn() -> Data,
    got: impl Fn() -> Data,
    mut child: Child,
    log: &Path,
    limit: Duration,
) -> String {
    wait_same(want, got, Some(&mut child), log, limit);
    child.kill().unwrap();
    child.wait().unwrap();
    read_log(log)
}

/// Waits until `got()` equals `want()` key by key; fails past `limit` (or when `child`, if
/// given, exits) with the differences and the tail of `log`.
pub fn wait_same(
    want: impl Fn() -> Data,
    got: impl Fn() -> Data,
    mut child: Option<&mut Child>,
    log: &Path,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let (want, got) = (want(), got());
        let diff = differences(&want, &got, 10);
        if diff.is_empty() {
            return;
        }
        let running = child
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_none());
        assert!(
            Instant::now() < deadline && running,
            "the target differs from the source ({} vs {} keys):\n{}\nlog:\n{}",
            want.len(),
            got.len(),
            diff.iter()
                .map(|d| super::tail(d, 300))
                .collect::<Vec<_>>()
                .join("\n"),
            super::tail(&read_log(log), 4000)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every node: no diskless delay, a backlog of 64 MB (a restart of cutover continues).
pub fn configure_for_psync(c: &Cluster) {
    for n in &c.nodes {
        config_set(
            n,
            &[
                ("repl-diskless-sync-delay", "0"),
                ("repl-backlog-size", "64mb"),
            ],
        );
    }
}

/// `CONFIG SET` of each `(name, value)` on `n`.
pub fn config_set(n: &Server, settings: &[(&str, &str)]) {
    let mut conn = n.conn();
    for (k, v) in settings {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query(&mut conn)
            .unwrap();
    }
}

/// The number `field` of `INFO <section>` on `n`.
pub fn info_number(n: &Server, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut n.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
        .trim()
        .parse()
        .unwrap()
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
    for (k, v) in position_entries(c, "cutover:position:*") {
        let link = k.rsplit(':').next().unwrap().to_string();
        if let Some(id) = v.split(' ').next() {
            out.entry(link).or_default().insert(id.to_string());
        }
    }
    out
}
