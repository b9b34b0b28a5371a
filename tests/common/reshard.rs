//! Helpers of `tests/sync_cluster_reshard.rs`: an application client that follows `MOVED`
//! and `ASK` (with `ASKING`) as a cluster client does, several of them writing the SAME keys
//! with an exactly-once ledger, and `redis-cli --cluster reshard`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::cluster::{Cluster, run_cli};

/// A client of a cluster that is being resharded: commands go to the slot's master as last
/// known; `MOVED` updates the slot and retries there, `ASK` retries once on the named node
/// after `ASKING`, `TRYAGAIN` waits and retries.
pub struct Router {
    slots: Vec<u16>,
    conns: BTreeMap<u16, redis::Connection>,
}

impl Router {
    pub fn new(c: &Cluster) -> Router {
        let mut slots = vec![0u16; 16384];
        for (a, b, port) in c.slot_ranges() {
            for s in a..=b {
                slots[s as usize] = port;
            }
        }
        Router {
            slots,
            conns: BTreeMap::new(),
        }
    }

    fn conn(&mut self, port: u16) -> &mut redis::Connection {
        self.conns.entry(port).or_insert_with(|| {
            redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .unwrap()
                .get_connection_with_timeout(Duration::from_secs(5))
                .unwrap()
        })
    }

    /// Runs `cmd` (on `slot`'s keys) until it is answered by the node that has them.
    pub fn run(&mut self, slot: u16, cmd: &redis::Cmd) -> redis::Value {
        let mut port = self.slots[slot as usize];
        let mut asking = false;
        for _ in 0..50 {
            let conn = self.conn(port);
            if asking {
                let _: () = redis::cmd("ASKING").query(conn).unwrap();
            }
            match cmd.query::<redis::Value>(conn) {
                Ok(v) => return v,
                Err(e) => {
                    let to = e
                        .redirect_node()
                        .and_then(|(addr, _)| addr.rsplit(':').next()?.parse::<u16>().ok());
                    match (e.code(), to) {
                        (Some("MOVED"), Some(p)) => {
                            self.slots[slot as usize] = p;
                            port = p;
                            asking = false;
                        }
                        (Some("ASK"), Some(p)) => {
                            port = p;
                            asking = true;
                        }
                        (Some("TRYAGAIN"), _) => {
                            std::thread::sleep(Duration::from_millis(5));
                            asking = false;
                            port = self.slots[slot as usize];
                        }
                        _ => panic!("{cmd:?} on port {port}: {e}"),
                    }
                }
            }
        }
        panic!("{cmd:?}: more than 50 redirects");
    }
}

/// Keys named `<prefix><n>` and their slots (asked of the server), `half` of them in slots
/// below 1,000 (the slots the reshards move) and `half` anywhere.
pub fn keys_of(c: &Cluster, prefix: &str, half: usize) -> Vec<(String, u16)> {
    let mut conn = c.nodes[0].conn();
    let names: Vec<String> = (0..20_000).map(|i| format!("{prefix}{i}")).collect();
    let mut p = redis::pipe();
    for k in &names {
        p.cmd("CLUSTER").arg("KEYSLOT").arg(k);
    }
    let slots: Vec<u16> = p.query(&mut conn).unwrap();
    let (mut low, mut any) = (Vec::new(), Vec::new());
    for (k, s) in names.into_iter().zip(slots) {
        if s < 1000 && low.len() < half {
            low.push((k, s));
        } else if s >= 1000 && any.len() < half {
            any.push((k, s));
        }
    }
    low.extend(any);
    low
}

/// What one client applied (only commands answered without an error).
#[derive(Default, Debug)]
pub struct Ledger {
    pub incrs: BTreeMap<String, i64>,
    pub pushed: BTreeMap<String, Vec<String>>,
    pub ops: u64,
}

/// `clients` application clients on the SAME keys until `stop` (at most 100,000 commands
/// or 120 s each): `INCR` counters, `RPUSH` of unique values, `SET`, and a `DEL` now and
/// then of a string key, following the reshard's redirects.
pub fn shared_load(
    c: &Cluster,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Ledger>> {
    let counters = Arc::new(keys_of(c, "c:", 30));
    let lists = Arc::new(keys_of(c, "l:", 30));
    let strings = Arc::new(keys_of(c, "s:", 30));
    (0..clients)
        .map(|t| {
            let mut r = Router::new(c);
            let (counters, lists, strings) = (
                Arc::clone(&counters),
                Arc::clone(&lists),
                Arc::clone(&strings),
            );
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut ledger = Ledger::default();
                let started = Instant::now();
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed)
                    && i < 100_000
                    && started.elapsed() < Duration::from_secs(120)
                {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let pick = |v: &[(String, u16)]| v[(x >> 8) as usize % v.len()].clone();
                    match i % 4 {
                        0 => {
                            let (k, s) = pick(&counters);
                            r.run(s, redis::cmd("INCR").arg(&k));
                            *ledger.incrs.entry(k).or_default() += 1;
                        }
                        1 => {
                            let (k, s) = pick(&lists);
                            let v = format!("t{t}:{i}");
                            r.run(s, redis::cmd("RPUSH").arg(&k).arg(&v));
                            ledger.pushed.entry(k).or_default().push(v);
                        }
                        2 => {
                            let (k, s) = pick(&strings);
                            r.run(s, redis::cmd("SET").arg(&k).arg(format!("t{t}:{i}")));
                        }
                        _ => {
                            let (k, s) = pick(&strings);
                            if i % 20 == 3 {
                                r.run(s, redis::cmd("DEL").arg(&k));
                            } else {
                                r.run(s, redis::cmd("APPEND").arg(&k).arg("+"));
                            }
                        }
                    }
                    ledger.ops += 1;
                    i += 1;
                    if i % 64 == 0 {
                        // About 2,000 commands a second per client: a steady stream.
                        std::thread::sleep(Duration::from_millis(25));
                    }
                }
                ledger
            })
        })
        .collect()
}

/// Checks the source cluster against the clients' ledgers: every counter is the number of
/// `INCR`s answered, every list holds each pushed value once.
pub fn check_ledgers(c: &Cluster, ledgers: &[Ledger]) {
    let mut incrs: BTreeMap<String, i64> = BTreeMap::new();
    let mut pushed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in ledgers {
        for (k, n) in &l.incrs {
            *incrs.entry(k.clone()).or_default() += n;
        }
        for (k, v) in &l.pushed {
            pushed
                .entry(k.clone())
                .or_default()
                .extend(v.iter().cloned());
        }
    }
    let mut r = Router::new(c);
    let mut conn = c.nodes[0].conn();
    for (k, n) in &incrs {
        let s: u16 = c.keyslot(&mut conn, k.as_bytes()) as u16;
        let v = r.run(s, redis::cmd("GET").arg(k));
        let got: i64 = redis::from_redis_value(v).unwrap();
        assert_eq!(got, *n, "source counter {k}");
    }
    for (k, want) in &pushed {
        let s: u16 = c.keyslot(&mut conn, k.as_bytes()) as u16;
        let v = r.run(s, redis::cmd("LRANGE").arg(k).arg(0).arg(-1));
        let mut got: Vec<String> = redis::from_redis_value(v).unwrap();
        let mut want = want.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "source list {k}");
    }
}

/// The node id of the master on `port`.
pub fn node_id(c: &Cluster, port: u16) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut c.node(port).conn())
        .unwrap()
}

/// `redis-cli --cluster reshard` of `slots` slots from the master on `from` to the master
/// on `to`, in a thread: (success, stdout, stderr).
pub fn reshard(
    c: &Cluster,
    from: u16,
    to: u16,
    slots: usize,
) -> std::thread::JoinHandle<(bool, String, String)> {
    let args: Vec<String> = [
        "--cluster",
        "reshard",
        &format!("127.0.0.1:{from}"),
        "--cluster-from",
        &node_id(c, from),
        "--cluster-to",
        &node_id(c, to),
        "--cluster-slots",
        &slots.to_string(),
        "--cluster-yes",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    std::thread::spawn(move || run_cli(&args, Duration::from_secs(180)))
}

/// The masters' ports in the order of their first slot (the order of `cutover`'s links).
pub fn masters_by_slot(c: &Cluster) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    for (_, _, port) in c.slot_ranges() {
        if !out.contains(&port) {
            out.push(port);
        }
    }
    out
}

/// Valkey 9 atomic slot migration of the first `n` slots of the master on `from` to the
/// master on `to`: `CLUSTER MIGRATESLOTS SLOTSRANGE a b … NODE <id>` sent to `from`, then
/// waits (60 s at most) until the first node says `to` serves them all.
pub fn atomic_migrate(c: &Cluster, from: u16, to: u16, n: usize) {
    let id = node_id(c, to);
    let mut slots: Vec<i64> = c
        .slot_ranges()
        .iter()
        .filter(|r| r.2 == from)
        .flat_map(|r| r.0..=r.1)
        .collect();
    slots.sort_unstable();
    slots.truncate(n);
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for s in &slots {
        match ranges.last_mut() {
            Some((_, b)) if *b + 1 == *s => *b = *s,
            _ => ranges.push((*s, *s)),
        }
    }
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("MIGRATESLOTS");
    for (a, b) in &ranges {
        cmd.arg("SLOTSRANGE").arg(a).arg(b);
    }
    cmd.arg("NODE").arg(&id);
    let _: () = cmd.query(&mut c.node(from).conn()).unwrap();
    super::wait_for("the atomic slot migration", Duration::from_secs(60), || {
        let r = c.slot_ranges();
        slots
            .iter()
            .all(|s| r.iter().any(|x| x.0 <= *s && *s <= x.1 && x.2 == to))
            .then_some(())
    });
}
