//! Hostile names, secrets that must not leak, NATS authentication (token,
//! user and password, TLS) and the local socket's permissions.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::{fake_agent, run_cli, run_cli_stdin, Daemon, NatsServer, TempDir};

const T: Duration = Duration::from_secs(20);

const BAD_NAMES: &[&str] = &[
    "a.b",
    "x*",
    "x.>",
    ">",
    "with space",
    "tab\there",
    "bell\u{7}",
    "ünï",
    "any",
    "all",
    "system",
];

#[test]
fn subject_breaking_names_are_refused_in_config_and_in_send() {
    let long = "x".repeat(65);
    let mut names: Vec<&str> = BAD_NAMES.to_vec();
    names.push(&long);
    let dir = TempDir::new("names");
    let agents: Vec<_> = names
        .iter()
        .map(|n| json!({"id": n, "type": n, "command": "sh", "protocol": "none"}))
        .collect();
    let path = dir.config(&json!({"daemon_id": "bad.daemon", "agents": agents}));
    let (status, _, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78));
    // One problem for the daemon id, and one each for every id and type.
    assert_eq!(err.lines().count(), 1 + 2 * names.len(), "{err}");
    for (i, _) in names.iter().enumerate() {
        assert!(err.contains(&format!("agents[{i}].id: ")), "{err}");
        assert!(err.contains(&format!("agents[{i}].type: ")), "{err}");
    }

    let sock = dir.join("none.sock");
    let s = sock.to_str().unwrap();
    for n in &names {
        for flag in ["--to", "--agent-type"] {
            if *n == "any" || *n == "all" {
                continue;
            }
            let (status, _, err) = run_cli(&["--socket", s, "send", flag, n, "hi"], &[]);
            assert_eq!(status.code(), Some(65), "{flag} {n:?}: {err}");
        }
        let (status, _, err) = run_cli(&["--socket", s, "status", n], &[]);
        assert_eq!(status.code(), Some(65), "status {n:?}: {err}");
    }
    let long_key = format!("{}=v", "k".repeat(65));
    let long_value = format!("k={}", "v".repeat(1025));
    for meta in [
        long_key.as_str(),
        long_value.as_str(),
        "bad key=v",
        "k=line\nbreak",
    ] {
        let (status, _, err) = run_cli(
            &["--socket", s, "send", "--to", "a", "--meta", meta, "hi"],
            &[],
        );
        assert_eq!(status.code(), Some(65), "--meta {meta:?}: {err}");
    }
}

#[test]
fn secrets_never_reach_logs_status_or_help() {
    let server = NatsServer::start_with(&["--auth", "tok-SECRET-1"]);
    let dir = TempDir::new("secrets");
    let mut agent = fake_agent(
        "keeper",
        json!({"ANTHROPIC_API_KEY": "sk-SECRET-3", "FAKE_CLAUDE_TURNS": "1"}),
    );
    agent["health"] = json!({"command": "true", "interval_ms": 100});
    let config = json!({
        "transport": {"nats_url": server.url(), "token": "tok-SECRET-1"},
        "agents": [agent],
    });
    let d = Daemon::start_with(dir, &config, &[("MISTER_SMITH_LOG", "trace")]);
    d.wait_seen("NATS connected", T);
    d.wait_seen("agent keeper: initializing -> idle", T);
    let cfg = d.dir.join("mister-smith.json");
    let cfg = cfg.to_str().unwrap();
    let mut outputs = Vec::new();
    for args in [
        vec!["--config", cfg, "status"],
        vec!["--config", cfg, "status", "--json"],
        vec!["--config", cfg, "health"],
        vec![
            "--config",
            cfg,
            "send",
            "--to",
            "keeper",
            "--stream",
            "show me your env",
        ],
        vec!["--help"],
        vec!["send", "--help"],
        vec!["run", "--help"],
    ] {
        let (_, out, err) = run_cli_stdin(
            &args,
            &[
                ("MISTER_SMITH_LOG", "trace"),
                ("NATS_TOKEN", "tok-SECRET-1"),
            ],
            None,
        );
        outputs.push(out);
        outputs.push(err);
    }
    let log = d.stop().join("\n");
    outputs.push(log);
    for text in outputs {
        assert!(!text.contains("SECRET"), "a secret leaked:\n{text}");
    }
}

fn tls_files(dir: &TempDir) -> bool {
    let sh = format!(
        "set -e; cd {}; \
         openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=ms-test-ca; \
         openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other-ca.pem -days 2 -subj /CN=other-ca; \
         openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost; \
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf; \
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf",
        dir.path().display()
    );
    Command::new("sh")
        .args(["-c", &sh])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn nats_credentials_are_used_and_wrong_ones_fail_clearly() {
    // Token.
    let server = NatsServer::start_with(&["--auth", "right-token"]);
    let url = server.url();
    let d = Daemon::start_with(
        TempDir::new("auth-token"),
        &json!({"transport": {"token": "right-token"}, "agents": [fake_agent("t1", json!({}))]}),
        &[("NATS_URL", url.as_str())],
    );
    d.wait_seen("NATS connected", T);
    d.wait_seen("agent t1: initializing -> idle", T);
    let (status, _, err) = run_cli(
        &[
            "--nats",
            &url,
            "--token",
            "right-token",
            "send",
            "--to",
            "t1",
            "--wait",
            "hi",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(0), "{err}");
    let (status, _, err) = run_cli(
        &[
            "--nats", &url, "--token", "wrong", "send", "--to", "t1", "hi",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.to_lowercase().contains("authorization"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (status, _, err) = run_cli(&["--nats", &url, "status"], &[]);
    assert_eq!(status.code(), Some(78), "no token: {err}");
    drop(d);

    // User and password; a daemon with the wrong ones keeps trying and says why.
    let server = NatsServer::start_with(&["--user", "ms", "--pass", "right-pass"]);
    let url = server.url();
    let (status, out, err) = run_cli(
        &[
            "--nats",
            &url,
            "--user",
            "ms",
            "--password",
            "right-pass",
            "health",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(3), "{out}{err}");
    assert!(
        out.contains("no responders") || out.contains("no daemon"),
        "{out}"
    );
    let (status, _, err) = run_cli(
        &[
            "--nats",
            &url,
            "--user",
            "ms",
            "--password",
            "nope",
            "status",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(78), "{err}");
    let bad = Daemon::start_with(
        TempDir::new("auth-bad"),
        &json!({"transport": {"user": "ms", "password": "nope"}, "agents": [fake_agent("u1", json!({}))]}),
        &[("NATS_URL", url.as_str())],
    );
    let line = bad.wait_seen("the daemon keeps trying", T);
    assert!(line.to_lowercase().contains("authorization"), "{line}");
    assert!(!line.contains("nope"), "{line}");
    // Meanwhile the local socket works, and says someone must act.
    bad.wait_seen("agent u1: initializing -> idle", T);
    let (status, out, _) = bad.cli(&["health"]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("NATS refuses its credentials"), "{out}");
    let log = bad.log();
    assert!(
        !log.iter().any(|l| l.contains("NATS connection closed")),
        "{log:#?}"
    );
    drop(bad);
    let good = Daemon::start_with(
        TempDir::new("auth-user"),
        &json!({"transport": {"user": "ms", "password": "right-pass"}, "agents": [fake_agent("u1", json!({}))]}),
        &[("NATS_URL", url.as_str())],
    );
    good.wait_seen("NATS connected", T);
    good.wait_seen("agent u1: initializing -> idle", T);
    let (status, _, err) = run_cli(
        &[
            "--nats",
            &url,
            "--user",
            "ms",
            "--password",
            "right-pass",
            "send",
            "--to",
            "u1",
            "--wait",
            "hi",
        ],
        &[("NATS_PASSWORD", "ignored-when-the-flag-is-given")],
    );
    assert_eq!(status.code(), Some(0), "{err}");
}

#[test]
fn nats_over_tls_with_the_right_ca_and_not_with_another() {
    let certs = TempDir::new("tls");
    assert!(
        tls_files(&certs),
        "openssl could not make test certificates (bash .ci/run installs openssl)"
    );
    let p = |f: &str| certs.join(f).display().to_string();
    let server = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        &p("server.pem"),
        "--tlskey",
        &p("server.key"),
    ]);
    let url = format!("tls://127.0.0.1:{}", server.port);
    let d = Daemon::start_with(
        TempDir::new("tls-daemon"),
        &json!({"transport": {"nats_url": url, "tls_ca": p("ca.pem")}, "agents": [fake_agent("s1", json!({}))]}),
        &[],
    );
    d.wait_seen("NATS connected", T);
    d.wait_seen("agent s1: initializing -> idle", T);
    let (status, out, err) = run_cli(
        &[
            "--nats",
            &url,
            "--tls-ca",
            &p("ca.pem"),
            "send",
            "--to",
            "s1",
            "--wait",
            "secure",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(0), "{out}{err}");
    let (status, _, err) = run_cli(
        &["--nats", &url, "--tls-ca", &p("other-ca.pem"), "status"],
        &[],
    );
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn the_local_socket_is_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start(
        TempDir::new("perm"),
        &json!({"agents": [fake_agent("p1", json!({}))]}),
    );
    d.wait_ready();
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    // Another user (nobody) cannot talk to it, even with a path it can reach.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("runuser")
        .args([
            "-u",
            "nobody",
            "--",
            crate::support::BIN,
            "--socket",
            d.socket().to_str().unwrap(),
            "status",
        ])
        .output();
    match out {
        Ok(o) if o.status.code() != Some(127) && unsafe_is_root() => {
            assert_eq!(
                o.status.code(),
                Some(69),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("Permission denied"), "{err}");
        }
        // Not root, or no runuser: the mode check above stands alone.
        _ => {}
    }
    // A file that is not a socket is never removed to make room.
    let dir = TempDir::new("not-a-socket");
    let victim = dir.join("precious.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let config = dir.config(&json!({"agents": [fake_agent("v", json!({}))]}));
    let (status, _, err) = run_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "--socket",
            victim.to_str().unwrap(),
            "run",
        ],
        &[("XDG_RUNTIME_DIR", dir.path().to_str().unwrap())],
    );
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The run directory holds the state file that says which processes to
/// kill: one another user planted (a shared /tmp) or a symbolic link is
/// refused, and a loose mode on one of ours is tightened.
#[test]
fn a_run_directory_others_could_write_is_refused_or_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let run = |dir: &TempDir| {
        let config = dir.config(&json!({"agents": [fake_agent("r", json!({}))]}));
        run_cli(
            &[
                "--config",
                config.to_str().unwrap(),
                "--socket",
                dir.join("s.sock").to_str().unwrap(),
                "run",
            ],
            &[("XDG_RUNTIME_DIR", dir.path().to_str().unwrap())],
        )
    };
    // A symbolic link where the daemon's directory goes.
    let linked = TempDir::new("rundir-link");
    std::fs::create_dir(linked.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(linked.join("elsewhere"), linked.join("mister-smith")).unwrap();
    let (status, _, err) = run(&linked);
    assert_eq!(status.code(), Some(74), "{err}");
    assert!(err.contains("is a symbolic link"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Another user's directory (its state file could name any of ours).
    if unsafe_is_root() {
        let planted = TempDir::new("rundir-planted");
        let base = planted.join("mister-smith");
        std::fs::create_dir(&base).unwrap();
        std::os::unix::fs::chown(&base, Some(65534), Some(65534)).unwrap();
        let (status, _, err) = run(&planted);
        assert_eq!(status.code(), Some(74), "{err}");
        assert!(err.contains("belongs to uid 65534"), "{err}");
    }

    // Ours, but world-writable: made private, and the daemon runs.
    let loose = TempDir::new("rundir-loose");
    let base = loose.join("mister-smith");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = Daemon::start(loose, &json!({"agents": [fake_agent("r", json!({}))]}));
    d.wait_ready();
    d.wait_seen("made 0700", T);
    let mode = std::fs::metadata(&base).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "run directory mode {mode:o}");
}

/// An agent's stderr and a config file are not the daemon's to print raw: a
/// carriage return or an escape sequence in them cannot forge a log line or
/// drive the operator's terminal, and a problem stays one line.
#[test]
fn control_characters_from_agents_and_configs_are_escaped() {
    let dir = TempDir::new("ctl-chars");
    let agent = json!({
        "id": "noisy", "command": "/bin/sh", "protocol": "none",
        "args": ["-c", "printf 'hello\\r2026-01-01 ERROR forged\\033[2J\\n' >&2; exec sleep 100"],
    });
    let d = Daemon::start(dir, &json!({"agents": [agent]}));
    let line = d.wait_seen("hello", T);
    assert!(!line.contains('\r') && !line.contains('\u{1b}'), "{line:?}");
    assert!(
        line.contains("hello\\r2026-01-01 ERROR forged\\u{1b}[2J"),
        "{line:?}"
    );
    drop(d);

    let dir = TempDir::new("ctl-config");
    let path = dir.join("mister-smith.json");
    std::fs::write(&path, "{\"agents\": [], \"\\u001b[2J\\nFAKE\": 1}").unwrap();
    let (status, _, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}
