//! Claude's failures and account holds, end to end: the daemon classifies
//! each failed task, holds the account its agents share (logged out, at a
//! usage limit, overloaded, over its daily budget), keeps the queue until
//! the hold ends, retries transient failures, and `health`, `status` and
//! `send`'s exit codes say so. The agents are the fake claude, which prints
//! the real CLI's failure shapes; one test runs the real `claude` offline.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::*;

/// A command running in the background; [`Background::finish`] collects it
/// (bounded).
struct Background {
    rx: crossbeam_channel::Receiver<std::io::Result<std::process::Output>>,
    pid: u32,
}

fn spawn_cli(socket: &Path, args: &[&str]) -> Background {
    let child = Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("NATS_URL")
        .env_remove("MISTER_SMITH_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mister-smith");
    let pid = child.id();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    Background { rx, pid }
}

impl Background {
    fn finish(self, within: Duration) -> (ExitStatus, String, String) {
        match self.rx.recv_timeout(within) {
            Ok(Ok(o)) => (
                o.status,
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ),
            _ => {
                kill(self.pid, libc::SIGKILL);
                panic!("the command did not finish within {within:?}");
            }
        }
    }
}

fn epoch_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The results among `out`'s lines, by task id order of arrival.
fn results(out: &str) -> Vec<Value> {
    json_lines(out)
        .into_iter()
        .filter(|v| v["message_type"] == "task_result")
        .map(|v| v["payload"].clone())
        .collect()
}

/// How many tasks the fake recorded starting.
fn starts(record: &Path) -> usize {
    records(record)
        .iter()
        .filter(|r| r["event"] == "task_start")
        .count()
}

/// The position of the first log line containing `needle`.
fn at(log: &[String], needle: &str) -> usize {
    log.iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no log line {needle:?} in:\n{}", log.join("\n")))
}

#[test]
fn a_usage_limit_holds_the_account_until_its_reset_and_loses_no_task() {
    let dir = TempDir::new("acct-limit");
    // One of the two agents sharing the account is at a usage limit that
    // resets in 3 s (claude says so in a rate_limit_event).
    let reset = epoch_s() + 3;
    let limited = fake_agent(
        "lim-1",
        json!({"FAKE_CLAUDE_LIMITED_UNTIL": reset.to_string(),
               "FAKE_CLAUDE_LINE_DELAY_MS": "20"}),
    );
    let other = fake_agent("lim-2", json!({"FAKE_CLAUDE_LINE_DELAY_MS": "20"}));
    let d = Daemon::start(
        dir,
        &json!({"daemon_id": "acct", "agents": [limited, other]}),
    );
    d.wait_ready();
    let body: String = (1..=20).map(|n| format!("task {n}\n")).collect();
    std::fs::write(d.dir.join("tasks.txt"), &body).unwrap();
    let sender = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" --socket \"$1\" send --agent-type claude --lines --wait --timeout 60000 < \"$2\"")
        .arg(BIN)
        .arg(d.socket())
        .arg(d.dir.join("tasks.txt"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn send");
    let pid = sender.id();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(sender.wait_with_output());
    });

    d.wait_for(
        "ALERT account default held (rate_limited)",
        Duration::from_secs(20),
    );
    // While held: WARNING naming the account and the reset time, and the
    // hold in status --json.
    let (st, out, _) = d.cli(&["health"]);
    assert_eq!(st.code(), Some(1), "{out}");
    assert!(
        out.contains("account default held (rate_limited) until"),
        "{out}"
    );
    let (_, out, _) = d.cli(&["status", "--json"]);
    let agents: Value = serde_json::from_str(out.trim()).unwrap();
    let acct = &agents[0]["account"];
    assert_eq!(acct["name"], "default", "{out}");
    assert_eq!(acct["reason"], "rate_limited", "{out}");
    assert!(
        acct["state"] == "held" || acct["state"] == "half_open",
        "{out}"
    );

    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(o)) => o,
        _ => {
            kill(pid, libc::SIGKILL);
            panic!("send did not finish");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = results(&stdout);
    assert_eq!(done.len(), 20, "{stdout}");
    assert!(done.iter().all(|r| r["status"] == "completed"), "{stdout}");

    // Nothing started on the account between the hold and its end, and
    // one probe opened it.
    let log = d.log();
    let held = at(&log, "ALERT account default held");
    let over = at(&log, "account default: hold over");
    assert!(
        log[held..over]
            .iter()
            .all(|l| !l.contains(" started (priority")),
        "a task started while the account was held:\n{}",
        log[held..over].join("\n")
    );
    let recovered = at(&log, "account default works again");
    assert!(recovered > over);
    // The reset came from claude, 3 s ahead, not the 30 s default backoff.
    let (_, out, _) = d.cli(&["health"]);
    assert!(out.starts_with("MISTER-SMITH OK"), "{out}");
    d.stop();
}

/// A not-logged-in agent: its account is held for `auth` until an
/// operator lifts it.
fn logged_out(dir: &TempDir, id: &str, account: &str) -> (Value, PathBuf, PathBuf) {
    let creds = dir.join(&format!("{id}.creds"));
    let record = dir.join(&format!("{id}.record"));
    let mut a = fake_agent(
        id,
        json!({"FAKE_CLAUDE_CREDENTIALS": creds, "FAKE_CLAUDE_RECORD": record}),
    );
    a["account"] = json!(account);
    (a, creds, record)
}

#[test]
fn not_logged_in_holds_the_account_until_resumed() {
    let dir = TempDir::new("acct-auth");
    let (agent, creds, record) = logged_out(&dir, "auth-1", "team");
    let d = Daemon::start(
        dir,
        &json!({"daemon_id": "acct",
                "accounts": {"team": {"hold_initial_ms": 600000}},
                "agents": [agent]}),
    );
    d.wait_ready();
    let first = spawn_cli(
        &d.socket(),
        &[
            "send",
            "--to",
            "auth-1",
            "--wait",
            "--timeout",
            "30000",
            "first",
        ],
    );
    d.wait_for("ALERT account team held (auth)", Duration::from_secs(20));
    let (st, out, _) = d.cli(&["health"]);
    assert_eq!(st.code(), Some(2), "{out}");
    assert!(out.contains("account team held (auth) until"), "{out}");
    // A task that times out behind the hold says why: exit 78, auth.
    let (st, out, err) = d.cli(&[
        "send",
        "--to",
        "auth-1",
        "--wait",
        "--timeout",
        "500",
        "late",
    ]);
    assert_eq!(st.code(), Some(78), "{out}{err}");
    let r = &results(&out)[0];
    assert_eq!(
        (r["status"].as_str(), r["error_kind"].as_str()),
        (Some("timeout"), Some("auth"))
    );
    assert_eq!(
        starts(&record),
        1,
        "no task may start while the account is held"
    );

    // Log in, lift the hold: the first task runs again and completes.
    std::fs::write(&creds, "token").unwrap();
    let (st, out, err) = d.cli(&["resume", "--account", "team"]);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(out.contains("account team: hold lifted"), "{out}");
    let (st, out, err) = first.finish(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "{out}{err}");
    let r = &results(&out)[0];
    assert_eq!(r["status"], "completed", "{out}");
    assert_eq!(r["attempts"], 2, "{out}");
    let (st, out, _) = d.cli(&["health"]);
    assert_eq!(st.code(), Some(0), "{out}");
    // An unknown account is 69; an agent id and --account together, 64.
    let (st, _, err) = d.cli(&["resume", "--account", "nobody"]);
    assert_eq!(st.code(), Some(69), "{err}");
    let (st, _, err) = d.cli(&["resume", "auth-1", "--account", "team"]);
    assert_eq!(st.code(), Some(64), "{err}");
    d.stop();
}

#[test]
fn a_hold_on_one_account_does_not_slow_another_over_nats() {
    let nats = NatsServer::start();
    let dir = TempDir::new("acct-two");
    let (a, _creds, a_record) = logged_out(&dir, "out-1", "a");
    let b_record = dir.join("b.record");
    let mut b = fake_agent("in-1", json!({"FAKE_CLAUDE_RECORD": b_record}));
    b["account"] = json!("b");
    let d = Daemon::start(
        dir,
        &json!({"daemon_id": "acct-two",
                "transport": {"nats_url": nats.url()},
                "accounts": {"a": {"hold_initial_ms": 600000}},
                "agents": [a, b]}),
    );
    d.wait_ready();
    d.wait_seen("NATS connected", Duration::from_secs(20));
    let url = nats.url();
    let nats_cli = |args: &[&str]| {
        let mut full = vec!["--nats", url.as_str()];
        full.extend_from_slice(args);
        run_cli(&full, &[])
    };
    let body: String = (1..=6).map(|n| format!("job {n}\n")).collect();
    std::fs::write(d.dir.join("jobs"), body).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" --nats \"$1\" send --agent-type claude --lines --wait --timeout 20000 < \"$2\"")
        .arg(BIN)
        .arg(&url)
        .arg(d.dir.join("jobs"))
        .output()
        .expect("send");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = results(&stdout);
    assert_eq!(done.len(), 6);
    assert!(
        done.iter()
            .all(|r| r["status"] == "completed" && r["agent_id"] == "in-1"),
        "{stdout}"
    );
    assert!(
        starts(&a_record) <= 1,
        "the held account took more than its first task"
    );
    assert_eq!(starts(&b_record), 6);
    let (st, out, _) = nats_cli(&["health"]);
    assert_eq!(st.code(), Some(2), "{out}");
    assert!(
        out.contains("account a held (auth)") || starts(&a_record) == 0,
        "{out}"
    );
    // resume --account over NATS reaches the daemon that has it.
    let (st, out, err) = nats_cli(&["resume", "--account", "b"]);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(out.contains("acct-two: account b was not held"), "{out}");
    d.stop();
}

#[test]
fn overloads_hold_the_account_and_retries_recover_a_task() {
    let dir = TempDir::new("acct-overload");
    let counter = dir.join("counter");
    // Always 529 on one account; the first task only on the other.
    let mut busy = fake_agent("ovl-1", json!({"FAKE_CLAUDE_RESULT": "overloaded"}));
    busy["account"] = json!("busy");
    let mut flaky = fake_agent(
        "flaky-1",
        json!({"FAKE_CLAUDE_FAIL_FIRST": "1", "FAKE_CLAUDE_FAIL_AS": "overloaded",
               "FAKE_CLAUDE_COUNTER": counter}),
    );
    flaky["account"] = json!("flaky");
    let d = Daemon::start(
        dir,
        &json!({"daemon_id": "acct",
                "message": {"retry_attempts": 0, "retry_delay_ms": 50},
                "accounts": {"busy": {"hold_initial_ms": 600000, "overload_threshold": 3}},
                "agents": [busy, flaky]}),
    );
    d.wait_ready();
    for n in 1..=3 {
        let (st, out, err) = d.cli(&["send", "--to", "ovl-1", "--wait", "--timeout", "20000", "x"]);
        assert_eq!(st.code(), Some(75), "task {n}: {out}{err}");
        let r = &results(&out)[0];
        assert_eq!(r["error_kind"], "overloaded", "{out}");
        assert_eq!(r["attempts"], 1, "{out}");
    }
    d.wait_seen(
        "ALERT account busy held (overloaded)",
        Duration::from_secs(10),
    );
    let (st, out, _) = d.cli(&["health"]);
    assert_eq!(st.code(), Some(1), "{out}");
    assert!(out.contains("account busy held (overloaded)"), "{out}");

    // Overloaded once, then fine: with two retries it completes, same id.
    let (st, out, err) = d.cli(&[
        "send",
        "--to",
        "flaky-1",
        "--wait",
        "--stream",
        "--retries",
        "2",
        "--timeout",
        "20000",
        r#"{"task_id":"flaky-task","prompt":"try"}"#,
    ]);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    let lines = json_lines(&out);
    assert!(
        lines
            .iter()
            .any(|l| l["payload"]["event"]["subtype"] == "retrying"),
        "{out}"
    );
    let r = &results(&out)[0];
    assert_eq!(r["status"], "completed", "{out}");
    assert_eq!(r["attempts"], 2, "{out}");
    assert_eq!(r["task_id"], "flaky-task", "{out}");
    // Retries stop at the budget: a max_turns failure is never retried.
    let (st, out, _) = d.cli(&[
        "send",
        "--to",
        "flaky-1",
        "--wait",
        "--retries",
        "3",
        "[[fake:result=max_turns]]",
    ]);
    assert_eq!(st.code(), Some(1), "{out}");
    let r = &results(&out)[0];
    assert_eq!(
        (r["error_kind"].as_str(), r["attempts"].as_u64()),
        (Some("max_turns"), Some(1))
    );
    d.stop();
}

#[test]
fn a_daily_budget_holds_the_account_and_its_spend_survives_a_restart() {
    let dir = std::sync::Arc::new(TempDir::new("acct-budget"));
    let agent = fake_agent("spend-1", json!({"FAKE_CLAUDE_COST": "0.004"}));
    let config = json!({"daemon_id": "acct-budget",
        "accounts": {"default": {"daily_budget_usd": 0.01}},
        "agents": [agent]});
    let d = Daemon::start(dir.clone(), &config);
    d.wait_ready();
    for n in 1..=3 {
        let (st, out, err) = d.cli(&[
            "send",
            "--to",
            "spend-1",
            "--wait",
            "--timeout",
            "20000",
            "work",
        ]);
        assert_eq!(st.code(), Some(0), "task {n}: {out}{err}");
    }
    d.wait_seen(
        "ALERT account default held (budget_exhausted)",
        Duration::from_secs(10),
    );
    let (st, out, err) = d.cli(&[
        "send",
        "--to",
        "spend-1",
        "--wait",
        "--timeout",
        "300",
        "more",
    ]);
    assert_eq!(st.code(), Some(75), "{out}{err}");
    assert_eq!(results(&out)[0]["error_kind"], "budget_exhausted", "{out}");
    let spent = |d: &Daemon| {
        let (_, out, _) = d.cli(&["status", "--json"]);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        (
            v[0]["account"]["spent_today_usd"].as_f64().unwrap_or(-1.0),
            v[0]["account"]["state"].as_str().unwrap_or("").to_string(),
        )
    };
    let (before, state) = spent(&d);
    assert!((before - 0.012).abs() < 1e-9, "{before}");
    assert_eq!(state, "held");
    let (_, out, _) = d.cli(&["status"]);
    assert!(
        out.contains("budget_exhausted") && out.contains("$0.0120"),
        "{out}"
    );
    d.stop();

    let d = Daemon::start(dir, &config);
    d.wait_ready();
    let (after, state) = spent(&d);
    assert!(
        (after - 0.012).abs() < 1e-9,
        "the spend was reset by a restart: {after}"
    );
    assert_eq!(state, "held");
    let (st, out, _) = d.cli(&["health"]);
    assert_eq!(st.code(), Some(1), "{out}");
    d.stop();
}

#[test]
fn the_real_claude_logged_out_holds_its_account_and_health_is_critical() {
    let Some(claude) = real_claude() else {
        eprintln!(
            "SKIPPED: the real claude is not installed and `npm install @anthropic-ai/claude-code` failed (no npm or no registry)"
        );
        return;
    };
    let dir = TempDir::new("acct-real");
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let agent = json!({"id": "real-1", "command": claude, "protocol": "oneshot",
        "env": {"HOME": home, "CLAUDE_CONFIG_DIR": home.join(".claude")},
        "restart": {"policy": "always", "initial_delay_ms": 0}});
    let d = Daemon::start(
        dir,
        &json!({"daemon_id": "acct-real",
                "accounts": {"default": {"hold_initial_ms": 600000}},
                "agents": [agent]}),
    );
    d.wait_ready();
    let task = spawn_cli(
        &d.socket(),
        &[
            "send",
            "--to",
            "real-1",
            "--wait",
            "--timeout",
            "6000",
            "hello",
        ],
    );
    d.wait_for("ALERT account default held (auth)", Duration::from_secs(30));
    let (st, out, _) = d.cli(&["health"]);
    assert_eq!(st.code(), Some(2), "{out}");
    assert!(out.contains("account default held (auth)"), "{out}");
    let (st, out, err) = task.finish(Duration::from_secs(40));
    assert_eq!(st.code(), Some(78), "{out}{err}");
    assert_eq!(results(&out)[0]["error_kind"], "auth", "{out}");
    d.stop();
}
