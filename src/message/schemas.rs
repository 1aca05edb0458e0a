//! The typed payloads of the eight message types, and the validation rules
//! shared by the config loader, the envelope decoder and the CLI.
//!
//! Agent ids, agent types and daemon ids are interpolated into NATS subjects
//! (`mister-smith.{type}.{id}.{message_type}`), so anything that could change
//! the shape of a subject — `.`, `*`, `>`, whitespace, control characters —
//! must be refused before it gets anywhere near a connection.

/// The longest id, type or daemon id accepted.
pub const MAX_TOKEN_LEN: usize = 64;

/// Tokens that have a meaning of their own in a subject and so cannot name an
/// agent, a type or a daemon.
pub const RESERVED_TOKENS: [&str; 4] = ["any", "all", "system", "broadcast"];

/// Why a name cannot be used as a subject token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenProblem {
    Empty,
    TooLong(usize),
    BadChar(char),
    Reserved,
}

impl std::fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenProblem::Empty => write!(f, "must not be empty"),
            TokenProblem::TooLong(n) => {
                write!(f, "is {n} characters long (at most {MAX_TOKEN_LEN})")
            }
            TokenProblem::BadChar(c) => write!(
                f,
                "contains {c:?} (only A-Z, a-z, 0-9, '_' and '-' are allowed)"
            ),
            TokenProblem::Reserved => write!(
                f,
                "is reserved (any, all, system and broadcast have a meaning in subjects)"
            ),
        }
    }
}

/// Checks that `name` matches `[A-Za-z0-9_-]{1,64}` and is not reserved.
pub fn check_token(name: &str) -> Result<(), TokenProblem> {
    if name.is_empty() {
        return Err(TokenProblem::Empty);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(TokenProblem::BadChar(c));
    }
    // Every remaining character is ASCII, so bytes are characters.
    if name.len() > MAX_TOKEN_LEN {
        return Err(TokenProblem::TooLong(name.len()));
    }
    if RESERVED_TOKENS.contains(&name) {
        return Err(TokenProblem::Reserved);
    }
    Ok(())
}

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

use crate::runtime::lifecycle::State;

/// `task_assignment`: work for an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskAssignment {
    pub task_id: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
}

/// `task_progress`: one raw stream-json event of a running task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskProgress {
    pub task_id: String,
    pub agent_id: String,
    pub event: RawEvent,
}

/// A stream-json event kept as the agent wrote it: the daemon passes
/// events through as text instead of building a JSON tree for each one
/// (parsing and re-serializing them was a third of its work per task).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawEvent(Box<RawValue>);

impl RawEvent {
    /// Checks that `text` is one JSON value; keeps it as it is.
    pub fn from_text(text: &[u8]) -> Result<RawEvent, serde_json::Error> {
        let raw: &RawValue = serde_json::from_slice(text)?;
        Ok(RawEvent(raw.to_owned()))
    }

    /// The event of `value`.
    pub fn from_value(value: &Value) -> RawEvent {
        // A `Value` always serializes (the default is `null`).
        RawEvent(serde_json::value::to_raw_value(value).unwrap_or_default())
    }

    /// The event as a JSON tree, for reading its fields.
    pub fn value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }

    /// The event's JSON text.
    pub fn text(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawEvent {
    fn eq(&self, other: &RawEvent) -> bool {
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
    pub usage: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
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
    pub status: Option<State>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<State>,
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
    /// stopped by an operator, hung).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    /// `info`, `warning`, `error` or `critical`.
    pub severity: String,
    /// Machine-readable: `queue_full`, `no_route`, `bad_request`,
    /// `restart_budget_spent`, `refused`, `shutting_down`.
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<Vec<String>>,
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
    pub uptime_seconds: f64,
    /// `connected`, `reconnecting` or `off`.
    pub nats: String,
    pub queued: usize,
    pub queue_capacity: usize,
    pub agents: Vec<AgentStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_subjects_are_literal() {
        assert!(check_subject("_INBOX.abc.1").is_ok());
        assert!(check_subject("a.*").is_err());
        assert!(check_subject("a.>").is_err());
        assert!(check_subject("a b").is_err());
        assert!(check_subject("a..b").is_err());
        assert!(check_subject("").is_err());
    }

    #[test]
    fn accepts_plain_names() {
        for ok in ["coder-1", "a", "A_b-9", &"x".repeat(64)] {
            assert_eq!(check_token(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_subject_metacharacters_and_reserved_words() {
        assert_eq!(check_token(""), Err(TokenProblem::Empty));
        assert_eq!(check_token("a.b"), Err(TokenProblem::BadChar('.')));
        assert_eq!(check_token("x.>"), Err(TokenProblem::BadChar('.')));
        assert_eq!(check_token("*"), Err(TokenProblem::BadChar('*')));
        assert_eq!(check_token("a b"), Err(TokenProblem::BadChar(' ')));
        assert_eq!(check_token("a\u{7}"), Err(TokenProblem::BadChar('\u{7}')));
        assert_eq!(check_token("é"), Err(TokenProblem::BadChar('é')));
        assert_eq!(check_token(&"x".repeat(65)), Err(TokenProblem::TooLong(65)));
        assert_eq!(check_token("any"), Err(TokenProblem::Reserved));
        assert_eq!(check_token("system"), Err(TokenProblem::Reserved));
    }
}
