//! Configuration: a TOML file whose every key can be overridden by a flag or an
//! environment variable (see `cli.rs` for the flag names).
//!
//! ```toml
//! [proxy]
//! listen = "127.0.0.1:6400"
//! [source]
//! url = "redis://127.0.0.1:6379"
//! [target]
//! url = "redis://127.0.0.1:6380"
//! [admin]
//! listen = "127.0.0.1:6401"
//! [metrics]
//! listen = "127.0.0.1:9401"
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod url;

/// Everything that can go wrong while reading the configuration. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("invalid Redis URL {url:?}: {reason} (expected redis://[user:pass@]host:port[/db])")]
    Url { url: String, reason: String },
    #[error(
        "missing setting {0}: set it in the config file, as a flag or as an environment variable"
    )]
    Missing(&'static str),
    #[error("invalid [sync] setting: {0}")]
    Sync(String),
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// The file as written by the user; every field optional so flags can fill the gaps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub proxy: ProxySection,
    #[serde(default)]
    pub source: EndpointSection,
    #[serde(default)]
    pub target: EndpointSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub cutover: CutoverSection,
    #[serde(default)]
    pub sync: SyncSection,
}

/// `[sync]`: what the sync copies and how (flags of `cutover sync` override each key).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// `"0=1,3=3"`: source db → target db. Unlisted dbs keep their number unless
    /// `only_mapped_dbs`.
    pub db_map: Option<String>,
    pub only_mapped_dbs: Option<bool>,
    pub include_prefixes: Option<Vec<String>>,
    pub exclude_prefixes: Option<Vec<String>>,
    pub include_regex: Option<Vec<String>>,
    pub exclude_regex: Option<Vec<String>>,
    /// Stream commands never applied to the target (e.g. `["FLUSHALL", "FLUSHDB"]`).
    pub exclude_commands: Option<Vec<String>>,
    /// Stream commands per target transaction (default 1000).
    pub batch_size: Option<usize>,
    /// Commands in flight to the target (default 1024).
    pub pipeline: Option<usize>,
    /// Keys whose encoded value is bigger are written as chunked plain commands instead of
    /// one RESTORE (default 524288).
    pub big_key_bytes: Option<usize>,
    /// `skip` (default) or `fail`: what to do with what the target cannot hold.
    pub unsupported: Option<String>,
    /// The bound between the two sides' clocks beyond which `cutover run` warns and alerts
    /// (default 20, see `cutover::clock`).
    pub max_clock_skew_ms: Option<u64>,
}

/// `[cutover]`: the switch barrier and the shadow writes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverSection {
    /// Longest pause of client commands a move may take before it is aborted (default 100).
    pub max_pause_ms: Option<u64>,
    /// The first switch is refused while the sync lags more than this (default 1 MiB).
    pub max_lag_bytes: Option<u64>,
    /// Shadow writes that may wait for the old side (default 1,000,000); beyond, a rollback
    /// is no longer safe.
    pub shadow_queue: Option<usize>,
    /// `auto` (default), `replica` or `shadow`: how the old side is kept in step after a
    /// switch (`cutover::overlap`).
    pub overlap: Option<String>,
    /// At a move, disconnect a client stalled this long (not reading its replies, a `MULTI`
    /// open, a blocked call with commands behind it); 0: never (default 10000).
    pub stalled_client_disconnect_ms: Option<u64>,
    /// Bounds of the proxy's script registry, loaded into each new primary (defaults 10000
    /// scripts, 64 MiB).
    pub script_cache_scripts: Option<usize>,
    pub script_cache_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    pub listen: Option<String>,
    pub password: Option<String>,
    pub user: Option<String>,
    pub max_clients: Option<usize>,
    pub connect_timeout_ms: Option<u64>,
    pub buffer_limit_bytes: Option<usize>,
    /// A second, TLS listener next to `listen` (like Redis' `tls-port` next to `port`).
    pub tls_listen: Option<String>,
    /// PEM certificate chain and private key of the TLS listener.
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    /// PEM CA certificates: when set, clients of the TLS listener must present a certificate
    /// signed by one of them.
    pub tls_client_ca_file: Option<String>,
    /// How long a client may take to finish the TLS handshake (default 5000).
    pub tls_handshake_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    pub url: Option<String>,
    /// `[source.tls]` / `[target.tls]`: TLS to this side (any setting turns TLS on, as
    /// `rediss://` does).
    #[serde(default)]
    pub tls: TlsOptions,
    /// `[source.address_map]` / `[target.address_map]`: for a cluster side, the address each
    /// node announces (`"host:port"`) → the address `cutover` reaches it at (NAT, containers,
    /// clouds announcing private or `127.0.0.1` addresses). Read by `cluster::AddressMap`.
    #[serde(default)]
    pub address_map: std::collections::BTreeMap<String, String>,
}

/// TLS to one side (`[source.tls]`, `[target.tls]`, the `--source-tls-*` flags). Plain data:
/// [`crate::client`] turns it into a rustls configuration, once per distinct set of options.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM file of the CA(s) that sign the server's certificate (default: the system's roots).
    pub ca_file: Option<String>,
    /// PEM client certificate chain, for servers that require one (`tls-auth-clients yes`).
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<String>,
    /// The name sent as SNI and checked in the server's certificate (default: the URL's host;
    /// set it when a node is reached by IP but its certificate names a host).
    pub server_name: Option<String>,
    /// Skips certificate verification (logged as a warning and shown in status).
    #[serde(default)]
    pub insecure: bool,
}

impl TlsOptions {
    /// True when any option is set (which turns TLS on).
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.server_name.is_some()
            || self.insecure
    }

    /// `self` with every option of `over` that is set (flags over the file).
    pub fn overlaid(&self, over: &TlsOptions) -> TlsOptions {
        TlsOptions {
            ca_file: over.ca_file.clone().or(self.ca_file.clone()),
            cert_file: over.cert_file.clone().or(self.cert_file.clone()),
            key_file: over.key_file.clone().or(self.key_file.clone()),
            server_name: over.server_name.clone().or(self.server_name.clone()),
            insecure: over.insecure || self.insecure,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub allow_remote: Option<bool>,
    /// When both are set, the admin listener speaks TLS only.
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })
    }
}

pub use url::RedisUrl;

/// Compares a secret without an early exit, so the time taken does not tell how many leading
/// bytes of a guess were right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who may use the proxy: `[proxy] password` and optional ACL `user`.
#[derive(Clone, Default)]
pub struct ClientAuth {
    pub user: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The resolved settings the proxy runs with.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    pub auth: ClientAuth,
    pub max_clients: usize,
    pub connect_timeout: Duration,
    /// Bytes buffered per direction per connection before the proxy stops reading (back-pressure).
    pub buffer_limit: usize,
    /// The TLS listener next to the plain one (`[proxy] tls_listen`).
    pub tls: Option<ProxyTls>,
}

/// `[proxy] tls_listen` and its certificate.
#[derive(Debug, Clone)]
pub struct ProxyTls {
    pub listen: SocketAddr,
    pub files: ServerTlsFiles,
    /// A client that has not finished its handshake by then is dropped.
    pub handshake_timeout: Duration,
}

/// What a TLS listener presents, and whom it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Clients must present a certificate signed by one of these CAs.
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// Reads `<prefix>.tls_cert_file`/`tls_key_file` (both or neither).
    pub fn from_pair(
        key: &'static str,
        cert: Option<String>,
        private_key: Option<String>,
        client_ca: Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        match (cert, private_key) {
            (None, None) => {
                if let Some(ca) = client_ca {
                    return Err(ConfigError::Invalid {
                        key,
                        value: ca,
                        reason: "a client CA needs tls_cert_file and tls_key_file too".into(),
                    });
                }
                Ok(None)
            }
            (Some(c), Some(k)) => Ok(Some(ServerTlsFiles {
                cert_file: c.into(),
                key_file: k.into(),
                client_ca_file: client_ca.map(PathBuf::from),
            })),
            (Some(v), None) | (None, Some(v)) => Err(ConfigError::Invalid {
                key,
                value: v,
                reason: "tls_cert_file and tls_key_file go together: set both".into(),
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// `[admin] tls_cert_file`/`tls_key_file`: the admin listener speaks TLS.
    pub tls: Option<ServerTlsFiles>,
}

pub const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:6400";

pub fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ConfigError::Invalid {
            key,
            value: value.to_string(),
            reason: "expected HOST:PORT".into(),
        })
}

/// Admin is loopback-only unless `allow_remote = true`: it can flip production traffic.
pub fn check_admin_addr(
    addr: SocketAddr,
    allow_remote: bool,
    token: &Option<String>,
) -> Result<(), ConfigError> {
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(ConfigError::Invalid {
            key: "admin.listen",
            value: addr.to_string(),
            reason: "the admin listener is loopback-only; set [admin] allow_remote = true (and a token) to expose it".into(),
        });
    }
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(ConfigError::Invalid {
            key: "admin.listen",
            value: addr.to_string(),
            reason: "a non-loopback admin listener needs [admin] token".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_map_in_the_file() {
        let f = FileConfig::parse(
            "[source]\nurl = \"redis://a:1,b:2\"\n[source.address_map]\n\"10.0.0.1:7000\" = \"127.0.0.1:17000\"\n",
            "test",
        )
        .unwrap();
        assert_eq!(f.source.address_map["10.0.0.1:7000"], "127.0.0.1:17000");
        assert!(f.target.address_map.is_empty());
    }

    #[test]
    fn minimal_file_is_accepted() {
        let text = r#"
[proxy]
listen = "127.0.0.1:6400"
[source]
url = "redis://127.0.0.1:6379"
[target]
url = "redis://127.0.0.1:6380"
[admin]
listen = "127.0.0.1:6401"
[metrics]
listen = "127.0.0.1:9401"
"#;
        let f = FileConfig::parse(text, "test").unwrap();
        assert_eq!(f.proxy.listen.as_deref(), Some("127.0.0.1:6400"));
        assert!(FileConfig::parse("[proxy]\nlisten = 1\n", "t").is_err());
        assert!(FileConfig::parse("[nonsense]\n", "t").is_err());
    }
}
