//! One way to reach a Redis: every outgoing connection of `cutover` (the proxy's upstreams,
//! the replica link, the target writer, verify, the cutover's control connections) is opened
//! here.
//!
//! ```text
//! Endpoint ──resolve──▶ each address in turn, within the time limit, TCP_NODELAY
//!          ──TLS?─────▶ rustls handshake (SNI = server_name or host; the CA from ca_file or
//!                       the system's roots; a client certificate for mutual TLS)
//!          ──login────▶ AUTH [user] pass, SELECT db (pipelined; PING over TLS, so a server
//!                       that wants a client certificate says so now, not at the first command)
//!          ──────────▶ a Stream (async) or BlockingStream (threads), ready for commands
//! ```
//!
//! * [`Endpoint`]: where and how (host, port, credentials, db, TLS); never prints a password.
//! * [`Stream`] / [`BlockingStream`]: the transport, plain or TLS, for tokio and for threads.
//! * [`connect`] / [`connect_blocking`]: connect, handshake and login, within a time limit.
//! * [`Client`] / [`BlockingClient`]: one command, one reply, framed by
//!   [`crate::resp::ReplyParser`], with a bounded reply size.
//! * [`ClientError`]: one error type, naming the endpoint, that says whether it is retryable
//!   and, for TLS, what to change (`ca_file`, `server_name`, `cert_file`/`key_file`, the scheme).
//!
//! Pipelines, the target writer's transactions, verify's digesting reader and the replica
//! protocol stay as layers on top of the stream.

mod blocking;
mod call;
mod connect;
mod endpoint;
mod error;
mod info;
mod kept;
mod stream;
mod tls;
mod value;

pub use blocking::BlockingClient;
pub use call::{Client, MAX_REPLY};
pub use connect::{connect, connect_blocking};
pub use endpoint::Endpoint;
pub use error::ClientError;
pub use info::{DbKeys, Info, InfoRole, RoleReply};
pub use kept::Kept;
pub use stream::{BlockingStream, Stream};
pub use value::Value;
