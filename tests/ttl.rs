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
use common::sliding::{sliding_workload, touch_session};
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
    const KEYS: u64 = 300;
    sliding_workload(proxy, KEYS, 0, Duration::from_secs(secs));
    let keys: Vec<String> = (0..KEYS).map(|i| format!("sess:{i}")).collect();
    freeze_and_compare(proxy, &keys, primary, other)
}

/// Gives every key of `keys` still alive a long TTL through the proxy, waits until the link
/// caught up, and returns (how many were alive, those the other side lacks or holds
/// differently — compared with independent clients, again for up to 10 s).
fn freeze_and_compare(
    proxy: &Proxy,
    keys: &[String],
    primary: &mut redis::Connection,
    other: &mut redis::Connection,
) -> (usize, Vec<String>) {
    let mut c = proxy.conn();
    // (One pipeline: the short TTLs run out while a loop of round trips goes on.)
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("PEXPIRE").arg(k).arg(600_000);
    }
    let answers: Vec<i64> = pipe.query(&mut c).unwrap();
    let live: Vec<String> = keys
        .iter()
        .zip(answers)
        .filter(|(_, a)| *a == 1)
        .map(|(k, _)| k.clone())
        .collect();
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
/// already expired is copied from the primary (`sync::engine::repair`): the independent
/// client finds nothing missing, status counts the writes that found their key missing and
/// names the keys repaired, none stays unrepaired, and the switch goes through.
fn repaired_not_lost(target_binary: &str, offset: Option<&str>) {
    let source = Server::start(Version::Valkey91);
    let target = SkewedServer::start_clock(target_binary, offset, &[]);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    common::wait_streaming(&proxy);
    let (live, missing) = sliding_ttl(&proxy, &mut source.conn(), &mut target.conn(), 3);
    let s = proxy.status_json();
    let (unrepaired, repairing, repaired, found, _) = repair_counts(&s);
    eprintln!(
        "{target_binary} {offset:?}: {live} live, {} missing, {found} writes found their key missing, {repaired} keys repaired, {repairing} repairing",
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {live} missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(unrepaired, 0, "{s}");
    assert!(
        s["sync"]["expired_early"].as_array().unwrap().is_empty(),
        "{s}"
    );
    let named = s["sync"]["expired_early_repaired_keys"].as_array().unwrap();
    assert_eq!(named.is_empty(), repaired == 0, "{s}");
    if offset.is_some() {
        assert!(
            found > 0 && repaired > 0,
            "with the target 50 ms ahead keys expire early there (and are repaired): {s}"
        );
    }
    common::step(&proxy, "switch");
}

#[test]
fn a_redis_6_2_target_50_ms_ahead_gets_every_lost_key_back() {
    repaired_not_lost("redis-6.2-server", Some("+0.05"));
}

#[test]
fn a_redis_7_0_target_gets_every_lost_key_back() {
    repaired_not_lost("redis-7.0-server", None);
}

/// Hashes with a sliding TTL on a Redis 8.2 primary, lost on a Redis 6.2 target 50 ms
/// ahead: 8.2 dumps a listpack hash, which RDB 9 cannot load, so the copy goes through the
/// snapshot converter (a ziplist hash, then `PEXPIRE`): every live hash is equal on both
/// sides, none unrepaired.
#[test]
fn hashes_a_6_2_target_cannot_restore_are_copied_re_encoded() {
    let source = SkewedServer::start_clock(R82, None, &[]);
    let target = SkewedServer::start_clock(R62, Some("+0.05"), &[]);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    common::wait_streaming(&proxy);
    const KEYS: u64 = 100;
    // (100 ms: the target 50 ms ahead loses many. On a loaded machine few may still be alive
    // when the main thread keeps them, after the threads stopped: any will do.)
    const TTL_MS: u64 = 100;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let url = proxy.url();
            std::thread::spawn(move || {
                let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
                let started = Instant::now();
                let mut n = 0u64;
                while started.elapsed() < Duration::from_secs(2) && n < 500_000 {
                    n += 1;
                    // (Paced: each key is refreshed every ~50 ms on average, so that on a
                    // quiet machine too some refreshes come later than the 50 ms the
                    // target's clock is ahead.)
                    std::thread::sleep(Duration::from_millis(2));
                    let k = format!("hs:{}", (n * 7 + t * 13) % KEYS);
                    let alive: i64 = redis::cmd("PEXPIRE")
                        .arg(&k)
                        .arg(TTL_MS)
                        .query(&mut c)
                        .unwrap();
                    if alive == 0 {
                        let _: () = redis::pipe()
                            .cmd("HSET")
                            .arg(&k)
                            .arg("f")
                            .arg(n)
                            .arg("g")
                            .arg(t)
                            .ignore()
                            .cmd("PEXPIRE")
                            .arg(&k)
                            .arg(TTL_MS)
                            .ignore()
                            .query(&mut c)
                            .unwrap();
                    } else if n % 4 == 0 {
                        let _: i64 = redis::cmd("HINCRBY")
                            .arg(&k)
                            .arg("hits")
                            .arg(1)
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
    // The live hashes kept (a long TTL, one pipeline), then compared field by field.
    let mut c = proxy.conn();
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("PEXPIRE").arg(format!("hs:{i}")).arg(600_000);
    }
    let alive: Vec<i64> = pipe.query(&mut c).unwrap();
    let live = alive.iter().filter(|a| **a == 1).count();
    common::wait_streaming(&proxy);
    let (mut src, mut tgt) = (source.conn(), target.conn());
    let deadline = Instant::now() + Duration::from_secs(10);
    let differ = loop {
        let mut differ = Vec::new();
        for i in 0..KEYS {
            let k = format!("hs:{i}");
            let a: std::collections::BTreeMap<String, String> =
                redis::cmd("HGETALL").arg(&k).query(&mut src).unwrap();
            let b: std::collections::BTreeMap<String, String> =
                redis::cmd("HGETALL").arg(&k).query(&mut tgt).unwrap();
            if a != b {
                differ.push(format!("{k}: {a:?} / {b:?}"));
            }
        }
        if differ.is_empty() || Instant::now() > deadline {
            break differ;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let s = proxy.status_json();
    let (unrepaired, _, repaired, found, _) = repair_counts(&s);
    eprintln!(
        "{live} live, {found} writes found their key missing, {repaired} repaired, {unrepaired} unrepaired"
    );
    assert!(live > 0, "{live}");
    assert!(
        differ.is_empty(),
        "{} differ: {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
    assert_eq!(unrepaired, 0, "{s}");
    assert!(
        repaired > 0,
        "hashes were lost on the target and copied: {s}"
    );
    common::step(&proxy, "switch");
}

/// What cannot be repaired is never silent: the link's user may not `DUMP` on the source
/// (an ACL), so a session the Redis 6.2 target (50 ms ahead) expired early cannot be copied:
/// every key missing there is named in status as unrepaired and the switch is refused, until
/// the primary writes the keys whole (`SET` here).
#[test]
fn keys_that_cannot_be_copied_stay_named_and_refuse_the_switch() {
    let source = SkewedServer::start_clock(R82, None, &[]);
    let mut admin = source.conn();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("nodump")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-dump")
        .query(&mut admin)
        .unwrap();
    let source_url = format!("redis://nodump:pw@127.0.0.1:{}/0", source.port);
    let target = SkewedServer::start_clock(R62, Some("+0.05"), &[]);
    let proxy = Proxy::start(&source_url, &["--target", &target.url()]);
    common::wait_streaming(&proxy);
    let (live, missing) = sliding_ttl(&proxy, &mut source.conn(), &mut target.conn(), 2);
    let s = proxy.status_json();
    let (unrepaired, repairing, _, found, _) = repair_counts(&s);
    eprintln!(
        "{live} live, {} missing, {found} writes found their key missing, {unrepaired} unrepaired, {repairing} repairing",
        missing.len()
    );
    assert!(!missing.is_empty(), "sessions were lost on the target: {s}");
    let named: Vec<&str> = s["sync"]["expired_early"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(unrepaired as usize >= missing.len(), "{s}");
    for m in &missing {
        let key = m.split(": ").next().unwrap();
        // (Status shows the first 100 by name; the count goes on.)
        assert!(
            named.len() == 100 || named.contains(&key),
            "{key} missing but not named: {s}"
        );
    }
    let (code, _, err) = cli(&proxy, &["switch"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("expired early"), "{err}");
    let mut c = proxy.conn();
    for i in 0..300 {
        let _: () = redis::cmd("SET")
            .arg(format!("sess:{i}"))
            .arg("again")
            .query(&mut c)
            .unwrap();
    }
    common::wait_streaming(&proxy);
    let s = proxy.status_json();
    assert_eq!(repair_counts(&s).0, 0, "written whole by the primary: {s}");
    common::step(&proxy, "switch");
}

/// The sliding-TTL workload of issue 20 with the three shapes applications use, through
/// the proxy, four clients on the same keys for `secs` seconds:
/// - sessions `sess:*` (`PX 100`) refreshed with `PEXPIRE`, `GETEX … PX` and `SET … KEEPTTL
///   XX`, set again with `PX 100` when they had expired;
/// - counters `cnt:*` incremented by a script doing `INCR` + `EXPIRE NX` (`PEXPIRE` when
///   the key has no TTL: the same on Redis 6.2, which lacks `NX`), a 150 ms window each;
/// - rate windows `rate:<client>:<100 ms slot>`: `INCR`, and `PEXPIRE … 300` when it
///   answered 1.
///
/// `during` runs while the clients do (a move under load). Then [`freeze_and_compare`] over
/// every key the workload touched.
fn sliding_mix(
    proxy: &Proxy,
    primary: &mut redis::Connection,
    other: &mut redis::Connection,
    secs: u64,
    during: &dyn Fn(),
) -> (usize, Vec<String>) {
    const SESSIONS: u64 = 200;
    const COUNTERS: u64 = 40;
    const INCR_NX: &str = "local v = redis.call('INCR', KEYS[1]) \
        if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
        return v";
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let url = proxy.url();
            std::thread::spawn(move || {
                let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
                let started = Instant::now();
                let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ (t + 1);
                let mut n = 0u64;
                let mut windows = std::collections::BTreeSet::new();
                while started.elapsed() < Duration::from_secs(secs) && n < 1_000_000 {
                    n += 1;
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    match n % 5 {
                        0..=2 => {
                            let k = format!("sess:{}", x % SESSIONS);
                            touch_session(&mut c, &k, &format!("v{t}-{n}"), n % 3);
                        }
                        3 => {
                            let _: i64 = redis::cmd("EVAL")
                                .arg(INCR_NX)
                                .arg(1)
                                .arg(format!("cnt:{}", x % COUNTERS))
                                .arg(150)
                                .query(&mut c)
                                .unwrap();
                        }
                        _ => {
                            let slot = started.elapsed().as_millis() / 100;
                            let k = format!("rate:{}:{slot}", x % 3);
                            if redis::cmd("INCR").arg(&k).query::<i64>(&mut c).unwrap() == 1 {
                                let _: i64 = redis::cmd("PEXPIRE")
                                    .arg(&k)
                                    .arg(300)
                                    .query(&mut c)
                                    .unwrap();
                            }
                            windows.insert(k);
                        }
                    }
                }
                windows
            })
        })
        .collect();
    during();
    let mut keys: std::collections::BTreeSet<String> = (0..SESSIONS)
        .map(|i| format!("sess:{i}"))
        .chain((0..COUNTERS).map(|i| format!("cnt:{i}")))
        .collect();
    for t in threads {
        keys.extend(t.join().unwrap());
    }
    let keys: Vec<String> = keys.into_iter().collect();
    freeze_and_compare(proxy, &keys, primary, other)
}

/// The link's repair counts in status: (unrepaired, repairing, repaired, writes that found
/// their key missing, copies).
fn repair_counts(s: &serde_json::Value) -> (u64, u64, u64, u64, u64) {
    // (0 for a field a build without the repair lacks: the test then fails on the keys.)
    let n = |f: &str| s["sync"][f].as_u64().unwrap_or(0);
    (
        n("expired_early_keys"),
        n("expired_early_repairing"),
        n("expired_early_repaired"),
        n("expired_early_writes"),
        n("repair_copies"),
    )
}

/// Switch → rollback → switch → finish between two Redis sides without import mode, with
/// [`sliding_mix`] before the first switch and around every move (the first switch and the
/// rollback made while the clients run: keys still being copied then are placed before the
/// applying link parks), each side on its own clock
/// (`None`: the machine's): every key alive on the primary is equal on the other side once
/// the link caught up (compared with independent clients), no key stays unrepaired, and
/// every move goes through. (Redis 6.2 as a primary propagates relative TTLs, which a clock
/// ahead does not shorten; Redis 8.2 propagates `PEXPIREAT`/`PXAT`, which it does: the
/// stressed direction is from an 8.2 primary into a side ahead of it.)
fn repair_story(source: (&str, Option<&str>), target: (&str, Option<&str>)) {
    let skewed = source.1.is_some() || target.1.is_some();
    let source = SkewedServer::start_clock(source.0, source.1, &[]);
    let target = SkewedServer::start_clock(target.0, target.1, &[]);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    common::wait_streaming(&proxy);
    let (mut copies, mut lost_writes) = (0, 0);
    // (round, move, made while the clients run, primary after it, seconds of load)
    for (round, verb, under_load, primary_is_source, secs) in [
        (0, None, false, true, 2),
        (1, Some("switch"), true, false, 2),
        (2, Some("rollback"), true, true, 2),
        (3, Some("switch"), false, false, 1),
    ] {
        let mv = || {
            if let Some(verb) = verb {
                common::step(&proxy, verb);
            }
        };
        let during = || {
            if under_load {
                std::thread::sleep(Duration::from_millis(secs * 400));
                mv();
            }
        };
        if !under_load {
            mv();
        }
        let (live, missing) = if primary_is_source {
            sliding_mix(
                &proxy,
                &mut source.conn(),
                &mut target.conn(),
                secs,
                &during,
            )
        } else {
            sliding_mix(
                &proxy,
                &mut target.conn(),
                &mut source.conn(),
                secs,
                &during,
            )
        };
        let s = proxy.status_json();
        // Each link's counts (both links in the overlap; the one sync before it).
        let links: Vec<serde_json::Value> = match s["cutover"]["links"].as_array() {
            Some(l) => l.iter().map(|l| serde_json::json!({ "sync": l })).collect(),
            None => vec![s.clone()],
        };
        let (mut found_now, mut made_now) = (0, 0);
        for l in &links {
            let (unrepaired, _, _, found, made) = repair_counts(l);
            assert_eq!(unrepaired, 0, "round {round}: unrepaired keys: {l}");
            found_now += found;
            made_now += made;
        }
        (lost_writes, copies) = (found_now.max(lost_writes), made_now.max(copies));
        eprintln!(
            "round {round} ({verb:?}): {live} live, {} missing; so far {lost_writes} writes found their key missing, {copies} copies",
            missing.len()
        );
        assert!(
            live > 20,
            "round {round}: the workload kept keys alive: {live}"
        );
        assert!(
            missing.is_empty(),
            "round {round}: {} of {live} keys differ on the side the link writes to (primary / other): {:?}\nstatus: {s}",
            missing.len(),
            &missing[..missing.len().min(8)]
        );
    }
    common::step(&proxy, "finish");
    if skewed {
        assert!(
            lost_writes > 0,
            "with the clocks 50 ms apart keys expire early on one side (and are repaired)"
        );
    }
}

const R62: &str = "redis-6.2-server";
const R82: &str = "redis-8.2-server";

#[test]
fn sliding_ttls_are_repaired_between_redis_6_2_and_8_2_on_one_clock() {
    repair_story((R62, None), (R82, None));
}

/// Forward into Redis 6.2 (50 ms ahead of the 8.2 primary).
#[test]
fn sliding_ttls_are_repaired_into_a_redis_6_2_target_50_ms_ahead() {
    repair_story((R82, None), (R62, Some("+0.05")));
}

/// Reverse into Redis 6.2 (the old side, 50 ms ahead of the 8.2 primary after the switch).
#[test]
fn sliding_ttls_are_repaired_into_a_redis_6_2_source_50_ms_ahead_after_the_switch() {
    repair_story((R62, Some("+0.05")), (R82, None));
}

/// Forward into Redis 8.2, 50 ms ahead.
#[test]
fn sliding_ttls_are_repaired_into_a_redis_8_2_target_50_ms_ahead() {
    repair_story((R82, None), (R82, Some("+0.05")));
}

/// Reverse into Redis 8.2: the target 50 ms behind, so the old side is ahead of it.
#[test]
fn sliding_ttls_are_repaired_into_a_redis_8_2_source_ahead_after_the_switch() {
    repair_story((R82, None), (R82, Some("-0.05")));
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
