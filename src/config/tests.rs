//! The config parser's rules, checked on JSON values without files.

use super::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn problems(v: Value) -> Vec<String> {
    match parse(&v, Path::new(".")) {
        Ok(_) => Vec::new(),
        Err(ps) => ps.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn defaults_fill_a_minimal_agent() {
    let c = parse(&json!({"agents":[{"id":"a"}]}), Path::new(".")).unwrap();
    let a = &c.agents[0];
    assert_eq!(a.agent_type, "claude");
    assert_eq!(a.command, "claude");
    assert_eq!(a.protocol, Protocol::StreamJson);
    assert_eq!(a.restart, RestartPolicy::default());
    assert_eq!(a.stop_timeout, Duration::from_millis(5000));
    assert_eq!(c.message, MessageConfig::default());
}

#[test]
fn replicas_expand_and_collide() {
    let c = parse(&json!({"agents":[{"id":"w","replicas":3}]}), Path::new(".")).unwrap();
    let ids: Vec<_> = c.agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["w-1", "w-2", "w-3"]);
    let ps = problems(json!({"agents":[{"id":"w","replicas":2},{"id":"w-2"}]}));
    assert_eq!(ps, ["agents[1].id: duplicate agent id \"w-2\""]);
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let ps = problems(json!({
        "daemon_id": "a.b",
        "colour": 1,
        "agents": [
            {"id": "x*", "command": "", "restart": {"policy": "alwyas", "multiplier": 0}},
            {"id": "ok", "protocl": "none", "limits": {"memory_mb": -1}},
            {"id": "ok"}
        ]
    }));
    let want = [
        "colour: unknown key",
        "daemon_id: \"a.b\" contains '.'",
        "agents[0].id: \"x*\" contains '*'",
        "agents[0].command: must not be empty",
        "agents[0].restart.policy: unknown policy \"alwyas\"",
        "agents[0].restart.multiplier: 0 is out of range",
        "agents[1].protocl: unknown key (did you mean \"protocol\"?)",
        "agents[1].limits.memory_mb: expected a whole number",
    ];
    for w in want {
        assert!(
            ps.iter().any(|p| p.starts_with(w)),
            "missing {w:?} in {ps:#?}"
        );
    }
    assert_eq!(ps.len(), want.len(), "{ps:#?}");
}

#[test]
fn relative_paths_follow_the_config_file() {
    let c = parse(
        &json!({"agents":[{"id":"a","command":"./bin/x","working_dir":"w"}]}),
        Path::new("/etc/ms"),
    )
    .unwrap();
    assert_eq!(c.agents[0].command, "/etc/ms/./bin/x");
    assert_eq!(c.agents[0].working_dir, PathBuf::from("/etc/ms/w"));
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let c = parse(
        &json!({"transport":{"token":"s3cret","user":"u","password":"pw"},
                "agents":[{"id":"a","env":{"ANTHROPIC_API_KEY":"sk-123"}}]}),
        Path::new("."),
    )
    .unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("s3cret") && !dbg.contains("pw\"") && !dbg.contains("sk-123"));
    assert!(dbg.contains("ANTHROPIC_API_KEY"));
}

#[test]
fn recycle_thresholds_are_for_stream_json_agents() {
    let c = parse(
        &json!({"agents":[{"id":"a","recycle":{"after_tasks":1,"after_input_tokens":null}}]}),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(c.agents[0].recycle.after_tasks, Some(1));
    assert!(c.agents[0].recycle.due(1, 0));
    assert!(!c.agents[0].recycle.due(0, u64::MAX));
    let ps = problems(json!({"agents":[
        {"id":"a","protocol":"oneshot","recycle":{"after_tasks":2}},
        {"id":"b","recycle":{"after_tasks":0,"after_turns":3}}]}));
    assert_eq!(ps.len(), 3, "{ps:?}");
    assert!(
        ps[0].starts_with("agents[0].recycle: only a stream-json agent"),
        "{ps:?}"
    );
}

#[test]
fn an_agent_may_not_pick_its_own_claude_session() {
    let ps = problems(json!({"agents":[
        {"id":"a","args":["--model","x","--resume","0f6a4a46-1a8e-4d4e-9d3e-2b1c5a7e9f00"]},
        {"id":"b","protocol":"oneshot","args":["--session-id=x","--continue","--fork-session"]},
        {"id":"c","protocol":"none","command":"sh","args":["--continue"]}]}));
    assert_eq!(ps.len(), 4, "{ps:?}");
    assert!(
        ps[0].starts_with(
            "agents[0].args[2]: --resume would put every process in one claude session"
        ),
        "{ps:?}"
    );
    assert!(
        ps[1].starts_with("agents[1].args[0]: --session-id would"),
        "{ps:?}"
    );
}

#[test]
fn a_config_that_is_not_a_regular_file_is_refused_without_reading_it() {
    for path in ["/dev/zero", "/"] {
        match load_unchecked(Path::new(path)) {
            Err(ConfigError::NotAFile { .. }) => {}
            other => panic!("{path}: {other:?}"),
        }
    }
}
