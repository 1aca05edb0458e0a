//! The configuration file: where it is found, how it is read, and how it is
//! checked.
//!
//! The file is JSON. It is read into a `serde_json::Value` and walked by hand
//! rather than deserialized with `#[serde(deny_unknown_fields)]`, because serde
//! stops at the first problem and a person fixing a config wants every problem
//! at once, each with the JSON path that names it (`agents[2].restart.policy`).
//! Omitted keys take the defaults of DESIGN.md §8.
//!
//! Relative paths in the file (`working_dir`, and a `command` that contains a
//! `/`) are taken relative to the directory that holds the config file, so a
//! config means the same thing whatever directory the daemon is started from.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::message::schemas::check_token;

/// The file name looked for in the working directory when neither
/// `--config` nor `MISTER_SMITH_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "mister-smith.json";

/// The environment variable that names the config file.
pub const CONFIG_ENV: &str = "MISTER_SMITH_CONFIG";

/// Config files larger than this are refused before parsing.
const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// The most replicas one agent entry may ask for.
const MAX_REPLICAS: u64 = 10_000;

/// Errors from finding, reading or checking the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
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
    #[error("config {path}: larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("config {path}: not valid JSON: {source}")]
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

// `PathBuf` has no `Display`; these two variants print through `display()`.
impl ConfigError {
    /// Each line to show a person: one per problem for an invalid config, one
    /// line otherwise.
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
    pub agents: Vec<AgentSpec>,
}

/// How the daemon and the CLI reach each other.
#[derive(Clone, Default)]
pub struct TransportConfig {
    pub nats_url: Option<String>,
    pub socket: Option<PathBuf>,
    pub creds: Option<PathBuf>,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

// Secrets never reach a log line, even through `{:?}`.
impl fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("nats_url", &self.nats_url)
            .field("socket", &self.socket)
            .field("creds", &self.creds)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// Limits on messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageConfig {
    pub default_timeout_ms: u64,
    pub max_message_size: usize,
    pub queue_capacity: usize,
}

impl Default for MessageConfig {
    fn default() -> Self {
        MessageConfig {
            default_timeout_ms: 300_000,
            max_message_size: 1_048_576,
            queue_capacity: 10_000,
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
    /// `RLIMIT_DATA`, in MiB (see the README for why not `RLIMIT_AS`).
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

/// Reads and checks the config file at `path`, including that every
/// agent's program and working directory exist (for `run` and
/// `check-config`).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let (config, mut problems) = read_and_parse(path)?;
    if let Some(c) = &config {
        problems.extend(missing_programs(c));
    }
    match config {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        }),
    }
}

/// Reads and checks the config file at `path` without looking for the
/// agents' programs: what client commands need (they may run on a host
/// without `claude`).
pub fn load_unchecked(path: &Path) -> Result<Config, ConfigError> {
    match read_and_parse(path)? {
        (Some(c), problems) if problems.is_empty() => Ok(c),
        (_, problems) => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        }),
    }
}

fn read_and_parse(path: &Path) -> Result<(Option<Config>, Vec<Problem>), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value = serde_json::from_slice(&text).map_err(|source| ConfigError::Syntax {
        path: path.to_path_buf(),
        source,
    })?;
    // Absolute, because a relative program path would be resolved against
    // the child's working directory, not ours.
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = std::path::absolute(&base).unwrap_or(base);
    let (mut config, problems) = parse_all(&value, &base);
    if let Some(c) = config.as_mut() {
        c.path = path.to_path_buf();
    }
    Ok((config, problems))
}

/// Agents whose program cannot be found or is not executable, or whose
/// working directory is missing: better said at load than found out as a
/// crash loop.
fn missing_programs(config: &Config) -> Vec<Problem> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let search_path = std::env::var_os("PATH").unwrap_or_default();
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for agent in &config.agents {
        // Replicas share an entry: one report is enough.
        if !seen.insert(agent.source.clone()) {
            continue;
        }
        let found = if agent.command.contains('/') {
            executable(Path::new(&agent.command))
        } else {
            std::env::split_paths(&search_path).any(|d| executable(&d.join(&agent.command)))
        };
        if !found {
            let what = if agent.command.contains('/') {
                "is not an executable file"
            } else {
                "is not found in PATH"
            };
            problems.push(Problem {
                path: format!("{}.command", agent.source),
                message: format!("{:?} {what}", agent.command),
            });
        }
        if !agent.working_dir.is_dir() {
            problems.push(Problem {
                path: format!("{}.working_dir", agent.source),
                message: format!("{} is not a directory", agent.working_dir.display()),
            });
        }
    }
    problems
}

/// Checks a parsed config document. Relative paths are resolved against
/// `base`. Returns every problem found, not just the first.
pub fn parse(value: &Value, base: &Path) -> Result<Config, Vec<Problem>> {
    match parse_all(value, base) {
        (Some(c), problems) if problems.is_empty() => Ok(c),
        (_, problems) => Err(problems),
    }
}

/// Like [`parse`], but also returns what could be read despite the
/// problems (the agents without problems of their own), so later checks can
/// add theirs to the same list.
fn parse_all(value: &Value, base: &Path) -> (Option<Config>, Vec<Problem>) {
    let mut p = Problems::default();
    let Some(top) = p.object(value, "") else {
        return (None, p.0);
    };
    p.known_keys(top, "", &["daemon_id", "transport", "message", "agents"]);

    let daemon_id = match top.get("daemon_id") {
        None | Some(Value::Null) => default_daemon_id(),
        Some(v) => {
            let id = p.string(v, "daemon_id").unwrap_or_default();
            if let Err(why) = check_token(&id) {
                p.push("daemon_id", format!("{id:?} {why}"));
            }
            id
        }
    };
    let transport = transport(&mut p, top.get("transport"));
    let message = message(&mut p, top.get("message"));

    let mut agents = Vec::new();
    match top.get("agents") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, a) in list.iter().enumerate() {
                agents.extend(agent(&mut p, a, &format!("agents[{i}]"), base));
            }
        }
        Some(other) => p.push(
            "agents",
            format!("expected an array, found {}", kind(other)),
        ),
    }
    let mut seen = HashSet::new();
    for (a, path) in &agents {
        if !seen.insert(a.id.clone()) {
            p.push(
                &format!("{path}.id"),
                format!("duplicate agent id {:?}", a.id),
            );
        }
    }

    let config = Config {
        path: PathBuf::new(),
        daemon_id,
        transport,
        message,
        agents: agents.into_iter().map(|(a, _)| a).collect(),
    };
    (Some(config), p.0)
}

/// The host name, made into a valid token, or `localhost`.
fn default_daemon_id() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut id: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(crate::message::schemas::MAX_TOKEN_LEN)
        .collect();
    if check_token(&id).is_err() {
        id = "localhost".to_string();
    }
    id
}

fn transport(p: &mut Problems, v: Option<&Value>) -> TransportConfig {
    let mut t = TransportConfig::default();
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return t;
    };
    let Some(m) = p.object(v, "transport") else {
        return t;
    };
    p.known_keys(
        m,
        "transport",
        &[
            "nats_url", "socket", "creds", "token", "user", "password", "tls_ca", "tls_cert",
            "tls_key",
        ],
    );
    t.nats_url = p.opt_string(m, "transport", "nats_url");
    if let Some(url) = &t.nats_url {
        if url.is_empty() {
            p.push(
                "transport.nats_url",
                "must not be empty (use null for none)",
            );
        }
    }
    t.socket = p.opt_string(m, "transport", "socket").map(PathBuf::from);
    t.creds = p.opt_string(m, "transport", "creds").map(PathBuf::from);
    t.token = p.opt_string(m, "transport", "token");
    t.user = p.opt_string(m, "transport", "user");
    t.password = p.opt_string(m, "transport", "password");
    t.tls_ca = p.opt_string(m, "transport", "tls_ca").map(PathBuf::from);
    t.tls_cert = p.opt_string(m, "transport", "tls_cert").map(PathBuf::from);
    t.tls_key = p.opt_string(m, "transport", "tls_key").map(PathBuf::from);
    if t.password.is_some() && t.user.is_none() {
        p.push("transport.password", "is set but transport.user is not");
    }
    if t.tls_cert.is_some() != t.tls_key.is_some() {
        p.push("transport", "tls_cert and tls_key must be given together");
    }
    t
}

fn message(p: &mut Problems, v: Option<&Value>) -> MessageConfig {
    let mut c = MessageConfig::default();
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return c;
    };
    let Some(m) = p.object(v, "message") else {
        return c;
    };
    p.known_keys(
        m,
        "message",
        &["default_timeout_ms", "max_message_size", "queue_capacity"],
    );
    c.default_timeout_ms = p.uint(m, "message", "default_timeout_ms", c.default_timeout_ms, 1);
    c.max_message_size = p.uint(
        m,
        "message",
        "max_message_size",
        c.max_message_size as u64,
        256,
    ) as usize;
    c.queue_capacity = p.uint(m, "message", "queue_capacity", c.queue_capacity as u64, 1) as usize;
    c
}

/// Checks one entry of `agents` and expands its replicas. Each agent comes
/// back with the JSON path of its entry, for later problems such as duplicates.
fn agent(p: &mut Problems, v: &Value, path: &str, base: &Path) -> Vec<(AgentSpec, String)> {
    let Some(m) = p.object(v, path) else {
        return Vec::new();
    };
    p.known_keys(
        m,
        path,
        &[
            "id",
            "type",
            "command",
            "args",
            "env",
            "working_dir",
            "protocol",
            "replicas",
            "restart",
            "stop_timeout_ms",
            "startup_timeout_ms",
            "health",
            "limits",
        ],
    );
    let before = p.0.len();

    let id = match m.get("id") {
        None | Some(Value::Null) => {
            p.push(&format!("{path}.id"), "is required");
            String::new()
        }
        Some(v) => {
            let id = p.string(v, &format!("{path}.id")).unwrap_or_default();
            if let Err(why) = check_token(&id) {
                p.push(&format!("{path}.id"), format!("{id:?} {why}"));
            }
            id
        }
    };
    let agent_type = match m.get("type") {
        None | Some(Value::Null) => "claude".to_string(),
        Some(v) => {
            let t = p.string(v, &format!("{path}.type")).unwrap_or_default();
            if let Err(why) = check_token(&t) {
                p.push(&format!("{path}.type"), format!("{t:?} {why}"));
            }
            t
        }
    };
    let command = match m.get("command") {
        None | Some(Value::Null) => "claude".to_string(),
        Some(v) => {
            let c = p.string(v, &format!("{path}.command")).unwrap_or_default();
            if c.trim().is_empty() {
                p.push(&format!("{path}.command"), "must not be empty");
            } else if c.contains('\0') {
                p.push(&format!("{path}.command"), "must not contain a NUL byte");
            }
            c
        }
    };
    let command = resolve_command(&command, base);
    let args = p.string_list(m.get("args"), &format!("{path}.args"));
    let env = env_map(p, m.get("env"), &format!("{path}.env"));
    let working_dir = match p.opt_string(m, path, "working_dir") {
        None => base.to_path_buf(),
        Some(d) if d.is_empty() => {
            p.push(&format!("{path}.working_dir"), "must not be empty");
            PathBuf::new()
        }
        Some(d) => join(base, Path::new(&d)),
    };
    let protocol = match p.opt_string(m, path, "protocol").as_deref() {
        None | Some("stream-json") => Protocol::StreamJson,
        Some("oneshot") => Protocol::Oneshot,
        Some("none") => Protocol::None,
        Some(other) => {
            p.push(
                &format!("{path}.protocol"),
                format!("unknown protocol {other:?} (expected stream-json, oneshot or none)"),
            );
            Protocol::StreamJson
        }
    };
    let replicas = p.uint(m, path, "replicas", 1, 1);
    if replicas > MAX_REPLICAS {
        p.push(
            &format!("{path}.replicas"),
            format!("{replicas} is more than {MAX_REPLICAS}"),
        );
    }
    let restart = restart(p, m.get("restart"), &format!("{path}.restart"));
    let stop_timeout = Duration::from_millis(p.uint(m, path, "stop_timeout_ms", 5_000, 0));
    let startup_timeout = Duration::from_millis(p.uint(m, path, "startup_timeout_ms", 30_000, 1));
    let health = health(p, m.get("health"), &format!("{path}.health"));
    let limits = limits(p, m.get("limits"), &format!("{path}.limits"));

    if p.0.len() != before {
        return Vec::new();
    }
    let spec = AgentSpec {
        id: id.clone(),
        source: path.to_string(),
        agent_type,
        command,
        args,
        env,
        working_dir,
        protocol,
        restart,
        stop_timeout,
        startup_timeout,
        health,
        limits,
    };
    if replicas == 1 {
        return vec![(spec, path.to_string())];
    }
    let mut out = Vec::new();
    for n in 1..=replicas {
        let rid = format!("{id}-{n}");
        if let Err(why) = check_token(&rid) {
            p.push(
                &format!("{path}.replicas"),
                format!("replica id {rid:?} {why}"),
            );
            return Vec::new();
        }
        let mut s = spec.clone();
        s.id = rid;
        out.push((s, path.to_string()));
    }
    out
}

fn restart(p: &mut Problems, v: Option<&Value>, path: &str) -> RestartPolicy {
    let mut r = RestartPolicy::default();
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return r;
    };
    let Some(m) = p.object(v, path) else {
        return r;
    };
    p.known_keys(
        m,
        path,
        &[
            "policy",
            "initial_delay_ms",
            "max_delay_ms",
            "multiplier",
            "max_restarts",
            "window_ms",
            "reset_after_ms",
        ],
    );
    if let Some(s) = p.opt_string(m, path, "policy") {
        r.policy = match s.as_str() {
            "never" => PolicyKind::Never,
            "always" => PolicyKind::Always,
            "on_failure" => PolicyKind::OnFailure,
            "exponential_backoff" => PolicyKind::ExponentialBackoff,
            other => {
                p.push(
                    &format!("{path}.policy"),
                    format!(
                        "unknown policy {other:?} (expected never, always, on_failure or exponential_backoff)"
                    ),
                );
                r.policy
            }
        };
    }
    r.initial_delay = ms(p.uint(m, path, "initial_delay_ms", 100, 0));
    r.max_delay = ms(p.uint(m, path, "max_delay_ms", 30_000, 0));
    if r.max_delay < r.initial_delay {
        p.push(
            &format!("{path}.max_delay_ms"),
            format!(
                "{} is less than initial_delay_ms ({})",
                r.max_delay.as_millis(),
                r.initial_delay.as_millis()
            ),
        );
    }
    match m.get("multiplier") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_f64() {
            Some(x) if (1.0..=1000.0).contains(&x) => r.multiplier = x,
            Some(x) => p.push(
                &format!("{path}.multiplier"),
                format!("{x} is out of range (1.0 to 1000; a multiplier below 1 would shrink the delay)"),
            ),
            None => p.push(
                &format!("{path}.multiplier"),
                format!("expected a number, found {}", kind(v)),
            ),
        },
    }
    let max_restarts = p.uint(m, path, "max_restarts", 5, 0);
    r.max_restarts = u32::try_from(max_restarts).unwrap_or(u32::MAX);
    r.window = ms(p.uint(m, path, "window_ms", 60_000, 1));
    r.reset_after = ms(p.uint(m, path, "reset_after_ms", 30_000, 0));
    r
}

fn health(p: &mut Problems, v: Option<&Value>, path: &str) -> HealthSpec {
    let mut h = HealthSpec::default();
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return h;
    };
    let Some(m) = p.object(v, path) else {
        return h;
    };
    p.known_keys(
        m,
        path,
        &[
            "interval_ms",
            "idle_timeout_ms",
            "command",
            "timeout_ms",
            "failure_threshold",
        ],
    );
    h.interval = ms(p.uint(m, path, "interval_ms", 5_000, 10));
    h.idle_timeout = ms(p.uint(m, path, "idle_timeout_ms", 600_000, 1));
    h.timeout = ms(p.uint(m, path, "timeout_ms", 5_000, 1));
    h.failure_threshold =
        u32::try_from(p.uint(m, path, "failure_threshold", 3, 1)).unwrap_or(u32::MAX);
    h.command = match m.get("command") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => {
            p.push(&format!("{path}.command"), "must not be empty");
            None
        }
        Some(Value::String(s)) => Some(HealthCommand::Shell(s.clone())),
        Some(list @ Value::Array(_)) => {
            let argv = p.string_list(Some(list), &format!("{path}.command"));
            if argv.first().is_none_or(|a| a.is_empty()) {
                p.push(&format!("{path}.command"), "must not be empty");
                None
            } else {
                Some(HealthCommand::Argv(argv))
            }
        }
        Some(other) => {
            p.push(
                &format!("{path}.command"),
                format!(
                    "expected a string or an array of strings, found {}",
                    kind(other)
                ),
            );
            None
        }
    };
    h
}

fn limits(p: &mut Problems, v: Option<&Value>, path: &str) -> Limits {
    let mut l = Limits::default();
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return l;
    };
    let Some(m) = p.object(v, path) else {
        return l;
    };
    p.known_keys(m, path, &["memory_mb", "cpu_seconds", "open_files"]);
    l.memory_mb = p.opt_uint(m, path, "memory_mb", 1);
    l.cpu_seconds = p.opt_uint(m, path, "cpu_seconds", 1);
    l.open_files = p.opt_uint(m, path, "open_files", 1);
    l
}

fn env_map(p: &mut Problems, v: Option<&Value>, path: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return env;
    };
    let Some(m) = p.object(v, path) else {
        return env;
    };
    for (k, v) in m {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            p.push(
                &format!("{path}.{k}"),
                "is not a valid environment variable name",
            );
            continue;
        }
        match v {
            // The value is a secret more often than not: never echo it.
            Value::String(s) if s.contains('\0') => {
                p.push(&format!("{path}.{k}"), "value contains a NUL byte");
            }
            Value::String(s) => {
                env.insert(k.clone(), s.clone());
            }
            other => p.push(
                &format!("{path}.{k}"),
                format!("expected a string, found {}", kind(other)),
            ),
        }
    }
    env
}

/// A command with a `/` in it is a path, relative to `base` when it is not
/// absolute; a bare name is left for `PATH` lookup at spawn time.
fn resolve_command(command: &str, base: &Path) -> String {
    if command.contains('/') {
        join(base, Path::new(command))
            .to_string_lossy()
            .into_owned()
    } else {
        command.to_string()
    }
}

fn join(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || base == Path::new(".") {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The problems found so far, and helpers that read a value or record why
/// they could not.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn object<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            other => {
                let path = if path.is_empty() { "(top level)" } else { path };
                self.push(path, format!("expected an object, found {}", kind(other)));
                None
            }
        }
    }

    fn known_keys(&mut self, m: &Map<String, Value>, path: &str, known: &[&str]) {
        for k in m.keys() {
            if !known.contains(&k.as_str()) {
                let full = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let hint = known
                    .iter()
                    .find(|c| close(c, k))
                    .map(|c| format!(" (did you mean {c:?}?)"))
                    .unwrap_or_default();
                self.push(&full, format!("unknown key{hint}"));
            }
        }
    }

    fn string(&mut self, v: &Value, path: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.push(path, format!("expected a string, found {}", kind(other)));
                None
            }
        }
    }

    fn opt_string(&mut self, m: &Map<String, Value>, path: &str, key: &str) -> Option<String> {
        match m.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => self.string(v, &sub(path, key)),
        }
    }

    fn string_list(&mut self, v: Option<&Value>, path: &str) -> Vec<String> {
        match v {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    Value::String(s) if s.contains('\0') => {
                        self.push(&format!("{path}[{i}]"), "contains a NUL byte");
                        None
                    }
                    Value::String(s) => Some(s.clone()),
                    other => {
                        self.push(
                            &format!("{path}[{i}]"),
                            format!("expected a string, found {}", kind(other)),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                self.push(
                    path,
                    format!("expected an array of strings, found {}", kind(other)),
                );
                Vec::new()
            }
        }
    }

    /// An unsigned integer no smaller than `min`, or `default` when absent.
    fn uint(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        key: &str,
        default: u64,
        min: u64,
    ) -> u64 {
        self.opt_uint(m, path, key, min).unwrap_or(default)
    }

    fn opt_uint(&mut self, m: &Map<String, Value>, path: &str, key: &str, min: u64) -> Option<u64> {
        let v = m.get(key)?;
        if v.is_null() {
            return None;
        }
        match v.as_u64() {
            Some(n) if n >= min => Some(n),
            Some(n) => {
                self.push(&sub(path, key), format!("{n} is less than {min}"));
                None
            }
            None => {
                self.push(
                    &sub(path, key),
                    format!("expected a whole number >= {min}, found {v}"),
                );
                None
            }
        }
    }
}

fn sub(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// True when `a` and `b` differ by one edit or a swap of neighbours, for
/// "did you mean" hints on misspelt keys.
fn close(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a == b {
        return false;
    }
    let (n, m) = (a.len(), b.len());
    if n.abs_diff(m) > 1 {
        return false;
    }
    // Levenshtein distance with transpositions, capped: the keys are short.
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[n][m] <= 2 && n.max(m) > 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(v: Value) -> Vec<String> {
        match parse(&v, Path::new(".")) {
            Ok(_) => Vec::new(),
            Err(ps) => ps.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_fill_a_minimal_agent() {
        let c = parse(&json!({"agents":[{"id":"a"}]}), Path::new(".")).unwrap();
        let a = &c.agents[0];
        assert_eq!(a.agent_type, "claude");
        assert_eq!(a.command, "claude");
        assert_eq!(a.protocol, Protocol::StreamJson);
        assert_eq!(a.restart, RestartPolicy::default());
        assert_eq!(a.stop_timeout, Duration::from_millis(5000));
        assert_eq!(c.message, MessageConfig::default());
    }

    #[test]
    fn replicas_expand_and_collide() {
        let c = parse(&json!({"agents":[{"id":"w","replicas":3}]}), Path::new(".")).unwrap();
        let ids: Vec<_> = c.agents.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["w-1", "w-2", "w-3"]);
        let ps = problems(json!({"agents":[{"id":"w","replicas":2},{"id":"w-2"}]}));
        assert_eq!(ps, ["agents[1].id: duplicate agent id \"w-2\""]);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let ps = problems(json!({
            "daemon_id": "a.b",
            "colour": 1,
            "agents": [
                {"id": "x*", "command": "", "restart": {"policy": "alwyas", "multiplier": 0}},
                {"id": "ok", "protocl": "none", "limits": {"memory_mb": -1}},
                {"id": "ok"}
            ]
        }));
        let want = [
            "colour: unknown key",
            "daemon_id: \"a.b\" contains '.'",
            "agents[0].id: \"x*\" contains '*'",
            "agents[0].command: must not be empty",
            "agents[0].restart.policy: unknown policy \"alwyas\"",
            "agents[0].restart.multiplier: 0 is out of range",
            "agents[1].protocl: unknown key (did you mean \"protocol\"?)",
            "agents[1].limits.memory_mb: expected a whole number",
        ];
        for w in want {
            assert!(
                ps.iter().any(|p| p.starts_with(w)),
                "missing {w:?} in {ps:#?}"
            );
        }
        assert_eq!(ps.len(), want.len(), "{ps:#?}");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = parse(
            &json!({"agents":[{"id":"a","command":"./bin/x","working_dir":"w"}]}),
            Path::new("/etc/ms"),
        )
        .unwrap();
        assert_eq!(c.agents[0].command, "/etc/ms/./bin/x");
        assert_eq!(c.agents[0].working_dir, PathBuf::from("/etc/ms/w"));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = parse(
            &json!({"transport":{"token":"s3cret","user":"u","password":"pw"},
                    "agents":[{"id":"a","env":{"ANTHROPIC_API_KEY":"sk-123"}}]}),
            Path::new("."),
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("pw\"") && !dbg.contains("sk-123"));
        assert!(dbg.contains("ANTHROPIC_API_KEY"));
    }
}
