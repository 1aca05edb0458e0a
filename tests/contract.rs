//! The CLI's promises under hostile input and a careless environment: no
//! input panics it (every failure is one line and a contract exit code),
//! stdin is read only as far as a message may go, credentials in URLs are
//! never shown, missing credential files are named, and a frozen daemon
//! is a timeout (75) within the caller's own wait.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::{fake_agent, free_port, kill, run_cli, Daemon, TempDir, BIN};

const T: Duration = Duration::from_secs(20);

/// Runs `mister-smith` with raw (possibly non-UTF-8) arguments, stdout to
/// `stdout`, and returns (status, stderr).
fn run_raw(args: &[&[u8]], stdout: Stdio) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(BIN);
    for a in args {
        cmd.arg(std::ffi::OsStr::from_bytes(a));
    }
    let out = cmd
        .env_remove("NATS_URL")
        .env_remove("MISTER_SMITH_SOCKET")
        .env_remove("MISTER_SMITH_CONFIG")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .expect("run mister-smith");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dev_full() -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    )
}

#[test]
fn arguments_that_are_not_utf8_are_a_usage_error_not_a_panic() {
    let dir = TempDir::new("utf8");
    let sock = dir.join("none.sock");
    let s = sock.as_os_str().as_bytes();
    for args in [
        &[&b"--socket"[..], s, b"send", b"--to", b"a", b"bad\xff"][..],
        &[b"--config", b"\xff", b"check-config"],
        &[b"--socket", s, b"status", b"\xfe"],
    ] {
        let (status, err) = run_raw(args, Stdio::null());
        assert_eq!(status.code(), Some(64), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("is not valid UTF-8"), "{err}");
    }
    let (status, err) = run_raw(
        &[b"--socket", s, b"health", b"--agent", b"\xff"],
        Stdio::null(),
    );
    assert_eq!(status.code(), Some(3), "health: {err}");
}

#[test]
fn a_full_or_closed_stdout_is_never_a_panic() {
    let (status, err) = run_raw(&[b"--version"], dev_full());
    assert_eq!(status.code(), Some(74), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // health on a full disk: UNKNOWN, as Nagios reads it, not an abort.
    let dir = TempDir::new("full");
    let sock = dir.join("none.sock");
    let (status, err) = run_raw(
        &[b"--socket", sock.as_os_str().as_bytes(), b"health"],
        dev_full(),
    );
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // health with nobody reading: the check's own state stands.
    let d = Daemon::start(
        TempDir::new("closed"),
        &json!({"agents": [fake_agent("a", json!({}))]}),
    );
    d.wait_for("agent a: initializing -> idle", T);
    let mut child = Command::new(BIN)
        .args(["--socket", d.socket().to_str().unwrap(), "health"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("health");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("health ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn send_reads_stdin_only_as_far_as_a_message_may_go() {
    let dir = TempDir::new("stdin");
    let sock = dir.join("none.sock");
    let s = sock.to_str().unwrap();
    // An endless stdin: send must stop reading and refuse it, not hold it.
    let mut child = Command::new(BIN)
        .args(["--socket", s, "send", "--to", "a"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("send");
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        while stdin.write_all(&chunk).is_ok() {}
    });
    let out = child.wait_with_output().expect("send ends");
    feeder.join().expect("feeder");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("more than max_message_size (1048576 bytes)"),
        "{err}"
    );

    // Not UTF-8: bad input (65), not an I/O error.
    let mut child = Command::new(BIN)
        .args(["--socket", s, "send", "--to", "a", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("send");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"fix it \xff\xfe")
        .expect("write");
    let out = child.wait_with_output().expect("send ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("stdin is not valid UTF-8"), "{err}");
}

#[test]
fn send_dash_reads_the_body_from_stdin() {
    let d = Daemon::start(
        TempDir::new("dash"),
        &json!({"agents": [fake_agent("a", json!({}))]}),
    );
    d.wait_for("agent a: initializing -> idle", T);
    let (status, out, err) = d.cli_with(
        &["send", "--to", "a", "--wait", "-"],
        &[],
        Some("from stdin"),
    );
    assert!(status.success(), "{err}");
    let result: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(result["payload"]["status"], "completed", "{out}");
    // A `-` that is an option's value stays one (here an agent id).
    let (status, _, err) = d.cli(&["send", "--to", "-", "hi"]);
    assert_eq!(status.code(), Some(69), "{err}");
    assert!(err.contains("no agent -"), "{err}");
}

#[test]
fn missing_credential_files_are_named_as_config_errors() {
    let dir = TempDir::new("files");
    let url = format!("nats://127.0.0.1:{}", free_port());
    for (flag, what) in [
        ("--creds", "credentials file"),
        ("--tls-ca", "CA certificate"),
    ] {
        let missing = dir.join("nope.pem");
        let m = missing.to_str().unwrap();
        let (status, _, err) = run_cli(&["--nats", &url, flag, m, "status"], &[]);
        assert_eq!(status.code(), Some(78), "{flag}: {err}");
        assert!(err.contains(what) && err.contains(m), "{flag}: {err}");
    }
}

#[test]
fn nats_urls_are_checked_and_their_credentials_never_shown() {
    let dir = TempDir::new("urls");
    let path = dir.config(&json!({"transport": {"nats_url": "http://h:1"}, "agents": []}));
    let (status, _, err) = run_cli(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(
        err.contains("transport.nats_url") && err.contains("unknown scheme"),
        "{err}"
    );
    let (status, _, err) = run_cli(&["--nats", "nats://h:99999", "status"], &[]);
    assert_eq!(status.code(), Some(64), "{err}");

    // Nothing listens: the error names the server, not its password.
    let url = format!("nats://admin:s3cret@127.0.0.1:{}", free_port());
    let (status, out, err) = run_cli(&["--nats", &url, "health"], &[]);
    assert_eq!(status.code(), Some(3), "{out}{err}");
    assert!(out.contains("nats://***@127.0.0.1"), "{out}");
    assert!(
        !out.contains("s3cret") && !err.contains("s3cret"),
        "{out}{err}"
    );
    let path = dir.config(&json!({"transport": {"nats_url": url}, "agents": []}));
    let d = Daemon::start_file(dir, &path, &[]);
    d.wait_for("not reachable", T);
    let log = d.stop();
    assert!(!log.iter().any(|l| l.contains("s3cret")), "{log:#?}");
}

#[test]
fn a_frozen_daemon_is_a_timeout_within_the_callers_wait() {
    let d = Daemon::start(
        TempDir::new("frozen"),
        &json!({"agents": [fake_agent("a", json!({}))]}),
    );
    d.wait_for("agent a: initializing -> idle", T);
    kill(d.pid(), libc::SIGSTOP);
    let (status, out, _) = d.cli(&["health", "--timeout", "300"]);
    assert_eq!(status.code(), Some(3), "{out}");
    // Within health's own --timeout, not the 5 s a confirmation may take.
    let ms: u64 = out
        .split("did not answer within ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(ms <= 300, "{out}");
    let (status, _, err) = d.cli(&["status"]);
    assert_eq!(status.code(), Some(75), "{err}");
    // A daemon that was expected and is frozen is what --expect is for.
    let (status, out, _) = d.cli(&["health", "--timeout", "300", "--expect", "1"]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("0 of 1 expected daemons answered"), "{out}");
    kill(d.pid(), libc::SIGCONT);
    let socket = d.socket();
    d.stop();
    // And one whose socket is gone (it was stopped, or crashed).
    let s = socket.to_str().unwrap();
    let (status, out, _) = run_cli(&["--socket", s, "health", "--expect", "1"], &[]);
    assert_eq!(status.code(), Some(2), "{out}");
    let (status, out, _) = run_cli(&["--socket", s, "health"], &[]);
    assert_eq!(status.code(), Some(3), "{out}");
    // Nagios plugins answer even a bad argument with UNKNOWN.
    let (status, out, _) = run_cli(&["--socket", s, "health", "--timeout", "0"], &[]);
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(out.contains("--timeout 0"), "{out}");
}

/// Half of a pair is refused, not dropped: a client certificate without its
/// key (or the reverse), and a `--meta` key given twice (which one won?).
#[test]
fn half_given_settings_are_refused_not_dropped() {
    let (status, _, err) = run_cli(
        &[
            "--nats",
            "nats://127.0.0.1:1",
            "--tls-key",
            "/etc/hostname",
            "status",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(64), "{err}");
    assert!(err.contains("needs its certificate"), "{err}");
    let (status, _, err) = run_cli(
        &["--nats", "nats://127.0.0.1:1", "status"],
        &[("NATS_CERT", "/etc/hostname")],
    );
    assert_eq!(status.code(), Some(64), "{err}");
    assert!(err.contains("needs its key"), "{err}");
    let (status, _, err) = run_cli(
        &[
            "--socket",
            "/nonexistent.sock",
            "send",
            "--to",
            "a",
            "--meta",
            "k=1",
            "--meta",
            "k=2",
            "hi",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(65), "{err}");
    assert!(err.contains("--meta \"k\" is given twice"), "{err}");
}
