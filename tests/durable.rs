//! Durable tasks on JetStream (`transport.jetstream`), end to end against a
//! real `nats-server -js`: tasks stored with no daemon up, a daemon
//! SIGKILLed mid-task, a daemon killed between storing a result and
//! acknowledging its task, the NATS server itself killed and restarted, and
//! `result`. The fake claude records every task it starts, so "exactly
//! once" is counted, not assumed.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// A durable config on `nats` with `agents`.
fn config(nats: &NatsServer, daemon_id: &str, ack_wait_ms: u64, agents: Vec<Value>) -> Value {
    json!({
        "daemon_id": daemon_id,
        "transport": {
            "nats_url": nats.url(),
            "jetstream": {"ack_wait_ms": ack_wait_ms, "max_deliver": 3}
        },
        "message": {"default_timeout_ms": 60000},
        "agents": agents,
    })
}

/// A fake claude agent of type claude recording to `record`.
fn agent(id: &str, record: &Path, replicas: u32) -> Value {
    let mut a = fake_agent(id, json!({"FAKE_CLAUDE_RECORD": record}));
    a["type"] = json!("claude");
    a["replicas"] = json!(replicas);
    a
}

/// `mister-smith --config PATH ARGS` (over NATS, as the config says),
/// bounded.
fn cli(config: &Path, args: &[&str], stdin: Option<&str>) -> (ExitStatus, String, String) {
    let mut full = vec!["--config", config.to_str().expect("utf-8")];
    full.extend_from_slice(args);
    run_cli_stdin(&full, &[], stdin)
}

/// A command in the background, collected (bounded) by `finish`.
struct Background {
    rx: crossbeam_channel::Receiver<std::io::Result<std::process::Output>>,
    pid: u32,
}

fn spawn(config: &Path, args: &[&str]) -> Background {
    let child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("NATS_URL")
        .env_remove("MISTER_SMITH_SOCKET")
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

/// How many times the fake started each prompt.
fn starts(record: &Path) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for r in records(record) {
        if r["event"] == "task_start" {
            *n.entry(r["prompt"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    n
}

/// The stored result of each id (`result --wait`, bounded).
fn stored_results(config: &Path, ids: &[String], within_ms: u64) -> Vec<Value> {
    ids.iter()
        .map(|id| {
            let (st, out, err) = cli(
                config,
                &["result", id, "--wait", "--timeout", &within_ms.to_string()],
                None,
            );
            assert!(st.success(), "result {id}: {st:?} {err}");
            json_lines(&out)[0]["payload"].clone()
        })
        .collect()
}

#[test]
fn tasks_sent_with_no_daemon_are_stored_and_each_runs_once() {
    let nats = NatsServer::start_js();
    let dir = TempDir::new("durable-nodaemon");
    let record = dir.join("record.jsonl");
    let cfg = config(&nats, "d1", 30_000, vec![agent("c", &record, 3)]);
    let path = dir.config(&cfg);

    // No daemon: `send` makes the streams and stores all 50.
    let prompts: Vec<String> = (0..50).map(|n| format!("stored task {n}")).collect();
    let input = prompts.join("\n");
    let (st, out, err) = cli(
        &path,
        &["send", "--agent-type", "claude", "--lines"],
        Some(&input),
    );
    assert!(st.success(), "{st:?} {err}");
    let ids: Vec<String> = out.lines().map(String::from).collect();
    assert_eq!(ids.len(), 50, "{out}");

    // A daemon comes: all 50 run, each once, and every result is stored.
    let daemon = Daemon::start(dir, &cfg);
    daemon.wait_ready();
    let results = stored_results(&path, &ids, 60_000);
    assert!(results
        .iter()
        .all(|r| r["status"] == "completed" && r["attempts"] == 1));
    let n = starts(&record);
    for p in &prompts {
        assert_eq!(n.get(p), Some(&1), "{p:?} ran {:?} times", n.get(p));
    }
    assert_eq!(n.len(), 50);
    // `status` shows the consumers, their backlog drained.
    let (st, out, _) = daemon.cli(&["status"]);
    assert!(st.success());
    assert!(
        out.contains("any-claude") && out.contains("agent-c-1"),
        "{out}"
    );
}

#[test]
fn a_daemon_killed_mid_task_the_task_runs_again_and_is_answered_once() {
    let nats = NatsServer::start_js();
    let dir = std::sync::Arc::new(TempDir::new("durable-kill"));
    let record = dir.join("record.jsonl");
    let cfg = config(&nats, "d1", 2_000, vec![agent("c", &record, 2)]);
    let path = dir.config(&cfg);
    let mut first = Daemon::start(dir.clone(), &cfg);
    first.wait_ready();
    // Quick tasks first: none of them may run twice.
    let quick: Vec<String> = (0..5).map(|n| format!("quick {n}")).collect();
    let (st, _, err) = cli(
        &path,
        &["send", "--to", "c-1", "--lines", "--wait"],
        Some(&quick.join("\n")),
    );
    assert!(st.success(), "{err}");

    // The slow task's first run cannot finish before the kill: its result
    // waits while the gate file exists.
    let gate = dir.join("gate");
    std::fs::write(&gate, b"").expect("gate file");
    let slow = format!("slow [[fake:stderr=50]] [[fake:gate={}]]", gate.display());
    let slow = slow.as_str();
    let waiter = spawn(
        &path,
        &["send", "--to", "c-1", "--wait", "--timeout", "40000", slow],
    );
    // A sender with only a URL (a core-mode send, which the stream's ack
    // answers): each daemon that takes the task acknowledges it, and the
    // one result still ends its wait.
    let plain_cfg = dir.join("sender.json");
    std::fs::write(
        &plain_cfg,
        json!({"transport": {"nats_url": nats.url()}}).to_string(),
    )
    .expect("sender config");
    let slow2 = format!("slow two [[fake:gate={}]]", gate.display());
    let waiter2 = spawn(
        &plain_cfg,
        &[
            "send",
            "--to",
            "c-2",
            "--wait",
            "--timeout",
            "40000",
            &slow2,
        ],
    );
    // Five quick tasks started, then the slow ones, which the agent has
    // begun (its stderr comes before its result).
    first.wait_for_n("started (priority", 7, Duration::from_secs(20));
    // (The agent's stderr may be logged before the line that says the
    // task started: look at what was logged so far too.)
    first.wait_seen("c-1 stderr: fake-claude: noise", Duration::from_secs(20));
    kill(first.pid(), libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10));
    std::fs::remove_file(&gate).expect("gate opened");

    // The same daemon, started again, takes it after ack_wait.
    let second = Daemon::start(dir.clone(), &cfg);
    second.wait_ready();
    let (st, out, err) = waiter.finish(Duration::from_secs(60));
    assert!(st.success(), "{st:?} {err}");
    let answers = json_lines(&out);
    assert_eq!(answers.len(), 1, "exactly one answer: {out}");
    assert_eq!(answers[0]["payload"]["status"], "completed");
    assert_eq!(answers[0]["payload"]["attempts"], 2, "{out}");
    let (st, out, err) = waiter2.finish(Duration::from_secs(60));
    assert!(st.success(), "{st:?} {err}");
    assert_eq!(json_lines(&out).len(), 1, "exactly one answer: {out}");
    let n = starts(&record);
    assert_eq!(n.get(slow), Some(&2));
    for q in &quick {
        assert_eq!(n.get(q), Some(&1), "{q} ran again");
    }
}

#[test]
fn a_result_stored_before_the_daemon_died_answers_the_redelivery() {
    let nats = NatsServer::start_js();
    let dir = std::sync::Arc::new(TempDir::new("durable-stored"));
    let record = dir.join("record.jsonl");
    let cfg = config(&nats, "d1", 2_000, vec![agent("c", &record, 1)]);
    let path = dir.config(&cfg);
    // This daemon dies right after storing the first result, before it
    // publishes it or acknowledges the task.
    let mut first = Daemon::start_with(
        dir.clone(),
        &cfg,
        &[("MISTER_SMITH_FAULT", "exit_after_store")],
    );
    first.wait_ready();
    let waiter = spawn(
        &path,
        &[
            "send",
            "--to",
            "c",
            "--wait",
            "--timeout",
            "40000",
            "answer me once",
        ],
    );
    let status = first.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "the faulty daemon died: {status:?}");

    let second = Daemon::start(dir.clone(), &cfg);
    second.wait_ready();
    let (st, out, err) = waiter.finish(Duration::from_secs(60));
    assert!(st.success(), "{st:?} {err}");
    let answers = json_lines(&out);
    assert_eq!(answers.len(), 1, "{out}");
    assert_eq!(answers[0]["payload"]["status"], "completed");
    // Run once: the second daemon answered from the store.
    assert_eq!(starts(&record).get("answer me once"), Some(&1));
    second.wait_for("answering from the store", Duration::from_secs(5));
}

#[test]
fn result_reads_the_store_and_says_when_there_is_nothing() {
    let nats = NatsServer::start_js();
    let dir = TempDir::new("durable-result");
    let record = dir.join("record.jsonl");
    let cfg = config(&nats, "d1", 30_000, vec![agent("c", &record, 1)]);
    let path = dir.config(&cfg);
    let daemon = Daemon::start(dir, &cfg);
    daemon.wait_ready();

    let (st, out, _) = cli(
        &path,
        &["send", "--to", "c", "[[fake:result=max_turns]] stop"],
        None,
    );
    assert!(st.success());
    let id = out.trim().to_string();
    // A failed task's stored result exits like `send --wait` would: 1.
    let (st, out, err) = cli(
        &path,
        &["result", &id, "--wait", "--timeout", "30000"],
        None,
    );
    assert_eq!(st.code(), Some(1), "{out}{err}");
    assert_eq!(json_lines(&out)[0]["payload"]["task_id"], id.as_str());
    let (st, _, err) = cli(&path, &["result", "no-such-task"], None);
    assert_eq!(st.code(), Some(69), "{err}");
    assert!(err.contains("no stored result"), "{err}");
    let (st, _, err) = cli(
        &path,
        &["result", "no-such-task", "--wait", "--timeout", "200"],
        None,
    );
    assert_eq!(st.code(), Some(75), "{err}");
    // An id that is not a subject token is stored and found all the same.
    let odd = "odd id. with spaces>*";
    let body = json!({"task_id": odd, "prompt": "odd"}).to_string();
    let (st, _, err) = cli(&path, &["send", "--to", "c", "--wait", &body], None);
    assert!(st.success(), "{err}");
    let (st, out, _) = cli(&path, &["result", odd], None);
    assert!(st.success());
    assert_eq!(json_lines(&out)[0]["payload"]["task_id"], odd);
}

#[test]
fn senders_without_the_config_and_other_clients_are_served_durably() {
    let nats = NatsServer::start_js();
    let dir = TempDir::new("durable-clients");
    let record = dir.join("record.jsonl");
    let cfg = config(&nats, "d1", 30_000, vec![agent("c", &record, 2)]);
    let path = dir.config(&cfg);
    let daemon = Daemon::start(dir, &cfg);
    daemon.wait_ready();
    daemon.wait_seen("consumer(s) of stream", Duration::from_secs(10));

    // `send` with only a URL: the stream's acknowledgement is its receipt,
    // and the answer comes from the daemon that took the task.
    let url = nats.url();
    let (st, out, err) = run_cli_stdin(
        &[
            "--nats",
            &url,
            "send",
            "--to",
            "c-1",
            "--wait",
            "no config here",
        ],
        &[],
        None,
    );
    assert!(st.success(), "{st:?} {err}");
    assert_eq!(json_lines(&out)[0]["payload"]["status"], "completed");
    let (st, out, err) = run_cli_stdin(
        &["--nats", &url, "send", "--to", "c-2", "no wait"],
        &[],
        None,
    );
    assert!(st.success(), "{err}");
    let id = out.trim().to_string();
    stored_results(&path, &[id], 30_000);

    // `--to all` stays on core NATS: every agent answers, and the stream
    // keeps nothing of it.
    let (st, out, err) = cli(&path, &["send", "--to", "all", "--wait", "everyone"], None);
    assert!(st.success(), "{err}");
    assert_eq!(json_lines(&out).len(), 2, "{out}");
    assert_eq!(starts(&record).get("everyone"), Some(&2));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, _) = cli(&path, &["status"], None);
        let all_row = out
            .lines()
            .find(|l| l.contains(" all "))
            .unwrap_or("")
            .to_string();
        if all_row.split_whitespace().nth(2) == Some("0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the all consumer kept tasks: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A third-party client (nats-py) publishing a plain envelope.
    let probe = Command::new("python3").args(["-c", "import nats"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIP third-party client: python3 with nats-py is not installed (pip install nats-py)"
        );
        return;
    }
    let script = r#"
import asyncio, json, sys, uuid, datetime
import nats
async def main():
    nc = await nats.connect(sys.argv[1])
    env = {"message_id": str(uuid.uuid4()),
           "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "schema_version": "1.0.0", "message_type": "task_assignment",
           "payload": {"task_id": "from-python-1", "prompt": "from python"},
           "priority": 5}
    await nc.publish("mister-smith.claude.c-1.task_assignment", json.dumps(env).encode())
    await nc.flush()
    await nc.close()
asyncio.run(main())
"#;
    let o = Command::new("python3")
        .args(["-c", script, &url])
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = stored_results(&path, &["from-python-1".to_string()], 30_000);
    assert_eq!(r[0]["status"], "completed");
    assert_eq!(starts(&record).get("from python"), Some(&1));
}

#[test]
fn the_nats_server_killed_and_restarted_loses_and_repeats_nothing() {
    let mut nats = NatsServer::start_js();
    let dir = TempDir::new("durable-server-kill");
    let record = dir.join("record.jsonl");
    let mut a = agent("c", &record, 4);
    a["env"]["FAKE_CLAUDE_LINE_DELAY_MS"] = json!("5");
    let cfg = config(&nats, "d1", 5_000, vec![a]);
    let path = dir.config(&cfg);
    let daemon = Daemon::start(dir, &cfg);
    daemon.wait_ready();

    let prompts: Vec<String> = (0..200).map(|n| format!("outstanding {n}")).collect();
    let (st, out, err) = cli(
        &path,
        &["send", "--agent-type", "claude", "--lines"],
        Some(&prompts.join("\n")),
    );
    assert!(st.success(), "{err}");
    let ids: Vec<String> = out.lines().map(String::from).collect();
    assert_eq!(ids.len(), 200);
    // Kill the server (SIGKILL) while tasks are outstanding, then bring it
    // back on its store.
    daemon.wait_for_n("started (priority", 20, Duration::from_secs(30));
    nats.kill();
    // Meanwhile the local daemon says JetStream cannot be reached, not
    // what its last poll found.
    daemon.wait_seen("NATS disconnected", Duration::from_secs(10));
    let (_, table, _) = daemon.cli(&["status"]);
    assert!(
        table.contains("unreachable") && !table.contains(" ok"),
        "{table}"
    );
    nats.restart_js();
    let before = starts(&record).len();

    let results = stored_results(&path, &ids, 90_000);
    assert_eq!(results.len(), 200);
    let n = starts(&record);
    let twice: Vec<_> = n.iter().filter(|(_, c)| **c > 1).collect();
    if !twice.is_empty() {
        // What the daemon did with them, for the failure's reader.
        for (p, _) in &twice {
            let id = &ids[prompts.iter().position(|x| x == *p).unwrap_or(0)];
            for l in daemon.log().iter().filter(|l| l.contains(id.as_str())) {
                eprintln!("{l}");
            }
        }
    }
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    for p in &prompts {
        assert_eq!(n.get(p), Some(&1), "{p:?} lost");
    }
    eprintln!(
        "FIGURE nats-server SIGKILL with 200 tasks outstanding: 200 answered, 0 lost, 0 run twice ({before} had started when it came back)"
    );
}

/// A JetStream API request from the test, as an operator's tool would
/// make it.
fn js_api(url: &str, subject: &str) -> Value {
    #[allow(deprecated)]
    let nc = nats::Options::new()
        .add_root_certificate("/dev/null")
        .connect(url)
        .expect("connect");
    #[allow(deprecated)]
    let m = nc
        .request_timeout(subject, b"", Duration::from_secs(5))
        .expect("JetStream answers");
    serde_json::from_slice(&m.data).expect("JSON")
}

#[test]
fn streams_deleted_under_a_running_daemon_lose_no_result() {
    let nats = NatsServer::start_js();
    let dir = TempDir::new("durable-deleted");
    let record = dir.join("record.jsonl");
    let cfg = config(&nats, "d1", 3_000, vec![agent("c", &record, 1)]);
    let path = dir.config(&cfg);
    let daemon = Daemon::start(dir, &cfg);
    daemon.wait_ready();
    daemon.wait_seen("consumer(s) of stream", Duration::from_secs(10));
    for n in 0..3 {
        let (st, _, err) = cli(
            &path,
            &["send", "--to", "c", "--wait", &format!("before {n}")],
            None,
        );
        assert!(st.success(), "{err}");
    }
    // The tasks stream goes (an operator's mistake): made again, it numbers
    // its messages from 1, and new results must not pass for old ones.
    let v = js_api(&nats.url(), "$JS.API.STREAM.DELETE.MISTER_SMITH_TASKS");
    assert_eq!(v["success"], true, "{v}");
    daemon.wait_seen("consumer", Duration::from_secs(10));
    for n in 0..3 {
        let (st, out, err) = cli(
            &path,
            &[
                "send",
                "--to",
                "c",
                "--wait",
                "--timeout",
                "20000",
                &format!("after {n}"),
            ],
            None,
        );
        assert!(st.success(), "after {n}: {st:?} {err}");
        assert_eq!(json_lines(&out)[0]["payload"]["status"], "completed");
    }
    // The results stream goes: made again within a poll, and results are
    // stored again.
    let v = js_api(&nats.url(), "$JS.API.STREAM.DELETE.MISTER_SMITH_RESULTS");
    assert_eq!(v["success"], true, "{v}");
    let (st, out, err) = cli(
        &path,
        &["send", "--to", "c", "--wait", "--timeout", "20000", "later"],
        None,
    );
    assert!(st.success(), "{err}");
    let id = json_lines(&out)[0]["payload"]["task_id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let r = stored_results(&path, &[id], 20_000);
    assert_eq!(r[0]["status"], "completed");
}
