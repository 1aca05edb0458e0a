//! mister-smith: run fleets of Claude Code CLI agents on servers.
//!
//! The binary is a thin shell over this library: [`cli`] parses arguments
//! and maps errors to exit codes, [`config`] reads and checks the config
//! file, and [`runtime`] spawns and supervises agent processes.

pub mod cli;
pub mod config;
pub mod error;
pub mod message;
pub mod runtime;
pub mod transport;
