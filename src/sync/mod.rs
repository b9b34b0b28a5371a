//! The sync engine: replicate the source into the target, live (issue 3).
//!
//! Built so far: the replica link ([`replica`]), which speaks the replica side of Redis'
//! replication protocol. The RDB codec lives in [`crate::rdb`]; the converter and the target
//! writer come next.

pub mod replica;
