//! The proxy's TLS listener (`[proxy] tls_listen`) and the admin listener over TLS, against
//! real servers, with real TLS clients (`redis-cli --tls`, the `redis` crate over rustls).
//!
//! Certificates are made per test with `rcgen`: a CA, a server certificate for `127.0.0.1`
//! and `localhost`, and a client certificate, written as PEM files into a temporary directory.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use redis::Commands;

// ----- certificates ----------------------------------------------------------------------------

struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("cutover-it-tls-")
            .tempdir()
            .expect("temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cutover test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, file: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(names).expect("params");
            let cert = params.signed_by(&key, &issuer).expect("sign");
            std::fs::write(dir.path().join(format!("{file}.pem")), cert.pem()).expect("write");
            std::fs::write(dir.path().join(format!("{file}.key")), key.serialize_pem())
                .expect("write");
        };
        leaf(
            vec!["127.0.0.1".to_string(), "localhost".to_string()],
            "server",
        );
        leaf(vec!["client.test".to_string()], "client");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("write ca");
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read cert")
    }
}

/// A proxy in front of `server` with its TLS listener on a free port; returns it and the port.
fn tls_proxy(server: &Server, certs: &Certs, extra: &[&str]) -> (Proxy, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (cert, key) = (certs.arg("server.pem"), certs.arg("server.key"));
    let mut args = vec![
        "--proxy-tls-listen",
        &listen,
        "--proxy-tls-cert",
        &cert,
        "--proxy-tls-key",
        &key,
    ];
    args.extend_from_slice(extra);
    (Proxy::start(&server.url(), &args), port)
}

/// A `redis` client over TLS to `port`, trusting the test CA (and presenting the client
/// certificate when `client_cert`).
fn tls_client(certs: &Certs, port: u16, client_cert: bool) -> redis::Client {
    redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{port}"),
        redis::TlsCertificates {
            client_tls: client_cert.then(|| redis::ClientTlsConfig {
                client_cert: certs.read("client.pem"),
                client_key: certs.read("client.key"),
            }),
            root_cert: Some(certs.read("ca.pem")),
        },
    )
    .expect("tls client")
}

fn tls_conn(certs: &Certs, port: u16) -> redis::Connection {
    connect(&tls_client(certs, port, false))
}

/// Through the TLS listener on `port` (client `c`): a transaction, a `BLPOP` answered by a
/// push made directly on `server`, and a message published on `direct` reaching a TLS
/// subscriber. All three need the session's own backend connection.
fn transaction_blocking_pop_and_pubsub(
    c: &mut redis::Connection,
    server: &Server,
    direct: &mut redis::Connection,
    certs: &Certs,
    port: u16,
) {
    // MULTI/EXEC.
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg("ctr")
        .cmd("INCRBY")
        .arg("ctr")
        .arg(10)
        .query(c)
        .expect("MULTI/EXEC through TLS");
    assert_eq!((a, b), (1, 11));

    // BLPOP answered by a push from another client.
    let pusher = std::thread::spawn({
        let url = server.url();
        move || {
            std::thread::sleep(Duration::from_millis(200));
            let mut d = redis::Client::open(url).unwrap().get_connection().unwrap();
            let _: () = d.rpush("q", "item").unwrap();
        }
    });
    let popped: (String, String) = redis::cmd("BLPOP")
        .arg("q")
        .arg(5)
        .query(c)
        .expect("BLPOP through TLS");
    assert_eq!(popped, ("q".to_string(), "item".to_string()));
    pusher.join().unwrap();

    // Pub/sub: a message published directly reaches the TLS subscriber.
    let mut sub_conn = tls_conn(certs, port);
    let mut sub = sub_conn.as_pubsub();
    sub.set_read_timeout(Some(TIMEOUT)).unwrap();
    sub.subscribe("news").expect("SUBSCRIBE through TLS");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let n: i64 = direct.publish("news", "hello").unwrap();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the subscription never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    let msg = sub.get_message().expect("message through TLS");
    assert_eq!(msg.get_channel_name(), "news");
    assert_eq!(msg.get_payload::<String>().unwrap(), "hello");
    drop(sub);
}

fn counter(metrics: &str, name: &str, label: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn assert_no_panic(proxy: &Proxy) {
    assert!(
        !proxy.log().contains("panicked"),
        "the proxy panicked:\n{}",
        tail(&proxy.log(), 4000)
    );
}

// ----- the data path through TLS -----------------------------------------------------------------

#[test]
fn redis_crate_through_the_tls_listener() {
    let server = Server::start(Version::Redis70);
    let certs = Certs::new();
    let (proxy, port) = tls_proxy(&server, &certs, &[]);
    let status = proxy.status_json();
    assert_eq!(
        status["proxy"]["tls_listen"],
        format!("127.0.0.1:{port}"),
        "{status}"
    );
    assert_eq!(
        status["proxy"]["tls_client_certificates"], false,
        "{status}"
    );
    let mut c = tls_conn(&certs, port);
    let mut direct = server.conn();

    let _: () = c.set("k", "v").expect("SET through TLS");
    let v: String = direct.get("k").expect("GET direct");
    assert_eq!(v, "v");

    // A deep pipeline: every reply in order.
    let mut pipe = redis::pipe();
    for i in 0..2_000 {
        pipe.cmd("SET").arg(format!("p:{i}")).arg(i).ignore();
    }
    for i in 0..2_000 {
        pipe.cmd("GET").arg(format!("p:{i}"));
    }
    let got: Vec<i64> = pipe.query(&mut c).expect("pipeline through TLS");
    assert_eq!(got, (0..2_000).collect::<Vec<i64>>());

    // Big values both ways (many TLS records per command and per reply).
    let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let _: () = c.set("big", &big).expect("SET 4 MB");
    let back: Vec<u8> = c.get("big").expect("GET 4 MB");
    assert!(back == big, "4 MB value changed on its way through TLS");
    let direct_back: Vec<u8> = direct.get("big").expect("GET direct");
    assert!(direct_back == big);
    // Several big replies pipelined.
    let mut pipe = redis::pipe();
    for _ in 0..4 {
        pipe.cmd("GET").arg("big");
    }
    let many: Vec<Vec<u8>> = pipe.query(&mut c).expect("pipelined big GETs");
    assert!(many.iter().all(|b| *b == big));

    // MULTI/EXEC, BLPOP and pub/sub on the session's own connection.
    transaction_blocking_pop_and_pubsub(&mut c, &server, &mut direct, &certs, port);

    // The plain listener still serves, side by side.
    let mut plain = proxy.conn();
    let v: String = plain.get("k").unwrap();
    assert_eq!(v, "v");
    assert_no_panic(&proxy);
}

#[test]
fn many_tls_clients_at_pipeline_depth() {
    let server = Server::start(Version::Redis70);
    let certs = Certs::new();
    let (proxy, port) = tls_proxy(&server, &certs, &[]);
    let client = tls_client(&certs, port, false);
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            std::thread::spawn(move || {
                let mut c = connect(&client);
                let value = "x".repeat(1000 + w * 3000);
                for round in 0..20 {
                    let mut pipe = redis::pipe();
                    for i in 0..50 {
                        pipe.cmd("SET")
                            .arg(format!("w{w}:{i}"))
                            .arg(&value)
                            .ignore();
                        pipe.cmd("GET").arg(format!("w{w}:{i}"));
                    }
                    let got: Vec<String> = pipe.query(&mut c).expect("pipeline");
                    assert_eq!(got.len(), 50, "round {round}");
                    assert!(got.iter().all(|g| *g == value));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    assert_no_panic(&proxy);
}

#[test]
fn redis_cli_with_tls() {
    let server = Server::start(Version::Redis70);
    let certs = Certs::new();
    let (proxy, port) = tls_proxy(&server, &certs, &[]);
    let cli = |args: &[&str]| {
        let out = Command::new(tool("redis-cli"))
            .args(["--tls", "--cacert", &certs.arg("ca.pem")])
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "cli", "tls"]), "OK");
    assert_eq!(cli(&["GET", "cli"]), "tls");
    assert_eq!(cli(&["PING"]), "PONG");
    let _ = &proxy;
}

// ----- wrong ports, client certificates, stalled handshakes -----------------------------------

#[test]
fn a_plain_client_on_the_tls_port_and_a_tls_client_on_the_plain_port() {
    let server = Server::start(Version::Redis70);
    let certs = Certs::new();
    let (proxy, port) = tls_proxy(&server, &certs, &[]);

    // Plain RESP on the TLS port: a RESP error it can read, then the connection closes.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    raw.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut reply = Vec::new();
    raw.read_to_end(&mut reply)
        .expect("the proxy closes the connection");
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("-ERR") && text.contains("expects TLS"),
        "plain client on the TLS port got {text:?}"
    );
    drop(raw);
    // redis-cli without --tls says the same.
    let out = Command::new(tool("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "PING"])
        .output()
        .expect("redis-cli");
    let shown =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(shown.contains("expects TLS"), "redis-cli showed {shown:?}");

    // TLS on the plain port: the handshake fails on the client side, nothing hangs.
    let started = Instant::now();
    let err = tls_client(&certs, proxy.port(), false)
        .get_connection_with_timeout(TIMEOUT)
        .err();
    assert!(
        err.is_some(),
        "a TLS handshake with the plain port succeeded"
    );
    assert!(started.elapsed() < TIMEOUT);

    // Both listeners keep serving.
    let mut c = tls_conn(&certs, port);
    let _: () = c.set("after", 1).unwrap();
    let mut p = proxy.conn();
    assert_eq!(p.get::<_, i64>("after").unwrap(), 1);
    // (Counted when the connection ends, a moment after the client closed it.)
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let m = proxy.metrics();
        let n = counter(
            &m,
            "cutover_tls_handshake_failures_total",
            "reason=\"not_tls\"",
        );
        if n >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "handshake failures not counted:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_no_panic(&proxy);
}

#[test]
fn client_certificates_required() {
    let server = Server::start(Version::Redis70);
    let certs = Certs::new();
    let ca = certs.arg("ca.pem");
    let (proxy, port) = tls_proxy(&server, &certs, &["--proxy-tls-client-ca", &ca]);
    assert_eq!(
        proxy.status_json()["proxy"]["tls_client_certificates"],
        true
    );

    // Without a certificate: refused (TLS 1.3 reports it at the first read).
    let refused = tls_client(&certs, port, false)
        .get_connection_with_timeout(TIMEOUT)
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    assert!(
        refused.is_err(),
        "a client without a certificate was served"
    );

    // With one signed by the CA: served.
    let mut c = connect(&tls_client(&certs, port, true));
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    let _: () = c.set("mtls", "yes").unwrap();
    assert_eq!(server.conn().get::<_, String>("mtls").unwrap(), "yes");

    let m = proxy.metrics();
    assert!(
        counter(
            &m,
            "cutover_tls_handshake_failures_total",
            "listener=\"proxy\""
        ) >= 1,
        "the refused handshake was not counted:\n{m}"
    );
    assert!(proxy.log().contains("TLS handshake failed"));
    assert_no_panic(&proxy);
}

#[test]
fn a_stalled_handshake_is_dropped_at_the_deadline() {
    let server = Server::start(Version::Redis70);
    let certs = Certs::new();
    let port = free_port();
    let config = certs.path("cutover.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\ntls_listen = \"127.0.0.1:{port}\"\ntls_cert_file = {:?}\ntls_key_file = {:?}\ntls_handshake_timeout_ms = 300\nmax_clients = 3\n",
            certs.arg("server.pem"),
            certs.arg("server.key")
        ),
    )
    .unwrap();
    let proxy = Proxy::start(&server.url(), &["--config", &config.display().to_string()]);

    // Three connections that start a handshake and never finish it: they fill max_clients
    // for as long as the deadline, and not longer.
    let mut stalled: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(&[0x16, 0x03, 0x01]).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    for s in &mut stalled {
        let mut buf = [0u8; 64];
        // Closed by the proxy (EOF or reset), well before the test's own bound.
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("unexpected {n} bytes to a stalled handshake"),
        }
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "dropped only after {waited:?}"
    );

    // The slots are free again: a real TLS client is served.
    let deadline = Instant::now() + TIMEOUT;
    let mut c = loop {
        let attempt = tls_client(&certs, port, false)
            .get_connection_with_timeout(TIMEOUT)
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).map(|_| c));
        match attempt {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no TLS client served after the stalled ones: {e}"),
        }
    };
    let _: () = c.set("ok", 1).unwrap();
    let m = proxy.metrics();
    assert!(
        counter(
            &m,
            "cutover_tls_handshake_failures_total",
            "reason=\"timeout\""
        ) >= 3,
        "timeouts not counted:\n{m}"
    );
    assert_no_panic(&proxy);
}

// ----- the admin listener over TLS ---------------------------------------------------------------

#[test]
fn admin_listener_over_tls_with_cutover_status() {
    let server = Server::start(Version::Redis70);
    let certs = Certs::new();
    let (cert, key) = (certs.arg("server.pem"), certs.arg("server.key"));
    let proxy = Proxy::start(
        &server.url(),
        &["--admin-tls-cert", &cert, "--admin-tls-key", &key],
    );
    let status = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["status", "--json", "--admin", &proxy.admin_addr()])
            .args(extra)
            .env_remove("CUTOVER_ADMIN_TOKEN")
            .env_remove("CUTOVER_CONFIG")
            .env_remove("CUTOVER_ADMIN")
            .env_remove("CUTOVER_ADMIN_TLS_CA")
            .output()
            .expect("run cutover status")
    };
    let out = status(&["--admin-tls-ca", &certs.arg("ca.pem")]);
    assert!(
        out.status.success(),
        "cutover status over TLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(doc.is_object(), "{doc}");

    // Without the CA the CLI cannot talk to it (and says why, within its time limit).
    let out = status(&[]);
    assert!(
        !out.status.success(),
        "a plain admin client was served by a TLS admin listener"
    );

    // A wrong CA: a clear TLS error.
    let other = Certs::new();
    let out = status(&["--admin-tls-ca", &other.arg("ca.pem")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS handshake"), "{err}");

    // `cutover verify --admin` reaches it over TLS too: the listener's own answer (this
    // instance has no target) comes back through the TLS connection.
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["verify", "--admin", &proxy.admin_addr()])
        .args(["--admin-tls-ca", &certs.arg("ca.pem")])
        .env_remove("CUTOVER_ADMIN_TOKEN")
        .env_remove("CUTOVER_CONFIG")
        .output()
        .expect("run cutover verify");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no target configured"), "{err}");
    assert_no_panic(&proxy);
}

// ----- TLS on both hops ---------------------------------------------------------------------------

/// A Redis 7.0 with a TLS port (next to its plain one, which the rig uses to see it is up);
/// returns it and the TLS port.
fn tls_server(certs: &Certs) -> (Server, u16) {
    let tls_port = free_port();
    let server = Server::start_with(
        Version::Redis70,
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &certs.arg("server.pem"),
            "--tls-key-file",
            &certs.arg("server.key"),
            "--tls-ca-cert-file",
            &certs.arg("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    );
    (server, tls_port)
}

#[test]
fn tls_on_both_hops() {
    let certs = Certs::new();
    let (server, tls_port) = tls_server(&certs);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (cert, key, ca) = (
        certs.arg("server.pem"),
        certs.arg("server.key"),
        certs.arg("ca.pem"),
    );
    let proxy = Proxy::start(
        &format!("rediss://127.0.0.1:{tls_port}"),
        &[
            "--source-tls-ca-file",
            &ca,
            "--proxy-tls-listen",
            &listen,
            "--proxy-tls-cert",
            &cert,
            "--proxy-tls-key",
            &key,
        ],
    );
    let mut c = tls_conn(&certs, port);
    let mut direct = server.conn();

    // Pipelines on the shared connection (TLS to the server too).
    let mut pipe = redis::pipe();
    for i in 0..2_000 {
        pipe.cmd("SET").arg(format!("p:{i}")).arg(i).ignore();
    }
    for i in 0..2_000 {
        pipe.cmd("GET").arg(format!("p:{i}"));
    }
    let got: Vec<i64> = pipe.query(&mut c).expect("pipeline over TLS on both hops");
    assert_eq!(got, (0..2_000).collect::<Vec<i64>>());
    assert_eq!(direct.get::<_, i64>("p:1999").unwrap(), 1999);

    // 4 MB both ways, several pipelined.
    let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 249) as u8).collect();
    let _: () = c.set("big", &big).expect("SET 4 MB");
    let mut pipe = redis::pipe();
    for _ in 0..3 {
        pipe.cmd("GET").arg("big");
    }
    let many: Vec<Vec<u8>> = pipe.query(&mut c).expect("pipelined 4 MB GETs");
    assert!(many.iter().all(|b| *b == big));
    assert!(direct.get::<_, Vec<u8>>("big").unwrap() == big);

    // The session's own connection (TLS to the server): MULTI, BLPOP, pub/sub.
    transaction_blocking_pop_and_pubsub(&mut c, &server, &mut direct, &certs, port);
    let _: () = c.set("own", &big).expect("SET 4 MB on the own connection");
    assert!(c.get::<_, Vec<u8>>("own").unwrap() == big);

    // The plain listener to the TLS backend too.
    assert_eq!(proxy.conn().get::<_, i64>("ctr").unwrap(), 11);
    assert_no_panic(&proxy);
}
