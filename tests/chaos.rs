//! Faults, through the real binary with real processes: NATS restarting
//! under load, the daemon killed with SIGKILL, crash loops, hangs, floods,
//! and shutdown while busy. Nothing may be lost silently, nothing may hang
//! past its bound, nothing may survive. Figures are printed (run with
//! `--nocapture` to see them) and copied into the README.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    alive, fake_agent, json_lines, pid_in, records, run_cli_stdin, vm, wait_gone, Daemon,
    NatsServer, TempDir,
};

const T: Duration = Duration::from_secs(30);

/// `/proc/PID/status` field (in kB) and CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[test]
fn nats_restarting_under_load_loses_no_answer_and_hangs_nothing() {
    let mut server = NatsServer::start();
    let port = server.port;
    let url = server.url();
    let d = Daemon::start_with(
        TempDir::new("nats-restart"),
        &json!({"agents": [fake_agent("r1", json!({})), fake_agent("r2", json!({}))]}),
        &[("NATS_URL", url.as_str())],
    );
    d.wait_seen("NATS connected", T);
    d.wait_seen("agent r2: initializing -> idle", T);

    // Senders run throughout: before, during and after the outage.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for n in 0..3 {
        let (stop, url) = (stop.clone(), url.clone());
        senders.push(std::thread::spawn(move || {
            let mut outcomes = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let started = Instant::now();
                let prompt = format!("s{n}-{i} [[fake:delay=20]]");
                let (status, out, err) = run_cli_stdin(
                    &[
                        "--nats",
                        &url,
                        "send",
                        "--agent-type",
                        "claude",
                        "--wait",
                        "--timeout",
                        "3000",
                        &prompt,
                    ],
                    // If a send ever overruns, its debug log says where it was.
                    &[("MISTER_SMITH_LOG", "debug")],
                    None,
                );
                outcomes.push((status.code(), started.elapsed(), out, err));
            }
            outcomes
        }));
    }
    // Some tasks complete before the fault.
    d.wait_for_n(" completed", 6, T);
    server.kill();
    let killed = Instant::now();
    d.wait_seen("NATS disconnected", T);
    // While disconnected, the local socket still answers, with a WARNING.
    let (status, out, _) = d.cli(&["health"]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("NATS reconnecting"), "{out}");
    // The outage lasts 2 s, as the scenario asks; nothing signals its end.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(killed.elapsed()));
    let _server = NatsServer::start_on(port, &[]);
    let back = Instant::now();
    d.wait_for("NATS reconnected", T);
    let reconnect = back.elapsed();
    println!("FIGURE nats_reconnect_ms={}", reconnect.as_millis());
    // After the reconnection, tasks complete again.
    let after = d.log().len();
    let deadline = Instant::now() + T;
    while d.log()[after..]
        .iter()
        .filter(|l| l.contains(" completed"))
        .count()
        < 6
    {
        assert!(
            Instant::now() < deadline,
            "no tasks completed after the reconnection"
        );
        d.wait_for(" completed", T);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for s in senders {
        for (code, took, out, err) in s.join().unwrap() {
            total += 1;
            // 3 s timeout + the interrupt grace + connection setup.
            assert!(
                took < Duration::from_secs(10),
                "a send took {took:?}: {err}"
            );
            let results = json_lines(&out);
            assert!(results.len() <= 1, "answered twice: {out}");
            match code {
                Some(0) => assert_eq!(results[0]["payload"]["status"], "completed"),
                // The reason is on stderr, or in a timeout/cancelled result.
                Some(69 | 75) => assert!(
                    !err.is_empty()
                        || results
                            .first()
                            .is_some_and(|r| r["payload"]["status"] != "completed"),
                    "a failure without a reason: {out}"
                ),
                other => panic!("unexpected exit {other:?}: {out} {err}"),
            }
        }
    }
    assert!(total >= 9, "only {total} sends ran");
    let (status, out, _) = d.cli(&["health"]);
    assert_eq!(status.code(), Some(0), "{out}");
}

#[test]
fn after_sigkill_nothing_survives_the_next_start_and_status_is_right() {
    let dir = Arc::new(TempDir::new("sigkill"));
    let rec = dir.join("rec");
    let config = json!({"agents": [
        fake_agent("esc", json!({
            "FAKE_CLAUDE_RECORD": rec,
            "FAKE_CLAUDE_SPAWN_GRANDCHILD": "sleep 300",
            "FAKE_CLAUDE_GRANDCHILD_SETSID": "1",
        })),
        {"id": "grp", "command": "sh", "protocol": "none",
         "args": ["-c", "sleep 300 & echo $! > \"$0\"; echo ready >&2; wait", dir.join("grp.pid")]},
    ]});
    let mut d = Daemon::start(dir.clone(), &config);
    let esc = pid_in(&d.wait_seen("agent esc: initializing -> idle", T));
    d.wait_seen("grp stderr: ready", T);
    let grp = pid_in(&d.wait_seen("agent grp: initializing -> idle", T));
    // The tracker has noticed the grandchild that left the group.
    d.wait_seen("left the group; tracking it", T);
    let escaped = records(&rec)
        .iter()
        .find(|r| r["event"] == "grandchild")
        .and_then(|r| r["pid"].as_u64())
        .unwrap() as u32;
    let in_group: u32 = std::fs::read_to_string(dir.join("grp.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    d.signal(libc::SIGKILL);
    d.wait_exit(T);
    for pid in [esc, grp] {
        assert!(
            wait_gone(pid, Duration::from_secs(1)),
            "agent {pid} outlived the daemon"
        );
    }
    // Only PDEATHSIG has acted: the grandchildren are still there.
    assert!(alive(escaped) && alive(in_group));

    let d2 = Daemon::start(dir.clone(), &config);
    d2.wait_seen("swept 2 leftovers", T);
    assert!(
        wait_gone(escaped, Duration::from_secs(2)),
        "escaped grandchild survived"
    );
    assert!(
        wait_gone(in_group, Duration::from_secs(2)),
        "group grandchild survived"
    );
    d2.wait_seen("agent esc: initializing -> idle", T);
    d2.wait_seen("agent grp: initializing -> idle", T);
    let (status, out, _) = d2.cli(&["status", "--json"]);
    assert!(status.success());
    let agents: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(agents.len(), 2);
    for a in &agents {
        assert_eq!(a["status"], "idle", "{a}");
        assert_eq!(a["restarts"], 0, "{a}");
    }
    let log = d2.stop();
    assert!(!log.iter().any(|l| l.contains("ERROR")), "{log:#?}");
}

#[test]
fn a_crash_loop_is_stopped_by_its_budget_cheaply_while_the_rest_works() {
    let d = Daemon::start(
        TempDir::new("crashloop"),
        &json!({"agents": [
            {"id": "loop", "command": "sh", "args": ["-c", "exit 1"], "protocol": "none",
             "restart": {"policy": "always", "initial_delay_ms": 0, "max_restarts": 1000, "window_ms": 600000}},
            fake_agent("fine", json!({})),
        ]}),
    );
    d.wait_seen("supervising", T);
    let before = cpu_seconds(d.pid());
    let started = Instant::now();
    d.wait_seen(
        "ALERT agent loop: restart budget spent (1000 restarts",
        Duration::from_secs(120),
    );
    let took = started.elapsed();
    let cpu = cpu_seconds(d.pid()) - before;
    println!(
        "FIGURE crash_loop_1000_restarts_wall_ms={} daemon_cpu_ms={:.0} per_restart_cpu_us={:.0}",
        took.as_millis(),
        cpu * 1000.0,
        cpu * 1e6 / 1000.0
    );
    // A loose bound: a polling or leaking supervisor would blow through it.
    assert!(
        cpu < 10.0,
        "the daemon used {cpu:.2} s of CPU for 1000 restarts"
    );
    let (status, out, _) = d.cli(&["health"]);
    assert_eq!(status.code(), Some(2), "{out}");
    let (status, _, err) = d.cli(&["send", "--to", "fine", "--wait", "still here"]);
    assert_eq!(status.code(), Some(0), "{err}");
    d.stop();
}

#[test]
fn a_process_that_hangs_after_its_result_is_counted_done_and_recycled() {
    let mut agent = fake_agent("lingers", json!({"FAKE_CLAUDE_HANG": "after_result"}));
    agent["protocol"] = json!("oneshot");
    agent["stop_timeout_ms"] = json!(1000);
    let d = Daemon::start(TempDir::new("linger"), &json!({"agents": [agent]}));
    d.wait_seen("agent lingers: initializing -> idle", T);
    let (status, out, err) = d.cli(&["send", "--to", "lingers", "--wait", "answer then hang"]);
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(json_lines(&out)[0]["payload"]["status"], "completed");
    d.wait_seen("after its result: stopping it", T);
    d.wait_for("agent lingers: busy -> idle", T);
    let (status, _, err) = d.cli(&["send", "--to", "lingers", "--wait", "next"]);
    assert_eq!(status.code(), Some(0), "{err}");
    let st: Vec<Value> = serde_json::from_str(&d.cli(&["status", "--json"]).1).unwrap();
    assert_eq!(st[0]["tasks_completed"], 2);
    d.stop();
}

#[test]
fn twenty_thousand_tasks_into_a_queue_of_one_thousand() {
    let d = Daemon::start(
        TempDir::new("flood"),
        &json!({"message": {"queue_capacity": 1000}, "agents": [fake_agent("sink", json!({}))]}),
    );
    d.wait_seen("agent sink: initializing -> idle", T);
    assert!(d.cli(&["pause", "sink"]).0.success());
    let rss_before = vm(d.pid(), "VmRSS:");
    let input: String = (0..20_000).map(|n| format!("flood {n}\n")).collect();
    let started = Instant::now();
    let (status, out, err) = d.cli_with(&["send", "--to", "sink", "--lines"], &[], Some(&input));
    let took = started.elapsed();
    assert_eq!(status.code(), Some(75));
    assert_eq!(out.lines().count(), 1000, "accepted");
    let refused = err.lines().filter(|l| l.contains("queue is full")).count();
    assert_eq!(refused, 19_000, "refused");
    assert!(d.cli(&["resume", "sink"]).0.success());
    d.wait_for_n(" completed", 1000, Duration::from_secs(120));
    let hwm = vm(d.pid(), "VmHWM:");
    println!(
        "FIGURE flood_20000_into_1000 send_ms={} rss_before_kb={rss_before} rss_peak_kb={hwm}",
        took.as_millis()
    );
    assert!(hwm < 200 * 1024, "daemon peak RSS {hwm} kB");
    d.stop();
}

#[test]
fn a_50_mb_line_or_100_mb_of_stderr_stalls_nobody() {
    let d = Daemon::start(
        TempDir::new("big"),
        &json!({"agents": [
            fake_agent("big", json!({})),
            fake_agent("noisy", json!({"FAKE_CLAUDE_STDERR_BYTES": "100000000"})),
            fake_agent("other", json!({})),
        ]}),
    );
    d.wait_seen("agent big: initializing -> idle", T);
    d.wait_seen("agent other: initializing -> idle", T);
    let dir = d.dir.clone();
    let sock = d.socket();
    let big = std::thread::spawn(move || {
        let _keep = dir;
        run_cli_stdin(
            &[
                "--socket",
                sock.to_str().unwrap(),
                "send",
                "--to",
                "big",
                "--stream",
                "huge [[fake:big=50000000]]",
            ],
            &[],
            None,
        )
    });
    // Meanwhile another agent answers at once.
    let (status, _, err) = d.cli(&["send", "--to", "other", "--wait", "quick"]);
    assert_eq!(status.code(), Some(0), "{err}");
    let (status, out, err) = big.join().unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    let lines = json_lines(&out);
    assert!(
        lines
            .iter()
            .any(|l| l["payload"]["event"]["truncated_by_mister_smith"] == true),
        "the big event was not reduced"
    );
    assert_eq!(lines.last().unwrap()["payload"]["status"], "completed");
    d.wait_seen("agent noisy: initializing -> idle", Duration::from_secs(60));
    let hwm = vm(d.pid(), "VmHWM:");
    println!("FIGURE big_line_50mb_daemon_peak_rss_kb={hwm}");
    d.stop();
}

#[test]
fn sigterm_while_eight_agents_are_busy_answers_every_task_cancelled() {
    let agents: Vec<Value> = (1..=8)
        .map(|n| fake_agent(&format!("b{n}"), json!({})))
        .collect();
    let mut d = Daemon::start(TempDir::new("busy-stop"), &json!({"agents": agents}));
    let mut pids = Vec::new();
    for n in 1..=8 {
        pids.push(pid_in(
            &d.wait_seen(&format!("agent b{n}: initializing -> idle"), T),
        ));
    }
    let sock = d.socket();
    let sends: Vec<_> = (1..=8)
        .map(|n| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                run_cli_stdin(
                    &[
                        "--socket",
                        sock.to_str().unwrap(),
                        "send",
                        "--to",
                        &format!("b{n}"),
                        "--wait",
                        "long job [[fake:delay=500]] [[fake:turns=20]]",
                    ],
                    &[],
                    None,
                )
            })
        })
        .collect();
    for n in 1..=8 {
        d.wait_seen(&format!("agent b{n}: idle -> busy"), T);
    }
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(T);
    assert!(status.success(), "{status}");
    for s in sends {
        let (status, out, err) = s.join().unwrap();
        assert_eq!(status.code(), Some(75), "{out} {err}");
        assert_eq!(json_lines(&out)[0]["payload"]["status"], "cancelled");
    }
    for pid in pids {
        assert!(
            wait_gone(pid, Duration::from_secs(1)),
            "agent {pid} survived"
        );
    }
    // No zombies of ours: the daemon is gone and reaped by the test.
}

/// A process that left its agent's group just before the daemon was
/// SIGKILLed, before any scan recorded it, is still found by the next
/// daemon: it carries the run directory in its environment.
#[test]
fn after_sigkill_an_escapee_no_scan_saw_is_swept_too() {
    let dir = Arc::new(TempDir::new("sigkill-fresh"));
    let rec = dir.join("rec");
    let config = json!({"agents": [fake_agent("fresh", json!({
        "FAKE_CLAUDE_RECORD": rec,
        "FAKE_CLAUDE_SPAWN_GRANDCHILD": "sleep 301",
        "FAKE_CLAUDE_GRANDCHILD_SETSID": "1",
    }))]});
    let mut d = Daemon::start(dir.clone(), &config);
    d.wait_seen("agent fresh: initializing -> idle", T);
    let escaped = records(&rec)
        .iter()
        .find(|r| r["event"] == "grandchild")
        .and_then(|r| r["pid"].as_u64())
        .expect("the grandchild's pid") as u32;
    d.signal(libc::SIGKILL);
    d.wait_exit(T);
    assert!(alive(escaped), "only PDEATHSIG has acted");
    let d2 = Daemon::start(dir.clone(), &config);
    d2.wait_seen(&format!("sweeping leftover process {escaped} "), T);
    assert!(
        wait_gone(escaped, Duration::from_secs(2)),
        "an escapee no scan saw survived"
    );
    d2.wait_seen("agent fresh: initializing -> idle", T);
}
