//! The typed payloads of the eight message types, and the enums they carry
//! on the wire (agent states, alert severities and codes, link states,
//! reasons): every internal contract that reaches the wire is an enum here,
//! serde-named so that the wire stays the same, never a string compared
//! somewhere else.
//!
//! Agent ids, agent types and daemon ids follow the subject-token rule of
//! [`crate::config::names`]; reply subjects follow [`check_subject`].

/// Checks that `subject` is a literal NATS subject fit for `reply_to`:
/// non-empty tokens of printable ASCII without wildcards.
pub fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() || subject.len() > 1024 {
        return Err("must be 1 to 1024 characters".into());
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Err("has an empty token".into());
        }
        if let Some(c) = token
            .chars()
            .find(|c| !c.is_ascii_graphic() || *c == '*' || *c == '>')
        {
            return Err(format!("contains {c:?}"));
        }
    }
    Ok(())
}

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::message::failures::{AccountView, ErrorKind, HoldReason};

/// An agent's state (DESIGN's lifecycle). The names are a contract:
/// lowercase on the wire. The legal moves between them are the runtime's
/// business (`runtime::lifecycle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Spawned, waiting for the `initialize` handshake.
    Initializing,
    /// Ready for a task.
    Idle,
    /// Running a task.
    Busy,
    /// Stopped with SIGSTOP; resumes into the state it was paused from.
    Paused,
    /// Asked to stop: stdin closed, SIGTERM, then SIGKILL.
    Stopping,
    /// Not running and not coming back unless started by hand.
    Terminated,
    /// Exited or failed unexpectedly; restarted by policy or terminated.
    Error,
}

impl AgentState {
    pub const ALL: [AgentState; 7] = [
        AgentState::Initializing,
        AgentState::Idle,
        AgentState::Busy,
        AgentState::Paused,
        AgentState::Stopping,
        AgentState::Terminated,
        AgentState::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Initializing => "initializing",
            AgentState::Idle => "idle",
            AgentState::Busy => "busy",
            AgentState::Paused => "paused",
            AgentState::Stopping => "stopping",
            AgentState::Terminated => "terminated",
            AgentState::Error => "error",
        }
    }

    /// Idle or busy: what `health` counts as healthy.
    pub fn is_healthy(self) -> bool {
        matches!(self, AgentState::Idle | AgentState::Busy)
    }
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an agent is in its state, for programs (`health` decides on it);
/// `agent_status.reason` says the same for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// `stop ID`: down on purpose.
    StoppedByOperator,
    /// More restarts than `max_restarts` inside `window_ms`.
    RestartBudgetSpent,
    /// It exited and its policy does not restart it.
    NotRestarted,
    /// Waiting for a restart by policy.
    Restarting,
    /// It exited by itself.
    Exited,
    /// Its process could not be started.
    SpawnFailed,
    /// Busy and silent past `idle_timeout_ms`.
    Hung,
    /// Its health check failed `failure_threshold` times in a row.
    Unhealthy,
    /// No answer to `initialize` within `startup_timeout_ms`.
    StartupTimeout,
    /// It answered `initialize` with an error.
    InitializeRefused,
    /// A task ran past its deadline and the agent did not stop it.
    TaskDidNotStop,
    /// It closed its stdout but did not exit: it can never answer again.
    StdoutClosed,
    /// A restart that is part of its work, not a failure: a `recycle`, a
    /// resume of another claude session, a reload's new spec.
    Routine,
}

/// How urgent a `system_alert` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

/// What a `system_alert` is about, for programs: refusals of a request
/// (which the CLI turns into exit codes) and events that need a person.
/// A code this version does not know is kept as it came, so an alert from
/// a newer daemon still decodes (and re-encodes unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AlertCode {
    /// The dispatcher's queue is full: retry later.
    QueueFull,
    /// No agent (or daemon) for the destination.
    NoRoute,
    /// The request was malformed.
    BadRequest,
    /// An agent spent its restart budget and is terminated.
    RestartBudgetSpent,
    /// A control request the agent's state does not allow.
    Refused,
    /// The daemon is stopping: retry later.
    ShuttingDown,
    /// The daemon could not answer: retry later.
    Unavailable,
    /// The agent (or every agent of the type) is terminated: a task would
    /// wait for nobody.
    AgentDown,
    /// Another daemon runs an agent with the same id.
    DuplicateAgent,
    /// The same request (`message_id`) was accepted before, from another
    /// sender: it is not run again.
    Duplicate,
    /// An account is held: its agents take no tasks until the hold ends.
    AccountHeld,
    /// A held account works again (or an operator lifted the hold).
    AccountRecovered,
    /// A durable task was delivered `max_deliver` times without an answer
    /// (each daemon that took it died): answered `failed`, not run again.
    Undeliverable,
    /// The config was read again and applied (the summary is the message).
    Reloaded,
    /// A reload found problems in the config and changed nothing (one
    /// problem per line of the message).
    BadConfig,
    Other(String),
}

impl AlertCode {
    const KNOWN: [AlertCode; 15] = [
        AlertCode::QueueFull,
        AlertCode::NoRoute,
        AlertCode::BadRequest,
        AlertCode::RestartBudgetSpent,
        AlertCode::Refused,
        AlertCode::ShuttingDown,
        AlertCode::Unavailable,
        AlertCode::AgentDown,
        AlertCode::DuplicateAgent,
        AlertCode::Duplicate,
        AlertCode::AccountHeld,
        AlertCode::AccountRecovered,
        AlertCode::Undeliverable,
        AlertCode::Reloaded,
        AlertCode::BadConfig,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            AlertCode::QueueFull => "queue_full",
            AlertCode::NoRoute => "no_route",
            AlertCode::BadRequest => "bad_request",
            AlertCode::RestartBudgetSpent => "restart_budget_spent",
            AlertCode::Refused => "refused",
            AlertCode::ShuttingDown => "shutting_down",
            AlertCode::Unavailable => "unavailable",
            AlertCode::AgentDown => "agent_down",
            AlertCode::DuplicateAgent => "duplicate_agent",
            AlertCode::Duplicate => "duplicate",
            AlertCode::AccountHeld => "account_held",
            AlertCode::AccountRecovered => "account_recovered",
            AlertCode::Undeliverable => "undeliverable",
            AlertCode::Reloaded => "reloaded",
            AlertCode::BadConfig => "bad_config",
            AlertCode::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> AlertCode {
        AlertCode::KNOWN
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or_else(|| AlertCode::Other(s.to_string()))
    }
}

impl Serialize for AlertCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AlertCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AlertCode, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Ok(AlertCode::parse(&s))
    }
}

/// A daemon's NATS connection as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// No NATS URL is configured.
    Off,
    Connected,
    /// Lost (or never made yet); the daemon keeps trying.
    Reconnecting,
    /// Closed for good.
    Closed,
    /// The server refuses the daemon's credentials or certificates; the
    /// daemon keeps trying (they may be fixed on the server's side).
    Refused,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Off => "off",
            LinkState::Connected => "connected",
            LinkState::Reconnecting => "reconnecting",
            LinkState::Closed => "closed",
            LinkState::Refused => "refused",
        }
    }
}

/// `task_assignment`: work for an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskAssignment {
    pub task_id: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    /// How many times a transient failure (`overloaded`, `api_error`,
    /// `crashed`, `hung`) is retried; absent = the daemon's
    /// `message.retry_attempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// The claude session to continue (a result's `session_id`): the task
    /// runs with `--resume`, never at the same time as another task of the
    /// session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// Whether `id` can name a claude session: a UUID in its usual form
/// (36 characters, hyphenated), as claude writes them.
pub fn check_session_id(id: &str) -> Result<(), String> {
    if id.len() == 36 && uuid::Uuid::try_parse(id).is_ok() {
        Ok(())
    } else {
        Err("is not a claude session id (a UUID, as a result's session_id)".into())
    }
}

/// `task_progress`: one raw stream-json event of a running task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskProgress {
    pub task_id: String,
    pub agent_id: String,
    pub event: RawJson,
}

/// A JSON value kept as it was written: stream-json events and claude's
/// `usage` pass through the daemon and the CLI as text, never as a tree.
/// Building a tree for each was most of the cost of passing them on, and a
/// tree has a nesting limit that text does not (an agent's event nested 300
/// deep is still passed on whole).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Checks that `text` is one JSON value (at any depth); keeps it as it
    /// is.
    pub fn from_text(text: &[u8]) -> Result<RawJson, serde_json::Error> {
        let raw: &RawValue = serde_json::from_slice(text)?;
        Ok(RawJson(raw.to_owned()))
    }

    /// The event of `value`.
    pub fn from_value(value: &Value) -> RawJson {
        // A `Value` always serializes (the default is `null`).
        RawJson(serde_json::value::to_raw_value(value).unwrap_or_default())
    }

    /// The event's JSON text.
    pub fn text(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.0.get() == other.0.get()
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Completed,
    Failed,
    Cancelled,
    Timeout,
}

impl TaskStatus {
    /// As on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Timeout => "timeout",
        }
    }
}

/// `task_result`: the end of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    pub task_id: String,
    pub agent_id: String,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_turns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<RawJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Why the task did not complete; absent when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// How many times the task was run (0: it never reached an agent).
    #[serde(default)]
    pub attempts: u32,
}

/// What an `agent_command` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandType {
    /// Run `prompt` as a task (like a `task_assignment`).
    Execute,
    /// Start a terminated agent.
    Start,
    Stop,
    Pause,
    Resume,
    Restart,
    /// Stop the whole daemon gracefully.
    Shutdown,
}

impl CommandType {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandType::Execute => "execute",
            CommandType::Start => "start",
            CommandType::Stop => "stop",
            CommandType::Pause => "pause",
            CommandType::Resume => "resume",
            CommandType::Restart => "restart",
            CommandType::Shutdown => "shutdown",
        }
    }
}

/// `agent_command`: control of one agent (or, for `shutdown`, the daemon).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCommand {
    pub command_type: CommandType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// For `execute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// For `execute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// For `resume` of an account's hold (instead of an agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// Memory and CPU of an agent's process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceUsage {
    pub memory_mb: f64,
    pub cpu_seconds: f64,
}

/// `agent_status`: an agent's state (published on every transition; as a
/// request, only `agent_id` is needed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AgentState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<AgentState>,
    #[serde(default)]
    pub uptime_seconds: f64,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub resource_usage: Option<ResourceUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_id: Option<String>,
    #[serde(default)]
    pub tasks_completed: u64,
    #[serde(default)]
    pub tasks_failed: u64,
    #[serde(default)]
    pub total_cost_usd: f64,
    /// Why the agent is in this state, when it is not obvious (budget spent,
    /// stopped by an operator, hung), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The same, for programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<ReasonCode>,
    /// Other daemons that run an agent with the same id: a fault (a task to
    /// the id runs on only one of them, chosen by NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub also_on: Option<Vec<String>>,
    /// The account the agent draws on, and whether it is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountView>,
    /// Its tasks since the daemon started, by how they ended (in a report
    /// only, for metrics).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_counts: Vec<TaskCount>,
    /// The claude session its process is in (in a report only, once a task
    /// has said which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionView>,
}

/// An agent's current claude session: what `send --session` continues, and
/// what `recycle` measures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub session_id: String,
    /// Tasks run in it by this process.
    pub tasks: u64,
    /// Their input tokens, cache reads and writes included.
    pub input_tokens: u64,
}

/// How many of an agent's tasks ended one way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskCount {
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<crate::message::failures::ErrorKind>,
    pub count: u64,
}

/// `agent_registration`: an agent this daemon runs, published at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRegistration {
    pub agent_id: String,
    pub agent_type: String,
    pub daemon_id: String,
    pub protocol: String,
}

/// `system_alert`: something needs a person, or a request was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemAlert {
    pub severity: Severity,
    pub code: AlertCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<Vec<String>>,
    /// For `account_held` and `account_recovered`: the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// For `account_held`: why it is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<HoldReason>,
    /// For `account_held`: when the hold ends (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// `system_health_check`: a request (all fields optional) or, with
/// `report`, the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SystemHealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<HealthReport>,
}

/// One daemon's view of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    pub daemon_id: String,
    /// The daemon process that answered (new at each start): two reports
    /// with one `daemon_id` and two instances are two daemons sharing an id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub uptime_seconds: f64,
    pub nats: LinkState,
    pub queued: usize,
    pub queue_capacity: usize,
    pub agents: Vec<AgentStatus>,
    /// The accounts its agents draw on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<AccountView>,
    /// Durable mode (`transport.jetstream`), when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<crate::message::stream_view::StreamView>,
    /// Tasks answered before they ran (timed out or cancelled in the
    /// queue), by how, since the daemon started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unrun: Vec<TaskCount>,
    /// A report too large for one message comes in parts, numbered from 1;
    /// absent when it fits in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
}

impl HealthReport {
    /// Splits the report so that each part, encoded with `size` (the bytes
    /// of a whole envelope carrying it), is at most `limit` bytes. One agent
    /// too large for a part on its own still gets a part of its own.
    pub fn split(self, limit: usize, size: impl Fn(&HealthReport) -> usize) -> Vec<HealthReport> {
        if size(&self) <= limit || self.agents.len() <= 1 {
            return vec![self];
        }
        let empty = HealthReport {
            agents: Vec::new(),
            part: Some(u32::MAX),
            parts: Some(u32::MAX),
            ..self.clone()
        };
        let base = size(&empty);
        let mut parts: Vec<Vec<AgentStatus>> = vec![Vec::new()];
        let mut used = base;
        for a in self.agents {
            // Each agent's share: its JSON and a comma.
            let cost = serde_json::to_vec(&a).map_or(0, |v| v.len()) + 1;
            if used + cost > limit && parts.last().is_some_and(|p| !p.is_empty()) {
                parts.push(Vec::new());
                used = base;
            }
            used += cost;
            if let Some(p) = parts.last_mut() {
                p.push(a);
            }
        }
        let total = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        parts
            .into_iter()
            .enumerate()
            .map(|(n, agents)| HealthReport {
                agents,
                part: Some(u32::try_from(n + 1).unwrap_or(u32::MAX)),
                parts: Some(total),
                ..empty.clone()
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "schemas_tests.rs"]
mod tests;
