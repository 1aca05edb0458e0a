//! Everything that can wake the supervisor, as closed enums: what each
//! thread may tell it ([`Event`]), and what a transport may ask of it
//! ([`Command`]). Reading this file tells every way in.

use crate::message::dispatcher::Task;
use crate::message::router::{AgentIx, Origin};
use crate::message::schemas::CommandType;
use crate::runtime::error::ProcessError;
use crate::runtime::process::{ChildHandle, ChildMsg};

/// An event for the supervisor. Events about a process carry the agent and
/// the run number of the process; those of an earlier run are dropped.
#[derive(Debug)]
pub(crate) enum Event {
    /// A child's stdout line or its exit.
    Child {
        agent: AgentIx,
        run: u64,
        msg: ChildMsg,
    },
    /// The result of a health check.
    Health {
        agent: AgentIx,
        run: u64,
        verdict: Verdict,
    },
    /// A request from a transport.
    Command(Command),
    /// The dispatcher gives an agent a task.
    Assign(AgentIx, Box<Task>),
    /// The spawner pool started (or failed to start) an agent's run.
    Spawned {
        agent: AgentIx,
        run: u64,
        result: Result<Box<dyn ChildHandle>, ProcessError>,
    },
    /// The dispatcher has shut down: every assignment it made came before.
    DispatcherClosed,
}

/// A health check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Healthy,
    Unhealthy(String),
}

/// A request from a transport. The supervisor answers it itself, on the
/// request's reply subject, so no transport thread ever waits for it.
#[derive(Debug)]
pub(crate) enum Command {
    /// Start, stop, restart, pause or resume an agent; answered with its
    /// `agent_status`, or a `refused` alert.
    Control {
        agent: AgentIx,
        op: CommandType,
        origin: Origin,
    },
    /// Report agents: one agent's `agent_status`, or the daemon's whole
    /// health report.
    Report {
        agent: Option<AgentIx>,
        kind: ReportKind,
        origin: Origin,
    },
    /// Stop the daemon, as SIGTERM does.
    Shutdown,
    /// Another daemon announced an agent with the id of one of ours.
    PeerClaims { agent: AgentIx, daemon: String },
    /// `resume --account NAME`: lift the account's hold.
    ResumeAccount { account: String, origin: Origin },
    /// The config, read again (SIGHUP has no origin to answer).
    Reload {
        loaded: Box<Result<crate::config::Config, crate::config::ConfigError>>,
        origin: Option<Origin>,
    },
}

/// The shape a report is answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportKind {
    /// An `agent_status` envelope (of the one agent asked about).
    AgentStatus,
    /// A `system_health_check` envelope carrying the whole report.
    Health,
}
