//! Errors of the runtime: spawning and signalling agent processes, and
//! starting the daemon.
//!
//! A child that crashes is not an error here: it is an event for the
//! supervisor. These are the failures of mister-smith's own actions.

use std::io;
use std::path::PathBuf;

use crate::transport::TransportError;

/// Starting one agent's process went wrong. The agent is restarted by its
/// policy; the daemon carries on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    #[error("agent {agent}: cannot start {program:?}: {source}")]
    Spawn {
        agent: String,
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("agent {agent}: cannot start a thread: {source}")]
    Thread {
        agent: String,
        #[source]
        source: io::Error,
    },
}

impl ProcessError {
    /// What went wrong, without the agent's name: for the agent's own
    /// `reason`, which is already about it.
    pub(crate) fn cause(&self) -> String {
        match self {
            ProcessError::Spawn {
                program, source, ..
            } => format!("cannot start {program:?}: {source}"),
            ProcessError::Thread { source, .. } => format!("cannot start a thread: {source}"),
        }
    }
}

/// The daemon could not start (or run) at all.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot register signal handlers: {source}")]
    Signals {
        #[source]
        source: io::Error,
    },
    #[error("cannot start the {name} thread: {source}")]
    DaemonThread {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot {what} {}: {source}", path.display())]
    RunDir {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another daemon with id {daemon_id} is running (run directory {} is locked)", run_dir.display())]
    AlreadyRunning { daemon_id: String, run_dir: PathBuf },
    #[error(transparent)]
    Transport(#[from] TransportError),
}
