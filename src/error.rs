//! The top-level error and the one place that maps errors to exit codes
//! (DESIGN.md §7).

use crate::config::ConfigError;
use crate::message::error::MessageError;
use crate::runtime::error::ProcessError;
use crate::transport::TransportError;

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

    /// How bad an exit code is, to pick one for several outcomes: bad
    /// input beats unavailable beats temporary beats a failed task.
    pub fn severity(code: u8) -> u8 {
        match code {
            OK => 0,
            TASK_FAILED => 1,
            TEMPORARY => 2,
            UNAVAILABLE => 3,
            DATA => 4,
            _ => 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("{0}")]
    Usage(String),
    /// A peer answered, but not with what was asked: the code says how.
    #[error("{message}")]
    Refused { code: u8, message: String },
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl SystemError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SystemError::Config(_) => exit::CONFIG,
            SystemError::Process(_) => exit::INTERNAL,
            SystemError::Transport(t) if t.is_config() => exit::CONFIG,
            SystemError::Transport(_) => exit::UNAVAILABLE,
            SystemError::Message(MessageError::NoRoute { .. }) => exit::UNAVAILABLE,
            SystemError::Message(_) => exit::DATA,
            SystemError::Usage(_) => exit::USAGE,
            SystemError::Refused { code, .. } => *code,
            SystemError::Io { .. } => exit::IO,
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
