//! The tracker: remembers every process an agent started, on disk, so that
//! nothing outlives a daemon that was killed with SIGKILL.
//!
//! PDEATHSIG takes an agent's own process down with the daemon, but not the
//! rest of its process group, and not a grandchild that left the group with
//! `setsid` (claude's Bash tool does that). So the tracker keeps a small
//! state file in the run directory with each agent's group (and the start
//! time of its leader) and every escaped descendant it has seen (pid and
//! start time), refreshed by a scan of `/proc` every two seconds. The next
//! daemon sweeps whatever of those is still alive before it starts its own
//! agents. Start times make the sweep safe against pid reuse.
//!
//! When an agent's process exits normally, its escaped descendants are
//! killed too, so a stop leaves no survivors either way. The daemon is a
//! child subreaper, so a descendant orphaned before any scan saw it comes
//! back to the daemon rather than init, and is found among its children
//! (see [`Orphans`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{select_biased, tick, Receiver};
use serde::{Deserialize, Serialize};

use crate::sys;

/// How often `/proc` is scanned for escaped descendants.
pub(crate) const SCAN_EVERY: Duration = Duration::from_secs(2);

/// How long a start or exit waits before it is written.
const WRITE_DELAY: Duration = Duration::from_millis(100);

/// Requests from the supervisor.
#[derive(Debug)]
pub(crate) enum TrackCmd {
    /// Agent `id` runs in process group `pgid` (its leader's pid).
    Up { id: String, pgid: u32 },
    /// Agent `id`'s process has exited: kill its escaped descendants and
    /// forget it.
    Down { id: String },
    /// A child the daemon started for itself (a health check) runs as
    /// `pid`; it is not an orphan.
    Own { pid: u32 },
    /// That child has been reaped.
    Disown { pid: u32 },
    /// Today's spend per account, to keep in `spend.json` across restarts.
    Spend(crate::runtime::accounts::SpendBook),
}

/// One process, identified beyond pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Proc {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    pub daemon_pid: u32,
    /// The kernel's boot id: after a reboot every recorded pid is someone
    /// else's.
    #[serde(default)]
    pub boot_id: String,
    /// When the file was last written, in clock ticks since boot: a process
    /// started later cannot be one the old daemon saw.
    #[serde(default)]
    pub updated: u64,
    /// Agent id → its group leader.
    pub groups: BTreeMap<String, Proc>,
    /// Agent id → descendants that left its group.
    pub escaped: BTreeMap<String, Vec<Proc>>,
}

/// `pid`'s (ppid, pgid, start time), from `/proc`.
fn stat(pid: u32) -> Option<(u32, u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) session(3) ... starttime(19).
    if f.first() == Some(&"Z") {
        return None;
    }
    Some((
        f.get(1)?.parse().ok()?,
        f.get(2)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

/// Whether `p` is still the process that was recorded.
pub(crate) fn alive(p: &Proc) -> bool {
    stat(p.pid).is_some_and(|(_, _, start)| start == p.start)
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Now, in the clock ticks of `/proc/PID/stat` start times.
fn now_ticks() -> u64 {
    let up: f64 = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (up * sys::clock_ticks_per_second()) as u64
}

/// Every live process: pid → (ppid, pgid, start).
fn scan() -> HashMap<u32, (u32, u32, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
            if let Some(s) = stat(pid) {
                out.insert(pid, s);
            }
        }
    }
    out
}

/// The descendants of `root` that are not in group `pgid`.
fn escapees(procs: &HashMap<u32, (u32, u32, u64)>, root: u32, pgid: u32) -> Vec<Proc> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, &(ppid, _, _)) in procs {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    let mut seen = HashSet::new();
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if !seen.insert(c) {
                continue;
            }
            if let Some(&(_, g, start)) = procs.get(&c) {
                if g != pgid {
                    out.push(Proc { pid: c, start });
                }
            }
            stack.push(c);
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Kills an escaped process and its own group (it left ours with
/// `setsid`, so it leads a group of its own).
fn kill_escaped(p: &Proc) -> bool {
    if !alive(p) {
        return false;
    }
    let _ = sys::killpg(p.pid, libc::SIGKILL);
    // Not a group leader after all: the process alone (the start time was
    // checked just above, so the pid is the recorded process).
    let _ = sys::kill(p.pid, libc::SIGKILL);
    true
}

/// Our direct children that we did not start. The daemon is a child
/// subreaper, so a process that left an agent's group (`setsid`, a double
/// fork) and outlived its parent comes back to the daemon instead of init,
/// even when no scan saw it below its agent (a crash loop, a stop right
/// after it left). Such an orphan names its agent in its environment
/// (`MISTER_SMITH_AGENT_ID`, inherited): while that agent runs, it is
/// tracked like any escaped descendant and dies with the agent. One whose
/// agent is gone, or that names none, is killed with its group once it has
/// been seen at two passes in a row (so never a child of ours that was
/// about to be registered, such as an agent's new leader).
#[derive(Debug, Default)]
struct Orphans {
    /// Children the daemon started: agents' leaders and health checks.
    own: HashSet<u32>,
    /// Unclaimed children seen at the last pass, with their start times.
    suspects: HashMap<u32, u64>,
}

/// What one pass over our children did.
#[derive(Debug, Default)]
struct Pass {
    /// Orphans killed.
    killed: Vec<u32>,
    /// Orphans of running agents, to track: (agent id, process).
    adopted: Vec<(String, Proc)>,
}

/// Our children now: (pid, start time, exited).
fn children() -> Vec<(u32, u64, bool)> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = text.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
        if f.get(1) != Some(&me.as_str()) {
            continue;
        }
        let start = f.get(19).and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push((pid, start, f.first() == Some(&"Z")));
    }
    out
}

/// The agent `pid` names in its environment, if it can be read. What a
/// health check left behind (its environment also has
/// `MISTER_SMITH_AGENT_PID`) belongs to no agent: the check is over.
fn agent_of(pid: u32) -> Option<String> {
    let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut vars = env.split(|&b| b == 0);
    if vars
        .clone()
        .any(|kv| kv.starts_with(b"MISTER_SMITH_AGENT_PID="))
    {
        return None;
    }
    vars.find_map(|kv| {
        kv.strip_prefix(b"MISTER_SMITH_AGENT_ID=")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string)
    })
}

impl Orphans {
    /// One pass. `groups` are the running agents' leaders; with `now`,
    /// unclaimed orphans are killed at once (the daemon is stopping and
    /// starts nothing more).
    fn pass(&mut self, now: bool, state: &State) -> Pass {
        let groups = &state.groups;
        let mut done = Pass::default();
        let mut seen = HashMap::new();
        for (pid, start, exited) in children() {
            if self.own.contains(&pid) {
                continue;
            }
            // Seen below a running agent before it was orphaned: that
            // agent's, whatever its environment says now.
            let p = Proc { pid, start };
            if !now && !exited && state.escaped.values().any(|l| l.contains(&p)) {
                continue;
            }
            if !exited && !now {
                // Started after its agent's current leader: this run's.
                let claim =
                    agent_of(pid).filter(|id| groups.get(id).is_some_and(|l| l.start <= start));
                if let Some(id) = claim {
                    done.adopted.push((id, Proc { pid, start }));
                    continue;
                }
            }
            if !now && self.suspects.get(&pid) != Some(&start) {
                seen.insert(pid, start);
                continue;
            }
            if !exited {
                let _ = sys::killpg(pid, libc::SIGKILL);
                let _ = sys::kill(pid, libc::SIGKILL);
                done.killed.push(pid);
            }
            // Not dead yet: reaped at the next pass.
            if !matches!(sys::reap_nohang(pid), Ok(true)) {
                seen.insert(pid, start);
            }
        }
        self.suspects = seen;
        done
    }
}

/// Kills every child of the daemon that is not an agent it still knows
/// about, at its stop: after its agents have exited, whatever they left
/// behind (and what came back to the subreaper) goes too, since a clean
/// stop deletes the state file and nothing would sweep it later. Returns
/// how many were killed.
pub(crate) fn end_orphans() -> usize {
    let mut orphans = Orphans::default();
    let done = orphans.pass(true, &State::default());
    for pid in &done.killed {
        log::warn!("killed process {pid}, orphaned below an agent");
    }
    done.killed.len()
}

/// Every process the daemon starts (agents, health checks) carries this
/// variable with the run directory, and so does whatever they start unless
/// it clears its environment: what a killed daemon left behind that no
/// scan saw (a `setsid` just before the SIGKILL) is found by it.
pub(crate) const RUN_DIR_ENV: &str = "MISTER_SMITH_RUN_DIR";

static RUN_MARK: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the run directory children are marked with (once, at start).
pub(crate) fn mark_children(dir: &Path) {
    let _ = RUN_MARK.set(dir.display().to_string());
}

/// The `RUN_DIR_ENV` value for children, once set.
pub(crate) fn run_mark() -> Option<&'static str> {
    RUN_MARK.get().map(String::as_str)
}

/// Kills what a previous daemon left behind: by the state file in `dir`,
/// then every process of this user marked with `dir` (the caller holds the
/// run directory's lock and has started nothing yet, so none of them is a
/// live daemon's). Returns how many groups or processes were swept.
pub(crate) fn sweep(dir: &Path) -> usize {
    let mut killed = Killed::default();
    sweep_recorded(dir, &mut killed) + sweep_marked(dir, &killed)
}

/// What the sweep of the state file killed: a SIGKILL takes a moment, so
/// the marked sweep after it must not count the same processes again.
#[derive(Default)]
struct Killed {
    groups: HashSet<u32>,
    pids: HashSet<u32>,
}

fn sweep_marked(dir: &Path, killed: &Killed) -> usize {
    use std::os::unix::fs::MetadataExt;
    let want = format!("{RUN_DIR_ENV}={}", dir.display()).into_bytes();
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    let mut swept = 0;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || e.metadata().map_or(true, |m| m.uid() != sys::uid()) {
            continue;
        }
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !env.split(|&b| b == 0).any(|kv| kv == want.as_slice()) {
            continue;
        }
        let Some((_, pgid, start)) = stat(pid) else {
            continue;
        };
        if killed.pids.contains(&pid) || killed.groups.contains(&pgid) {
            continue;
        }
        if kill_escaped(&Proc { pid, start }) {
            log::warn!("sweeping leftover process {pid} of a previous daemon (marked with its run directory)");
            swept += 1;
        }
    }
    swept
}

fn sweep_recorded(dir: &Path, killed: &mut Killed) -> usize {
    let path = dir.join("state.json");
    let Ok(text) = fs::read(&path) else { return 0 };
    let Ok(state) = serde_json::from_slice::<State>(&text) else {
        log::warn!("ignoring an unreadable state file {}", path.display());
        return 0;
    };
    if state.boot_id != boot_id() {
        log::info!(
            "the state file {} is from before a reboot; nothing to sweep",
            path.display()
        );
        return 0;
    }
    let procs = scan();
    let mut swept = 0;
    for (id, leader) in &state.groups {
        // The group is ours if its leader is the recorded process, or gone
        // (a pid stays reserved while it is the id of a live group), and a
        // member was already alive when the old daemon last looked.
        let leader_ok = match procs.get(&leader.pid) {
            Some(&(_, _, start)) => start == leader.start,
            None => true,
        };
        let members: Vec<u64> = procs
            .values()
            .filter(|(_, g, _)| *g == leader.pid)
            .map(|&(_, _, start)| start)
            .collect();
        let seen_before = members
            .iter()
            .any(|&start| start >= leader.start && start <= state.updated);
        if leader_ok && seen_before {
            log::warn!(
                "sweeping {} leftover processes of agent {id} (group {})",
                members.len(),
                leader.pid
            );
            let _ = sys::killpg(leader.pid, libc::SIGKILL);
            killed.groups.insert(leader.pid);
            swept += 1;
        }
    }
    for (id, list) in &state.escaped {
        for p in list.iter().filter(|p| p.start <= state.updated) {
            if kill_escaped(p) {
                log::warn!(
                    "sweeping leftover process {} of agent {id} (left its group)",
                    p.pid
                );
                killed.pids.insert(p.pid);
                killed.groups.insert(p.pid);
                swept += 1;
            }
        }
    }
    swept
}

/// The tracker's loop: keeps `dir/state.json` current until the supervisor
/// drops its sender.
pub(crate) fn run(inbox: &Receiver<TrackCmd>, dir: &Path) {
    let mut state = State {
        daemon_pid: std::process::id(),
        boot_id: boot_id(),
        ..State::default()
    };
    let path = dir.join("state.json");
    write(&path, &mut state);
    let ticker = tick(SCAN_EVERY);
    let mut noticed = Vec::new();
    // Starts and exits are written after a short pause, so a burst of them
    // (a cold start, a crash loop) costs one write instead of one each, and
    // the restart path never waits on the file system.
    let mut pending_write: Option<std::time::Instant> = None;
    let mut orphans = Orphans::default();
    // An exit calls for a pass over our children (what the agent left has
    // come back to us), made with the write that follows it: a crash loop
    // then costs one scan of /proc per write, not one per exit.
    let mut pass_due = false;
    loop {
        let debounce = pending_write.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
        let changed = select_biased! {
            recv(debounce) -> _ => {
                pending_write = None;
                if std::mem::take(&mut pass_due) {
                    let pass = orphans.pass(false, &state);
                    adopt(&mut state, pass, &mut noticed);
                }
                true
            },
            recv(inbox) -> cmd => match cmd {
                Ok(TrackCmd::Up { id, pgid }) => {
                    let start = stat(pgid).map_or(0, |(_, _, s)| s);
                    orphans.own.insert(pgid);
                    if let Some(old) = state.groups.insert(id, Proc { pid: pgid, start }) {
                        orphans.own.remove(&old.pid);
                    }
                    pending_write.get_or_insert_with(|| std::time::Instant::now() + WRITE_DELAY);
                    false
                }
                Ok(TrackCmd::Down { id }) => {
                    if let Some(leader) = state.groups.remove(&id) {
                        orphans.own.remove(&leader.pid);
                    }
                    // What the agent left behind has come to us by now;
                    // it is a suspect at that pass, killed at the next.
                    pass_due = true;
                    for p in state.escaped.remove(&id).unwrap_or_default() {
                        if kill_escaped(&p) {
                            log::info!("agent {id}: killed process {} that had left its group", p.pid);
                        }
                    }
                    pending_write.get_or_insert_with(|| std::time::Instant::now() + WRITE_DELAY);
                    false
                }
                Ok(TrackCmd::Own { pid }) => {
                    orphans.own.insert(pid);
                    false
                }
                Ok(TrackCmd::Disown { pid }) => {
                    orphans.own.remove(&pid);
                    false
                }
                Ok(TrackCmd::Spend(book)) => {
                    // The supervisor already sends it at most once a second
                    // (at once for an account with a budget).
                    crate::runtime::spend::write(dir, Some(book));
                    false
                }
                Err(_) => {
                    // The daemon is done: its agents are gone. Its spend
                    // (spend.json) stays for the next start.
                    let _ = fs::remove_file(&path);
                    return;
                }
            },
            recv(ticker) -> _ => {
                // With agents running, every scan is written: `updated`
                // keeps up with what the tracker has seen.
                let mut changed = !state.groups.is_empty();
                if !state.groups.is_empty() || !orphans.suspects.is_empty() {
                    let pass = orphans.pass(false, &state);
                    changed |= adopt(&mut state, pass, &mut noticed);
                }
                if !state.groups.is_empty() {
                    let procs = scan();
                    for (id, leader) in &state.groups {
                        let found = escapees(&procs, leader.pid, leader.pid);
                        let known = state.escaped.entry(id.clone()).or_default();
                        for p in found {
                            if !known.contains(&p) {
                                noticed.push(format!("agent {id}: process {} left the group; tracking it", p.pid));
                                known.push(p);
                                changed = true;
                            }
                        }
                        let before = known.len();
                        known.retain(alive);
                        changed |= known.len() != before;
                    }
                }
                changed
            },
        };
        if changed {
            pending_write = None;
            write(&path, &mut state);
        }
        // Said once it is on disk, so "tracking" means "would be swept".
        for line in noticed.drain(..) {
            log::info!("{line}");
        }
    }
}

/// Tracks the orphans `pass` found for running agents, and says which it
/// killed. Returns whether the state changed.
fn adopt(state: &mut State, pass: Pass, noticed: &mut Vec<String>) -> bool {
    for pid in pass.killed {
        log::warn!("killed process {pid}, orphaned below an agent");
    }
    let mut changed = false;
    for (id, p) in pass.adopted {
        let known = state.escaped.entry(id.clone()).or_default();
        if !known.contains(&p) {
            noticed.push(format!(
                "agent {id}: process {} was orphaned outside its group; tracking it",
                p.pid
            ));
            known.push(p);
            changed = true;
        }
    }
    changed
}

/// Writes the state atomically (a rename), so a crash never leaves half a
/// file.
fn write(path: &Path, state: &mut State) {
    state.updated = now_ticks();
    crate::runtime::files::write_atomic(path, &serde_json::to_vec(state).unwrap_or_default());
}

/// The run directory: `$XDG_RUNTIME_DIR/mister-smith/<daemon_id>`, else
/// `mister-smith-<uid>/<daemon_id>` in the temp directory.
pub(crate) fn run_dir(daemon_id: &str) -> PathBuf {
    let base = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("mister-smith"),
        _ => std::env::temp_dir().join(format!("mister-smith-{}", sys::uid())),
    };
    base.join(daemon_id)
}

/// Creates `dir` (and its parents) with mode 0700.
/// The directory and the one above it (ours, `mister-smith` or
/// `mister-smith-UID`) must be real directories of this user that nobody
/// else can write: the state file in it says which processes to kill, so
/// one planted by another user (in a shared `/tmp`) would have the daemon
/// kill what it names. One of ours with a loose mode is tightened.
pub(crate) fn create_run_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let unsafe_dir = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
    for d in [dir.parent(), Some(dir)].into_iter().flatten() {
        let meta = fs::symlink_metadata(d)?;
        if !meta.file_type().is_dir() {
            return Err(unsafe_dir(format!(
                "{} is a symbolic link or not a directory",
                d.display()
            )));
        }
        if meta.uid() != sys::uid() {
            return Err(unsafe_dir(format!(
                "{} belongs to uid {}, not to this user (uid {})",
                d.display(),
                meta.uid(),
                sys::uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            log::warn!(
                "{} had mode {:o}: made 0700 (it holds what the daemon kills)",
                d.display(),
                meta.mode() & 0o7777
            );
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// An exclusive lock on the run directory, held for the daemon's life: two
/// daemons with one run directory would sweep each other's agents.
#[derive(Debug)]
pub(crate) struct RunLock(#[allow(dead_code)] fs::File);

/// Takes the run directory's lock; `Ok(None)` when another daemon holds it.
pub(crate) fn lock(dir: &Path) -> std::io::Result<Option<RunLock>> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    Ok(sys::try_lock_exclusive(&f)?.then_some(RunLock(f)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapees_are_descendants_outside_the_group() {
        let mut procs = HashMap::new();
        procs.insert(10, (1, 10, 100)); // agent leader
        procs.insert(11, (10, 10, 101)); // child in the group
        procs.insert(12, (11, 12, 102)); // grandchild that called setsid
        procs.insert(13, (12, 12, 103)); // its child, in its new group
        procs.insert(20, (1, 20, 200)); // unrelated
        let got: Vec<u32> = escapees(&procs, 10, 10).iter().map(|p| p.pid).collect();
        assert_eq!(got, [12, 13]);
    }

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let (_, _, start) = stat(me).unwrap();
        assert!(alive(&Proc { pid: me, start }));
        assert!(!alive(&Proc {
            pid: me,
            start: start + 1
        }));
    }
}
