//! Sessions: a stream-json agent recycled into a fresh claude session by
//! its `recycle` thresholds, and the fake claude's sessions.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{fake_agent, json_lines, records, Daemon, TempDir};

const T: Duration = Duration::from_secs(20);

fn send(d: &Daemon, args: &[&str]) -> Value {
    let mut full = vec!["send", "--wait"];
    full.extend_from_slice(args);
    let (st, out, err) = d.cli(&full);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    json_lines(&out).remove(0)["payload"].clone()
}

#[test]
fn after_tasks_one_gives_each_task_a_fresh_session_and_process() {
    let dir = std::sync::Arc::new(TempDir::new("recycle-tasks"));
    let record = dir.join("record.jsonl");
    let mut a = fake_agent("solo", json!({"FAKE_CLAUDE_RECORD": record}));
    a["recycle"] = json!({"after_tasks": 1});
    let d = Daemon::start(dir.clone(), &json!({"agents": [a]}));
    d.wait_ready();
    d.wait_seen("agent solo: initializing -> idle", T);
    let results: Vec<Value> = (0..3)
        .map(|n| send(&d, &["--to", "solo", &format!("task {n}")]))
        .collect();
    let sessions: std::collections::BTreeSet<&str> = results
        .iter()
        .map(|r| r["session_id"].as_str().expect("a session id"))
        .collect();
    assert_eq!(sessions.len(), 3, "{results:?}");
    // One agent, so its processes follow one another in the record: the
    // pid of each task is that of the last start before it.
    let mut pid = None;
    let mut ran_in = Vec::new();
    for r in records(&record) {
        match r["event"].as_str() {
            Some("start") => pid = r["pid"].as_u64(),
            Some("task_start") => ran_in.push(pid.expect("a start before a task")),
            _ => {}
        }
    }
    ran_in.dedup();
    assert_eq!(ran_in.len(), 3, "{ran_in:?}");
    d.wait_for_n("agent solo: recycled after 1 tasks", 3, T);
    // A recycle is not a restart.
    let (_, out, _) = d.cli(&["status", "--json"]);
    let agents: Vec<Value> = serde_json::from_str(&out).expect("status --json");
    assert_eq!(agents[0]["restarts"], 0, "{out}");
}

#[test]
fn a_task_sent_right_after_a_result_is_not_kept_waiting_by_the_recycle() {
    let dir = std::sync::Arc::new(TempDir::new("recycle-busy"));
    let agent = |id: &str| {
        let mut a = fake_agent(id, json!({}));
        a["recycle"] = json!({"after_tasks": 1});
        a
    };
    let ids = ["r-1", "r-2", "r-3"];
    let d = Daemon::start(
        dir,
        &json!({"agents": ids.iter().map(|id| agent(id)).collect::<Vec<_>>()}),
    );
    d.wait_ready();
    for id in ids {
        d.wait_seen(&format!("agent {id}: initializing -> idle"), T);
    }
    let results: Vec<Value> = (0..3)
        .map(|n| send(&d, &["--agent-type", "claude", &format!("task {n}")]))
        .collect();
    // Each went to an idle agent, not to the one being recycled (idle
    // agents are lent in the order they became idle, so three tasks in a
    // row meet three agents).
    let ran_on: std::collections::BTreeSet<&str> = results
        .iter()
        .map(|r| r["agent_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ran_on.len(), 3, "{results:?}");
}

#[test]
fn after_input_tokens_recycles_once_the_threshold_is_crossed_not_before() {
    let dir = std::sync::Arc::new(TempDir::new("recycle-tokens"));
    let mut a = fake_agent("t", json!({"FAKE_CLAUDE_TURNS": "1"}));
    a["recycle"] = json!({"after_input_tokens": 3000});
    let d = Daemon::start(dir, &json!({"agents": [a]}));
    d.wait_ready();
    d.wait_seen("agent t: initializing -> idle", T);
    let mut total = 0u64;
    let mut first = None;
    let mut crossed_at = None;
    for n in 0..6 {
        let r = send(&d, &["--to", "t", &format!("question {n}")]);
        let sid = r["session_id"].as_str().expect("a session id").to_string();
        match crossed_at {
            None => {
                // Still the first session until the threshold is crossed.
                assert_eq!(first.get_or_insert_with(|| sid.clone()), &sid, "task {n}");
                let u = &r["usage"];
                total += [
                    "input_tokens",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                ]
                .iter()
                .map(|k| u[k].as_u64().unwrap_or(0))
                .sum::<u64>();
                if total >= 3000 {
                    crossed_at = Some(n);
                    d.wait_seen("agent t: recycled after", T);
                }
            }
            Some(_) => {
                assert_ne!(first.as_deref(), Some(sid.as_str()), "task {n}");
                break;
            }
        }
    }
    let at = crossed_at.expect("the threshold was crossed within 6 tasks");
    assert!(at >= 1, "the fake's tokens should take more than one task");
    let line = d.wait_seen("agent t: recycled after", T);
    assert!(
        line.contains(&format!(
            "recycled after {} tasks and {total} input tokens",
            at + 1
        )),
        "{line}"
    );
    let (_, out, _) = d.cli(&["status", "--json"]);
    let agents: Vec<Value> = serde_json::from_str(&out).expect("status --json");
    assert_eq!(agents[0]["session"]["tasks"], 1, "{out}");
}

/// The fake `claude` keeps sessions as the real one does: `--resume`
/// restores a session's turns under a new id, and an unknown id fails with
/// claude's own words.
#[test]
fn the_fake_claude_resumes_sessions_like_the_real_one() {
    let dir = TempDir::new("fake-sessions");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(crate::support::fake_claude())
            .args(["-p", "--output-format", "json"])
            .args(args)
            .current_dir(dir.path())
            .env("FAKE_CLAUDE_STATE_DIR", dir.join("state"))
            .env_remove("CLAUDECODE")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the fake");
        let result: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (
            out.status.code(),
            result,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, first, err) = run(&["remember 42"]);
    assert_eq!(code, Some(0), "{err}");
    let sid = first["session_id"]
        .as_str()
        .expect("a session id")
        .to_string();
    let (code, second, err) = run(&["--resume", &sid, "what did I ask?"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(second["result"], "you asked: remember 42");
    let forked = second["session_id"].as_str().expect("a session id");
    assert_ne!(forked, sid);
    // The fork carries the whole conversation on.
    let (_, third, _) = run(&["--resume", forked, "what did I ask?"]);
    assert_eq!(third["result"], "you asked: what did I ask?");
    let unknown = "0b5a7c55-0000-4000-8000-000000000000";
    let (code, _, err) = run(&["--resume", unknown, "hi"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        format!("No conversation found with session ID: {unknown}")
    );
}
