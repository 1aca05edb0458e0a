//! What only NATS does: several daemons on one server, and clients that are
//! not mister-smith.

// The blocking `nats` crate is deprecated upstream; it is the crate the
// daemon uses, and here it plays "a client that is not ours".
#![allow(deprecated)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{fake_agent, json_lines, run_cli_stdin, Daemon, NatsServer, TempDir, BIN};

const T: Duration = Duration::from_secs(20);

fn daemon(name: &str, server: &NatsServer, config: Value) -> Daemon {
    let url = server.url();
    let d = Daemon::start_with(TempDir::new(name), &config, &[("NATS_URL", url.as_str())]);
    d.wait_seen("NATS connected", T);
    d
}

fn raw_client(server: &NatsServer) -> nats::Connection {
    nats::Options::new()
        .reconnect_delay_callback(|_| Duration::ZERO)
        .connect(server.url().as_str())
        .expect("raw NATS client")
}

#[test]
fn any_spreads_tasks_over_two_daemons() {
    let server = NatsServer::start();
    let worker = |id: &str| {
        let mut a = fake_agent(id, json!({}));
        a["type"] = json!("worker");
        a
    };
    let a = daemon(
        "any-a",
        &server,
        json!({"daemon_id": "host-a", "agents": [worker("wa")]}),
    );
    let b = daemon(
        "any-b",
        &server,
        json!({"daemon_id": "host-b", "agents": [worker("wb")]}),
    );
    a.wait_seen("agent wa: initializing -> idle", T);
    b.wait_seen("agent wb: initializing -> idle", T);
    let input: String = (0..24).map(|n| format!("job {n}\n")).collect();
    let url = server.url();
    let (status, out, err) = run_cli_stdin(
        &[
            "--nats",
            &url,
            "send",
            "--agent-type",
            "worker",
            "--lines",
            "--wait",
        ],
        &[],
        Some(&input),
    );
    assert_eq!(status.code(), Some(0), "{err}");
    let results = json_lines(&out);
    assert_eq!(results.len(), 24);
    let on_a = results
        .iter()
        .filter(|r| r["payload"]["agent_id"] == "wa")
        .count();
    let on_b = results
        .iter()
        .filter(|r| r["payload"]["agent_id"] == "wb")
        .count();
    assert_eq!(on_a + on_b, 24);
    // A queue group picks at random: all 24 on one side has odds 2^-23.
    assert!(on_a > 0 && on_b > 0, "wa {on_a}, wb {on_b}");

    // Status and health cover both daemons.
    let (status, out, _) = run_cli_stdin(&["--nats", &url, "status", "--json"], &[], None);
    assert!(status.success());
    let agents: Vec<Value> = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = agents
        .iter()
        .filter_map(|a| a["agent_id"].as_str())
        .collect();
    assert_eq!(ids, ["wa", "wb"]);
    let (status, out, _) = run_cli_stdin(&["--nats", &url, "health"], &[], None);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("2/2 agents healthy"), "{out}");
}

#[test]
fn to_all_waits_for_a_daemon_that_acknowledges_after_another_has_answered() {
    // Nothing tells `send --to all` how many daemons will answer: it must
    // not take one daemon's result as the end when another daemon's
    // acknowledgement is still on its way.
    let server = NatsServer::start();
    let a = daemon(
        "all-a",
        &server,
        json!({"daemon_id": "host-a", "agents": [fake_agent("xa", json!({}))]}),
    );
    let b = daemon(
        "all-b",
        &server,
        json!({"daemon_id": "host-b", "agents": [fake_agent("xb", json!({}))]}),
    );
    a.wait_seen("agent xa: initializing -> idle", T);
    b.wait_seen("agent xb: initializing -> idle", T);
    // Daemon b is frozen: the server holds the task for it, and it
    // acknowledges only once thawed, after daemon a's result is out.
    b.signal(libc::SIGSTOP);
    let url = server.url();
    let mut send = std::process::Command::new(BIN)
        .args(["--nats", &url, "send", "--to", "all", "--wait", "everyone"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn send");
    let stdout = send.stdout.take().expect("stdout");
    let (tx, lines) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let first = lines.recv_timeout(T).expect("daemon a's result");
    b.signal(libc::SIGCONT);
    let mut out = vec![first];
    // The sender closes stdout when it exits.
    while let Ok(l) = lines.recv_timeout(T) {
        out.push(l);
    }
    let status = send.wait().expect("send exits");
    assert_eq!(status.code(), Some(0), "{out:?}");
    let mut agents: Vec<String> = json_lines(&out.join("\n"))
        .iter()
        .map(|r| r["payload"]["agent_id"].as_str().unwrap_or("").to_string())
        .collect();
    agents.sort();
    assert_eq!(agents, ["xa", "xb"], "{out:?}");
}

#[test]
fn a_foreign_client_gets_its_task_result_on_its_reply_subject() {
    let server = NatsServer::start();
    let d = daemon(
        "foreign",
        &server,
        json!({"agents": [fake_agent("coder-1", json!({}))]}),
    );
    d.wait_seen("agent coder-1: initializing -> idle", T);
    let nc = raw_client(&server);
    let inbox = nc.new_inbox();
    let sub = nc.subscribe(&inbox).unwrap();
    // A minimal envelope: what a script in another language would write.
    let body = json!({
        "message_type": "task_assignment",
        "payload": {"task_id": "ext-1", "prompt": "from afar"},
        "priority": 2,
    });
    nc.publish_request(
        "mister-smith.claude.coder-1.task_assignment",
        &inbox,
        body.to_string(),
    )
    .unwrap();
    nc.flush().unwrap();
    let deadline = Instant::now() + T;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = sub.next_timeout(left).expect("an answer within 20 s");
        let v: Value = serde_json::from_slice(&msg.data).unwrap();
        if v["message_type"] == "task_result" {
            break v;
        }
        assert_eq!(v["message_type"], "task_progress", "{v}");
    };
    assert_eq!(result["payload"]["task_id"], "ext-1");
    assert_eq!(result["payload"]["status"], "completed");
    assert_eq!(result["payload"]["result"], "done: from afar");
}

#[test]
fn malformed_envelopes_are_refused_by_name_and_the_daemon_carries_on() {
    let server = NatsServer::start();
    let d = daemon(
        "malformed",
        &server,
        json!({"message": {"max_message_size": 10000}, "agents": [fake_agent("coder-1", json!({}))]}),
    );
    d.wait_seen("agent coder-1: initializing -> idle", T);
    let nc = raw_client(&server);
    let subject = "mister-smith.claude.coder-1.task_assignment";
    let cases = [
        ("{not json", "not a JSON envelope"),
        (
            r#"{"message_type":"task_assignment","payload":{"task_id":"t","prompt":"p"},"colour":1}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"message_type":"task_assignment","payload":{"task_id":"t","prompt":"p"},"priority":0}"#,
            "priority: 0 is out of range",
        ),
        (
            r#"{"message_type":"task_assignment","payload":{"task_id":"t","prompt":"p"},"target_agent_id":"x.>"}"#,
            "target_agent_id",
        ),
        (
            r#"{"message_type":"task_assignment","payload":{"task_id":"t"}}"#,
            "missing field `prompt`",
        ),
        (
            r#"{"message_type":"agent_status","payload":{"task_id":"t","prompt":"p"}}"#,
            "payload",
        ),
    ];
    for (body, want) in cases {
        let reply = nc
            .request_timeout(subject, body, Duration::from_secs(5))
            .expect("an answer");
        let v: Value = serde_json::from_slice(&reply.data).unwrap();
        assert_eq!(v["message_type"], "system_alert", "{body}: {v}");
        assert_eq!(v["payload"]["code"], "bad_request", "{body}: {v}");
        let msg = v["payload"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{body}: {msg}");
    }
    // An oversize message is refused before parsing.
    let big = format!("{{\"x\":\"{}\"}}", "y".repeat(20_000));
    let reply = nc
        .request_timeout(subject, big, Duration::from_secs(5))
        .expect("an answer");
    let v: Value = serde_json::from_slice(&reply.data).unwrap();
    assert!(
        v["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("more than the limit"),
        "{v}"
    );

    let url = server.url();
    let (status, _, err) = run_cli_stdin(
        &["--nats", &url, "send", "--to", "coder-1", "--wait", "ok?"],
        &[],
        None,
    );
    assert_eq!(status.code(), Some(0), "{err}");
}

/// A server that accepts connections and then says nothing (a frozen or
/// wrong process on the port): the NATS crate would wait for its INFO
/// forever; every command gives up on it in 5 s, exits 69 and says why.
#[test]
fn a_server_that_accepts_and_never_answers_is_given_up_on() {
    // The kernel completes the handshake for connections this listener
    // never accepts; nothing is ever written to them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("nats://{}", silent.local_addr().expect("addr"));
    let started = Instant::now();
    let (status, _, err) = run_cli_stdin(
        &["--nats", url.as_str(), "send", "--to", "coder-1", "hello"],
        &[],
        None,
    );
    assert_eq!(status.code(), Some(69), "{err}");
    assert!(err.contains("no answer within 5000 ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(8), "{err}");
    // What monitoring pages on: an UNKNOWN line, in time.
    let started = Instant::now();
    let (status, out, _) = run_cli_stdin(&["--nats", url.as_str(), "health"], &[], None);
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(out.starts_with("MISTER-SMITH UNKNOWN - "), "{out}");
    assert!(started.elapsed() < Duration::from_secs(8), "{out}");
    drop(silent);
}

/// A result larger, as encoded, than the server takes (control characters
/// escape to six bytes each) still reaches its sender: cut, and saying so.
#[test]
fn a_result_larger_than_the_servers_max_payload_arrives_cut() {
    let dir = TempDir::new("payload");
    let conf = dir.join("nats.conf");
    std::fs::write(&conf, "max_payload: 65536\n").expect("nats config");
    let server = NatsServer::start_with(&["-c", conf.to_str().unwrap()]);
    let d = daemon(
        "payload",
        &server,
        json!({"agents": [fake_agent("a", json!({}))]}),
    );
    d.wait_seen("less than message.max_message_size (1048576)", T);
    d.wait_seen("agent a: initializing -> idle", T);
    let url = server.url();
    let (status, out, err) = run_cli_stdin(
        &[
            "--nats",
            &url,
            "send",
            "--to",
            "a",
            "--wait",
            "[[fake:control_text=20000]]",
        ],
        &[],
        None,
    );
    assert!(status.success(), "{err}");
    let r = &json_lines(&out)[0]["payload"];
    assert_eq!(r["status"], "completed", "{r}");
    let kept = r["result"].as_str().unwrap_or_default().len();
    assert!(kept > 5_000 && kept < 20_000, "{kept}");
    assert!(
        r["errors"][0]
            .as_str()
            .unwrap_or_default()
            .ends_with("to fit the largest message (65536 bytes)"),
        "{r}"
    );
}

/// A report larger than one message (thousands of agents, or a server
/// that takes little) arrives in parts and is joined: status and health
/// see every agent instead of leaving the daemon out.
#[test]
fn a_report_too_large_for_one_message_arrives_in_parts() {
    let dir = TempDir::new("parts");
    let conf = dir.join("nats.conf");
    std::fs::write(&conf, "max_payload: 8192\n").expect("nats config");
    let server = NatsServer::start_with(&["-c", conf.to_str().unwrap()]);
    let agents: Vec<Value> = (0..40)
        .map(|n| json!({"id": format!("plain-{n}"), "command": "sleep", "args": ["300"], "protocol": "none"}))
        .collect();
    let d = daemon("parts", &server, json!({"agents": agents}));
    for n in 0..40 {
        d.wait_seen(&format!("agent plain-{n}: initializing -> idle"), T);
    }
    let url = server.url();
    let (status, out, err) = run_cli_stdin(&["--nats", &url, "status", "--json"], &[], None);
    assert!(status.success(), "{err}");
    let listed: Vec<Value> = serde_json::from_str(out.trim()).expect("a JSON array");
    assert_eq!(listed.len(), 40, "{out}");
    let (status, out, _) = run_cli_stdin(&["--nats", &url, "health"], &[], None);
    assert!(status.success(), "{out}");
    assert!(
        out.starts_with("MISTER-SMITH OK - 40/40 agents healthy"),
        "{out}"
    );
}

/// A daemon that dies (or freezes) simply stops answering; with the fleet
/// named by --expect, health says CRITICAL instead of OK.
#[test]
fn health_with_expect_notices_a_daemon_that_vanished() {
    let server = NatsServer::start();
    let a = daemon(
        "expect-a",
        &server,
        json!({"daemon_id": "host-a", "agents": [fake_agent("ea", json!({}))]}),
    );
    let mut b = daemon(
        "expect-b",
        &server,
        json!({"daemon_id": "host-b", "agents": [fake_agent("eb", json!({}))]}),
    );
    a.wait_seen("agent ea: initializing -> idle", T);
    b.wait_seen("agent eb: initializing -> idle", T);
    let url = server.url();
    let health = |expect: &str| {
        let (status, out, _) =
            run_cli_stdin(&["--nats", &url, "health", "--expect", expect], &[], None);
        (status.code(), out)
    };
    let (code, out) = health("host-a,host-b");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.trim_end().ends_with("daemons=2"), "{out}");
    crate::support::kill(b.pid(), libc::SIGKILL);
    b.wait_exit(T);
    let (code, out) = health("host-a,host-b");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("daemon host-b did not answer"), "{out}");
    let (code, out) = health("2");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("1 of 2 expected daemons answered"), "{out}");
    // Without --expect the survivor alone is all health can know of.
    let (status, out, _) = run_cli_stdin(&["--nats", &url, "health"], &[], None);
    assert!(status.success(), "{out}");
    let (status, out, err) =
        run_cli_stdin(&["--nats", &url, "health", "--expect", "a.b"], &[], None);
    assert_eq!(status.code(), Some(3), "{out}{err}");
}

/// One config deployed on two hosts: the same agent id on two daemons. A
/// task to it runs once (not on both, printing two results), and both
/// daemons report the clash: an ALERT, CRITICAL health, and status.
#[test]
fn the_same_agent_id_on_two_daemons_runs_a_task_once_and_is_reported() {
    let server = NatsServer::start();
    let config = |host: &str| json!({"daemon_id": host, "agents": [fake_agent("twin", json!({}))]});
    let a = daemon("twin-a", &server, config("host-a"));
    a.wait_seen("agent twin: initializing -> idle", T);
    let b = daemon("twin-b", &server, config("host-b"));
    b.wait_seen("agent twin: initializing -> idle", T);
    a.wait_seen("ALERT agent twin also runs on daemon host-b", T);
    b.wait_seen("ALERT agent twin also runs on daemon host-a", T);
    let url = server.url();
    for n in 0..6 {
        let (status, out, err) = run_cli_stdin(
            &[
                "--nats",
                &url,
                "send",
                "--to",
                "twin",
                "--wait",
                &format!("once {n}"),
            ],
            &[],
            None,
        );
        assert!(status.success(), "{err}");
        assert_eq!(
            json_lines(&out).len(),
            1,
            "one result, not one per daemon: {out}"
        );
    }
    let (status, out, _) = run_cli_stdin(&["--nats", &url, "health"], &[], None);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("twin also runs on daemon host-"), "{out}");
    let (status, out, _) = run_cli_stdin(&["--nats", &url, "status"], &[], None);
    assert!(status.success());
    assert!(
        out.contains("ALSO ON host-b") && out.contains("ALSO ON host-a"),
        "{out}"
    );
}

/// The same envelope published twice (a retrying client, a replayed
/// message) runs once: the copy from the same sender is answered by the
/// first run alone, one from another sender is refused by name.
#[test]
fn the_same_envelope_twice_runs_once() {
    let server = NatsServer::start();
    let dir = TempDir::new("dedup");
    let record = dir.join("record.jsonl");
    let agent = fake_agent(
        "once",
        json!({"FAKE_CLAUDE_RECORD": record.to_str().unwrap()}),
    );
    let d = daemon("dedup", &server, json!({"agents": [agent]}));
    d.wait_seen("agent once: initializing -> idle", T);
    let nc = raw_client(&server);
    let inbox = nc.new_inbox();
    let sub = nc.subscribe(&format!("{inbox}.>")).unwrap();
    let envelope = |reply: &str| {
        json!({
            "message_id": "6f1c7c4e-6f43-4b6e-9f3a-2b7f4a1d9c10",
            "message_type": "task_assignment",
            "payload": {"task_id": "dup-1", "prompt": "only once"},
            "reply_to": reply,
        })
        .to_string()
    };
    let subject = "mister-smith.claude.once.task_assignment";
    let first = format!("{inbox}.1");
    nc.publish(subject, envelope(&first)).unwrap();
    nc.publish(subject, envelope(&first)).unwrap();
    let other = format!("{inbox}.2");
    nc.publish(subject, envelope(&other)).unwrap();
    nc.flush().unwrap();
    let deadline = Instant::now() + T;
    let (mut results, mut refusals) = (0, Vec::new());
    while results < 1 || refusals.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = sub.next_timeout(left).expect("answers within 20 s");
        let v: Value = serde_json::from_slice(&msg.data).unwrap();
        match v["message_type"].as_str() {
            Some("task_result") => {
                assert_eq!(msg.subject, first);
                results += 1;
            }
            Some("system_alert") => refusals.push((msg.subject.clone(), v)),
            _ => {}
        }
    }
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].0, other);
    assert_eq!(refusals[0].1["payload"]["code"], "duplicate");
    // Nothing more comes: no second result, no second run.
    assert!(sub.next_timeout(Duration::from_millis(500)).is_err());
    let runs = crate::support::records(&record)
        .iter()
        .filter(|r| r["event"] == "task_start")
        .count();
    assert_eq!(runs, 1);
}

/// A daemon that NATS knows is there but that does not answer (frozen,
/// overloaded) is a temporary failure (75), not "no such agent" (69): the
/// request may still be carried out once it wakes, and says so.
#[test]
fn a_frozen_daemon_over_nats_is_a_timeout_not_unavailable() {
    let server = NatsServer::start();
    let d = daemon(
        "frozen-nats",
        &server,
        json!({"agents": [fake_agent("fz", json!({}))]}),
    );
    d.wait_seen("agent fz: initializing -> idle", T);
    let url = server.url();
    let cli = |args: &[&str]| {
        let mut all = vec!["--nats", url.as_str()];
        all.extend_from_slice(args);
        let (status, out, err) = run_cli_stdin(&all, &[], None);
        (status.code(), format!("{out}{err}"))
    };
    crate::support::kill(d.pid(), libc::SIGSTOP);
    let (code, out) = cli(&["pause", "fz"]);
    assert_eq!(code, Some(75), "{out}");
    assert!(out.contains("may still be done"), "{out}");
    let (code, out) = cli(&["send", "--to", "fz", "hi"]);
    assert_eq!(code, Some(75), "{out}");
    let (code, out) = cli(&["status"]);
    assert_eq!(code, Some(75), "{out}");
    // Nobody at all for an id is still 69.
    let (code, out) = cli(&["pause", "nobody-here"]);
    assert_eq!(code, Some(69), "{out}");
    crate::support::kill(d.pid(), libc::SIGCONT);
    // The pause the client gave up on happened after all.
    let (code, out) = cli(&["status", "fz"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("paused"), "{out}");
}

/// One config with an explicit `daemon_id` copied to two hosts: two daemons
/// answer as one. `health` says so (CRITICAL), and `status` lists both.
#[test]
fn two_daemons_sharing_a_daemon_id_are_reported() {
    let server = NatsServer::start();
    let config = json!({"daemon_id": "dd", "agents": [fake_agent("s1", json!({}))]});
    let a = daemon("shared-a", &server, config.clone());
    let b = daemon("shared-b", &server, config);
    a.wait_seen("agent s1: initializing -> idle", T);
    b.wait_seen("agent s1: initializing -> idle", T);
    let url = server.url();
    let (status, out, _) = run_cli_stdin(&["--nats", &url, "health", "--expect", "dd"], &[], None);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("daemon id dd is used by 2 daemons"), "{out}");
    let (status, out, err) = run_cli_stdin(&["--nats", &url, "status", "--json"], &[], None);
    assert!(status.success(), "{err}");
    let agents: Vec<Value> = serde_json::from_str(&out).expect("a JSON array");
    assert_eq!(agents.len(), 2, "{out}");
}
