//! Tasks end to end through the real binary: send, status, health, control
//! and listen, over NATS (a real nats-server on a free port) and over the
//! local socket with no NATS at all. Each test runs once per transport.

use std::process::ExitStatus;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{fake_agent, json_lines, records, run_cli_stdin, Daemon, NatsServer, TempDir};

const T: Duration = Duration::from_secs(20);

/// A daemon and how the CLI reaches it.
struct Fleet {
    daemon: Daemon,
    nats: Option<NatsServer>,
}

impl Fleet {
    fn start(name: &str, nats: bool, config: Value) -> Fleet {
        let server = nats.then(NatsServer::start);
        let dir = TempDir::new(name);
        let env: Vec<(&str, String)> = match &server {
            Some(s) => vec![("NATS_URL", s.url())],
            None => vec![],
        };
        let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let daemon = Daemon::start_with(dir, &config, &env_ref);
        daemon.wait_ready();
        if server.is_some() {
            daemon.wait_seen("NATS connected", T);
        }
        Fleet {
            daemon,
            nats: server,
        }
    }

    /// Runs the CLI the way a user on this transport would.
    fn cli(&self, args: &[&str], stdin: Option<&str>) -> (ExitStatus, String, String) {
        match &self.nats {
            Some(s) => {
                let url = s.url();
                let mut full = vec!["--nats", url.as_str()];
                full.extend_from_slice(args);
                run_cli_stdin(&full, &[], stdin)
            }
            None => self.daemon.cli_with(args, &[], stdin),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let (status, out, err) = self.cli(args, None);
        assert!(
            status.success(),
            "{args:?}: {status}\nstdout: {out}\nstderr: {err}"
        );
        out
    }
}

/// Runs `test` over NATS and over the local socket.
fn both(test: impl Fn(bool)) {
    test(true);
    test(false);
}

fn coder(id: &str, rec: Option<&std::path::Path>, extra: Value) -> Value {
    let mut env = json!({"FAKE_CLAUDE_TURNS": "1"});
    if let Some(r) = rec {
        env["FAKE_CLAUDE_RECORD"] = json!(r);
    }
    if let Value::Object(m) = extra {
        for (k, v) in m {
            env[k] = v;
        }
    }
    fake_agent(id, env)
}

#[test]
fn send_wait_prints_a_completed_result() {
    both(|nats| {
        let f = Fleet::start(
            "send-wait",
            nats,
            json!({"agents": [coder("coder-1", None, json!({}))]}),
        );
        f.daemon.wait_seen("agent coder-1: initializing -> idle", T);
        let (status, out, err) = f.cli(&["send", "--to", "coder-1", "--wait"], Some("hello\n"));
        assert_eq!(status.code(), Some(0), "{err}");
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 1, "{out}");
        let r = &lines[0];
        assert_eq!(r["message_type"], "task_result");
        assert_eq!(r["payload"]["status"], "completed");
        assert_eq!(r["payload"]["agent_id"], "coder-1");
        assert_eq!(r["payload"]["result"], "done: hello");
        assert!(r["payload"]["total_cost_usd"].as_f64().unwrap() > 0.0);
        assert!(r["payload"]["session_id"].is_string() && r["payload"]["num_turns"].is_u64());

        // --stream: progress first, the result last.
        let (status, out, err) = f.cli(
            &["send", "--to", "coder-1", "--stream", "stream please"],
            None,
        );
        assert_eq!(status.code(), Some(0), "{err}");
        let lines = json_lines(&out);
        assert!(lines.len() >= 3, "{out}");
        let (last, progress) = lines.split_last().unwrap();
        assert_eq!(last["message_type"], "task_result");
        assert!(
            progress
                .iter()
                .all(|l| l["message_type"] == "task_progress"),
            "{out}"
        );
        assert_eq!(progress[0]["payload"]["event"]["subtype"], "queued");
        assert!(progress
            .iter()
            .any(|l| l["payload"]["event"]["type"] == "assistant"));

        // Status shows the counts and the cost.
        let st: Vec<Value> = serde_json::from_str(&f.ok(&["status", "--json"])).unwrap();
        assert_eq!(st[0]["tasks_completed"], 2);
        assert!(st[0]["total_cost_usd"].as_f64().unwrap() > 0.0);
        let table = f.ok(&["status", "coder-1"]);
        assert!(
            table.lines().nth(1).unwrap().starts_with("coder-1"),
            "{table}"
        );
    });
}

#[test]
fn queued_tasks_run_in_priority_order_fifo_within_a_priority() {
    both(|nats| {
        let dir = TempDir::new("prio-rec");
        let rec = dir.join("rec");
        let f = Fleet::start(
            "prio",
            nats,
            json!({"agents": [coder("solo", Some(&rec), json!({}))]}),
        );
        f.daemon.wait_seen("agent solo: initializing -> idle", T);
        // A paused agent takes nothing: everything queues behind it.
        f.ok(&["pause", "solo"]);
        let mut sent = Vec::new();
        for n in 0..50u32 {
            let priority = [5, 1, 10, 3, 5, 1, 7][n as usize % 7];
            let prompt = format!("task-{n:02}-p{priority}");
            f.ok(&[
                "send",
                "--to",
                "solo",
                "--priority",
                &priority.to_string(),
                &prompt,
            ]);
            sent.push((priority, n, prompt));
        }
        f.ok(&["resume", "solo"]);
        f.daemon.wait_for_n(" completed", 50, T);
        sent.sort();
        let want: Vec<String> = sent.into_iter().map(|(_, _, p)| p).collect();
        let got: Vec<String> = records(&rec)
            .into_iter()
            .filter(|r| r["event"] == "task_start")
            .filter_map(|r| r["prompt"].as_str().map(String::from))
            .collect();
        assert_eq!(got, want);
    });
}

#[test]
fn a_full_queue_answers_75_and_an_unknown_agent_69() {
    both(|nats| {
        let f = Fleet::start(
            "full",
            nats,
            json!({"message": {"queue_capacity": 2}, "agents": [coder("solo", None, json!({}))]}),
        );
        f.daemon.wait_seen("agent solo: initializing -> idle", T);
        f.ok(&["pause", "solo"]);
        f.ok(&["send", "--to", "solo", "one"]);
        f.ok(&["send", "--to", "solo", "two"]);
        let (status, _, err) = f.cli(&["send", "--to", "solo", "three"], None);
        assert_eq!(status.code(), Some(75), "{err}");
        assert!(err.contains("queue is full"), "{err}");

        let (status, _, err) = f.cli(&["send", "--to", "coder-9", "hi"], None);
        assert_eq!(status.code(), Some(69), "{err}");
        assert!(err.contains("coder-9"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    });
}

#[test]
fn bad_input_exits_65_and_the_daemon_carries_on() {
    both(|nats| {
        let f = Fleet::start(
            "bad",
            nats,
            json!({"agents": [coder("coder-1", None, json!({}))]}),
        );
        f.daemon.wait_seen("agent coder-1: initializing -> idle", T);
        let cases: &[&[&str]] = &[
            &["send", "--to", "coder-1", "{\"prompt\": \"unclosed"],
            &[
                "send",
                "--to",
                "coder-1",
                "{\"prompt\": \"x\", \"bogus\": 1}",
            ],
            &["send", "--to", "coder-1", "--priority", "0", "x"],
            &["send", "--to", "coder-1", "--priority", "11", "x"],
            &["send", "--to", "a.b", "x"],
            &["send", "--to", "x*", "x"],
            &["send", "--to", "x>", "x"],
            &["send", "--agent-type", "bad type", "x"],
            &["send", "--to", "coder-1", "--meta", "novalue", "x"],
            &["send", "--to", "coder-1", "--correlation-id", "nope", "x"],
        ];
        for args in cases {
            let (status, out, err) = f.cli(args, None);
            assert_eq!(status.code(), Some(65), "{args:?}\n{out}\n{err}");
            assert!(
                err.starts_with("mister-smith: error: ") && err.lines().count() == 1,
                "{args:?}: {err}"
            );
        }
        let (status, _, err) = f.cli(&["send", "--to", "coder-1", "--wait", "still fine"], None);
        assert_eq!(status.code(), Some(0), "{err}");
    });
}

#[test]
fn a_task_past_its_timeout_is_answered_timeout_and_the_agent_goes_on() {
    both(|nats| {
        let f = Fleet::start(
            "timeout",
            nats,
            json!({"agents": [coder("slow", None, json!({}))]}),
        );
        f.daemon.wait_seen("agent slow: initializing -> idle", T);
        let (status, out, err) = f.cli(
            &[
                "send",
                "--to",
                "slow",
                "--wait",
                "--timeout",
                "400",
                "take your time [[fake:delay=1000]] [[fake:turns=3]]",
            ],
            None,
        );
        assert_eq!(status.code(), Some(75), "{out}\n{err}");
        let r = &json_lines(&out)[0];
        assert_eq!(r["payload"]["status"], "timeout", "{r}");
        let (status, out, err) = f.cli(&["send", "--to", "slow", "--wait", "quick one"], None);
        assert_eq!(status.code(), Some(0), "{err}");
        assert_eq!(json_lines(&out)[0]["payload"]["status"], "completed");
    });
}

#[test]
fn health_is_ok_warning_critical_or_unknown() {
    both(|nats| {
        let f = Fleet::start(
            "health",
            nats,
            json!({"agents": [
                coder("a", None, json!({})),
                coder("b", None, json!({})),
            ]}),
        );
        f.daemon.wait_seen("agent a: initializing -> idle", T);
        f.daemon.wait_seen("agent b: initializing -> idle", T);
        let (status, out, _) = f.cli(&["health"], None);
        assert_eq!(status.code(), Some(0), "{out}");
        assert_eq!(
            out,
            "MISTER-SMITH OK - 2/2 agents healthy | agents=2 healthy=2 restarts=0\n"
        );

        f.ok(&["pause", "b"]);
        let (status, out, _) = f.cli(&["health"], None);
        assert_eq!(status.code(), Some(1), "{out}");
        assert!(
            out.starts_with("MISTER-SMITH WARNING - 1/2 agents healthy; b paused |"),
            "{out}"
        );
        f.ok(&["resume", "b"]);

        // A task that crashes its agent past the restart budget.
        let mut crash = vec![];
        for _ in 0..6 {
            crash.push(
                f.cli(&["send", "--to", "b", "--wait", "die [[fake:crash]]"], None)
                    .0
                    .code(),
            );
        }
        f.daemon.wait_seen("ALERT agent b", T);
        let (status, out, _) = f.cli(&["health"], None);
        assert_eq!(status.code(), Some(2), "{out} {crash:?}");
        assert!(
            out.starts_with(
                "MISTER-SMITH CRITICAL - 1/2 agents healthy; b terminated (restart budget spent)"
            ),
            "{out}"
        );
        let (status, out, _) = f.cli(&["health", "--agent", "a"], None);
        assert_eq!(status.code(), Some(0), "{out}");
    });
    // No daemon at all.
    let dir = TempDir::new("health-none");
    let sock = dir.join("none.sock");
    let (status, out, _) =
        run_cli_stdin(&["--socket", sock.to_str().unwrap(), "health"], &[], None);
    assert_eq!(status.code(), Some(3));
    assert!(
        out.starts_with("MISTER-SMITH UNKNOWN - no daemon at"),
        "{out}"
    );
}

#[test]
fn pause_stops_output_and_resume_brings_it_back() {
    both(|nats| {
        let f = Fleet::start(
            "pause",
            nats,
            json!({"agents": [coder("p", None, json!({}))]}),
        );
        f.daemon.wait_seen("agent p: initializing -> idle", T);
        let (args, _) = match &f.nats {
            Some(s) => (vec!["--nats".to_string(), s.url()], ()),
            None => (
                vec![
                    "--socket".to_string(),
                    f.daemon.socket().display().to_string(),
                ],
                (),
            ),
        };
        let mut cmd = std::process::Command::new(crate::support::BIN);
        cmd.args(&args)
            .args([
                "send",
                "--to",
                "p",
                "--stream",
                "slowly [[fake:delay=150]] [[fake:turns=12]]",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(l);
            }
        });
        // Output is flowing.
        rx.recv_timeout(T).expect("queued");
        rx.recv_timeout(T).expect("first event");
        f.ok(&["pause", "p"]);
        // Drain what was in flight, then expect silence.
        while rx.recv_timeout(Duration::from_millis(400)).is_ok() {}
        assert!(
            rx.recv_timeout(Duration::from_millis(800)).is_err(),
            "output while paused"
        );
        f.ok(&["resume", "p"]);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("output after resume");
        let status = child.wait().unwrap();
        assert!(status.success());
    });
}

#[test]
fn listen_sees_agent_status_transitions() {
    both(|nats| {
        let f = Fleet::start(
            "listen",
            nats,
            json!({"agents": [coder("l", None, json!({}))]}),
        );
        f.daemon.wait_seen("agent l: initializing -> idle", T);
        let mut args: Vec<String> = match &f.nats {
            Some(s) => vec!["--nats".into(), s.url()],
            None => vec!["--socket".into(), f.daemon.socket().display().to_string()],
        };
        args.extend(
            [
                "listen",
                "--agent",
                "l",
                "--type",
                "agent_status",
                "--count",
                "2",
            ]
            .map(String::from),
        );
        let mut child = std::process::Command::new(crate::support::BIN)
            .args(&args)
            .env("MISTER_SMITH_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Its "listening" line comes after the subscription is confirmed.
        let stderr = child.stderr.take().unwrap();
        let mut reader = std::io::BufReader::new(stderr);
        let mut line = String::new();
        use std::io::BufRead;
        reader.read_line(&mut line).unwrap();
        assert!(
            line.contains("listening on mister-smith.*.l.agent_status"),
            "{line}"
        );
        f.ok(&["pause", "l"]);
        f.ok(&["resume", "l"]);
        let out = child.wait_with_output().unwrap();
        let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
        let states: Vec<&str> = lines
            .iter()
            .filter_map(|l| l["payload"]["status"].as_str())
            .collect();
        assert_eq!(states, ["paused", "idle"]);
        assert_eq!(lines[0]["payload"]["previous_status"], "idle");
    });
}

#[test]
fn a_hung_busy_agent_is_killed_by_the_watchdog_and_restarted() {
    both(|nats| {
        let mut agent = coder("hangs", None, json!({}));
        agent["health"] = json!({"idle_timeout_ms": 500});
        let f = Fleet::start("watchdog", nats, json!({"agents": [agent]}));
        let first =
            crate::support::pid_in(&f.daemon.wait_seen("agent hangs: initializing -> idle", T));
        let (status, out, err) = f.cli(
            &["send", "--to", "hangs", "--wait", "stall [[fake:hang]]"],
            None,
        );
        assert_eq!(status.code(), Some(1), "{out}\n{err}");
        let r = &json_lines(&out)[0];
        assert_eq!(r["payload"]["status"], "failed");
        assert!(
            r["payload"]["errors"][0].as_str().unwrap().contains("hung"),
            "{r}"
        );
        f.daemon.wait_seen("busy and silent for", T);
        assert!(crate::support::wait_gone(first, Duration::from_secs(2)));
        f.daemon.wait_for("agent hangs: initializing -> idle", T);
        let (status, _, err) = f.cli(&["send", "--to", "hangs", "--wait", "better now"], None);
        assert_eq!(status.code(), Some(0), "{err}");
    });
}

#[test]
fn send_lines_sends_one_task_per_line_and_prints_one_result_each() {
    both(|nats| {
        let f = Fleet::start(
            "lines",
            nats,
            json!({"agents": [coder("w", None, json!({})), coder("v", None, json!({}))]}),
        );
        f.daemon.wait_seen("agent w: initializing -> idle", T);
        let (status, out, err) = f.cli(
            &["send", "--to", "w", "--lines", "--wait"],
            Some("one\ntwo\n\nthree\n"),
        );
        assert_eq!(status.code(), Some(0), "{err}");
        let mut results: Vec<String> = json_lines(&out)
            .iter()
            .map(|l| l["payload"]["result"].as_str().unwrap().to_string())
            .collect();
        results.sort();
        assert_eq!(results, ["done: one", "done: three", "done: two"]);
        // Without --wait: one task id per line.
        let (status, out, _) = f.cli(&["send", "--to", "w", "--lines"], Some("a\nb\n"));
        assert!(status.success());
        assert_eq!(out.lines().count(), 2);
    });
}

#[test]
fn oneshot_agents_run_one_process_per_task_with_the_prompt_last() {
    let dir = TempDir::new("oneshot-rec");
    let rec = dir.join("rec");
    let mut agent = coder("once", Some(&rec), json!({}));
    agent["protocol"] = json!("oneshot");
    // A list flag before the prompt: claude would swallow a prompt placed
    // right after it, so mister-smith must end the options with `--`.
    agent["args"] = json!(["--allowedTools", "Read", "Bash"]);
    let f = Fleet::start("oneshot", false, json!({"agents": [agent]}));
    f.daemon.wait_seen("agent once: initializing -> idle", T);
    for prompt in ["first", "-second looks like a flag"] {
        let (status, out, err) = f.cli(&["send", "--to", "once", "--wait", "--", prompt], None);
        assert_eq!(status.code(), Some(0), "{err}");
        assert_eq!(
            json_lines(&out)[0]["payload"]["result"],
            format!("done: {prompt}")
        );
    }
    let starts: Vec<Value> = records(&rec)
        .into_iter()
        .filter(|r| r["event"] == "start")
        .collect();
    assert_eq!(starts.len(), 2, "one process per task");
    assert_ne!(starts[0]["pid"], starts[1]["pid"]);
    let argv: Vec<&str> = starts[1]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(argv.first(), Some(&"-p"));
    assert_eq!(argv[argv.len() - 2..], ["--", "-second looks like a flag"]);
    // The agent is idle between tasks, with no process.
    let st: Vec<Value> = serde_json::from_str(&f.ok(&["status", "--json"])).unwrap();
    assert_eq!(st[0]["status"], "idle");
    assert_eq!(st[0]["pid"], Value::Null);
    assert_eq!(st[0]["tasks_completed"], 2);
}

#[test]
fn a_task_that_waits_past_its_timeout_in_the_queue_is_answered_timeout() {
    let f = Fleet::start(
        "queue-expiry",
        false,
        json!({"agents": [coder("busy", None, json!({}))]}),
    );
    f.daemon.wait_seen("agent busy: initializing -> idle", T);
    f.ok(&["pause", "busy"]);
    let started = std::time::Instant::now();
    let (status, out, err) = f.cli(
        &[
            "send",
            "--to",
            "busy",
            "--wait",
            "--timeout",
            "300",
            "never runs",
        ],
        None,
    );
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = &json_lines(&out)[0];
    assert_eq!(r["payload"]["status"], "timeout");
    assert!(
        r["payload"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("waiting in the queue"),
        "{r}"
    );
    f.ok(&["resume", "busy"]);
    let (status, _, err) = f.cli(&["send", "--to", "busy", "--wait", "now"], None);
    assert_eq!(status.code(), Some(0), "{err}");
}

#[test]
fn correlation_id_and_metadata_reach_the_answers() {
    let f = Fleet::start(
        "correlation",
        false,
        json!({"agents": [coder("c", None, json!({}))]}),
    );
    f.daemon.wait_seen("agent c: initializing -> idle", T);
    let id = "0b7f5a8e-3c1d-4e2f-9a6b-5c4d3e2f1a0b";
    let (status, out, err) = f.cli(
        &[
            "send",
            "--to",
            "c",
            "--wait",
            "--correlation-id",
            id,
            "--meta",
            "ticket=JIRA-7",
            "--priority",
            "2",
            "hi",
        ],
        None,
    );
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(json_lines(&out)[0]["correlation_id"], id);
    // A JSON object body is the payload itself.
    let (status, out, err) = f.cli(
        &[
            "send",
            "--to",
            "c",
            "--wait",
            r#"{"task_id":"mine-1","prompt":"as json","context":{"k":1}}"#,
        ],
        None,
    );
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(json_lines(&out)[0]["payload"]["task_id"], "mine-1");
}

#[test]
fn control_commands_answer_for_unknown_and_unfit_agents() {
    let f = Fleet::start(
        "control",
        false,
        json!({"agents": [coder("k", None, json!({}))]}),
    );
    f.daemon.wait_seen("agent k: initializing -> idle", T);
    let (status, _, err) = f.cli(&["pause", "ghost"], None);
    assert_eq!(status.code(), Some(69), "{err}");
    assert!(err.contains("ghost"), "{err}");
    let (status, _, err) = f.cli(&["resume", "a.b"], None);
    assert_eq!(status.code(), Some(65), "{err}");
    assert_eq!(f.ok(&["stop", "k"]), "k: stopping\n");
    f.daemon.wait_seen("agent k: stopping -> terminated", T);
    let (status, _, err) = f.cli(&["pause", "k"], None);
    assert_eq!(status.code(), Some(69), "{err}");
    assert!(err.contains("terminated"), "{err}");
    assert_eq!(f.ok(&["start", "k"]), "k: initializing\n");
    f.daemon.wait_for("agent k: initializing -> idle", T);
    let first = f.ok(&["status", "--json"]);
    f.ok(&["restart", "k"]);
    f.daemon.wait_for("agent k: initializing -> idle", T);
    let second = f.ok(&["status", "--json"]);
    let pid = |s: &str| serde_json::from_str::<Vec<Value>>(s).unwrap()[0]["pid"].clone();
    assert_ne!(pid(&first), pid(&second));
}

#[test]
fn an_earlier_tasks_deadline_never_hits_a_later_task() {
    let f = Fleet::start(
        "seq",
        false,
        json!({"agents": [coder("s", None, json!({}))]}),
    );
    f.daemon.wait_seen("agent s: initializing -> idle", T);
    // A's deadline (1.5 s) passes while B, sent straight to the idle agent
    // after A, is running.
    let (status, _, err) = f.cli(
        &[
            "send",
            "--to",
            "s",
            "--wait",
            "--timeout",
            "1500",
            "a [[fake:delay=100]]",
        ],
        None,
    );
    assert_eq!(status.code(), Some(0), "{err}");
    let (status, out, err) = f.cli(
        &[
            "send",
            "--to",
            "s",
            "--wait",
            "--timeout",
            "60000",
            "b [[fake:delay=300]] [[fake:turns=3]]",
        ],
        None,
    );
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    assert_eq!(json_lines(&out)[0]["payload"]["status"], "completed");
}

#[test]
fn a_stop_during_a_timed_out_task_stays_a_stop() {
    let f = Fleet::start(
        "stop-timeout",
        false,
        json!({"agents": [coder("st", None, json!({"FAKE_CLAUDE_IGNORE_SIGTERM": "1"}))]}),
    );
    f.daemon.wait_seen("agent st: initializing -> idle", T);
    let sock = f.daemon.socket();
    let send = std::thread::spawn(move || {
        run_cli_stdin(
            &[
                "--socket",
                sock.to_str().unwrap(),
                "send",
                "--to",
                "st",
                "--wait",
                "--timeout",
                "300",
                "stuck [[fake:hang]]",
            ],
            &[],
            None,
        )
    });
    f.daemon.wait_seen("task", T);
    f.daemon
        .wait_seen("timed out after 300 ms: interrupting", T);
    f.ok(&["stop", "st"]);
    f.daemon.wait_seen("agent st: stopping -> terminated", T);
    let (status, out, _) = send.join().unwrap();
    assert_eq!(status.code(), Some(75), "{out}");
    let st: Vec<Value> = serde_json::from_str(&f.ok(&["status", "--json"])).unwrap();
    assert_eq!(st[0]["status"], "terminated");
    assert_eq!(st[0]["restarts"], 0);
}

#[test]
fn send_to_all_waits_for_every_agents_result() {
    let f = Fleet::start(
        "to-all",
        false,
        json!({"agents": [coder("x1", None, json!({})), coder("x2", None, json!({})), coder("x3", None, json!({}))]}),
    );
    for id in ["x1", "x2", "x3"] {
        f.daemon
            .wait_seen(&format!("agent {id}: initializing -> idle"), T);
    }
    let (status, out, err) = f.cli(&["send", "--to", "all", "--wait", "everyone"], None);
    assert_eq!(status.code(), Some(0), "{err}");
    let mut agents: Vec<String> = json_lines(&out)
        .iter()
        .map(|l| l["payload"]["agent_id"].as_str().unwrap().to_string())
        .collect();
    agents.sort();
    assert_eq!(agents, ["x1", "x2", "x3"]);
}
