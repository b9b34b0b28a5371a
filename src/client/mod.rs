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
//! * [`Client`] (async) / [`BlockingClient`] (threads): **the one control client**. Every
//!   request/reply exchange cutover makes outside the data path, the replica protocol and
//!   the target writer's pipeline goes through one of them: the controller's barrier queries
//!   and shadow writes (`cutover::control`), the offset and eviction polls, the sync
//!   engine's `INFO`/`CLIENT LIST`/`COMMAND INFO` (kept connections, [`Kept`]), verify's
//!   reads (its digesting decoder reads the blocking client's buffer), the cluster writer
//!   and topology reads. Replies are framed by [`crate::resp::ReplyParser`], bounded in
//!   size, and every exchange is bounded in time ([`ClientError::Deadline`]; the connection
//!   is not used again after one). `call` (an error reply is [`ClientError::Refused`]),
//!   `call_raw`, `query` (a decoded [`Value`]), `info` (an [`Info`]), and pipelines
//!   (`write` several commands, then read each reply).
//! * [`Info`] / [`RoleReply`]: the one reader of `INFO` and `ROLE` replies.
//! * [`ClientError`]: one error type, naming the endpoint, that says whether it is retryable
//!   and, for TLS, what to change (`ca_file`, `server_name`, `cert_file`/`key_file`, the scheme).
//!
//! **Where clusters plug in.** Every exchange ends in `call_raw` or a pipelined reply read,
//! and every error reply is classified in one function (`call::check_reply`). Following
//! `MOVED`/`ASK`/`TRYAGAIN` and refreshing the slot map belong above this module (in
//! `cluster/`, which parses them, `cluster::redirect`): a client per node plus the map,
//! offering the same `call`/`query`/`info`, so callers change their type, not their code.
//! The target writer's transactions and the replica protocol stay layers on the stream.

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
