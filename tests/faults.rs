//! Agents that misbehave in ways no sound agent does (the fake's fault
//! directives): every task still gets exactly its own answer, promptly,
//! and a completed, paid-for result always reaches its sender.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{fake_agent, json_lines, Daemon, TempDir};

const T: Duration = Duration::from_secs(20);

fn daemon(name: &str, agents: Value) -> Daemon {
    let d = Daemon::start(TempDir::new(name), &json!({ "agents": agents }));
    d.wait_for("initializing -> idle", T);
    d
}

/// `send --wait` of `prompt` to `agent`: (exit code, the result payload).
fn ask(d: &Daemon, agent: &str, prompt: &str) -> (i32, Value, String) {
    let (status, out, err) = d.cli(&[
        "send",
        "--to",
        agent,
        "--wait",
        "--timeout",
        "10000",
        prompt,
    ]);
    let payload = json_lines(&out)
        .into_iter()
        .last()
        .map(|e| e["payload"].clone())
        .unwrap_or(Value::Null);
    (status.code().unwrap_or(-1), payload, err)
}

#[test]
fn a_deeply_nested_progress_event_is_passed_through_not_parsed() {
    let d = daemon("nest", json!([fake_agent("a", json!({}))]));
    let (code, result, err) = ask(&d, "a", "go deep [[fake:nest=300]]");
    assert_eq!(code, 0, "{err}");
    assert_eq!(result["status"], "completed", "{result}");
    // --stream prints the deep event as it came.
    let (status, out, err) = d.cli(&["send", "--to", "a", "--stream", "again [[fake:nest=300]]"]);
    assert!(status.success(), "{err}");
    let deep = out
        .lines()
        .find(|l| l.contains("\"Deep\""))
        .expect("the deep event");
    assert!(deep.matches("{\"a\":").count() >= 300, "{deep}");
}
