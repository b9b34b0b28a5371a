//! `cutover status --watch`: without a terminal, one status per second separated by lines
//! (the snapshot's progress bar and the lag first); `--count` bounds it; an admin listener
//! that goes away ends it with exit code 2 and the error.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proxy, Server, Version};

fn watch(proxy: &Proxy, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.args(["status", "--watch", "--admin", &proxy.admin_addr()])
        .args(extra)
        .env_remove("CUTOVER_ADMIN_TOKEN")
        .env_remove("CUTOVER_CONFIG")
        .env_remove("CUTOVER_ADMIN")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn status_watch_redraws_every_second_and_ends_with_the_admin_listener() {
    let source = Server::start(Version::Redis70);
    let target = Server::start(Version::Redis70);
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);

    let started = Instant::now();
    let out = watch(&proxy, &["--count", "3"]).output().expect("run");
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.matches("\n--- 127.0.0.1:").count() + usize::from(text.starts_with("--- ")),
        3,
        "{text}"
    );
    assert_eq!(text.matches("snapshot  [").count(), 3, "{text}");
    assert_eq!(
        text.matches("\nlag ").count(),
        6,
        "two links, three times: {text}"
    );
    assert_eq!(text.matches("phase:").count(), 3, "{text}");
    assert!(
        !text.contains('\x1b'),
        "no escape codes without a terminal: {text:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(8),
        "3 redraws a second apart took {elapsed:?}"
    );

    // --json: one object per line.
    let out = watch(&proxy, &["--json", "--count", "2"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(docs.len(), 2, "{text}");
    assert!(docs.iter().all(|d| d["phase"].is_string()), "{text}");

    // The admin listener goes away: the watch ends (exit 2) with the error, within a bound.
    let mut child = watch(&proxy, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the watch ended early"
    );
    let pid = proxy.pid();
    let killed = Command::new("kill")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the watch did not end within 10 s of the admin listener going away");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("admin listener"), "{err}");
}
