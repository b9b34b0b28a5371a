//! Opening a connection to a backend for the proxy's data path: [`crate::client::connect`]
//! (resolve, TCP with a time limit, TLS for a `rediss://` side, the proxy's own `AUTH` from
//! the backend URL — never the client's — and `SELECT` of the URL's database), behind the
//! backend's shared back-off so a dead server is not hammered by every session at once.

use std::time::Duration;

use super::io::{Conn, Stream};
use crate::client::{self, ClientError, Endpoint};
use crate::route::Backend;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{backend} is unreachable ({reason}); retrying in the background")]
    Unreachable { backend: String, reason: String },
    #[error("{backend} is down ({last_error}); next connection attempt in {retry_ms} ms")]
    BackingOff {
        backend: String,
        last_error: String,
        retry_ms: u64,
    },
    #[error(
        "{backend} refused the proxy's credentials ({reply}); fix the user/password in its URL"
    )]
    Auth { backend: String, reply: String },
    #[error("{backend} refused SELECT ({reply})")]
    Select { backend: String, reply: String },
    /// Anything else the connection layer reports (it names the endpoint and what to change:
    /// credentials, CA, server name, scheme).
    #[error("{0}")]
    Client(#[from] ClientError),
}

impl From<client::Stream> for Conn {
    fn from(s: client::Stream) -> Conn {
        match s {
            client::Stream::Plain(tcp) => Conn::from(tcp),
            client::Stream::Tls(tls) => Conn::new(Stream::TlsClient(tls)),
        }
    }
}

/// Opens a connection for the proxy's data path (a session's own connection, the shared
/// one), ready for client commands.
pub async fn open(backend: &Backend, timeout: Duration) -> Result<Conn, UpstreamError> {
    if let Some(wait) = backend.backoff_remaining() {
        return Err(UpstreamError::BackingOff {
            backend: backend.describe(),
            last_error: backend
                .last_error()
                .unwrap_or_else(|| "connection failed".into()),
            retry_ms: wait.as_millis() as u64,
        });
    }
    let connect = async {
        let endpoint = Endpoint::new(&backend.url)?;
        client::connect(&endpoint, timeout).await
    };
    // (client::connect bounds each step by `timeout`; this bounds the whole.)
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(s)) => {
            backend.connect_succeeded();
            metrics::counter!("cutover_backend_connects_total", "side" => backend.side.as_str())
                .increment(1);
            Ok(Conn::from(s))
        }
        Ok(Err(e)) => {
            let wait = backend.connect_failed(&e.to_string());
            metrics::counter!("cutover_backend_connect_failures_total", "side" => backend.side.as_str())
                .increment(1);
            tracing::warn!(backend = %backend.describe(), error = %e, backoff_ms = wait.as_millis() as u64, "backend connect failed");
            Err(match e {
                ClientError::Refused { command, reply, .. } if command == "AUTH" => {
                    UpstreamError::Auth {
                        backend: backend.describe(),
                        reply,
                    }
                }
                ClientError::Refused { command, reply, .. } if command == "SELECT" => {
                    UpstreamError::Select {
                        backend: backend.describe(),
                        reply,
                    }
                }
                other => other.into(),
            })
        }
        Err(_) => {
            let e = UpstreamError::Unreachable {
                backend: backend.describe(),
                reason: format!("no answer within {} ms", timeout.as_millis()),
            };
            backend.connect_failed(&e.to_string());
            Err(e)
        }
    }
}
