//! The flags of each subcommand (clap): endpoints, per-side TLS, sync tuning, admin access.

use super::*;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Source: redis://[user:pass@]host:port (every database with keys is compared; a /db in
    /// the URL is ignored, see --db-map). A cluster is found from any node; several nodes may
    /// be listed: redis://host:port,host:port.
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
    /// A cluster source's nodes announce unreachable addresses: announced=reachable pairs,
    /// e.g. 10.0.0.1:7000=127.0.0.1:17000 (repeatable).
    #[arg(long = "source-address-map", value_name = "HOST:PORT=HOST:PORT")]
    pub source_address_map: Vec<String>,
    /// The same for a cluster target.
    #[arg(long = "target-address-map", value_name = "HOST:PORT=HOST:PORT")]
    pub target_address_map: Vec<String>,
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
    /// With --admin, when that admin listener speaks TLS: trust the CAs in this PEM file.
    #[arg(
        long = "admin-tls-ca",
        env = "CUTOVER_ADMIN_TLS_CA",
        requires = "admin"
    )]
    pub admin_tls_ca: Option<PathBuf>,
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

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    crate::verify::filter::parse_duration(text)
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// TOML config file: [source] url, [target] url and the [sync] section (flags win).
    #[arg(long, env = "CUTOVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Source: redis://[user:pass@]host:port (all databases are copied unless filtered), or
    /// a Redis Cluster: any node, or several (redis://host:port,host:port) — one replication
    /// link per master then ([source.address_map] in the config file maps announced
    /// addresses).
    #[arg(long = "source", env = "CUTOVER_SOURCE_URL", hide_env_values = true)]
    pub source: Option<String>,
    /// Load this RDB file into the target instead of syncing from a live source (--source is
    /// not used).
    #[arg(long = "from-rdb", value_name = "FILE")]
    pub from_rdb: Option<PathBuf>,
    /// Target: redis://[user:pass@]host:port (databases keep their numbers unless --db-map),
    /// or a Redis Cluster: any node, or several (redis://host:port,host:port); a cluster has
    /// only database 0 ([target.address_map] maps announced addresses).
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
    /// [metrics] listen: Prometheus text at http://ADDR/metrics while the sync runs (a
    /// cluster source's series carry a `shard` label per source shard).
    #[arg(long = "metrics-listen", env = "CUTOVER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
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
    pub(super) fn resolve(&self) -> anyhow::Result<(String, Option<String>)> {
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
