//! Errors of the runtime: spawning and signalling agent processes.
//!
//! A child that crashes is not an error here: it is an event for the
//! supervisor. These are the failures of mister-smith's own actions.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
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
}
