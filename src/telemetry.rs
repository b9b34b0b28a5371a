//! Prometheus metrics and logging set-up.
//!
//! Most metrics go through the `metrics` facade into `metrics-exporter-prometheus`. The two
//! that move with every command (commands by name and the per-command latency histogram) are
//! kept in a table of our own, [`CommandStats`], indexed by command id: counting a command is
//! one relaxed atomic add, recording a latency three, with no registry, no sample queue and no
//! background draining. The scrape endpoint renders both into one Prometheus text page.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use metrics::Counter;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

// Metric labels are the command table's names (bounded: anything else is `other`).
use crate::command::NAMES as KNOWN_COMMANDS;

pub const COMMAND_LATENCY: &str = "cutover_command_duration_seconds";

/// Upper bounds (seconds) of the per-command latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Installs the Prometheus recorder and serves the metrics page on `addr` (any path; the
/// usual one is `/metrics`).
pub async fn install_exporter(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the metrics listener on {addr}: {e}"))?;
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Histograms recorded through the facade are drained into their buckets here.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(serve(listener, handle));
    Ok(())
}

async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    use hyper::server::conn::http1;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let page = render(&handle);
                async move {
                    let mut response =
                        hyper::Response::new(http_body_util::Full::new(Bytes::from(page)));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

/// The whole metrics page: the facade's metrics, then the per-command table.
/// Called before every scrape: state kept in atomics elsewhere (the sync links) is published
/// as gauges then, so a scrape never shows older figures than `cutover status`.
type ScrapeHook = Box<dyn Fn() + Send + Sync>;

fn scrape_hooks() -> &'static std::sync::Mutex<Vec<ScrapeHook>> {
    static HOOKS: std::sync::OnceLock<std::sync::Mutex<Vec<ScrapeHook>>> =
        std::sync::OnceLock::new();
    HOOKS.get_or_init(Default::default)
}

/// Runs `f` before every scrape of the metrics page.
pub fn on_scrape(f: impl Fn() + Send + Sync + 'static) {
    if let Ok(mut hooks) = scrape_hooks().lock() {
        hooks.push(Box::new(f));
    }
}

pub fn render(handle: &PrometheusHandle) -> String {
    if let Ok(hooks) = scrape_hooks().lock() {
        for hook in hooks.iter() {
            hook();
        }
    }
    let mut page = handle.render();
    commands().render(&mut page);
    page
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "cutover_errors_total",
        "Errors by kind (protocol, backend_lost, backend_unreachable, auth, refused, reply_error)"
    );
    describe_counter!("cutover_client_bytes_in_total", "Bytes read from clients");
    describe_counter!("cutover_client_bytes_out_total", "Bytes written to clients");
    describe_gauge!("cutover_client_connections", "Open client connections");
    describe_gauge!("cutover_backend_connections", "Open backend connections");
    describe_counter!(
        "cutover_client_connections_total",
        "Client connections accepted"
    );
    describe_counter!(
        "cutover_backend_connects_total",
        "Backend connections opened (first connects and reconnects)"
    );
    describe_counter!(
        "cutover_backend_reconnects_total",
        "Backend connections re-opened after a loss"
    );
}

/// Error kinds counted by [`error`] (created at 0 by [`preregister`]).
pub const ERROR_KINDS: [&str; 9] = [
    "protocol",
    "auth",
    "admin_auth",
    "refused",
    "reply_error",
    "backend_lost",
    "backend_unreachable",
    "backend_protocol",
    "max_clients",
];

/// Creates, at 0, the series that dashboards and alert rules query but that would otherwise
/// appear only with their first event (an error, an aborted switch, a lost backend), so that
/// `increase()` sees the first one and a query for them is never empty; and publishes the
/// configured `max_clients` (`cutover_proxy_max_clients`).
pub fn preregister(has_target: bool, max_clients: usize) {
    metrics::describe_gauge!(
        "cutover_proxy_max_clients",
        "[proxy] max_clients: client connections beyond it are refused"
    );
    metrics::gauge!("cutover_proxy_max_clients").set(max_clients as f64);
    for kind in ERROR_KINDS {
        metrics::counter!("cutover_errors_total", "kind" => kind).increment(0);
    }
    metrics::gauge!("cutover_client_connections").increment(0.0);
    metrics::counter!("cutover_client_connections_total").increment(0);
    let sides: &[&'static str] = if has_target {
        &["source", "target"]
    } else {
        &["source"]
    };
    for &side in sides {
        metrics::gauge!("cutover_backend_connections", "side" => side).increment(0.0);
        metrics::counter!("cutover_backend_connects_total", "side" => side).increment(0);
        metrics::counter!("cutover_backend_connect_failures_total", "side" => side).increment(0);
        metrics::counter!("cutover_backend_lost_total", "side" => side).increment(0);
    }
    if has_target {
        for name in [
            "cutover_barrier_aborts_total",
            "cutover_shadow_writes_total",
            "cutover_shadow_keys_lost_total",
            "cutover_shadow_keys_repaired_total",
            "cutover_shadow_keys_unrepaired_total",
            "cutover_sync_restarts_total",
        ] {
            metrics::counter!(name).increment(0);
        }
        metrics::gauge!("cutover_shadow_queue").increment(0.0);
        // (A summary with no sample yet: count 0, so the first move counts as an increase.)
        let _ = metrics::histogram!("cutover_pause_seconds");
        metrics::gauge!("cutover_route_epoch").increment(0.0);
        metrics::gauge!("cutover_primary_is_target").increment(0.0);
        metrics::gauge!("cutover_verify_state").increment(0.0);
        // Clients a move disconnected (`cutover::holders`), by reason.
        for reason in ["not_reading", "multi", "blocked", "force"] {
            metrics::counter!("cutover_clients_disconnected_at_move_total", "reason" => reason)
                .increment(0);
        }
        metrics::counter!("cutover_scripts_loaded_total").increment(0);
    }
    metrics::counter!("cutover_scripts_dropped_total").increment(0);
}

/// Publishes the last verify started through the admin listener (the `verify` section of
/// `STATUS`) as gauges: `cutover_verify_state` (0 none yet, 1 running, 2 done, 3 error) and,
/// once one is done, `cutover_verify_equal` (1/0), `cutover_verify_differences{kind}`,
/// `cutover_verify_source_keys`, `cutover_verify_duration_seconds` and
/// `cutover_verify_finished_timestamp_seconds`.
pub fn publish_verify(v: &serde_json::Value) {
    let state = match v["state"].as_str() {
        Some("running") => 1.0,
        Some("done") => 2.0,
        Some("error") => 3.0,
        _ => 0.0,
    };
    metrics::gauge!("cutover_verify_state").set(state);
    if state != 2.0 {
        return;
    }
    let equal = v["equal"].as_bool().unwrap_or(false);
    metrics::gauge!("cutover_verify_equal").set(if equal { 1.0 } else { 0.0 });
    if let Some(kinds) = v["differences"].as_object() {
        // The kinds are verify's own fixed set (`DiffKind`), so the cardinality is bounded.
        for (kind, n) in kinds {
            metrics::gauge!("cutover_verify_differences", "kind" => kind.clone())
                .set(n.as_u64().unwrap_or(0) as f64);
        }
    }
    let num = |k: &str| v[k].as_f64().unwrap_or(0.0);
    metrics::gauge!("cutover_verify_source_keys").set(num("source_keys"));
    metrics::gauge!("cutover_verify_duration_seconds").set(num("elapsed_secs"));
    metrics::gauge!("cutover_verify_finished_timestamp_seconds").set(num("finished"));
}

/// Handles used on the data path (counted once per read or write, not per command).
pub struct Hot {
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// The hot-path handles; created on first use (after the exporter, if any, is installed).
pub fn hot() -> &'static Hot {
    HOT.get_or_init(|| Hot {
        bytes_in: metrics::counter!("cutover_client_bytes_in_total"),
        bytes_out: metrics::counter!("cutover_client_bytes_out_total"),
    })
}

/// Per-command counts and latency histograms, indexed by command id (the last slot is
/// `other`: unknown names, so garbage cannot blow up the metric cardinality).
pub struct CommandStats {
    rows: Vec<CommandRow>,
}

#[derive(Default)]
struct CommandRow {
    received: AtomicU64,
    /// Total time of the replies timed, in nanoseconds, and how many fell in each bucket
    /// (not cumulative; the last slot is above the highest bound).
    total_ns: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
}

/// The per-command table (always there: counting costs the same with or without a scraper).
pub fn commands() -> &'static CommandStats {
    static STATS: OnceLock<CommandStats> = OnceLock::new();
    STATS.get_or_init(CommandStats::new)
}

impl CommandStats {
    /// Empty rows for every known command and `other`.
    fn new() -> Self {
        CommandStats {
            rows: (0..=KNOWN_COMMANDS.len())
                .map(|_| CommandRow::default())
                .collect(),
        }
    }

    /// `n` commands `cmd` were received.
    #[inline]
    pub fn received(&self, cmd: usize, n: u64) {
        if let Some(row) = self.rows.get(cmd) {
            row.received.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// `n` commands `cmd` were answered after `latency` each.
    #[inline]
    pub fn answered(&self, cmd: usize, n: u64, latency: Duration) {
        let Some(row) = self.rows.get(cmd) else {
            return;
        };
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        row.total_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
        row.buckets[bucket].fetch_add(n, Ordering::Relaxed);
    }

    /// Appends the table in the Prometheus text format (commands never seen are left out).
    pub fn render(&self, out: &mut String) {
        let names = KNOWN_COMMANDS.iter().copied().chain(["other"]);
        let seen: Vec<(&str, &CommandRow)> = names
            .zip(&self.rows)
            .filter(|(_, r)| r.received.load(Ordering::Relaxed) > 0)
            .collect();
        out.push_str("# HELP cutover_commands_total Commands received from clients, by command name\n# TYPE cutover_commands_total counter\n");
        for (name, row) in &seen {
            let _ = writeln!(
                out,
                "cutover_commands_total{{command=\"{name}\"}} {}",
                row.received.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {COMMAND_LATENCY} Time from a command being read from the client until its reply is ready\n# TYPE {COMMAND_LATENCY} histogram"
        );
        for (name, row) in &seen {
            let mut cumulative = 0;
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += row.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{COMMAND_LATENCY}_bucket{{command=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            cumulative += row.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{COMMAND_LATENCY}_bucket{{command=\"{name}\",le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(
                out,
                "{COMMAND_LATENCY}_sum{{command=\"{name}\"}} {}",
                row.total_ns.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "{COMMAND_LATENCY}_count{{command=\"{name}\"}} {cumulative}"
            );
        }
    }
}

/// Counts an error of `kind` (a fixed, small set of label values).
pub fn error(kind: &'static str) {
    metrics::counter!("cutover_errors_total", "kind" => kind).increment(1);
}

/// `RUST_LOG`-style filter, default `info`; logs go to stderr.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUTOVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_table_renders_cumulative_buckets() {
        let stats = CommandStats::new();
        let get = crate::proxy::command::command_id(b"get");
        stats.received(get, 5);
        stats.answered(get, 3, Duration::from_micros(50));
        stats.answered(get, 1, Duration::from_millis(2));
        stats.answered(get, 1, Duration::from_secs(10));
        stats.received(usize::MAX, 1); // out of range: ignored, never panics
        let mut page = String::new();
        stats.render(&mut page);
        for line in [
            "cutover_commands_total{command=\"get\"} 5",
            "cutover_command_duration_seconds_bucket{command=\"get\",le=\"0.0001\"} 3",
            "cutover_command_duration_seconds_bucket{command=\"get\",le=\"0.001\"} 3",
            "cutover_command_duration_seconds_bucket{command=\"get\",le=\"0.0025\"} 4",
            "cutover_command_duration_seconds_bucket{command=\"get\",le=\"5\"} 4",
            "cutover_command_duration_seconds_bucket{command=\"get\",le=\"+Inf\"} 5",
            "cutover_command_duration_seconds_count{command=\"get\"} 5",
            "cutover_command_duration_seconds_sum{command=\"get\"} 10.00215",
        ] {
            assert!(page.contains(line), "missing {line} in\n{page}");
        }
        // Commands never received are left out.
        assert!(!page.contains("command=\"set\""), "{page}");
    }
}
