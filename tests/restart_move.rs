//! A move asked right after a side's server restarted (issue 19): the links' connections to
//! that side are broken and being made again, so the move is refused — and the refusal names
//! the link that is reconnecting and to which side, not a pause limit; asked again once the
//! links stream again, the move goes through. A refused move is refused before it holds any
//! client: at once, not at the pause limit (a link whose connection to the restarted side is
//! dead is noticed before the pause), and a client pinging through the proxy meanwhile sees
//! no stall.

mod common;

use std::time::{Duration, Instant};

use common::sides::{counters_then_switch, incr_counters};
use common::stall::longest_ping_during;
use common::{Proxy, Server, Version, cli};

/// The pause limit of the moves here: long, so that a move that holds the clients up to it
/// shows (a refusal must come well before it, and no ping may wait near it).
const PAUSE_MS: u64 = 3000;
/// A refusal, or a ping during a move, must take less than this.
const QUICK: Duration = Duration::from_millis(600);

const AOF: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

/// Restarts `restart` (after a switch), asks `verb` at once and again until it goes through
/// (bounded); returns the refusals seen on the way.
fn move_after_restart(restart_target: bool, verb: &str, env: &[(&str, &str)]) -> Vec<String> {
    let mut source = Server::start_with(Version::Redis70, AOF);
    let mut target = Server::start_with(Version::Redis70, AOF);
    let proxy = Proxy::start_with_env(&source.url(), &["--target", &target.url()], env);
    let mut c = counters_then_switch(&proxy);
    incr_counters(&mut c, 50);
    std::thread::sleep(Duration::from_millis(300));
    if restart_target {
        target.restart();
    } else {
        source.restart();
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut refusals = Vec::new();
    let pause = PAUSE_MS.to_string();
    loop {
        let asked = Instant::now();
        let ((code, _, err), longest_ping) = longest_ping_during(&proxy, || {
            cli(&proxy, &[verb, "--json", "--max-pause-ms", &pause])
        });
        let took = asked.elapsed();
        eprintln!(
            "{verb}: exit {code} after {took:?}, longest ping {longest_ping:?}: {}",
            err.trim()
        );
        assert!(
            longest_ping < QUICK,
            "a client through the proxy waited {longest_ping:?} during the {verb} (pause limit {PAUSE_MS} ms): {}",
            err.trim()
        );
        if code == 0 {
            break;
        }
        assert!(
            took < QUICK,
            "the {verb} was refused only after {took:?} (pause limit {PAUSE_MS} ms): it held the clients first: {}",
            err.trim()
        );
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
    let refusals = move_after_restart(true, "rollback", &[]);
    eprintln!("{} refusals: {refusals:?}", refusals.len());
    check(&refusals);
}

#[test]
fn a_rollback_right_after_the_source_restarted_names_the_reconnecting_link() {
    let refusals = move_after_restart(false, "rollback", &[]);
    eprintln!("{} refusals: {refusals:?}", refusals.len());
    check(&refusals);
}

/// The links' own check of an idle writer is slowed down (every 8 s, a test-only knob), so
/// that right after the target restarted only the move's check sees that the following
/// link's connection to it is dead (the target's `run_id` changed since the link
/// connected): refused at once, naming the link and the restart, no client held; once the
/// link noticed and connected again, the move goes through.
#[test]
fn a_rollback_before_the_link_noticed_the_restart_is_refused_before_the_pause() {
    let refusals = move_after_restart(
        true,
        "rollback",
        &[("CUTOVER_TEST_WRITER_CHECK_MS", "8000")],
    );
    eprintln!("{} refusals: {refusals:?}", refusals.len());
    check(&refusals);
    assert!(
        refusals.iter().any(|r| r.contains(
            "the forward link's connection to the target was made before the target restarted"
        )),
        "no refusal came from the move's own check of the link's connection: {refusals:?}"
    );
}
