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

/// A daemon whose stderr nobody reads (`run 2>&1 | less` paused, a stalled
/// log shipper) keeps working: its log lines are dropped and counted, never
/// waited for.
#[test]
fn a_daemon_whose_stderr_is_not_read_keeps_serving() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let dir = TempDir::new("stderr");
    let config = dir.config(&json!({"agents": [fake_agent("a", json!({}))]}));
    let sock = dir.join("ms.sock");
    let s = sock.to_str().unwrap();
    let mut daemon = Command::new(crate::support::BIN)
        .args(["--config", config.to_str().unwrap(), "--socket", s, "run"])
        .env("MISTER_SMITH_LOG", "debug")
        .env("XDG_RUNTIME_DIR", dir.path())
        .env_remove("NATS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon");
    // Read until the agent is ready, then held and not read (until the
    // end): the pipe fills after ~64 KB.
    let mut stderr = std::io::BufReader::new(daemon.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("agent a: initializing -> idle") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).expect("read stderr");
        assert!(n > 0, "the daemon ended before its agent was ready");
    }
    let prompts: String = (0..5000).map(|n| format!("task {n}\n")).collect();
    let (status, out, err) = crate::support::run_cli_stdin(
        &["--socket", s, "send", "--to", "a", "--lines", "--wait"],
        &[],
        Some(&prompts),
    );
    assert!(status.success(), "{err}");
    let done = json_lines(&out)
        .iter()
        .filter(|e| e["payload"]["status"] == "completed")
        .count();
    assert_eq!(done, 5000);
    let (status, _, err) = crate::support::run_cli(&["--socket", s, "status"], &[]);
    assert!(status.success(), "{err}");
    crate::support::kill(daemon.id(), libc::SIGTERM);
    let mut log = String::new();
    let _ = stderr.read_to_string(&mut log);
    let exit = daemon.wait().expect("daemon exits");
    assert!(exit.success(), "{exit}");
    assert!(
        log.contains("log lines dropped"),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
}
