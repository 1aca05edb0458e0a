//! Conversations: `send --session ID` continues a claude session, on a
//! one-shot agent (`--resume`) and on stream-json agents (the one holding
//! the session takes it; another restarts with `--resume` first); two tasks
//! of one session never run at once; an unknown session is a failed task
//! with claude's own words.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crossbeam_channel::Receiver;
use serde_json::{json, Value};

use crate::support::{fake_agent, json_lines, records, Daemon, TempDir, BIN};

const T: Duration = Duration::from_secs(20);

/// A session id no claude has seen.
const UNKNOWN: &str = "0b5a7c55-0000-4000-8000-00000000abcd";

/// `send --wait ARGS`: its exit code and the task_result's payload.
fn send(d: &Daemon, args: &[&str]) -> (Option<i32>, Value, String) {
    let mut full = vec!["send", "--wait"];
    full.extend_from_slice(args);
    let (st, out, err) = d.cli(&full);
    let payload = json_lines(&out)
        .pop()
        .map_or(Value::Null, |e| e["payload"].clone());
    (st.code(), payload, err)
}

/// `send --wait ARGS`, which must complete: its task_result's payload.
fn ok(d: &Daemon, args: &[&str]) -> Value {
    let (code, p, err) = send(d, args);
    assert_eq!(code, Some(0), "{p}{err}");
    p
}

fn sid(p: &Value) -> String {
    p["session_id"].as_str().expect("a session id").to_string()
}

/// Agents that keep their sessions in `dir/state`, as claude keeps them
/// under its config dir, and record what they do.
fn agent(dir: &TempDir, id: &str, protocol: &str) -> Value {
    let mut a = fake_agent(
        id,
        json!({"FAKE_CLAUDE_STATE_DIR": dir.join("state"),
               "FAKE_CLAUDE_RECORD": dir.join(&format!("{id}.jsonl"))}),
    );
    a["protocol"] = json!(protocol);
    a
}

/// The pids of `id`'s processes, from its record.
fn starts(dir: &TempDir, id: &str) -> Vec<u64> {
    records(&dir.join(&format!("{id}.jsonl")))
        .iter()
        .filter(|r| r["event"] == "start")
        .filter_map(|r| r["pid"].as_u64())
        .collect()
}

/// A daemon with stream-json agents c-1 and c-2, both idle.
fn two_stream_json_agents(name: &str) -> (std::sync::Arc<TempDir>, Daemon) {
    let dir = std::sync::Arc::new(TempDir::new(name));
    let d = Daemon::start(
        dir.clone(),
        &json!({"agents": [agent(&dir, "c-1", "stream-json"), agent(&dir, "c-2", "stream-json")]}),
    );
    d.wait_ready();
    for id in ["c-1", "c-2"] {
        d.wait_seen(&format!("agent {id}: initializing -> idle"), T);
    }
    (dir, d)
}

#[test]
fn a_one_shot_agent_continues_a_session_with_resume() {
    let dir = std::sync::Arc::new(TempDir::new("conv-oneshot"));
    let d = Daemon::start(
        dir.clone(),
        &json!({"agents": [agent(&dir, "o", "oneshot")]}),
    );
    d.wait_ready();
    let first = ok(&d, &["--to", "o", "remember 42"]);
    let s1 = sid(&first);
    // In capitals, as some tools print UUIDs: still claude's session.
    let upper = s1.to_uppercase();
    let second = ok(&d, &["--to", "o", "--session", &upper, "what did I ask?"]);
    assert_eq!(second["result"], "you asked: remember 42", "{second}");
    // Resuming forks: the result names the session to continue next.
    let s2 = sid(&second);
    assert_ne!(s2, s1);
    let third = ok(&d, &["--to", "o", "--session", &s2, "what did I ask?"]);
    assert_eq!(third["result"], "you asked: what did I ask?", "{third}");
    let argv = records(&dir.join("o.jsonl"))
        .into_iter()
        .filter(|r| r["event"] == "start")
        .nth(1)
        .expect("a second process")["argv"]
        .clone();
    let argv: Vec<&str> = argv
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        argv.windows(3)
            .any(|w| w == ["--resume", s1.as_str(), "--fork-session"]),
        "{argv:?}"
    );
    // An unknown session: failed at once, with claude's own words, and
    // not retried.
    let (code, p, _) = send(&d, &["--to", "o", "--session", UNKNOWN, "hi"]);
    assert_eq!(code, Some(1), "{p}");
    assert_eq!(
        (&p["status"], &p["error_kind"]),
        (&json!("failed"), &json!("other"))
    );
    let errors = p["errors"].to_string();
    assert!(
        errors.contains(&format!("No conversation found with session ID: {UNKNOWN}")),
        "{p}"
    );
    assert_eq!(p["attempts"], 1, "{p}");
    // A flag and a body that disagree: refused, nothing sent.
    let body = format!(r#"{{"prompt":"p","session_id":"{s1}"}}"#);
    let (st, _, err) = d.cli(&["send", "--to", "o", "--session", UNKNOWN, &body]);
    assert_eq!(st.code(), Some(65), "{err}");
    assert!(err.contains("disagree"), "{err}");
}

#[test]
fn stream_json_agents_continue_a_session_in_place_or_after_a_resume() {
    let (dir, d) = two_stream_json_agents("conv-stream");
    let s1 = sid(&ok(&d, &["--to", "c-1", "remember 42"]));
    // c-2 is not in that session: it restarts with --resume first, and
    // answers from the earlier turn.
    let p = ok(&d, &["--to", "c-2", "--session", &s1, "what did I ask?"]);
    assert_eq!(p["result"], "you asked: remember 42", "{p}");
    d.wait_seen(
        &format!("continues session {s1}: restarting it with --resume"),
        T,
    );
    let s2 = sid(&p);
    assert_ne!(s2, s1, "a resume forks");
    assert_eq!(starts(&dir, "c-2").len(), 2);
    // Now c-2 holds s2: a task of s2 for any agent goes to it, in the
    // same process.
    let p = ok(
        &d,
        &[
            "--agent-type",
            "claude",
            "--session",
            &s2,
            "what did I ask?",
        ],
    );
    assert_eq!(
        (&p["agent_id"], &p["result"]),
        (&json!("c-2"), &json!("you asked: what did I ask?")),
        "{p}"
    );
    assert_eq!(sid(&p), s2);
    assert_eq!(starts(&dir, "c-2").len(), 2, "no restart for the holder");
    // An unknown session: the task fails with claude's words; the agent
    // starts again, fresh, and is not counted as restarted.
    let (code, p, _) = send(&d, &["--to", "c-1", "--session", UNKNOWN, "hi"]);
    assert_eq!((code, &p["error_kind"]), (Some(1), &json!("other")), "{p}");
    assert!(
        p["errors"]
            .to_string()
            .contains(&format!("No conversation found with session ID: {UNKNOWN}")),
        "{p}"
    );
    let p = ok(&d, &["--to", "c-1", "hello again"]);
    assert_eq!(p["status"], "completed");
    let (_, out, _) = d.cli(&["status", "--json"]);
    let agents: Vec<Value> = serde_json::from_str(&out).expect("status --json");
    assert!(agents.iter().all(|a| a["restarts"] == 0), "{out}");
    let c2 = agents.iter().find(|a| a["agent_id"] == "c-2").expect("c-2");
    assert_eq!(c2["session"]["session_id"], json!(s2), "{out}");
}

/// Reads the stdout lines of a `send --stream` as they come.
fn stream(d: &Daemon, args: &[&str]) -> Receiver<Value> {
    let mut child = Command::new(BIN)
        .arg("--socket")
        .arg(d.socket())
        .args(["send", "--stream"])
        .args(args)
        .env_remove("NATS_URL")
        .env_remove("MISTER_SMITH_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mister-smith");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
        let _ = child.wait();
    });
    rx
}

/// The next envelope from `rx` for which `pred` holds.
fn next(rx: &Receiver<Value>, pred: impl Fn(&Value) -> bool) -> Value {
    loop {
        match rx.recv_timeout(T) {
            Ok(v) if pred(&v) => return v,
            Ok(_) => {}
            Err(_) => panic!("no such envelope within {T:?}"),
        }
    }
}

fn is_result(v: &Value) -> bool {
    v["message_type"] == "task_result"
}

#[test]
fn two_tasks_of_one_session_sent_at_once_run_one_after_the_other() {
    let (dir, d) = two_stream_json_agents("conv-affinity");
    let s = sid(&ok(&d, &["--to", "c-1", "remember 42"]));
    let gate = dir.join("gate");
    std::fs::write(&gate, "").expect("gate");
    let first_prompt = format!("[[fake:gate={}]] first", gate.display());
    let first = stream(
        &d,
        &["--agent-type", "claude", "--session", &s, &first_prompt],
    );
    // Its turn has begun, and waits at the gate.
    next(&first, |v| v["payload"]["event"]["type"] == "assistant");
    // The second is queued, with an agent (c-2) idle: it waits for the
    // first, not for an agent.
    let second = stream(
        &d,
        &["--agent-type", "claude", "--session", &s, "what did I ask?"],
    );
    let queued = next(&second, |v| v["payload"]["event"]["subtype"] == "queued");
    assert_eq!(queued["payload"]["event"]["position"], 1, "{queued}");
    std::fs::remove_file(&gate).expect("open the gate");
    let r1 = next(&first, is_result);
    let r2 = next(&second, is_result);
    assert_eq!(r1["payload"]["status"], "completed", "{r1}");
    // The second ran after the first, in the session the first left: the
    // agent holding it took it, without a restart.
    let p2 = &r2["payload"];
    assert_eq!(
        p2["result"],
        json!(format!("you asked: {first_prompt}")),
        "{r2}"
    );
    assert_eq!(p2["agent_id"], "c-1", "{r2}");
    assert_eq!(starts(&dir, "c-1").len(), 1);
    assert_eq!(starts(&dir, "c-2").len(), 1, "c-2 was never restarted");
    let order: Vec<String> = records(&dir.join("c-1.jsonl"))
        .iter()
        .filter(|r| r["event"] == "task_start" || r["event"] == "result")
        .map(|r| format!("{} {}", r["event"].as_str().unwrap_or("?"), r["n"]))
        .collect();
    assert_eq!(
        order,
        [
            "task_start 1",
            "result 1",
            "task_start 2",
            "result 2",
            "task_start 3",
            "result 3"
        ]
    );
    // A task naming no session runs in the session of the process that
    // takes it: a task of that session waits for it too, rather than
    // another agent forking the conversation mid-turn.
    std::fs::write(&gate, "").expect("gate");
    let plain_prompt = format!("[[fake:gate={}]] plain", gate.display());
    let plain = stream(&d, &["--to", "c-1", &plain_prompt]);
    next(&plain, |v| v["payload"]["event"]["type"] == "assistant");
    let follow = stream(
        &d,
        &["--agent-type", "claude", "--session", &s, "what did I ask?"],
    );
    let queued = next(&follow, |v| v["payload"]["event"]["subtype"] == "queued");
    assert_eq!(queued["payload"]["event"]["position"], 1, "{queued}");
    std::fs::remove_file(&gate).expect("open the gate");
    let r = next(&plain, is_result);
    assert_eq!(r["payload"]["session_id"], json!(s), "{r}");
    let r = next(&follow, is_result);
    assert_eq!(
        (&r["payload"]["agent_id"], &r["payload"]["result"]),
        (&json!("c-1"), &json!(format!("you asked: {plain_prompt}"))),
        "{r}"
    );
    assert_eq!(starts(&dir, "c-2").len(), 1, "c-2 was never restarted");
}

/// The real `claude`, offline: a session it does not know fails the task
/// with its own words, on a one-shot agent and on a stream-json one (which
/// then starts again, fresh, and is ready for the next task).
#[test]
fn the_real_claude_refuses_an_unknown_session_and_the_task_fails_with_its_words() {
    let Some(claude) = crate::support::real_claude() else {
        eprintln!(
            "SKIPPED: the real claude is not installed and `npm install @anthropic-ai/claude-code` failed (no npm or no registry)"
        );
        return;
    };
    let dir = std::sync::Arc::new(TempDir::new("conv-real"));
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("home");
    let agent = |id: &str, protocol: &str| {
        json!({"id": id, "command": claude, "protocol": protocol,
               "env": {"HOME": home, "CLAUDE_CONFIG_DIR": home.join(".claude")},
               "restart": {"policy": "always", "initial_delay_ms": 0}})
    };
    let d = Daemon::start(
        dir.clone(),
        &json!({"agents": [agent("real-o", "oneshot"), agent("real-s", "stream-json")]}),
    );
    d.wait_ready();
    d.wait_seen("agent real-s: initializing -> idle", T);
    let words = format!("No conversation found with session ID: {UNKNOWN}");
    for id in ["real-o", "real-s"] {
        let (code, p, err) = send(&d, &["--to", id, "--session", UNKNOWN, "hi"]);
        assert_eq!(code, Some(1), "{id}: {p}{err}");
        assert_eq!(
            (&p["status"], &p["error_kind"], &p["attempts"]),
            (&json!("failed"), &json!("other"), &json!(1)),
            "{id}: {p}"
        );
        assert!(p["errors"].to_string().contains(&words), "{id}: {p}");
    }
    // The stream-json agent is back, fresh, and not counted as restarted.
    d.wait_for("claude knew no such session; starting it again", T);
    d.wait_for("agent real-s: initializing -> idle", T);
    let (_, out, _) = d.cli(&["status", "--json", "real-s"]);
    assert!(out.contains("\"restarts\":0"), "{out}");
}
