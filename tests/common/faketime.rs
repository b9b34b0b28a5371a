//! A server whose clock is off: started under libfaketime (Debian package `faketime`,
//! installed by `scripts/install-servers.sh`). Valkey's libc build and Redis 6.2 work with
//! it; Redis 7.0's jemalloc build clashes with it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// libfaketime's library (a missing one is a failure, never a skip).
pub fn libfaketime() -> PathBuf {
    for dir in [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib/faketime",
    ] {
        let p = PathBuf::from(dir).join("libfaketime.so.1");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "libfaketime.so.1 not found: run scripts/install-servers.sh (it installs the faketime package)"
    );
}

/// A server started with `FAKETIME=<offset>` (`"+0.05"`: 50 ms ahead); stopped on drop.
pub struct SkewedServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl SkewedServer {
    pub fn start(binary: &str, offset: &str, extra: &[&str]) -> SkewedServer {
        Self::start_clock(binary, Some(offset), extra)
    }

    /// `offset` `None`: the same server on the machine's own clock (no libfaketime).
    pub fn start_clock(binary: &str, offset: Option<&str>, extra: &[&str]) -> SkewedServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let mut cmd = Command::new(super::tool(binary));
        if let Some(offset) = offset {
            cmd.env("LD_PRELOAD", libfaketime())
                .env("FAKETIME", offset)
                .env("FAKETIME_DONT_RESET", "1");
        }
        let child = cmd
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args([
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
            ])
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let s = SkewedServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = redis::Client::open(s.url()).and_then(|c| c.get_connection())
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{binary} under faketime did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for SkewedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
