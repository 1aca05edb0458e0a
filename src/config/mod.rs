//! The configuration: its types, where the file is found and how it is
//! read, and the one place its defaults live (the `Default` impls and the
//! constants below; the parser in [`parse`] takes every omitted key from
//! them).
//!
//! The file is JSON, checked by a parser that collects every problem with
//! its JSON path rather than stopping at the first (see [`parse`]).
//! Relative paths in the file (`working_dir`, and a `command` that contains
//! a `/`) are taken relative to the directory that holds the config file,
//! so a config means the same thing whatever directory the daemon is
//! started from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod accounts;
mod dups;
mod file;
mod host;
mod jetstream;
mod logs;
pub mod names;
mod parse;
mod problems;
#[cfg(test)]
mod tests;
pub mod url;

pub use jetstream::JetStreamConfig;
pub use logs::LogsConfig;

pub use parse::{default_daemon_id, load, load_unchecked, parse};

/// The file name looked for in the working directory when neither
/// `--config` nor `MISTER_SMITH_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "mister-smith.json";

/// The environment variable that names the config file.
pub const CONFIG_ENV: &str = "MISTER_SMITH_CONFIG";

/// Config files larger than this are refused before parsing.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// The most replicas one agent entry may ask for.
pub const MAX_REPLICAS: u64 = 10_000;

/// The longest duration any `*_ms` key may give: a week, as for an
/// envelope's `timeout_ms`. Longer is a typo, and a delay near `u64::MAX`
/// milliseconds is no delay anyone meant.
pub const MAX_DURATION_MS: u64 = 7 * 24 * 3600 * 1000;

/// An agent's `type` and `command` when the config does not say.
pub const DEFAULT_AGENT_TYPE: &str = "claude";
pub const DEFAULT_COMMAND: &str = "claude";
/// The account of an agent that names none.
pub const DEFAULT_ACCOUNT: &str = "default";
/// The most retries a task may ask for (`message.retry_attempts`,
/// `send --retries`).
pub const MAX_RETRIES: u32 = 100;
/// `stop_timeout_ms` and `startup_timeout_ms` when the config does not say.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_millis(5_000);
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_millis(30_000);

/// Errors from finding, reading or checking the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no config file: {} not found (use --config PATH or {CONFIG_ENV})",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error("config {}: larger than {MAX_CONFIG_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("config {}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("config {}: not valid JSON: {source}", path.display())]
    Syntax {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config {}: {} problem{}", path.display(), problems.len(), if problems.len() == 1 { "" } else { "s" })]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// Each line to show a person: one per problem for an invalid config,
    /// one line otherwise.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, problems } => problems
                .iter()
                .map(|p| format!("config {}: {p}", path.display()))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

/// One thing wrong with the config, with the JSON path of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A checked configuration, with replicas expanded into separate agents.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    pub daemon_id: String,
    pub transport: TransportConfig,
    pub message: MessageConfig,
    /// The `accounts` map; an account an agent names that is not listed
    /// takes [`AccountSpec::default`].
    pub accounts: BTreeMap<String, AccountSpec>,
    /// Task transcripts: where, and for how long.
    pub logs: LogsConfig,
    pub agents: Vec<AgentSpec>,
}

impl Config {
    /// Every account its agents draw on, each with its settings, in name
    /// order.
    pub fn used_accounts(&self) -> Vec<(String, AccountSpec)> {
        let names: std::collections::BTreeSet<&str> = self
            .agents
            .iter()
            .filter(|a| a.protocol.takes_tasks())
            .map(|a| a.account.as_str())
            .collect();
        names
            .into_iter()
            .map(|n| {
                let spec = self.accounts.get(n).cloned().unwrap_or_default();
                (n.to_string(), spec)
            })
            .collect()
    }
}

/// One entry of `accounts`: the credentials some agents share, and so
/// their limits.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountSpec {
    /// Reaching this spend since 00:00 UTC holds the account until the
    /// next 00:00 UTC.
    pub daily_budget_usd: Option<f64>,
    /// The first hold without a reset time from claude; doubled per
    /// consecutive hold up to `hold_max`.
    pub hold_initial: Duration,
    pub hold_max: Duration,
    /// This many `overloaded` or `api_error` failures in a row hold it.
    pub overload_threshold: u32,
}

impl Default for AccountSpec {
    fn default() -> Self {
        AccountSpec {
            daily_budget_usd: None,
            hold_initial: Duration::from_millis(30_000),
            hold_max: Duration::from_millis(900_000),
            overload_threshold: 3,
        }
    }
}

/// A value that must never reach a log line, an error message or `status`:
/// its `Debug` prints `<redacted>`, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one call that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to log in to NATS: from the config's `transport` keys, or the CLI's
/// flags and environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    pub creds: Option<PathBuf>,
    pub token: Option<Secret>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// How the daemon and the CLI reach each other.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransportConfig {
    pub nats_url: Option<String>,
    pub socket: Option<PathBuf>,
    pub auth: NatsAuth,
    /// Durable tasks; `None` keeps tasks on core NATS.
    pub jetstream: Option<JetStreamConfig>,
}

/// Limits on messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageConfig {
    pub default_timeout_ms: u64,
    pub max_message_size: usize,
    pub queue_capacity: usize,
    /// Retries of a transient failure, for tasks that do not say.
    pub retry_attempts: u32,
    /// The wait before the first retry, doubled for each one after.
    pub retry_delay_ms: u64,
}

impl Default for MessageConfig {
    fn default() -> Self {
        MessageConfig {
            default_timeout_ms: 300_000,
            max_message_size: 1_048_576,
            queue_capacity: 10_000,
            retry_attempts: 0,
            retry_delay_ms: 1_000,
        }
    }
}

/// How an agent's process talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A long-lived `claude -p --input-format stream-json ...` fed on stdin.
    StreamJson,
    /// One `claude -p <prompt>` process per task.
    Oneshot,
    /// A plain process: supervised, never given tasks.
    None,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::StreamJson => "stream-json",
            Protocol::Oneshot => "oneshot",
            Protocol::None => "none",
        }
    }

    /// Whether agents of this protocol take tasks.
    pub fn takes_tasks(self) -> bool {
        self != Protocol::None
    }
}

/// When an agent that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Never,
    Always,
    OnFailure,
    ExponentialBackoff,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Never,
        PolicyKind::Always,
        PolicyKind::OnFailure,
        PolicyKind::ExponentialBackoff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Never => "never",
            PolicyKind::Always => "always",
            PolicyKind::OnFailure => "on_failure",
            PolicyKind::ExponentialBackoff => "exponential_backoff",
        }
    }
}

/// The `restart` block.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub policy: PolicyKind,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub multiplier: f64,
    pub max_restarts: u32,
    pub window: Duration,
    /// A run that lasts at least this long resets the backoff.
    pub reset_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            policy: PolicyKind::ExponentialBackoff,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(30_000),
            multiplier: 2.0,
            max_restarts: 5,
            window: Duration::from_millis(60_000),
            reset_after: Duration::from_millis(30_000),
        }
    }
}

/// A command run by the health monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCommand {
    /// A string, run with `/bin/sh -c` like a Dockerfile's `HEALTHCHECK CMD`.
    Shell(String),
    /// An argv, executed directly.
    Argv(Vec<String>),
}

/// The `health` block.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    pub interval: Duration,
    /// A busy agent silent for this long is hung.
    pub idle_timeout: Duration,
    pub command: Option<HealthCommand>,
    /// How long one run of `command` may take.
    pub timeout: Duration,
    /// Consecutive failed checks before the agent is restarted.
    pub failure_threshold: u32,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            interval: Duration::from_millis(5_000),
            idle_timeout: Duration::from_millis(600_000),
            command: None,
            timeout: Duration::from_millis(5_000),
            failure_threshold: 3,
        }
    }
}

/// The `limits` block: rlimits applied to the child before `exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_DATA`, in MiB (claude's runtime reserves large address
    /// ranges it never touches, so `RLIMIT_AS` would kill it for nothing).
    pub memory_mb: Option<u64>,
    /// `RLIMIT_CPU`, in seconds.
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
}

/// One agent, after replicas are expanded.
#[derive(Clone)]
pub struct AgentSpec {
    pub id: String,
    /// The JSON path of the entry it came from (`agents[2]`).
    pub source: String,
    pub agent_type: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: PathBuf,
    pub protocol: Protocol,
    pub restart: RestartPolicy,
    pub stop_timeout: Duration,
    pub startup_timeout: Duration,
    pub health: HealthSpec,
    pub limits: Limits,
    /// The entry of `accounts` whose credentials it uses.
    pub account: String,
    /// When a stream-json agent starts a fresh session.
    pub recycle: Recycle,
}

/// `agents[].recycle`: a stream-json agent is restarted right after the
/// result that reaches either threshold, so that the next task starts in a
/// fresh claude session (`None`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recycle {
    pub after_tasks: Option<u64>,
    /// Input tokens of the session's turns, cache reads and writes included.
    pub after_input_tokens: Option<u64>,
}

impl Recycle {
    /// Whether a session of `tasks` tasks and `input_tokens` tokens is done.
    pub fn due(&self, tasks: u64, input_tokens: u64) -> bool {
        self.after_tasks.is_some_and(|n| tasks >= n)
            || self.after_input_tokens.is_some_and(|n| input_tokens >= n)
    }
}

impl AgentSpec {
    /// An agent with every default, for tests and the bench.
    pub fn new(id: &str, command: &str) -> AgentSpec {
        AgentSpec {
            id: id.to_string(),
            source: "agents[0]".to_string(),
            agent_type: DEFAULT_AGENT_TYPE.to_string(),
            command: command.to_string(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: PathBuf::from("."),
            protocol: Protocol::StreamJson,
            restart: RestartPolicy::default(),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            health: HealthSpec::default(),
            limits: Limits::default(),
            account: DEFAULT_ACCOUNT.to_string(),
            recycle: Recycle::default(),
        }
    }
}

impl AgentSpec {
    /// Whether a process started from `other` would be the same as one
    /// started from this spec: every field but where in the file it came
    /// from.
    pub fn same_run(&self, other: &AgentSpec) -> bool {
        self.id == other.id
            && self.agent_type == other.agent_type
            && self.command == other.command
            && self.args == other.args
            && self.env == other.env
            && self.working_dir == other.working_dir
            && self.protocol == other.protocol
            && self.restart == other.restart
            && self.stop_timeout == other.stop_timeout
            && self.startup_timeout == other.startup_timeout
            && self.health == other.health
            && self.limits == other.limits
            && self.account == other.account
            && self.recycle == other.recycle
    }
}

// Environment values often hold API keys: print only their names.
impl fmt::Debug for AgentSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentSpec")
            .field("id", &self.id)
            .field("agent_type", &self.agent_type)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("working_dir", &self.working_dir)
            .field("protocol", &self.protocol)
            .field("restart", &self.restart)
            .field("stop_timeout", &self.stop_timeout)
            .field("startup_timeout", &self.startup_timeout)
            .field("health", &self.health)
            .field("limits", &self.limits)
            .field("account", &self.account)
            .finish()
    }
}

/// Finds the config file: `--config`, else `$MISTER_SMITH_CONFIG`, else
/// `./mister-smith.json`.
pub fn locate(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG_FILE),
    }
}
