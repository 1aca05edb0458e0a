//! The one place that knows claude: the argv of its print mode, the
//! stream-json lines we write to it (`initialize`, a user message,
//! `interrupt`), how its stdout lines are told apart, and what a `result`
//! event says about the task.
//!
//! What the real CLI does, as observed from claude 2.x in print mode:
//! `claude -p --input-format stream-json --output-format stream-json
//! --verbose` reads one JSON object per stdin line and writes one per stdout
//! line. It answers control requests (`{"type":"control_request",...}`)
//! with `control_response` lines, emits `system`, `assistant`, `user` and
//! other events while it works, and ends every turn with exactly one
//! `result` event, which is the truth about the turn (the exit code is not:
//! a one-shot process may exit 0 after a failed turn, or never exit).
//! Unknown event types appear in new versions and are progress.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::config::{AgentSpec, Protocol};
use crate::message::failures::ErrorKind;
use crate::message::schemas::{RawJson, TaskResult, TaskStatus};

/// Variables the child must not inherit: they would make claude think it
/// runs inside another claude session.
pub const REMOVED_ENV: [&str; 2] = ["CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"];

/// The argv for an agent's process: the long-lived one of a stream-json
/// agent, the plain one of a `none` agent, or (with `prompt`) one one-shot
/// task. The prompt goes last, after `--`, because claude's list flags
/// (`--allowedTools`, `--mcp-config`, ...) would swallow it anywhere else.
///
/// `resume` continues that claude session, forked to a new id: the session
/// may still be open in another agent's process, and two processes must
/// never write one session.
pub fn argv(spec: &AgentSpec, prompt: Option<&str>, resume: Option<&str>) -> Vec<String> {
    let mut argv = Vec::with_capacity(spec.args.len() + 11);
    let resume_args = |argv: &mut Vec<String>| {
        if let Some(id) = resume {
            argv.extend(["--resume", id, "--fork-session"].map(String::from));
        }
    };
    if let Some(prompt) = prompt {
        argv.extend(["-p", "--output-format", "stream-json", "--verbose"].map(String::from));
        resume_args(&mut argv);
        argv.extend(spec.args.iter().cloned());
        argv.push("--".into());
        argv.push(prompt.into());
        return argv;
    }
    if spec.protocol == Protocol::StreamJson {
        argv.extend(
            [
                "-p",
                "--input-format",
                "stream-json",
                "--output-format",
                "stream-json",
                "--verbose",
            ]
            .map(String::from),
        );
        resume_args(&mut argv);
    }
    argv.extend(spec.args.iter().cloned());
    argv
}

/// Whether claude's last stderr lines say it knew no session of the id
/// it was asked to resume.
pub fn no_conversation(tail: &[String]) -> bool {
    tail.iter()
        .any(|l| l.contains("No conversation found with session ID"))
}

/// The `initialize` control request: the agent is ready once it answers.
pub fn initialize_request(request_id: &str) -> Vec<u8> {
    json!({
        "type": "control_request",
        "request_id": request_id,
        "request": {"subtype": "initialize"},
    })
    .to_string()
    .into_bytes()
}

/// The `interrupt` control request: ends the running turn (with a
/// `result`).
pub fn interrupt_request(request_id: &str) -> Vec<u8> {
    json!({
        "type": "control_request",
        "request_id": request_id,
        "request": {"subtype": "interrupt"},
    })
    .to_string()
    .into_bytes()
}

/// One task, as the stdin line of a stream-json agent.
pub fn user_message(prompt: &str) -> Vec<u8> {
    json!({
        "type": "user",
        "message": {"role": "user", "content": prompt},
    })
    .to_string()
    .into_bytes()
}

/// A stdout line of an agent, classified by its reader thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// An answer to one of our control requests.
    ControlResponse {
        request_id: String,
        error: Option<String>,
    },
    /// The `result` event that ends a turn, read leniently.
    Result(TurnResult),
    /// Any other JSON event (progress), as the agent wrote it, with what it
    /// says about a failure to come, if anything.
    Event(RawJson, Option<Signal>),
    /// A line that is not a JSON object.
    NotJson(String),
    /// A line too long to keep; it still counts as output.
    Dropped,
}

impl Line {
    /// Parses one stdout line. Unknown event types are progress, as the
    /// stream-json format asks (new types appear in new claude versions).
    /// A progress event longer than `limit` bytes (a whole file in a tool
    /// result, say) is replaced by a stub naming its type and size, so it
    /// can still be published within `max_message_size`.
    pub fn classify(raw: &[u8], limit: usize) -> Line {
        // Only the type is read; a progress event stays text (checked to be
        // JSON), since building a tree for each was most of the cost of
        // passing it on.
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type", default, borrow)]
            kind: Option<Cow<'a, str>>,
            #[serde(default, borrow)]
            subtype: Option<Cow<'a, str>>,
            /// An `assistant` line's failure class (`authentication_failed`,
            /// `rate_limit`, ...). Anything but a string is no class.
            #[serde(default, deserialize_with = "lenient_str")]
            error: Option<String>,
            /// A `system/init` line's session: the process's session is
            /// known from its first turn on, not only from its first result.
            #[serde(default, borrow)]
            session_id: Option<Cow<'a, str>>,
        }
        let not_json = || {
            let text = String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
            Line::NotJson(text)
        };
        let head = match raw.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => serde_json::from_slice::<Head>(raw).ok(),
            _ => None,
        };
        let Some(head) = head else {
            return not_json();
        };
        match head.kind.as_deref() {
            Some("result" | "control_response") => {}
            kind => {
                let signal = match kind {
                    Some("assistant") => head.error.map(Signal::AssistantError),
                    Some("rate_limit_event") => Signal::rate_limit(raw),
                    Some("system") if head.subtype.as_deref() == Some("init") => head
                        .session_id
                        .filter(|s| !s.is_empty())
                        .map(|s| Signal::Session(s.into_owned())),
                    _ => None,
                };
                if raw.len() > limit {
                    // A huge event becomes a stub without its body ever
                    // being held as a JSON tree.
                    return Line::Event(stub(kind, head.subtype.as_deref(), raw.len()), signal);
                }
                return match RawJson::from_text(raw) {
                    Ok(ev) => Line::Event(ev, signal),
                    Err(_) => not_json(),
                };
            }
        }
        if head.kind.as_deref() == Some("result") {
            return match TurnResult::parse(raw) {
                Some(r) => Line::Result(r),
                None => not_json(),
            };
        }
        let v: Value = match serde_json::from_slice(raw) {
            Ok(v @ Value::Object(_)) => v,
            _ => return not_json(),
        };
        {
            {
                let resp = v.get("response");
                let field = |k| resp.and_then(|r| r.get(k)).and_then(Value::as_str);
                let request_id = field("request_id").unwrap_or_default().to_string();
                let error = match field("subtype") {
                    Some("success") => None,
                    _ => Some(
                        field("error")
                            .unwrap_or("control request failed")
                            .to_string(),
                    ),
                };
                Line::ControlResponse { request_id, error }
            }
        }
    }
}

/// The stand-in for a progress event too large to pass on: its type,
/// subtype and size.
fn stub(kind: Option<&str>, subtype: Option<&str>, bytes: usize) -> RawJson {
    RawJson::from_value(&json!({
        "type": kind,
        "subtype": subtype,
        "truncated_by_mister_smith": true,
        "bytes": bytes,
    }))
}

/// `event` itself if it is at most `limit` bytes, else its stub.
pub(crate) fn fit_event(event: RawJson, limit: usize) -> RawJson {
    if event.text().len() <= limit {
        return event;
    }
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "type", default)]
        kind: Option<String>,
        #[serde(default)]
        subtype: Option<String>,
    }
    let head: Option<Head> = serde_json::from_str(event.text()).ok();
    let (kind, subtype) = head.map_or((None, None), |h| (h.kind, h.subtype));
    stub(kind.as_deref(), subtype.as_deref(), event.text().len())
}

/// What a `result` event says about its task.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnResult {
    /// The turn failed: `is_error`, or a subtype other than `success`.
    pub is_error: bool,
    pub result: Option<String>,
    pub errors: Vec<String>,
    pub num_turns: Option<u64>,
    pub total_cost_usd: Option<f64>,
    pub usage: Option<RawJson>,
    pub session_id: Option<String>,
    pub subtype: Option<String>,
    /// The HTTP status of the API call that failed, when one did.
    pub api_error_status: Option<u16>,
    pub terminal_reason: Option<String>,
}

impl TurnResult {
    /// Reads a `result` line leniently: each field on its own, so a field
    /// of the wrong type or a number no f64 holds (`1e400`) counts as
    /// absent instead of losing the whole result; `usage` is kept as text
    /// at any depth. An event without `is_error` counts as failed. `None`
    /// only when the line is not a JSON object.
    pub fn parse(raw: &[u8]) -> Option<TurnResult> {
        let fields: BTreeMap<Cow<'_, str>, &RawValue> = serde_json::from_slice(raw).ok()?;
        let get = |k: &str| fields.get(k).map(|v| v.get());
        let field = |k: &str| -> Option<Value> { serde_json::from_str(get(k)?).ok() };
        let text = |k: &str| field(k).and_then(|v| v.as_str().map(String::from));
        let subtype = text("subtype");
        let is_error = field("is_error").and_then(|v| v.as_bool()).unwrap_or(true)
            || subtype.as_deref() != Some("success");
        let errors = get("errors")
            .and_then(|e| serde_json::from_str::<Vec<&RawValue>>(e).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|x| serde_json::from_str::<String>(x.get()).ok())
            .collect();
        Some(TurnResult {
            is_error,
            result: text("result"),
            errors,
            num_turns: field("num_turns").and_then(|v| v.as_u64()),
            total_cost_usd: field("total_cost_usd")
                .and_then(|v| v.as_f64())
                .filter(|c| (0.0..=MAX_COST_USD).contains(c)),
            usage: get("usage").and_then(|u| RawJson::from_text(u.as_bytes()).ok()),
            session_id: text("session_id"),
            subtype,
            api_error_status: field("api_error_status").and_then(|v| http_status(&v)),
            terminal_reason: text("terminal_reason"),
        })
    }

    /// The `task_result` of task `task_id` on `agent_id` that this turn
    /// ends, with its failure class (see [`classify`]); `timed_out` when
    /// its deadline passed first.
    pub fn into_task_result(
        self,
        task_id: &str,
        agent_id: &str,
        duration_ms: u64,
        failure: Option<ErrorKind>,
        timed_out: Option<String>,
    ) -> TaskResult {
        let mut errors = self.errors;
        let (status, error_kind) = if let Some(why) = timed_out {
            errors.insert(0, why);
            (TaskStatus::Timeout, Some(ErrorKind::Timeout))
        } else if let Some(kind) = failure {
            (TaskStatus::Failed, Some(kind))
        } else {
            (TaskStatus::Completed, None)
        };
        TaskResult {
            task_id: task_id.to_string(),
            agent_id: agent_id.to_string(),
            status,
            result: self.result,
            errors: (!errors.is_empty()).then_some(errors),
            duration_ms,
            num_turns: self.num_turns,
            total_cost_usd: self.total_cost_usd,
            usage: self.usage,
            session_id: self.session_id,
            error_kind,
            attempts: 0,
        }
    }
}

/// What a progress line says about how the turn will end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// An `assistant` line's `error` (`authentication_failed`,
    /// `billing_error`, `rate_limit`, `invalid_request`, `server_error`,
    /// `unknown`).
    AssistantError(String),
    /// A `rate_limit_event`: `rejected` says the account is at a limit
    /// until `resets_at` (epoch seconds), when given.
    RateLimit {
        rejected: bool,
        resets_at: Option<i64>,
    },
    /// A `system/init` line: the session the process is in.
    Session(String),
}

impl Signal {
    /// Reads a `rate_limit_event` leniently: each field on its own.
    fn rate_limit(raw: &[u8]) -> Option<Signal> {
        #[derive(serde::Deserialize)]
        struct Event<'a> {
            #[serde(default, borrow)]
            rate_limit_info: Option<&'a RawValue>,
        }
        let info = serde_json::from_slice::<Event>(raw).ok()?.rate_limit_info?;
        let fields: BTreeMap<Cow<'_, str>, &RawValue> = serde_json::from_str(info.get()).ok()?;
        let field = |k: &str| -> Option<Value> { serde_json::from_str(fields.get(k)?.get()).ok() };
        let rejected = field("status").as_ref().and_then(Value::as_str) == Some("rejected");
        let resets_at = field("resetsAt").and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
        });
        Some(Signal::RateLimit {
            rejected,
            resets_at,
        })
    }
}

/// What the progress lines of one turn said, gathered as they come.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnSignals {
    pub assistant_error: Option<String>,
    /// A `rate_limit_event` said `rejected`.
    pub limit_rejected: bool,
    pub resets_at: Option<i64>,
}

impl TurnSignals {
    pub fn note(&mut self, signal: Signal) {
        match signal {
            Signal::AssistantError(e) => self.assistant_error = Some(e),
            Signal::RateLimit {
                rejected,
                resets_at,
            } => {
                if rejected {
                    self.limit_rejected = true;
                    self.resets_at = resets_at.or(self.resets_at);
                }
            }
            Signal::Session(_) => {}
        }
    }
}

/// How a turn failed, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    /// When a limit resets (epoch seconds), when claude said.
    pub resets_at: Option<i64>,
}

/// The one place that decides whether a turn failed and why: from the
/// `result` event (its subtype, `is_error`, `api_error_status`,
/// `terminal_reason` and text), the turn's `assistant` `error` and any
/// `rate_limit_event`. `is_error` alone is not enough: an overload mid-stream
/// ends `error_during_execution` with `is_error: false`, an API failure is
/// `subtype: "success"` with `is_error: true`, and old versions wrote a
/// usage limit as the result text `Claude AI usage limit reached|<epoch>`.
/// A failed turn of no known shape is `other`. `None`: it completed.
pub fn classify(turn: &TurnResult, signals: &TurnSignals) -> Option<Failure> {
    let old_limit = turn.result.as_deref().and_then(old_usage_limit);
    if !turn.is_error && old_limit.is_none() {
        return None;
    }
    let text = turn
        .result
        .iter()
        .chain(turn.errors.iter())
        .map(|t| t.to_lowercase())
        .collect::<Vec<_>>()
        .join("\n");
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    let status = turn.api_error_status.or_else(|| status_in_text(&text));
    let assistant = signals.assistant_error.as_deref();
    let terminal = turn.terminal_reason.as_deref();
    let fail = |kind| {
        Some(Failure {
            kind,
            resets_at: None,
        })
    };
    // The task's own limits first: they say what happened exactly.
    match turn.subtype.as_deref() {
        Some("error_max_turns") => return fail(ErrorKind::MaxTurns),
        Some("error_max_budget_usd") => return fail(ErrorKind::MaxBudget),
        _ => {}
    }
    if terminal == Some("max_turns") {
        return fail(ErrorKind::MaxTurns);
    }
    if terminal == Some("prompt_too_long") || has(&["prompt is too long"]) {
        return fail(ErrorKind::PromptTooLong);
    }
    // The account: logged out, or at a limit.
    if matches!(status, Some(401 | 403))
        || matches!(assistant, Some("authentication_failed" | "billing_error"))
        || has(&[
            "not logged in",
            "please run /login",
            "oauth token has expired",
            "oauth session expired",
            "invalid api key",
            "authentication_error",
            "credit balance is too low",
        ])
    {
        return fail(ErrorKind::Auth);
    }
    if signals.limit_rejected
        || old_limit.is_some()
        || status == Some(429)
        || assistant == Some("rate_limit")
        || matches!(terminal, Some("blocking_limit" | "rapid_refill_breaker"))
        || has(&[
            "usage limit",
            "session limit",
            "weekly limit",
            "hit your limit",
            "rate limit",
            "rate_limit",
            "grace_daily_limit_reached",
        ])
    {
        return Some(Failure {
            kind: ErrorKind::RateLimited,
            resets_at: signals.resets_at.or(old_limit),
        });
    }
    // The API.
    if status == Some(529) || has(&["overloaded"]) {
        return fail(ErrorKind::Overloaded);
    }
    // A request the API refused as it was (a 4xx: an image too large, a
    // bad parameter) is the task's own fault: retrying it, or holding the
    // account for it, helps nobody.
    if status.is_some_and(|s| (400..500).contains(&s) && s != 408)
        || assistant == Some("invalid_request")
    {
        return fail(ErrorKind::Other);
    }
    if status.is_some_and(|s| s >= 500 || s == 408)
        || assistant == Some("server_error")
        || has(&["api error", "internal server error", "connection error"])
    {
        return fail(ErrorKind::ApiError);
    }
    fail(ErrorKind::Other)
}

/// The most one turn can have cost: anything more is a broken number, and
/// summing a few of them would leave the finite range.
const MAX_COST_USD: f64 = 1e6;

/// An HTTP status as claude may write it: 400, 400.0 or "400".
fn http_status(v: &Value) -> Option<u16> {
    let n = match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    u16::try_from(n).ok().filter(|s| (100..600).contains(s))
}

/// The HTTP status in an API failure's text, `API Error: 400 {...}`.
fn status_in_text(lowered: &str) -> Option<u16> {
    let at = lowered.find("api error: ")? + "api error: ".len();
    let digits = lowered.get(at..at + 3)?;
    http_status(&Value::String(digits.to_string()))
}

/// The reset time of an old-style usage limit text,
/// `Claude AI usage limit reached|<epoch seconds>`.
fn old_usage_limit(text: &str) -> Option<i64> {
    let rest = text.trim().strip_prefix("Claude AI usage limit reached|")?;
    rest.trim().parse().ok()
}

/// A string field, or nothing when it is of another type.
fn lenient_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::Deserialize;
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_lines_are_classified() {
        let ok = br#"{"type":"control_response","response":{"subtype":"success","request_id":"r1","response":{"pid":1}}}"#;
        assert_eq!(
            Line::classify(ok, 1000),
            Line::ControlResponse {
                request_id: "r1".into(),
                error: None
            }
        );
        let bad = br#"{"type":"control_response","response":{"subtype":"error","request_id":"r2","error":"Unsupported"}}"#;
        assert_eq!(
            Line::classify(bad, 1000),
            Line::ControlResponse {
                request_id: "r2".into(),
                error: Some("Unsupported".into())
            }
        );
        assert!(matches!(
            Line::classify(br#"{"type":"result","subtype":"success"}"#, 10),
            Line::Result(_)
        ));
        assert!(matches!(
            Line::classify(br#"{"type":"brand_new_kind"}"#, 1000),
            Line::Event(_, None)
        ));
        assert!(matches!(Line::classify(b"[1,2]", 1000), Line::NotJson(_)));
        assert!(matches!(
            Line::classify(b"{\"type\":", 1000),
            Line::NotJson(_)
        ));
        assert_eq!(
            Line::classify(br#"{"type":"user","message":"a long tool result"}"#, 20),
            Line::Event(
                RawJson::from_value(
                    &json!({"type": "user", "subtype": null, "truncated_by_mister_smith": true, "bytes": 46})
                ),
                None
            )
        );
    }

    #[test]
    fn a_result_event_decides_the_status() {
        let ok = json!({"type":"result","subtype":"success","is_error":false,"result":"4",
            "num_turns":1,"total_cost_usd":0.01,"session_id":"s","usage":{"input_tokens":3}});
        let parse = |v: &Value| TurnResult::parse(v.to_string().as_bytes()).unwrap();
        let done = |t: TurnResult| {
            let f = classify(&t, &TurnSignals::default()).map(|f| f.kind);
            t.into_task_result("t", "a", 5, f, None)
        };
        let r = done(parse(&ok));
        assert_eq!(r.status, TaskStatus::Completed);
        assert_eq!(r.error_kind, None);
        assert_eq!(r.result.as_deref(), Some("4"));
        assert_eq!((r.num_turns, r.total_cost_usd), (Some(1), Some(0.01)));
        assert_eq!(r.session_id.as_deref(), Some("s"));
        assert_eq!(r.errors, None);

        let failed = json!({"type":"result","subtype":"error_max_turns","is_error":false,
            "errors":["max turns"]});
        let r = done(parse(&failed));
        assert_eq!(r.status, TaskStatus::Failed);
        assert_eq!(r.error_kind, Some(ErrorKind::MaxTurns));
        assert_eq!(r.errors, Some(vec!["max turns".to_string()]));

        // No is_error at all: not proof of success.
        let bare = json!({"type":"result","subtype":"success"});
        assert!(parse(&bare).is_error);

        let late = parse(&ok).into_task_result("t", "a", 5, None, Some("late".into()));
        assert_eq!(late.status, TaskStatus::Timeout);
        assert_eq!(late.error_kind, Some(ErrorKind::Timeout));
        assert_eq!(late.errors, Some(vec!["late".to_string()]));

        // Lenient: a number no f64 holds, a field of the wrong type, a
        // usage nested past serde's tree limit.
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        let odd = format!(
            r#"{{"type":"result","subtype":"success","is_error":false,"result":"4","total_cost_usd":1e400,"num_turns":"two","usage":{deep}}}"#
        );
        let r = TurnResult::parse(odd.as_bytes()).unwrap();
        assert!(!r.is_error);
        assert_eq!(r.result.as_deref(), Some("4"));
        assert_eq!((r.total_cost_usd, r.num_turns), (None, None));
        assert_eq!(r.usage.map(|u| u.text().len()), Some(601));
        assert!(matches!(
            Line::classify(odd.as_bytes(), 1 << 20),
            Line::Result(_)
        ));
        assert!(TurnResult::parse(b"[1]").is_none());
        // A negative cost is no cost.
        let neg = br#"{"type":"result","subtype":"success","is_error":false,"total_cost_usd":-3}"#;
        assert_eq!(TurnResult::parse(neg).unwrap().total_cost_usd, None);
    }

    #[test]
    fn the_prompt_goes_last_after_a_double_dash() {
        let mut spec = AgentSpec::new("a", "claude");
        spec.args = vec!["--allowedTools".into(), "Read".into()];
        assert_eq!(
            argv(&spec, Some("-p not a flag"), None),
            [
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--allowedTools",
                "Read",
                "--",
                "-p not a flag"
            ]
        );
        assert_eq!(
            argv(&spec, None, None)[..3],
            ["-p", "--input-format", "stream-json"]
        );
        let s = "0f6a4a46-1a8e-4d4e-9d3e-2b1c5a7e9f00";
        let resumed = argv(&spec, None, Some(s));
        assert_eq!(
            resumed[6..],
            ["--resume", s, "--fork-session", "--allowedTools", "Read"]
        );
        assert_eq!(
            argv(&spec, Some("go on"), Some(s))[4..7],
            ["--resume", s, "--fork-session"]
        );
        spec.protocol = Protocol::None;
        assert_eq!(argv(&spec, None, None), ["--allowedTools", "Read"]);
    }
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod classify_tests;
