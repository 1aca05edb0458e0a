//! The health monitor: runs each agent's optional `health.command` every
//! `interval_ms`, bounded by `timeout_ms`, and reports verdicts to the
//! supervisor as events.
//!
//! Liveness needs no tick: each child's waiter thread reports its exit the
//! moment it happens. The output watchdog needs none either: it is a timer in
//! the supervisor, set from the last output of a busy agent, so it fires at
//! exactly `idle_timeout_ms` of silence. What is left for this thread is the
//! part that blocks — running check commands — which must never happen on
//! the supervisor thread.
//!
//! One check runs at a time per agent; the next is due `interval` after the
//! previous one finished, so a slow check cannot pile up behind itself.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{at, never, select_biased, Receiver, Sender};

use crate::config::HealthCommand;
use crate::message::router::AgentIx;
use crate::runtime::events::{Event, Verdict};
use crate::runtime::process::describe_exit;
use crate::runtime::tracker::TrackCmd;
use crate::sys;

/// Requests from the supervisor.
#[derive(Debug)]
pub(crate) enum HealthCmd {
    /// Start checking agent `agent`, run `run`, whose process is `pid`.
    Watch {
        agent: AgentIx,
        run: u64,
        id: String,
        pid: u32,
        command: HealthCommand,
        interval: Duration,
        timeout: Duration,
    },
    /// Stop checking agent `agent`.
    Unwatch { agent: AgentIx },
}

struct Watched {
    run: u64,
    id: String,
    pid: u32,
    command: HealthCommand,
    interval: Duration,
    timeout: Duration,
    running: bool,
}

/// Output kept from a failing check, for the log.
const MAX_CHECK_OUTPUT: usize = 300;

/// The monitor's loop. Returns when the supervisor drops its sender.
pub(crate) fn run(inbox: &Receiver<HealthCmd>, events: &Sender<Event>, tracker: &Sender<TrackCmd>) {
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(AgentIx, u64, Verdict)>();
    let mut watched: HashMap<AgentIx, Watched> = HashMap::new();
    let mut due: BTreeMap<(Instant, AgentIx), u64> = BTreeMap::new();
    loop {
        let timer = match due.keys().next() {
            Some(&(when, _)) => at(when),
            None => never(),
        };
        select_biased! {
            recv(inbox) -> cmd => match cmd {
                Ok(HealthCmd::Watch { agent, run, id, pid, command, interval, timeout }) => {
                    due.retain(|&(_, a), _| a != agent);
                    due.insert((Instant::now() + interval, agent), run);
                    watched.insert(agent, Watched { run, id, pid, command, interval, timeout, running: false });
                }
                Ok(HealthCmd::Unwatch { agent }) => {
                    watched.remove(&agent);
                    due.retain(|&(_, a), _| a != agent);
                }
                Err(_) => return,
            },
            recv(done_rx) -> done => {
                let Ok((agent, run, verdict)) = done else { continue };
                if let Some(w) = watched.get_mut(&agent).filter(|w| w.run == run) {
                    w.running = false;
                    due.insert((Instant::now() + w.interval, agent), run);
                    if events.send(Event::Health { agent, run, verdict }).is_err() {
                        return;
                    }
                }
            },
            recv(timer) -> _ => {
                let now = Instant::now();
                while let Some(entry) = due.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let ((_, agent), run) = entry.remove_entry();
                    let Some(w) = watched.get_mut(&agent).filter(|w| w.run == run && !w.running) else {
                        continue;
                    };
                    w.running = true;
                    let (cmd, id, pid, timeout) = (w.command.clone(), w.id.clone(), w.pid, w.timeout);
                    let tx = done_tx.clone();
                    let tracker = tracker.clone();
                    let spawned = thread::Builder::new()
                        .name(format!("check:{id}"))
                        .stack_size(128 * 1024)
                        .spawn(move || {
                            let verdict = check(&cmd, &id, pid, timeout, &tracker);
                            let _ = tx.send((agent, run, verdict));
                        });
                    if let Err(e) = spawned {
                        log::error!("agent {}: cannot run the health check: {e}", w.id);
                        w.running = false;
                        due.insert((now + w.interval, agent), run);
                    }
                }
            },
        }
    }
}

/// Runs one check: exit status 0 within `timeout` is healthy. The command
/// runs in its own process group, which is killed on timeout.
pub(crate) fn check(
    command: &HealthCommand,
    id: &str,
    pid: u32,
    timeout: Duration,
    tracker: &Sender<TrackCmd>,
) -> Verdict {
    let mut cmd = match command {
        HealthCommand::Shell(s) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(s);
            c
        }
        HealthCommand::Argv(argv) => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    if let Some(dir) = crate::runtime::tracker::run_mark() {
        cmd.env(crate::runtime::tracker::RUN_DIR_ENV, dir);
    }
    cmd.env("MISTER_SMITH_AGENT_ID", id)
        .env("MISTER_SMITH_AGENT_PID", pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Verdict::Unhealthy(format!("cannot run the check: {e}")),
    };
    let gid = child.id();
    // Ours, not an orphan of an agent's (the daemon is a child subreaper).
    let _ = tracker.send(TrackCmd::Own { pid: gid });
    let verdict = wait_check(child, gid, timeout);
    let _ = tracker.send(TrackCmd::Disown { pid: gid });
    verdict
}

/// Waits for the check `child` (group `gid`) within `timeout`, drains its
/// output, and kills whatever is left of its group.
fn wait_check(mut child: std::process::Child, gid: u32, timeout: Duration) -> Verdict {
    // Drain both pipes so a chatty check cannot block; keep the start of
    // each for the log.
    let (out_tx, out_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    let mut readers = 0;
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = out_tx.clone();
        let spawned = thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            let mut pipe = pipe;
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = MAX_CHECK_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            let _ = tx.send(kept);
        });
        if spawned.is_ok() {
            readers += 1;
        }
    }
    drop(out_tx);
    // The waiter only observes the exit; the check process is reaped here,
    // after its group is killed, so the group id cannot have been reused.
    let (tx, rx) = crossbeam_channel::bounded(1);
    let waiter = thread::Builder::new().stack_size(64 * 1024).spawn(move || {
        let _ = tx.send(sys::wait_exited_nowait(gid));
    });
    if waiter.is_err() {
        let _ = sys::killpg(gid, libc::SIGKILL);
        let _ = child.wait();
        return Verdict::Unhealthy("cannot wait for the check".into());
    }
    let status = rx.recv_timeout(timeout).ok();
    // Whatever the check left in its group goes, and on timeout the check
    // itself; then the pipes close.
    let _ = sys::killpg(gid, libc::SIGKILL);
    let _ = child.wait();
    let mut output = String::new();
    // A process that left the group may hold a pipe open: do not wait on it
    // for long.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    for _ in 0..readers {
        match out_rx.recv_deadline(deadline) {
            Ok(bytes) => output.push_str(String::from_utf8_lossy(&bytes).trim()),
            Err(_) => break,
        }
    }
    match status {
        None => Verdict::Unhealthy(format!("timed out after {} ms", timeout.as_millis())),
        Some(Ok(s)) if s.success() => Verdict::Healthy,
        Some(Ok(s)) => {
            let how = describe_exit(&Ok(s));
            if output.is_empty() {
                Verdict::Unhealthy(format!("check {how}"))
            } else {
                Verdict::Unhealthy(format!("check {how}: {output}"))
            }
        }
        Some(Err(e)) => Verdict::Unhealthy(format!("cannot wait for the check: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_pass_fail_and_time_out() {
        let t = Duration::from_secs(5);
        let (tracker, owned) = crossbeam_channel::unbounded();
        let check =
            |c: &HealthCommand, id: &str, pid: u32, t: Duration| check(c, id, pid, t, &tracker);
        assert_eq!(
            check(&HealthCommand::Shell("exit 0".into()), "a", 1, t),
            Verdict::Healthy
        );
        assert_eq!(
            check(&HealthCommand::Shell("echo nope; exit 3".into()), "a", 1, t),
            Verdict::Unhealthy("check exited with status 3: nope".into())
        );
        assert_eq!(
            check(
                &HealthCommand::Argv(vec![
                    "sh".into(),
                    "-c".into(),
                    "test \"$MISTER_SMITH_AGENT_ID\" = a1".into()
                ]),
                "a1",
                1,
                t
            ),
            Verdict::Healthy
        );
        let started = Instant::now();
        let v = check(
            &HealthCommand::Shell("sleep 30".into()),
            "a",
            1,
            Duration::from_millis(200),
        );
        assert_eq!(v, Verdict::Unhealthy("timed out after 200 ms".into()));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(
            check(&HealthCommand::Argv(vec!["/nonexistent/x".into()]), "a", 1, t),
            Verdict::Unhealthy(m) if m.starts_with("cannot run the check")
        ));
        // Each check that ran was ours to the tracker while it ran.
        let told: Vec<TrackCmd> = owned.try_iter().collect();
        assert_eq!(told.len(), 2 * 4, "{told:?}");
        assert!(matches!(told[0], TrackCmd::Own { .. }));
        assert!(matches!(told[1], TrackCmd::Disown { .. }));
    }
}
