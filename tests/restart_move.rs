//! A move asked right after a side's server restarted (issue 19): the links' connections to
//! that side are broken and being made again, so the move is refused — and the refusal names
//! the link that is reconnecting and to which side, not a pause limit; asked again once the
//! links stream again, the move goes through.

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, Server, Version, cli, step, wait_streaming};

const AOF: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

/// Restarts `restart` (after a switch), asks `verb` at once and again until it goes through
/// (bounded); returns the refusals seen on the way.
fn move_after_restart(restart_target: bool, verb: &str) -> Vec<String> {
    let mut source = Server::start_with(Version::Redis70, AOF);
    let mut target = Server::start_with(Version::Redis70, AOF);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    wait_streaming(&proxy);
    let mut c = proxy.conn();
    for i in 0..50 {
        let _: i64 = redis::cmd("INCR")
            .arg(format!("n{i}"))
            .query(&mut c)
            .unwrap();
    }
    step(&proxy, "switch");
    for i in 0..50 {
        let _: i64 = redis::cmd("INCR")
            .arg(format!("n{i}"))
            .query(&mut c)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    if restart_target {
        target.restart();
    } else {
        source.restart();
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut refusals = Vec::new();
    loop {
        let (code, _, err) = cli(&proxy, &[verb, "--json"]);
        if code == 0 {
            break;
        }
        eprintln!("{verb} refused: {}", err.trim());
        refusals.push(err.trim().to_string());
        assert!(
            Instant::now() < deadline,
            "{verb} never went through: {refusals:?}\n{}",
            proxy.status_json()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    refusals
}

fn check(refusals: &[String]) {
    for r in refusals {
        assert!(
            !r.contains("pause limit"),
            "a refusal blames the pause limit, not the reconnecting link: {r}"
        );
        assert!(
            r.contains(" link") && r.contains("reconnecting") && r.contains("retry when"),
            "a refusal that does not name the reconnecting link: {r}"
        );
    }
}

#[test]
fn a_rollback_right_after_the_target_restarted_names_the_reconnecting_link() {
    let refusals = move_after_restart(true, "rollback");
    eprintln!("{} refusals: {refusals:?}", refusals.len());
    check(&refusals);
}

#[test]
fn a_rollback_right_after_the_source_restarted_names_the_reconnecting_link() {
    let refusals = move_after_restart(false, "rollback");
    eprintln!("{} refusals: {refusals:?}", refusals.len());
    check(&refusals);
}
