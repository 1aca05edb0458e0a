//! Running agents: spawning processes, the lifecycle, restart policies,
//! health checks and stopping.

pub mod backoff;
pub mod daemon;
pub mod error;
pub mod health_monitor;
pub mod lifecycle;
pub mod process_manager;
pub mod spawn;
pub mod supervisor;
pub mod tracker;
