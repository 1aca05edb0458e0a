//! The top-level error and the one place that maps errors to exit codes
//! (DESIGN.md §7).

use crate::config::ConfigError;
use crate::runtime::error::ProcessError;

/// Exit codes (sysexits-style, a contract).
pub mod exit {
    pub const OK: u8 = 0;
    pub const TASK_FAILED: u8 = 1;
    pub const USAGE: u8 = 64;
    pub const DATA: u8 = 65;
    pub const UNAVAILABLE: u8 = 69;
    pub const INTERNAL: u8 = 70;
    pub const IO: u8 = 74;
    pub const TEMPORARY: u8 = 75;
    pub const CONFIG: u8 = 78;
}

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write output: {0}")]
    Io(#[source] std::io::Error),
}

impl SystemError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SystemError::Config(_) => exit::CONFIG,
            SystemError::Process(_) => exit::INTERNAL,
            SystemError::Usage(_) => exit::USAGE,
            SystemError::Io(_) => exit::IO,
        }
    }

    /// The lines to print, each prefixed by the caller.
    pub fn lines(&self) -> Vec<String> {
        match self {
            SystemError::Config(c) => c.lines(),
            other => vec![other.to_string()],
        }
    }
}
