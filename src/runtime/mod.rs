//! Running agents: the daemon's wiring, the supervisor and its seams
//! (processes, the clock), the claude protocol, routing of what arrives,
//! the dispatcher thread, health checks and the tracker of leftovers.
//!
//! Imports point down only: `runtime` uses `transport`, `message`,
//! `config` and `sys`, never `cli`.

pub(crate) mod accounts;
pub(crate) mod backoff;
pub mod claude;
pub(crate) mod daemon;
pub(crate) mod dispatch;
pub(crate) mod durable;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod files;
pub(crate) mod health_monitor;
pub(crate) mod inbound;
pub(crate) mod lifecycle;
pub(crate) mod process;
pub(crate) mod reload;
pub(crate) mod spend;
pub(crate) mod supervisor;
pub(crate) mod tracker;
pub(crate) mod transcripts;
