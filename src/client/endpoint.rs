//! [`Endpoint`]: a server to reach and how, built from a [`RedisUrl`].

use std::fmt;
use std::sync::Arc;

use rustls::ClientConfig;

use super::error::ClientError;
use super::tls;
use crate::config::RedisUrl;

/// A server to connect to: host and port, credentials, database and TLS settings.
///
/// The rustls configuration is built when the endpoint is (reading the CA, certificate and
/// key files) and shared by every connection to it; building the same options again returns
/// the same `Arc` ([`tls::client_config`] keeps one per distinct set of options), so a side's
/// connections share one configuration and its TLS session cache.
///
/// `Display` and `Debug` show the URL with the password masked.
#[derive(Clone)]
pub struct Endpoint {
    url: RedisUrl,
    tls: Option<Arc<ClientConfig>>,
}

impl Endpoint {
    /// The endpoint of `url` (TLS when the URL says so). Fails only when the TLS files cannot
    /// be read or make no valid configuration.
    pub fn new(url: &RedisUrl) -> Result<Endpoint, ClientError> {
        let tls = match &url.tls {
            None => None,
            Some(options) => Some(tls::client_config(options, &url.to_string()).map_err(
                |reason| ClientError::TlsSetup {
                    endpoint: url.to_string(),
                    reason,
                },
            )?),
        };
        Ok(Endpoint {
            url: url.clone(),
            tls,
        })
    }

    /// The URL this endpoint was built from.
    pub fn url(&self) -> &RedisUrl {
        &self.url
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        self.url.addr()
    }

    /// The database selected at login.
    pub fn db(&self) -> u32 {
        self.url.db
    }

    /// True for a TLS endpoint.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// True when the server's certificate is not verified.
    pub fn is_insecure(&self) -> bool {
        self.url.tls_insecure()
    }

    pub(super) fn tls_config(&self) -> Option<&Arc<ClientConfig>> {
        self.tls.as_ref()
    }

    /// The name sent as SNI and verified in the certificate: `server_name`, else the host.
    pub(super) fn server_name(&self) -> &str {
        self.url
            .tls
            .as_ref()
            .and_then(|t| t.server_name.as_deref())
            .unwrap_or(&self.url.host)
    }

    /// True when `server_name` was set (for the hint of a name mismatch).
    pub(super) fn has_server_name(&self) -> bool {
        self.url
            .tls
            .as_ref()
            .is_some_and(|t| t.server_name.is_some())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.url, f)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("tls", &self.url.tls)
            .finish()
    }
}
