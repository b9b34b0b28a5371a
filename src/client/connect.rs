//! Connecting: resolve, TCP (each address in turn), TLS handshake, login.
//!
//! Login pipelines `AUTH [user] pass` and `SELECT db` (each only when needed) and reads their
//! replies in order. Over TLS a `PING` is added: with TLS 1.3 the client's side of the
//! handshake ends before the server has checked the client's certificate, so a server that
//! requires one (`tls-auth-clients yes`) says so only in answer to the first command; the
//! `PING` makes that happen here, as a clear [`ClientError::Tls`]. The blocking flavour always
//! pings (its users are long-lived control connections), so a plain URL pointed at a TLS port
//! fails at once too. RESP2 is kept, so `HELLO` is not needed: `AUTH user pass` logs in an ACL
//! user on Redis 6+.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::blocking::BlockingClient;
use super::call::Client;
use super::endpoint::Endpoint;
use super::error::ClientError;
use super::stream::{BlockingStream, Stream};
use super::tls;
use crate::resp::request::encode_command;

/// The login commands for `endpoint`: their wire form and names, in order.
fn login_commands(endpoint: &Endpoint, ping: bool) -> (Vec<u8>, Vec<Vec<Vec<u8>>>) {
    let mut wire = Vec::new();
    let mut cmds: Vec<Vec<Vec<u8>>> = Vec::new();
    let url = endpoint.url();
    if let Some(auth) = url.auth_command() {
        cmds.push(auth.iter().map(|a| a.to_vec()).collect());
    }
    if url.db != 0 {
        cmds.push(vec![b"SELECT".to_vec(), url.db.to_string().into_bytes()]);
    }
    if ping || endpoint.is_tls() {
        cmds.push(vec![b"PING".to_vec()]);
    }
    for c in &cmds {
        encode_command(c, &mut wire);
    }
    (wire, cmds)
}

fn timeout_error(endpoint: &Endpoint, what: &'static str, limit: Duration) -> ClientError {
    let hint = match (what, endpoint.is_tls()) {
        ("the TLS handshake", _) => {
            " (is this a plain port? a plain server does not answer a TLS hello: use redis://)"
        }
        ("the login", false) => " (if this is a TLS port, use rediss://)",
        _ => "",
    };
    ClientError::Timeout {
        endpoint: endpoint.to_string(),
        what,
        ms: limit.as_millis() as u64,
        hint: hint.to_string(),
    }
}

/// Connects (TCP, TLS, AUTH, SELECT) within `timeout` per step. The stream is ready for
/// commands in the URL's database.
pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Stream, ClientError> {
    let tcp = tcp_async(endpoint, timeout).await?;
    let stream = match endpoint.tls_config() {
        None => Stream::Plain(tcp),
        Some(config) => {
            let name = tls::server_name(endpoint).map_err(|reason| ClientError::TlsSetup {
                endpoint: endpoint.to_string(),
                reason,
            })?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
            let handshake = connector.connect(name, tcp);
            match tokio::time::timeout(timeout, handshake).await {
                Err(_) => return Err(timeout_error(endpoint, "the TLS handshake", timeout)),
                Ok(Err(e)) => return Err(handshake_error(endpoint, e)),
                Ok(Ok(s)) => Stream::Tls(Box::new(s)),
            }
        }
    };
    let (wire, cmds) = login_commands(endpoint, false);
    if cmds.is_empty() {
        return Ok(stream);
    }
    let mut client = Client::new(stream, endpoint);
    client.set_login(true);
    let login = async {
        client.write(&wire).await?;
        for c in &cmds {
            let reply = client.read_reply().await?;
            let args: Vec<&[u8]> = c.iter().map(|a| &a[..]).collect();
            client.check(&args, reply)?;
        }
        Ok::<_, ClientError>(())
    };
    match tokio::time::timeout(timeout, login).await {
        Err(_) => return Err(timeout_error(endpoint, "the login", timeout)),
        Ok(r) => r?,
    }
    Ok(client.into_parts().0)
}

async fn tcp_async(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, ClientError> {
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(timeout, tokio::net::lookup_host(endpoint.addr())).await {
            Err(_) => return Err(timeout_error(endpoint, "name resolution", timeout)),
            Ok(Err(cause)) => {
                return Err(ClientError::Resolve {
                    endpoint: endpoint.to_string(),
                    cause,
                });
            }
            Ok(Ok(a)) => a.collect(),
        };
    let mut last = None;
    for sa in addrs {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(sa)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(std::io::ErrorKind::TimedOut.into()),
        }
    }
    Err(ClientError::Connect {
        endpoint: endpoint.to_string(),
        cause: last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
    })
}

/// A failed TLS handshake, explained.
fn handshake_error(endpoint: &Endpoint, e: std::io::Error) -> ClientError {
    let reason = match tls::rustls_error(&e) {
        Some(t) => tls::explain(endpoint, t),
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted => format!(
                "the server closed the connection during the TLS handshake ({e}): is this a plain port? use redis://"
            ),
            _ => return super::call::io_error(endpoint, e, true),
        },
    };
    ClientError::Tls {
        endpoint: endpoint.to_string(),
        reason,
    }
}

/// The blocking flavour of [`connect`], for threads: TCP, TLS, AUTH, SELECT and a PING, each
/// step within `timeout`. The socket keeps `timeout` (at least 5 s) as its read and write
/// time limit; callers set their own.
pub fn connect_blocking(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<BlockingClient, ClientError> {
    let tcp = tcp_blocking(endpoint, timeout)?;
    let io_limit = timeout.max(Duration::from_secs(5));
    let stream = match endpoint.tls_config() {
        None => BlockingStream::Plain(tcp),
        Some(config) => {
            let name = tls::server_name(endpoint).map_err(|reason| ClientError::TlsSetup {
                endpoint: endpoint.to_string(),
                reason,
            })?;
            let mut conn =
                rustls::ClientConnection::new(Arc::clone(config), name).map_err(|e| {
                    ClientError::TlsSetup {
                        endpoint: endpoint.to_string(),
                        reason: e.to_string(),
                    }
                })?;
            let mut tcp = tcp;
            // The handshake, bounded as a whole by `timeout`.
            let started = Instant::now();
            while conn.is_handshaking() {
                let left = timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(timeout_error(endpoint, "the TLS handshake", timeout));
                }
                let _ = tcp.set_read_timeout(Some(left));
                if let Err(e) = conn.complete_io(&mut tcp) {
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) {
                        return Err(timeout_error(endpoint, "the TLS handshake", timeout));
                    }
                    return Err(handshake_error(endpoint, e));
                }
            }
            BlockingStream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
        }
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(io_limit));
    let (wire, cmds) = login_commands(endpoint, true);
    let mut client = BlockingClient::new(stream, endpoint);
    client.set_login(true);
    client.write(&wire)?;
    for c in &cmds {
        let reply = match client.read_reply() {
            Err(ClientError::Io { cause, .. })
                if matches!(
                    cause.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timeout_error(endpoint, "the login", timeout));
            }
            r => r?,
        };
        let args: Vec<&[u8]> = c.iter().map(|a| &a[..]).collect();
        client.check(&args, reply)?;
    }
    client.set_login(false);
    let _ = client.stream().set_read_timeout(Some(io_limit));
    Ok(client)
}

fn tcp_blocking(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<std::net::TcpStream, ClientError> {
    let addrs = std::net::ToSocketAddrs::to_socket_addrs(&endpoint.addr()).map_err(|cause| {
        ClientError::Resolve {
            endpoint: endpoint.to_string(),
            cause,
        }
    })?;
    let mut last = None;
    for sa in addrs {
        match std::net::TcpStream::connect_timeout(&sa, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ClientError::Connect {
        endpoint: endpoint.to_string(),
        cause: last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisUrl;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint::new(&RedisUrl::parse(url).unwrap()).unwrap()
    }

    #[test]
    fn login_sends_what_is_needed() {
        let names = |url: &str, ping: bool| {
            let (wire, cmds) = login_commands(&endpoint(url), ping);
            let first: Vec<String> = cmds
                .iter()
                .map(|c| String::from_utf8_lossy(&c[0]).into_owned())
                .collect();
            (String::from_utf8_lossy(&wire).into_owned(), first)
        };
        assert_eq!(names("redis://h:1", false).1, Vec::<String>::new());
        assert_eq!(names("redis://h:1", true).1, ["PING"]);
        let (wire, cmds) = names("redis://app:pw@h:1/3", false);
        assert_eq!(cmds, ["AUTH", "SELECT"]);
        assert!(wire.contains("$3\r\napp\r\n$2\r\npw\r\n"), "{wire}");
        // Over TLS a PING always follows, so a missing client certificate shows at login.
        assert_eq!(names("rediss://h:1/#insecure", false).1, ["PING"]);
    }

    #[test]
    fn endpoints_never_print_the_password() {
        let e = endpoint("rediss://app:topsecret@h:1/2#insecure");
        assert!(e.is_tls() && e.is_insecure());
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(!text.contains("topsecret"), "{text}");
            assert!(text.contains("app:***@h:1"), "{text}");
        }
        let err = timeout_error(&e, "the login", Duration::from_secs(1));
        assert!(!err.to_string().contains("topsecret"));
    }
}
