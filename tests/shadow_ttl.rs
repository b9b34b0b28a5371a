//! Keys the old side expires on its own in a shadow overlap (issue 20).
//!
//! After a switch with `--overlap shadow`, the old side is kept in step by the proxy's shadow
//! writer, not by a link, so the links' expired-early repair does not apply. When the old
//! side has already expired a key the primary still holds (its clock ahead, or the refresh
//! reaching it a little late), the shadowed refresh (`PEXPIREAT`, answered 0 there) or
//! counter (`INCRBY`, answered with exactly its delta while the primary's result differs)
//! shows it. Such a key is counted (`cutover.shadow_keys_lost`) and copied from the primary,
//! fenced in the per-key order (`cutover::shadow::repair`): counted again
//! (`cutover.shadow_keys_repaired`), and the rollback stays safe. A key whose copy fails is
//! named (`cutover.shadow_keys_lost_names`) and makes the rollback unsafe: the loss is never
//! silent.

mod common;

use std::time::Duration;

use common::faketime::SkewedServer;
use common::sliding::sliding_workload;
use common::{Proxy, Server, Version};

fn cutover(proxy: &Proxy) -> serde_json::Value {
    proxy.status_json()["cutover"].clone()
}

/// `cutover run` from `source` to `target` with `--overlap shadow`, streaming, then switched.
fn switched(source: &str, target: &str) -> Proxy {
    let proxy = Proxy::start(source, &["--target", target, "--overlap", "shadow"]);
    common::wait_streaming(&proxy);
    common::step(&proxy, "switch");
    proxy
}

/// `PEXPIRE key ms` on `c`: 1 when the key was there.
fn pexpire(c: &mut redis::Connection, key: &str, ms: i64) -> i64 {
    redis::cmd("PEXPIRE").arg(key).arg(ms).query(c).unwrap()
}

/// `SET key value PX ms` on `c`.
fn set_px(c: &mut redis::Connection, key: &str, value: &str, ms: i64) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PX")
        .arg(ms)
        .query(c)
        .unwrap();
}

/// Waits (bounded) until the shadow queue is empty; returns the status' `cutover` part.
fn drained(proxy: &Proxy) -> serde_json::Value {
    common::wait_for("the shadow queue drained", Duration::from_secs(30), || {
        let c = cutover(proxy);
        (c["shadow_queue"] == 0).then_some(c)
    })
}

/// The old side expired a session and a counter the primary still holds; the shadowed
/// `PEXPIRE`, `GETEX … PX`, `INCR` and `SET … KEEPTTL` find them missing there, and each is
/// copied back: both sides equal, the rollback safe.
#[test]
fn a_key_the_old_side_expired_first_is_copied_back_from_the_primary() {
    let source = Server::start(Version::Redis62);
    let target = Server::start(Version::Valkey91);
    let proxy = switched(&source.url(), &target.url());
    let mut c = proxy.conn();
    let mut old = source.conn();
    for k in ["sess", "sess2", "sess3"] {
        set_px(&mut c, k, "v", 600_000);
    }
    let n: i64 = redis::cmd("INCRBY")
        .arg("ctr")
        .arg(5)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 5);
    // A hash session: a listpack from Valkey 9.1 that Redis 6.2 cannot RESTORE.
    let _: i64 = redis::cmd("HSET")
        .arg("hs")
        .arg("user")
        .arg("u1")
        .arg("cart")
        .arg("3")
        .query(&mut c)
        .unwrap();
    let _: i64 = pexpire(&mut c, "hs", 600_000);
    let c0 = drained(&proxy);
    assert_eq!(c0["shadow_keys_lost"], 0, "{c0}");
    assert_eq!(proxy.status_json()["rollback_safe"], true);
    // The old side expires them on its own (as with its clock ahead).
    for k in ["sess", "sess2", "sess3", "ctr", "hs"] {
        let _: i64 = pexpire(&mut old, k, 1);
    }
    std::thread::sleep(Duration::from_millis(20));
    let refreshed: i64 = pexpire(&mut c, "sess", 600_000);
    assert_eq!(refreshed, 1);
    let got: Option<String> = redis::cmd("GETEX")
        .arg("sess2")
        .arg("PX")
        .arg(600_000)
        .query(&mut c)
        .unwrap();
    assert_eq!(got.as_deref(), Some("v"));
    // Would create the key without its TTL on the old side.
    let _: () = redis::cmd("SET")
        .arg("sess3")
        .arg("w")
        .arg("KEEPTTL")
        .query(&mut c)
        .unwrap();
    let n: i64 = redis::cmd("INCR").arg("ctr").query(&mut c).unwrap();
    assert_eq!(n, 6);
    // Later writes to the same keys apply once, after the copies.
    let n: i64 = redis::cmd("INCR").arg("ctr").query(&mut c).unwrap();
    assert_eq!(n, 7);
    let _: i64 = redis::cmd("APPEND")
        .arg("sess")
        .arg("+")
        .query(&mut c)
        .unwrap();
    let refreshed: i64 = pexpire(&mut c, "hs", 600_000);
    assert_eq!(refreshed, 1);
    let _: i64 = redis::cmd("HINCRBY")
        .arg("hs")
        .arg("cart")
        .arg(1)
        .query(&mut c)
        .unwrap();
    // A key new on the primary written with KEEPTTL: the old side's nil is copied too (it
    // cannot tell a new key from a lost one).
    let _: () = redis::cmd("SET")
        .arg("fresh")
        .arg("f")
        .arg("KEEPTTL")
        .query(&mut c)
        .unwrap();
    let c1 = drained(&proxy);
    // (The HINCRBY finds `hs` missing too if its shadow was queued before the copy, and the
    // APPEND `sess` — its size is checked — likewise; the copy then supersedes them: one copy
    // per key.)
    let lost = c1["shadow_keys_lost"].as_u64().unwrap();
    assert!((6..=8).contains(&lost), "{c1}");
    assert_eq!(c1["shadow_keys_repaired"], 6, "{c1}");
    assert_eq!(c1["shadow_keys_lost_names"], serde_json::json!([]), "{c1}");
    let s = proxy.status_json();
    assert_eq!(s["rollback_safe"], true, "{s}");
    let on_old: Vec<Option<String>> = ["sess", "sess2", "sess3", "ctr"]
        .iter()
        .map(|k| redis::cmd("GET").arg(k).query(&mut old).unwrap())
        .collect();
    assert_eq!(
        on_old,
        [Some("v+"), Some("v"), Some("w"), Some("7")].map(|v| v.map(String::from))
    );
    let a = common::snapshot(&mut target.conn());
    let b = common::snapshot(&mut old);
    assert_eq!(common::differences(&a, &b, 10), Vec::<String>::new());
    // The TTLs came along (sess3 kept the primary's).
    let ttl: i64 = redis::cmd("PTTL").arg("sess3").query(&mut old).unwrap();
    assert!(ttl > 500_000, "sess3 has no TTL on the old side: {ttl}");
    let ttl: i64 = redis::cmd("PTTL").arg("hs").query(&mut old).unwrap();
    assert!(ttl > 500_000, "hs has no TTL on the old side: {ttl}");
    let hs: std::collections::BTreeMap<String, String> =
        redis::cmd("HGETALL").arg("hs").query(&mut old).unwrap();
    assert_eq!(format!("{hs:?}"), r#"{"cart": "4", "user": "u1"}"#);
    let ttl: i64 = redis::cmd("PTTL").arg("fresh").query(&mut old).unwrap();
    assert_eq!(ttl, -1, "fresh has no TTL on the primary");
}

/// A key the old side lost whose copy fails (the primary refuses `DUMP`) stays lost: named
/// in status, and the rollback is unsafe, with the reason.
#[test]
fn a_key_that_cannot_be_copied_back_makes_the_rollback_unsafe_and_is_named() {
    let source = Server::start(Version::Redis62);
    let target = Server::start_with(Version::Valkey91, &["--rename-command", "DUMP", ""]);
    let proxy = switched(&source.url(), &target.url());
    let mut c = proxy.conn();
    let mut old = source.conn();
    set_px(&mut c, "sess", "v", 600_000);
    drained(&proxy);
    let _: i64 = pexpire(&mut old, "sess", 1);
    std::thread::sleep(Duration::from_millis(20));
    let refreshed: i64 = pexpire(&mut c, "sess", 600_000);
    assert_eq!(refreshed, 1);
    let c1 = drained(&proxy);
    let s = proxy.status_json();
    assert_eq!(s["rollback_safe"], false, "{s}");
    assert_eq!(c1["shadow_keys_lost"], 1, "{c1}");
    assert_eq!(c1["shadow_keys_repaired"], 0, "{c1}");
    assert_eq!(
        c1["shadow_keys_lost_names"],
        serde_json::json!(["0:sess"]),
        "{c1}"
    );
    let reason = c1["rollback_unsafe_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("expired or evicted the key on its own") && reason.contains("copy"),
        "{c1}"
    );
    // A move back is refused.
    let (code, _, err) = common::cli(&proxy, &["rollback", "--json"]);
    assert_ne!(code, 0, "rollback went through: {err}");
}

/// The sliding-TTL workload of issue 20 after a switch, the old side (Redis 6.2) 50 ms
/// ahead, four clients on the same keys: the keys the old side expires first are copied
/// back, so after the workload (every live key then given a long TTL through the proxy) both
/// sides hold the same live keys, the rollback is safe, and it returns the clients to the
/// same data. (On `main`, keys were missing on the old side and the rollback unsafe.)
#[test]
fn sliding_ttls_on_an_old_side_50_ms_ahead_are_repaired() {
    sliding_ttls_after_a_switch("+0.05");
}

/// The same with the old side 50 ms *behind*: it keeps keys longer than the primary, and a
/// counter the primary starts anew (`INCR` answered 1) would be added to the stale value
/// there; the reply shows it, and the key is copied.
#[test]
fn sliding_ttls_on_an_old_side_50_ms_behind_are_repaired() {
    sliding_ttls_after_a_switch("-0.05");
}

fn sliding_ttls_after_a_switch(offset: &str) {
    let source = SkewedServer::start("redis-6.2-server", offset, &[]);
    let target = Server::start(Version::Redis70);
    let proxy = switched(&source.url(), &target.url());
    const KEYS: u64 = 200;
    const COUNTERS: u64 = 20;
    let ops = sliding_workload(&proxy, KEYS, COUNTERS, Duration::from_secs(3));
    let mut c = proxy.conn();
    // Every live key frozen with a long TTL (one pipeline), then compared.
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("PEXPIRE").arg(format!("sess:{i}")).arg(600_000);
    }
    for i in 0..COUNTERS {
        pipe.cmd("PEXPIRE").arg(format!("ctr:{i}")).arg(600_000);
    }
    let answers: Vec<i64> = pipe.query(&mut c).unwrap();
    let live = answers.iter().filter(|a| **a == 1).count();
    let cut = drained(&proxy);
    // The keys left with a short TTL (not refreshed: gone on the primary) expire on both.
    std::thread::sleep(Duration::from_millis(300));
    let primary = common::snapshot(&mut target.conn());
    let on_old = common::snapshot(&mut source.conn());
    let diff = common::differences(&primary, &on_old, 20);
    let s = proxy.status_json();
    eprintln!(
        "{ops} operations, {live} live keys, {} differing; shadow_keys_lost {}, shadow_keys_repaired {}, rollback_safe {}",
        diff.len(),
        cut["shadow_keys_lost"],
        cut["shadow_keys_repaired"],
        s["rollback_safe"]
    );
    assert!(live > 0, "no live key to compare");
    assert!(
        cut["shadow_keys_lost"].as_u64().unwrap() > 0,
        "the old side {offset} s off found no key different: the test did not test anything: {cut}"
    );
    assert_eq!(diff, Vec::<String>::new(), "{cut}");
    assert_eq!(primary.len(), live, "every live key is compared");
    assert_eq!(s["rollback_safe"], true, "{s}");
    assert_eq!(
        cut["shadow_keys_lost_names"],
        serde_json::json!([]),
        "{cut}"
    );
    // The rollback returns the clients to the same data.
    common::step(&proxy, "rollback");
    let mut c = proxy.conn();
    for (k, (ty, value, _)) in primary.iter().filter(|(_, (ty, ..))| ty == "string") {
        let got: Option<String> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
        assert_eq!(format!("{got:?}"), *value, "{k} ({ty}) after the rollback");
    }
    let back = common::snapshot(&mut source.conn());
    assert_eq!(
        common::differences(&primary, &back, 20),
        Vec::<String>::new()
    );
}
