//! The integration-test rig: real servers (`.servers/bin/`), the `cutover` binary, and raw
//! socket helpers.
//!
//! * [`Server`] runs a real Redis/Valkey on a free loopback port in a temporary directory and
//!   kills it when dropped (also while a test panics: the drop runs during unwinding).
//! * [`Proxy`] runs `cutover run` in front of a source URL on free ports, and kills it when
//!   dropped; its log (stderr) is kept in a file and printed when a test fails.
//! * [`Raw`] is a plain `TcpStream` with a RESP frame reader, for byte-exact comparisons.
//!
//! Nothing here skips silently: a missing server binary is a panic telling how to install it.

#![allow(dead_code)]

pub mod cluster;
pub mod faketime;
pub mod links;
pub mod moves;
pub mod paced;
pub mod reshard;
pub mod shards;
pub mod sides;
pub mod sliding;
pub mod stall;
pub mod sync_cluster;

use std::collections::{BTreeMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default bound for anything a test waits for.
pub const TIMEOUT: Duration = Duration::from_secs(10);

// ----- server binaries -----------------------------------------------------------------------

/// `<crate>/.servers/bin`, where `scripts/install-servers.sh` puts the servers.
pub fn servers_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".servers")
        .join("bin")
}

/// Path of a binary in `.servers/bin`; panics (never skips) when it is not installed.
pub fn tool(name: &str) -> PathBuf {
    let path = servers_bin().join(name);
    if !path.exists() {
        panic!(
            "{} is missing: the integration tests need real servers. Run `bash scripts/install-servers.sh` \
             in {} first.",
            path.display(),
            env!("CARGO_MANIFEST_DIR")
        );
    }
    path
}

/// The server flavours the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Redis70,
    Redis62,
    Valkey91,
    /// Redis 8.2 and Valkey 8.1: in `EVERY` (the script moves run every pair), not in `ALL`.
    Redis82,
    Valkey81,
}

impl Version {
    pub const ALL: [Version; 3] = [Version::Redis70, Version::Redis62, Version::Valkey91];

    /// Every server installed in `.servers/bin`.
    pub const EVERY: [Version; 5] = [
        Version::Redis62,
        Version::Redis70,
        Version::Redis82,
        Version::Valkey81,
        Version::Valkey91,
    ];

    pub fn binary(self) -> &'static str {
        match self {
            Version::Redis70 => "redis-7.0-server",
            Version::Redis62 => "redis-6.2-server",
            Version::Valkey91 => "valkey-9.1-server",
            Version::Redis82 => "redis-8.2-server",
            Version::Valkey81 => "valkey-8.1-server",
        }
    }

    /// `SSUBSCRIBE`/`SPUBLISH` (Redis 7.0+).
    pub fn has_sharded_pubsub(self) -> bool {
        self != Version::Redis62
    }

    /// `CLIENT SETINFO` (Redis 7.2+, Valkey).
    pub fn has_client_setinfo(self) -> bool {
        !matches!(self, Version::Redis62 | Version::Redis70)
    }

    /// `--enable-debug-command` exists from 7.0 on; 6.2 always allows `DEBUG`.
    fn debug_flag(self) -> bool {
        self != Version::Redis62
    }
}

// ----- ports ---------------------------------------------------------------------------------

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port nobody listened on a moment ago (bind port 0, release). Never 6379, never
/// the same port twice within this test process. The caller must still cope with losing a
/// race for it (the starters below retry with another port).
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let port = l.local_addr().expect("local addr").port();
        drop(l);
        if port == 6379 {
            continue;
        }
        let mut set = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if set.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// One `PING` on a fresh connection: `Some(first reply line)` once something answers.
fn ping_once(addr: &str) -> Option<String> {
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"PING\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while !buf.ends_with(b"\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&buf).trim_end().to_string())
}

// ----- Server --------------------------------------------------------------------------------

/// A real Redis/Valkey server, killed on drop.
pub struct Server {
    child: Option<Child>,
    version: Version,
    port: u16,
    password: Option<String>,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `version` on a free port with the rig's defaults.
    pub fn start(version: Version) -> Server {
        Server::start_with(version, &[])
    }

    /// Starts `version` with extra config arguments (`["--requirepass", "pw"]`).
    pub fn start_with(version: Version, extra: &[&str]) -> Server {
        let mut last = String::new();
        for _ in 0..8 {
            match Server::spawn(version, free_port(), extra) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("cannot start {}: {last}", version.binary());
    }

    /// Starts a server on a given port (to restart one where a dead one was), retrying for a
    /// few seconds while the port is still taken.
    pub fn start_on_port(version: Version, port: u16, extra: &[&str]) -> Server {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match Server::spawn(version, port, extra) {
                Ok(s) => return s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("retrying {} on port {port}: {e}", version.binary());
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot start {} on port {port}: {e}", version.binary()),
            }
        }
    }

    /// One attempt. `Err` when the port was taken (the caller retries); panics on anything
    /// else, with the server's log.
    fn spawn(version: Version, port: u16, extra: &[&str]) -> Result<Server, String> {
        let bin = tool(version.binary());
        let dir = tempfile::Builder::new()
            .prefix("cutover-it-server-")
            .tempdir()
            .expect("temp dir");
        let log = dir.path().join("server.log");
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--daemonize".into(),
            "no".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--logfile".into(),
            log.display().to_string(),
            // A replica (cutover's links) gets its snapshot at once, not after 5 s.
            "--repl-diskless-sync-delay".into(),
            "0".into(),
        ];
        if version.debug_flag() {
            args.extend(["--enable-debug-command".into(), "local".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let password = extra
            .iter()
            .position(|a| *a == "--requirepass")
            .and_then(|i| extra.get(i + 1))
            .map(|p| p.to_string());
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        let child = Command::new(&bin)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let mut server = Server {
            child: Some(child),
            version,
            port,
            password,
            args,
            dir,
        };
        let addr = server.addr();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                server.child = None;
                let log = server.log();
                if log.contains("Address already in use") || log.contains("in use") {
                    return Err(format!("port {port} taken"));
                }
                panic!(
                    "{} exited ({status}) during start-up; args {:?}; log:\n{}",
                    version.binary(),
                    server.args,
                    tail(&log, 4000)
                );
            }
            match ping_once(&addr) {
                Some(r) if r.starts_with("-LOADING") => {}
                Some(_) => return Ok(server),
                None => {}
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not answer PING on {addr} within {TIMEOUT:?}; log:\n{}",
                    version.binary(),
                    tail(&server.log(), 4000)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://[:pw@]127.0.0.1:PORT`, with the password given by `--requirepass`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis client")
    }

    /// A sync connection straight to the server, with the rig's timeouts.
    pub fn conn(&self) -> redis::Connection {
        connect(&self.client())
    }

    /// The server's log file and anything it printed to stderr.
    pub fn log(&self) -> String {
        let mut s = read_lossy(&self.dir.path().join("stderr.log"));
        s.push_str(&read_lossy(&self.dir.path().join("server.log")));
        s
    }

    /// SIGKILL, like a crash: open connections see a reset/EOF at once.
    /// Sends `signal` (`"STOP"`, `"CONT"`…) to the server process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, then the same server again on the same port, in the same directory and with
    /// the same arguments: what it persisted (with `--appendonly yes`) is loaded again. Returns
    /// once it answers PING with something other than `-LOADING`.
    pub fn restart(&mut self) {
        self.kill();
        let bin = tool(self.version.binary());
        let addr = self.addr();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let stderr = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(self.dir.path().join("stderr.log"))
                .expect("stderr file");
            let child = Command::new(&bin)
                .args(&self.args)
                .current_dir(self.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            self.child = Some(child);
            loop {
                if !self.is_running() {
                    // (The port may still be held for a moment after the kill.)
                    self.child = None;
                    break;
                }
                match ping_once(&addr) {
                    Some(r) if r.starts_with("-LOADING") => {}
                    Some(_) => return,
                    None => {}
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not come back on {addr}; log:\n{}",
                    self.version.binary(),
                    tail(&self.log(), 4000)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                Instant::now() < deadline,
                "{} cannot restart on {addr}; log:\n{}",
                self.version.binary(),
                tail(&self.log(), 4000)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- {} on port {} (log tail) ---\n{}",
                self.version.binary(),
                self.port,
                tail(&self.log(), 2000)
            );
        }
        self.kill();
    }
}

/// A sync connection with the rig's read/write timeouts.
pub fn connect(client: &redis::Client) -> redis::Connection {
    let con = client
        .get_connection_with_timeout(TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot connect to {:?}: {e}", client.get_connection_info()));
    con.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    con.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
    con
}

// ----- Proxy ---------------------------------------------------------------------------------

/// A running `cutover run`, killed on drop.
pub struct Proxy {
    child: Option<Child>,
    proxy_port: u16,
    admin_port: u16,
    metrics_port: u16,
    password: Option<String>,
    user: Option<String>,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the proxy in front of `source_url` with extra `cutover run` arguments
    /// (`["--proxy-password", "secret"]`, `["--config", path]`…), on free ports, and waits
    /// until it serves: a `PING` answered (when it has no password), the admin and metrics
    /// ports accepting.
    pub fn start(source_url: &str, extra: &[&str]) -> Proxy {
        Proxy::start_with_env(source_url, extra, &[])
    }

    /// [`Proxy::start`] with environment variables for `cutover run` (test-only knobs such
    /// as `CUTOVER_TEST_WRITER_CHECK_MS`).
    pub fn start_with_env(source_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut last = String::new();
        for _ in 0..8 {
            match Proxy::spawn(source_url, extra, env) {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("cannot start cutover: {last}");
    }

    fn spawn(source_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<Proxy, String> {
        let dir = tempfile::Builder::new()
            .prefix("cutover-it-proxy-")
            .tempdir()
            .expect("temp dir");
        let (proxy_port, admin_port, metrics_port) = (free_port(), free_port(), free_port());
        let mut args: Vec<String> = vec![
            "run".into(),
            "--source".into(),
            source_url.into(),
            "--proxy-listen".into(),
            format!("127.0.0.1:{proxy_port}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin_port}"),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics_port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let flag = |name: &str| {
            extra
                .iter()
                .position(|a| *a == name)
                .and_then(|i| extra.get(i + 1))
                .map(|v| v.to_string())
        };
        let log = std::fs::File::create(dir.path().join("cutover.log")).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CUTOVER_") {
                cmd.env_remove(k);
            }
        }
        let level =
            std::env::var("CUTOVER_TEST_LOG").unwrap_or_else(|_| "info,cutover=debug".into());
        cmd.envs(env.iter().copied());
        let child = cmd
            .args(&args)
            .env("CUTOVER_LOG", level)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run cutover: {e}"));
        let mut proxy = Proxy {
            child: Some(child),
            proxy_port,
            admin_port,
            metrics_port,
            password: flag("--proxy-password"),
            user: flag("--proxy-user"),
            args,
            dir,
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = proxy
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                proxy.child = None;
                let log = proxy.log();
                if log.contains("Address already in use") || log.contains("address already in use")
                {
                    return Err(format!("a port was taken: {}", log.trim_end()));
                }
                panic!(
                    "cutover exited ({status}) during start-up; args {:?}; log:\n{}",
                    proxy.args,
                    tail(&log, 4000)
                );
            }
            if proxy.ready() {
                return Ok(proxy);
            }
            if Instant::now() > deadline {
                panic!(
                    "cutover did not become ready within {TIMEOUT:?}; args {:?}; log:\n{}",
                    proxy.args,
                    tail(&proxy.log(), 4000)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ready(&self) -> bool {
        let accepts = |port: u16| {
            TcpStream::connect_timeout(
                &format!("127.0.0.1:{port}").parse().expect("addr"),
                Duration::from_millis(200),
            )
            .is_ok()
        };
        if !accepts(self.admin_port) || !accepts(self.metrics_port) {
            return false;
        }
        if self.password.is_some() {
            accepts(self.proxy_port)
        } else {
            ping_once(&self.addr()).is_some()
        }
    }

    pub fn port(&self) -> u16 {
        self.proxy_port
    }

    /// `127.0.0.1:PORT` of the proxy listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.proxy_port)
    }

    pub fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    pub fn metrics_addr(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }

    /// `redis://[user:pw@]127.0.0.1:PORT` with the proxy's own credentials, if any.
    pub fn url(&self) -> String {
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => format!("redis://{u}:{p}@127.0.0.1:{}", self.proxy_port),
            (None, Some(p)) => format!("redis://:{p}@127.0.0.1:{}", self.proxy_port),
            _ => format!("redis://127.0.0.1:{}", self.proxy_port),
        }
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis client")
    }

    /// A sync connection through the proxy, with the rig's timeouts.
    pub fn conn(&self) -> redis::Connection {
        connect(&self.client())
    }

    /// Everything the proxy logged so far (stderr).
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("cutover.log"))
    }

    /// `cutover status --admin … --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["status", "--admin", &self.admin_addr(), "--json"])
            .env_remove("CUTOVER_ADMIN_TOKEN")
            .env_remove("CUTOVER_CONFIG")
            .env_remove("CUTOVER_ADMIN")
            .output()
            .expect("run cutover status");
        assert!(
            out.status.success(),
            "cutover status failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "cutover status --json printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The body of `GET /metrics`.
    pub fn metrics(&self) -> String {
        http_get(&self.metrics_addr(), "/metrics")
    }

    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The proxy process' resident memory (Linux `/proc/PID/status` `VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS in /proc/PID/status")
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            eprintln!(
                "--- cutover on port {} (log tail) ---\n{}",
                self.proxy_port,
                tail(&log, 6000)
            );
            let lines: Vec<&str> = log.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                if l.contains("panicked at") {
                    eprintln!(
                        "--- cutover PANICKED ---\n{}",
                        lines[i..(i + 3).min(lines.len())].join("\n")
                    );
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plain HTTP/1.1 GET; returns the body (panics on a non-200 status).
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read HTTP response");
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "GET {path} from {addr}: {head}"
    );
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ----- raw RESP ------------------------------------------------------------------------------

/// Encodes a command as a RESP array of bulk strings.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(args, &mut out);
    out
}

pub fn encode_into<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Length of the first complete RESP2/RESP3 frame in `buf` (an attribute `|` includes the
/// value it annotates); `Ok(None)` when more bytes are needed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, String> {
    frame_at(buf, 0)
}

fn line_at(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let i = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..i], pos + i + 2))
}

fn int_of(line: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad length {:?}", String::from_utf8_lossy(line)))
}

fn frame_at(buf: &[u8], pos: usize) -> Result<Option<usize>, String> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((line, next)) = line_at(buf, pos + 1) else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Ok(Some(next)),
        b'$' | b'=' | b'!' => {
            let n = int_of(line)?;
            if n < 0 {
                return Ok(Some(next));
            }
            let end = next + n as usize + 2;
            Ok((buf.len() >= end).then_some(end))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = int_of(line)?;
            if n < 0 {
                return Ok(Some(next));
            }
            let count = if matches!(kind, b'%' | b'|') {
                2 * n
            } else {
                n
            };
            let mut at = next;
            for _ in 0..count {
                match frame_at(buf, at)? {
                    Some(e) => at = e,
                    None => return Ok(None),
                }
            }
            if kind == b'|' {
                // The attribute annotates the value that follows it.
                return frame_at(buf, at);
            }
            Ok(Some(at))
        }
        other => Err(format!(
            "not a RESP frame: type byte {:?} in {:?}",
            char::from(other),
            String::from_utf8_lossy(&buf[pos..buf.len().min(pos + 80)])
        )),
    }
}

/// Printable form of RESP bytes for assertion messages.
pub fn show(bytes: &[u8]) -> String {
    let s: String = bytes.escape_ascii().to_string();
    if s.len() > 600 {
        format!("{}… ({} bytes)", &s[..600], bytes.len())
    } else {
        s
    }
}

/// A raw client connection: write bytes, read whole RESP frames.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    start: usize,
    chunk: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        stream.set_write_timeout(Some(TIMEOUT)).expect("timeout");
        Raw {
            stream,
            buf: Vec::new(),
            start: 0,
            chunk: vec![0u8; 256 * 1024],
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
    }

    /// Sends one command (as a RESP array) and reads its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Vec<u8> {
        self.send(&encode(args));
        self.read_reply()
    }

    /// `cmd` for string arguments, reply as (lossy) text.
    pub fn cmd_str(&mut self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.cmd(args)).into_owned()
    }

    /// Reads one complete frame; panics after [`TIMEOUT`] or on EOF.
    pub fn read_reply(&mut self) -> Vec<u8> {
        self.read_reply_within(TIMEOUT)
            .unwrap_or_else(|e| panic!("reading a reply: {e}"))
    }

    pub fn read_replies(&mut self, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|_| self.read_reply()).collect()
    }

    /// One complete frame within `limit`; `Err` says why not (timeout, EOF, garbage).
    pub fn read_reply_within(&mut self, limit: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(end) = frame_len(&self.buf[self.start..])? {
                let frame = self.buf[self.start..self.start + end].to_vec();
                self.start += end;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(frame);
            }
            match self.fill(deadline)? {
                0 => {
                    return Err(format!(
                        "EOF; {} bytes of an incomplete frame: {}",
                        self.buf.len() - self.start,
                        show(&self.buf[self.start..])
                    ));
                }
                _ => continue,
            }
        }
    }

    /// Reads more bytes; `Ok(0)` at EOF, `Err` at the deadline.
    fn fill(&mut self, deadline: Instant) -> Result<usize, String> {
        if self.start > 0 && self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "timed out; {} bytes buffered: {}",
                self.buf.len() - self.start,
                show(&self.buf[self.start..])
            ));
        }
        self.stream
            .set_read_timeout(Some(deadline - now))
            .map_err(|e| e.to_string())?;
        match self.stream.read(&mut self.chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&self.chunk[..n]);
                Ok(n)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(format!(
                    "timed out; {} bytes buffered: {}",
                    self.buf.len() - self.start,
                    show(&self.buf[self.start..])
                ))
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(0),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Exactly `n` raw bytes (not framed) within `limit`.
    pub fn read_exact_within(&mut self, n: usize, limit: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + limit;
        while self.buf.len() - self.start < n {
            if self.fill(deadline)? == 0 {
                return Err(format!(
                    "EOF after {} of {n} bytes",
                    self.buf.len() - self.start
                ));
            }
        }
        let out = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        Ok(out)
    }

    /// Whatever arrives until the peer closes (`true`) or `limit` passes (`false`).
    pub fn read_until_closed(&mut self, limit: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + limit;
        let closed = loop {
            match self.fill(deadline) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(_) => break false,
            }
        };
        let out = self.buf[self.start..].to_vec();
        self.buf.clear();
        self.start = 0;
        (out, closed)
    }

    /// Asserts nothing arrives within `limit` (and the connection stays open).
    pub fn expect_silence(&mut self, limit: Duration) {
        match self.read_reply_within(limit) {
            Ok(frame) => panic!("expected nothing, got {}", show(&frame)),
            Err(e) if e.starts_with("EOF") => panic!("expected nothing, the peer closed: {e}"),
            Err(_) => {}
        }
        assert!(
            self.buf.len() == self.start,
            "unexpected partial bytes: {}",
            show(&self.buf[self.start..])
        );
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Sends `bytes` on a fresh connection and returns what comes back until the peer closes or
/// `limit` passes, plus whether it closed.
pub fn send_and_read_until_closed(addr: &str, bytes: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    let mut raw = Raw::connect(addr);
    raw.send(bytes);
    raw.read_until_closed(limit)
}

/// Sends `bytes` on a fresh connection and reads exactly `n` bytes back within `limit`.
pub fn send_and_read_n(addr: &str, bytes: &[u8], n: usize, limit: Duration) -> Vec<u8> {
    let mut raw = Raw::connect(addr);
    raw.send(bytes);
    raw.read_exact_within(n, limit)
        .unwrap_or_else(|e| panic!("reading {n} bytes from {addr}: {e}"))
}

/// Polls `f` every 50 ms until it returns `Some`, panicking with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `redis-cli` from `.servers/bin` with `args` (and optional stdin); returns
/// (exit success, stdout, stderr). Killed after [`TIMEOUT`].
pub fn redis_cli(args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    let mut child = Command::new(tool("redis-cli"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-cli {args:?} did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.success(),
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

// ----- a scripted fake backend ---------------------------------------------------------------

/// Decodes the first command (a RESP array of bulk strings, or an inline line) in `buf`:
/// `Some((args, bytes used))`.
pub fn decode_command(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    if buf.first() != Some(&b'*') {
        let (line, next) = line_at(buf, 0)?;
        let args = line
            .split(|b| *b == b' ')
            .filter(|a| !a.is_empty())
            .map(|a| a.to_vec())
            .collect();
        return Some((args, next));
    }
    let (n, mut at) = line_at(buf, 1)?;
    let n = int_of(n).ok()?;
    let mut args = Vec::new();
    for _ in 0..n.max(0) {
        if buf.get(at) != Some(&b'$') {
            return None;
        }
        let (len, next) = line_at(buf, at + 1)?;
        let len = int_of(len).ok()? as usize;
        if buf.len() < next + len + 2 {
            return None;
        }
        args.push(buf[next..next + len].to_vec());
        at = next + len + 2;
    }
    Some((args, at))
}

type Handler = dyn Fn(&[Vec<u8>]) -> Vec<Vec<u8>> + Send + Sync;

/// A fake server on a free port: for each command it receives, `handler(args)` returns the
/// reply as pieces, written with a pause of [`FakeServer::PAUSE`] between them (so each piece
/// arrives in its own read on the other side). Stops on drop.
pub struct FakeServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    pub const PAUSE: Duration = Duration::from_millis(200);

    pub fn start(handler: impl Fn(&[Vec<u8>]) -> Vec<Vec<u8>> + Send + Sync + 'static) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake server");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let stop2 = stop.clone();
        let accept = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let mut sock = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let handler = handler.clone();
                let stop = stop2.clone();
                std::thread::spawn(move || {
                    let _ = sock.set_nonblocking(false);
                    let _ = sock.set_nodelay(true);
                    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
                    let mut buf = Vec::new();
                    let mut chunk = vec![0u8; 64 * 1024];
                    while !stop.load(Ordering::Relaxed) {
                        while let Some((args, used)) = decode_command(&buf) {
                            buf.drain(..used);
                            let pieces = handler(&args);
                            let last = pieces.len().saturating_sub(1);
                            for (i, p) in pieces.iter().enumerate() {
                                if sock.write_all(p).is_err() {
                                    return;
                                }
                                if i < last {
                                    std::thread::sleep(FakeServer::PAUSE);
                                }
                            }
                        }
                        match sock.read(&mut chunk) {
                            Ok(0) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        FakeServer {
            port,
            stop,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

// --- the cutover CLI and whole-keyspace comparisons ---

/// Waits (30 s at most) until the proxy's sync streams with no lag.
pub fn wait_streaming(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = proxy.status_json();
        if status["phase"] == "streaming" && status["lag_bytes"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never reached streaming: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the CLI against the proxy's admin listener: (exit code, stdout, stderr).
pub fn cli(proxy: &Proxy, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .args(["--admin", &proxy.admin_addr()])
        .env_remove("CUTOVER_ADMIN_TOKEN")
        .env_remove("CUTOVER_CONFIG")
        .env_remove("CUTOVER_ADMIN")
        .output()
        .expect("run cutover");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cutover <verb> --json`, which must succeed; the report.
pub fn step(proxy: &Proxy, verb: &str) -> serde_json::Value {
    let (code, out, err) = cli(proxy, &[verb, "--json"]);
    assert_eq!(
        code,
        0,
        "cutover {verb} failed: {err}\nproxy log:\n{}",
        tail(&proxy.log(), 3000)
    );
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{verb} printed no JSON ({e}): {out}"))
}

/// Every key of db 0 as (type, canonical value, has TTL), cutover's own keys excepted.
pub fn snapshot(conn: &mut redis::Connection) -> BTreeMap<String, (String, String, bool)> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(conn).unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        if k == "cutover:position" || k == "cutover:switched" {
            continue;
        }
        let ty: String = redis::cmd("TYPE").arg(&k).query(conn).unwrap();
        let value = match ty.as_str() {
            "string" => format!(
                "{:?}",
                redis::cmd("GET")
                    .arg(&k)
                    .query::<Option<String>>(conn)
                    .unwrap()
            ),
            "list" => format!(
                "{:?}",
                redis::cmd("LRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .query::<Vec<String>>(conn)
                    .unwrap()
            ),
            "hash" => format!(
                "{:?}",
                redis::cmd("HGETALL")
                    .arg(&k)
                    .query::<BTreeMap<String, String>>(conn)
                    .unwrap()
            ),
            "set" => {
                let mut m: Vec<String> = redis::cmd("SMEMBERS").arg(&k).query(conn).unwrap();
                m.sort();
                format!("{m:?}")
            }
            "zset" => format!(
                "{:?}",
                redis::cmd("ZRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query::<Vec<String>>(conn)
                    .unwrap()
            ),
            "stream" => format!(
                "{:?}",
                redis::cmd("XRANGE")
                    .arg(&k)
                    .arg("-")
                    .arg("+")
                    .query::<redis::Value>(conn)
                    .unwrap()
            ),
            other => other.to_string(),
        };
        let ttl: i64 = redis::cmd("PTTL").arg(&k).query(conn).unwrap();
        out.insert(k, (ty, value, ttl > 0));
    }
    out
}

/// Up to `max` differences between two [`snapshot`]s, described.
pub fn differences(
    a: &BTreeMap<String, (String, String, bool)>,
    b: &BTreeMap<String, (String, String, bool)>,
    max: usize,
) -> Vec<String> {
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: source {v:?} target {:?}", b.get(k)))
        .chain(
            b.keys()
                .filter(|k| !a.contains_key(*k))
                .map(|k| format!("{k}: only on the target {:?}", b.get(k))),
        )
        .take(max)
        .collect()
}
