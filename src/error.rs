//! The top-level error, and the one place that turns errors and outcomes
//! into exit codes.
//!
//! Each layer has its own error enum (`config::ConfigError`,
//! `message::error::MessageError`, `transport::TransportError`,
//! `runtime::error::RuntimeError`), naming what failed; [`SystemError`]
//! gathers them for the CLI, and [`SystemError::exit_code`] decides what
//! each means to a script. Nothing else picks an exit code from an error.

use crate::config::ConfigError;
use crate::message::error::MessageError;
use crate::message::failures::ErrorKind;
use crate::message::schemas::{AlertCode, TaskStatus};
use crate::runtime::error::RuntimeError;
use crate::transport::TransportError;

/// Exit codes (sysexits-style, a contract).
pub(crate) mod exit {
    pub(crate) const OK: u8 = 0;
    pub(crate) const TASK_FAILED: u8 = 1;
    pub(crate) const USAGE: u8 = 64;
    pub(crate) const DATA: u8 = 65;
    pub(crate) const UNAVAILABLE: u8 = 69;
    pub(crate) const INTERNAL: u8 = 70;
    pub(crate) const IO: u8 = 74;
    pub(crate) const TEMPORARY: u8 = 75;
    pub(crate) const CONFIG: u8 = 78;

    /// How bad an exit code is, to pick one for several outcomes: bad
    /// input beats unavailable beats temporary beats a failed task.
    pub(crate) fn severity(code: u8) -> u8 {
        match code {
            OK => 0,
            TASK_FAILED => 1,
            TEMPORARY => 2,
            UNAVAILABLE => 3,
            DATA => 4,
            _ => 5,
        }
    }

    /// The more severe of two exit codes.
    pub(crate) fn worst(a: u8, b: u8) -> u8 {
        if severity(b) > severity(a) {
            b
        } else {
            a
        }
    }
}

/// `health`'s answer, in Nagios's terms and codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HealthState {
    Ok,
    Warning,
    Critical,
    /// The check could not run, or no daemon answered.
    Unknown,
}

impl HealthState {
    pub(crate) fn word(self) -> &'static str {
        match self {
            HealthState::Ok => "OK",
            HealthState::Warning => "WARNING",
            HealthState::Critical => "CRITICAL",
            HealthState::Unknown => "UNKNOWN",
        }
    }

    pub(crate) fn exit_code(self) -> u8 {
        match self {
            HealthState::Ok => 0,
            HealthState::Warning => 1,
            HealthState::Critical => 2,
            HealthState::Unknown => 3,
        }
    }
}

/// The exit code of `send --wait` for a task that ended with `status`, by
/// its `error_kind`: a logged-out account is the config's (78), a limit, an
/// overload or a timeout passes (75, retry later), and the task's own
/// failures are 1. A result without a kind (an older daemon) goes by its
/// status.
pub(crate) fn task_exit_code(status: TaskStatus, kind: Option<ErrorKind>) -> u8 {
    if status == TaskStatus::Completed {
        return exit::OK;
    }
    match kind {
        Some(ErrorKind::Auth) => exit::CONFIG,
        Some(
            ErrorKind::Timeout
            | ErrorKind::RateLimited
            | ErrorKind::Overloaded
            | ErrorKind::ApiError
            | ErrorKind::BudgetExhausted
            | ErrorKind::Undeliverable
            | ErrorKind::Cancelled,
        ) => exit::TEMPORARY,
        Some(_) => exit::TASK_FAILED,
        None => match status {
            TaskStatus::Completed => exit::OK,
            TaskStatus::Failed => exit::TASK_FAILED,
            TaskStatus::Timeout | TaskStatus::Cancelled => exit::TEMPORARY,
        },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// What the user gave us is wrong (a name, a body, a flag's value).
    #[error("{0}")]
    BadInput(String),
    /// A daemon refused the request; its alert code says why.
    #[error("{message}")]
    Refused { code: AlertCode, message: String },
    /// Nobody is there to answer (69).
    #[error("{0}")]
    NoAnswer(String),
    /// Someone is there (NATS found a subscriber, or the socket took the
    /// request) but did not answer within the wait: frozen or overloaded,
    /// and what was asked may still happen. Retry later (75).
    #[error("{0}")]
    Unanswered(String),
    /// NATS says nobody subscribes to the subject.
    #[error("nothing answers on {subject} (no responders)")]
    NoResponders { subject: String },
    /// The connection went while answers were awaited.
    #[error("lost the connection to {peer} while waiting for answers")]
    ConnectionLost { peer: String },
    /// A peer sent something we cannot read: a bug somewhere.
    #[error("unreadable answer on {subject}: {why}")]
    UnreadableAnswer { subject: String, why: MessageError },
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
            SystemError::Runtime(r) => match r {
                RuntimeError::Signals { .. } | RuntimeError::DaemonThread { .. } => exit::INTERNAL,
                RuntimeError::RunDir { .. } => exit::IO,
                RuntimeError::AlreadyRunning { .. } => exit::UNAVAILABLE,
                RuntimeError::Transport(t) => transport_code(t),
            },
            SystemError::Transport(t) => transport_code(t),
            SystemError::Message(MessageError::NoRoute { .. }) => exit::UNAVAILABLE,
            SystemError::Message(_) => exit::DATA,
            SystemError::Usage(_) => exit::USAGE,
            SystemError::BadInput(_) => exit::DATA,
            SystemError::Refused { code, .. } => match code {
                AlertCode::QueueFull | AlertCode::ShuttingDown | AlertCode::Unavailable => {
                    exit::TEMPORARY
                }
                AlertCode::BadRequest | AlertCode::Duplicate => exit::DATA,
                AlertCode::BadConfig => exit::CONFIG,
                AlertCode::NoRoute | AlertCode::AgentDown => exit::UNAVAILABLE,
                _ => exit::UNAVAILABLE,
            },
            SystemError::NoAnswer(_) | SystemError::NoResponders { .. } => exit::UNAVAILABLE,
            SystemError::Unanswered(_) => exit::TEMPORARY,
            SystemError::ConnectionLost { .. } => exit::TEMPORARY,
            SystemError::UnreadableAnswer { .. } => exit::INTERNAL,
            SystemError::Io { .. } => exit::IO,
        }
    }

    /// The lines to print, each prefixed by the caller.
    pub fn lines(&self) -> Vec<String> {
        match self {
            SystemError::Config(c) => c.lines(),
            // A reload refused says each problem on a line of its own.
            SystemError::Refused { message, .. } => message.lines().map(String::from).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Credentials and certificates are the config's fault (78); a peer that
/// is not there is unavailable (69); one that is there and silent, busy
/// (75).
fn transport_code(t: &TransportError) -> u8 {
    match t {
        // Out of descriptors or memory is the host's state, not the
        // config's: an I/O error.
        TransportError::LocalListen { source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
            ) =>
        {
            exit::IO
        }
        TransportError::NatsAuth { .. }
        | TransportError::NatsTls { .. }
        | TransportError::NatsFile { .. }
        | TransportError::LocalListen { .. } => exit::CONFIG,
        // A daemon that took the connection and says nothing is frozen or
        // overloaded: retry later.
        TransportError::LocalTimeout { .. } | TransportError::LocalBusy { .. } => exit::TEMPORARY,
        TransportError::LocalConnect { .. }
        | TransportError::LocalDenied { .. }
        | TransportError::LocalInUse { .. }
        | TransportError::LocalForeign { .. }
        | TransportError::NatsConnect { .. }
        | TransportError::Nats(_)
        | TransportError::FlushTimeout(_)
        | TransportError::Closed
        | TransportError::Io(_) => exit::UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_by_their_code() {
        let refused = |code| SystemError::Refused {
            code,
            message: String::new(),
        };
        assert_eq!(refused(AlertCode::QueueFull).exit_code(), exit::TEMPORARY);
        assert_eq!(refused(AlertCode::BadRequest).exit_code(), exit::DATA);
        assert_eq!(refused(AlertCode::NoRoute).exit_code(), exit::UNAVAILABLE);
        assert_eq!(
            refused(AlertCode::Other("new".into())).exit_code(),
            exit::UNAVAILABLE
        );
    }

    #[test]
    fn the_worst_code_wins() {
        assert_eq!(exit::worst(exit::OK, exit::TASK_FAILED), exit::TASK_FAILED);
        assert_eq!(exit::worst(exit::DATA, exit::UNAVAILABLE), exit::DATA);
        assert_eq!(
            exit::worst(exit::TEMPORARY, exit::UNAVAILABLE),
            exit::UNAVAILABLE
        );
    }
}
