//! Keys the old side expires on its own in a shadow overlap (issue 20).
//!
//! After a switch with `--overlap shadow`, the old side is kept in step by the proxy's shadow
//! writer, not by a link, so the links' expired-early repair does not apply. When the old
//! side has already expired a key the primary still holds (its clock ahead, or the refresh
//! reaching it a little late), the shadowed refresh (`PEXPIREAT`, answered 0 there) or
//! counter (`INCRBY`, answered with exactly its delta while the primary's result differs)
//! shows it. Such a key is counted (`cutover.shadow_keys_lost`), named
//! (`cutover.shadow_keys_lost_names`), and the rollback marked unsafe with the reason: the
//! loss is never silent. (Detection only: see `ShadowSink::lost_key` for why no copy.)

mod common;

use std::time::{Duration, Instant};

use common::faketime::SkewedServer;
use common::{Proxy, Server, Version};

fn cutover(proxy: &Proxy) -> serde_json::Value {
    proxy.status_json()["cutover"].clone()
}

/// Waits (bounded) until the shadow queue is empty; returns the status' `cutover` part.
fn drained(proxy: &Proxy) -> serde_json::Value {
    common::wait_for("the shadow queue drained", Duration::from_secs(30), || {
        let c = cutover(proxy);
        (c["shadow_queue"] == 0).then_some(c)
    })
}

/// The old side expired a session and a counter the primary still holds; the shadowed
/// `PEXPIRE`, `GETEX … PX` and `INCR` find them missing there: counted, named, unsafe.
#[test]
fn a_key_the_old_side_expired_first_makes_the_rollback_unsafe_and_is_named() {
    let source = Server::start(Version::Redis62);
    let target = Server::start(Version::Valkey91);
    let proxy = Proxy::start(
        &source.url(),
        &["--target", &target.url(), "--overlap", "shadow"],
    );
    common::wait_streaming(&proxy);
    common::step(&proxy, "switch");
    let mut c = proxy.conn();
    let mut old = source.conn();
    for k in ["sess", "sess2"] {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg("v")
            .arg("PX")
            .arg(600_000)
            .query(&mut c)
            .unwrap();
    }
    let n: i64 = redis::cmd("INCRBY")
        .arg("ctr")
        .arg(5)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 5);
    let c0 = drained(&proxy);
    assert_eq!(c0["shadow_keys_lost"], 0, "{c0}");
    assert_eq!(proxy.status_json()["rollback_safe"], true);
    // The old side expires them on its own (as with its clock ahead).
    for k in ["sess", "sess2", "ctr"] {
        let _: i64 = redis::cmd("PEXPIRE").arg(k).arg(1).query(&mut old).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    let refreshed: i64 = redis::cmd("PEXPIRE")
        .arg("sess")
        .arg(600_000)
        .query(&mut c)
        .unwrap();
    assert_eq!(refreshed, 1);
    let got: Option<String> = redis::cmd("GETEX")
        .arg("sess2")
        .arg("PX")
        .arg(600_000)
        .query(&mut c)
        .unwrap();
    assert_eq!(got.as_deref(), Some("v"));
    let n: i64 = redis::cmd("INCR").arg("ctr").query(&mut c).unwrap();
    assert_eq!(n, 6);
    let c1 = drained(&proxy);
    // The keys do differ on the old side.
    let on_old: (Option<String>, Option<String>, Option<String>) = (
        redis::cmd("GET").arg("sess").query(&mut old).unwrap(),
        redis::cmd("GET").arg("sess2").query(&mut old).unwrap(),
        redis::cmd("GET").arg("ctr").query(&mut old).unwrap(),
    );
    assert_eq!(on_old, (None, None, Some("1".into())));
    let s = proxy.status_json();
    assert_eq!(s["rollback_safe"], false, "{s}");
    assert_eq!(c1["shadow_keys_lost"], 3, "{c1}");
    let names: Vec<&str> = c1["shadow_keys_lost_names"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for k in ["0:sess", "0:sess2", "0:ctr"] {
        assert!(names.contains(&k), "{k} not named: {c1}");
    }
    let reason = c1["rollback_unsafe_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("expired or evicted the key on its own"),
        "{c1}"
    );
}

/// The sliding-TTL workload of issue 20 after a switch, the old side (Redis 6.2) 50 ms
/// ahead: keys alive on the primary are missing on the old side, and every time that happens
/// status says so and the rollback is unsafe (on `main` it stayed safe).
#[test]
fn sliding_ttls_lost_on_an_old_side_50_ms_ahead_are_never_silent() {
    let source = SkewedServer::start("redis-6.2-server", "+0.05", &[]);
    let target = Server::start(Version::Redis70);
    let proxy = Proxy::start(
        &source.url(),
        &["--target", &target.url(), "--overlap", "shadow"],
    );
    common::wait_streaming(&proxy);
    common::step(&proxy, "switch");
    const KEYS: usize = 200;
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
                while started.elapsed() < Duration::from_secs(3) && n < 1_000_000 {
                    n += 1;
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = format!("sess:{}", x % KEYS as u64);
                    let alive = if n % 2 == 0 {
                        redis::cmd("PEXPIRE")
                            .arg(&k)
                            .arg(100)
                            .query::<i64>(&mut c)
                            .unwrap()
                            == 1
                    } else {
                        redis::cmd("GETEX")
                            .arg(&k)
                            .arg("PX")
                            .arg(100)
                            .query::<Option<String>>(&mut c)
                            .unwrap()
                            .is_some()
                    };
                    if !alive {
                        let _: () = redis::cmd("SET")
                            .arg(&k)
                            .arg(format!("v{t}-{n}"))
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
    // Every live key frozen with a long TTL (one pipeline), then compared.
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("PEXPIRE").arg(format!("sess:{i}")).arg(600_000);
    }
    let answers: Vec<i64> = pipe.query(&mut c).unwrap();
    let cut = drained(&proxy);
    let mut primary = target.conn();
    let mut old = source.conn();
    let mut missing = Vec::new();
    let mut live = 0;
    for (i, a) in answers.iter().enumerate() {
        if *a != 1 {
            continue;
        }
        live += 1;
        let k = format!("sess:{i}");
        let p: Option<String> = redis::cmd("GET").arg(&k).query(&mut primary).unwrap();
        let o: Option<String> = redis::cmd("GET").arg(&k).query(&mut old).unwrap();
        if p.is_some() && p != o {
            missing.push(k);
        }
    }
    let s = proxy.status_json();
    eprintln!(
        "{live} live, {} missing on the old side; shadow_keys_lost {}, rollback_safe {}",
        missing.len(),
        cut["shadow_keys_lost"],
        s["rollback_safe"]
    );
    assert!(
        !missing.is_empty(),
        "with the old side 50 ms ahead some sessions expire there first: {cut}"
    );
    assert_eq!(s["rollback_safe"], false, "keys differ, yet: {s}");
    assert!(cut["shadow_keys_lost"].as_u64().unwrap() > 0, "{cut}");
    assert!(
        cut["rollback_unsafe_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("on its own"),
        "{cut}"
    );
    let named = cut["shadow_keys_lost_names"].as_array().unwrap();
    assert!(!named.is_empty(), "{cut}");
}
