//! TLS to the source and the target (issue 14): real Redis 7.0 servers with a `tls-port`,
//! certificates generated here with `rcgen` (a CA, server certificates for 127.0.0.1 and for
//! `redis.test`, a client certificate, and a second CA nobody uses), and an independent
//! client (the `redis` crate over `rediss://`) to check the data.
//!
//! The servers keep their plain port too (the rig's readiness check pings it); every
//! connection `cutover` makes in these tests goes to the TLS port.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Server, Version, free_port, tail};
use cutover::client::{self, ClientError, Endpoint};
use cutover::config::{RedisUrl, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The certificates of a test, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = p.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(p, key))
        };
        let (ca_pem, issuer) = ca("cutover test CA");
        let (other_pem, _) = ca("some other CA");
        write("ca.pem", ca_pem);
        write("other-ca.pem", other_pem);
        let leaf = |names: &[&str], ip: bool, client: bool| {
            let key = KeyPair::generate().unwrap();
            let mut p =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            if ip {
                p.subject_alt_names
                    .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            }
            p.distinguished_name
                .push(DnType::CommonName, names.first().copied().unwrap_or("ip"));
            p.extended_key_usages = vec![if client {
                ExtendedKeyUsagePurpose::ClientAuth
            } else {
                ExtendedKeyUsagePurpose::ServerAuth
            }];
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (c, k) = leaf(&["localhost"], true, false);
        write("server.pem", c);
        write("server.key", k);
        let (c, k) = leaf(&["redis.test"], false, false);
        write("named.pem", c);
        write("named.key", k);
        let (c, k) = leaf(&["cutover-client"], false, true);
        write("client.pem", c);
        write("client.key", k);
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn ca(&self) -> String {
        self.path("ca.pem")
    }
}

/// A Redis 7.0 with a TLS port (certificate `cert`.pem/.key of `pki`), and whether it wants
/// client certificates.
struct TlsServer {
    server: Server,
    tls_port: u16,
}

impl TlsServer {
    fn start(pki: &Pki, cert: &str, auth_clients: bool) -> TlsServer {
        let tls_port = free_port();
        let args = [
            "--tls-port".to_string(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            pki.path(&format!("{cert}.pem")),
            "--tls-key-file".into(),
            pki.path(&format!("{cert}.key")),
            "--tls-ca-cert-file".into(),
            pki.ca(),
            "--tls-auth-clients".into(),
            if auth_clients { "yes" } else { "no" }.into(),
            "--tls-replication".into(),
            "no".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_with(Version::Redis70, &args);
        TlsServer { server, tls_port }
    }

    /// `rediss://127.0.0.1:TLS_PORT`.
    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// An independent client over TLS (the `redis` crate, trusting the test CA).
    fn conn(&self, pki: &Pki) -> redis::Connection {
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(pki.ca()).unwrap()),
        };
        let client = redis::Client::build_with_tls(self.url(), certs).unwrap();
        common::connect(&client)
    }
}

fn cutover() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cutover"));
    for var in [
        "CUTOVER_CONFIG",
        "CUTOVER_SOURCE_URL",
        "CUTOVER_TARGET_URL",
        "CUTOVER_ADMIN_TOKEN",
    ] {
        c.env_remove(var);
    }
    c
}

/// Runs `cmd`, killing it if it is not done within `limit` (then the test fails).
fn run_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}; stderr:\n{}",
                tail(&String::from_utf8_lossy(&out.stderr), 3000)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn populate(conn: &mut redis::Connection, n: usize) {
    for i in 0..n {
        let _: () = redis::cmd("SET")
            .arg(format!("k:{i}"))
            .arg(format!("v{i}"))
            .query(conn)
            .unwrap();
    }
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("x")
        .query(conn)
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg("l")
        .arg(&["a", "b", "c"])
        .query(conn)
        .unwrap();
}

fn dbsize(conn: &mut redis::Connection) -> i64 {
    redis::cmd("DBSIZE").query(conn).unwrap()
}

/// `cutover sync --once` from a TLS source into a TLS target with mutual TLS on the target,
/// then `cutover verify` over TLS: the data arrives and compares equal.
#[test]
fn sync_and_verify_over_tls_with_mutual_tls() {
    let pki = Pki::new();
    let source = TlsServer::start(&pki, "server", false);
    let target = TlsServer::start(&pki, "server", true);
    populate(&mut source.conn(&pki), 200);
    let mut cmd = cutover();
    cmd.args(["sync", "--once", "--quiet", "--timeout-secs", "10"])
        .args(["--source", &source.url(), "--source-tls-ca-file", &pki.ca()])
        .args(["--target", &target.url(), "--target-tls-ca-file", &pki.ca()])
        .args(["--target-tls-cert-file", &pki.path("client.pem")])
        .args(["--target-tls-key-file", &pki.path("client.key")]);
    let out = run_within(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "sync failed: {}", stderr(&out));
    // The target wants client certificates: check it with the plain port.
    let mut dst = target.server.conn();
    let v: String = redis::cmd("GET").arg("k:7").query(&mut dst).unwrap();
    assert_eq!(v, "v7");
    let l: Vec<String> = redis::cmd("LRANGE")
        .arg("l")
        .arg(0)
        .arg(-1)
        .query(&mut dst)
        .unwrap();
    assert_eq!(l, ["a", "b", "c"]);

    // verify over TLS, with the CA from the environment for the source.
    let mut cmd = cutover();
    cmd.args(["verify", "--rounds", "0", "--quiet", "--timeout-secs", "10"])
        .args(["--source", &source.url()])
        .env("CUTOVER_SOURCE_TLS_CA_FILE", pki.ca())
        .args(["--target", &target.url(), "--target-tls-ca-file", &pki.ca()])
        .args(["--target-tls-cert-file", &pki.path("client.pem")])
        .args(["--target-tls-key-file", &pki.path("client.key")]);
    let out = run_within(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "verify failed: {}", stderr(&out));
    // And verify finds a difference over TLS too (it is not vacuous).
    let _: () = redis::cmd("SET")
        .arg("k:7")
        .arg("changed")
        .query(&mut dst)
        .unwrap();
    let mut cmd = cutover();
    cmd.args(["verify", "--rounds", "0", "--quiet", "--timeout-secs", "10"])
        .args(["--source", &format!("{}/#insecure", source.url())])
        .args(["--target", &target.url(), "--target-tls-ca-file", &pki.ca()])
        .args(["--target-tls-cert-file", &pki.path("client.pem")])
        .args(["--target-tls-key-file", &pki.path("client.key")]);
    let out = run_within(cmd, Duration::from_secs(60));
    assert!(!out.status.success(), "verify missed a difference");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(text.contains("k:7"), "{text}");
}

/// A TLS Redis 7.0 source into a plain Redis 6.2 target (6.2 here has no TLS).
#[test]
fn tls_source_into_plain_redis62() {
    let pki = Pki::new();
    let source = TlsServer::start(&pki, "server", false);
    let target = Server::start(Version::Redis62);
    populate(&mut source.conn(&pki), 100);
    let mut cmd = cutover();
    cmd.args(["sync", "--once", "--quiet", "--timeout-secs", "10"])
        .args(["--source", &source.url(), "--source-tls-ca-file", &pki.ca()])
        .args(["--target", &target.url()]);
    let out = run_within(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "sync failed: {}", stderr(&out));
    let mut dst = target.conn();
    assert_eq!(
        dbsize(&mut dst),
        102 + 1,
        "100 strings, h, l and the position"
    );
    let v: String = redis::cmd("HGET")
        .arg("h")
        .arg("f")
        .query(&mut dst)
        .unwrap();
    assert_eq!(v, "x");
}

// ----- failures --------------------------------------------------------------------------

fn endpoint(url: &str, tls: TlsOptions) -> Endpoint {
    Endpoint::new(&RedisUrl::parse_with_tls(url, &tls).unwrap()).unwrap()
}

fn ca_opts(ca: &str) -> TlsOptions {
    TlsOptions {
        ca_file: Some(ca.to_string()),
        ..TlsOptions::default()
    }
}

/// Connects both ways (blocking and async) and returns the blocking error's text, after
/// checking both fail quickly, naming the host.
fn connect_error(ep: &Endpoint) -> String {
    let text = blocking_error(ep);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let asynchronous = match rt.block_on(client::connect(ep, Duration::from_secs(3))) {
        Ok(_) => panic!("{ep}: connected (async)"),
        Err(e) => e,
    };
    assert!(
        asynchronous.to_string().contains("127.0.0.1"),
        "{asynchronous}"
    );
    text
}

/// The blocking connection's error (it always makes a round trip at login).
fn blocking_error(ep: &Endpoint) -> String {
    let started = Instant::now();
    let blocking = match client::connect_blocking(ep, Duration::from_secs(3)) {
        Ok(_) => panic!("{ep}: connected"),
        Err(e) => e,
    };
    assert!(started.elapsed() < Duration::from_secs(4), "too slow");
    let text = blocking.to_string();
    eprintln!("{text}");
    assert!(text.contains("127.0.0.1"), "the host is named: {text}");
    text
}

#[test]
fn tls_failures_are_clear() {
    let pki = Pki::new();
    let plain_ca = TlsServer::start(&pki, "server", false);
    let named = TlsServer::start(&pki, "named", false);
    let mutual = TlsServer::start(&pki, "server", true);

    // A CA that did not sign the server's certificate.
    let e = connect_error(&endpoint(
        &plain_ca.url(),
        ca_opts(&pki.path("other-ca.pem")),
    ));
    assert!(e.contains("unknown CA") && e.contains("ca_file"), "{e}");
    let err = client::connect_blocking(
        &endpoint(&plain_ca.url(), ca_opts(&pki.path("other-ca.pem"))),
        Duration::from_secs(3),
    )
    .err()
    .unwrap();
    assert!(!err.retryable(), "a wrong CA stays wrong: {err}");

    // A certificate for redis.test reached by 127.0.0.1: a name mismatch that suggests
    // server_name; with server_name = redis.test it connects; a wrong server_name is named.
    let e = connect_error(&endpoint(&named.url(), ca_opts(&pki.ca())));
    assert!(
        e.contains("name mismatch") && e.contains("server_name"),
        "{e}"
    );
    let good = TlsOptions {
        server_name: Some("redis.test".into()),
        ..ca_opts(&pki.ca())
    };
    let mut c = client::connect_blocking(&endpoint(&named.url(), good), Duration::from_secs(3))
        .expect("server_name = redis.test verifies");
    assert_eq!(c.call(&[b"PING"]).unwrap(), b"+PONG\r\n");
    let wrong = TlsOptions {
        server_name: Some("other.test".into()),
        ..ca_opts(&pki.ca())
    };
    let e = connect_error(&endpoint(&named.url(), wrong));
    assert!(
        e.contains("name mismatch") && e.contains("other.test"),
        "{e}"
    );
    // insecure skips verification (and #insecure means the same).
    let insecure = endpoint(&format!("{}/#insecure", named.url()), TlsOptions::default());
    assert!(insecure.is_insecure());
    client::connect_blocking(&insecure, Duration::from_secs(3)).expect("insecure connects");

    // tls-auth-clients yes: without a client certificate, a clear request for one; with it,
    // a connection.
    let e = connect_error(&endpoint(&mutual.url(), ca_opts(&pki.ca())));
    assert!(
        e.contains("client certificate") && e.contains("cert_file"),
        "{e}"
    );
    let with_cert = TlsOptions {
        cert_file: Some(pki.path("client.pem")),
        key_file: Some(pki.path("client.key")),
        ..ca_opts(&pki.ca())
    };
    client::connect_blocking(&endpoint(&mutual.url(), with_cert), Duration::from_secs(3))
        .expect("mutual TLS connects");

    // A TLS URL to a plain port, and a plain URL to a TLS port.
    let plain_port = format!("rediss://127.0.0.1:{}", plain_ca.server.port());
    let e = connect_error(&endpoint(&plain_port, ca_opts(&pki.ca())));
    assert!(e.contains("plain port") && e.contains("redis://"), "{e}");
    // (The async flavour sends nothing at a plain login without AUTH or SELECT, so it learns
    // at the first command; the blocking one pings.)
    let tls_port = format!("redis://127.0.0.1:{}", plain_ca.tls_port);
    let e = blocking_error(&endpoint(&tls_port, TlsOptions::default()));
    assert!(e.contains("rediss://"), "{e}");

    // Through the CLI: a clear message naming the host and the reason, exit code 1 or 2,
    // no panic, no retry storm (a wrong CA is not retried by `cutover sync`).
    let target = Server::start(Version::Redis70);
    let mut cmd = cutover();
    cmd.args(["sync", "--once", "--quiet", "--timeout-secs", "3"])
        .args(["--source", &plain_ca.url()])
        .args(["--source-tls-ca-file", &pki.path("other-ca.pem")])
        .args(["--target", &target.url()]);
    let started = Instant::now();
    let out = run_within(cmd, Duration::from_secs(30));
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("127.0.0.1") && err.contains("unknown CA"),
        "{err}"
    );
    // A missing CA file is a setup error naming the file.
    let bad = TlsOptions {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..TlsOptions::default()
    };
    let url = RedisUrl::parse_with_tls(&plain_ca.url(), &bad).unwrap();
    match Endpoint::new(&url) {
        Err(e @ ClientError::TlsSetup { .. }) => {
            assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

/// `cutover run` with TLS everywhere: on the source, the target and the proxy's own listener
/// (the application talks TLS to the proxy). Full sync, stream, switch, rollback, switch and
/// finish; the data checked with an independent TLS client on both sides.
#[test]
fn cutover_run_over_tls() {
    let pki = Pki::new();
    let source = TlsServer::start(&pki, "server", false);
    let target = TlsServer::start(&pki, "server", false);
    // A direct writer still connected would (rightly) block the switch: this one is closed.
    populate(&mut source.conn(&pki), 50);
    let tls_port = common::free_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let proxy = common::Proxy::start(
        &source.url(),
        &[
            "--source-tls-ca-file",
            &pki.ca(),
            "--target",
            &target.url(),
            "--target-tls-ca-file",
            &pki.ca(),
            "--proxy-tls-listen",
            &tls_listen,
            "--proxy-tls-cert",
            &pki.path("server.pem"),
            "--proxy-tls-key",
            &pki.path("server.key"),
        ],
    );
    common::wait_streaming(&proxy);
    let status = proxy.status_json();
    assert_eq!(status["tls"]["source"]["enabled"], true, "{status}");
    assert_eq!(status["tls"]["target"]["verify"], true, "{status}");
    // The application's connection: TLS to the proxy's TLS listener.
    let app = redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{tls_port}"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(pki.ca()).unwrap()),
        },
    )
    .unwrap();
    let mut c = common::connect(&app);
    let _: () = redis::cmd("SET")
        .arg("during")
        .arg("1")
        .query(&mut c)
        .unwrap();
    let mut dst = target.conn(&pki);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Option<String> = redis::cmd("GET").arg("during").query(&mut dst).unwrap();
        if v.as_deref() == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream never reached the target"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let v: String = redis::cmd("GET").arg("k:9").query(&mut dst).unwrap();
    assert_eq!(v, "v9");

    let report = common::step(&proxy, "switch");
    assert_eq!(report["primary"], "target", "{report}");
    let n: i64 = redis::cmd("INCR").arg("counter").query(&mut c).unwrap();
    assert_eq!(n, 1);
    let v: Option<String> = redis::cmd("GET").arg("counter").query(&mut dst).unwrap();
    assert_eq!(v.as_deref(), Some("1"), "written to the target first");
    let report = common::step(&proxy, "rollback");
    assert_eq!(report["primary"], "source", "{report}");
    let n: i64 = redis::cmd("INCR").arg("counter").query(&mut c).unwrap();
    assert_eq!(n, 2, "the source had the target's writes");
    let report = common::step(&proxy, "switch");
    assert_eq!(report["primary"], "target", "{report}");
    // Both sides equal during the overlap, key by key, read by an independent TLS client
    // (the old side follows the new primary through the reverse link, so allow it a moment).
    let mut src = source.conn(&pki);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (a, b) = (common::snapshot(&mut src), common::snapshot(&mut dst));
        let diff = common::differences(&a, &b, 5);
        if diff.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the sides differ: {diff:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = common::step(&proxy, "finish");
    assert_eq!(report["action"], "finish", "{report}");
    let n: i64 = redis::cmd("INCR").arg("counter").query(&mut c).unwrap();
    assert_eq!(n, 3);
    let v: Option<String> = redis::cmd("GET").arg("counter").query(&mut dst).unwrap();
    assert_eq!(v.as_deref(), Some("3"));
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}

/// `cutover run` with a target whose certificate it cannot verify: the proxy keeps serving
/// the source, `status` shows the reason, and the target sees a handful of handshakes (the
/// links' and the poller's back-off), not a storm; nothing panics.
#[test]
fn cutover_run_with_a_wrong_ca_backs_off() {
    let pki = Pki::new();
    let source = Server::start(Version::Redis70);
    let target = TlsServer::start(&pki, "server", false);
    let proxy = common::Proxy::start(
        &source.url(),
        &[
            "--target",
            &target.url(),
            "--target-tls-ca-file",
            &pki.path("other-ca.pem"),
        ],
    );
    let mut c = proxy.conn();
    let _: () = redis::cmd("SET").arg("a").arg("1").query(&mut c).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let v: String = redis::cmd("GET").arg("a").query(&mut c).unwrap();
    assert_eq!(v, "1", "the proxy still serves the source");
    let status = proxy.status_json();
    assert!(
        status.to_string().contains("unknown CA"),
        "status names the reason: {status}"
    );
    let handshakes = target.server.log().matches("unknown ca").count();
    eprintln!("{handshakes} failed handshakes in 6 s");
    assert!(
        (1..=40).contains(&handshakes),
        "{handshakes} failed handshakes in 6 s"
    );
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}
