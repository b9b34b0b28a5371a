//! `cutover`: move a live Redis deployment to another Redis without downtime.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of this crate.

pub mod admin;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod command;
pub mod config;
pub mod cutover;
pub mod proxy;
pub mod rdb;
pub mod resp;
pub mod route;
pub mod runtime;
pub mod status;
pub mod sync;
pub mod telemetry;
pub mod verify;
