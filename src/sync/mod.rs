//! The sync engine: replicate the source into the target, live (issue 3).
//!
//! * [`replica`]: the replica link, the replica side of Redis' replication protocol.
//! * [`target`]: the target writer (pipelined, every reply checked) and the target's version.
//! * [`convert`]: snapshot events → `RESTORE` or plain commands the target accepts.
//! * [`batch`]: exactly once — each batch of stream commands and the replication position
//!   it reaches (`cutover:position`, kept on the target) in one `MULTI … EXEC`.
//! * [`engine`]: the two put together: snapshot, then the live command stream
//!   (`cutover sync`).
//! * [`phase`]: the sync's phases (status names, gauge numbers, the moves between them).
//! * [`handoff`]: the applying or following role of a link, and how the cutover hands it
//!   from one link to the other during a replica overlap.
//! * [`cluster`]: the sync's writes into a Redis Cluster target (per-slot transactions and
//!   positions).
//! * [`retry`]: runs the engine again after a failure (target restarted…), from the stored
//!   position.
//!
//! The RDB codec lives in [`crate::rdb`].

pub mod batch;
pub mod cluster;
pub mod convert;
pub mod engine;
pub mod filter;
pub mod handoff;
pub mod phase;
pub mod refusals;
pub mod replica;
pub mod retry;
pub mod target;
