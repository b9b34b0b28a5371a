//! Prometheus metrics and logging set-up.
//!
//! Metric handles for the hot path (per-command counters and latency histograms) are created
//! once into a table indexed by command id, so counting a command is one atomic add instead of
//! a registry lookup.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::proxy::command::KNOWN_COMMANDS;

pub const COMMAND_LATENCY: &str = "cutover_command_duration_seconds";

/// Starts the Prometheus exporter's HTTP listener on `addr`.
pub fn install_exporter(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full(COMMAND_LATENCY.to_string()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 5.0,
            ],
        )?
        .install()
        .map_err(|e| anyhow::anyhow!("cannot start the metrics listener on {addr}: {e}"))?;
    describe();
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "cutover_commands_total",
        "Commands received from clients, by command name"
    );
    describe_histogram!(
        COMMAND_LATENCY,
        metrics::Unit::Seconds,
        "Time from a command being read from the client until its reply is ready"
    );
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

/// Handles used on the data path.
pub struct Hot {
    pub commands: Vec<Counter>,
    pub latency: Vec<Histogram>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// The hot-path handles; created on first use (after the exporter, if any, is installed).
pub fn hot() -> &'static Hot {
    HOT.get_or_init(|| {
        let names = KNOWN_COMMANDS.iter().copied().chain(["other"]);
        let mut commands = Vec::new();
        let mut latency = Vec::new();
        for name in names {
            commands.push(metrics::counter!("cutover_commands_total", "command" => name));
            latency.push(metrics::histogram!(COMMAND_LATENCY, "command" => name));
        }
        Hot {
            commands,
            latency,
            bytes_in: metrics::counter!("cutover_client_bytes_in_total"),
            bytes_out: metrics::counter!("cutover_client_bytes_out_total"),
        }
    })
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
