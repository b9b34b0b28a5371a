//! Opening a connection to a backend: TCP connect with a time limit, then the proxy's own
//! `AUTH` (from the backend URL, never the client's) and `SELECT` of the URL's database.
//! A failure starts the backend's shared back-off so a dead server is not hammered.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::io::Conn;
use crate::resp::ReplyParser;
use crate::resp::request::encode_command;
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
    #[error("{backend} refused SELECT {db} ({reply})")]
    Select {
        backend: String,
        db: u32,
        reply: String,
    },
}

/// Opens a connection for the proxy's data path (a session's own connection, the shared
/// one): [`connect`], as the data path's stream type.
pub async fn open(backend: &Backend, timeout: Duration) -> Result<Conn, UpstreamError> {
    connect(backend, timeout).await.map(Conn::from)
}

/// Connects and authenticates. The returned stream is ready for client commands.
pub async fn connect(backend: &Backend, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    if let Some(wait) = backend.backoff_remaining() {
        return Err(UpstreamError::BackingOff {
            backend: backend.describe(),
            last_error: backend
                .last_error()
                .unwrap_or_else(|| "connection failed".into()),
            retry_ms: wait.as_millis() as u64,
        });
    }
    match tokio::time::timeout(timeout, connect_inner(backend)).await {
        Ok(Ok(s)) => {
            backend.connect_succeeded();
            metrics::counter!("cutover_backend_connects_total", "side" => backend.side.as_str())
                .increment(1);
            Ok(s)
        }
        Ok(Err(e)) => {
            let wait = backend.connect_failed(&e.to_string());
            metrics::counter!("cutover_backend_connect_failures_total", "side" => backend.side.as_str())
                .increment(1);
            tracing::warn!(backend = %backend.describe(), error = %e, backoff_ms = wait.as_millis() as u64, "backend connect failed");
            Err(e)
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

async fn connect_inner(backend: &Backend) -> Result<TcpStream, UpstreamError> {
    let unreachable = |e: std::io::Error| UpstreamError::Unreachable {
        backend: backend.describe(),
        reason: e.to_string(),
    };
    let mut stream = TcpStream::connect(backend.url.addr())
        .await
        .map_err(unreachable)?;
    stream.set_nodelay(true).map_err(unreachable)?;
    let url = &backend.url;
    let mut hello = Vec::new();
    let mut steps = Vec::new();
    if let Some(auth) = url.auth_command() {
        encode_command(&auth, &mut hello);
        steps.push(Step::Auth);
    }
    if url.db != 0 {
        encode_command(&[&b"SELECT"[..], url.db.to_string().as_bytes()], &mut hello);
        steps.push(Step::Select);
    }
    if steps.is_empty() {
        return Ok(stream);
    }
    stream.write_all(&hello).await.map_err(unreachable)?;
    let mut buf = BytesMut::with_capacity(256);
    let mut parser = ReplyParser::default();
    for step in steps {
        let info = loop {
            if let Some(info) = parser.parse(&buf).map_err(|e| UpstreamError::Unreachable {
                backend: backend.describe(),
                reason: e.to_string(),
            })? {
                break info;
            }
            if stream.read_buf(&mut buf).await.map_err(unreachable)? == 0 {
                return Err(unreachable(std::io::ErrorKind::UnexpectedEof.into()));
            }
        };
        let reply = String::from_utf8_lossy(&buf[..info.len])
            .trim_end()
            .to_string();
        let _ = buf.split_to(info.len);
        if info.is_error() {
            return Err(match step {
                Step::Auth => UpstreamError::Auth {
                    backend: backend.describe(),
                    reply,
                },
                Step::Select => UpstreamError::Select {
                    backend: backend.describe(),
                    db: url.db,
                    reply,
                },
            });
        }
    }
    Ok(stream)
}

enum Step {
    Auth,
    Select,
}
