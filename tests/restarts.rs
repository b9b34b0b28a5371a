//! The restart matrix (issue 19): SIGKILL of `cutover run`, of the source's server or of the
//! target's, before, during and after a move (a switch, and a rollback after a switch), under
//! clients that write the same keys in databases 0, 3 and 9 (`INCR` counters, `RPUSH` lists
//! of unique elements). A killed server is restarted with its data (`appendonly`, `fsync`
//! always). Each case ends in one of two outcomes, both checked:
//! - a correct state: the primary holds every acknowledged write exactly once (a write whose
//!   reply was lost in the kill at most once), and the other side is a key-by-key copy of it
//!   in every database (compared with an independent client);
//! - or a clear, reported refusal: a restarted `cutover run` that will not start (and says
//!   why), or a status that says the rollback is unsafe and why — then the primary still
//!   holds every acknowledged write exactly once.
//!
//! `cargo test` runs a few cases; `CUTOVER_RESTARTS_FULL=1` the whole matrix
//! ([`full_matrix`]).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::paced::{LoadShared, Paced, pause_point};
use common::{Proxy, Server, Version, cli, tail, wait_streaming};

const DBS: [u64; 3] = [0, 3, 9];
const WRITERS: usize = 4;
const AOF: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kill {
    /// `cutover run` (restarted with the same arguments).
    Run,
    Source,
    Target,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum When {
    Before,
    During,
    After,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Move {
    Switch,
    /// A switch, then the rollback the kill is timed against.
    Rollback,
}

/// What the clients know of their writes: per database, the counter of each writer
/// (acknowledged, outcome unknown) and the list elements (acknowledged, outcome unknown).
#[derive(Default)]
struct Ledger {
    counters: BTreeMap<(u64, usize), (u64, u64)>,
    pushed: BTreeMap<u64, (Vec<String>, Vec<String>)>,
}

struct Load {
    paced: Paced,
    /// Where the clients connect (the proxy; changed when `cutover run` is restarted).
    url: Arc<Mutex<String>>,
    ledger: Arc<Mutex<Ledger>>,
}

impl Load {
    fn start(url: String) -> Load {
        let url = Arc::new(Mutex::new(url));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let mut paced = Paced::new();
        for w in 0..WRITERS {
            let (u, l) = (url.clone(), ledger.clone());
            paced.spawn(move |shared| writer(w, &u, &l, shared));
        }
        Load { paced, url, ledger }
    }

    fn point_at(&self, url: String) {
        *self.url.lock().unwrap() = url;
    }
}

/// Writes through whatever `url` says: `INCR c:<w>` and `RPUSH l <w>:<i>` in turn in each
/// database (one connection per database, reconnected after an error: an error leaves the
/// write's outcome unknown).
fn writer(w: usize, url: &Mutex<String>, ledger: &Mutex<Ledger>, shared: &LoadShared) {
    let mut conns: BTreeMap<u64, (String, redis::Connection)> = BTreeMap::new();
    let started = Instant::now();
    let mut i = 0u64;
    while shared.running(started, i) {
        pause_point(shared);
        i += 1;
        let db = DBS[(i as usize) % DBS.len()];
        let want = url.lock().unwrap().clone();
        if conns.get(&db).is_none_or(|(u, _)| *u != want) {
            conns.remove(&db);
            let client = redis::Client::open(format!("{want}/{db}")).unwrap();
            match client.get_connection_with_timeout(Duration::from_secs(2)) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    conns.insert(db, (want, c));
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            }
        }
        let (_, c) = conns.get_mut(&db).unwrap();
        let push = i % 2 == 0;
        let tag = format!("{w}:{i}");
        let r = if push {
            redis::cmd("RPUSH").arg("l").arg(&tag).query::<i64>(c)
        } else {
            redis::cmd("INCR").arg(format!("c:{w}")).query::<i64>(c)
        };
        let mut l = ledger.lock().unwrap();
        let ok = r.is_ok();
        if push {
            let (acked, unknown) = l.pushed.entry(db).or_default();
            if ok { acked } else { unknown }.push(tag);
        } else {
            let (acked, unknown) = l.counters.entry((db, w)).or_default();
            *if ok { acked } else { unknown } += 1;
        }
        drop(l);
        if let Err(e) = r {
            // (Expected while a side or the proxy is down: the outcome is unknown.)
            shared.error(format!("writer {w} db {db}: {e}"));
            conns.remove(&db);
            std::thread::sleep(Duration::from_millis(20));
        }
        shared.ops.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn db_conn(server: &Server, db: u64) -> redis::Connection {
    common::connect(&redis::Client::open(format!("{}/{db}", server.url())).unwrap())
}

/// Every acknowledged write is on `primary` exactly once, every write of unknown outcome at
/// most once, and nothing else.
fn exactly_once(primary: &Server, ledger: &Ledger, label: &str) {
    for ((db, w), (acked, unknown)) in &ledger.counters {
        let v: Option<u64> = redis::cmd("GET")
            .arg(format!("c:{w}"))
            .query(&mut db_conn(primary, *db))
            .unwrap();
        let v = v.unwrap_or(0);
        assert!(
            *acked <= v && v <= acked + unknown,
            "{label}: db {db} c:{w} = {v}, {acked} acknowledged INCRs, {unknown} unknown"
        );
    }
    for (db, (acked, unknown)) in &ledger.pushed {
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg("l")
            .arg(0)
            .arg(-1)
            .query(&mut db_conn(primary, *db))
            .unwrap();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &list {
            *seen.entry(e.as_str()).or_default() += 1;
        }
        for a in acked {
            assert_eq!(
                seen.get(a.as_str()).copied().unwrap_or(0),
                1,
                "{label}: db {db}: the acknowledged RPUSH {a} is in the list once"
            );
        }
        for (e, n) in &seen {
            assert!(
                *n == 1 && (acked.iter().any(|a| a == e) || unknown.iter().any(|u| u == e)),
                "{label}: db {db}: {e} is in the list {n} times, and was {} by a client",
                if unknown.iter().any(|u| u == e) {
                    "pushed (outcome unknown)"
                } else {
                    "never acknowledged"
                }
            );
        }
    }
}

/// The differences between the sides in every database (empty: equal).
fn differ(source: &Server, target: &Server) -> Vec<String> {
    let mut all = Vec::new();
    for db in DBS {
        let a = common::snapshot(&mut db_conn(source, db));
        let b = common::snapshot(&mut db_conn(target, db));
        for d in common::differences(&a, &b, 3) {
            all.push(format!("db {db}: {d}"));
        }
    }
    all
}

/// A `cutover run` restarted after a SIGKILL: it serves, or it refused to start (its
/// message).
enum Restarted {
    Serving(Proxy),
    Refused(String),
}

/// Starts `cutover run` again with the same sides; one that exits at start is a refusal
/// (`Proxy::start` panics with its log then).
fn restart_run(source: &Server, target: &Server) -> Restarted {
    let (s, t) = (source.url(), target.url());
    match std::panic::catch_unwind(move || Proxy::start(&s, &["--target", &t])) {
        Ok(p) => Restarted::Serving(p),
        Err(e) => Restarted::Refused(
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        ),
    }
}

/// `cutover <verb>` until it goes through (a move refused while a side recovers is asked
/// again; bounded): the refusals seen on the way.
fn move_until_done(proxy: &Proxy, verb: &str, label: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut refusals = Vec::new();
    loop {
        let (code, _, err) = cli(proxy, &[verb, "--json"]);
        if code == 0 {
            return refusals;
        }
        assert!(
            !err.trim().is_empty(),
            "{label}: {verb} refused without a reason"
        );
        refusals.push(err.trim().to_string());
        assert!(
            Instant::now() < deadline,
            "{label}: {verb} never went through: {refusals:?}\nstatus {}\nproxy log:\n{}",
            proxy.status_json(),
            tail(&proxy.log(), 3000)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One case of the matrix.
fn case(kill: Kill, when: When, mv: Move) {
    let label = format!("kill {kill:?} {when:?} the {mv:?}");
    let mut source = Server::start_with(Version::Redis70, AOF);
    let mut target = Server::start_with(Version::Redis70, AOF);
    let mut proxy = Some(Proxy::start(&source.url(), &["--target", &target.url()]));
    wait_streaming(proxy.as_ref().unwrap());
    let load = Load::start(proxy.as_ref().unwrap().url());
    std::thread::sleep(Duration::from_millis(800));
    if mv == Move::Rollback {
        // (A move on a loaded machine may pass the pause limit once: asked again.)
        move_until_done(proxy.as_ref().unwrap(), "switch", &label);
        std::thread::sleep(Duration::from_millis(800));
    }
    let verb = match mv {
        Move::Switch => "switch",
        Move::Rollback => "rollback",
    };
    let refusal: Option<String>;
    // The primary just before the kill (what a refused restart must name, unless the kill
    // fell inside the move).
    let primary_before = |proxy: &Option<Proxy>| {
        proxy.as_ref().map_or_else(String::new, |p| {
            p.status_json()["primary"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
    };
    let mut primary_at_kill = String::new();
    let do_kill = |proxy: &mut Option<Proxy>, source: &mut Server, target: &mut Server| {
        match kill {
            Kill::Source => source.restart(),
            Kill::Target => target.restart(),
            Kill::Run => {
                drop(proxy.take()); // SIGKILL
                match restart_run(source, target) {
                    Restarted::Serving(p) => {
                        load.point_at(p.url());
                        *proxy = Some(p);
                    }
                    Restarted::Refused(why) => return Some(why),
                }
            }
        }
        None
    };
    let moved;
    match when {
        When::Before => {
            primary_at_kill = primary_before(&proxy);
            refusal = do_kill(&mut proxy, &mut source, &mut target);
            moved = proxy.is_some();
            if let Some(p) = &proxy {
                std::thread::sleep(Duration::from_millis(500));
                let r = move_until_done(p, verb, &label);
                eprintln!("{label}: refused on the way: {r:?}");
            }
        }
        When::During => {
            let p = proxy.as_ref().unwrap();
            let admin = p.admin_addr();
            // The window is widened: the old primary takes no writes for 600 ms (`CLIENT
            // PAUSE … WRITE`), so the move, allowed a 2 s pause, holds every client command
            // for that long (commands in flight on the old side, then the follower's first
            // write): the kill 250 ms after the move was asked for lands inside the barrier.
            let old = if mv == Move::Switch { &source } else { &target };
            let _: () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(600)
                .arg("WRITE")
                .query(&mut old.conn())
                .unwrap();
            let mover = std::thread::spawn(move || {
                let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
                    .args([verb, "--json", "--max-pause-ms", "2000", "--admin", &admin])
                    .output()
                    .unwrap();
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            });
            std::thread::sleep(Duration::from_millis(250));
            refusal = do_kill(&mut proxy, &mut source, &mut target);
            let (code, err) = mover.join().unwrap();
            eprintln!(
                "{label}: the {verb} during the kill: exit {code:?} {}",
                err.trim()
            );
            if code != Some(0) {
                assert!(!err.trim().is_empty(), "{label}: a failed {verb} says why");
            }
            moved = code == Some(0);
        }
        When::After => {
            move_until_done(proxy.as_ref().unwrap(), verb, &label);
            moved = true;
            std::thread::sleep(Duration::from_millis(300));
            primary_at_kill = primary_before(&proxy);
            refusal = do_kill(&mut proxy, &mut source, &mut target);
        }
    }
    // The load goes on a moment after the recovery, then is held for the checks.
    std::thread::sleep(Duration::from_millis(800));
    load.paced.hold();
    let ledger = load.ledger.lock().unwrap();
    let Some(proxy) = proxy else {
        // `cutover run` refused to start again: it says why and which side is the primary
        // (the one it was at the kill), and that side holds every acknowledged write exactly
        // once.
        let why = refusal.unwrap();
        assert!(why.contains("cutover:switched"), "{label}: {why}");
        let named = if why.contains("the source is the primary") {
            "source"
        } else if why.contains("the target is the primary") {
            "target"
        } else {
            panic!("{label}: the refusal names no primary: {why}")
        };
        if when != When::During {
            assert_eq!(
                named, primary_at_kill,
                "{label}: the refusal names the primary: {why}"
            );
        }
        exactly_once(
            if named == "source" { &source } else { &target },
            &ledger,
            &label,
        );
        let d = differ(&source, &target);
        eprintln!(
            "{label}: `cutover run` refused to start again (the {named} is the primary); the other side {}",
            if d.is_empty() {
                "is an exact copy".to_string()
            } else {
                format!("differs: {d:?}")
            }
        );
        drop(ledger);
        load.paced.finish();
        return;
    };
    // Wait (bounded) for the sides to converge, or for a reported reason why not.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = proxy.status_json();
        let caught_up = if status["cutover"]["phase"].is_null() {
            status["phase"] == "streaming" && status["lag_bytes"] == 0
        } else {
            status["rollback_safe"] == true
        };
        if caught_up && differ(&source, &target).is_empty() {
            break status;
        }
        if Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let primary = if status["primary"] == "target" {
        &target
    } else {
        &source
    };
    exactly_once(primary, &ledger, &label);
    let d = differ(&source, &target);
    if d.is_empty() {
        eprintln!(
            "{label}: equal, primary {}, moved: {moved}",
            status["primary"]
        );
    } else {
        let reason = status["cutover"]["rollback_unsafe_reason"]
            .as_str()
            .unwrap_or_default();
        assert!(
            status["rollback_safe"] == false && !reason.is_empty(),
            "{label}: the sides differ and nothing says so: {d:?}\nstatus {status}\nproxy log:\n{}",
            tail(&proxy.log(), 4000)
        );
        eprintln!("{label}: differ, reported: {reason}");
    }
    drop(ledger);
    load.paced.finish();
}

#[test]
fn the_target_restarted_during_the_overlap() {
    case(Kill::Target, When::After, Move::Switch);
}

#[test]
fn cutover_run_killed_after_a_switch() {
    case(Kill::Run, When::After, Move::Switch);
}

#[test]
fn the_source_killed_during_a_switch() {
    case(Kill::Source, When::During, Move::Switch);
}

/// After a rollback the source is the primary: a restarted `cutover run` refuses and says so
/// (it said the target was the primary, and to point the applications at it).
#[test]
fn cutover_run_killed_after_a_rollback() {
    case(Kill::Run, When::After, Move::Rollback);
}

#[test]
fn the_target_killed_before_a_rollback() {
    case(Kill::Target, When::Before, Move::Rollback);
}

/// Every case (`CUTOVER_RESTARTS_FULL=1`; a few minutes).
#[test]
fn full_matrix() {
    if std::env::var("CUTOVER_RESTARTS_FULL").is_err() {
        eprintln!("the full restart matrix runs with CUTOVER_RESTARTS_FULL=1");
        return;
    }
    let mut failed = Vec::new();
    for mv in [Move::Switch, Move::Rollback] {
        for kill in [Kill::Run, Kill::Source, Kill::Target] {
            for when in [When::Before, When::During, When::After] {
                eprintln!("--- kill {kill:?} {when:?} the {mv:?}");
                // (Every case runs; the failures are listed at the end.)
                if std::panic::catch_unwind(|| case(kill, when, mv)).is_err() {
                    failed.push(format!("kill {kill:?} {when:?} the {mv:?}"));
                }
            }
        }
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}
