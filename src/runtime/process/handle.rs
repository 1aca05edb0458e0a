//! The seam between the supervisor and processes: what it asks of a child
//! ([`ChildHandle`]), what a child tells it ([`ChildMsg`]), and how children
//! are started ([`Spawner`]).
//!
//! The supervisor sees processes only through these, so its state machine
//! runs in unit tests against a fake spawner whose children are plain
//! values, the way watchexec tests its job state with a test child.

use std::fmt;
use std::io;
use std::process::ExitStatus;

use crate::config::AgentSpec;
use crate::message::schemas::ResourceUsage;
use crate::runtime::claude::Line;
use crate::runtime::error::ProcessError;

/// What a child's io thread reports, in order: its stdout lines, then its
/// exit (after both pipes are drained).
#[derive(Debug)]
pub(crate) enum ChildMsg {
    Line(Line),
    /// Stdout ended and the process did not exit with it: it can never
    /// answer again (reported only for agents that take tasks).
    StdoutClosed,
    Exited(io::Result<ExitStatus>),
}

/// Where a child's reports go (the supervisor tags them with the agent and
/// the run before they reach its event channel).
pub(crate) type ChildSink = Box<dyn FnMut(ChildMsg) + Send>;

/// What the supervisor asks of a running child. Dropping the handle tells
/// the child's io thread that the supervisor is done with it: only then is
/// the child reaped, so its pid (its group id) cannot be reused while the
/// supervisor might still signal the group.
pub(crate) trait ChildHandle: Send + fmt::Debug {
    /// The child's pid, which is also its process group id.
    fn pid(&self) -> u32;
    /// Writes one line to the child's stdin without blocking; false when
    /// stdin is closed (the child's exit will follow).
    fn write_line(&self, line: Vec<u8>) -> bool;
    /// Closes the child's stdin (its cue to finish and exit).
    fn close_stdin(&mut self);
    /// Whether stdin is still open.
    fn has_stdin(&self) -> bool;
    /// Sends `signal` to the child's whole process group.
    fn signal_group(&self, signal: i32) -> io::Result<()>;
    /// The last lines the child wrote to stderr, oldest first.
    fn stderr_lines(&self) -> Vec<String>;
    /// The child's memory and CPU time, from `/proc`.
    fn resource_usage(&self) -> Option<ResourceUsage>;
}

/// A process to start for an agent.
#[derive(Debug, Clone)]
pub(crate) struct SpawnRequest {
    pub spec: AgentSpec,
    /// `Some`: the process of one one-shot task.
    pub prompt: Option<String>,
    /// The one-shot task's trace id, handed to the process as
    /// `MISTER_SMITH_TRACE_ID`.
    pub trace_id: Option<String>,
    /// The claude session to continue (`--resume`).
    pub resume: Option<String>,
    /// Progress events longer than this (less room for the envelope) are
    /// cut to a stub by the reader.
    pub max_message_size: usize,
}

/// The answer to [`Spawner::spawn_later`].
pub(crate) type SpawnDone = Box<dyn FnOnce(Result<Box<dyn ChildHandle>, ProcessError>) + Send>;

/// Starts children.
pub(crate) trait Spawner {
    /// Starts a process now; its reports go to `sink`.
    fn spawn(
        &mut self,
        req: SpawnRequest,
        sink: ChildSink,
    ) -> Result<Box<dyn ChildHandle>, ProcessError>;

    /// Starts a process on another thread (a cold start of many agents
    /// then execs them side by side). `done` hears the outcome before
    /// `sink` hears anything from the child.
    fn spawn_later(&mut self, req: SpawnRequest, sink: ChildSink, done: SpawnDone);
}

/// "exited with status 1", "killed by SIGKILL", for logs.
pub(crate) fn describe_exit(status: &io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(sig)) => format!("killed by {}", signal_name(sig)),
            _ => format!("ended ({s})"),
        },
        Err(e) => format!("ended (status unknown: {e})"),
    }
}

/// SIGTERM, SIGKILL, ... by number.
pub(crate) fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGCONT => "SIGCONT",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// Reads the resident set size and CPU time (user + system) of `pid`.
pub(crate) fn resource_usage(pid: u32) -> Option<ResourceUsage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are
    // counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 11 and 12 here.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ResourceUsage {
        memory_mb: rss_kb / 1024.0,
        cpu_seconds: ticks / crate::sys::clock_ticks_per_second(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_resource_usage_is_readable() {
        let u = resource_usage(std::process::id()).unwrap();
        assert!(u.memory_mb > 0.0);
        assert!(u.cpu_seconds >= 0.0);
    }

    #[test]
    fn exits_are_described_for_people() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(&Ok(ExitStatus::from_raw(1 << 8))),
            "exited with status 1"
        );
        assert_eq!(
            describe_exit(&Ok(ExitStatus::from_raw(libc::SIGKILL))),
            "killed by SIGKILL"
        );
    }
}
