//! The config parser: reads the file into a `serde_json::Value` and walks
//! it by hand.
//!
//! Not `#[serde(deny_unknown_fields)]`: serde stops at the first problem,
//! and a person fixing a config wants every problem at once, each with the
//! JSON path that names it (`agents[2].restart.policy`). Every omitted key
//! takes its value from the defaults in the parent module, never from a
//! literal here.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::names::{check_token, MAX_TOKEN_LEN};
use super::problems::{kind, Problems};
use super::url::check_nats_url;
use super::{
    AgentSpec, Config, ConfigError, HealthCommand, HealthSpec, Limits, MessageConfig, PolicyKind,
    Problem, Protocol, Recycle, RestartPolicy, Secret, TransportConfig, DEFAULT_ACCOUNT,
    DEFAULT_AGENT_TYPE, DEFAULT_COMMAND, DEFAULT_STARTUP_TIMEOUT, DEFAULT_STOP_TIMEOUT,
    MAX_REPLICAS, MAX_RETRIES,
};

/// Reads and checks the config file at `path`, including that every
/// agent's program and working directory exist (for `run` and
/// `check-config`).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let (config, mut problems) = read_and_parse(path)?;
    if let Some(c) = &config {
        problems.extend(super::host::problems(c));
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

/// Claude's flags that choose a process's session: the daemon passes them
/// itself (`--resume ID --fork-session` for `send --session`), and the
/// agent's own would override its choice or fail every process after the
/// first (`--session-id`: "already in use").
const SESSION_FLAGS: [&str; 6] = [
    "--resume",
    "-r",
    "--continue",
    "-c",
    "--session-id",
    "--fork-session",
];

fn read_and_parse(path: &Path) -> Result<(Option<Config>, Vec<Problem>), ConfigError> {
    let text = super::file::read(path)?;
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
    let (mut config, mut problems) = parse_all(&value, &base);
    problems.extend(super::dups::duplicate_keys(&text));
    if let Some(c) = config.as_mut() {
        c.path = path.to_path_buf();
    }
    Ok((config, problems))
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
    p.known_keys(
        top,
        "",
        &[
            "daemon_id",
            "transport",
            "message",
            "accounts",
            "agents",
            "log_dir",
            "logs",
        ],
    );

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
    let accounts = super::accounts::parse(&mut p, top.get("accounts"));
    let logs = super::logs::parse(&mut p, top.get("log_dir"), top.get("logs"), base);

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
    // An account no agent names is a typo somewhere (`Default` for
    // `default`): its budget and holds would never apply.
    let named: HashSet<&str> = agents.iter().map(|(a, _)| a.account.as_str()).collect();
    let broken = p.0.iter().any(|q| q.path.starts_with("agents"));
    for name in accounts.keys() {
        if !named.contains(name.as_str()) && !broken {
            p.push(
                &format!("accounts.{name}"),
                "no agent names this account (agents[].account); remove it or fix the name",
            );
        }
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
        accounts,
        logs,
        agents: agents.into_iter().map(|(a, _)| a).collect(),
    };
    (Some(config), p.0)
}

/// The host name, made into a valid token, or `localhost`.
pub fn default_daemon_id() -> String {
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
        .take(MAX_TOKEN_LEN)
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
            "nats_url",
            "socket",
            "creds",
            "token",
            "user",
            "password",
            "tls_ca",
            "tls_cert",
            "tls_key",
            "jetstream",
        ],
    );
    t.nats_url = p.opt_string(m, "transport", "nats_url");
    if let Some(url) = &t.nats_url {
        if url.is_empty() {
            p.push(
                "transport.nats_url",
                "must not be empty (use null for none)",
            );
        } else if let Err(why) = check_nats_url(url) {
            p.push("transport.nats_url", why);
        }
    }
    t.socket = p.opt_string(m, "transport", "socket").map(PathBuf::from);
    let a = &mut t.auth;
    a.creds = p.opt_string(m, "transport", "creds").map(PathBuf::from);
    a.token = p.opt_string(m, "transport", "token").map(Secret::new);
    a.user = p.opt_string(m, "transport", "user");
    a.password = p.opt_string(m, "transport", "password").map(Secret::new);
    a.tls_ca = p.opt_string(m, "transport", "tls_ca").map(PathBuf::from);
    a.tls_cert = p.opt_string(m, "transport", "tls_cert").map(PathBuf::from);
    a.tls_key = p.opt_string(m, "transport", "tls_key").map(PathBuf::from);
    if a.password.is_some() && a.user.is_none() {
        p.push("transport.password", "is set but transport.user is not");
    }
    if a.tls_cert.is_some() != a.tls_key.is_some() {
        p.push("transport", "tls_cert and tls_key must be given together");
    }
    t.jetstream = super::jetstream::parse(p, m.get("jetstream"));
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
        &[
            "default_timeout_ms",
            "max_message_size",
            "queue_capacity",
            "retry_attempts",
            "retry_delay_ms",
        ],
    );
    c.default_timeout_ms = p
        .opt_millis(m, "message", "default_timeout_ms", 1)
        .unwrap_or(c.default_timeout_ms);
    c.max_message_size = p.uint(
        m,
        "message",
        "max_message_size",
        c.max_message_size as u64,
        256,
    ) as usize;
    c.queue_capacity = p.uint(m, "message", "queue_capacity", c.queue_capacity as u64, 1) as usize;
    let retries = p.uint(
        m,
        "message",
        "retry_attempts",
        u64::from(c.retry_attempts),
        0,
    );
    if retries > u64::from(MAX_RETRIES) {
        p.push(
            "message.retry_attempts",
            format!("{retries} is more than {MAX_RETRIES}"),
        );
    }
    c.retry_attempts = u32::try_from(retries.min(u64::from(MAX_RETRIES))).unwrap_or(MAX_RETRIES);
    c.retry_delay_ms = p
        .opt_millis(m, "message", "retry_delay_ms", 0)
        .unwrap_or(c.retry_delay_ms);
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
            "account",
            "recycle",
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
        None | Some(Value::Null) => DEFAULT_AGENT_TYPE.to_string(),
        Some(v) => {
            let t = p.string(v, &format!("{path}.type")).unwrap_or_default();
            if let Err(why) = check_token(&t) {
                p.push(&format!("{path}.type"), format!("{t:?} {why}"));
            }
            t
        }
    };
    let command = match m.get("command") {
        None | Some(Value::Null) => DEFAULT_COMMAND.to_string(),
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
    let stop_timeout = p.duration(m, path, "stop_timeout_ms", DEFAULT_STOP_TIMEOUT, 0);
    let startup_timeout = p.duration(m, path, "startup_timeout_ms", DEFAULT_STARTUP_TIMEOUT, 1);
    let health = health(p, m.get("health"), &format!("{path}.health"));
    let limits = limits(p, m.get("limits"), &format!("{path}.limits"));
    if protocol.takes_tasks() {
        for (n, a) in args.iter().enumerate() {
            let flag = a.split('=').next().unwrap_or_default();
            if SESSION_FLAGS.contains(&flag) {
                p.push(
                    &format!("{path}.args[{n}]"),
                    format!(
                        "{flag} would put every process in one claude session; the daemon picks sessions (send --session, recycle)"
                    ),
                );
            }
        }
    }
    let recycle = recycle(p, m.get("recycle"), &format!("{path}.recycle"));
    if recycle != Recycle::default() && protocol != Protocol::StreamJson {
        p.push(
            &format!("{path}.recycle"),
            format!(
                "only a stream-json agent keeps a session across tasks (this one is {})",
                protocol.as_str()
            ),
        );
    }
    let account = match p.opt_string(m, path, "account") {
        None => DEFAULT_ACCOUNT.to_string(),
        Some(a) => {
            if let Err(why) = check_token(&a) {
                p.push(&format!("{path}.account"), format!("{a:?} {why}"));
            }
            a
        }
    };

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
        account,
        recycle,
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
        r.policy = match PolicyKind::ALL.into_iter().find(|k| k.as_str() == s) {
            Some(kind) => kind,
            None => {
                let other = &s;
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
    r.initial_delay = p.duration(m, path, "initial_delay_ms", r.initial_delay, 0);
    r.max_delay = p.duration(m, path, "max_delay_ms", r.max_delay, 0);
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
    let max_restarts = p.uint(m, path, "max_restarts", u64::from(r.max_restarts), 0);
    r.max_restarts = u32::try_from(max_restarts).unwrap_or(u32::MAX);
    r.window = p.duration(m, path, "window_ms", r.window, 1);
    r.reset_after = p.duration(m, path, "reset_after_ms", r.reset_after, 0);
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
    h.interval = p.duration(m, path, "interval_ms", h.interval, 10);
    h.idle_timeout = p.duration(m, path, "idle_timeout_ms", h.idle_timeout, 1);
    h.timeout = p.duration(m, path, "timeout_ms", h.timeout, 1);
    let threshold = p.uint(
        m,
        path,
        "failure_threshold",
        u64::from(h.failure_threshold),
        1,
    );
    h.failure_threshold = u32::try_from(threshold).unwrap_or(u32::MAX);
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

fn recycle(p: &mut Problems, v: Option<&Value>, path: &str) -> Recycle {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Recycle::default();
    };
    let Some(m) = p.object(v, path) else {
        return Recycle::default();
    };
    p.known_keys(m, path, &["after_tasks", "after_input_tokens"]);
    Recycle {
        after_tasks: p.opt_uint(m, path, "after_tasks", 1),
        after_input_tokens: p.opt_uint(m, path, "after_input_tokens", 1),
    }
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
