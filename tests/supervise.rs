//! `mister-smith run`: restart policies, the restart budget, stopping,
//! process groups, PDEATHSIG, startup and health checks — with real
//! processes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{alive, fake_claude, pid_in, records, wait_gone, Daemon, TempDir};

const T: Duration = Duration::from_secs(20);

/// A shell agent that stamps its start and end (ns, CLOCK_REALTIME) into
/// `file` and exits with `code` at once.
fn stamper(id: &str, file: &std::path::Path, code: i32, restart: Value) -> Value {
    json!({
        "id": id,
        "command": "sh",
        "args": ["-c", format!("echo S $(date +%s%N) >> \"$0\"; echo E $(date +%s%N) >> \"$0\"; exit {code}"), file],
        "protocol": "none",
        "restart": restart,
    })
}

/// The gaps, in ms, between each `E` stamp and the next `S` stamp.
fn restart_gaps(file: &std::path::Path) -> Vec<f64> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let stamps: Vec<(String, u128)> = text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    stamps
        .windows(2)
        .filter(|w| w[0].0 == "E" && w[1].0 == "S")
        .map(|w| (w[1].1 - w[0].1) as f64 / 1e6)
        .collect()
}

fn assert_gaps(gaps: &[f64], expected: &[f64]) {
    assert_eq!(gaps.len(), expected.len(), "gaps {gaps:?}");
    for (g, e) in gaps.iter().zip(expected) {
        // Never early; late by at most the 10 % jitter plus scheduling noise.
        assert!(
            *g >= e - 2.0 && *g <= e * 1.1 + 150.0,
            "gap {g:.1} ms, expected {e} ms (all: {gaps:?})"
        );
    }
}

#[test]
fn exponential_backoff_delays_double_and_the_budget_terminates() {
    let dir = TempDir::new("backoff");
    let stamps = dir.join("stamps");
    let d = Daemon::start(
        dir,
        &json!({"agents": [
            stamper("crashy", &stamps, 1, json!({
                "policy": "exponential_backoff", "initial_delay_ms": 100, "max_delay_ms": 500,
                "multiplier": 2.0, "max_restarts": 4, "window_ms": 60000
            })),
            {"id": "steady", "command": "sleep", "args": ["300"], "protocol": "none"}
        ]}),
    );
    let steady = pid_in(&d.wait_for("agent steady: initializing -> idle", T));
    let alert = d.wait_for("ALERT agent crashy", T);
    assert!(
        alert.contains("restart budget spent (4 restarts"),
        "{alert}"
    );
    d.wait_for("agent crashy: error -> terminated", T);
    assert_gaps(&restart_gaps(&stamps), &[100.0, 200.0, 400.0, 500.0]);
    // The daemon and its other agents carry on.
    assert!(alive(d.pid()) && alive(steady));
    let log = d.stop();
    assert!(!alive(steady), "{log:?}");
}

#[test]
fn always_waits_the_initial_delay_every_time() {
    let dir = TempDir::new("always");
    let stamps = dir.join("stamps");
    let d = Daemon::start(
        dir,
        &json!({"agents": [stamper("a", &stamps, 0, json!({
            "policy": "always", "initial_delay_ms": 150, "max_restarts": 3, "window_ms": 60000
        }))]}),
    );
    d.wait_for("ALERT agent a", T);
    assert_gaps(&restart_gaps(&stamps), &[150.0, 150.0, 150.0]);
    d.stop();
}

#[test]
fn never_and_on_failure_choose_which_exits_restart() {
    let dir = TempDir::new("policies");
    let (s1, s2, s3) = (dir.join("s1"), dir.join("s2"), dir.join("s3"));
    let d = Daemon::start(
        dir,
        &json!({"agents": [
            stamper("never-fails", &s1, 1, json!({"policy": "never"})),
            stamper("onf-clean", &s2, 0, json!({"policy": "on_failure", "initial_delay_ms": 0})),
            stamper("onf-fails", &s3, 7, json!({"policy": "on_failure", "initial_delay_ms": 0, "max_restarts": 2})),
        ]}),
    );
    d.wait_seen("agent never-fails: not restarted (policy never)", T);
    d.wait_seen("agent onf-clean: not restarted (policy on_failure)", T);
    d.wait_seen("ALERT agent onf-fails", T);
    let starts = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with('S'))
            .count()
    };
    assert_eq!(starts(&s1), 1);
    assert_eq!(starts(&s2), 1);
    assert_eq!(starts(&s3), 3);
    let log = d.stop();
    assert!(
        log.iter()
            .any(|l| l.contains("agent onf-fails: exited with status 7")),
        "{log:#?}"
    );
}

fn fake(id: &str, env: Value) -> Value {
    json!({
        "id": id,
        "command": fake_claude(),
        "env": env,
        "restart": {"policy": "never"},
    })
}

#[test]
fn stream_json_agents_handshake_and_stop_with_their_whole_group() {
    let dir = TempDir::new("group");
    let rec = dir.join("rec");
    let d = Daemon::start_with(
        dir,
        &json!({"agents": [fake("c1", json!({
            "FAKE_CLAUDE_RECORD": rec,
            "FAKE_CLAUDE_SPAWN_GRANDCHILD": "sleep 300",
        }))]}),
        // A daemon started from inside Claude Code must not pass this on.
        &[("CLAUDECODE", "1"), ("CLAUDE_CODE_ENTRYPOINT", "cli")],
    );
    let pid = pid_in(&d.wait_for("agent c1: initializing -> idle", T));
    let recs = records(&rec);
    let start = recs
        .iter()
        .find(|r| r["event"] == "start")
        .expect("start record");
    let argv: Vec<&str> = start["argv"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        argv[argv.len() - 6..],
        [
            "-p",
            "--input-format",
            "stream-json",
            "--output-format",
            "stream-json",
            "--verbose"
        ]
    );
    assert_eq!(start["env"]["CLAUDECODE"], Value::Null, "{start}");
    assert_eq!(
        start["env"]["CLAUDE_CODE_ENTRYPOINT"],
        Value::Null,
        "{start}"
    );
    assert_eq!(start["pgid"], start["pid"], "the agent leads its own group");
    let stdin: Vec<Value> = recs
        .iter()
        .filter(|r| r["event"] == "stdin")
        .filter_map(|r| serde_json::from_str(r["line"].as_str()?).ok())
        .collect();
    assert_eq!(stdin[0]["request"]["subtype"], "initialize", "{recs:?}");
    let grandchild = recs
        .iter()
        .find(|r| r["event"] == "grandchild")
        .and_then(|r| r["pid"].as_u64())
        .expect("grandchild record") as u32;
    assert!(alive(pid) && alive(grandchild));

    d.stop();
    assert!(
        wait_gone(pid, Duration::from_secs(2)),
        "agent {pid} survived"
    );
    assert!(
        wait_gone(grandchild, Duration::from_secs(2)),
        "grandchild {grandchild} survived"
    );
}

/// A plain agent that ignores SIGTERM (its `sleep`s die, the loop goes on).
fn stubborn(stop_timeout_ms: u64) -> Value {
    json!({
        "id": "stubborn", "command": "sh", "protocol": "none",
        "args": ["-c", "trap '' TERM; echo ready >&2; while :; do sleep 1; done"],
        "stop_timeout_ms": stop_timeout_ms,
    })
}

#[test]
fn a_child_ignoring_sigterm_is_killed_at_stop_timeout() {
    let dir = TempDir::new("stubborn");
    let agent = stubborn(1000);
    let mut d = Daemon::start(dir, &json!({"agents": [agent]}));
    let pid = pid_in(&d.wait_for("agent stubborn: initializing -> idle", T));
    // SIGTERM is ignored only once the trap is set.
    d.wait_seen("stubborn stderr: ready", T);
    let asked = std::time::Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(T);
    let took = asked.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(5),
        "stopped after {took:?}"
    );
    assert!(
        d.log().iter().any(|l| l.contains("SIGKILL")),
        "{:#?}",
        d.log()
    );
    assert!(wait_gone(pid, Duration::from_secs(1)));
}

#[test]
fn a_second_signal_kills_at_once() {
    let dir = TempDir::new("second");
    let agent = stubborn(60_000);
    let mut d = Daemon::start(dir, &json!({"agents": [agent]}));
    let pid = pid_in(&d.wait_for("agent stubborn: initializing -> idle", T));
    d.wait_seen("stubborn stderr: ready", T);
    d.signal(libc::SIGTERM);
    d.wait_for("SIGTERM: stopping 1 agents", T);
    d.signal(libc::SIGINT);
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + libc::SIGINT));
    assert!(wait_gone(pid, Duration::from_secs(1)));
}

#[test]
fn children_die_with_a_sigkilled_daemon() {
    let dir = TempDir::new("pdeathsig");
    let mut d = Daemon::start(
        dir,
        &json!({"agents": [
            fake("c1", json!({})),
            {"id": "plain", "command": "sleep", "args": ["300"], "protocol": "none"}
        ]}),
    );
    let a = pid_in(&d.wait_seen("agent c1: initializing -> idle", T));
    let b = pid_in(&d.wait_seen("agent plain: initializing -> idle", T));
    d.signal(libc::SIGKILL);
    d.wait_exit(T);
    for pid in [a, b] {
        assert!(
            wait_gone(pid, Duration::from_secs(1)),
            "child {pid} outlived the daemon by 1 s"
        );
    }
}

#[test]
fn a_stderr_flood_never_blocks_a_child() {
    let dir = TempDir::new("flood");
    let d = Daemon::start(
        dir,
        &json!({"agents": [
            // 8 MB of stderr before the fake even reads stdin: it answers
            // initialize only if every byte was drained.
            fake("noisy", json!({"FAKE_CLAUDE_STDERR_BYTES": "8000000"})),
            {"id": "plain", "command": "sh", "protocol": "none",
             "args": ["-c", "head -c 6000000 /dev/zero | tr '\\0' x | fold -w 100 >&2; exec sleep 300"]}
        ]}),
    );
    d.wait_seen("agent noisy: initializing -> idle", T);
    d.wait_seen("agent plain: stderr floods", T);
    let log = d.stop();
    assert!(!log.iter().any(|l| l.contains("-> error")), "{log:#?}");
}

#[test]
fn an_agent_that_never_answers_initialize_is_an_error() {
    let dir = TempDir::new("startup");
    let mut agent = fake("mute", json!({"FAKE_CLAUDE_HANG": "startup"}));
    agent["startup_timeout_ms"] = json!(300);
    agent["restart"] = json!({"policy": "always", "initial_delay_ms": 0, "max_restarts": 1});
    let d = Daemon::start(dir, &json!({"agents": [agent]}));
    d.wait_for("agent mute: no answer to initialize within 300 ms", T);
    d.wait_for("agent mute: initializing -> error", T);
    d.wait_for("agent mute: restarting in 0 ms", T);
    d.wait_for("ALERT agent mute", T);
    d.stop();
}

#[test]
fn failing_health_checks_restart_the_agent() {
    let dir = TempDir::new("health");
    let flag = dir.join("never-created");
    let d = Daemon::start(
        dir,
        &json!({"agents": [{
            "id": "sick", "command": "sleep", "args": ["300"], "protocol": "none",
            "restart": {"policy": "always", "initial_delay_ms": 0},
            "health": {"interval_ms": 50, "failure_threshold": 2, "timeout_ms": 2000,
                       "command": format!("echo probe $MISTER_SMITH_AGENT_ID; test -e {}", flag.display())}
        }]}),
    );
    let first = pid_in(&d.wait_for("agent sick: initializing -> idle", T));
    let fail = d.wait_for("agent sick: health check failed (2/2)", T);
    assert!(fail.contains("probe sick"), "{fail}");
    d.wait_for("taken down: unhealthy", T);
    let second = pid_in(&d.wait_for("agent sick: initializing -> idle", T));
    assert_ne!(first, second);
    assert!(wait_gone(first, Duration::from_secs(1)));
    d.stop();
}

#[test]
fn limits_become_rlimits_of_the_child() {
    let dir = TempDir::new("limits");
    let out = dir.join("ulimit");
    let d = Daemon::start(
        dir,
        &json!({"agents": [{
            "id": "limited", "command": "sh", "protocol": "none",
            "args": ["-c", "echo $(ulimit -n) $(ulimit -t) $(ulimit -d) > \"$0\"; echo ready >&2; exec sleep 300", out],
            "limits": {"open_files": 64, "cpu_seconds": 100, "memory_mb": 512}
        }]}),
    );
    d.wait_seen("limited stderr: ready", T);
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.trim(), format!("64 100 {}", 512 * 1024));
    d.stop();
}

/// A daemon out of file descriptors: a spawn fails at whichever step runs
/// out (the pipes, or the pidfd that watches the child) as that agent's own
/// failure, and the daemon stays up and answers. It must never panic: with
/// `panic = "abort"` a panic takes the whole daemon and every agent down.
/// The limit climbs one fd at a time, so every step of a spawn is the one
/// that fails at some limit, up to the first that has room for it all.
#[test]
fn a_daemon_out_of_file_descriptors_fails_spawns_and_stays_up() {
    let fake = fake_claude();
    let config = json!({"agents": [
        {"id": "a", "command": fake, "restart": {"policy": "never"}}
    ]});
    let mut outcomes: Vec<(u64, String)> = Vec::new();
    for nofile in 4..=48 {
        let mut d = Daemon::start_with_nofile(TempDir::new("nofile"), &config, nofile);
        let Some(line) = d.next_line(
            |l| l.contains("agent a: initializing -> idle") || l.contains("cannot start"),
            T,
        ) else {
            // Too few fds for the daemon itself (its signal pipe, its lock,
            // its socket): it must say so and exit, below every limit at
            // which it runs.
            let status = d.wait_exit(T);
            let log = d.log();
            assert!(!status.success(), "limit {nofile}: {log:#?}");
            assert!(outcomes.is_empty(), "limit {nofile}: {log:#?}");
            assert!(
                log.iter().any(|l| l.starts_with("mister-smith: error: ")),
                "limit {nofile}: {log:#?}"
            );
            continue;
        };
        let started = line.contains("-> idle");
        if !started {
            d.wait_for("agent a: error -> terminated", T);
        }
        let (status, out, err) = d.cli(&["status", "--json"]);
        assert!(status.success(), "limit {nofile}: status: {err}");
        let agents: Value = serde_json::from_str(&out).expect("status JSON");
        let a = &agents[0];
        if started {
            assert_eq!(a["status"], "idle", "limit {nofile}: {a}");
        } else {
            assert_eq!(a["status"], "terminated", "limit {nofile}: {a}");
            assert_eq!(a["reason_code"], "not_restarted", "limit {nofile}: {a}");
            let reason = a["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("Too many open files"), "{reason}");
            assert!(
                reason.ends_with("policy never does not restart it"),
                "{reason}"
            );
        }
        let log = d.stop();
        assert!(
            !log.iter().any(|l| l.contains("panicked")),
            "limit {nofile}: {log:#?}"
        );
        outcomes.push((nofile, line));
        if outcomes
            .iter()
            .rev()
            .take(3)
            .all(|(_, l)| l.contains("-> idle"))
        {
            break;
        }
    }
    // Failures at the low limits, then starts, never the other way round.
    let first_start = outcomes
        .iter()
        .position(|(_, l)| l.contains("-> idle"))
        .expect("some limit has room for a spawn");
    assert!(first_start > 0, "even {} fds were enough", outcomes[0].0);
    assert!(
        outcomes[first_start..]
            .iter()
            .all(|(_, l)| l.contains("-> idle")),
        "{outcomes:#?}"
    );
    // One fd short of enough, the pipes are there and the pidfd is not:
    // that spawn fails as a spawn, with the child killed and reaped.
    let (limit, last_failure) = &outcomes[first_start - 1];
    assert!(
        last_failure.contains("watching the child: Too many open files"),
        "at {limit} fds: {last_failure}"
    );
}

/// A descendant that escaped its agent's group with `setsid` and outlived
/// its parent before the tracker ever saw it (a stop right after it left, a
/// crash loop) comes back to the daemon, a child subreaper, and is killed:
/// while the daemon runs, and at its stop.
#[test]
fn escapees_orphaned_before_any_scan_are_killed() {
    let grandchild_of = |record: &std::path::Path| {
        crate::support::records(record)
            .iter()
            .find(|r| r["event"] == "grandchild")
            .and_then(|r| r["pid"].as_u64())
            .map(|p| p as u32)
    };
    let dir = TempDir::new("orphans");
    let record = dir.join("record.jsonl");
    let agent = json!({
        "id": "leaky", "command": fake_claude(),
        "env": {
            "FAKE_CLAUDE_RECORD": record.to_str().unwrap(),
            "FAKE_CLAUDE_SPAWN_GRANDCHILD": "sleep 3000",
            "FAKE_CLAUDE_GRANDCHILD_SETSID": "1",
        },
    });
    let d = Daemon::start(dir, &json!({"agents": [agent]}));
    d.wait_for("agent leaky: initializing -> idle", T);
    let first = grandchild_of(&record).expect("grandchild record");
    assert!(alive(first));
    // Stopped at once: its escapee was never seen by a scan.
    let stopped = std::time::Instant::now();
    assert!(d.cli(&["stop", "leaky"]).0.success());
    d.wait_for("agent leaky: stopping -> terminated", T);
    assert!(
        wait_gone(first, T),
        "orphan {first} survived its agent's stop"
    );
    println!(
        "FIGURE orphan_gone_after_stop_ms={}",
        stopped.elapsed().as_millis()
    );
    d.wait_seen(
        &format!("killed process {first}, orphaned below an agent"),
        T,
    );

    // Started again and the daemon stopped right away: its stop ends it.
    std::fs::remove_file(&record).expect("reset the record");
    assert!(d.cli(&["start", "leaky"]).0.success());
    d.wait_for("agent leaky: initializing -> idle", T);
    let second = grandchild_of(&record).expect("second grandchild");
    assert!(alive(second));
    d.stop();
    assert!(
        wait_gone(second, T),
        "orphan {second} survived the daemon's stop"
    );
}

/// An orphan that left its agent's group while the agent keeps running (a
/// tool's `setsid cmd &` in a shell that then exits) is the agent's: it is
/// tracked, left alone while the agent works, and killed when it stops. One
/// that does not name its agent, or that a health check left, is nobody's
/// and is killed at once.
#[test]
fn an_orphan_of_a_running_agent_lives_until_its_agent_stops() {
    let dir = TempDir::new("adopted");
    let pids = dir.join("orphans");
    let script = dir.join("detach.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             setsid sleep 3000 </dev/null >/dev/null 2>&1 &\n\
             mine=$!\n\
             env -u MISTER_SMITH_AGENT_ID setsid sleep 3001 </dev/null >/dev/null 2>&1 &\n\
             echo $mine $! > {0}.tmp && mv {0}.tmp {0}\n",
            pids.display()
        ),
    )
    .expect("write the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod the script");
    // A health check that leaves a process behind, once.
    let check_pid = dir.join("check.pid");
    let check = format!(
        "[ -e {0} ] || {{ setsid sleep 3002 </dev/null >/dev/null 2>&1 & echo $! > {0}.tmp && mv {0}.tmp {0}; }}",
        check_pid.display()
    );
    let agent = json!({
        "id": "parent", "command": fake_claude(),
        "env": {"FAKE_CLAUDE_SPAWN_GRANDCHILD": script.to_str().unwrap()},
        "health": {"command": check, "interval_ms": 200},
    });
    let d = Daemon::start(dir, &json!({"agents": [agent]}));
    d.wait_for("agent parent: initializing -> idle", T);
    let line = d.wait_seen("was orphaned outside its group; tracking it", T);
    let text = std::fs::read_to_string(&pids).expect("the script wrote the orphans' pids");
    let (mine, nobodys) = match text.split_whitespace().collect::<Vec<_>>()[..] {
        [a, b] => (
            a.parse::<u32>().expect("pid"),
            b.parse::<u32>().expect("pid"),
        ),
        _ => panic!("orphans file: {text:?}"),
    };
    assert!(line.contains(&format!("process {mine} ")), "{line}");
    // The anonymous one is killed after two passes, both of which saw the
    // agent's orphan: it is still alive.
    d.wait_seen(&format!("killed process {nobodys}, orphaned"), T);
    assert!(wait_gone(nobodys, T));
    assert!(alive(mine), "an orphan of a running agent was killed");
    // What a health check left is nobody's: killed while the agent runs.
    d.wait_seen("killed process", T);
    let left: u32 = std::fs::read_to_string(&check_pid)
        .expect("the check ran")
        .trim()
        .parse()
        .expect("a pid");
    d.wait_seen(&format!("killed process {left}, orphaned"), T);
    assert!(
        wait_gone(left, T),
        "a health check's leftover {left} lives on"
    );
    assert!(alive(mine), "an orphan of a running agent was killed");
    assert!(d.cli(&["stop", "parent"]).0.success());
    assert!(wait_gone(mine, T), "orphan {mine} survived its agent");
}

/// SIGHUP (a closed terminal, a careless `kill -HUP`) stops the daemon
/// cleanly with 0, and the shipped systemd unit restarts it after that exit:
/// with `Restart=on-failure` a HUP left the fleet down.
#[test]
fn sighup_reloads_and_the_shipped_unit_reloads_with_the_cli() {
    let dir = TempDir::new("sighup");
    let mut d = Daemon::start(
        dir,
        &json!({"agents": [crate::support::fake_agent("w", json!({}))]}),
    );
    let line = d.wait_for("agent w: initializing -> idle", T);
    d.signal(libc::SIGHUP);
    d.wait_for("reloaded: 0 added, 0 removed, 0 changed, 1 unchanged", T);
    // Still serving, the agent untouched.
    let (st, out, _) = d.cli(&["status", "--json"]);
    assert!(st.success());
    let agents: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    assert_eq!(
        agents[0]["pid"].as_u64(),
        Some(u64::from(crate::support::pid_in(&line)))
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(T).code(), Some(0));

    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mister-smith.service"),
    )
    .expect("the unit");
    let value = |key: &str| {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .next_back()
            .map(str::trim)
    };
    // `systemctl reload` runs the CLI, so a bad config fails the reload.
    let reload = value("ExecReload").expect("ExecReload");
    assert!(reload.ends_with(" reload"), "{reload}");
    assert!(reload.contains("--socket "), "{reload}");
    // A daemon that exits comes back, unless its config is wrong.
    assert_eq!(value("Restart"), Some("always"));
    let prevented: Vec<i32> = value("RestartPreventExitStatus")
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(prevented.contains(&78), "{prevented:?}");
}

/// A descendant a scan saw leave its agent's group stays that agent's after
/// it is orphaned, even with its environment cleared (`env -i`): it is not
/// taken for nobody's.
#[test]
fn a_tracked_escapee_orphaned_later_stays_its_agents() {
    let dir = TempDir::new("tracked-orphan");
    let pids = dir.join("pids");
    let script = dir.join("slow-detach.sh");
    // The parent outlives a scan (2 s), then leaves both children to the
    // daemon; the second names no agent, so its kill marks two passes.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             setsid env -i sleep 3004 </dev/null >/dev/null 2>&1 &\n\
             mine=$!\n\
             echo $mine > {0}.first.tmp && mv {0}.first.tmp {0}.first\n\
             sleep 3\n\
             env -u MISTER_SMITH_AGENT_ID setsid sleep 3005 </dev/null >/dev/null 2>&1 &\n\
             echo $! > {0}.tmp && mv {0}.tmp {0}\n",
            pids.display()
        ),
    )
    .expect("write the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod the script");
    let agent = json!({
        "id": "keeper", "command": fake_claude(),
        "env": {"FAKE_CLAUDE_SPAWN_GRANDCHILD": script.to_str().unwrap()},
    });
    let d = Daemon::start(dir, &json!({"agents": [agent]}));
    let line = d.wait_seen("left the group; tracking it", T);
    let first = pids.with_extension("first");
    let mine: u32 = std::fs::read_to_string(&first)
        .expect("the first pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(line.contains(&format!("process {mine} ")), "{line}");
    let nobodys = d.wait_seen("orphaned below an agent", T);
    let text = std::fs::read_to_string(&pids).expect("the second pid");
    assert!(
        nobodys.contains(&format!("killed process {},", text.trim())),
        "{nobodys} (mine {mine})"
    );
    assert!(alive(mine), "a tracked escapee was killed once orphaned");
    assert!(d.cli(&["stop", "keeper"]).0.success());
    assert!(wait_gone(mine, T), "escapee {mine} survived its agent");
}
