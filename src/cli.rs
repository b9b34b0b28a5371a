//! The command line: flags, environment variables and the config file merged into
//! [`Settings`]; errors reported with context, one line each.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{
    self, AdminSettings, ClientAuth, ConfigError, FileConfig, ProxySettings, RedisUrl,
};
use crate::runtime::Settings;

#[derive(Parser, Debug)]
#[command(
    name = "cutover",
    version,
    about = "Move a live Redis to another Redis without downtime and without losing a write"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy (and the admin and metrics listeners).
    Run(RunArgs),
    /// Show the state of a running instance (through its admin listener).
    Status(StatusArgs),
    /// Move the clients to the target: hold commands for a moment, let the target catch up,
    /// flip the route, release them there. Writes are then shadowed to the source.
    Switch(MoveArgs),
    /// Move the clients back to the source (the target is kept in step from then on).
    Rollback(MoveArgs),
    /// End the migration: stop shadowing writes; the old side is detached.
    Finish(FinishArgs),
    /// Copy the source into the target (snapshot, then the live stream), without the proxy.
    ///
    /// The replication position is kept on the target, in the key `cutover:position` of db 0
    /// ("<replid> <offset>", written in the same MULTI/EXEC as the commands it covers), so a
    /// restart continues where the last one stopped (PSYNC) without applying anything twice. If
    /// the source cannot continue from there, the target is flushed (FLUSHALL) and copied anew.
    /// That key is never copied from a source. Ctrl-C / SIGTERM stop cleanly (exit 0).
    Sync(SyncArgs),
    /// Compare the source and the target: missing and extra keys, types, values, TTLs.
    ///
    /// Differences are re-checked --rounds times, --interval apart, and only those that persist
    /// are reported (live writes in flight are not differences). Prints a progress line and a
    /// summary table on stderr, and one JSON object per differing key on stdout (or into
    /// --json FILE). Exit code 0: equal; 1: differences; 2: error. With --admin, asks a running
    /// `cutover run` to verify its source and target in the background instead (see `cutover
    /// status`).
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Source: redis://[user:pass@]host:port (every database with keys is compared; a /db in
    /// the URL is ignored, see --db-map).
    #[arg(
        long = "source",
        env = "CUTOVER_SOURCE_URL",
        hide_env_values = true,
        required_unless_present = "admin"
    )]
    pub source: Option<String>,
    /// Target: redis://[user:pass@]host:port.
    #[arg(
        long = "target",
        env = "CUTOVER_TARGET_URL",
        hide_env_values = true,
        required_unless_present = "admin"
    )]
    pub target: Option<String>,
    /// Source db to target db, e.g. 0=1,2=2; unlisted dbs compare to the same number.
    #[arg(long = "db-map", default_value = "")]
    pub db_map: String,
    /// TTLs further apart than this differ (2s, 500ms, 1m).
    #[arg(long = "ttl-tolerance", default_value = "2s", value_parser = parse_duration_arg)]
    pub ttl_tolerance: Duration,
    /// Re-check rounds before a difference is reported (0: report what the scan saw).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Pause before each re-check round.
    #[arg(long, default_value = "1s", value_parser = parse_duration_arg)]
    pub interval: Duration,
    /// keys: existence and type; length: + lengths and TTLs; full: + values.
    #[arg(long, default_value = "full", value_parser = ["full", "length", "keys"])]
    pub mode: String,
    /// Write the differing keys as JSON lines into FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Only keys with this prefix (repeatable; any include rule matches).
    #[arg(long = "include-prefix")]
    pub include_prefix: Vec<String>,
    /// Skip keys with this prefix (repeatable).
    #[arg(long = "exclude-prefix")]
    pub exclude_prefix: Vec<String>,
    /// Only keys matching this regex (repeatable).
    #[arg(long = "include-regex")]
    pub include_regex: Vec<String>,
    /// Skip keys matching this regex (repeatable).
    #[arg(long = "exclude-regex")]
    pub exclude_regex: Vec<String>,
    /// Keys per SCAN page (and elements per chunk of big collections).
    #[arg(long = "scan-count", default_value_t = 1000)]
    pub scan_count: usize,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Connection and reply time limit, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// HOST:PORT of a running instance's admin listener: start a verify there (its source vs
    /// its target) and return; `cutover status` shows the result.
    #[arg(long)]
    pub admin: Option<String>,
    /// Admin token (with --admin).
    #[arg(long, env = "CUTOVER_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub source_tls: SourceTlsArgs,
    #[command(flatten)]
    pub target_tls: TargetTlsArgs,
}

/// The TLS flags of one side (`--source-tls-*`, `--target-tls-*`), over `[source.tls]` /
/// `[target.tls]`; any of them turns TLS on for that side.
macro_rules! tls_args {
    ($name:ident, $side:literal, $env:literal) => {
        #[derive(Args, Debug, Default, Clone)]
        pub struct $name {
            #[doc = concat!("[", $side, ".tls] ca_file: PEM CA(s) that sign the ", $side, "'s certificate (default: system roots).")]
            #[arg(id = concat!($side, "_tls_ca_file"), long = concat!($side, "-tls-ca-file"), env = concat!("CUTOVER_", $env, "_TLS_CA_FILE"), value_name = "PEM")]
            pub ca_file: Option<String>,
            #[doc = concat!("[", $side, ".tls] cert_file: PEM client certificate for mutual TLS (with the key file).")]
            #[arg(id = concat!($side, "_tls_cert_file"), long = concat!($side, "-tls-cert-file"), env = concat!("CUTOVER_", $env, "_TLS_CERT_FILE"), value_name = "PEM")]
            pub cert_file: Option<String>,
            #[doc = concat!("[", $side, ".tls] key_file: PEM private key of the client certificate.")]
            #[arg(id = concat!($side, "_tls_key_file"), long = concat!($side, "-tls-key-file"), env = concat!("CUTOVER_", $env, "_TLS_KEY_FILE"), value_name = "PEM")]
            pub key_file: Option<String>,
            #[doc = concat!("[", $side, ".tls] server_name: SNI and the name verified in the certificate (default: the URL's host).")]
            #[arg(id = concat!($side, "_tls_server_name"), long = concat!($side, "-tls-server-name"), env = concat!("CUTOVER_", $env, "_TLS_SERVER_NAME"), value_name = "NAME")]
            pub server_name: Option<String>,
            #[doc = concat!("[", $side, ".tls] insecure: do not verify the ", $side, "'s certificate (logged, shown in status).")]
            #[arg(id = concat!($side, "_tls_insecure"), long = concat!($side, "-tls-insecure"), env = concat!("CUTOVER_", $env, "_TLS_INSECURE"))]
            pub insecure: bool,
        }

        impl $name {
            /// These flags over the file's section.
            pub fn over(&self, file: &config::TlsOptions) -> config::TlsOptions {
                file.overlaid(&config::TlsOptions {
                    ca_file: self.ca_file.clone(),
                    cert_file: self.cert_file.clone(),
                    key_file: self.key_file.clone(),
                    server_name: self.server_name.clone(),
                    insecure: self.insecure,
                })
            }
        }
    };
}
tls_args!(SourceTlsArgs, "source", "SOURCE");
tls_args!(TargetTlsArgs, "target", "TARGET");

/// Builds the TLS configuration of a side now, so a missing or broken `ca_file`/`cert_file`
/// is reported at start (and `insecure` warned about once), not at the first connection.
fn check_tls(url: &RedisUrl, key: &'static str) -> Result<(), ConfigError> {
    if url.tls.is_some() {
        crate::client::Endpoint::new(url).map_err(|e| ConfigError::Invalid {
            key,
            value: url.to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    crate::verify::filter::parse_duration(text)
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// TOML config file: [source] url, [target] url and the [sync] section (flags win).
    #[arg(long, env = "CUTOVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Source: redis://[user:pass@]host:port (all databases are copied unless filtered).
    #[arg(long = "source", env = "CUTOVER_SOURCE_URL", hide_env_values = true)]
    pub source: Option<String>,
    /// Load this RDB file into the target instead of syncing from a live source (--source is
    /// not used).
    #[arg(long = "from-rdb", value_name = "FILE")]
    pub from_rdb: Option<PathBuf>,
    /// Target: redis://[user:pass@]host:port (databases keep their numbers unless --db-map).
    #[arg(long = "target", env = "CUTOVER_TARGET_URL", hide_env_values = true)]
    pub target: Option<String>,
    /// Exit once the snapshot and the writes made while it was transferred are applied.
    #[arg(long)]
    pub once: bool,
    /// Ignore the replication position stored on the target (key `cutover:position` in db 0)
    /// and start over with a full sync. The target is flushed if it holds such a position.
    #[arg(long)]
    pub fresh: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Connection and silence time limit, in seconds: a replication link silent for longer is
    /// connected again; a source or target unreachable for five times longer fails the sync
    /// (until then it is retried with back-off, resuming from the stored position).
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub tuning: SyncTuningArgs,
    #[command(flatten)]
    pub source_tls: SourceTlsArgs,
    #[command(flatten)]
    pub target_tls: TargetTlsArgs,
}

/// The `[sync]` keys as flags of `cutover sync`.
#[derive(Args, Debug, Default)]
pub struct SyncTuningArgs {
    /// [sync] db_map: SOURCE=TARGET database pairs, e.g. "0=1,3=3". Databases not listed are
    /// copied under their own number (a warning names them) unless --only-mapped-dbs.
    #[arg(long = "db-map", value_name = "MAP")]
    pub db_map: Option<String>,
    /// [sync] only_mapped_dbs: copy only the databases --db-map lists.
    #[arg(long = "only-mapped-dbs")]
    pub only_mapped_dbs: bool,
    /// [sync] include_prefixes: copy only keys with this prefix (repeatable; with
    /// --include-regex, a key matching either is copied).
    #[arg(long = "include-prefix", value_name = "PREFIX")]
    pub include_prefixes: Vec<String>,
    /// [sync] exclude_prefixes: never copy keys with this prefix (repeatable).
    #[arg(long = "exclude-prefix", value_name = "PREFIX")]
    pub exclude_prefixes: Vec<String>,
    /// [sync] include_regex: copy only keys matching (unanchored unless ^…$; repeatable).
    #[arg(long = "include-regex", value_name = "REGEX")]
    pub include_regex: Vec<String>,
    /// [sync] exclude_regex: never copy keys matching (repeatable).
    #[arg(long = "exclude-regex", value_name = "REGEX")]
    pub exclude_regex: Vec<String>,
    /// [sync] exclude_commands: stream commands never applied to the target (repeatable,
    /// e.g. FLUSHALL).
    #[arg(long = "exclude-command", value_name = "NAME")]
    pub exclude_commands: Vec<String>,
    /// [sync] batch_size: stream commands per target transaction (default 1000).
    #[arg(long = "batch-size")]
    pub batch_size: Option<usize>,
    /// [sync] pipeline: commands in flight to the target (default 1024).
    #[arg(long = "pipeline")]
    pub pipeline: Option<usize>,
    /// [sync] big_key_bytes: keys whose encoded value is bigger are written as chunked plain
    /// commands instead of one RESTORE (default 524288).
    #[arg(long = "big-key-bytes")]
    pub big_key_bytes: Option<usize>,
    /// [sync] unsupported: what to do with what the target cannot hold (hash-field TTLs on an
    /// old target, functions before 7.0, unknown module types or commands): skip (report by
    /// key, exit code 3 with --once) or fail (stop at the first).
    #[arg(long = "unsupported", value_name = "skip|fail")]
    pub unsupported: Option<String>,
}

/// Merges `cutover sync` flags (which win) over `[sync]`.
pub fn sync_tuning(
    file: &config::SyncSection,
    flags: &SyncTuningArgs,
) -> Result<crate::sync::engine::SyncTuning, ConfigError> {
    use crate::sync::engine::{DEFAULT_BATCH_SIZE, DEFAULT_BIG_KEY_BYTES, SyncTuning};
    use crate::sync::filter::{Filter, FilterSpec};
    let list = |flag: &Vec<String>, file: &Option<Vec<String>>| {
        if flag.is_empty() {
            file.clone().unwrap_or_default()
        } else {
            flag.clone()
        }
    };
    let spec = FilterSpec {
        db_map: flags.db_map.clone().or_else(|| file.db_map.clone()),
        only_mapped_dbs: flags.only_mapped_dbs || file.only_mapped_dbs.unwrap_or(false),
        include_prefixes: list(&flags.include_prefixes, &file.include_prefixes),
        exclude_prefixes: list(&flags.exclude_prefixes, &file.exclude_prefixes),
        include_regex: list(&flags.include_regex, &file.include_regex),
        exclude_regex: list(&flags.exclude_regex, &file.exclude_regex),
        exclude_commands: list(&flags.exclude_commands, &file.exclude_commands),
    };
    if spec.only_mapped_dbs && spec.db_map.is_none() {
        return Err(ConfigError::Invalid {
            key: "sync.only_mapped_dbs",
            value: "true".into(),
            reason: "needs sync.db_map (--db-map), or nothing would be copied".into(),
        });
    }
    let filter = Filter::new(&spec).map_err(|e| ConfigError::Sync(e.to_string()))?;
    let unsupported = match flags
        .unsupported
        .clone()
        .or_else(|| file.unsupported.clone())
    {
        Some(v) => v.parse().map_err(|reason| ConfigError::Invalid {
            key: "sync.unsupported",
            value: v.clone(),
            reason,
        })?,
        None => Default::default(),
    };
    let positive = |key: &'static str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(ConfigError::Invalid {
            key,
            value: "0".into(),
            reason: "must be at least 1".into(),
        }),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let big_key_bytes = positive(
        "sync.big_key_bytes",
        flags.big_key_bytes.or(file.big_key_bytes),
        DEFAULT_BIG_KEY_BYTES,
    )?;
    if big_key_bytes > 64 * 1024 * 1024 {
        return Err(ConfigError::Invalid {
            key: "sync.big_key_bytes",
            value: big_key_bytes.to_string(),
            reason: "at most 67108864 (64 MiB): a key is held in memory whole up to this size"
                .into(),
        });
    }
    Ok(SyncTuning {
        filter,
        unsupported,
        batch_size: positive(
            "sync.batch_size",
            flags.batch_size.or(file.batch_size),
            DEFAULT_BATCH_SIZE,
        )?,
        pipeline: positive(
            "sync.pipeline",
            flags.pipeline.or(file.pipeline),
            crate::sync::target::DEFAULT_WINDOW,
        )?,
        big_key_bytes,
    })
}

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// TOML config file; every key can also be given as a flag or environment variable.
    #[arg(long, env = "CUTOVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// [proxy] listen: where clients connect.
    #[arg(long = "proxy-listen", env = "CUTOVER_PROXY_LISTEN")]
    pub proxy_listen: Option<String>,
    /// [proxy] password clients must AUTH with (not logged).
    #[arg(
        long = "proxy-password",
        env = "CUTOVER_PROXY_PASSWORD",
        hide_env_values = true
    )]
    pub proxy_password: Option<String>,
    /// [proxy] user: the ACL user name clients AUTH as (default: "default").
    #[arg(long = "proxy-user", env = "CUTOVER_PROXY_USER")]
    pub proxy_user: Option<String>,
    /// [proxy] max_clients (default 10000).
    #[arg(long = "max-clients", env = "CUTOVER_MAX_CLIENTS")]
    pub max_clients: Option<usize>,
    /// [source] url: redis://[user:pass@]host:port[/db].
    #[arg(long = "source", env = "CUTOVER_SOURCE_URL", hide_env_values = true)]
    pub source: Option<String>,
    /// [target] url: redis://[user:pass@]host:port[/db].
    #[arg(long = "target", env = "CUTOVER_TARGET_URL", hide_env_values = true)]
    pub target: Option<String>,
    /// [admin] listen (loopback only unless [admin] allow_remote = true).
    #[arg(long = "admin-listen", env = "CUTOVER_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// [admin] token required by the admin listener.
    #[arg(
        long = "admin-token",
        env = "CUTOVER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// [metrics] listen: Prometheus text at http://ADDR/metrics.
    #[arg(long = "metrics-listen", env = "CUTOVER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// [cutover] overlap: auto (default), replica or shadow — how the old side is kept an
    /// exact copy of the new primary after a switch.
    #[arg(long = "overlap", env = "CUTOVER_OVERLAP")]
    pub overlap: Option<String>,
    /// [proxy] tls_listen: a TLS listener next to the plain one.
    #[arg(long = "proxy-tls-listen", env = "CUTOVER_PROXY_TLS_LISTEN")]
    pub proxy_tls_listen: Option<String>,
    /// [proxy] tls_cert_file: PEM certificate chain of the TLS listener.
    #[arg(long = "proxy-tls-cert", env = "CUTOVER_PROXY_TLS_CERT")]
    pub proxy_tls_cert: Option<String>,
    /// [proxy] tls_key_file: PEM private key of the TLS listener.
    #[arg(long = "proxy-tls-key", env = "CUTOVER_PROXY_TLS_KEY")]
    pub proxy_tls_key: Option<String>,
    /// [proxy] tls_client_ca_file: require client certificates signed by these CAs.
    #[arg(long = "proxy-tls-client-ca", env = "CUTOVER_PROXY_TLS_CLIENT_CA")]
    pub proxy_tls_client_ca: Option<String>,
    /// [admin] tls_cert_file: the admin listener speaks TLS (with --admin-tls-key).
    #[arg(long = "admin-tls-cert", env = "CUTOVER_ADMIN_TLS_CERT")]
    pub admin_tls_cert: Option<String>,
    /// [admin] tls_key_file.
    #[arg(long = "admin-tls-key", env = "CUTOVER_ADMIN_TLS_KEY")]
    pub admin_tls_key: Option<String>,
    #[command(flatten)]
    pub source_tls: SourceTlsArgs,
    #[command(flatten)]
    pub target_tls: TargetTlsArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Redraw the status every second (on a terminal: clear the screen, show the snapshot's
    /// progress bar and the lag, like `watch`; otherwise one status per second, separated by
    /// lines; with --json one object per line). Ctrl-C ends it; so does an admin listener that
    /// stops answering (exit 2, with the error).
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop after this many redraws.
    #[arg(long, requires = "watch")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args, Debug)]
pub struct MoveArgs {
    /// Abort (and change nothing) if client commands would be held longer than this
    /// (default: [cutover] max_pause_ms, 100).
    #[arg(long = "max-pause-ms")]
    pub max_pause_ms: Option<u64>,
    /// Skip the preconditions (sync lag, other writers on the source, rollback safety).
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Args, Debug)]
pub struct FinishArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// How the CLI finds a running instance.
#[derive(Args, Debug)]
pub struct AdminArgs {
    /// HOST:PORT of the admin listener.
    #[arg(long, env = "CUTOVER_ADMIN")]
    pub admin: Option<String>,
    /// Admin token.
    #[arg(long, env = "CUTOVER_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read [admin] listen and token from this config file.
    #[arg(long, env = "CUTOVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The admin listener speaks TLS ([admin] tls_cert_file): trust the CAs in this PEM file.
    #[arg(long = "admin-tls-ca", env = "CUTOVER_ADMIN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl AdminArgs {
    fn resolve(&self) -> anyhow::Result<(String, Option<String>)> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let addr = self
            .admin
            .clone()
            .or(file.admin.listen)
            .unwrap_or_else(|| "127.0.0.1:6401".to_string());
        Ok((addr, self.token.clone().or(file.admin.token)))
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init_logging();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Status(args) => status(args),
        Command::Switch(args) => move_primary("SWITCH", args),
        Command::Rollback(args) => move_primary("ROLLBACK", args),
        Command::Finish(args) => finish(args),
        Command::Sync(args) => sync(args),
        Command::Verify(args) => verify(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cutover: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The async runtime. `CUTOVER_THREADS` sets the number of worker threads; `1` (the default)
/// runs everything on one thread, which on small machines beats work-stealing: the proxy's
/// tasks hand work to each other constantly and cross-thread wake-ups cost more than they
/// gain when the server and the clients need the other cores.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let threads: usize = std::env::var("CUTOVER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = resolve_settings(&args)?;
    runtime()?.block_on(crate::runtime::run(settings))?;
    Ok(ExitCode::SUCCESS)
}

/// `switch` / `rollback`: one admin command; the reply is the move's report.
fn move_primary(verb: &str, args: MoveArgs) -> anyhow::Result<ExitCode> {
    let mut command = vec![verb.to_string()];
    if let Some(ms) = args.max_pause_ms {
        command.push("MAXPAUSE".into());
        command.push(ms.to_string());
    }
    if args.force {
        command.push("FORCE".into());
    }
    admin_move(&args.admin, &command, args.json)
}

fn finish(args: FinishArgs) -> anyhow::Result<ExitCode> {
    admin_move(&args.admin, &["FINISH".to_string()], args.json)
}

fn admin_move(admin: &AdminArgs, command: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let (addr, token) = admin.resolve()?;
    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    let reply = runtime()?.block_on(crate::admin::client::request_tls(
        &addr,
        admin.tls_ca.as_deref(),
        token.as_deref(),
        &args,
        Duration::from_secs(30),
    ));
    let reply = match reply {
        Ok(r) => r,
        Err(crate::admin::client::AdminError::Refused(msg)) => {
            // The move did not happen; the reason is the whole message.
            let msg = msg.strip_prefix("ERR ").unwrap_or(&msg);
            eprintln!("cutover: {msg}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let redis_protocol::resp2::types::BytesFrame::BulkString(body) = reply else {
        anyhow::bail!("unexpected reply from {addr}: {reply:?}");
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&body).context("the admin reply is not JSON")?;
    if json {
        println!("{doc}");
    } else {
        println!("{}", crate::status::render_step(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.watch {
        return watch_status(args);
    }
    let (addr, token) = args.admin.resolve()?;
    let reply = runtime()?.block_on(crate::admin::client::request_tls(
        &addr,
        args.admin.tls_ca.as_deref(),
        token.as_deref(),
        &["STATUS"],
        Duration::from_secs(5),
    ))?;
    let redis_protocol::resp2::types::BytesFrame::BulkString(body) = reply else {
        anyhow::bail!("unexpected STATUS reply from {addr}: {reply:?}");
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&body).context("the STATUS reply is not JSON")?;
    if args.json {
        println!("{doc}");
    } else {
        print!("{}", crate::status::render_text(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

/// One `STATUS` request, parsed.
async fn fetch_status(
    addr: &str,
    tls_ca: Option<&std::path::Path>,
    token: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let reply =
        crate::admin::client::request_tls(addr, tls_ca, token, &["STATUS"], Duration::from_secs(5))
            .await?;
    let redis_protocol::resp2::types::BytesFrame::BulkString(body) = reply else {
        anyhow::bail!("unexpected STATUS reply from {addr}: {reply:?}");
    };
    serde_json::from_slice(&body).context("the STATUS reply is not JSON")
}

/// `cutover status --watch`: a status every second until Ctrl-C, `--count` redraws, or an
/// error (the admin listener gone: exit 2 with the error).
fn watch_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let (addr, token) = args.admin.resolve()?;
    let tty = std::io::stdout().is_terminal();
    let rt = runtime()?;
    rt.block_on(async {
        let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
        // (keys done, when) of the previous redraw, for the snapshot's rate and ETA.
        let mut prev: Option<(u64, std::time::Instant)> = None;
        let mut drawn = 0u64;
        loop {
            // (The error names the admin listener and says what to check.)
            let doc = fetch_status(&addr, args.admin.tls_ca.as_deref(), token.as_deref()).await?;
            let now = std::time::Instant::now();
            let done = doc["sync"]["keys_done"].as_u64().unwrap_or(0);
            let rate = prev.and_then(|(d, t)| {
                let secs = now.duration_since(t).as_secs_f64();
                (secs > 0.0 && done >= d).then(|| (done - d) as f64 / secs)
            });
            prev = Some((done, now));
            let mut out = std::io::stdout().lock();
            let text = if args.json {
                format!("{doc}\n")
            } else {
                crate::status::render_watch(&doc, rate, 40)
            };
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let written = if args.json {
                write!(out, "{text}")
            } else if tty {
                // Cursor home, clear the screen, then the view (as `watch` does).
                write!(
                    out,
                    "\x1b[H\x1b[2JEvery 1.0 s: cutover status --admin {addr}   (unix {stamp}; Ctrl-C ends)\n\n{text}"
                )
            } else {
                write!(out, "--- {addr} at unix {stamp} ---\n{text}")
            };
            // A closed pipe (`| head`) ends the watch quietly.
            if written.and_then(|_| out.flush()).is_err() {
                return Ok(ExitCode::SUCCESS);
            }
            drop(out);
            drawn += 1;
            if args.count.is_some_and(|c| drawn >= c) {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}

fn sync(args: SyncArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let target = args
        .target
        .clone()
        .or(file.target.url.clone())
        .ok_or(ConfigError::Missing("[target] url (--target)"))?;
    let target = RedisUrl::parse_with_tls(&target, &args.target_tls.over(&file.target.tls))
        .context("--target")?;
    check_tls(&target, "target.tls")?;
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let tuning = sync_tuning(&file.sync, &args.tuning)?;
    if let Some(path) = args.from_rdb {
        let opts = crate::sync::engine::RdbLoadOptions {
            path,
            target,
            timeout,
            progress: !args.quiet,
            tuning,
        };
        return Ok(sync_summary(&crate::sync::engine::load_rdb(&opts)?));
    }
    let source = args
        .source
        .clone()
        .or(file.source.url.clone())
        .ok_or(ConfigError::Missing(
            "[source] url (--source), or --from-rdb FILE",
        ))?;
    let source = RedisUrl::parse_with_tls(&source, &args.source_tls.over(&file.source.tls))
        .context("--source")?;
    check_tls(&source, "source.tls")?;
    let opts = crate::sync::engine::SyncOptions {
        once: args.once,
        timeout,
        progress: !args.quiet,
        fresh: args.fresh,
        tuning,
        ..crate::sync::engine::SyncOptions::new(source, target)
    };
    // A target (or source) that goes away is waited for: the sync runs again with back-off
    // and resumes from the position stored on the target; what waiting cannot cure, or an
    // outage longer than five times --timeout-secs, ends it (exit code 2).
    let ctx = crate::sync::engine::RunContext::new(&opts, true)?;
    let policy = crate::sync::retry::RetryPolicy {
        give_up_after: Some(timeout * crate::sync::engine::RECONNECT_TIMEOUTS),
        retry_permanent: false,
    };
    let report = crate::sync::retry::run_retrying(&opts, policy, &ctx)?;
    Ok(sync_summary(&report))
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    use crate::verify::{self, VerifyOptions, compare::Mode, filter};
    if let Some(addr) = &args.admin {
        runtime()?.block_on(crate::admin::client::request(
            addr,
            args.token.as_deref(),
            &["VERIFY"],
            Duration::from_secs(5),
        ))?;
        eprintln!(
            "cutover verify: started in the instance at {addr}; `cutover status --admin {addr}` shows the result"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let url = |v: &Option<String>, flag: &str, tls| -> anyhow::Result<RedisUrl> {
        let text = v
            .as_deref()
            .with_context(|| format!("{flag} is required"))?;
        let url = RedisUrl::parse_with_tls(text, &tls).with_context(|| flag.to_string())?;
        check_tls(&url, "tls")?;
        Ok(url)
    };
    let none = config::TlsOptions::default();
    let mut opts = VerifyOptions::new(
        url(&args.source, "--source", args.source_tls.over(&none))?,
        url(&args.target, "--target", args.target_tls.over(&none))?,
    );
    opts.db_map = filter::DbMap::parse(&args.db_map)?;
    opts.filter = filter::KeyFilter::new(
        &args.include_prefix,
        &args.exclude_prefix,
        &args.include_regex,
        &args.exclude_regex,
    )?;
    opts.mode = Mode::parse(&args.mode).context("--mode")?;
    opts.ttl_tolerance = args.ttl_tolerance;
    opts.rounds = args.rounds;
    opts.interval = args.interval;
    opts.scan_count = args.scan_count.clamp(10, 100_000);
    opts.timeout = Duration::from_secs(args.timeout_secs.max(1));
    opts.progress = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = std::sync::Arc::new(verify::scan::Progress::default());
    let report = verify::run(&opts, &progress).context("verify failed")?;
    let mut lines = String::new();
    for line in report.json_lines() {
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    match &args.json {
        Some(path) => std::fs::write(path, &lines)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{lines}"),
    }
    eprint!("{}", report.summary_table());
    Ok(if report.is_equal() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints what a finished sync did; exit code 3 if something was not copied.
fn sync_summary(report: &crate::sync::engine::SyncReport) -> ExitCode {
    let s = &report.stats;
    eprintln!(
        "cutover sync: done at offset {} into {}: {} keys ({} restored, {} plain, {} expired and skipped, {} not copied), {} functions, {} stream commands applied, {} skipped",
        report.offset,
        report.target,
        s.keys_done(),
        s.restored,
        s.plain,
        s.expired,
        s.unsupported,
        s.functions,
        report.commands,
        report.commands_skipped
    );
    if s.field_ttls_dropped > 0 {
        eprintln!(
            "cutover sync: {} hashes lost their field TTLs (the target cannot hold them)",
            s.field_ttls_dropped
        );
    }
    if s.unsupported > 0 {
        for p in &s.problems {
            eprintln!("cutover sync: not copied: {p}");
        }
        eprintln!(
            "cutover sync: {} items were NOT copied; the target is incomplete",
            s.unsupported
        );
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

/// Merges flags/env (which win) over the config file.
pub fn resolve_settings(args: &RunArgs) -> Result<Settings, ConfigError> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let proxy_tls = proxy_tls(args, &file)?;
    let listen = args
        .proxy_listen
        .clone()
        .or(file.proxy.listen)
        .unwrap_or_else(|| config::DEFAULT_PROXY_LISTEN.to_string());
    let source = args
        .source
        .clone()
        .or(file.source.url)
        .ok_or(ConfigError::Missing("[source] url (--source)"))?;
    let target = args.target.clone().or(file.target.url);
    let password = args.proxy_password.clone().or(file.proxy.password);
    let user = args.proxy_user.clone().or(file.proxy.user);
    if user.is_some() && password.is_none() {
        return Err(ConfigError::Invalid {
            key: "proxy.user",
            value: user.unwrap_or_default(),
            reason: "a proxy user needs [proxy] password".into(),
        });
    }
    let admin = match args.admin_listen.clone().or(file.admin.listen) {
        Some(listen) => {
            let addr = config::parse_addr("admin.listen", &listen)?;
            let token = args.admin_token.clone().or(file.admin.token);
            config::check_admin_addr(addr, file.admin.allow_remote.unwrap_or(false), &token)?;
            let tls = config::ServerTlsFiles::from_pair(
                "admin.tls_cert_file",
                args.admin_tls_cert.clone().or(file.admin.tls_cert_file),
                args.admin_tls_key.clone().or(file.admin.tls_key_file),
                None,
            )?;
            Some(AdminSettings {
                listen: addr,
                token,
                tls,
            })
        }
        None => None,
    };
    let metrics = args
        .metrics_listen
        .clone()
        .or(file.metrics.listen)
        .map(|m| config::parse_addr("metrics.listen", &m))
        .transpose()?;
    let mut cutover = crate::cutover::CutoverSettings::default();
    if let Some(ms) = file.cutover.max_pause_ms {
        cutover.max_pause = Duration::from_millis(ms);
    }
    if let Some(b) = file.cutover.max_lag_bytes {
        cutover.max_lag_bytes = b;
    }
    if let Some(n) = file.cutover.shadow_queue {
        if n == 0 {
            return Err(ConfigError::Invalid {
                key: "cutover.shadow_queue",
                value: n.to_string(),
                reason: "must be at least 1".into(),
            });
        }
        cutover.shadow_queue = n;
    }
    if let Some(mode) = args.overlap.clone().or(file.cutover.overlap) {
        cutover.overlap =
            crate::cutover::overlap::OverlapMode::parse(&mode).ok_or(ConfigError::Invalid {
                key: "cutover.overlap",
                value: mode.clone(),
                reason: "must be \"auto\", \"replica\" or \"shadow\"".into(),
            })?;
    }
    let buffer_limit = file.proxy.buffer_limit_bytes.unwrap_or(4 * 1024 * 1024);
    if buffer_limit < 64 * 1024 {
        return Err(ConfigError::Invalid {
            key: "proxy.buffer_limit_bytes",
            value: buffer_limit.to_string(),
            reason: "must be at least 65536".into(),
        });
    }
    let source = RedisUrl::parse_with_tls(&source, &args.source_tls.over(&file.source.tls))?;
    let target_tls = args.target_tls.over(&file.target.tls);
    let target = target
        .map(|t| RedisUrl::parse_with_tls(&t, &target_tls))
        .transpose()?;
    check_tls(&source, "source.tls")?;
    if let Some(t) = &target {
        check_tls(t, "target.tls")?;
    }
    let sync = sync_tuning(&file.sync, &SyncTuningArgs::default())?;
    Ok(Settings {
        sync,
        proxy: ProxySettings {
            listen: config::parse_addr("proxy.listen", &listen)?,
            auth: ClientAuth { user, password },
            max_clients: args
                .max_clients
                .or(file.proxy.max_clients)
                .unwrap_or(10_000),
            connect_timeout: Duration::from_millis(file.proxy.connect_timeout_ms.unwrap_or(2_000)),
            buffer_limit,
            tls: proxy_tls,
        },
        source,
        target,
        admin,
        metrics,
        cutover,
    })
}

/// `[proxy] tls_listen` and its files (flags win): all of listen, cert and key, or none.
fn proxy_tls(args: &RunArgs, file: &FileConfig) -> Result<Option<config::ProxyTls>, ConfigError> {
    let p = &file.proxy;
    let files = config::ServerTlsFiles::from_pair(
        "proxy.tls_cert_file",
        args.proxy_tls_cert.clone().or(p.tls_cert_file.clone()),
        args.proxy_tls_key.clone().or(p.tls_key_file.clone()),
        args.proxy_tls_client_ca
            .clone()
            .or(p.tls_client_ca_file.clone()),
    )?;
    let listen = args.proxy_tls_listen.clone().or(p.tls_listen.clone());
    match (listen, files) {
        (None, None) => Ok(None),
        (Some(l), Some(files)) => Ok(Some(config::ProxyTls {
            listen: config::parse_addr("proxy.tls_listen", &l)?,
            files,
            handshake_timeout: Duration::from_millis(p.tls_handshake_timeout_ms.unwrap_or(5_000)),
        })),
        (Some(l), None) => Err(ConfigError::Invalid {
            key: "proxy.tls_listen",
            value: l,
            reason: "a TLS listener needs [proxy] tls_cert_file and tls_key_file".into(),
        }),
        (None, Some(f)) => Err(ConfigError::Invalid {
            key: "proxy.tls_cert_file",
            value: f.cert_file.display().to_string(),
            reason: "set [proxy] tls_listen (HOST:PORT) for the TLS listener".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[source]\nurl = \"redis://127.0.0.1:1\"\n[source.tls]\ninsecure = true\nserver_name = \"a.test\"\n[target]\nurl = \"redis://127.0.0.1:2\"\n",
        )
        .unwrap();
        let mut args = RunArgs {
            config: Some(path),
            ..RunArgs::default()
        };
        let s = resolve_settings(&args).unwrap();
        let tls = s.source.tls.as_ref().expect("[source.tls] turns TLS on");
        assert!(tls.insecure);
        assert_eq!(tls.server_name.as_deref(), Some("a.test"));
        assert!(
            s.target.as_ref().unwrap().tls.is_none(),
            "off unless configured"
        );
        // A flag overrides the file's server_name; a missing CA file stops the start.
        args.source_tls.server_name = Some("b.test".into());
        args.target_tls.ca_file = Some("/nonexistent/ca.pem".into());
        let e = resolve_settings(&args).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        args.target_tls.ca_file = None;
        let s = resolve_settings(&args).unwrap();
        assert_eq!(s.source.tls.unwrap().server_name.as_deref(), Some("b.test"));
    }

    #[test]
    fn sync_flags_win_over_the_file() {
        let file = FileConfig::parse(
            "[sync]\ndb_map = \"0=1\"\nbatch_size = 50\nunsupported = \"fail\"\nexclude_prefixes = [\"tmp:\"]\n",
            "test",
        )
        .unwrap();
        let t = sync_tuning(&file.sync, &SyncTuningArgs::default()).unwrap();
        assert_eq!(t.batch_size, 50);
        assert_eq!(t.pipeline, crate::sync::target::DEFAULT_WINDOW);
        assert_eq!(t.unsupported, crate::sync::convert::UnsupportedPolicy::Fail);
        assert_eq!(t.filter.map_db(0), Some(1));
        assert!(!t.filter.key_allowed(b"tmp:x"));
        let flags = SyncTuningArgs {
            batch_size: Some(7),
            unsupported: Some("skip".into()),
            exclude_prefixes: vec!["other:".into()],
            ..SyncTuningArgs::default()
        };
        let t = sync_tuning(&file.sync, &flags).unwrap();
        assert_eq!(t.batch_size, 7);
        assert_eq!(t.unsupported, crate::sync::convert::UnsupportedPolicy::Skip);
        assert!(t.filter.key_allowed(b"tmp:x"));
        assert!(!t.filter.key_allowed(b"other:x"));
        for bad in [
            "[sync]\nbatch_size = 0\n",
            "[sync]\nbig_key_bytes = 100000000\n",
            "[sync]\nonly_mapped_dbs = true\n",
            "[sync]\nexclude_commands = [\"MULTI\"]\n",
        ] {
            let file = FileConfig::parse(bad, "test").unwrap();
            assert!(
                sync_tuning(&file.sync, &SyncTuningArgs::default()).is_err(),
                "{bad}"
            );
        }
        assert!(FileConfig::parse("[sync]\nunknown = 1\n", "test").is_err());
    }
}
