//! What can go wrong with the target writer; each message names the target and the step.

use crate::client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Connecting or logging in failed (the connection layer's error names the endpoint).
    #[error("the target: {0}")]
    Client(ClientError),
    #[error("cannot connect to the target {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to the target {addr} failed: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("the target {addr} refused {step}: {reply}")]
    Refused {
        addr: String,
        step: String,
        reply: String,
    },
    #[error("the target {addr} sent an invalid reply: {detail}")]
    Protocol { addr: String, detail: String },
    #[error("the target {addr} runs {server} {version}, which cutover cannot write to: {reason}")]
    Unsupported {
        addr: String,
        server: String,
        version: String,
        reason: String,
    },
    #[error(
        "{what} (unsupported = fail stops the sync here; with unsupported = skip, such items are reported and the rest is copied)"
    )]
    CannotHold { what: String },
    /// The side a link writes to cannot hold what the side it copies uses
    /// ([`memory::check_room`]).
    #[error("the target {addr} has no room for the copy: {detail}")]
    NoRoom { addr: String, detail: String },
    /// A stream command the target did not apply, under `cutover run`: the link stops for
    /// good rather than go on without it ([`crate::sync::refusals`]).
    #[error(
        "{what}; this link stops here rather than go on without the write (switch and rollback are refused while it is missing; copy again from scratch once the cause is fixed)"
    )]
    Unapplied { what: String },
    #[error(
        "database {db} cannot be written to the target {addr}: it has {databases} databases (0-{last}); nothing was written to another database. Map it to one the target has with [sync] db_map (--db-map \"{db}=N\"), or leave it out with only_mapped_dbs",
        last = databases.saturating_sub(1)
    )]
    NoSuchDb {
        addr: String,
        db: u64,
        databases: u64,
    },
}

/// (Not `#[from]`: that would chain the error as a source, printed twice by `{:#}`.)
impl From<ClientError> for TargetError {
    fn from(e: ClientError) -> Self {
        TargetError::Client(e)
    }
}
