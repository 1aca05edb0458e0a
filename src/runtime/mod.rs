//! Running agents: the daemon's wiring, the supervisor and its seams
//! (processes, the clock), the claude protocol, routing of what arrives,
//! the dispatcher thread, health checks and the tracker of leftovers.
//!
//! Imports point down only: `runtime` uses `transport`, `message`,
//! `config` and `sys`, never `cli`.

pub mod backoff;
pub mod claude;
pub mod daemon;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod health_monitor;
pub mod inbound;
pub mod lifecycle;
pub mod process;
pub mod supervisor;
pub mod tracker;
