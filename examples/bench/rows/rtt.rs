//! `rtt`: task round trip over NATS through the daemon and a fake-claude
//! echo agent, against raw NATS request/reply and against a minimal relay
//! through the same kind of agent; the agent's own turn alone; the daemon's
//! CPU time and context switches per task, by thread ([`Usage`]); and, with
//! `--against`, another build's daemon in rounds alternating with ours.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::bins::Bins;
use crate::daemon::{echo_daemon, echo_daemon_as};
use crate::echo::{fake_echo, Echo, Relay};
use crate::nats_server::{fast_connect, task_envelope, Nats};
use crate::scratch::Scratch;
use crate::table::{median, p99, Row};

/// Sends `n` tasks one at a time over NATS and returns each round trip in
/// ms (request out → task_result back).
pub(crate) fn task_loop(nc: &nats::Connection, subject: &str, n: usize) -> Vec<f64> {
    let inbox = nc.new_inbox();
    let sub = nc.subscribe(&format!("{inbox}.*")).expect("subscribe");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let reply = format!("{inbox}.{i}");
        let t = Instant::now();
        nc.publish_request(subject, &reply, task_envelope(&format!("t{i}")))
            .expect("publish");
        nc.flush().expect("flush");
        loop {
            let m = sub
                .next_timeout(Duration::from_secs(10))
                .expect("an answer");
            if m.subject == reply && m.data.windows(13).any(|w| w == b"\"task_result\"") {
                break;
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out
}

/// `against`: another build of mister-smith, whose daemon runs the same
/// tasks in rounds alternating with ours (to compare two builds within one
/// run, since the drift between runs here is larger than most changes).
pub(crate) fn round_trip(
    bins: &Bins,
    work: &Scratch,
    nats: &Nats,
    n: usize,
    against: Option<&Path>,
) -> Vec<Row> {
    let dir = work.sub("rtt");
    let d = echo_daemon(bins, &dir, nats);
    let other = against.map(|ms| {
        let other_bins = Bins {
            ms: ms.to_path_buf(),
            fake: bins.fake.clone(),
        };
        echo_daemon_as(&other_bins, &work.sub("rtt-against"), nats, "other")
    });
    let other_subject = "mister-smith.claude.other.task_assignment";
    let nc = fast_connect(&nats.url);
    // Floor: raw request/reply between two connections, both flushing.
    let echo = Echo::start(&nats.url, "floor.echo", None);
    // The same with an agent in it.
    let relay = Relay::start(bins, &nats.url, "floor.relay");
    let inbox = nc.new_inbox();
    let rsub = nc.subscribe(&format!("{inbox}.*")).expect("subscribe");
    let mut next = 0usize;
    let mut floor_loop = |subject: &str, count: usize| -> Vec<f64> {
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            next += 1;
            let reply = format!("{inbox}.{next}");
            let t = Instant::now();
            nc.publish_request(subject, &reply, task_envelope("x"))
                .expect("publish");
            nc.flush().expect("flush");
            let _ = rsub.next_timeout(Duration::from_secs(10)).expect("echo");
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        out
    };
    let subject = "mister-smith.claude.echo.task_assignment";
    task_loop(&nc, subject, n / 10 + 1);
    floor_loop("floor.echo", n / 10 + 1);
    floor_loop("floor.relay", n / 10 + 1);
    // Alternate rounds of ours and the floor, so that the load of this
    // shared machine drifting during the run weighs on both alike.
    let rounds = 10;
    let (mut ours, mut floor, mut relayed) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut theirs = Vec::new();
    // What the daemon and its agent spend over our rounds (they idle
    // through the others).
    let before = Usage::of_tree(d.pid());
    if other.is_some() {
        task_loop(&nc, other_subject, n / 10 + 1);
    }
    for _ in 0..rounds {
        ours.extend(task_loop(&nc, subject, n / rounds));
        if other.is_some() {
            theirs.extend(task_loop(&nc, other_subject, n / rounds));
        }
        floor.extend(floor_loop("floor.echo", n / rounds));
        relayed.extend(floor_loop("floor.relay", n / rounds));
    }
    let spent = usage_since(&Usage::of_tree(d.pid()), &before);
    echo.stop();
    relay.stop();
    d.stop();
    if let Some(o) = other {
        o.stop();
    }
    let mut turn = agent_turns(bins, n);
    let (m_ours, m_floor, m_turn, m_relay) = (
        median(&mut ours),
        median(&mut floor),
        median(&mut turn),
        median(&mut relayed),
    );
    let mut rows = vec![
        Row {
            name: "task round trip (NATS → daemon → agent → task_result)",
            unit: "ms",
            ours: m_ours,
            ours_p99: Some(p99(&mut ours)),
            floor: Some(m_floor),
            note: format!(
                "{n} tasks, fake-claude echo; floor: raw NATS request/reply, both sides flushing (p99 {:.3} ms); ours − floor = {:.3} ms, of which the agent's own turn {:.3} ms",
                p99(&mut floor),
                m_ours - m_floor,
                m_turn
            ),
        },
        Row {
            name: "task round trip against a minimal relay through the same agent",
            unit: "ms",
            ours: m_ours,
            ours_p99: Some(p99(&mut ours)),
            floor: Some(m_relay),
            note: format!(
                "floor: one thread on a raw NATS connection writing each task's prompt into a fake-claude echo's stdin, reading to its result line and replying with it, flushing (p99 {:.3} ms); ours − floor = {:.3} ms",
                p99(&mut relayed),
                m_ours - m_relay
            ),
        },
        Row {
            name: "agent turn alone (stdin line → result line)",
            unit: "ms",
            ours: m_turn,
            ours_p99: Some(p99(&mut turn)),
            floor: None,
            note: "the fake-claude echo driven over pipes by the harness, no daemon: part of every round trip above".into(),
        },
    ];
    let per_task = |x: f64| x / ours.len().max(1) as f64;
    let breakdown: Vec<String> = spent
        .iter()
        .map(|(name, u)| {
            format!(
                "{name} {:.0} µs, {:.1} switches",
                per_task(u.cpu_s) * 1e6,
                per_task(u.switches as f64)
            )
        })
        .collect();
    let daemon_cpu: f64 = spent
        .iter()
        .filter(|(name, _)| !name.starts_with("agent"))
        .map(|(_, u)| u.cpu_s)
        .sum();
    let daemon_switches: u64 = spent
        .iter()
        .filter(|(name, _)| !name.starts_with("agent"))
        .map(|(_, u)| u.switches)
        .sum();
    rows.push(Row {
        name: "daemon CPU per task in the round trip",
        unit: "ms",
        ours: per_task(daemon_cpu) * 1000.0,
        ours_p99: None,
        floor: None,
        note: format!(
            "all daemon threads over our rounds (/proc/PID/task/*/stat, in clock ticks: ±{:.3} ms per task over {} tasks), {:.1} context switches per task; by thread: {}",
            // SAFETY: sysconf has no memory-safety preconditions.
            per_task(1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64) * 1000.0,
            ours.len(),
            per_task(daemon_switches as f64),
            breakdown.join("; ")
        ),
    });
    if !theirs.is_empty() {
        let m_theirs = median(&mut theirs);
        rows.push(Row {
            name: "task round trip, the --against build",
            unit: "ms",
            ours: m_theirs,
            ours_p99: Some(p99(&mut theirs)),
            floor: Some(m_ours),
            note: format!(
                "same tasks in alternating rounds; against ours: {:+.3} ms",
                m_theirs - m_ours
            ),
        });
    }
    rows
}

/// CPU time and context switches of one thread name.
#[derive(Clone, Copy, Default)]
struct Usage {
    cpu_s: f64,
    switches: u64,
}

impl Usage {
    /// By thread name: every thread of process `pid` and of its children
    /// (these as "agent <comm>"); threads that share a name add up.
    fn of_tree(pid: u32) -> std::collections::BTreeMap<String, Usage> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut out = std::collections::BTreeMap::new();
        let mut add = |pid: u32, prefix: &str, children: &mut Vec<u32>| {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return;
            };
            for t in tasks.flatten() {
                let dir = t.path();
                let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                let stat = read("stat");
                // Fields after the parenthesised name: utime and stime are
                // the 12th and 13th.
                let Some((comm, rest)) =
                    stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
                else {
                    continue;
                };
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                let switches: u64 = read("status")
                    .lines()
                    .filter(|l| l.contains("ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum();
                let u = out
                    .entry(format!("{prefix}{comm}"))
                    .or_insert_with(Usage::default);
                u.cpu_s += (ticks(11) + ticks(12)) / tick;
                u.switches += switches;
                children.extend(
                    read("children")
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        };
        let mut children = Vec::new();
        add(pid, "", &mut children);
        for c in children {
            add(c, "agent ", &mut Vec::new());
        }
        out
    }
}

/// What each thread name spent between two [`Usage::of_tree`]s, most first.
fn usage_since(
    now: &std::collections::BTreeMap<String, Usage>,
    before: &std::collections::BTreeMap<String, Usage>,
) -> Vec<(String, Usage)> {
    let mut out: Vec<(String, Usage)> = now
        .iter()
        .map(|(name, now)| {
            let was = before.get(name).copied().unwrap_or_default();
            let d = Usage {
                cpu_s: (now.cpu_s - was.cpu_s).max(0.0),
                switches: now.switches.saturating_sub(was.switches),
            };
            (name.clone(), d)
        })
        .filter(|(_, d)| d.cpu_s > 0.0 || d.switches > 0)
        .collect();
    out.sort_by(|a, b| b.1.cpu_s.total_cmp(&a.1.cpu_s));
    out
}

/// The fake-claude echo's own turn time, over pipes, without the daemon.
fn agent_turns(bins: &Bins, n: usize) -> Vec<f64> {
    let mut child = fake_echo(bins);
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let mut turns = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let msg = format!(
            "{{\"type\":\"user\",\"message\":{{\"role\":\"user\",\"content\":\"t{i}\"}}}}\n"
        );
        stdin.write_all(msg.as_bytes()).expect("write");
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 || line.contains("\"type\":\"result\"") {
                break;
            }
        }
        if i >= n / 10 {
            turns.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    drop(stdin);
    let _ = child.wait();
    turns
}
