//! `check-config` and config loading, through the binary.

use serde_json::json;

use crate::support::{fake_claude, run_cli, TempDir};

#[test]
fn a_valid_config_is_ok_with_its_agent_count() {
    let dir = TempDir::new("cc-ok");
    let path = dir.config(&json!({
        "daemon_id": "host-a",
        "agents": [
            {"id": "coder", "replicas": 3, "command": fake_claude()},
            {"id": "plain", "command": "sleep", "args": ["10"], "protocol": "none"}
        ]
    }));
    let (status, out, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert_eq!(out, "ok: 4 agents\n");
}

#[test]
fn every_problem_of_a_bad_config_is_listed_and_exits_78() {
    let dir = TempDir::new("cc-bad");
    let path = dir.config(&json!({
        "daemon_id": "host.a",
        "transport": {"nats_url": "nats://127.0.0.1:4222", "colour": "red"},
        "agents": [
            {"id": "coder-1", "command": "", "restart": {"policy": "alwyas", "multiplier": 0}},
            {"id": "x*", "protocol": "telepathy", "stop_timeout_ms": "soon"},
            {"id": "coder-1", "health": {"interval_ms": 5000, "idel_timeout_ms": 1}},
            {"id": "any"}
        ]
    }));
    let (status, out, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78), "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    let want = [
        "daemon_id: \"host.a\" contains '.'",
        "transport.colour: unknown key",
        "agents[0].command: must not be empty",
        "agents[0].restart.policy: unknown policy \"alwyas\"",
        "agents[0].restart.multiplier: 0 is out of range",
        "agents[1].id: \"x*\" contains '*'",
        "agents[1].protocol: unknown protocol \"telepathy\"",
        "agents[1].stop_timeout_ms: expected a whole number",
        "agents[2].health.idel_timeout_ms: unknown key (did you mean \"idle_timeout_ms\"?)",
        "agents[3].id: \"any\" is reserved",
    ];
    for w in want {
        let full = format!("mister-smith: error: config {}: {w}", path.display());
        assert!(
            lines.iter().any(|l| l.starts_with(&full)),
            "missing {full:?} in:\n{err}"
        );
    }
    assert_eq!(lines.len(), want.len(), "unexpected extra lines:\n{err}");
}

#[test]
fn bad_accounts_and_retries_are_listed_too() {
    let dir = TempDir::new("cc-accounts");
    let fake = fake_claude();
    let path = dir.config(&json!({
        "message": {"retry_attempts": 101, "retry_delay_ms": -1},
        "accounts": {
            "team": {"daily_budget_usd": -5, "hold_initial_ms": 60000, "hold_max_ms": 1000,
                     "overload_threshold": 0, "hold_ms": 1},
            "Default": {"daily_budget_usd": 1},
            "a.b": {}
        },
        "agents": [
            {"id": "a", "command": fake, "account": "team"},
            {"id": "b", "command": fake, "account": "x y"}
        ]
    }));
    let (status, _, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78), "{err}");
    for w in [
        "message.retry_attempts: 101 is more than 100",
        "message.retry_delay_ms: expected a whole number",
        "accounts.team.hold_ms: unknown key",
        "accounts.team.daily_budget_usd: expected a number of dollars above 0, found -5",
        "accounts.team.hold_max_ms: 1000 is less than hold_initial_ms (60000)",
        "accounts.team.overload_threshold: 0 is less than 1",
        "accounts.a.b: account name \"a.b\" contains '.'",
        "agents[1].account: \"x y\" contains ' '",
    ] {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
    // With the agents sound, an account nobody names is a typo to fix.
    let path = dir.config(&json!({
        "accounts": {"Default": {"daily_budget_usd": 1}},
        "agents": [{"id": "a", "command": fake}]
    }));
    let (status, _, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(
        err.contains("accounts.Default: no agent names this account"),
        "{err}"
    );
}

#[test]
fn bad_jetstream_settings_are_listed_and_durable_mode_needs_nats() {
    let dir = TempDir::new("cc-jetstream");
    let fake = fake_claude();
    let path = dir.config(&json!({
        "transport": {"jetstream": {
            "stream": "tasks.v1", "results_stream": "tasks.v1", "replicas": 9,
            "ack_wait_ms": 10, "max_deliver": 0, "duplicate_window_ms": 0,
            "results_ttl_ms": 31_600_000_000u64, "ackwait_ms": 1
        }},
        "agents": [{"id": "a", "command": fake}]
    }));
    let (status, _, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78), "{err}");
    for w in [
        "transport.jetstream.stream: \"tasks.v1\" may contain only letters, digits, '-' and '_'",
        "transport.jetstream.replicas: 9 is more than 5",
        "transport.jetstream.ack_wait_ms: 10 is less than 1000",
        "transport.jetstream.max_deliver: 0 is less than 1",
        "transport.jetstream.duplicate_window_ms: 0 is less than 1000",
        "transport.jetstream.results_ttl_ms: 31600000000 is more than a year",
        "transport.jetstream.ackwait_ms: unknown key (did you mean \"ack_wait_ms\"?)",
    ] {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
    // Valid, but `run` with no NATS to be durable on is a config error.
    let path = dir.config(&json!({
        "transport": {"jetstream": {}},
        "agents": [{"id": "a", "command": fake}]
    }));
    let (status, out, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert!(status.success(), "{out}{err}");
    let sock = dir.join("s.sock");
    let (status, _, err) = run_cli(
        &[
            "--config",
            path.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
            "run",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains("durable tasks need NATS"), "{err}");
}

#[test]
fn duplicate_ids_after_replica_expansion_are_caught() {
    let dir = TempDir::new("cc-dup");
    let path = dir.config(&json!({"agents": [{"id": "w", "replicas": 2}, {"id": "w-2"}]}));
    let (status, _, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78));
    assert!(
        err.contains("agents[1].id: duplicate agent id \"w-2\""),
        "{err}"
    );
}

#[test]
fn syntax_errors_and_missing_files_exit_78_with_one_line() {
    let dir = TempDir::new("cc-syntax");
    let path = dir.join("mister-smith.json");
    std::fs::write(&path, "{\"agents\": [}").unwrap();
    let (status, _, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("not valid JSON") && err.contains("line 1"),
        "{err}"
    );

    let missing = dir.join("nope.json");
    let (status, _, err) = run_cli(
        &["--config", missing.to_str().unwrap(), "check-config"],
        &[],
    );
    assert_eq!(status.code(), Some(78));
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn the_config_is_found_through_the_environment() {
    let dir = TempDir::new("cc-env");
    let path = dir.config(&json!({"agents": [{"id": "a", "command": "sh"}]}));
    let (status, out, _) = run_cli(
        &["check-config"],
        &[("MISTER_SMITH_CONFIG", path.to_str().unwrap())],
    );
    assert_eq!(status.code(), Some(0));
    assert_eq!(out, "ok: 1 agent\n");
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let (status, _, err) = run_cli(&["frobnicate"], &[]);
    assert_eq!(status.code(), Some(64));
    assert!(err.starts_with("mister-smith: error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (status, out, _) = run_cli(&["--help"], &[]);
    assert_eq!(status.code(), Some(0));
    assert!(out.contains("check-config") && out.contains("run"), "{out}");
    let (status, _, _) = run_cli(&[], &[]);
    assert_eq!(status.code(), Some(64));
    let (status, out, _) = run_cli(&["--version"], &[]);
    assert_eq!(status.code(), Some(0));
    assert!(out.starts_with("mister-smith "), "{out}");
}

#[test]
fn missing_programs_and_directories_are_config_problems() {
    let dir = TempDir::new("cc-missing");
    let path = dir.config(&json!({"agents": [
        {"id": "a", "command": "no-such-program-anywhere"},
        {"id": "b", "command": "./bin/not-there", "replicas": 2},
        {"id": "c", "command": "sh", "working_dir": "nowhere"}
    ]}));
    let (status, _, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(
        err.contains(
            "agents[0].command: \"no-such-program-anywhere\" is not found in the agent's PATH"
        ),
        "{err}"
    );
    assert!(
        err.contains("agents[1].command: ")
            && err.contains("bin/not-there\" is not an executable file"),
        "{err}"
    );
    assert!(
        err.contains("agents[2].working_dir: ") && err.contains("nowhere is not a directory"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 3, "{err}");
}

/// Configs that parse but could never run (or would run something other
/// than what the operator reads) fail the check, each at its JSON path.
#[test]
fn configs_this_host_cannot_run_fail_the_check() {
    let dir = TempDir::new("cc-host");
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .expect("fs.nr_open")
        .trim()
        .parse()
        .expect("a number");
    let script = dir.join("agent.sh");
    std::fs::write(&script, "#!/nonexistent/interpreter -x\necho hi\n").expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let write_script = |name: &str, text: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("script");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        p.display().to_string()
    };
    let crlf = write_script("crlf.sh", b"#!/bin/sh\r\necho hi\r\n");
    let bare = write_script("bare.sh", b"#!\necho hi\n");
    let via_env = write_script("env.sh", b"#!/usr/bin/env no-such-interpreter-anywhere\n");
    let bom = write_script("bom.sh", b"\xEF\xBB\xBF#!/bin/sh\necho hi\n");
    let fine = write_script("fine.sh", b"#!/usr/bin/env sh\necho hi\n");
    let fc = fake_claude();
    let fc = fc.to_str().unwrap();
    // Written by hand: a JSON value cannot hold a key twice.
    let text = format!(
        r#"{{"agents": [
            {{"id": "files", "command": "{fc}", "limits": {{"open_files": {}}}}},
            {{"id": "script", "command": "{}"}},
            {{"id": "slow", "command": "{fc}", "restart": {{"max_delay_ms": 18446744073709551615}},
              "health": {{"interval_ms": 604800001}}}},
            {{"id": "twice", "command": "{fc}", "restart": {{"policy": "always"}},
              "restart": {{"policy": "never"}}}},
            {{"id": "crlf", "command": "{crlf}"}},
            {{"id": "bare", "command": "{bare}"}},
            {{"id": "via-env", "command": "{via_env}"}},
            {{"id": "bom", "command": "{bom}"}},
            {{"id": "fine", "command": "{fine}"}},
            {{"id": "own-path", "command": "fake-claude", "env": {{"PATH": "{fc_dir}"}}}},
            {{"id": "no-path", "command": "sh", "env": {{"PATH": "/nowhere"}}}}
        ], "message": {{"default_timeout_ms": 604800001}}}}"#,
        nr_open + 1,
        script.display(),
        fc_dir = std::path::Path::new(fc).parent().unwrap().display(),
    );
    let path = dir.join("mister-smith.json");
    std::fs::write(&path, text).expect("config");
    let (status, out, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78), "stdout: {out}\nstderr: {err}");
    let want = [
        format!(
            "agents[0].limits.open_files: {} is more than this system allows (fs.nr_open = {nr_open})",
            nr_open + 1
        ),
        format!(
            "agents[1].command: {}: its interpreter /nonexistent/interpreter (the #! line) is not an executable file",
            script.display()
        ),
        "agents[2].restart.max_delay_ms: 18446744073709551615 is more than a week".into(),
        "agents[2].health.interval_ms: 604800001 is more than a week".into(),
        "agents[3].restart: duplicate key (only the last would count)".into(),
        "message.default_timeout_ms: 604800001 is more than a week".into(),
        format!("agents[4].command: {crlf}: its #! line ends in a carriage return"),
        format!("agents[5].command: {bare}: its #! line names no interpreter"),
        format!("agents[6].command: {via_env}: its #! line runs no-such-interpreter-anywhere through env"),
        format!("agents[7].command: {bom}: a byte-order mark comes before its #! line"),
        "agents[10].command: \"sh\" is not found in the agent's PATH".into(),
    ];
    let lines: Vec<&str> = err.lines().collect();
    for w in &want {
        let full = format!("mister-smith: error: config {}: {w}", path.display());
        assert!(
            lines.iter().any(|l| l.starts_with(&full)),
            "missing {full:?} in:\n{err}"
        );
    }
    assert_eq!(lines.len(), want.len(), "unexpected extra lines:\n{err}");
}

/// Execute bits are not enough: the program and the working directory must
/// be usable by the user who runs the check (as the daemon will be).
#[test]
fn programs_another_user_cannot_run_are_problems_for_that_user() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return; // Only root can set up another user's view here.
    }
    let dir = TempDir::new("cc-other-user");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = dir.join("private.sh");
    std::fs::write(&private, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let locked = dir.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.config(&json!({"agents": [
        {"id": "p", "command": private, "working_dir": locked}
    ]}));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", crate::support::BIN])
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output();
    let Some(out) = out.ok().filter(|o| o.status.code() != Some(127)) else {
        return; // No runuser here.
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("agents[0].command: \""), "{err}");
    assert!(err.contains("is not an executable file"), "{err}");
    assert!(err.contains("cannot be entered by this user"), "{err}");
    // Root itself may run both.
    let (status, _, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(0), "{err}");
}

#[test]
fn bad_transcript_settings_are_listed() {
    let dir = TempDir::new("cc-logs");
    let fake = fake_claude();
    let path = dir.config(&json!({
        "log_dir": "",
        "logs": {"retain_days": 0, "max_mb": "big", "transcripts": "yes", "keep": 1},
        "agents": [{"id": "a", "command": fake}]
    }));
    let (status, _, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78), "{err}");
    for w in [
        "log_dir: must not be empty",
        "logs.retain_days: 0 is less than 1",
        "logs.max_mb: expected",
        "logs.transcripts: expected true or false",
        "logs.keep: unknown key",
    ] {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
    let path = dir.config(&json!({
        "log_dir": "/dev/null",
        "agents": [{"id": "a", "command": fake}]
    }));
    let (status, _, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(
        err.contains("log_dir: /dev/null is not a directory"),
        "{err}"
    );
    let path = dir.config(&json!({
        "log_dir": "/var/log/mister-smith",
        "logs": {"retain_days": 30, "max_mb": 10_000, "transcripts": false},
        "agents": [{"id": "a", "command": fake}]
    }));
    let (status, out, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert!(status.success(), "{out}{err}");
}
