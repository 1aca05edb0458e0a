//! One row of the supervisor's agent table, and the small types it holds.

use std::time::Instant;

use crate::config::AgentSpec;
use crate::message::dispatcher::Task;
use crate::message::failures::ErrorKind;
use crate::message::schemas::{AgentState, ReasonCode, TaskCount, TaskStatus};
use crate::runtime::backoff::RestartBook;
use crate::runtime::process::ChildHandle;

/// Why we are taking an agent's process down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Takedown {
    /// Stop for good (`stop`, shutdown): ends in `terminated`.
    Stop,
    /// Stop, then start again at once (`restart`).
    Restart,
    /// A failure we detected (hung, unhealthy, no handshake): the exit goes
    /// through the restart policy as a failure.
    Failure(ReasonCode),
}

/// Why an agent is in its state: a code for programs, words for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reason {
    pub(super) code: ReasonCode,
    pub(super) text: String,
}

impl Reason {
    pub(super) fn new(code: ReasonCode, text: impl Into<String>) -> Reason {
        Reason {
            code,
            text: text.into(),
        }
    }

    /// The reason in its usual words.
    pub(super) fn of(code: ReasonCode) -> Reason {
        Reason::new(code, words(code))
    }
}

/// The usual words for a reason, in logs, `status` and task errors.
pub(super) fn words(code: ReasonCode) -> &'static str {
    match code {
        ReasonCode::StoppedByOperator => "stopped by an operator",
        ReasonCode::RestartBudgetSpent => "restart budget spent",
        ReasonCode::NotRestarted => "exited; its policy does not restart it",
        ReasonCode::Restarting => "restarting",
        ReasonCode::Exited => "exited",
        ReasonCode::SpawnFailed => "cannot start",
        ReasonCode::Hung => "hung",
        ReasonCode::Unhealthy => "unhealthy",
        ReasonCode::StartupTimeout => "startup timeout",
        ReasonCode::InitializeRefused => "initialize refused",
        ReasonCode::TaskDidNotStop => "task timed out and did not stop",
        ReasonCode::StdoutClosed => "closed its stdout and stayed alive",
        ReasonCode::Routine => "a routine restart",
    }
}

/// A task an agent is working on.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) task: Task,
    pub(super) started: Instant,
    pub(super) timed_out: bool,
    /// An event of this task's turn has come: a `result` before any is a
    /// stray from an earlier turn, not this task's.
    pub(super) turn_started: bool,
    /// What the turn's events said about a failure (an `assistant`
    /// error, a rejected rate limit).
    pub(super) signals: crate::runtime::claude::TurnSignals,
}

/// One agent: its spec, its state, its process (if any) and its counters.
#[derive(Debug)]
pub(super) struct Agent {
    pub(super) spec: AgentSpec,
    pub(super) state: AgentState,
    /// Run number of the current (or last) process; starts at 0.
    pub(super) run: u64,
    pub(super) child: Option<Box<dyn ChildHandle>>,
    /// When the current process was taken in.
    pub(super) child_since: Instant,
    pub(super) takedown: Option<Takedown>,
    pub(super) book: RestartBook,
    pub(super) restarts: u32,
    /// The request id of the pending `initialize` handshake.
    pub(super) init_request: Option<String>,
    pub(super) last_output: Instant,
    pub(super) health_failures: u32,
    /// The state to return to on resume.
    pub(super) paused_from: Option<AgentState>,
    pub(super) task: Option<Running>,
    /// A one-shot process has printed its result and should exit.
    pub(super) result_seen: bool,
    pub(super) tasks_done: u64,
    pub(super) tasks_failed: u64,
    /// Tasks by how they ended, for metrics.
    pub(super) outcomes: Vec<TaskCount>,
    pub(super) cost_usd: f64,
    /// Since when the agent has been up (not terminated or in error).
    pub(super) up_since: Option<Instant>,
    /// Why the agent is in its state, when that is not obvious.
    pub(super) reason: Option<Reason>,
    /// Bumped whenever the watchdog is armed; an older watchdog timer is
    /// stale.
    pub(super) watchdog: u64,
    /// Other daemons that announced an agent with this id.
    pub(super) also_on: std::collections::BTreeMap<String, Instant>,
    /// Terminated only on the way to a new run (`restart`): its queued
    /// tasks are kept for it.
    pub(super) restarting: bool,
    /// A reload changed the spec: it takes effect once the agent is not
    /// busy (a running task finishes first).
    pub(super) next_spec: Option<AgentSpec>,
    /// A reload removed the agent: it stays terminated, out of reports.
    pub(super) retired: bool,
    /// The claude session of the current process, and what it holds.
    pub(super) session: Session,
    /// The restart under way is routine (a recycle, or a reload's): not
    /// counted as a restart.
    pub(super) routine: bool,
    /// A task waiting for this agent's restart with `--resume` (its
    /// process was in another claude session): run once it is ready.
    pub(super) resuming: Option<Task>,
    /// The current process was started with `--resume` for a task that has
    /// not run in it yet: if that task goes, the process must not serve
    /// others (they would inherit its conversation).
    pub(super) resumed: bool,
}

/// The claude session an agent's process is in: its id (from the last
/// result), the tasks run in it and their input tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Session {
    pub(super) id: Option<String>,
    pub(super) tasks: u64,
    pub(super) input_tokens: u64,
}

impl Session {
    /// A task of this session ended with `session_id` and `usage`; true
    /// when the id is new.
    pub(super) fn count(
        &mut self,
        session_id: Option<&str>,
        usage: Option<&crate::message::schemas::RawJson>,
    ) -> bool {
        #[derive(serde::Deserialize, Default)]
        struct Usage {
            #[serde(default)]
            input_tokens: u64,
            #[serde(default)]
            cache_creation_input_tokens: u64,
            #[serde(default)]
            cache_read_input_tokens: u64,
        }
        let mut moved = false;
        if let Some(id) = session_id.filter(|id| !id.is_empty()) {
            if self.id.as_deref() != Some(id) {
                self.id = Some(id.to_string());
                moved = true;
            }
        }
        let u: Usage = usage
            .and_then(|u| serde_json::from_str(u.text()).ok())
            .unwrap_or_default();
        self.tasks += 1;
        self.input_tokens = self
            .input_tokens
            .saturating_add(u.input_tokens)
            .saturating_add(u.cache_creation_input_tokens)
            .saturating_add(u.cache_read_input_tokens);
        moved
    }
}

impl Agent {
    /// Counts a task that ended with `status` (and `kind`).
    pub(super) fn count_task(&mut self, status: TaskStatus, kind: Option<ErrorKind>) {
        if status == TaskStatus::Completed {
            self.tasks_done += 1;
        } else {
            self.tasks_failed += 1;
        }
        match self
            .outcomes
            .iter_mut()
            .find(|c| c.status == status && c.error_kind == kind)
        {
            Some(c) => c.count += 1,
            None => self.outcomes.push(TaskCount {
                status,
                error_kind: kind,
                count: 1,
            }),
        }
    }

    pub(super) fn new(spec: AgentSpec, now: Instant) -> Self {
        Agent {
            spec,
            state: AgentState::Terminated,
            run: 0,
            child: None,
            child_since: now,
            takedown: None,
            book: RestartBook::default(),
            restarts: 0,
            init_request: None,
            last_output: now,
            health_failures: 0,
            paused_from: None,
            task: None,
            result_seen: false,
            tasks_done: 0,
            tasks_failed: 0,
            outcomes: Vec::new(),
            cost_usd: 0.0,
            up_since: None,
            reason: None,
            watchdog: 0,
            also_on: std::collections::BTreeMap::new(),
            restarting: false,
            next_spec: None,
            retired: false,
            session: Session::default(),
            routine: false,
            resuming: None,
            resumed: false,
        }
    }
}
