//! The classifier over every failure shape claude is known to print: the
//! result event, the turn's `assistant` error and `rate_limit_event`.

use serde_json::{json, Value};

use super::{classify, Failure, Line, Signal, TurnSignals};
use crate::message::failures::ErrorKind;

/// Feeds `lines` (the turn's events, then its result) through the line
/// classifier as the supervisor does, and classifies the turn.
fn turn(lines: &[Value]) -> Option<Failure> {
    let mut signals = TurnSignals::default();
    for l in lines {
        match Line::classify(l.to_string().as_bytes(), 1 << 20) {
            Line::Event(_, Some(sig)) => signals.note(sig),
            Line::Event(_, None) => {}
            Line::Result(r) => return classify(&r, &signals),
            other => panic!("unexpected line {other:?}"),
        }
    }
    panic!("no result line")
}

fn kind(lines: &[Value]) -> Option<ErrorKind> {
    turn(lines).map(|f| f.kind)
}

fn assistant(error: &str, text: &str) -> Value {
    json!({"type":"assistant","message":{"id":"m","model":"<synthetic>","role":"assistant",
        "content":[{"type":"text","text":text}],"usage":{"input_tokens":0}},
        "parent_tool_use_id":null,"session_id":"s","uuid":"u","error":error})
}

fn api_failure(text: &str, status: Value) -> Value {
    json!({"type":"result","subtype":"success","is_error":true,"api_error_status":status,
        "duration_ms":10,"num_turns":1,"result":text,"session_id":"s","total_cost_usd":0,
        "terminal_reason":"completed"})
}

fn success(text: &str) -> Value {
    json!({"type":"result","subtype":"success","is_error":false,"result":text,
        "session_id":"s","total_cost_usd":0.01,"terminal_reason":"completed"})
}

#[test]
fn a_success_is_no_failure() {
    assert_eq!(kind(&[success("4")]), None);
    // Even one that mentions limits, and after a warning about them.
    let warning = json!({"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning","resetsAt":2000000000}});
    assert_eq!(kind(&[warning, success("the rate limit is 5/s")]), None);
    // A rejected limit the CLI got past (overage) is no failure either.
    let rejected = json!({"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":2000000000}});
    assert_eq!(kind(&[rejected, success("done")]), None);
}

#[test]
fn not_logged_in_is_auth() {
    let text = "Not logged in · Please run /login";
    let lines = [
        assistant("authentication_failed", text),
        api_failure(text, Value::Null),
    ];
    assert_eq!(kind(&lines), Some(ErrorKind::Auth));
    // Each sign alone is enough.
    assert_eq!(
        kind(&[api_failure(text, Value::Null)]),
        Some(ErrorKind::Auth)
    );
    assert_eq!(
        kind(&[api_failure("API Error: 401 {}", json!(401))]),
        Some(ErrorKind::Auth)
    );
    for t in [
        "OAuth token has expired. Please obtain a new token or refresh your existing token.",
        "OAuth session expired and could not be refreshed",
        "Invalid API key · Fix external API key",
        "Credit balance is too low",
    ] {
        assert_eq!(
            kind(&[api_failure(t, Value::Null)]),
            Some(ErrorKind::Auth),
            "{t}"
        );
    }
    assert_eq!(
        kind(&[
            assistant("billing_error", "x"),
            api_failure("x", Value::Null)
        ]),
        Some(ErrorKind::Auth)
    );
}

#[test]
fn usage_limits_are_rate_limited_with_their_reset() {
    let text = "You've hit your session limit · resets 3pm (Europe/Berlin)";
    let event = json!({"type":"rate_limit_event","rate_limit_info":{"status":"rejected",
        "resetsAt":1767222000,"rateLimitType":"five_hour","overageStatus":"rejected","isUsingOverage":false},
        "uuid":"u","session_id":"s"});
    let with_event = [
        event,
        assistant("rate_limit", text),
        api_failure(text, Value::Null),
    ];
    assert_eq!(
        turn(&with_event),
        Some(Failure {
            kind: ErrorKind::RateLimited,
            resets_at: Some(1767222000)
        })
    );
    // The text alone: the reset time is only in prose, so none is known.
    assert_eq!(
        turn(&[api_failure(text, Value::Null)]),
        Some(Failure {
            kind: ErrorKind::RateLimited,
            resets_at: None
        })
    );
    // Older versions: the epoch after a bar, even without is_error.
    let old = json!({"type":"result","subtype":"success","is_error":false,
        "result":"Claude AI usage limit reached|1767222000"});
    assert_eq!(
        turn(&[old]),
        Some(Failure {
            kind: ErrorKind::RateLimited,
            resets_at: Some(1767222000)
        })
    );
    let r429 = "API Error: 429 {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\"}}";
    assert_eq!(
        kind(&[assistant("rate_limit", r429), api_failure(r429, json!(429))]),
        Some(ErrorKind::RateLimited)
    );
    assert_eq!(
        kind(&[api_failure("grace_daily_limit_reached", Value::Null)]),
        Some(ErrorKind::RateLimited)
    );
    let blocked = json!({"type":"result","subtype":"success","is_error":true,"result":"",
        "terminal_reason":"blocking_limit"});
    assert_eq!(kind(&[blocked]), Some(ErrorKind::RateLimited));
    // A usage limit worded as an API 400.
    assert_eq!(
        kind(&[api_failure(
            "API Error: 400 {\"error\":{\"message\":\"You have reached your specified API usage limits\"}}",
            json!(400)
        )]),
        Some(ErrorKind::RateLimited)
    );
}

#[test]
fn overloads_and_api_errors() {
    let o529 = "API Error: 529 {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}";
    assert_eq!(
        kind(&[
            assistant("server_error", o529),
            api_failure(o529, json!(529))
        ]),
        Some(ErrorKind::Overloaded)
    );
    // Mid-stream: is_error false, an error subtype, the cause in errors.
    let mid = json!({"type":"result","subtype":"error_during_execution","is_error":false,
        "errors":["API error: Overloaded"],"terminal_reason":"model_error"});
    assert_eq!(kind(&[mid]), Some(ErrorKind::Overloaded));
    let e500 = "API Error: 500 {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Internal server error\"}}";
    assert_eq!(
        kind(&[
            assistant("server_error", e500),
            api_failure(e500, json!(500))
        ]),
        Some(ErrorKind::ApiError)
    );
    assert_eq!(
        kind(&[api_failure("upstream went away", json!(502))]),
        Some(ErrorKind::ApiError)
    );
    assert_eq!(
        kind(&[api_failure("API Error: 408 request timed out", json!(408))]),
        Some(ErrorKind::ApiError)
    );
    // The status as a float, a string, or only in the text.
    let bad = "API Error: 400 {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"bad\"}}";
    for status in [json!(400.0), json!("400"), Value::Null] {
        assert_eq!(
            kind(&[api_failure(bad, status.clone())]),
            Some(ErrorKind::Other),
            "{status}"
        );
    }
    assert_eq!(
        kind(&[api_failure("API Error: 503 unavailable", Value::Null)]),
        Some(ErrorKind::ApiError)
    );
    // A request the API refused as it was is the task's own failure.
    let e400 = "API Error: 400 {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"image exceeds 5 MB\"}}";
    assert_eq!(
        kind(&[
            assistant("invalid_request", e400),
            api_failure(e400, json!(400))
        ]),
        Some(ErrorKind::Other)
    );
    // The CLI's own retries are progress, not failure.
    let retry = json!({"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,
        "retry_delay_ms":500,"error_status":529,"error":"overloaded"});
    assert_eq!(kind(&[retry, success("done")]), None);
}

#[test]
fn the_tasks_own_limits() {
    let turns = json!({"type":"result","subtype":"error_max_turns","is_error":true,
        "errors":["Reached maximum number of turns (3)"],"num_turns":4,"terminal_reason":"max_turns"});
    assert_eq!(kind(&[turns]), Some(ErrorKind::MaxTurns));
    let budget = json!({"type":"result","subtype":"error_max_budget_usd","is_error":true,
        "errors":["Reached maximum budget ($0.01)"]});
    assert_eq!(kind(&[budget]), Some(ErrorKind::MaxBudget));
    let long = json!({"type":"result","subtype":"success","is_error":true,
        "result":"Prompt is too long","terminal_reason":"prompt_too_long","api_error_status":400});
    assert_eq!(
        kind(&[assistant("invalid_request", "Prompt is too long"), long]),
        Some(ErrorKind::PromptTooLong)
    );
}

#[test]
fn unknown_shapes_are_other_and_never_panic() {
    let during = json!({"type":"result","subtype":"error_during_execution","is_error":true,
        "errors":["fake-claude: simulated error during execution"],"terminal_reason":"model_error"});
    assert_eq!(kind(&[during]), Some(ErrorKind::Other));
    assert_eq!(
        kind(&[json!({"type":"result","subtype":"success"})]),
        Some(ErrorKind::Other)
    );
    assert_eq!(
        kind(&[
            json!({"type":"result","subtype":"brand_new","is_error":"yes","api_error_status":"x","errors":[1,null,{}],"terminal_reason":7})
        ]),
        Some(ErrorKind::Other)
    );
    assert_eq!(
        kind(&[
            json!({"type":"result","subtype":"success","is_error":true,"api_error_status":99999})
        ]),
        Some(ErrorKind::Other)
    );
    // Signals of odd types are ignored, not trusted.
    let odd = [
        json!({"type":"assistant","error":{"nested":true}}),
        json!({"type":"rate_limit_event","rate_limit_info":"rejected"}),
        json!({"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":"soon"}}),
        json!({"type":"result","subtype":"success","is_error":true,"result":"boom"}),
    ];
    // The event with a string status is no rejection; the one with an odd
    // resetsAt is a rejection without a time.
    assert_eq!(
        turn(&odd),
        Some(Failure {
            kind: ErrorKind::RateLimited,
            resets_at: None
        })
    );
    let sig = Line::classify(
        br#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1e400}}"#,
        1000,
    );
    // A time no number holds is no time; the rejection still counts.
    assert!(matches!(
        sig,
        Line::Event(
            _,
            Some(Signal::RateLimit {
                rejected: true,
                resets_at: None
            })
        )
    ));
    let sig = Line::classify(
        br#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":[1]}}"#,
        1000,
    );
    assert!(matches!(
        sig,
        Line::Event(
            _,
            Some(Signal::RateLimit {
                rejected: true,
                resets_at: None
            })
        )
    ));
}
