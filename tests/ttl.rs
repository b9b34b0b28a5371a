//! Keys the side a link writes to expires on its own (issue 20): the two sides' clocks.
//!
//! - The skew between the sides is measured at start (`TIME` against the local clock, half
//!   the round trip as the error) and shown in `status` (`cutover.clock_skew`); with the
//!   target's clock 50 ms ahead (libfaketime) it is beyond the default bound: a warning in
//!   status and the log, and `cutover_clock_skew_exceeded` for the alert. On one clock it is
//!   within.

mod common;

use std::time::{Duration, Instant};

use common::faketime::SkewedServer;
use common::{Proxy, Server, Version, cli};

fn clock(proxy: &Proxy) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = proxy.status_json();
        if !s["cutover"]["clock_skew"].is_null() {
            return s["cutover"]["clock_skew"].clone();
        }
        assert!(Instant::now() < deadline, "no clock_skew in {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_target_clock_50_ms_ahead_is_measured_and_warned_about() {
    let source = Server::start(Version::Valkey91);
    let target = SkewedServer::start("valkey-9.1-server", "+0.05", &[]);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    let c = clock(&proxy);
    let between = c["between_ms"].as_f64().unwrap_or_else(|| panic!("{c}"));
    assert!((40.0..60.0).contains(&between), "{c}");
    assert_eq!(c["exceeded"], true, "{c}");
    assert_eq!(c["limit_ms"], 20, "{c}");
    assert!(
        c["warning"].as_str().unwrap().contains("max_clock_skew_ms"),
        "{c}"
    );
    let metrics = proxy.metrics();
    assert!(
        metrics.contains("cutover_clock_skew_exceeded 1"),
        "{metrics}"
    );
    assert!(
        proxy.log().contains("max_clock_skew_ms"),
        "a WARN in the log"
    );
}

#[test]
fn one_clock_is_within_the_bound() {
    let source = Server::start(Version::Valkey91);
    let target = Server::start(Version::Redis62);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    let c = clock(&proxy);
    let between = c["between_ms"].as_f64().unwrap_or_else(|| panic!("{c}"));
    assert!(between.abs() < 5.0, "{c}");
    assert_eq!(c["exceeded"], false, "{c}");
    assert!(c["warning"].is_null(), "{c}");
    assert!(c["source"]["rtt_ms"].as_f64().unwrap() < 50.0, "{c}");
}

/// The sliding-TTL workload of issue 20 through the proxy: `KEYS` sessions with `PX 100`,
/// four clients refreshing random ones (`PEXPIRE k 100`, `GETEX k PX 100`, `SET k v KEEPTTL
/// XX`, each followed by `SET k v PX 100` when the key had expired) for `secs` seconds; then
/// every key still alive is given a long TTL through the proxy. Returns the keys alive on the
/// primary that the other side lacks or holds differently, once the link caught up.
fn sliding_ttl(
    proxy: &Proxy,
    primary: &mut redis::Connection,
    other: &mut redis::Connection,
    secs: u64,
) -> (usize, Vec<String>) {
    const KEYS: usize = 300;
    let mut c = proxy.conn();
    for i in 0..KEYS {
        let _: () = redis::cmd("SET")
            .arg(format!("sess:{i}"))
            .arg("v0")
            .arg("PX")
            .arg(100)
            .query(&mut c)
            .unwrap();
    }
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let url = proxy.url();
            std::thread::spawn(move || {
                let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
                let started = Instant::now();
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ t;
                let mut n = 0u64;
                while started.elapsed() < Duration::from_secs(secs) && n < 2_000_000 {
                    n += 1;
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = format!("sess:{}", x % KEYS as u64);
                    let v = format!("v{t}-{n}");
                    let alive = match n % 3 {
                        0 => {
                            redis::cmd("PEXPIRE")
                                .arg(&k)
                                .arg(100)
                                .query::<i64>(&mut c)
                                .unwrap()
                                == 1
                        }
                        1 => redis::cmd("GETEX")
                            .arg(&k)
                            .arg("PX")
                            .arg(100)
                            .query::<Option<String>>(&mut c)
                            .unwrap()
                            .is_some(),
                        _ => redis::cmd("SET")
                            .arg(&k)
                            .arg(&v)
                            .arg("KEEPTTL")
                            .arg("XX")
                            .query::<Option<String>>(&mut c)
                            .unwrap()
                            .is_some(),
                    };
                    if !alive {
                        let _: () = redis::cmd("SET")
                            .arg(&k)
                            .arg(&v)
                            .arg("PX")
                            .arg(100)
                            .query(&mut c)
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut live = Vec::new();
    for i in 0..KEYS {
        let k = format!("sess:{i}");
        if redis::cmd("PEXPIRE")
            .arg(&k)
            .arg(600_000)
            .query::<i64>(&mut c)
            .unwrap()
            == 1
        {
            live.push(k);
        }
    }
    // Caught up: before a switch the sync streams without lag; after it the link keeping
    // the old side in step makes the rollback safe.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = proxy.status_json();
        let caught_up = if s["cutover"]["phase"].is_null() {
            s["phase"] == "streaming" && s["lag_bytes"] == 0
        } else {
            s["rollback_safe"] == true
        };
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "never caught up: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut missing = Vec::new();
        for k in &live {
            let a: Option<String> = redis::cmd("GET").arg(k).query(primary).unwrap();
            let b: Option<String> = redis::cmd("GET").arg(k).query(other).unwrap();
            if a != b {
                missing.push(format!("{k}: {a:?} / {b:?}"));
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            return (live.len(), missing);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Valkey 9.1 → Valkey 9.1 with the target's clock 50 ms ahead: import mode on the side the
/// applying link writes to keeps every refreshed session, before the switch (the target in
/// import mode) and after it (the source in it, the target out of it); `finish` restores
/// both sides' own setting.
#[test]
fn sliding_ttls_survive_on_a_valkey_9_1_side_in_import_mode_with_its_clock_ahead() {
    import_mode_story("valkey-9.1-server");
}

#[test]
fn sliding_ttls_survive_on_a_valkey_8_1_side_in_import_mode_with_its_clock_ahead() {
    import_mode_story("valkey-8.1-server");
}

/// Switch → rollback → switch → finish with the sliding-TTL workload after each move.
fn import_mode_story(target_binary: &str) {
    let source = Server::start(Version::Valkey91);
    let target = SkewedServer::start(target_binary, "+0.05", &[]);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    common::wait_streaming(&proxy);
    let s = proxy.status_json();
    assert_eq!(s["cutover"]["import_mode"]["on"], "target", "{s}");
    let (live, missing) = sliding_ttl(&proxy, &mut source.conn(), &mut target.conn(), 3);
    eprintln!("before the switch: {live} live, {} missing", missing.len());
    assert!(live > 20, "the workload kept sessions alive: {live}");
    assert!(
        missing.is_empty(),
        "{} of {live} missing on the target: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    common::step(&proxy, "switch");
    let s = proxy.status_json();
    assert_eq!(s["cutover"]["import_mode"]["on"], "source", "{s}");
    let mode: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("import-mode")
        .query(&mut target.conn())
        .unwrap();
    assert_eq!(mode[1], "no", "the new primary left import mode");
    let (live, missing) = sliding_ttl(&proxy, &mut target.conn(), &mut source.conn(), 3);
    eprintln!("after the switch: {live} live, {} missing", missing.len());
    assert!(
        missing.is_empty(),
        "{} of {live} missing on the source: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for (verb, on, primary_is_source) in [("rollback", "target", true), ("switch", "source", false)]
    {
        common::step(&proxy, verb);
        let s = proxy.status_json();
        assert_eq!(s["cutover"]["import_mode"]["on"], on, "{verb}: {s}");
        let (live, missing) = if primary_is_source {
            sliding_ttl(&proxy, &mut source.conn(), &mut target.conn(), 2)
        } else {
            sliding_ttl(&proxy, &mut target.conn(), &mut source.conn(), 2)
        };
        eprintln!("after the {verb}: {live} live, {} missing", missing.len());
        assert!(
            missing.is_empty(),
            "{verb}: {} of {live} missing: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    common::step(&proxy, "finish");
    for (name, c) in [
        ("source", &mut source.conn()),
        ("target", &mut target.conn()),
    ] {
        let mode: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("import-mode")
            .query(c)
            .unwrap();
        assert_eq!(mode[1], "no", "{name}: its own setting back");
    }
}

/// A target without import mode (Redis): a key the primary refreshed that the target had
/// already expired is lost there, and never in silence: every key the independent client
/// finds missing is named in status (`sync.expired_early`), counted, and the switch is
/// refused while any is.
fn no_silent_loss(target_binary: &str, offset: Option<&str>) {
    let source = Server::start(Version::Valkey91);
    let (skewed, plain);
    let target_url = match offset {
        Some(o) => {
            skewed = SkewedServer::start(target_binary, o, &[]);
            skewed.url()
        }
        None => {
            plain = Server::start(match target_binary {
                "redis-7.0-server" => Version::Redis70,
                _ => Version::Redis62,
            });
            plain.url()
        }
    };
    let mut target = redis::Client::open(target_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let proxy = Proxy::start(&source.url(), &["--target", &target_url]);
    common::wait_streaming(&proxy);
    let (live, missing) = sliding_ttl(&proxy, &mut source.conn(), &mut target, 3);
    let s = proxy.status_json();
    let named: Vec<String> = s["sync"]["expired_early"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let count = s["sync"]["expired_early_keys"].as_u64().unwrap();
    assert_eq!(count as usize, named.len().max(count as usize), "{s}");
    eprintln!(
        "{target_binary} {offset:?}: {live} live, {} missing, {count} reported",
        missing.len()
    );
    assert!(
        count as usize >= missing.len(),
        "{count} reported, {} missing",
        missing.len()
    );
    let missing_keys: Vec<String> = missing
        .iter()
        .map(|m| m.split(':').take(2).collect::<Vec<_>>().join(":"))
        .collect();
    for key in &missing_keys {
        assert!(
            named.len() == 100 || named.contains(key),
            "{key} missing but not named: {s}"
        );
    }
    // (A key the primary later wrote whole is repaired, and no longer named.)
    for key in &named {
        assert!(
            missing_keys.contains(key),
            "{key} named but equal on both sides: {s}"
        );
    }
    if count > 0 {
        let (code, _, err) = cli(&proxy, &["switch"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("expired early"), "{err}");
    }
    if offset.is_some() {
        assert!(
            count > 0,
            "with the target 50 ms ahead keys are lost (and reported)"
        );
    }
}

#[test]
fn a_redis_6_2_target_50_ms_ahead_reports_every_lost_key() {
    no_silent_loss("redis-6.2-server", Some("+0.05"));
}

#[test]
fn a_redis_7_0_target_reports_every_lost_key() {
    no_silent_loss("redis-7.0-server", None);
}

/// `CONFIG GET import-mode` of `server`.
fn import_mode(server: &Server) -> String {
    let mode: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("import-mode")
        .query(&mut server.conn())
        .unwrap();
    mode[1].clone()
}

/// Writes through the proxy (retrying while the primary restarts) until `server`, the side
/// the applying link writes to, is in import mode again (bounded).
fn until_import_mode_again(proxy: &Proxy, server: &Server, label: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0u64;
    loop {
        i += 1;
        if let Ok(mut c) = proxy.client().get_connection() {
            let _ = redis::cmd("SET")
                .arg(format!("poke:{i}"))
                .arg(i)
                .query::<()>(&mut c);
        }
        if import_mode(server) == "yes" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: the restarted side never re-entered import mode; status {}\nproxy log:\n{}",
            proxy.status_json(),
            common::tail(&proxy.log(), 3000)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Valkey that restarts comes back with `import-mode no` (its config): the link's writer,
/// reconnecting to it while it is the side the applying link writes to, puts it back in
/// import mode — the target before the switch, the source (the old side) after it — and the
/// sliding TTLs survive on it again. The new primary stays out of import mode.
#[test]
fn a_restarted_valkey_side_is_put_back_in_import_mode() {
    // (`everysec`: an fsync per write slows the refreshes so much that few sessions stay
    // alive; a restart loses at most the last second, and the position stored with it.)
    let aof: &[&str] = &["--appendonly", "yes", "--appendfsync", "everysec"];
    let mut source = Server::start_with(Version::Valkey91, aof);
    let mut target = Server::start_with(Version::Valkey91, aof);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    common::wait_streaming(&proxy);
    assert_eq!(import_mode(&target), "yes");
    target.restart();
    assert_eq!(
        import_mode(&target),
        "no",
        "a restarted Valkey leaves import mode"
    );
    until_import_mode_again(&proxy, &target, "the target, before the switch");
    assert!(
        proxy.log().contains("in import mode again"),
        "{}",
        common::tail(&proxy.log(), 3000)
    );
    common::wait_streaming(&proxy);
    let (live, missing) = sliding_ttl(&proxy, &mut source.conn(), &mut target.conn(), 2);
    assert!(live > 5, "{live}");
    assert!(missing.is_empty(), "{missing:?}");

    common::step(&proxy, "switch");
    assert_eq!(import_mode(&source), "yes");
    assert_eq!(import_mode(&target), "no");
    source.restart();
    assert_eq!(import_mode(&source), "no");
    until_import_mode_again(&proxy, &source, "the old side, after the switch");
    assert_eq!(import_mode(&target), "no", "the primary stays out of it");
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.status_json()["rollback_safe"] != true {
        assert!(Instant::now() < deadline, "{}", proxy.status_json());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (live, missing) = sliding_ttl(&proxy, &mut target.conn(), &mut source.conn(), 2);
    assert!(live > 5, "{live}");
    assert!(missing.is_empty(), "{missing:?}");
    common::step(&proxy, "finish");
    assert_eq!(import_mode(&source), "no");
    assert_eq!(import_mode(&target), "no");
}
