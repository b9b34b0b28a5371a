//! Real Redis Clusters for the tests: `N` masters (and optional replicas) of one version,
//! each a [`Server`] with `cluster-enabled yes`, joined with `redis-cli --cluster create …
//! --cluster-yes`, returned once every node says `cluster_state:ok` and knows every other
//! node. Dropping a [`Cluster`] kills every node.
//!
//! Ports are below 55000: the cluster bus listens on port + 10000, which must be a valid,
//! free port too.
//!
//! Keys are routed by the servers themselves (`CLUSTER KEYSLOT`, `CLUSTER SLOTS`), never by
//! the crate's `cluster::slot`, so the tests check the crate against an independent source.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Server, Version, free_port, tail, tool, wait_for};

/// A free port `p < 55000` whose bus port `p + 10000` is free too.
pub fn cluster_port() -> u16 {
    for _ in 0..2000 {
        let p = free_port();
        if !(1024..55000).contains(&p) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
    // The kernel's ephemeral range may sit above 55000: pick below it by hand.
    for p in (20000u16..30000).step_by(7) {
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok()
        {
            return p;
        }
    }
    panic!("no free port pair (p, p + 10000) below 55000");
}

/// A running cluster; killed on drop (each node is a [`Server`]).
pub struct Cluster {
    pub nodes: Vec<Server>,
    pub version: Version,
    pub masters: usize,
}

impl Cluster {
    /// `masters` masters with `replicas` replicas each, of `version`, joined and `ok`.
    pub fn start(version: Version, masters: usize, replicas: usize) -> Cluster {
        Cluster::start_with(version, masters, replicas, &mut Vec::new)
    }

    /// [`Cluster::start`] with extra server arguments for each node (`extra` is called once
    /// per node: a TLS port each, say). Nodes are joined through their plain ports.
    pub fn start_with(
        version: Version,
        masters: usize,
        replicas: usize,
        extra: &mut dyn FnMut() -> Vec<String>,
    ) -> Cluster {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs 3 masters at least"
        );
        let total = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            let port = cluster_port();
            let more = extra();
            let mut args: Vec<&str> = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "3000",
                // A test cluster with a node down still answers for the other slots.
                "--cluster-require-full-coverage",
                "no",
            ];
            args.extend(more.iter().map(String::as_str));
            nodes.push(Server::start_on_port(version, port, &args));
        }
        let addrs: Vec<String> = nodes.iter().map(Server::addr).collect();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(addrs.iter().cloned());
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = run_cli(&args, Duration::from_secs(60));
        assert!(
            out.0,
            "redis-cli --cluster create failed:\n{}\n{}",
            tail(&out.1, 3000),
            tail(&out.2, 3000)
        );
        let cluster = Cluster {
            nodes,
            version,
            masters,
        };
        cluster.wait_ok(Duration::from_secs(60));
        cluster
    }

    /// Waits until every node says `cluster_state:ok`, knows every node and agrees on the
    /// slot map (`CLUSTER SLOTS` equal everywhere).
    pub fn wait_ok(&self, limit: Duration) {
        let total = self.nodes.len();
        wait_for("cluster_state:ok on every node", limit, || {
            let mut maps = Vec::new();
            for n in &self.nodes {
                let mut c = n.conn();
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).ok()?;
                let ok = info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{total}\r"));
                if !ok {
                    return None;
                }
                maps.push(self.slots_from(&mut c)?);
            }
            maps.windows(2).all(|w| w[0] == w[1]).then_some(())
        });
    }

    /// `redis://127.0.0.1:P1,127.0.0.1:P2,…` (every node a seed).
    pub fn seeds_url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(Server::addr).collect();
        format!("redis://{}", hosts.join(","))
    }

    /// The URL of the first node only (a single seed).
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// Slot ranges → master port, as `CLUSTER SLOTS` of one node says.
    fn slots_from(&self, c: &mut redis::Connection) -> Option<Vec<(i64, i64, u16)>> {
        let v: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(c).ok()?;
        let redis::Value::Array(entries) = v else {
            return None;
        };
        let mut out = Vec::new();
        for e in entries {
            let redis::Value::Array(a) = e else {
                return None;
            };
            let int = |v: &redis::Value| match v {
                redis::Value::Int(i) => Some(*i),
                _ => None,
            };
            let redis::Value::Array(master) = a.get(2)? else {
                return None;
            };
            out.push((int(&a[0])?, int(&a[1])?, int(master.get(1)?)? as u16));
        }
        out.sort_unstable();
        Some(out)
    }

    /// Slot ranges → master port, from the first node.
    pub fn slot_ranges(&self) -> Vec<(i64, i64, u16)> {
        self.slots_from(&mut self.nodes[0].conn())
            .expect("CLUSTER SLOTS")
    }

    /// The masters' ports, as the cluster says now (sorted).
    pub fn master_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.slot_ranges().iter().map(|r| r.2).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The node with `port`.
    pub fn node(&self, port: u16) -> &Server {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// The slot of `key`, from the server (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, c: &mut redis::Connection, key: &[u8]) -> i64 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(c)
            .expect("CLUSTER KEYSLOT")
    }

    /// A connection to the master serving `key` (asked of the servers).
    pub fn conn_for(&self, key: &[u8]) -> redis::Connection {
        let mut c = self.nodes[0].conn();
        let slot = self.keyslot(&mut c, key);
        let port = self
            .slot_ranges()
            .iter()
            .find(|r| r.0 <= slot && slot <= r.1)
            .map(|r| r.2)
            .unwrap_or_else(|| panic!("slot {slot} is not served"));
        self.node(port).conn()
    }

    /// Runs a single-key command on the key's master: `args[1]` is the key.
    pub fn cmd(&self, args: &[&[u8]]) -> redis::Value {
        let mut c = self.conn_for(args[1]);
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c)
            .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(args[0])))
    }

    /// Writes many string keys, routed by the servers' own slot map: one pipeline per master.
    pub fn set_many(&self, pairs: &[(String, String)]) {
        let ranges = self.slot_ranges();
        let mut c = self.nodes[0].conn();
        // KEYSLOT for every key in one pipeline.
        let mut p = redis::pipe();
        for (k, _) in pairs {
            p.cmd("CLUSTER").arg("KEYSLOT").arg(k);
        }
        let slots: Vec<i64> = p.query(&mut c).expect("KEYSLOT pipeline");
        let mut per: BTreeMap<u16, redis::Pipeline> = BTreeMap::new();
        for ((k, v), slot) in pairs.iter().zip(slots) {
            let port = ranges
                .iter()
                .find(|r| r.0 <= slot && slot <= r.1)
                .expect("slot served")
                .2;
            per.entry(port)
                .or_insert_with(redis::pipe)
                .cmd("SET")
                .arg(k)
                .arg(v)
                .ignore();
        }
        for (port, p) in per {
            let _: () = p.query(&mut self.node(port).conn()).expect("SET pipeline");
        }
    }

    /// Every key of the cluster with its type and value (the rig's [`super::snapshot`] of each
    /// master, merged).
    pub fn snapshot(&self) -> BTreeMap<String, (String, String, bool)> {
        let mut all = BTreeMap::new();
        for port in self.master_ports() {
            all.extend(super::snapshot(&mut self.node(port).conn()));
        }
        all
    }
}

/// `redis-cli` with a time limit: (success, stdout, stderr).
pub fn run_cli(args: &[String], limit: Duration) -> (bool, String, String) {
    let child = Command::new(tool("redis-cli"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    let id = child.id();
    let deadline = Instant::now() + limit;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    loop {
        if let Ok(out) = rx.try_recv() {
            let out = out.expect("redis-cli output");
            return (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
            panic!("redis-cli {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
