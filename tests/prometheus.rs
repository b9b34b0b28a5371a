//! The shipped dashboard and alert rules against a real Prometheus (`.servers/bin/prometheus`,
//! from `scripts/install-servers.sh`) scraping a real `cutover run` with traffic and a
//! background sync:
//!
//! * `promtool check rules` / `check config` accept the shipped files;
//! * after a switch and a verify, every expression of every panel of
//!   `config/grafana/cutover.json` parses and returns data, and every metric name it names
//!   exists; every alert rule of `config/prometheus/cutover-rules.yml` (as Prometheus loaded
//!   it) parses, and returns data or names only metrics that exist;
//! * killing the target (the primary after the switch) makes the backend-unreachable alert
//!   go pending or firing (from a copy of the rules whose `for:` durations are shortened; the
//!   expressions are the shipped ones).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Proxy, Server, Version, free_port, tail, tool};
use redis::ConnectionLike;
use serde_json::Value;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs a command with a deadline; (success, stdout + stderr).
fn run_bounded(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("out");
    let out = std::fs::File::create(&out_path).expect("out file");
    let err = out.try_clone().expect("clone");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(s) => (s.success(), text),
        None => (false, format!("timed out after {limit:?}\n{text}")),
    }
}

// ----- a real Prometheus ---------------------------------------------------------------------

/// `prometheus` on a free port with its config and storage in a temporary directory; killed
/// on drop (also while a test panics; then its log is printed).
struct Prometheus {
    child: Option<Child>,
    addr: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Writes `prometheus.yml` (scrape `metrics_addr` every second, evaluate every second,
    /// `rule_files`) and starts Prometheus; returns once `/-/ready` answers 200.
    fn start(metrics_addr: &str, rule_files: &[PathBuf]) -> Prometheus {
        let rules: String = rule_files
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n{rules}scrape_configs:\n  - job_name: cutover\n    metrics_path: /metrics\n    static_configs:\n      - targets: [\"{metrics_addr}\"]\n"
        );
        let mut last = String::new();
        for attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("cutover-it-prometheus-")
                .tempdir()
                .expect("temp dir");
            let config_path = dir.path().join("prometheus.yml");
            std::fs::write(&config_path, &config).expect("write prometheus.yml");
            if attempt == 0 {
                let (ok, out) = run_bounded(
                    Command::new(tool("promtool"))
                        .arg("check")
                        .arg("config")
                        .arg(&config_path),
                    Duration::from_secs(20),
                );
                assert!(ok, "promtool check config (the test's config):\n{out}");
            }
            let addr = format!("127.0.0.1:{}", free_port());
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
            let child = Command::new(tool("prometheus"))
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run prometheus: {e}"));
            let mut p = Prometheus {
                child: Some(child),
                addr,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(c) = p.child.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    p.child = None;
                    // (Most likely lost the port to someone else: try another one.)
                    last = format!("prometheus exited ({status}):\n{}", tail(&p.log(), 3000));
                    break;
                }
                if matches!(http(&p.addr, "GET", "/-/ready", None), Ok((200, _))) {
                    return p;
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready within 20 s:\n{}",
                    tail(&p.log(), 3000)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("cannot start prometheus: {last}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// A `GET` of the HTTP API; the `data` of a `success` answer, else `Err` with the error.
    fn api(&self, path: &str) -> Result<Value, String> {
        let (code, body) = http(&self.addr, "GET", path, None)?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {code}, not JSON ({e}): {}", tail(&body, 500)))?;
        if v["status"] != "success" {
            return Err(format!(
                "HTTP {code}: {} {}",
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or("?")
            ));
        }
        Ok(v["data"].clone())
    }

    /// An instant query (`/api/v1/query`, POSTed as a form); the result vector.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let form = format!("query={}", encode(expr));
        let (code, body) = http(&self.addr, "POST", "/api/v1/query", Some(&form))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {code}, not JSON ({e}): {}", tail(&body, 500)))?;
        if v["status"] != "success" {
            return Err(format!(
                "HTTP {code}: {} {}",
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or("?")
            ));
        }
        match &v["data"]["result"] {
            Value::Array(a) => Ok(a.clone()),
            // A scalar or string result: one value.
            other => Ok(vec![other.clone()]),
        }
    }

    /// Waits (bounded) until `expr` returns something.
    fn wait_for_data(&self, expr: &str, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            match self.query(expr) {
                Ok(r) if !r.is_empty() => return r,
                Ok(_) => {}
                Err(e) => panic!("{expr}: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "no data for {expr} within {limit:?}; targets: {:?}",
                self.api("/api/v1/targets")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Every metric name Prometheus has.
    fn names(&self) -> BTreeSet<String> {
        let v = self
            .api("/api/v1/label/__name__/values")
            .expect("metric names");
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- prometheus (log tail) ---\n{}", tail(&self.log(), 3000));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A minimal HTTP/1.1 request with timeouts: (status code, body).
fn http(addr: &str, method: &str, path: &str, form: Option<&str>) -> Result<(u16, String), String> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let body = form.unwrap_or("");
    let head = if form.is_some() {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    } else {
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
    };
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body.as_bytes()))
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP status from {addr}: {}", tail(head, 200)))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
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

// ----- the shipped files ---------------------------------------------------------------------

const RULES: &str = "config/prometheus/cutover-rules.yml";
const DASHBOARD: &str = "config/grafana/cutover.json";

/// One query of the dashboard: where it is (for messages) and its expression.
struct PanelQuery {
    what: String,
    expr: String,
    /// Annotations may legitimately be empty (no aborted switch); panel targets may not.
    must_have_data: bool,
}

/// Every expression of every panel (rows' nested panels too) and annotation.
fn dashboard_queries(dash: &Value) -> Vec<PanelQuery> {
    fn walk(panels: &Value, out: &mut Vec<PanelQuery>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or("");
                assert!(!expr.is_empty(), "panel {title:?}: a target without expr");
                out.push(PanelQuery {
                    what: format!(
                        "panel {title:?} target {}",
                        t["refId"].as_str().unwrap_or("?")
                    ),
                    expr: expr.to_string(),
                    must_have_data: true,
                });
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = a["expr"].as_str() {
            out.push(PanelQuery {
                what: format!("annotation {:?}", a["name"].as_str().unwrap_or("?")),
                expr: expr.to_string(),
                must_have_data: false,
            });
        }
    }
    out
}

/// Grafana's variables as concrete values (one instance; 30 s windows, which hold ~30
/// samples at the test's 1 s scrape interval).
fn substitute(expr: &str, instance: &str) -> String {
    expr.replace("${instance}", instance)
        .replace("$instance", instance)
        .replace("$__rate_interval", "30s")
        .replace("$__interval_ms", "30000")
        .replace("$__interval", "30s")
        .replace("$__range_s", "300")
        .replace("$__range_ms", "300000")
        .replace("$__range", "5m")
}

/// The metric names an expression mentions (ours and Prometheus' own `up`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\b(cutover_[a-z0-9_]+|up)\b").expect("regex");
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

/// The shipped rules with every `for:` shortened to 1 s and the group renamed (the
/// expressions are untouched, and checked to be).
fn fast_rules_copy(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(repo_file(RULES)).expect("read rules");
    let mut copy = String::new();
    for line in shipped.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        if t.starts_with("for:") {
            copy.push_str(&format!("{indent}for: 1s\n"));
        } else if t == "- name: cutover" {
            copy.push_str(&format!("{indent}- name: cutover-fast\n"));
        } else {
            copy.push_str(line);
            copy.push('\n');
        }
    }
    assert!(
        copy.contains("- name: cutover-fast"),
        "the shipped rules have no group named cutover"
    );
    let path = dir.join("cutover-rules-fast.yml");
    std::fs::write(&path, copy).expect("write the fast copy");
    path
}

#[test]
fn promtool_accepts_the_shipped_rules_and_config() {
    let (ok, out) = run_bounded(
        Command::new(tool("promtool"))
            .args(["check", "rules"])
            .arg(repo_file(RULES)),
        Duration::from_secs(20),
    );
    assert!(ok, "promtool check rules:\n{out}");
    // The example config loads the rules relative to itself.
    let (ok, out) = run_bounded(
        Command::new(tool("promtool"))
            .args(["check", "config"])
            .arg(repo_file("config/prometheus/prometheus.yml")),
        Duration::from_secs(20),
    );
    assert!(ok, "promtool check config:\n{out}");
    assert!(out.contains("rules found"), "{out}");

    // Every rule has a summary and a description; the dashboard has its variables.
    let rules = std::fs::read_to_string(repo_file(RULES)).expect("rules");
    let alerts = rules.matches("- alert:").count();
    assert!(alerts >= 8, "only {alerts} alert rules");
    assert_eq!(rules.matches("summary:").count(), alerts, "{rules}");
    assert_eq!(rules.matches("description:").count(), alerts, "{rules}");
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file(DASHBOARD)).expect("dashboard"))
            .expect("the dashboard is JSON");
    assert!(dash["schemaVersion"].as_u64().unwrap_or(0) >= 36, "schema");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "instance"]);
    // Every panel queries the data source chosen in the variable.
    fn datasources(panels: &Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            if p["type"] != "row" {
                out.push(format!("{}: {}", p["title"], p["datasource"]["uid"]));
                for t in p["targets"].as_array().into_iter().flatten() {
                    out.push(format!("{} target: {}", p["title"], t["datasource"]["uid"]));
                }
            }
            datasources(&p["panels"], out);
        }
    }
    let mut ds = Vec::new();
    datasources(&dash["panels"], &mut ds);
    assert!(ds.len() > 30, "{ds:?}");
    for d in ds {
        assert!(d.ends_with(": \"${datasource}\""), "{d}");
    }
    for q in dashboard_queries(&dash) {
        assert!(
            q.expr.contains("instance=~\"$instance\""),
            "{} does not filter by $instance: {}",
            q.what,
            q.expr
        );
    }
}

/// SET/INCR through the proxy until told to stop; errors (a killed backend) are counted and
/// the connection opened again.
fn traffic(proxy_url: String, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>) {
    let client = redis::Client::open(proxy_url).expect("client");
    let mut conn = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = client
                .get_connection_with_timeout(Duration::from_secs(1))
                .ok();
            if let Some(c) = &conn {
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
            } else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        i += 1;
        let r: redis::RedisResult<()> = redis::pipe()
            .cmd("SET")
            .arg(format!("k:{}", i % 500))
            .arg(i)
            .ignore()
            .cmd("INCR")
            .arg("counter")
            .ignore()
            .cmd("GET")
            .arg("counter")
            .ignore()
            .query(c);
        match r {
            Ok(()) => {
                ok.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => {
                if c.is_open() {
                    std::thread::sleep(Duration::from_millis(20));
                } else {
                    conn = None;
                }
            }
        }
    }
}

#[test]
fn every_panel_and_rule_returns_data_and_alerts_fire() {
    let started = Instant::now();
    let source = Server::start(Version::Redis70);
    let mut target = Server::start(Version::Redis70);
    {
        // Some keys for the snapshot.
        let mut c = source.conn();
        let mut pipe = redis::pipe();
        for i in 0..2000 {
            pipe.cmd("SET").arg(format!("seed:{i}")).arg(i).ignore();
        }
        let () = pipe.query(&mut c).expect("seed the source");
    }
    let proxy = Proxy::start(&source.url(), &["--target", &target.url()]);
    let instance = proxy.metrics_addr();

    let dir = tempfile::tempdir().expect("temp dir");
    let fast = fast_rules_copy(dir.path());
    let prom = Prometheus::start(&instance, &[repo_file(RULES), fast]);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let load = {
        let (url, stop, ok) = (proxy.url(), stop.clone(), ok.clone());
        std::thread::spawn(move || traffic(url, stop, ok))
    };
    // Stop the traffic thread on every way out (also a panic).
    struct StopOnDrop(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
            if let Some(h) = self.1.take() {
                let _ = h.join();
            }
        }
    }
    let _load = StopOnDrop(stop.clone(), Some(load));

    // Streaming, with traffic seen by Prometheus.
    prom.wait_for_data(
        &format!("cutover_sync_phase{{instance=\"{instance}\",direction=\"forward\"}} == 2"),
        Duration::from_secs(20),
    );
    prom.wait_for_data(
        &format!(
            "rate(cutover_commands_total{{instance=\"{instance}\",command=\"incr\"}}[30s]) > 0"
        ),
        Duration::from_secs(10),
    );

    // The switch (the replica overlap: both links run), then a verify.
    let report = common::step(&proxy, "switch");
    assert_eq!(report["primary"], "target", "{report}");
    let (code, out, err) = common::cli(&proxy, &["verify"]);
    assert_eq!(code, 0, "cutover verify --admin: {out}{err}");
    prom.wait_for_data(
        &format!("cutover_pause_seconds_count{{instance=\"{instance}\"}} > 0"),
        Duration::from_secs(15),
    );
    prom.wait_for_data(
        &format!("cutover_verify_state{{instance=\"{instance}\"}} == 2"),
        Duration::from_secs(20),
    );
    prom.wait_for_data(
        &format!("cutover_link_applying{{instance=\"{instance}\",direction=\"reverse\"}} == 1"),
        Duration::from_secs(10),
    );
    let names = prom.names();

    // Every panel expression: parses, returns data, names only metrics that exist.
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file(DASHBOARD)).expect("dashboard"))
            .expect("the dashboard is JSON");
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 30, "only {} queries", queries.len());
    let mut failures = Vec::new();
    let mut annotations_with_data = 0;
    for q in &queries {
        let expr = substitute(&q.expr, &instance);
        for name in metric_names(&expr) {
            if !names.contains(&name) {
                failures.push(format!("{}: metric {name} does not exist ({expr})", q.what));
            }
        }
        match prom.query(&expr) {
            Ok(r) if r.is_empty() && q.must_have_data => {
                failures.push(format!("{}: no data for {expr}", q.what))
            }
            Ok(r) if !r.is_empty() && !q.must_have_data => annotations_with_data += 1,
            Ok(_) => {}
            Err(e) => failures.push(format!("{}: {e} ({expr})", q.what)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries fail:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );
    assert!(
        annotations_with_data >= 1,
        "the moves annotation shows no move"
    );

    // The instance variable's query finds this instance.
    let values = prom
        .api("/api/v1/label/instance/values?match[]=cutover_proxy_max_clients")
        .expect("label values");
    assert!(
        values
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == instance.as_str())),
        "{values}"
    );

    // Every alert rule, as Prometheus loaded it from the shipped file.
    let rules = prom.api("/api/v1/rules").expect("rules");
    let shipped: Vec<&Value> = rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| g["name"] == "cutover")
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    let in_file = std::fs::read_to_string(repo_file(RULES))
        .expect("rules")
        .matches("- alert:")
        .count();
    assert_eq!(shipped.len(), in_file, "Prometheus loaded {rules}");
    let mut failures = Vec::new();
    for r in &shipped {
        let (name, expr) = (
            r["name"].as_str().unwrap_or("?"),
            r["query"].as_str().unwrap_or(""),
        );
        assert_ne!(r["health"], "err", "rule {name}: {r}");
        match prom.query(expr) {
            Ok(res) if res.is_empty() => {
                // A condition that is false: its metrics must exist all the same.
                for m in metric_names(expr) {
                    if !names.contains(&m) {
                        failures.push(format!("rule {name}: metric {m} does not exist ({expr})"));
                    }
                }
            }
            Ok(res) => failures.push(format!(
                "rule {name} is true in a healthy migration: {expr} = {res:?}"
            )),
            Err(e) => failures.push(format!("rule {name}: {e} ({expr})")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The fast copy holds the same expressions.
    let fast: Vec<&str> = rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| g["name"] == "cutover-fast")
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["query"].as_str())
        .collect();
    let shipped_exprs: Vec<&str> = shipped.iter().filter_map(|r| r["query"].as_str()).collect();
    assert_eq!(fast, shipped_exprs);
    let healthy = started.elapsed();

    // Forced: the target (the primary now) dies while clients write through the proxy. The
    // proxy cannot connect to it, and the reverse link's server is gone.
    let before = ok.load(Ordering::Relaxed);
    assert!(before > 0, "no traffic went through the proxy");
    // Something writes to the old side (the source) directly: the forward link, which
    // follows it, sees a write the reverse link did not make.
    let _: () = redis::cmd("SET")
        .arg("written:around:the:proxy")
        .arg(1)
        .query(&mut source.conn())
        .expect("a direct write to the old side");
    target.kill();
    let expected = [
        ("CutoverBackendUnreachable", "side", "target"),
        ("CutoverSyncServerDown", "direction", "reverse"),
        ("CutoverForeignWrites", "direction", "forward"),
    ];
    let deadline = Instant::now() + Duration::from_secs(25);
    let states = loop {
        let rules = prom.api("/api/v1/rules").expect("rules");
        let rule = |group: &str, alert: &str| -> Value {
            rules["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|g| g["name"] == group)
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .find(|r| r["name"] == alert)
                .cloned()
                .unwrap_or(Value::Null)
        };
        // Pending or firing, with an alert for the expected label (the fast copy: for 1 s).
        let active = |alert: &str, label: &str, value: &str| {
            let r = rule("cutover-fast", alert);
            matches!(r["state"].as_str(), Some("pending" | "firing"))
                && r["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["labels"][label] == value)
        };
        if expected.iter().all(|(a, l, v)| active(a, l, v)) {
            break expected
                .iter()
                .map(|(a, _, _)| {
                    format!(
                        "{a}: {} (shipped rule: {})",
                        rule("cutover-fast", a)["state"],
                        rule("cutover", a)["state"]
                    )
                })
                .collect::<Vec<_>>();
        }
        assert!(
            Instant::now() < deadline,
            "25 s after the target was killed, not all of {expected:?} are pending or firing: {:?}",
            expected
                .iter()
                .map(|(a, _, _)| rule("cutover-fast", a))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // /api/v1/alerts lists them too.
    let alerts = prom.api("/api/v1/alerts").expect("alerts");
    for (alert, label, value) in expected {
        let listed = alerts["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["labels"]["alertname"] == alert && a["labels"][label] == value);
        assert!(listed, "{alert} not in {alerts}");
    }
    eprintln!(
        "healthy part {healthy:?}; {states:?}; total {:?}",
        started.elapsed()
    );
}
