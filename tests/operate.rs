//! Operating a fleet: claude-style output from `send`, and the metrics of
//! `status --format prometheus` read by an independent parser.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{fake_agent, json_lines, run_cli_stdin, Daemon, TempDir};

const T: Duration = Duration::from_secs(20);

fn fleet(name: &str) -> Daemon {
    let agents = json!([
        fake_agent("coder-1", json!({"FAKE_CLAUDE_TURNS": "1"})),
        fake_agent("coder-2", json!({"FAKE_CLAUDE_TURNS": "1"})),
    ]);
    let d = Daemon::start(TempDir::new(name), &json!({ "agents": agents }));
    d.wait_ready();
    for id in ["coder-1", "coder-2"] {
        d.wait_seen(&format!("agent {id}: initializing -> idle"), T);
    }
    d
}

#[test]
fn send_prints_text_json_or_stream_json_like_claude() {
    let d = fleet("output");

    // text: the answer alone, for $(...).
    let (st, out, err) = d.cli(&[
        "send",
        "--to",
        "coder-1",
        "--output-format",
        "text",
        "hello",
    ]);
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(out, "done: hello\n");
    assert_eq!(err, "");
    let (st, out, err) = d.cli_with(
        &[
            "send",
            "--to",
            "coder-1",
            "--wait",
            "--output-format",
            "text",
        ],
        &[],
        Some("piped\n"),
    );
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(out, "done: piped\n");

    // A failure: exit code as ever, nothing but a newline on stdout, the
    // reason on stderr in one line.
    let (st, out, err) = d.cli(&[
        "send",
        "--to",
        "coder-1",
        "--output-format",
        "text",
        "[[fake:result=max_turns]] go",
    ]);
    assert_eq!(st.code(), Some(1), "{out}{err}");
    assert_eq!(out, "\n");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("failed (max_turns)") && err.contains("task "),
        "{err}"
    );

    // json: the task_result envelope, as --wait prints it.
    let (st, out, err) = d.cli(&["send", "--to", "coder-2", "--output-format", "json", "hi"]);
    assert_eq!(st.code(), Some(0), "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["message_type"], "task_result");
    assert_eq!(lines[0]["payload"]["result"], "done: hi");

    // stream-json: progress envelopes, then the result.
    let (st, out, err) = d.cli(&[
        "send",
        "--to",
        "coder-2",
        "--output-format",
        "stream-json",
        "hi",
    ]);
    assert_eq!(st.code(), Some(0), "{err}");
    let lines = json_lines(&out);
    let (last, progress) = lines.split_last().expect("lines");
    assert_eq!(last["message_type"], "task_result");
    assert!(progress.len() >= 2, "{out}");
    assert!(progress
        .iter()
        .all(|l| l["message_type"] == "task_progress"));

    // --lines with text: one answer per line of input.
    let (st, out, err) = d.cli_with(
        &[
            "send",
            "--agent-type",
            "claude",
            "--lines",
            "--output-format",
            "text",
        ],
        &[],
        Some("a\nb\nc\n"),
    );
    assert_eq!(st.code(), Some(0), "{err}");
    let mut got: Vec<&str> = out.lines().collect();
    got.sort_unstable();
    assert_eq!(got, ["done: a", "done: b", "done: c"]);

    // Usage errors: one line, exit 64, nothing sent.
    for args in [
        &["send", "--to", "coder-1", "--output-format", "yaml", "x"][..],
        &[
            "send",
            "--to",
            "coder-1",
            "--stream",
            "--output-format",
            "text",
            "x",
        ][..],
    ] {
        let (st, out, err) = d.cli(args);
        assert_eq!(st.code(), Some(64), "{args:?}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(out, "");
    }
}

/// A sample line of the text format: a name, labels maybe, a value.
fn well_formed(line: &str) -> bool {
    let (name_labels, value) = match line.rsplit_once(' ') {
        Some(p) => p,
        None => return false,
    };
    let name_end = name_labels.find('{').unwrap_or(name_labels.len());
    let name = &name_labels[..name_end];
    let name_ok = !name.is_empty()
        && name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
    let labels_ok = name_end == name_labels.len()
        || (name_labels.ends_with('}') && name_labels[name_end..].contains("=\""));
    let value_ok = value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value);
    name_ok && labels_ok && value_ok
}

/// The Prometheus project's own parser, where python3 has it: each sample
/// as `{"name", "labels", "value"}`, and each family's name and type.
fn parse_with_prometheus_client(text: &str) -> Option<Value> {
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .ok()?;
    if !probe.status.success() {
        eprintln!("SKIP independent parser: python3 has no prometheus_client (pip install prometheus_client)");
        return None;
    }
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {"families": {}, "samples": []}
for f in text_string_to_metric_families(sys.stdin.read()):
    out["families"][f.name] = f.type
    for s in f.samples:
        out["samples"].append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let o = child.wait_with_output().expect("python3");
    assert!(
        o.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(serde_json::from_slice(&o.stdout).expect("parser output"))
}

#[test]
fn status_format_prometheus_is_read_by_an_independent_parser() {
    let d = fleet("metrics");
    let (st, _, err) = d.cli(&["send", "--to", "coder-1", "--wait", "one"]);
    assert_eq!(st.code(), Some(0), "{err}");
    let (st, _, _) = d.cli(&[
        "send",
        "--to",
        "coder-2",
        "--wait",
        "[[fake:result=max_turns]] two",
    ]);
    assert_eq!(st.code(), Some(1));

    let (st, text, err) = d.cli(&["status", "--format", "prometheus"]);
    assert_eq!(st.code(), Some(0), "{err}");
    let families = [
        ("mister_smith_daemon_instances", "gauge"),
        ("mister_smith_daemon_uptime_seconds", "gauge"),
        ("mister_smith_nats_state", "gauge"),
        ("mister_smith_queue_depth", "gauge"),
        ("mister_smith_queue_capacity", "gauge"),
        ("mister_smith_agent_state", "gauge"),
        ("mister_smith_agent_restarts_total", "counter"),
        ("mister_smith_agent_uptime_seconds", "gauge"),
        ("mister_smith_agent_memory_bytes", "gauge"),
        ("mister_smith_tasks_total", "counter"),
        ("mister_smith_tasks_unrun_total", "counter"),
        ("mister_smith_cost_usd_total", "counter"),
        ("mister_smith_account_held", "gauge"),
        ("mister_smith_account_state", "gauge"),
        ("mister_smith_account_spent_today_usd", "gauge"),
        ("mister_smith_account_daily_budget_usd", "gauge"),
        ("mister_smith_jetstream_up", "gauge"),
        ("mister_smith_jetstream_waiting", "gauge"),
    ];
    // By the format's own rules, whatever python3 has.
    for (name, kind) in families {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}\n{text}"
        );
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(well_formed(line), "not a sample line: {line:?}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("mister_smith_tasks_total{")
                && l.contains("agent=\"coder-2\"")
                && l.ends_with("status=\"failed\",error_kind=\"max_turns\"} 1")),
        "{text}"
    );

    let Some(parsed) = parse_with_prometheus_client(&text) else {
        return;
    };
    let kinds = &parsed["families"];
    for (name, kind) in families {
        // The parser names a counter's family without `_total`.
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert_eq!(kinds[family], kind, "{name}: {kinds}");
    }
    let samples = parsed["samples"].as_array().expect("samples");
    let find = |name: &str, want: &[(&str, &str)]| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s["name"] == name)
            .filter(|s| want.iter().all(|(k, v)| s["labels"][*k] == *v))
            .map(|s| s["value"].as_f64().expect("value"))
            .collect()
    };
    assert_eq!(
        find(
            "mister_smith_tasks_total",
            &[("agent", "coder-1"), ("status", "completed")]
        ),
        [1.0]
    );
    assert_eq!(
        find(
            "mister_smith_tasks_total",
            &[
                ("agent", "coder-2"),
                ("status", "failed"),
                ("error_kind", "max_turns")
            ]
        ),
        [1.0]
    );
    assert_eq!(
        find(
            "mister_smith_agent_state",
            &[("agent", "coder-1"), ("state", "idle")]
        ),
        [1.0]
    );
    assert_eq!(
        find(
            "mister_smith_agent_state",
            &[("agent", "coder-1"), ("state", "busy")]
        ),
        [0.0]
    );
    assert_eq!(find("mister_smith_nats_state", &[("state", "off")]), [1.0]);
    assert!(find("mister_smith_cost_usd_total", &[("agent", "coder-1")])[0] > 0.0);
    assert_eq!(find("mister_smith_account_held", &[]), [0.0]);

    // --json is --format json; the two cannot disagree.
    let (_, a, _) = d.cli(&["status", "--json"]);
    let (_, b, _) = d.cli(&["status", "--format", "json"]);
    let strip = |t: &str| -> Vec<String> {
        serde_json::from_str::<Vec<Value>>(t)
            .expect("json")
            .iter()
            .map(|a| a["agent_id"].to_string())
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));
    let (st, out, err) = d.cli(&["status", "--json", "--format", "text"]);
    assert_eq!(st.code(), Some(64), "{out}{err}");
    let (st, _, err) = d.cli(&["status", "--format", "xml"]);
    assert_eq!(st.code(), Some(64));
    assert!(err.contains("\"xml\""), "{err}");
}

#[test]
fn with_nats_down_client_commands_use_the_local_daemon_and_say_so() {
    let d = fleet("failover");
    let dead = format!("nats://127.0.0.1:{}", crate::support::free_port());
    let socket = d.socket();
    let env = [
        ("NATS_URL", dead.as_str()),
        ("MISTER_SMITH_SOCKET", socket.to_str().expect("utf-8")),
    ];
    let notes = |err: &str| {
        err.lines()
            .filter(|l| l.contains("using the local daemon"))
            .count()
    };

    let (st, out, err) = run_cli_stdin(&["status"], &env, None);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(out.contains("coder-1") && out.contains("coder-2"), "{out}");
    assert_eq!(notes(&err), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&dead) && err.contains(socket.to_str().expect("utf-8")),
        "{err}"
    );

    let (st, out, err) = run_cli_stdin(&["health"], &env, None);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(out.starts_with("MISTER-SMITH OK"), "{out}");
    assert_eq!(notes(&err), 1, "{err}");

    // Exit codes as if NATS had answered: a task runs, a bad agent is 69.
    let (st, out, err) = run_cli_stdin(
        &["send", "--to", "coder-1", "--output-format", "text", "hi"],
        &env,
        None,
    );
    assert_eq!((st.code(), out.as_str()), (Some(0), "done: hi\n"), "{err}");
    let (st, _, err) = run_cli_stdin(&["send", "--to", "nobody", "--wait", "hi"], &env, None);
    assert_eq!(st.code(), Some(69), "{err}");

    // A durable task is stored in the stream or not sent: no failover.
    let dir = TempDir::new("failover-durable");
    let cfg = dir.config(&json!({
        "transport": {"nats_url": dead, "jetstream": {}},
        "agents": [fake_agent("coder-1", json!({}))],
    }));
    let cfg = cfg.to_str().expect("utf-8");
    let (st, out, err) = run_cli_stdin(
        &["--config", cfg, "send", "--to", "coder-1", "kept?"],
        &[("MISTER_SMITH_SOCKET", socket.to_str().expect("utf-8"))],
        None,
    );
    assert_eq!(st.code(), Some(69), "{out}{err}");
    assert_eq!(notes(&err), 0, "{err}");
    assert_eq!(out, "");

    // No daemon on the socket either: NATS's own error, as before.
    let (st, _, err) = run_cli_stdin(
        &["status"],
        &[
            ("NATS_URL", dead.as_str()),
            ("MISTER_SMITH_SOCKET", "/nonexistent/ms.sock"),
        ],
        None,
    );
    assert_eq!(st.code(), Some(69), "{err}");
    assert!(err.contains("cannot connect to NATS"), "{err}");
}

#[test]
fn a_trace_id_follows_a_task_through_envelopes_and_log_lines() {
    let d = fleet("trace");
    let socket = d.socket();
    let socket = socket.to_str().expect("utf-8");

    // listen --trace prints only that trace's envelopes: started first,
    // ready once it says it listens.
    let mut listen = std::process::Command::new(crate::support::BIN)
        .args([
            "--socket",
            socket,
            "listen",
            "--trace",
            "deploy-42",
            "--type",
            "task_result",
            "--count",
            "1",
        ])
        .env("MISTER_SMITH_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("listen");
    let mut err = std::io::BufReader::new(listen.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut err, &mut line).expect("listen's stderr");
        assert!(n > 0, "listen ended before it listened");
    }

    // Another trace first: listen must let it pass.
    let (st, _, e) = d.cli(&[
        "send",
        "--to",
        "coder-2",
        "--trace-id",
        "other-1",
        "--wait",
        "x",
    ]);
    assert_eq!(st.code(), Some(0), "{e}");
    let (st, out, e) = d.cli(&[
        "send",
        "--to",
        "coder-1",
        "--trace-id",
        "deploy-42",
        "--stream",
        "y",
    ]);
    assert_eq!(st.code(), Some(0), "{e}");
    let lines = json_lines(&out);
    assert!(lines.len() >= 3, "{out}");
    for l in &lines {
        assert_eq!(l["trace_id"], "deploy-42", "{l}");
    }
    let heard = listen.wait_with_output().expect("listen");
    let heard = json_lines(&String::from_utf8_lossy(&heard.stdout));
    assert_eq!(heard.len(), 1);
    assert_eq!(heard[0]["trace_id"], "deploy-42");
    assert_eq!(heard[0]["payload"]["result"], "done: y");

    // The daemon's lines about the task carry it.
    d.wait_seen("[trace deploy-42] completed", T);
    let log = d.log();
    let about: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("[trace deploy-42]"))
        .collect();
    assert!(about.iter().any(|l| l.contains("started")), "{log:#?}");
    assert!(about.iter().any(|l| l.contains("completed")), "{log:#?}");
    assert!(!about.iter().any(|l| l.contains("coder-2")), "{about:#?}");

    // A refusal is traced too.
    let (st, _, e) = d.cli(&["send", "--to", "nobody", "--trace-id", "lost-9", "x"]);
    assert_eq!(st.code(), Some(69), "{e}");
    d.wait_seen("[trace lost-9]: ", T);

    // Without --trace-id, a task still has one, the same everywhere.
    let (st, out, e) = d.cli(&["send", "--to", "coder-1", "--stream", "z"]);
    assert_eq!(st.code(), Some(0), "{e}");
    let lines = json_lines(&out);
    let trace = lines[0]["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_string();
    assert!(!trace.is_empty());
    assert!(
        lines.iter().all(|l| l["trace_id"] == trace.as_str()),
        "{out}"
    );

    // Bad trace ids: 65, one line.
    for bad in ["", "has space", &"x".repeat(129)] {
        let (st, _, e) = d.cli(&["send", "--to", "coder-1", "--trace-id", bad, "x"]);
        assert_eq!(st.code(), Some(65), "{bad:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn a_one_shot_agent_gets_its_task_trace_id_in_its_environment() {
    let dir = TempDir::new("trace-oneshot");
    // A one-shot "claude" that answers with the trace id it was given.
    let script = dir.join("echo-trace.sh");
    std::fs::write(
        &script,
        r#"#!/bin/sh
printf '{"type":"result","subtype":"success","is_error":false,"duration_ms":1,"num_turns":1,"result":"%s","session_id":"s-1","total_cost_usd":0,"usage":{"input_tokens":1,"output_tokens":1}}\n' "$MISTER_SMITH_TRACE_ID"
"#,
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let d = Daemon::start(
        dir,
        &json!({"agents": [{"id": "one", "command": script, "protocol": "oneshot"}]}),
    );
    d.wait_ready();
    let (st, out, e) = d.cli(&[
        "send",
        "--to",
        "one",
        "--trace-id",
        "cron-7",
        "--output-format",
        "text",
        "x",
    ]);
    assert_eq!(st.code(), Some(0), "{out}{e}");
    assert_eq!(out, "cron-7\n");
}

/// Sets `path`'s modification time `ago` in the past.
fn age(path: &std::path::Path, ago: Duration) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    f.set_modified(std::time::SystemTime::now() - ago)
        .expect("set mtime");
}

#[test]
fn each_task_has_a_transcript_and_old_ones_are_pruned() {
    let dir = TempDir::new("transcripts");
    let logs = dir.join("transcripts");
    // Left from earlier runs: one past retain_days, two that together pass
    // max_mb (the older of them goes).
    let old = logs.join("gone");
    std::fs::create_dir_all(&old).expect("mkdir");
    // Made by an earlier daemon: marked as ours.
    std::fs::write(old.join(".mister-smith-transcripts"), b"").expect("mark");
    // Another program's files in the same tree, and a planted link: never
    // pruned, never written through.
    let theirs = logs.join("other-app");
    std::fs::create_dir_all(&theirs).expect("mkdir");
    let their_file = theirs.join("old.ndjson");
    std::fs::write(&their_file, b"{}\n").expect("write");
    age(&their_file, Duration::from_secs(30 * 86_400));
    let victim = logs.join("victim.txt");
    std::fs::write(&victim, b"keep\n").expect("write");
    let coder = logs.join("coder-1");
    std::fs::create_dir_all(&coder).expect("mkdir");
    std::os::unix::fs::symlink(&victim, coder.join("planted.ndjson")).expect("symlink");
    let fifo = coder.join("fifo.ndjson");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let stale = old.join("stale.ndjson");
    std::fs::write(&stale, b"{}\n").expect("write");
    age(&stale, Duration::from_secs(3 * 86_400));
    let big = vec![b'x'; 700 * 1024];
    let (older, newer) = (old.join("older.ndjson"), old.join("newer.ndjson"));
    std::fs::write(&older, &big).expect("write");
    std::fs::write(&newer, &big).expect("write");
    age(&older, Duration::from_secs(7200));
    age(&newer, Duration::from_secs(3600));

    let cfg = dir.join("mister-smith.json");
    let cfg = cfg.to_str().expect("utf-8").to_string();
    // The slow task's result waits while this file exists.
    let gate = dir.join("gate");
    let d = Daemon::start(
        dir,
        &json!({
            "log_dir": logs,
            "logs": {"retain_days": 1, "max_mb": 1},
            "agents": [fake_agent("coder-1", json!({"FAKE_CLAUDE_TURNS": "2"}))],
        }),
    );
    d.wait_ready();
    d.wait_seen("transcripts: removed the 2 oldest", T);
    assert!(!stale.exists() && !older.exists() && newer.exists());
    assert!(their_file.exists(), "another program's file was pruned");

    // A task whose file is a link elsewhere, or a FIFO, gets no transcript
    // (one line says why); the victim is untouched and later tasks still
    // get theirs.
    for id in ["planted", "fifo"] {
        let body = format!(r#"{{"task_id":"{id}","prompt":"x"}}"#);
        let (st, _, err) = d.cli(&["send", "--to", "coder-1", "--wait", &body]);
        assert_eq!(st.code(), Some(0), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep\n");
    d.wait_seen("transcripts: cannot write", T);

    let (st, out, err) = d.cli(&[
        "send",
        "--to",
        "coder-1",
        "--stream",
        "--trace-id",
        "t-1",
        "hello",
    ]);
    assert_eq!(st.code(), Some(0), "{err}");
    let streamed = json_lines(&out);
    let task_id = streamed
        .last()
        .and_then(|r| r["payload"]["task_id"].as_str())
        .expect("task id")
        .to_string();

    // Written off the supervisor's thread: read once the writer says so.
    d.wait_seen(&format!("transcripts: coder-1/{task_id}.ndjson written"), T);
    // Read on the daemon's host, with its config (as an operator would).
    let (st, text, _) = run_cli_stdin(&["--config", &cfg, "transcript", &task_id], &[], None);
    assert_eq!(st.code(), Some(0), "{text}");
    let lines = json_lines(&text);
    let (first, rest) = lines.split_first().expect("lines");
    let (last, progress) = rest.split_last().expect("lines");
    assert_eq!(first["message_type"], "task_assignment");
    assert_eq!(first["payload"]["prompt"], "hello");
    assert_eq!(first["trace_id"], "t-1");
    assert_eq!(last, streamed.last().expect("result"));
    // The agent's events, in order, as the sender saw them (the sender
    // also got the daemon's own "queued" first).
    let events = |ls: &[Value]| -> Vec<Value> {
        ls.iter()
            .filter(|l| l["message_type"] == "task_progress")
            .map(|l| l["payload"]["event"].clone())
            .filter(|e| e["subtype"] != "queued")
            .collect()
    };
    let seen = events(&streamed);
    assert!(seen.len() >= 3, "{out}");
    assert_eq!(events(progress), seen);

    // A task that times out in the queue behind a slow one: its result
    // ends a transcript too, and a log line says so.
    std::fs::write(&gate, b"").expect("gate file");
    let prompt = format!(
        "{{\"task_id\":\"slow\",\"prompt\":\"[[fake:gate={}]] slow\"}}",
        gate.display()
    );
    let socket = d.socket();
    let socket = socket.to_str().expect("utf-8").to_string();
    let slow = std::thread::spawn(move || {
        run_cli_stdin(
            &[
                "--socket", &socket, "send", "--to", "coder-1", "--wait", &prompt,
            ],
            &[],
            None,
        )
    });
    d.wait_seen("task slow [trace", T);
    let (st, _, err) = d.cli(&[
        "send",
        "--to",
        "coder-1",
        "--wait",
        "--timeout",
        "200",
        "--trace-id",
        "late-1",
        r#"{"task_id":"late","prompt":"late"}"#,
    ]);
    assert_eq!(st.code(), Some(75), "{err}");
    std::fs::remove_file(&gate).expect("gate opened");
    assert!(slow.join().expect("slow").0.success());
    d.wait_seen(
        "task late [trace late-1] timed out (timeout) before it ran",
        T,
    );
    d.wait_seen("transcripts: coder-1/late.ndjson written", T);
    let (_, text, _) = run_cli_stdin(&["--config", &cfg, "transcript", "late"], &[], None);
    let late = json_lines(&text);
    assert_eq!(late.len(), 2, "{late:?}");
    assert_eq!(late[0]["message_type"], "task_assignment");
    assert_eq!(late[1]["payload"]["status"], "timeout");
    let (_, metrics, _) = d.cli(&["status", "--format", "prometheus"]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mister_smith_tasks_unrun_total{")
                && l.ends_with("status=\"timeout\",error_kind=\"timeout\"} 1")),
        "{metrics}"
    );

    let (st, _, err) = run_cli_stdin(&["--config", &cfg, "transcript", "no-such-task"], &[], None);
    assert_eq!(st.code(), Some(69), "{err}");
    assert!(err.contains("no transcript"), "{err}");
}

#[test]
fn one_unreadable_answer_does_not_hide_the_fleet() {
    let server = crate::support::NatsServer::start();
    let url = server.url();
    let dir = TempDir::new("unreadable");
    let d = Daemon::start_with(
        dir,
        &json!({"daemon_id": "good", "agents": [fake_agent("coder-1", json!({}))]}),
        &[("NATS_URL", url.as_str())],
    );
    d.wait_ready();
    d.wait_seen("NATS connected", T);
    // A "daemon" of another version whose report this one cannot read,
    // with a newline where the NATS state goes.
    let nc = nats::Options::new()
        .add_root_certificate("/dev/null")
        .connect(url.as_str())
        .expect("connect");
    let sub = nc
        .subscribe("mister-smith.system.all.*")
        .expect("subscribe");
    nc.flush().expect("flush");
    let bogus = json!({"message_type": "system_health_check", "payload": {"report": {
        "daemon_id": "odd", "uptime_seconds": 1.0, "nats": "connected\"\n", "queued": 0,
        "queue_capacity": 1, "agents": []}}})
    .to_string();
    std::thread::spawn(move || {
        for m in sub.messages() {
            let _ = m.respond(bogus.as_bytes());
        }
    });

    for args in [&["status"][..], &["status", "--format", "prometheus"][..]] {
        let (st, out, err) = run_cli_stdin(args, &[("NATS_URL", url.as_str())], None);
        assert_eq!(st.code(), Some(0), "{args:?}: {out}{err}");
        assert!(out.contains("coder-1"), "{out}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("left out"), "{err}");
    }
    let (st, out, err) = run_cli_stdin(&["health"], &[("NATS_URL", url.as_str())], None);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
}
