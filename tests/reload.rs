//! Reload: the daemon reads its config again (`reload`, SIGHUP) and
//! changes only what changed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{
    fake_agent, json_lines, records, run_cli_stdin, wait_gone, Daemon, NatsServer, TempDir,
};

const T: Duration = Duration::from_secs(20);

/// Each agent's pid, as `status --json` shows it.
fn pids(d: &Daemon) -> BTreeMap<String, u64> {
    let (st, out, err) = d.cli(&["status", "--json"]);
    assert!(st.success(), "{err}");
    let agents: Vec<Value> = serde_json::from_str(&out).expect("status --json");
    agents
        .iter()
        .map(|a| {
            (
                a["agent_id"].as_str().unwrap_or_default().to_string(),
                a["pid"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn reload_adds_removes_and_changes_agents_and_keeps_the_rest_running() {
    let dir = std::sync::Arc::new(TempDir::new("reload"));
    let record = dir.join("record.jsonl");
    let child_file = dir.join("removed.child");
    let agent = |id: &str| fake_agent(id, json!({"FAKE_CLAUDE_RECORD": record}));
    // The agent to be removed runs a child in its group.
    let removed = json!({
        "id": "old",
        "command": "sh",
        "args": ["-c", format!("sleep 600 & echo $! > {}; wait", child_file.display())],
        "protocol": "none",
    });
    let mut config = json!({"agents": [
        agent("keep-1"), agent("keep-2"), agent("keep-3"), agent("change"), removed,
    ]});
    let path = dir.config(&config);
    let d = Daemon::start_file(dir.clone(), &path, &[]);
    d.wait_ready();
    for id in ["keep-1", "keep-2", "keep-3", "change", "old"] {
        d.wait_seen(&format!("agent {id}: initializing -> idle"), T);
    }
    let before = pids(&d);
    let old_child: u32 = std::fs::read_to_string(&child_file)
        .expect("the removed agent's child")
        .trim()
        .parse()
        .expect("a pid");

    // A task runs on the agent to be changed; its result waits on a gate.
    let gate = dir.join("gate");
    std::fs::write(&gate, b"").expect("gate file");
    let socket = d.socket();
    let prompt = format!("long job [[fake:gate={}]]", gate.display());
    let waiter = std::thread::spawn(move || {
        run_cli_stdin(
            &[
                "--socket",
                socket.to_str().expect("utf-8"),
                "send",
                "--to",
                "change",
                "--wait",
                &prompt,
            ],
            &[],
            None,
        )
    });
    d.wait_seen("agent change: idle -> busy", T);

    // An invalid config changes nothing, and says every problem.
    let mut bad = config.clone();
    bad["agents"][1]["id"] = json!("keep-1");
    dir.config(&bad);
    let (st, out, err) = d.cli(&["reload"]);
    assert_eq!(st.code(), Some(78), "{out}{err}");
    assert!(err.contains("duplicate agent id \"keep-1\""), "{err}");
    assert_eq!(out, "");
    assert_eq!(pids(&d), before);

    // One added, one removed, one changed, three kept.
    let agents = config["agents"].as_array_mut().expect("agents");
    agents.retain(|a| a["id"] != "old");
    agents[3]["args"] = json!(["--model", "opus"]);
    agents.push(agent("new"));
    dir.config(&config);
    let (st, out, err) = d.cli(&["reload"]);
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(
        out,
        "reloaded: 1 added, 1 removed, 1 changed, 3 unchanged\n"
    );
    d.wait_seen("agent new: initializing -> idle", T);
    d.wait_seen("agent old: stopping -> terminated", T);
    assert!(
        wait_gone(old_child, T),
        "the removed agent's group lives on"
    );
    let (st, _, err) = d.cli(&["send", "--to", "old", "--wait", "hi"]);
    assert_eq!(st.code(), Some(69), "{err}");
    let (st, out, err) = d.cli(&["send", "--to", "new", "--wait", "hi"]);
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(json_lines(&out)[0]["payload"]["status"], "completed");

    // The changed agent still runs its task, in the same process.
    let now = pids(&d);
    assert_eq!(now["change"], before["change"]);
    std::fs::remove_file(&gate).expect("gate opened");
    let (st, out, err) = waiter.join().expect("the sender");
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(json_lines(&out)[0]["payload"]["status"], "completed");
    d.wait_seen("agent change: restarting with its new spec", T);
    let line = d.wait_seen("agent change: initializing -> idle (pid", T);
    let after = pids(&d);
    assert_ne!(after["change"], before["change"]);
    let started = records(&record)
        .into_iter()
        .filter(|r| r["event"] == "start" && r["pid"].as_u64() == Some(after["change"]))
        .collect::<Vec<_>>();
    assert_eq!(started.len(), 1, "{line}");
    assert!(started[0]["argv"].to_string().contains("opus"));
    for id in ["keep-1", "keep-2", "keep-3"] {
        assert_eq!(after[id], before[id], "{id} was restarted");
    }
    assert!(!after.contains_key("old"));
    // The daemon serves on.
    let (st, _, err) = d.cli(&["health"]);
    assert_eq!(st.code(), Some(0), "{err}");
}

#[test]
fn sighup_reloads_and_over_nats_new_agents_are_reachable() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = std::sync::Arc::new(TempDir::new("reload-nats"));
    let mut config = json!({
        "daemon_id": "r1",
        "transport": {"nats_url": url},
        "agents": [fake_agent("a", json!({}))],
    });
    let path = dir.config(&config);
    let d = Daemon::start_file(dir.clone(), &path, &[]);
    d.wait_seen("NATS connected", T);
    d.wait_seen("agent a: initializing -> idle", T);
    let pid_a = pids(&d)["a"];
    let cli = |args: &[&str]| {
        let mut full = vec!["--config", path.to_str().expect("utf-8")];
        full.extend_from_slice(args);
        run_cli_stdin(&full, &[], None)
    };

    config["agents"] = json!([fake_agent("b", json!({}))]);
    dir.config(&config);
    d.signal(libc::SIGHUP);
    d.wait_seen("reloaded: 1 added, 1 removed, 0 changed, 0 unchanged", T);
    d.wait_seen("agent b: initializing -> idle", T);
    d.wait_seen("subscriptions after the reload", T);
    let (st, out, err) = cli(&["send", "--to", "b", "--wait", "hi"]);
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(json_lines(&out)[0]["payload"]["status"], "completed");
    let (st, _, err) = cli(&["send", "--to", "a", "--wait", "hi"]);
    assert_eq!(st.code(), Some(69), "{err}");
    assert!(wait_gone(pid_a as u32, T));

    // `reload` over NATS reaches this config's daemon.
    config["agents"] = json!([fake_agent("b", json!({})), fake_agent("c", json!({}))]);
    dir.config(&config);
    let (st, out, err) = cli(&["reload"]);
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(
        out,
        "reloaded: 1 added, 0 removed, 0 changed, 1 unchanged\n"
    );
    // What only a restart can change is refused, naming the key.
    config["message"] = json!({"queue_capacity": 7});
    dir.config(&config);
    let (st, _, err) = cli(&["reload"]);
    assert_eq!(st.code(), Some(78), "{err}");
    assert!(err.contains("message changed"), "{err}");
    // SIGTERM still stops it.
    let d = d;
    let log = d.stop();
    assert!(
        log.iter().any(|l| l.contains("all agents stopped")),
        "{log:?}"
    );
}
