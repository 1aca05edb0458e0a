//! Agents that misbehave in ways no sound agent does (the fake's fault
//! directives): every task still gets exactly its own answer, promptly,
//! and a completed, paid-for result always reaches its sender.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{fake_agent, json_lines, Daemon, TempDir};

const T: Duration = Duration::from_secs(20);

fn daemon(name: &str, agents: Value) -> Daemon {
    let d = Daemon::start(TempDir::new(name), &json!({ "agents": agents }));
    d.wait_for("initializing -> idle", T);
    d
}

/// `send --wait` of `prompt` to `agent`: (exit code, the result payload).
fn ask(d: &Daemon, agent: &str, prompt: &str) -> (i32, Value, String) {
    let (status, out, err) = d.cli(&[
        "send",
        "--to",
        agent,
        "--wait",
        "--timeout",
        "10000",
        prompt,
    ]);
    let payload = json_lines(&out)
        .into_iter()
        .last()
        .map(|e| e["payload"].clone())
        .unwrap_or(Value::Null);
    (status.code().unwrap_or(-1), payload, err)
}

#[test]
fn a_deeply_nested_progress_event_is_passed_through_not_parsed() {
    let d = daemon("nest", json!([fake_agent("a", json!({}))]));
    let (code, result, err) = ask(&d, "a", "go deep [[fake:nest=300]]");
    assert_eq!(code, 0, "{err}");
    assert_eq!(result["status"], "completed", "{result}");
    // --stream prints the deep event as it came.
    let (status, out, err) = d.cli(&["send", "--to", "a", "--stream", "again [[fake:nest=300]]"]);
    assert!(status.success(), "{err}");
    let deep = out
        .lines()
        .find(|l| l.contains("\"Deep\""))
        .expect("the deep event");
    assert!(deep.matches("{\"a\":").count() >= 300, "{deep}");
}

/// A daemon whose stderr nobody reads (`run 2>&1 | less` paused, a stalled
/// log shipper) keeps working: its log lines are dropped and counted, never
/// waited for.
#[test]
fn a_daemon_whose_stderr_is_not_read_keeps_serving() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let dir = TempDir::new("stderr");
    let config = dir.config(&json!({"agents": [fake_agent("a", json!({}))]}));
    let sock = dir.join("ms.sock");
    let s = sock.to_str().unwrap();
    let mut daemon = Command::new(crate::support::BIN)
        .args(["--config", config.to_str().unwrap(), "--socket", s, "run"])
        .env("MISTER_SMITH_LOG", "debug")
        .env("XDG_RUNTIME_DIR", dir.path())
        .env_remove("NATS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon");
    // Read until the agent is ready, then held and not read (until the
    // end): the pipe fills after ~64 KB.
    let mut stderr = std::io::BufReader::new(daemon.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("agent a: initializing -> idle") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).expect("read stderr");
        assert!(n > 0, "the daemon ended before its agent was ready");
    }
    let prompts: String = (0..5000).map(|n| format!("task {n}\n")).collect();
    let started = std::time::Instant::now();
    let (status, out, err) = crate::support::run_cli_stdin(
        &["--socket", s, "send", "--to", "a", "--lines", "--wait"],
        &[],
        Some(&prompts),
    );
    assert!(status.success(), "{err}");
    let done = json_lines(&out)
        .iter()
        .filter(|e| e["payload"]["status"] == "completed")
        .count();
    assert_eq!(done, 5000);
    let took = started.elapsed();
    let (status, _, err) = crate::support::run_cli(&["--socket", s, "status"], &[]);
    assert!(status.success(), "{err}");
    crate::support::kill(daemon.id(), libc::SIGTERM);
    let mut log = String::new();
    let _ = stderr.read_to_string(&mut log);
    let exit = daemon.wait().expect("daemon exits");
    assert!(exit.success(), "{exit}");
    let dropped: u64 = log
        .lines()
        .filter_map(|l| {
            l.split(" log lines dropped")
                .next()?
                .rsplit(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(dropped > 0, "{}", &log[log.len().saturating_sub(2000)..]);
    println!(
        "FIGURE stderr_unread_5000_tasks_ms={} log_lines_dropped={dropped}",
        took.as_millis()
    );
}

#[test]
fn a_stray_second_result_never_answers_the_next_task() {
    let d = daemon("stray", json!([fake_agent("a", json!({}))]));
    let (status, out, err) = d.cli_with(
        &["send", "--to", "a", "--lines", "--wait"],
        &[],
        Some("first [[fake:double_result]]\nsecond\n"),
    );
    assert!(status.success(), "{err}");
    let results: Vec<(String, String)> = json_lines(&out)
        .iter()
        .map(|e| {
            let p = &e["payload"];
            (
                p["result"].as_str().unwrap_or_default().to_string(),
                p["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(results.len(), 2, "{out}");
    for (text, status) in &results {
        assert_eq!(status, "completed");
        assert!(
            !text.contains("first") || !text.contains("second"),
            "{text}"
        );
    }
    assert!(
        results.iter().any(|(t, _)| t == "done: second"),
        "{results:?}"
    );
    d.wait_seen("ignored a result", T);
}

#[test]
fn an_agent_that_closes_stdout_fails_its_task_at_once() {
    let mut agent = fake_agent("a", json!({}));
    // The watchdog alone would take ten minutes.
    agent["health"] = json!({"idle_timeout_ms": 600_000});
    let d = daemon("eof", json!([agent]));
    let (code, result, err) = ask(&d, "a", "bye [[fake:close_stdout]]");
    assert_eq!(code, 1, "{err}");
    assert_eq!(result["status"], "failed", "{result}");
    let why = result["errors"][0].as_str().unwrap_or_default();
    assert_eq!(
        why,
        "the agent was taken down: closed its stdout and stayed alive"
    );
    // Restarted by policy, and useful again.
    d.wait_for("agent a: initializing -> idle", T);
    let (code, result, err) = ask(&d, "a", "again");
    assert_eq!(code, 0, "{err}");
    assert_eq!(result["status"], "completed");
}

#[test]
fn a_result_with_a_number_no_float_holds_still_answers_its_task() {
    let d = daemon("huge", json!([fake_agent("a", json!({}))]));
    let (code, result, err) = ask(&d, "a", "cost [[fake:huge_cost]]");
    assert_eq!(code, 0, "{err}");
    assert_eq!(result["status"], "completed", "{result}");
    assert!(result.get("total_cost_usd").is_none(), "{result}");
}

#[test]
fn tasks_for_a_terminated_agent_are_refused_and_queued_ones_cancelled() {
    let d = daemon("down", json!([fake_agent("a", json!({}))]));
    assert!(d.cli(&["pause", "a"]).0.success());
    // Queued behind the pause, its sender waiting.
    let waiter = {
        let sock = d.socket();
        std::thread::spawn(move || {
            crate::support::run_cli(
                &[
                    "--socket",
                    sock.to_str().unwrap(),
                    "send",
                    "--to",
                    "a",
                    "--wait",
                    r#"{"task_id": "q1", "prompt": "queued"}"#,
                ],
                &[],
            )
        })
    };
    d.wait_seen("task q1 queued", T);
    assert!(d.cli(&["stop", "a"]).0.success());
    let (status, out, err) = waiter.join().expect("send");
    assert_eq!(status.code(), Some(75), "{err}");
    let cancelled = &json_lines(&out)[0]["payload"];
    assert_eq!(cancelled["status"], "cancelled");
    assert!(
        cancelled["errors"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("agent a is terminated (stopped by an operator)"),
        "{cancelled}"
    );
    // New ones are refused at once with 69, not left to time out.
    let (code, _, err) = ask(&d, "a", "too late");
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("agent a is terminated"), "{err}");
    assert!(d.cli(&["start", "a"]).0.success());
    d.wait_for("agent a: initializing -> idle", T);
    let (code, _, err) = ask(&d, "a", "welcome back");
    assert_eq!(code, 0, "{err}");
}

/// A local subscriber that never reads is cut off once 16 MB wait for it,
/// as nats-server cuts off a slow consumer, instead of growing the daemon
/// without bound; the daemon and its other clients carry on.
#[test]
fn a_local_subscriber_that_never_reads_is_cut_off() {
    use std::io::{Read, Write};
    let d = daemon("slow", json!([fake_agent("a", json!({}))]));
    let mut sleeper = std::os::unix::net::UnixStream::connect(d.socket()).expect("connect");
    sleeper
        .write_all(b"{\"op\":\"sub\",\"sid\":1,\"subject\":\">\"}\n")
        .expect("subscribe");
    // Each task publishes a ~1 MB progress event to the agent's subject.
    let prompts: String = (0..40)
        .map(|n| format!("big {n} [[fake:big=1000000]]\n"))
        .collect();
    let (status, _, err) = d.cli_with(
        &["send", "--to", "a", "--lines", "--wait"],
        &[],
        Some(&prompts),
    );
    assert!(status.success(), "{err}");
    d.wait_seen("reads too slowly", T);
    sleeper.set_read_timeout(Some(T)).expect("read timeout");
    let mut held = Vec::new();
    // What was in the socket, then the end: the daemon closed it.
    let _ = sleeper.read_to_end(&mut held);
    assert!(held.len() < 40 * 1_000_000, "{} bytes", held.len());
    println!(
        "FIGURE slow_subscriber_held_bytes={} daemon_peak_rss_kb={}",
        held.len(),
        crate::support::vm(d.pid(), "VmHWM:")
    );
    let (status, _, err) = d.cli(&["status"]);
    assert!(status.success(), "{err}");
}

/// With every local connection slot taken, a client is told so and exits
/// 75 (retry later), not 69 with "connection closed".
#[test]
fn a_daemon_with_no_free_connection_says_so() {
    let d = daemon("slots", json!([fake_agent("a", json!({}))]));
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(std::os::unix::net::UnixStream::connect(d.socket()).expect("connect"));
    }
    // Connections are accepted in order: once the last answers a ping,
    // all 256 hold their slots. A status beyond them is refused.
    {
        use std::io::{BufRead, Write};
        let last = held.last_mut().expect("256 connections");
        last.write_all(b"{\"op\":\"ping\"}\n").expect("ping");
        let mut pong = String::new();
        std::io::BufReader::new(&*last)
            .read_line(&mut pong)
            .expect("pong");
        assert!(pong.contains("pong"), "{pong}");
    }
    let (status, _, err) = d.cli(&["status"]);
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(err.contains("serves at most 256 local clients"), "{err}");
    drop(held);
    let deadline = std::time::Instant::now() + T;
    // The slots free as the daemon sees the 256 connections close.
    loop {
        let (status, _, err) = d.cli(&["status"]);
        if status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{err}");
        assert_eq!(status.code(), Some(75), "{err}");
    }
}

/// A local client that connects and then neither sends nor subscribes (a
/// script that died holding the socket open, `nc -U` left in a terminal)
/// is closed after 60 s, so idle connections cannot hold all the slots;
/// one that subscribed is a listener and stays.
#[test]
fn an_idle_local_client_is_closed_and_a_listener_is_not() {
    use std::io::{Read, Write};
    let d = daemon("idle", json!([fake_agent("a", json!({}))]));
    let mut idle = std::os::unix::net::UnixStream::connect(d.socket()).expect("connect");
    let mut listener = std::os::unix::net::UnixStream::connect(d.socket()).expect("connect");
    listener
        .write_all(b"{\"op\":\"sub\",\"sid\":1,\"subject\":\"mister-smith.*.a.task_result\"}\n")
        .expect("subscribe");
    idle.set_read_timeout(Some(Duration::from_secs(90)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    // End of file: the daemon closed it (a read timeout would be an error;
    // a signal to the test process is not).
    let n = loop {
        match idle.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.expect("closed by the daemon"),
        }
    };
    assert_eq!(n, 0);
    // The listener still gets what it subscribed to.
    let (code, _, err) = ask(&d, "a", "after the idle one went");
    assert_eq!(code, 0, "{err}");
    listener.set_read_timeout(Some(T)).expect("read timeout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&listener), &mut line)
        .expect("the listener's message");
    assert!(line.contains("task_result"), "{line}");
}

/// Every local connection gives back what it took (a thread, a descriptor,
/// its buffers) once it closes: a cron job's `status` every minute must not
/// grow the daemon.
#[test]
fn local_connections_leave_nothing_behind() {
    let d = daemon("conns", json!([fake_agent("a", json!({}))]));
    let threads = || crate::support::vm(d.pid(), "Threads:");
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", d.pid())).map_or(0, |r| r.count());
    assert!(d.cli(&["status"]).0.success());
    let (t0, f0) = (threads(), fds());
    for _ in 0..60 {
        assert!(d.cli(&["status"]).0.success());
        drop(std::os::unix::net::UnixStream::connect(d.socket()).expect("connect"));
    }
    // Threads end a moment after their client: wait (bounded) for them.
    let deadline = std::time::Instant::now() + T;
    while (threads() > t0 || fds() > f0) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        threads() <= t0 && fds() <= f0,
        "threads {t0} -> {}, fds {f0} -> {} after 120 connections",
        threads(),
        fds()
    );
}
