//! Helpers of the cluster sync tests (`tests/sync_cluster.rs`, `tests/sync_cluster_source.rs`):
//! `cutover sync` runs, application loads on a standalone server or a cluster (following the
//! cluster's redirects where a failover happens), the positions cutover stores, and the
//! key-by-key comparison with an independent client.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::{Server, snapshot};

pub fn cutover() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
}

pub fn read_log(log: &std::path::Path) -> String {
    String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned()
}

pub fn start_sync(source: &str, target: &str, log: &std::path::Path, extra: &[&str]) -> Child {
    cutover()
        .args(["sync", "--source", source, "--target", target])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// A cluster's keys without cutover's own (`cutover:position:{…}:<link>`).
pub fn data_of(c: &Cluster) -> BTreeMap<String, (String, String, bool)> {
    let mut all = c.snapshot();
    all.retain(|k, _| !k.starts_with("cutover:"));
    all
}

/// The keys matching `pattern` on every master of a cluster, with their string values.
pub fn position_entries(c: &Cluster, pattern: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for port in c.master_ports() {
        let mut conn = c.node(port).conn();
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap();
        for k in keys {
            let v: String = redis::cmd("GET").arg(&k).query(&mut conn).unwrap();
            out.push((k, v));
        }
    }
    out
}

/// The cluster's per-slot positions of link `link`: how many, and the smallest offset.
pub fn positions(c: &Cluster, link: &str) -> (usize, Option<u64>) {
    let entries = position_entries(c, &format!("cutover:position:*:{link}"));
    let min = entries
        .iter()
        .filter_map(|(_, v)| v.split(' ').nth(1).and_then(|o| o.parse::<u64>().ok()))
        .min();
    (entries.len(), min)
}

/// Writes of an application on the source until `stop`: counters and lists in several
/// slots, `MULTI` across slots, `MSET`/`DEL`/`MSETNX` across slots. Returns how many rounds.
pub fn app_load(
    mut conn: redis::Connection,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed)
            && i < 200_000
            && started.elapsed() < Duration::from_secs(60)
        {
            let c = format!("c:{}", i % 8);
            let l = format!("l:{}", i % 4);
            let _: i64 = redis::cmd("INCR").arg(&c).query(&mut conn).unwrap();
            let _: i64 = redis::cmd("RPUSH")
                .arg(&l)
                .arg(format!("v{i}"))
                .query(&mut conn)
                .unwrap();
            // Keys in every part of the slot space (some in the slots a reshard moves).
            let _: i64 = redis::cmd("INCR")
                .arg(format!("r:{}", i % 300))
                .query(&mut conn)
                .unwrap();
            if i % 10 == 0 {
                // A transaction across slots.
                let _: (i64, i64, ()) = redis::pipe()
                    .atomic()
                    .cmd("INCR")
                    .arg("c:0")
                    .cmd("RPUSH")
                    .arg("l:1")
                    .arg(format!("m{i}"))
                    .cmd("SET")
                    .arg(format!("s:{i}"))
                    .arg(i)
                    .query(&mut conn)
                    .unwrap();
            }
            if i % 7 == 0 {
                let _: () = redis::cmd("MSET")
                    .arg("m:a")
                    .arg(i)
                    .arg("m:b")
                    .arg(i)
                    .arg("m:c")
                    .arg(i)
                    .query(&mut conn)
                    .unwrap();
            }
            if i % 13 == 0 && i >= 26 {
                let _: i64 = redis::cmd("DEL")
                    .arg(format!("s:{}", i - 10))
                    .arg(format!("s:{}", i - 20))
                    .query(&mut conn)
                    .unwrap();
            }
            if i % 17 == 0 {
                let _: i64 = redis::cmd("MSETNX")
                    .arg(format!("nx:{i}:a"))
                    .arg(1)
                    .arg(format!("nx:{i}:b"))
                    .arg(2)
                    .query(&mut conn)
                    .unwrap();
            }
            i += 1;
        }
        i
    })
}

/// Waits until the cluster holds exactly the source's data.
pub fn wait_equal(source: &Server, target: &Cluster, limit: Duration, log: &std::path::Path) {
    super::shards::wait_same(
        || snapshot(&mut source.conn()),
        || data_of(target),
        None,
        log,
        limit,
    );
}

pub fn wait_exit(mut child: Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cutover sync did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The port of the master serving `key`, asked of the cluster.
pub fn port_of(c: &Cluster, key: &str) -> u16 {
    let mut conn = c.nodes[0].conn();
    let slot = c.keyslot(&mut conn, key.as_bytes());
    c.slot_ranges()
        .iter()
        .find(|r| r.0 <= slot && slot <= r.1)
        .map(|r| r.2)
        .expect("slot served")
}

/// Writes of an application on a cluster until `stop`: counters and lists on every master,
/// a `MULTI` and an `MSET` on hash-tagged keys. Returns how many rounds.
pub fn cluster_load(c: &Cluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let mut conns: BTreeMap<u16, redis::Connection> = BTreeMap::new();
    for p in c.master_ports() {
        conns.insert(p, c.node(p).conn());
    }
    let keys: Vec<String> = (0..8)
        .map(|i| format!("c:{i}"))
        .chain((0..4).map(|i| format!("l:{i}")))
        .chain(["{t}a".to_string(), "{m}x".to_string()])
        .collect();
    let ports: BTreeMap<String, u16> = keys.iter().map(|k| (k.clone(), port_of(c, k))).collect();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed)
            && i < 200_000
            && started.elapsed() < Duration::from_secs(60)
        {
            let ck = format!("c:{}", i % 8);
            let lk = format!("l:{}", i % 4);
            let conn = conns.get_mut(&ports[&ck]).unwrap();
            let _: i64 = redis::cmd("INCR").arg(&ck).query(conn).unwrap();
            let conn = conns.get_mut(&ports[&lk]).unwrap();
            let _: i64 = redis::cmd("RPUSH")
                .arg(&lk)
                .arg(format!("v{i}"))
                .query(conn)
                .unwrap();
            if i % 10 == 0 {
                let conn = conns.get_mut(&ports["{t}a"]).unwrap();
                let _: (i64, i64) = redis::pipe()
                    .atomic()
                    .cmd("INCR")
                    .arg("{t}a")
                    .cmd("RPUSH")
                    .arg("{t}b")
                    .arg(i)
                    .query(conn)
                    .unwrap();
            }
            if i % 7 == 0 {
                let conn = conns.get_mut(&ports["{m}x"]).unwrap();
                let _: () = redis::cmd("MSET")
                    .arg("{m}x")
                    .arg(i)
                    .arg("{m}y")
                    .arg(i)
                    .query(conn)
                    .unwrap();
            }
            i += 1;
        }
        i
    })
}

/// The positions of a cluster source's links on a standalone target: link → offset.
pub fn link_positions(target: &Server) -> BTreeMap<String, u64> {
    let mut c = target.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("cutover:position:*")
        .query(&mut c)
        .unwrap();
    keys.into_iter()
        .filter_map(|k| {
            let v: String = redis::cmd("GET").arg(&k).query(&mut c).ok()?;
            Some((k, v.split(' ').nth(1)?.parse().ok()?))
        })
        .collect()
}

/// The link names of the per-slot positions on a cluster target, with how many slots each
/// has a position for and the smallest offset.
pub fn cluster_links(c: &Cluster) -> BTreeMap<String, (usize, u64)> {
    let mut out: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (k, v) in position_entries(c, "cutover:position:*") {
        let link = k.rsplit(':').next().unwrap().to_string();
        let off: u64 = v
            .split(' ')
            .nth(1)
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        let e = out.entry(link).or_insert((0, u64::MAX));
        e.0 += 1;
        e.1 = e.1.min(off);
    }
    out
}

/// INCRs on a cluster until `stop`, following the cluster when a key answers `MOVED` (or a
/// connection fails): the slot map is read again and the command sent to the new master.
pub fn following_load(c: &Cluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let addrs: Vec<(u16, redis::Client)> = c.nodes.iter().map(|n| (n.port(), n.client())).collect();
    let keys: Vec<String> = (0..12).map(|i| format!("f:{i}")).collect();
    std::thread::spawn(move || {
        let map = |addrs: &[(u16, redis::Client)]| -> Option<Vec<(i64, i64, u16)>> {
            for (_, client) in addrs {
                let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1))
                else {
                    continue;
                };
                let Ok(redis::Value::Array(entries)) = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query::<redis::Value>(&mut conn)
                else {
                    continue;
                };
                let mut out = Vec::new();
                for e in entries {
                    let redis::Value::Array(a) = e else { continue };
                    let (redis::Value::Int(x), redis::Value::Int(y), redis::Value::Array(m)) =
                        (&a[0], &a[1], &a[2])
                    else {
                        continue;
                    };
                    let redis::Value::Int(p) = m[1] else { continue };
                    out.push((*x, *y, p as u16));
                }
                return Some(out);
            }
            None
        };
        let mut slots = map(&addrs).expect("a slot map");
        let keyslot: BTreeMap<String, i64> = {
            let mut conn = addrs[0].1.get_connection().unwrap();
            keys.iter()
                .map(|k| {
                    let s: i64 = redis::cmd("CLUSTER")
                        .arg("KEYSLOT")
                        .arg(k)
                        .query(&mut conn)
                        .unwrap();
                    (k.clone(), s)
                })
                .collect()
        };
        let mut conns: BTreeMap<u16, redis::Connection> = BTreeMap::new();
        let started = Instant::now();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
            let k = &keys[(i % keys.len() as u64) as usize];
            let s = keyslot[k];
            let port = slots
                .iter()
                .find(|r| r.0 <= s && s <= r.1)
                .map(|r| r.2)
                .unwrap();
            let conn = match conns.entry(port) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let client = &addrs.iter().find(|(p, _)| *p == port).unwrap().1;
                    match client.get_connection_with_timeout(Duration::from_secs(1)) {
                        Ok(c) => e.insert(c),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                }
            };
            if redis::cmd("INCR").arg(k).query::<i64>(conn).is_err() {
                conns.remove(&port);
                std::thread::sleep(Duration::from_millis(50));
                if let Some(m) = map(&addrs) {
                    slots = m;
                }
                continue;
            }
            i += 1;
        }
        i
    })
}
