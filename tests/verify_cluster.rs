//! `cutover verify` across topologies, against real clusters: cluster → standalone (a
//! downgrade, Valkey 9.1 → Redis 6.2), standalone → cluster, and cluster → cluster with
//! different master counts (4 × 7.0 → 3 × 6.2). Identical data is reported equal; a planted
//! missing key, extra key and two changed values are each reported exactly once. A source db
//! other than 0 into a cluster target is refused with the reason.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::Cluster;
use common::{Server, Version};
use cutover::cluster::SideSpec;
use cutover::config::{RedisUrl, TlsOptions};
use cutover::verify::{self, Report, VerifyOptions, scan::Progress};

/// One side of a test: a server or a cluster.
enum Side {
    One(Server),
    Many(Cluster),
}

impl Side {
    fn cmd(&self, args: &[&str]) {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match self {
            Side::One(s) => {
                let mut c = s.conn();
                let mut cmd = redis::cmd(args[0]);
                for a in &args[1..] {
                    cmd.arg(*a);
                }
                let _: redis::Value = cmd.query(&mut c).unwrap();
            }
            Side::Many(c) => {
                c.cmd(&bytes);
            }
        }
    }

    fn set_many(&self, pairs: &[(String, String)]) {
        match self {
            Side::One(s) => {
                let mut p = redis::pipe();
                for (k, v) in pairs {
                    p.cmd("SET").arg(k).arg(v).ignore();
                }
                let _: () = p.query(&mut s.conn()).unwrap();
            }
            Side::Many(c) => c.set_many(pairs),
        }
    }

    /// The side's URL: every node of a cluster listed (seeds) or, with `one_seed`, the first
    /// node only (the cluster is then found from `INFO cluster`).
    fn spec(&self, one_seed: bool) -> (RedisUrl, Option<SideSpec>) {
        let text = match self {
            Side::One(s) => s.url(),
            Side::Many(c) if one_seed => c.url(),
            Side::Many(c) => c.seeds_url(),
        };
        let spec = SideSpec::parse(&text, &TlsOptions::default(), &BTreeMap::new()).unwrap();
        (spec.first().clone(), Some(spec))
    }
}

/// The same data on both sides: strings (some hash-tagged), hashes, lists, sets, keys with a
/// TTL.
fn fill(side: &Side) {
    let mut pairs: Vec<(String, String)> = (0..600)
        .map(|i| (format!("k:{i}"), format!("value-{i}")))
        .collect();
    pairs.extend((0..40).map(|i| (format!("{{user{}}}:name:{i}", i % 4), format!("u{i}"))));
    side.set_many(&pairs);
    for i in 0..20 {
        let h = format!("h:{i}");
        side.cmd(&["HSET", &h, "f0", "a", "f1", "b", "f2", &i.to_string()]);
        let l = format!("l:{i}");
        side.cmd(&["RPUSH", &l, "x", "y", &i.to_string()]);
        let s = format!("s:{i}");
        side.cmd(&["SADD", &s, "m1", "m2", &i.to_string()]);
    }
    for i in 0..10 {
        side.cmd(&["SET", &format!("ttl:{i}"), "v", "EX", "1000"]);
    }
}

fn verify(src: &Side, tgt: &Side, one_seed: (bool, bool)) -> Report {
    let (su, ss) = src.spec(one_seed.0);
    let (tu, ts) = tgt.spec(one_seed.1);
    let mut o = VerifyOptions::new(su, tu);
    o.source_side = ss;
    o.target_side = ts;
    o.rounds = 1;
    o.interval = Duration::from_millis(50);
    o.scan_count = 100;
    verify::run(&o, &Arc::new(Progress::default())).expect("verify runs")
}

fn kinds(report: &Report) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for c in &report.diffs {
        let prev = m.insert(
            String::from_utf8_lossy(&c.key).into_owned(),
            c.diff.kind.name().to_string(),
        );
        assert!(prev.is_none(), "{:?} reported twice", c.key);
    }
    m
}

/// Equal data is equal (every source key checked once); then the planted differences are
/// reported, each once.
fn check(src: Side, tgt: Side, one_seed: (bool, bool)) {
    fill(&src);
    fill(&tgt);
    let r = verify(&src, &tgt, one_seed);
    assert!(
        r.is_equal(),
        "identical data reported different: {:?}",
        kinds(&r)
    );
    let checked: u64 = r.checked.values().sum();
    assert_eq!(checked, 640 + 60 + 10, "{:?}", r.checked);
    assert_eq!(r.source_keys, 710);

    tgt.cmd(&["DEL", "k:5"]);
    tgt.cmd(&["SET", "extra:1", "only here"]);
    tgt.cmd(&["SET", "k:7", "changed"]);
    tgt.cmd(&["HSET", "h:3", "f0", "changed"]);
    tgt.cmd(&["SET", "{user2}:name:2", "changed"]);
    let r = verify(&src, &tgt, one_seed);
    let expect: BTreeMap<String, String> = [
        ("k:5", "missing"),
        ("extra:1", "extra"),
        ("k:7", "value"),
        ("h:3", "value"),
        ("{user2}:name:2", "value"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(kinds(&r), expect);
    // The other direction finds the mirror image: the extra key is missing there.
    let r = verify(&tgt, &src, (one_seed.1, one_seed.0));
    let k = kinds(&r);
    assert_eq!(
        k.get("extra:1").map(String::as_str),
        Some("missing"),
        "{k:?}"
    );
    assert_eq!(k.get("k:5").map(String::as_str), Some("extra"), "{k:?}");
    assert_eq!(k.len(), 5, "{k:?}");
}

#[test]
fn cluster_to_standalone_downgrade() {
    check(
        Side::Many(Cluster::start(Version::Valkey91, 3, 0)),
        Side::One(Server::start(Version::Redis62)),
        (false, false),
    );
}

#[test]
fn standalone_to_cluster_found_from_one_seed() {
    check(
        Side::One(Server::start(Version::Redis70)),
        Side::Many(Cluster::start(Version::Redis70, 3, 0)),
        (true, true),
    );
}

#[test]
fn cluster_of_four_to_cluster_of_three() {
    check(
        Side::Many(Cluster::start(Version::Redis70, 4, 0)),
        Side::Many(Cluster::start(Version::Redis62, 3, 0)),
        (false, true),
    );
}

#[test]
fn a_source_db_other_than_0_into_a_cluster_is_refused() {
    let src = Server::start(Version::Redis70);
    let mut c = src.conn();
    let _: () = redis::cmd("SELECT").arg(2).query(&mut c).unwrap();
    let _: () = redis::cmd("SET")
        .arg("in-db2")
        .arg("x")
        .query(&mut c)
        .unwrap();
    let tgt = Side::Many(Cluster::start(Version::Redis70, 3, 0));
    let src = Side::One(src);
    let (su, _) = src.spec(true);
    let (tu, ts) = tgt.spec(false);
    let mut o = VerifyOptions::new(su, tu);
    o.target_side = ts;
    let e = verify::run(&o, &Arc::new(Progress::default())).unwrap_err();
    assert!(e.to_string().contains("--db-map 2=0"), "{e}");
}

/// The CLI with a list of seed nodes: exit 0 when equal, 1 with a JSON line per difference,
/// and a list of nodes that are not a cluster refused (exit 2) with the reason.
#[test]
fn cli_with_seed_lists() {
    let src = Side::Many(Cluster::start(Version::Redis70, 3, 0));
    let tgt = Server::start(Version::Redis70);
    fill(&src);
    let tgt = Side::One(tgt);
    fill(&tgt);
    let Side::Many(c) = &src else { unreachable!() };
    let Side::One(t) = &tgt else { unreachable!() };
    let (su, tu) = (c.seeds_url(), t.url());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--source",
            &su,
            "--target",
            &tu,
            "--rounds",
            "1",
            "--interval",
            "50ms",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run cutover")
    };
    let out = run(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tgt.cmd(&["DEL", "{user1}:name:1"]);
    let out = run(&[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("{user1}:name:1") && stdout.contains("missing"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    // The address map is applied: every node reached as localhost works; a node mapped to a
    // dead port makes the verify fail to connect (exit 2).
    tgt.cmd(&["SET", "{user1}:name:1", "u1"]);
    let mut maps: Vec<String> = Vec::new();
    for n in &c.nodes {
        maps.push("--source-address-map".into());
        maps.push(format!("{}=localhost:{}", n.addr(), n.port()));
    }
    let maps: Vec<&str> = maps.iter().map(String::as_str).collect();
    let out = run(&maps);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dead = common::free_port();
    let masters = c.master_ports();
    let bad = format!("127.0.0.1:{}=127.0.0.1:{dead}", masters[0]);
    let out = run(&["--source-address-map", &bad]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--source-address-map", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));

    let other = Server::start(Version::Redis70);
    let two = format!("redis://{},{}", t.addr(), other.addr());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["verify", "--source", &su, "--target", &two])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cutover");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a cluster node"), "{err}");
}

/// A verify while the target is resharded (`redis-cli --cluster reshard`, 1,000 slots) never
/// reports a difference that is not there: each run is either equal or refused because slots
/// kept moving; after the reshard it is equal.
#[test]
fn verify_during_a_target_reshard_is_equal_or_refused() {
    let src = Side::One(Server::start(Version::Redis70));
    let tgt = Cluster::start(Version::Redis70, 3, 0);
    let pairs: Vec<(String, String)> = (0..3000)
        .map(|i| (format!("r:{i}"), i.to_string()))
        .collect();
    src.set_many(&pairs);
    tgt.set_many(&pairs);
    let tgt = Side::Many(tgt);
    let Side::Many(c) = &tgt else { unreachable!() };
    let ranges = c.slot_ranges();
    let owner = |slot: i64| {
        ranges
            .iter()
            .find(|r| r.0 <= slot && slot <= r.1)
            .unwrap()
            .2
    };
    let id = |port: u16| -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut c.node(port).conn())
            .unwrap()
    };
    let args: Vec<String> = [
        "--cluster".to_string(),
        "reshard".into(),
        c.nodes[0].addr(),
        "--cluster-from".into(),
        id(owner(0)),
        "--cluster-to".into(),
        id(owner(16383)),
        "--cluster-slots".into(),
        "1000".into(),
        "--cluster-yes".into(),
    ]
    .into();
    let resharder =
        std::thread::spawn(move || common::cluster::run_cli(&args, Duration::from_secs(180)));
    let mut outcomes = (0, 0);
    while !resharder.is_finished() {
        let (su, ss) = src.spec(true);
        let (tu, ts) = tgt.spec(false);
        let mut o = VerifyOptions::new(su, tu);
        o.source_side = ss;
        o.target_side = ts;
        o.rounds = 1;
        o.interval = Duration::from_millis(50);
        match verify::run(&o, &Arc::new(Progress::default())) {
            Ok(r) => {
                assert!(
                    r.is_equal(),
                    "a difference reported during the reshard: {:?}",
                    kinds(&r)
                );
                outcomes.0 += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("kept moving"), "{e}");
                outcomes.1 += 1;
            }
        }
    }
    let (ok, out, err) = resharder.join().unwrap();
    assert!(ok, "reshard: {out}{err}");
    eprintln!(
        "during the reshard: {} equal, {} refused",
        outcomes.0, outcomes.1
    );
    assert!(
        outcomes.0 + outcomes.1 > 0,
        "no verify ran during the reshard"
    );
    c.wait_ok(Duration::from_secs(30));
    let r = verify(&src, &tgt, (true, false));
    assert!(r.is_equal(), "{:?}", kinds(&r));
    assert_eq!(r.source_keys, 3000);
}
